//! hyper-util's pooled client for active health checks and key re-probes, and what the
//! request path shares with them: the TLS server name of a `hostHeader`, the refused-stream
//! test and the error-chain formatter. Requests go through Keyway's own pool
//! (`super::upstream`).
//!
//! The probes' clients are built from the same upstream TLS config as requests
//! (`crate::tls::upstream_config`: webpki roots plus `--upstream-ca`), with ALPN h2 and
//! http/1.1, and the backend's `hostHeader` as the TLS server name when set.

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use std::time::Duration;

/// How a client reaches its upstreams, besides the TLS config.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Speak h2c with prior knowledge to `http://` upstreams (TLS upstreams choose by ALPN).
    pub http2_only: bool,
    /// The TLS server name (SNI, and the name the certificate must carry) instead of the
    /// URL's host: the backend's `hostHeader`.
    pub server_name: Option<ServerName<'static>>,
    /// Idle connections kept per host (`None`: no bound).
    pub max_idle_per_host: Option<usize>,
}

impl ClientOptions {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            http2_only: false,
            server_name: None,
            max_idle_per_host: None,
        }
    }
}

/// A pooled client for any request body type, from the upstream TLS config.
pub fn build_with<B>(
    tls: rustls::ClientConfig,
    options: &ClientOptions,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &options.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    let https = builder.enable_http1().enable_http2().wrap_connector(http);
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(options.http2_only);
    if let Some(n) = options.max_idle_per_host {
        client.pool_max_idle_per_host(n);
    }
    client.build(https)
}

/// The TLS server name a `hostHeader` value stands for: its host, without a port or IPv6
/// brackets. `None` when it is not a DNS name or an IP address.
pub fn server_name(host_header: &str) -> Option<ServerName<'static>> {
    let host = match host_header.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => host_header
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host_header, |(h, _)| h),
    };
    ServerName::try_from(host.to_owned()).ok()
}

/// True when the upstream did not process the request, so it is safe to send again, even
/// when not idempotent: HTTP/2 REFUSED_STREAM (RFC 9113 §8.7), or a stream ended by the
/// upstream's graceful GOAWAY (`NO_ERROR`), which ends only the streams above the last one
/// the upstream processes (§6.8). A GOAWAY with an error code also ends streams the upstream
/// may have started, so it is not counted here.
pub fn is_refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
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
