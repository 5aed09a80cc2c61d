//! HTTPS upstreams as providers run them, behind a private CA (`--upstream-ca`): requests,
//! active health checks and key re-probes all reach the upstream over TLS with the same trust,
//! over HTTP/1.1 and HTTP/2 (chosen by ALPN); a backend's `hostHeader` is the Host and the
//! TLS server name of requests, probes and re-probes alike.

mod support;

use http::Version;
use keyway_testkit::client::{chat, get};
use keyway_testkit::tls::TestPki;
use keyway_testkit::{Behavior, MockUpstream, RecordedRequest, eventually};
use std::path::PathBuf;
use std::time::Duration;
use support::{FileProxy, metric};

const KEY_A: &str = "sk-tls-alpha-0001";
const KEY_B: &str = "sk-tls-bravo-0002";
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];
/// Long enough for a few 1 s probe intervals and a 10 s re-probe on a loaded machine.
const T: Duration = Duration::from_secs(40);

/// One backend, keys `key-a` and `key-b` re-probed every 10 s once disabled, an active check
/// of `/v1/models` every second; `{backend}` is spliced into the backend's entry.
fn config(backend: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys, labels: {{keyway.dev/api-keys: "true"}}}}
stringData:
  key-a: "{KEY_A}"
  key-b: "{KEY_B}"
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys}}
spec:
  secretRef: {{name: llm-keys}}
  disable: {{reprobeSeconds: 10}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  apiKeyPoolRef: {{name: keys}}
  healthCheck: {{path: /v1/models, intervalSeconds: 1, timeoutSeconds: 1, failThreshold: 2, successThreshold: 2}}
  backends:
    - {{name: a, {backend}}}
"#
    )
}

/// A proxy trusting `pki`'s CA through `--upstream-ca`.
async fn proxy(pki: &TestPki, yaml: &str) -> (FileProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca: PathBuf = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let p = FileProxy::start_with(yaml, |s| s.forwarder.upstream_ca = Some(ca)).await;
    (p, dir)
}

async fn status(p: &FileProxy) -> serde_json::Value {
    get(&format!("{}/status", p.admin())).await.unwrap().json()
}

async fn backend_healthy(p: &FileProxy) -> bool {
    status(p).await["pools"][0]["backends"][0]["healthy"] == true
}

async fn key_state(p: &FileProxy, id: &str) -> String {
    let s = status(p).await;
    s["keyPools"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .map(|k| k["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

async fn checks(p: &FileProxy, result: &str) -> f64 {
    metric(
        &p.admin(),
        "keyway_proxy_health_checks_total",
        &[&format!("result=\"{result}\"")],
    )
    .await
}

/// Health probes: keyless GETs of the check path (key re-probes carry a key).
fn health_probes(up: &MockUpstream) -> Vec<RecordedRequest> {
    up.requests()
        .into_iter()
        .filter(|r| r.path == "/v1/models" && r.key.is_none())
        .collect()
}

/// Requests, active checks (healthy, unhealthy when the upstream fails, healthy again) and
/// a 401 re-probe that re-enables the key, all over TLS with `alpn`'s protocol.
async fn private_ca_upstream(alpn: &[&[u8]], version: Version) {
    let pki = TestPki::new(&[]);
    let up = MockUpstream::start_tls("tls", pki.server_config(alpn))
        .await
        .unwrap();
    let (p, _dir) = proxy(&pki, &config(&format!("endpoint: \"{}\"", up.url()))).await;

    // Requests.
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let req = up
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions");
    let req = req.expect("the request reached the upstream");
    assert_eq!(req.version, version);
    // The endpoint's authority travels once: as Host over HTTP/1.1, as `:authority` alone
    // over HTTP/2 (nginx answers 400 "duplicate host header" to a request with both).
    let authority = up.url().trim_start_matches("https://").to_owned();
    let host = req.header("host");
    match version {
        Version::HTTP_2 => assert_eq!(host, None, "no Host header next to :authority"),
        _ => assert_eq!(host, Some(authority.as_str()), "Host over HTTP/1.1"),
    }

    // Active checks pass through the private CA: two successes, healthy.
    eventually(T, "two successful health checks", || async {
        checks(&p, "success").await >= 2.0
    })
    .await;
    assert!(backend_healthy(&p).await);
    assert_eq!(checks(&p, "failure").await, 0.0, "no probe failed");
    let probes = health_probes(&up);
    assert!(!probes.is_empty());
    assert!(probes.iter().all(|r| r.version == version), "{probes:?}");

    // A key refused by 401 is disabled, then re-enabled by a re-probe over TLS.
    up.set_key_behavior(KEY_A, Some(Behavior::status(401)));
    for _ in 0..2 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    eventually(T, "key-a disabled after its probe was refused", || async {
        key_state(&p, "key-a").await == "disabled"
    })
    .await;
    up.set_key_behavior(KEY_A, None);
    eventually(T, "key-a re-enabled by a re-probe", || async {
        key_state(&p, "key-a").await == "active"
    })
    .await;
    let reprobes: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/models" && r.key.as_deref() == Some(KEY_A))
        .collect();
    assert!(
        reprobes.len() >= 2,
        "verified, then re-probed: {reprobes:?}"
    );
    assert!(reprobes.iter().all(|r| r.version == version));

    // The upstream fails: unhealthy; it recovers: healthy again.
    up.set_behavior(Behavior::status(503));
    eventually(T, "backend unhealthy while the upstream fails", || async {
        !backend_healthy(&p).await
    })
    .await;
    assert!(checks(&p, "failure").await >= 2.0);
    up.set_behavior(Behavior::Normal);
    eventually(T, "backend healthy again", || async {
        backend_healthy(&p).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_upstream_over_http1() {
    private_ca_upstream(H1, Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_upstream_over_h2() {
    private_ca_upstream(H2, Version::HTTP_2).await;
}

/// Without `--upstream-ca` the same upstream is not trusted: requests fail and so do the
/// checks (the CA is what makes the test above pass, not a lax verifier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_fails_requests_and_checks() {
    let pki = TestPki::new(&[]);
    let up = MockUpstream::start_tls("tls", pki.server_config(H2))
        .await
        .unwrap();
    let p = FileProxy::start(&config(&format!("endpoint: \"{}\"", up.url()))).await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    eventually(T, "health checks fail", || async {
        checks(&p, "failure").await >= 2.0
    })
    .await;
    assert_eq!(checks(&p, "success").await, 0.0);
    assert!(!backend_healthy(&p).await);
    assert_eq!(up.request_count(), 0, "no request passed the handshake");
}

/// A backend with `hostHeader` on a shared host: requests, health probes and key re-probes
/// arrive with that Host and ask for that TLS server name (the certificate is checked for
/// it), over HTTP/2 and HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_is_the_host_and_server_name_of_requests_and_probes() {
    const NAME: &str = "model-abc.api.keyway.test";
    for (alpn, version) in [(H2, Version::HTTP_2), (H1, Version::HTTP_11)] {
        let pki = TestPki::new(&[NAME]);
        let up = MockUpstream::start_tls("shared", pki.server_config(alpn))
            .await
            .unwrap();
        let backend = format!("endpoint: \"{}\", hostHeader: \"{NAME}\"", up.url());
        let (p, _dir) = proxy(&pki, &config(&backend)).await;
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
        eventually(T, "a successful health check", || async {
            checks(&p, "success").await >= 1.0
        })
        .await;
        // A refused key is verified by a free probe at once.
        up.set_key_behavior(KEY_A, Some(Behavior::status(401)));
        for _ in 0..2 {
            assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
        }
        eventually(T, "key-a probed", || async {
            up.requests()
                .iter()
                .any(|r| r.path == "/v1/models" && r.key.as_deref() == Some(KEY_A))
        })
        .await;
        let all = up.requests();
        let kinds = [
            (
                "request",
                all.iter().find(|r| r.path == "/v1/chat/completions"),
            ),
            (
                "health probe",
                all.iter()
                    .find(|r| r.path == "/v1/models" && r.key.is_none()),
            ),
            (
                "key probe",
                all.iter()
                    .find(|r| r.path == "/v1/models" && r.key.as_deref() == Some(KEY_A)),
            ),
        ];
        for (kind, r) in kinds {
            let r = r.unwrap_or_else(|| panic!("no {kind} arrived"));
            assert_eq!(r.host(), Some(NAME), "{kind} Host ({version:?}): {r:?}");
            if kind == "request" && version == Version::HTTP_2 {
                // Once, as `:authority` (probes still send both; see docs/reliability.md).
                assert_eq!(r.header("host"), None, "no Host next to :authority: {r:?}");
            }
            assert_eq!(r.sni.as_deref(), Some(NAME), "{kind} SNI ({version:?})");
            assert_eq!(r.version, version, "{kind}");
        }
    }
}

/// Over plain HTTP too, health probes carry the backend's `hostHeader` (a cluster on a shared
/// host is probed as itself, not as whatever the address serves by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_send_host_header_over_plain_http() {
    let up = MockUpstream::start("plain").await.unwrap();
    let backend = format!("endpoint: \"{}\", hostHeader: \"svc.internal\"", up.url());
    let p = FileProxy::start(&config(&backend)).await;
    eventually(T, "a successful health check", || async {
        checks(&p, "success").await >= 1.0
    })
    .await;
    let probes = health_probes(&up);
    assert!(!probes.is_empty());
    for r in probes {
        assert_eq!(r.header("host"), Some("svc.internal"), "{r:?}");
    }
}
