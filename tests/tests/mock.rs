//! Black-box tests of the mock upstream through real HTTP clients.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyway_testkit::mock::{DEFAULT_STREAM_CHUNKS, UPSTREAM_HEADER};
use keyway_testkit::{Behavior, MockUpstream, eventually, free_port};
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const T: Duration = Duration::from_secs(5);

fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(body.into())).unwrap()
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let resp = tokio::time::timeout(T, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(T, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (Response::from_parts(parts, ()), body)
}

async fn get(client: &HttpClient, url: &str) -> (Response<()>, Bytes) {
    send(client, request(Method::GET, url, &[], Bytes::new())).await
}

fn chat_body(stream: bool, include_usage: bool) -> String {
    let mut body = json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "say hi please"}],
    });
    if stream {
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    body.to_string()
}

fn chat_request(
    mock: &MockUpstream,
    headers: &[(&str, &str)],
    body: String,
) -> Request<Full<Bytes>> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(
        Method::POST,
        &format!("{}/v1/chat/completions", mock.url()),
        &all,
        body,
    )
}

fn json_of(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap()
}

fn upstream_header(resp: &Response<()>) -> &str {
    resp.headers()[UPSTREAM_HEADER].to_str().unwrap()
}

/// Reads the streamed body frame by frame, returning each data frame with
/// the time it arrived.
async fn read_frames(body: &mut Incoming) -> Vec<(Instant, Bytes)> {
    let mut frames = Vec::new();
    while let Some(frame) = tokio::time::timeout(T, body.frame()).await.unwrap() {
        // h2 may end the stream with an empty DATA frame.
        if let Ok(data) = frame.unwrap().into_data()
            && !data.is_empty()
        {
            frames.push((Instant::now(), data));
        }
    }
    frames
}

fn sse_payloads(frames: &[(Instant, Bytes)]) -> Vec<String> {
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn json_chat_completion_with_usage() {
    let mock = MockUpstream::start("alpha").await.unwrap();
    assert_eq!(mock.name(), "alpha");
    assert_eq!(
        mock.url(),
        format!("http://127.0.0.1:{}", mock.addr().port())
    );

    let (resp, body) = send(
        &h1_client(),
        chat_request(
            &mock,
            &[("authorization", "Bearer sk-alpha")],
            chat_body(false, false),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream_header(&resp), "alpha");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json_of(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["choices"][0]["message"]["content"], "hello from alpha");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 6);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, Method::POST);
    assert_eq!(reqs[0].uri, "/v1/chat/completions");
    assert_eq!(reqs[0].version, Version::HTTP_11);
    assert_eq!(reqs[0].key.as_deref(), Some("sk-alpha"));
    assert_eq!(reqs[0].header("authorization"), Some("Bearer sk-alpha"));
    assert_eq!(reqs[0].json().unwrap()["model"], "gpt-test");
    assert_eq!(mock.received_keys(), vec!["sk-alpha".to_owned()]);
}

#[tokio::test]
async fn invalid_chat_json_is_400() {
    let mock = MockUpstream::start("a").await.unwrap();
    let (resp, body) = send(
        &h1_client(),
        chat_request(&mock, &[], "{not json".to_owned()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstream_header(&resp), "a");
    assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn sse_chunks_arrive_as_separate_frames_spaced_by_interval() {
    let mock = MockUpstream::start("streamer").await.unwrap();
    let interval = Duration::from_millis(150);
    mock.set_stream(3, interval);

    let resp = tokio::time::timeout(
        T,
        h1_client().request(chat_request(
            &mock,
            &[("x-api-key", "sk-s")],
            chat_body(true, true),
        )),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()[UPSTREAM_HEADER], "streamer");
    let mut body = resp.into_body();
    let frames = read_frames(&mut body).await;

    // 3 content chunks + usage chunk + [DONE], each in its own frame.
    assert_eq!(frames.len(), 5, "frames: {frames:?}");
    for (_, frame) in &frames {
        assert!(
            frame.starts_with(b"data: ") && frame.ends_with(b"\n\n"),
            "{frame:?}"
        );
        assert_eq!(frame.windows(6).filter(|w| w == b"data: ").count(), 1);
    }
    // Not buffered: consecutive frames arrive (about) `interval` apart.
    for pair in frames.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= interval / 2, "frames arrived only {gap:?} apart");
    }

    let payloads = sse_payloads(&frames);
    for p in &payloads[..3] {
        let chunk: Value = serde_json::from_str(p).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-test");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "tok");
    }
    let usage: Value = serde_json::from_str(&payloads[3]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 3);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["total_tokens"], 6);
    assert_eq!(payloads[4], "[DONE]");
    assert_eq!(mock.received_keys(), vec!["sk-s".to_owned()]);
}

#[tokio::test]
async fn sse_without_usage_uses_default_chunks() {
    let mock = MockUpstream::start("s").await.unwrap();
    let (resp, body) = send(
        &h1_client(),
        chat_request(&mock, &[], chat_body(true, false)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), DEFAULT_STREAM_CHUNKS + 1);
    assert!(!text.contains("\"usage\""));
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
}

#[tokio::test]
async fn records_keys_from_all_sources() {
    let mock = MockUpstream::start("k").await.unwrap();
    let client = h1_client();
    let base = mock.url();
    for (path, headers) in [
        ("/v1/models", vec![("authorization", "Bearer sk-bearer")]),
        ("/v1/messages", vec![("x-api-key", "sk-anthropic")]),
        ("/v1beta/models", vec![("x-goog-api-key", "sk-goog")]),
        (
            "/v1beta/models/x:generateContent?alt=sse&key=sk-query",
            vec![],
        ),
        ("/nokey", vec![]),
    ] {
        let (resp, _) = send(
            &client,
            request(Method::GET, &format!("{base}{path}"), &headers, ""),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(mock.request_count(), 5);
    assert_eq!(
        mock.received_keys(),
        vec!["sk-bearer", "sk-anthropic", "sk-goog", "sk-query"]
    );
    let reqs = mock.requests();
    assert_eq!(reqs[3].path, "/v1beta/models/x:generateContent");
    assert_eq!(reqs[3].query.as_deref(), Some("alt=sse&key=sk-query"));
    assert_eq!(reqs[4].key, None);

    mock.clear();
    assert_eq!(mock.request_count(), 0);
    assert!(mock.received_keys().is_empty());
}

#[tokio::test]
async fn models_healthz_and_echo() {
    let mock = MockUpstream::start("e").await.unwrap();
    let client = h1_client();
    let (resp, body) = get(&client, &format!("{}/v1/models", mock.url())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_of(&body)["data"][0]["id"], "mock-model");

    let (resp, body) = get(&client, &format!("{}/healthz", mock.url())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream_header(&resp), "e");
    assert_eq!(&body[..], b"ok\n");

    let (resp, body) = send(
        &client,
        request(
            Method::PUT,
            &format!("{}/some/path?x=1", mock.url()),
            &[],
            "payload",
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        json_of(&body),
        json!({"upstream": "e", "method": "PUT", "path": "/some/path", "query": "x=1"})
    );
    assert_eq!(mock.requests()[2].body_text(), "payload");
}

#[tokio::test]
async fn status_429_with_retry_after() {
    let mock = MockUpstream::start("limited").await.unwrap();
    let client = h1_client();
    mock.set_behavior(Behavior::rate_limited(30));
    assert_eq!(mock.behavior(), Behavior::rate_limited(30));
    for _ in 0..2 {
        let (resp, body) = send(&client, chat_request(&mock, &[], chat_body(false, false))).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "30");
        assert_eq!(upstream_header(&resp), "limited");
        assert_eq!(json_of(&body)["error"]["code"], "rate_limit_exceeded");
    }

    mock.set_behavior(Behavior::Status {
        code: 503,
        headers: vec![("x-custom".into(), "1".into())],
        body: "down".into(),
    });
    let (resp, body) = get(&client, &format!("{}/v1/models", mock.url())).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["x-custom"], "1");
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(&body[..], b"down");

    // /healthz is never affected.
    let (resp, _) = get(&client, &format!("{}/healthz", mock.url())).await;
    assert_eq!(resp.status(), StatusCode::OK);

    mock.set_behavior(Behavior::Normal);
    let (resp, _) = send(&client, chat_request(&mock, &[], chat_body(false, false))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(mock.request_count(), 5);
}

#[tokio::test]
async fn fail_next_then_normal() {
    let mock = MockUpstream::start("flaky").await.unwrap();
    let client = h1_client();
    mock.fail_next(2, Behavior::status(500));
    mock.fail_next(1, Behavior::rate_limited(1));
    assert_eq!(mock.pending_failures(), 3);

    // Health checks do not consume the queue.
    let (resp, _) = get(&client, &format!("{}/healthz", mock.url())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(mock.pending_failures(), 3);

    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (resp, _) = send(&client, chat_request(&mock, &[], chat_body(false, false))).await;
        assert_eq!(upstream_header(&resp), "flaky");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, vec![500, 500, 429, 200, 200]);
    assert_eq!(mock.pending_failures(), 0);

    // Queued behaviours take precedence over the standing one, which resumes after.
    mock.set_behavior(Behavior::status(503));
    mock.fail_next(1, Behavior::Normal);
    let (first, _) = get(&client, &format!("{}/v1/models", mock.url())).await;
    let (second, _) = get(&client, &format!("{}/v1/models", mock.url())).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 503)
    );

    mock.reset();
    assert_eq!(mock.behavior(), Behavior::Normal);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn h2c_works() {
    let mock = MockUpstream::start("h2").await.unwrap();
    let client = h2c_client();
    let resp = tokio::time::timeout(
        T,
        client.request(chat_request(
            &mock,
            &[("authorization", "Bearer sk-h2")],
            chat_body(false, false),
        )),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[UPSTREAM_HEADER], "h2");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        json_of(&body)["choices"][0]["message"]["content"],
        "hello from h2"
    );

    // Streaming over h2c, frames spaced by the interval.
    let interval = Duration::from_millis(100);
    mock.set_stream(2, interval);
    let resp = tokio::time::timeout(
        T,
        client.request(chat_request(&mock, &[], chat_body(true, false))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut body = resp.into_body();
    let frames = read_frames(&mut body).await;
    assert_eq!(sse_payloads(&frames).len(), 3);
    assert_eq!(frames.len(), 3);
    assert!(frames[2].0 - frames[0].0 >= interval);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.version == Version::HTTP_2));
    assert_eq!(reqs[0].key.as_deref(), Some("sk-h2"));
}

#[tokio::test]
async fn delay_postpones_answer() {
    let mock = MockUpstream::start("slow").await.unwrap();
    let delay = Duration::from_millis(200);
    mock.set_behavior(Behavior::Delay(delay));
    let start = Instant::now();
    let (resp, _) = get(&h1_client(), &format!("{}/v1/models", mock.url())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(start.elapsed() >= delay);
}

#[tokio::test]
async fn hang_never_answers_and_shutdown_releases_it() {
    let mock = MockUpstream::start("hang").await.unwrap();
    mock.set_behavior(Behavior::Hang);
    let url = format!("{}/v1/models", mock.url());
    let pending = tokio::spawn(async move {
        h1_client()
            .request(request(Method::GET, &url, &[], ""))
            .await
    });

    eventually(T, "hung request recorded", || async {
        mock.request_count() == 1
    })
    .await;
    assert!(!pending.is_finished());

    let start = Instant::now();
    tokio::time::timeout(T, mock.shutdown()).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "shutdown waited on the hung request"
    );
    let result = tokio::time::timeout(T, pending).await.unwrap().unwrap();
    assert!(
        result.is_err(),
        "hung request should fail on shutdown: {result:?}"
    );
}

#[tokio::test]
async fn reset_drops_connection() {
    let mock = MockUpstream::start("reset").await.unwrap();
    mock.fail_next(1, Behavior::Reset);
    let client = h1_client();
    let url = format!("{}/v1/models", mock.url());
    let result = tokio::time::timeout(T, client.request(request(Method::GET, &url, &[], "")))
        .await
        .unwrap();
    assert!(result.is_err(), "expected a transport error: {result:?}");
    let (resp, _) = get(&client, &url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn shutdown_frees_the_port_for_a_restart() {
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mock = MockUpstream::start_on("first", addr).await.unwrap();
    assert_eq!(mock.addr(), addr);
    let client = h1_client();
    let url = format!("http://{addr}/healthz");
    let (resp, _) = get(&client, &url).await;
    assert_eq!(upstream_header(&resp), "first");
    mock.shutdown().await;

    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let again = MockUpstream::start_on("second", addr).await.unwrap();
    let (resp, _) = get(&h1_client(), &url).await;
    assert_eq!(upstream_header(&resp), "second");
    assert_eq!(again.request_count(), 1);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let mock = MockUpstream::start("dropped").await.unwrap();
    let addr = mock.addr();
    drop(mock);
    eventually(T, "listener closed after drop", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn invalid_name_is_rejected() {
    let err = MockUpstream::start("bad\nname").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn eventually_returns_once_true() {
    let start = Instant::now();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    eventually(T, "counter reaches 3", || async {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(start.elapsed() < T);
}

#[tokio::test]
#[should_panic(expected = "waiting for: never true")]
async fn eventually_panics_after_deadline() {
    eventually(Duration::from_millis(100), "never true", || async { false }).await;
}

#[tokio::test]
#[should_panic(expected = "waiting for: hanging predicate")]
async fn eventually_bounds_a_hanging_predicate() {
    eventually(Duration::from_millis(100), "hanging predicate", || {
        std::future::pending::<bool>()
    })
    .await;
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}
