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
    UpstreamConnect,
    UpstreamTimeout,
    UpstreamProtocol,
    NotReady,
    ClientBody,
    BodyTooLarge,
    KeysUnavailable,
    UpstreamStatus,
    /// multiCluster: no cluster can take the request's model.
    NoCluster,
    /// A learned session's backend left the config.
    SessionGone,
    /// The client's address is not in the allowed sources (listener or pool).
    ForbiddenSource,
    /// Client authentication is on and the request has no valid token.
    Unauthorized,
    /// A loopback listener got a request for another host name (DNS rebinding: a web page
    /// in the developer's browser calling the local proxy under its own domain).
    ForbiddenHost,
}

// === impl Rejection ===

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::NoBackends => "no_backends",
            Rejection::KeyPoolUnavailable => "key_pool_unavailable",
            Rejection::UpstreamConnect => "upstream_connect",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::UpstreamProtocol => "upstream_protocol",
            Rejection::NotReady => "not_ready",
            Rejection::ClientBody => "client_body",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::KeysUnavailable => "keys_unavailable",
            Rejection::UpstreamStatus => "status",
            Rejection::NoCluster => "no_cluster",
            Rejection::SessionGone => "session_not_found",
            Rejection::ForbiddenSource => "forbidden_source",
            Rejection::Unauthorized => "unauthorized",
            Rejection::ForbiddenHost => "forbidden_host",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Rejection::NoRoute | Rejection::SessionGone => StatusCode::NOT_FOUND,
            Rejection::ClientBody => StatusCode::BAD_REQUEST,
            Rejection::ForbiddenSource | Rejection::ForbiddenHost => StatusCode::FORBIDDEN,
            Rejection::Unauthorized => StatusCode::UNAUTHORIZED,
            Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::KeysUnavailable => StatusCode::TOO_MANY_REQUESTS,
            Rejection::UpstreamConnect
            | Rejection::UpstreamProtocol
            | Rejection::UpstreamStatus => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::NoBackends
            | Rejection::KeyPoolUnavailable
            | Rejection::NotReady
            | Rejection::NoCluster => StatusCode::SERVICE_UNAVAILABLE,
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
