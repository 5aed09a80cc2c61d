//! A raw discovery client: the messages a proxy sends, for tests that must speak to the
//! controller as a proxy would not (oversized Hellos, made-up reports, other audiences).

use keyway_proto as pb;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// How to reach a controller.
#[derive(Clone, Debug, Default)]
pub struct Dial {
    /// `http://` or `https://` address.
    pub url: String,
    /// For `https://`: the CA bundle (PEM) to trust.
    pub ca_pem: Option<String>,
    /// For `https://`: the name the certificate must carry, when not the URL's host.
    pub server_name: Option<String>,
}

/// An open stream: the outbound sender (dropping it ends the stream) and the inbound one.
pub type RawStream = (
    mpsc::Sender<pb::ProxyMessage>,
    tonic::Streaming<pb::ControllerMessage>,
);

/// A Hello of a proxy of `namespace` with a random id.
pub fn hello(namespace: &str) -> pb::Hello {
    pb::Hello {
        proxy_id: format!("raw-{}", crate::random_hex(6)),
        namespace: namespace.to_owned(),
        build_version: "e2e".into(),
        ..Default::default()
    }
}

/// Says `hello` with `token` (if any) as bearer; the stream or the refusal.
pub async fn open(
    dial: &Dial,
    token: Option<&str>,
    hello: pb::Hello,
) -> Result<RawStream, tonic::Status> {
    let mut endpoint = Endpoint::from_shared(dial.url.clone())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    if dial.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(pem) = &dial.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(name) = &dial.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Hello(hello)),
    })
    .await
    .map_err(|_| tonic::Status::internal("queue Hello"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("token is not ASCII"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let inbound = client.stream(request).await?.into_inner();
    Ok((tx, inbound))
}

/// The next snapshot of a stream, within `timeout`; the stream's error otherwise.
pub async fn next_snapshot(
    inbound: &mut tonic::Streaming<pb::ControllerMessage>,
    timeout: Duration,
) -> Result<pb::Snapshot, String> {
    let read = async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::ControllerMessage {
                    message: Some(pb::controller_message::Message::Snapshot(s)),
                })) => return Ok(s),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the controller ended the stream".to_owned()),
                Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("no snapshot within {timeout:?}"))?
}
