//! Responses Keyway writes itself. JSON in the shape LLM clients already parse
//! (`{"error": {"type", "message"}}`), naming pools and paths, never keys.

use super::ProxyBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

/// Why the proxy answered a request itself. `as_str` is the bounded metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    NoRoute,
    NoBackends,
    KeyPoolUnavailable,
    NoKeys,
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamProtocol,
    NotReady,
    ClientBody,
}

// === impl Rejection ===

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::NoBackends => "no_backends",
            Rejection::KeyPoolUnavailable => "key_pool_unavailable",
            Rejection::NoKeys => "no_keys",
            Rejection::UpstreamConnect => "upstream_connect",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::UpstreamProtocol => "upstream_protocol",
            Rejection::NotReady => "not_ready",
            Rejection::ClientBody => "client_body",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::ClientBody => StatusCode::BAD_REQUEST,
            Rejection::UpstreamConnect | Rejection::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::NoBackends
            | Rejection::KeyPoolUnavailable
            | Rejection::NoKeys
            | Rejection::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A JSON error response with a message for humans.
    pub fn response(self, message: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": {
                "type": self.as_str(),
                "message": message,
                "source": "keyway",
            }
        });
        let mut resp = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
