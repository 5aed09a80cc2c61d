//! Responses Keyway writes itself, on the traffic and the admin port alike. JSON in the shape
//! LLM clients already parse (`{"error": {"type", "message", "source": "keyway"}}`), naming
//! pools and paths, never keys. [`error_body`] is the one writer of that body.

use super::ProxyBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use std::borrow::Cow;

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
    /// The client's address is not in the allowed sources (listener, pool or admin port).
    ForbiddenSource,
    /// Client authentication is on and the request has no valid token (or the admin token
    /// is wrong).
    Unauthorized,
    /// A loopback listener got a request for another host name (DNS rebinding: a web page
    /// in the developer's browser calling the local proxy under its own domain).
    ForbiddenHost,
    /// The listener is at `--max-connections`: the connection is answered and closed.
    TooManyConnections,
}

/// A request the proxy answers itself: why, and a message for humans.
#[derive(Debug)]
pub struct Refusal {
    pub rejection: Rejection,
    pub message: Cow<'static, str>,
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
            Rejection::TooManyConnections => "too_many_connections",
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
            | Rejection::NoCluster
            | Rejection::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A JSON error response with a message for humans.
    pub fn response(self, message: &str) -> Response<ProxyBody> {
        error_response(self.status(), self.as_str(), message)
    }
}

// === impl Refusal ===

impl Refusal {
    pub fn new(rejection: Rejection, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            rejection,
            message: message.into(),
        }
    }

    /// The JSON error response.
    pub fn response(&self) -> Response<ProxyBody> {
        self.rejection.response(&self.message)
    }
}

/// The JSON error body: `{"error": {"type": kind, "message": message, "source": "keyway"}}`.
pub fn error_body(kind: &str, message: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "type": kind,
            "message": message,
            "source": "keyway",
        }
    });
    Bytes::from(body.to_string())
}

/// A JSON error response (see [`error_body`]).
pub fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(error_body(kind, message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_error_shape_for_every_port() {
        let body: serde_json::Value = serde_json::from_slice(&error_body("no_route", "m")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"type": "no_route", "message": "m", "source": "keyway"}})
        );
        let resp = Rejection::TooManyConnections.response("busy");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, error_body("too_many_connections", "busy"));
    }
}
