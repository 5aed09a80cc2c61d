//! The fuzz targets' bodies, shared by `cargo fuzz` (`fuzz_targets/*.rs`, nightly) and by the
//! stable randomized harness `tests/tests/hostile_input.rs`, which runs them inside
//! `cargo test`. Each target feeds hostile bytes to one parser the proxy runs on input it
//! does not control, and checks the few invariants that must hold whatever the input.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use keyway_api::model::Auth;
use keyway_api::secret::SecretValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the harness.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("json_body", json_body),
    ("sse_usage", sse_usage),
    ("ratelimit_headers", ratelimit_headers),
    ("deep_health", deep_health),
    ("resp_reply", resp_reply),
];

/// Manifest files (standalone mode and `keyway-proxy check`): parse and resolve. An error
/// message never repeats a Secret's value.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = keyway_api::manifest::Manifests::parse(text, &|_| None) {
        let _ = m.resolve();
    }
    // The input around a known key value, so whatever is wrong with the file is right next
    // to it: no error (`keyway-proxy check`, the reload log, `/config?format=manifests`) may
    // repeat it, nor a recognisable piece of it.
    const VALUE: &str = "sk-fuzz7Qx3marker";
    if text.contains("7Qx3") {
        return;
    }
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: fz}\nstringData:\n";
    for yaml in [
        format!("{secret}  k: {VALUE}{text}\n"),
        format!("{secret}  k: \"{VALUE}{text}\"\n"),
        format!("{secret}  k: '{VALUE}\n{text}"),
        format!("{text}\n{secret}  k: {VALUE}\n"),
        format!("{secret}  k: {VALUE}\n{text}"),
    ] {
        for error in keyway_api::manifest::Manifests::check(&yaml, &|_| None) {
            let shown = format!("{error} {error:?} {}", error.hint().unwrap_or_default());
            assert!(
                !shown.contains("7Qx3"),
                "an error repeats a Secret value: {shown}"
            );
        }
    }
}

/// Client request bodies: the model peek used for routing, the `include_usage` rewrite,
/// and key injection into a JSON body field. Injection yields a JSON object whose field is
/// exactly the key.
pub fn json_body(data: &[u8]) {
    let _ = keyway_proxy::http::peek_model(data);
    let _ = keyway_proxy::usage::request_wants_stream(data);
    if let Some(rewritten) = keyway_proxy::usage::add_include_usage(data) {
        assert!(keyway_proxy::usage::request_wants_stream(&rewritten));
    }
    let auth = Auth::BodyField {
        field: "api_key".into(),
    };
    let key = SecretValue::new("sk-fuzz-\"\\\u{7f}key");
    let body = Bytes::copy_from_slice(data);
    if let Some(out) = keyway_proxy::http::inject::inject_body(&auth, &key, &body) {
        // Whatever the client's body, the result is one JSON object with the key in place
        // whenever the input was one (duplicate members: the last one wins in serde_json).
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&out)
        {
            assert_eq!(
                m.get("api_key").and_then(|v| v.as_str()),
                Some(key.expose())
            );
        }
    }
}

/// Upstream SSE streams, cut at arbitrary points: the usage scanner and the usage-chunk
/// stripper never panic, and the stripper never emits more than it was given.
pub fn sse_usage(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut scanner = keyway_proxy::usage::SseUsageScanner::with_max_line(1024);
    let mut strip = keyway_proxy::usage::StripUsageChunk::with_limit(1024);
    let mut out = 0;
    for chunk in rest.chunks(step) {
        scanner.feed(chunk);
        out += strip.filter(chunk).len();
    }
    out += strip.finish().len();
    assert!(out <= rest.len());
    let _ = scanner.usage();
    let _ = keyway_proxy::usage::from_json(rest);
}

/// Upstream rate-limit headers and error bodies: a cooldown is never above the cap.
pub fn ratelimit_headers(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    if let Some(d) = keyway_proxy::usage::cooldown_from_headers(&headers, now) {
        assert!(d <= keyway_proxy::usage::MAX_COOLDOWN, "{d:?}");
    }
    let _ = keyway_proxy::usage::cooldown_from_headers(&headers, SystemTime::now());
    let remaining = keyway_proxy::usage::remaining_from_headers(&headers);
    let _ = remaining.nearly_spent(0.05);
    for status in [400, 403, 429] {
        let _ = keyway_proxy::usage::quota_error_in_body(status, data);
    }
}

/// Deep health-check bodies from upstreams.
pub fn deep_health(data: &[u8]) {
    if let Ok(models) = keyway_proxy::health::parse_deep(data) {
        for (_, load) in models {
            if let Some(c) = load.capacity {
                assert!(c.is_finite() && c >= 0.0, "capacity {c}");
            }
            let _ = load.headroom();
        }
    }
}

/// Redis replies (a hostile or broken Redis): bounded, never a panic.
pub fn resp_reply(data: &[u8]) {
    let mut reader = tokio::io::BufReader::new(data);
    let _ = futures::executor::block_on(keyway_proxy::affinity::resp::read_reply(&mut reader, 0));
}
