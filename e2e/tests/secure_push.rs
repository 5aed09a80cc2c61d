//! The push protocol is secured: the controller's gRPC listener speaks TLS only, every stream
//! is authenticated with the proxy's ServiceAccount token (a real TokenReview by the real API
//! server), and a proxy receives its own namespace plus only what other namespaces grant it.
//!
//! The proof that namespace b never receives a byte of namespace a's keys is a raw gRPC client
//! (the same messages a proxy sends) that records every byte of every message it is sent.

use bytes::{Buf, Bytes};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, random_hex};
use keyway_proto as pb;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The audience the controller requires of proxy tokens in this test.
const AUDIENCE: &str = "keyway-e2e-secure-push";
/// How soon a change must reach a connected client.
const PUSH_DEADLINE: Duration = Duration::from_secs(10);

fn manifests(upstream: &str, key: &str, lbp_extra: &str) -> String {
    manifests_with(upstream, key, "", lbp_extra)
}

/// [`manifests`] with extra ApiKeyPool spec lines too (the key owner's consent to a grant).
fn manifests_with(upstream: &str, key: &str, akp_extra: &str, lbp_extra: &str) -> String {
    Manifests::new()
        .secret("llm-keys", &[("key-1", key)])
        .key_pool("keys", "llm-keys")
        .spec(akp_extra)
        .pool("llm", "keys")
        .spec(lbp_extra)
        .backend("up", upstream)
        .yaml()
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`.
/// Returns (ca.crt, server.crt, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "1"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=keyway-e2e-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=keyway-controller",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

// === a raw discovery client that keeps every byte it is sent ===

/// Encodes what a proxy sends; hands back each message it receives as the raw bytes that
/// came off the stream (decoded only afterwards, by the test).
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct ProtoEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = pb::ProxyMessage;
    type Decode = Bytes;
    type Encoder = ProtoEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> ProtoEncoder {
        ProtoEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for ProtoEncoder {
    type Item = pb::ProxyMessage;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One open discovery stream of the raw client.
struct RawStream {
    inbound: tonic::Streaming<Bytes>,
    /// Every byte of every message received, in order.
    received: Vec<u8>,
    /// Kept open: dropping it ends the stream.
    _outbound: mpsc::Sender<pb::ProxyMessage>,
}

/// A TLS channel to `url` trusting `ca`.
async fn tls_channel(url: &str, ca: &Path) -> Result<Channel, tonic::transport::Error> {
    let pem = std::fs::read(ca).expect("read ca.crt");
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?
        .connect()
        .await
}

/// Says Hello as a proxy of `namespace` asking also for `extra` (naming each one's `llm`
/// pool, as granted pools are served only by name), with `token` as its bearer.
async fn open(
    channel: Channel,
    token: Option<&str>,
    namespace: &str,
    extra: &[&str],
) -> Result<RawStream, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Hello(pb::Hello {
            proxy_id: format!("raw-{}", random_hex(6)),
            namespace: namespace.to_owned(),
            namespaces: extra.iter().map(|s| (*s).to_owned()).collect(),
            pools: extra.iter().map(|ns| format!("{ns}/llm")).collect(),
            build_version: "e2e".into(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue Hello");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ASCII token"),
        );
    }
    let path = http::uri::PathAndQuery::from_static("/keyway.v1.Discovery/Stream");
    let inbound = grpc.streaming(request, path, RawCodec).await?.into_inner();
    Ok(RawStream {
        inbound,
        received: Vec::new(),
        _outbound: tx,
    })
}

impl RawStream {
    /// Reads snapshots (keeping their bytes) until one satisfies `done`.
    async fn until(&mut self, what: &str, done: impl Fn(&pb::Snapshot) -> bool) -> pb::Snapshot {
        let read = async {
            loop {
                let raw = self
                    .inbound
                    .message()
                    .await
                    .expect("stream error")
                    .expect("the controller ended the stream");
                self.received.extend_from_slice(&raw);
                let msg = pb::ControllerMessage::decode(raw).expect("decode a ControllerMessage");
                if let Some(pb::controller_message::Message::Snapshot(s)) = msg.message
                    && done(&s)
                {
                    return s;
                }
            }
        };
        tokio::time::timeout(PUSH_DEADLINE, read)
            .await
            .unwrap_or_else(|_| panic!("no snapshot within {PUSH_DEADLINE:?} where {what}"))
    }

    /// Whether `needle` occurs anywhere in the bytes received so far.
    fn saw(&self, needle: &str) -> bool {
        self.received
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

fn pools(s: &pb::Snapshot) -> Vec<String> {
    let mut v: Vec<String> = s
        .pools
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    v.sort();
    v
}

/// The status code of a stream attempt that must be refused.
async fn refused(result: Result<RawStream, tonic::Status>) -> tonic::Code {
    match result {
        Ok(mut s) => match s.inbound.message().await {
            Ok(m) => panic!("expected a refusal, the stream answered {m:?}"),
            Err(status) => status.code(),
        },
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_push() {
    let mut t = Timings::new("secure_push");
    let cluster = cluster().await;
    t.phase("shared cluster (includes its start-up if this test came first)");
    let (a, b, c) = tokio::join!(
        cluster.namespace("secure-a"),
        cluster.namespace("secure-b"),
        cluster.namespace("secure-c"),
    );
    let upstream_b = MockUpstream::start("b").await.expect("mock b");
    let upstream_c = MockUpstream::start("c").await.expect("mock c");
    let key_a = format!("sk-secret-aaaa{}", random_hex(24));
    let key_a2 = format!("sk-secret-aaaa{}", random_hex(24));
    let key_b = format!("sk-test-bbbb{}", random_hex(24));
    let key_b2 = format!("sk-test-bbbb{}", random_hex(24));
    let key_c = format!("sk-test-cccc{}", random_hex(24));
    // c grants its pool to b's proxies; its route keeps it apart from b's catch-all pool.
    let c_grant = format!(
        "  allowedProxyNamespaces: [{}]\n  routes:\n  - headers: [{{name: x-tenant, value: c}}]\n",
        b.name()
    );
    // The key owner (c's ApiKeyPool) consents to the grant too.
    let c_consent = format!("  allowedProxyNamespaces: [{}]\n", b.name());
    let (ma, mb, mc) = (
        manifests(&upstream_b.url(), &key_a, ""),
        manifests(&upstream_b.url(), &key_b, ""),
        manifests_with(&upstream_c.url(), &key_c, &c_consent, &c_grant),
    );
    tokio::join!(a.apply(&ma), b.apply(&mb), c.apply(&mc));
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_certs(dir.path());
    let (token_b, token_a) = tokio::join!(
        cluster.service_account_token(b.name(), "keyway-proxy", Some(AUDIENCE)),
        cluster.service_account_token(a.name(), "keyway-proxy", Some(AUDIENCE)),
    );
    let token_b_default_audience = cluster
        .service_account_token(b.name(), "keyway-proxy", None)
        .await;
    let token_file = dir.path().join("token-b");
    std::fs::write(&token_file, &token_b).expect("write token");
    t.phase("namespaces, manifests, certificates, tokens");

    let watched = format!("{},{},{}", a.name(), b.name(), c.name());
    let (cert, key, ca_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
        ca.to_string_lossy().into_owned(),
    );
    let controller = Controller::start_with(
        cluster,
        None,
        &[
            "--watch-namespace",
            &watched,
            "--grpc-tls-cert",
            &cert,
            "--grpc-tls-key",
            &key,
            "--proxy-auth",
            "tokenreview",
            "--token-audience",
            AUDIENCE,
        ],
    )
    .await;
    assert!(controller.grpc_url.starts_with("https://"));
    t.phase("controller ready (TLS, tokenreview)");

    // --- the real proxy of namespace b: TLS with our CA, its token, asks for a and c too ---
    let token_file_s = token_file.to_string_lossy().into_owned();
    let ca_pem = std::fs::read_to_string(&ca_s).expect("read the CA PEM");
    let extra = format!("{},{}", a.name(), c.name());
    // A granted pool is served only when the proxy names it.
    let named = format!("{}/llm,{}/llm", a.name(), c.name());
    let proxy = Proxy::start(
        &controller,
        b.name(),
        &[
            "--token-file",
            &token_file_s,
            // The CA as PEM text, the way the sidecar injector hands it over
            // (KEYWAY_CONTROLLER_CA_PEM); the file form is unit-tested.
            "--controller-ca-pem",
            &ca_pem,
            "--extra-namespaces",
            &extra,
            "--pools",
            &named,
        ],
    )
    .await;
    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    let r = http
        .post_json(&url, &chat_request("gpt-4o-mini", "hi"))
        .await
        .expect("request through b's pool");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_b.received_keys(), [key_b.as_str()]);
    let body = serde_json::to_vec(&chat_request("gpt-4o-mini", "hi c")).expect("json");
    let r = http
        .send(
            http::Method::POST,
            &url,
            &[("content-type", "application/json"), ("x-tenant", "c")],
            body.into(),
        )
        .await
        .expect("request through c's granted pool");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_c.received_keys(), [key_c.as_str()]);
    t.phase("real proxy over TLS + token: b's pool and c's granted pool serve");

    // --- a raw client as b's proxy: record every byte pushed to it ---
    let channel = tls_channel(&controller.grpc_url, &ca)
        .await
        .expect("TLS channel");
    let extra = [a.name(), c.name()];
    let mut stream = open(channel.clone(), Some(&token_b), b.name(), &extra)
        .await
        .expect("b's token opens a stream for b");
    let first = stream
        .until("b and c's pools arrived", |s| s.pools.len() == 2)
        .await;
    assert_eq!(
        pools(&first),
        [format!("{}/llm", b.name()), format!("{}/llm", c.name())]
    );
    // Namespace a changes; then namespace b does. Once b's change has arrived, a's change has
    // long been indexed, and none of it was sent.
    a.apply(&manifests(&upstream_b.url(), &key_a2, "")).await;
    b.apply(&manifests(&upstream_b.url(), &key_b2, "")).await;
    let rotated = stream
        .until("b's rotated key arrived", |s| {
            s.key_pools
                .iter()
                .flat_map(|k| &k.keys)
                .any(|k| k.value == key_b2)
        })
        .await;
    assert!(rotated.pools.iter().all(|p| p.namespace != a.name()));
    // The grant is revoked: c's pool and key leave b's stream.
    c.apply(&manifests(&upstream_c.url(), &key_c, "")).await;
    let revoked = stream
        .until("c's grant was revoked", |s| s.pools.len() == 1)
        .await;
    assert_eq!(pools(&revoked), [format!("{}/llm", b.name())]);
    assert!(revoked.key_pools.iter().all(|k| k.namespace == b.name()));

    assert!(stream.saw(&key_b) && stream.saw(&key_b2) && stream.saw(&key_c));
    for secret in [&key_a, &key_a2] {
        assert!(
            !stream.saw(secret),
            "namespace b was sent a key value of namespace a"
        );
    }
    assert!(
        !stream.saw("sk-secret-aaaa"),
        "not even a prefix of a's keys"
    );
    eprintln!(
        "[e2e] the raw client of namespace b received {} bytes; none of namespace a's keys",
        stream.received.len()
    );
    drop(stream);
    t.phase("raw client: b gets b (+ c while granted), never a");

    // --- refusals ---
    let code = refused(open(channel.clone(), None, b.name(), &[]).await).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "no token");
    let code = refused(open(channel.clone(), Some("bogus.token.value"), b.name(), &[]).await).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "bogus token");
    let code = refused(open(channel.clone(), Some(&token_a), b.name(), &[]).await).await;
    assert_eq!(
        code,
        tonic::Code::PermissionDenied,
        "a token of namespace a claiming namespace b"
    );
    let code = refused(
        open(
            channel.clone(),
            Some(&token_b_default_audience),
            b.name(),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(
        code,
        tonic::Code::Unauthenticated,
        "b's token for another audience"
    );
    // a's own token is good for a, and a asking for b gets nothing of b (no grant).
    let mut a_stream = open(channel.clone(), Some(&token_a), a.name(), &[b.name()])
        .await
        .expect("a's token opens a stream for a");
    let a_snap = a_stream
        .until("a's pool arrived", |s| !s.pools.is_empty())
        .await;
    assert_eq!(pools(&a_snap), [format!("{}/llm", a.name())]);
    assert!(!a_stream.saw(&key_b) && !a_stream.saw(&key_b2) && !a_stream.saw(&key_c));
    drop(a_stream);
    t.phase("refusals: no token, bogus token, wrong namespace, wrong audience");

    // --- plaintext against the TLS listener fails, and so does TLS without our CA ---
    let plain_url = controller.grpc_url.replacen("https://", "http://", 1);
    let plain = async {
        let channel = Endpoint::from_shared(plain_url.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        open(channel, Some(&token_b), b.name(), &[])
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain)
        .await
        .expect("the plaintext attempt ends");
    assert!(plain.is_err(), "a plaintext client must not get a stream");
    eprintln!("[e2e] plaintext client refused: {}", plain.unwrap_err());
    let untrusted = async {
        let channel = Endpoint::from_shared(controller.grpc_url.clone())
            .map_err(|e| e.to_string())?
            .tls_config(ClientTlsConfig::new())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        open(channel, Some(&token_b), b.name(), &[])
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}", s.code()))
    };
    let untrusted = tokio::time::timeout(Duration::from_secs(15), untrusted)
        .await
        .expect("the untrusted attempt ends");
    assert!(
        untrusted.is_err(),
        "a client that does not trust our CA must fail the handshake"
    );
    t.phase("plaintext and untrusted TLS clients fail");

    // Nothing secret in the logs: no token, no key value.
    let logs = controller.process.logs() + &proxy.process.logs();
    for secret in [&token_b, &token_a, &key_a, &key_b, &key_c] {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
    }
    t.total();
}
