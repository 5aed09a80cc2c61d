//! The pooled upstream client and the classification of its errors.

use super::ProxyBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// The pooled upstream client (HTTP/1.1 and HTTP/2 over TLS via ALPN).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// A client with its own connect timeout; `http2_only` speaks h2c with prior knowledge to
/// `http://` upstreams.
pub fn build(
    connect_timeout: Duration,
    tls: rustls::ClientConfig,
    http2_only: bool,
) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2_only)
        .build(https)
}

/// True for HTTP/2 REFUSED_STREAM and GOAWAY: the upstream did not process the request.
pub fn is_refused_stream(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

/// Formats an error with its causes (`a: b: c`), which hyper keeps in the source chain.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
