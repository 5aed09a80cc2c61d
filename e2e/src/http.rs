//! A tiny HTTP/1.1 client (hyper-util's pooled client) for the proxy and admin endpoints.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// How long one request may take, headers and body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response, body read in full.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// A response header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled HTTP/1.1 client. Build one per test (it spawns its connection tasks on the
/// current tokio runtime).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; the whole exchange is bounded by [`REQUEST_TIMEOUT`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Response> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        let exchange = async {
            let resp = self.inner.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r.map_err(|e| e.context(url.to_owned())),
            Err(_) => anyhow::bail!("{url}: no complete response within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Response> {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    /// `POST url` with a JSON body.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> anyhow::Result<Response> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }
}

/// A minimal OpenAI chat-completions request body.
pub fn chat_request(model: &str, content: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    })
}
