//! The HTTPS server in-process: handshakes wait for a certificate, a swapped certificate is
//! served to the next connection without a restart, and `POST /inject` answers reviews.

use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn names() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

fn injector() -> Injector {
    Injector {
        image: "keyway:test".into(),
        controller_url: "http://keyway-controller.keyway.svc:8443".into(),
        controller_ca_pem: None,
        token_audience: None,
        version: "0.0.0-test".into(),
        native_sidecar: false,
    }
}

struct Running {
    addr: SocketAddr,
    serving: Arc<ServingCert>,
    metrics: WebhookMetrics,
    _drain: watch::Sender<bool>,
}

async fn start() -> Running {
    let registry = Registry::new();
    let metrics = WebhookMetrics::register(&registry).expect("metrics");
    let serving = Arc::new(ServingCert::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (drain, drain_rx) = watch::channel(false);
    tokio::spawn(serve(
        listener,
        server_config(serving.clone()).expect("tls"),
        Arc::new(injector()),
        None,
        metrics.clone(),
        drain_rx,
    ));
    Running {
        addr,
        serving,
        metrics,
        _drain: drain,
    }
}

/// Connects trusting `ca_pem`; returns the peer certificate and an HTTP/1.1 sender.
async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> anyhow::Result<(
    Vec<u8>,
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok((peer, sender))
}

async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header(header::HOST, "127.0.0.1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

fn review(annotations: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "object": {
                "metadata": {"name": "p", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            },
        }
    })
}

#[tokio::test]
async fn serves_reviews_and_swaps_certificates_without_restart() {
    let running = start().await;
    let first = certs::Material::generate(now(), &names()).expect("material");
    // No certificate yet: the handshake fails, nothing is served.
    assert!(connect(running.addr, &first.ca_cert).await.is_err());

    let serving = first.serving().expect("serving");
    running.serving.set(serving.key.clone());
    assert!(running.serving.is_loaded());
    let (peer, mut sender) = connect(running.addr, &first.ca_cert)
        .await
        .expect("handshake with the first certificate");
    assert_eq!(peer, serving.key.cert[0].as_ref());

    let (status, out) = post(
        &mut sender,
        "/inject",
        review(json!({"keyway.dev/inject": "true"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["response"]["uid"], "u-1");
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let (_, out) = post(&mut sender, "/inject", review(json!({"app": "x"}))).await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());
    let (_, out) = post(
        &mut sender,
        "/inject",
        review(json!({"keyway.dev/inject": "true", "keyway.dev/port": "nope"})),
    )
    .await;
    assert_eq!(out["response"]["allowed"], false);
    let (status, _) = post(&mut sender, "/inject", json!("garbage")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&mut sender, "/other", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (result, n) in [
        ("injected", 1),
        ("skipped", 1),
        ("denied", 1),
        ("bad_request", 1),
    ] {
        assert_eq!(
            running
                .metrics
                .injections
                .with_label_values(&[result])
                .get(),
            n,
            "{result}"
        );
    }

    // A renewed certificate (same CA) is served to the next connection; the open one goes on.
    let renewed = first
        .renewed(
            &certs::Renewal::NewServing {
                reason: "test".into(),
            },
            now(),
            &names(),
        )
        .expect("renewed");
    let next = renewed.serving().expect("serving");
    running.serving.set(next.key.clone());
    let (peer, mut sender2) = connect(running.addr, &first.ca_cert)
        .await
        .expect("handshake with the renewed certificate");
    assert_eq!(peer, next.key.cert[0].as_ref());
    assert_ne!(peer, serving.key.cert[0].as_ref());
    let (status, _) = post(&mut sender2, "/inject", review(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&mut sender, "/inject", review(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "the first connection still works");

    // A client trusting another CA is refused.
    let stranger = certs::Material::generate(now(), &names()).expect("material");
    assert!(connect(running.addr, &stranger.ca_cert).await.is_err());
}

#[test]
fn injected_proxies_trust_the_controllers_own_ca() {
    let injector = Arc::new(injector());
    let own = ServingCert::default();
    // Before the first pass: nothing to hand over.
    assert_eq!(with_own_ca(&injector, Some(&own)).controller_ca_pem, None);
    own.set_ca_bundle("-----BEGIN CERTIFICATE-----\nown\n-----END CERTIFICATE-----\n");
    let pem = with_own_ca(&injector, Some(&own)).controller_ca_pem.clone();
    assert!(pem.is_some_and(|p| p.contains("own")));
    // Not serving gRPC with its own certificate: nothing added.
    assert_eq!(with_own_ca(&injector, None).controller_ca_pem, None);
    // A configured CA (--sidecar-controller-ca) wins.
    let configured = Arc::new(Injector {
        controller_ca_pem: Some("configured".into()),
        ..injector.as_ref().clone()
    });
    assert_eq!(
        with_own_ca(&configured, Some(&own))
            .controller_ca_pem
            .as_deref(),
        Some("configured")
    );
}
