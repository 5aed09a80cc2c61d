//! A quick, bounded "never panics" pass over mutated and truncated inputs for every parser,
//! checking a few invariants on the way. (The real fuzzing comes later; this catches the
//! obvious.)

use super::{Rng, split};
use crate::usage::time::{parse_go_duration, parse_http_date, parse_rfc3339};
use crate::usage::{
    MAX_COOLDOWN, SseUsageScanner, StripUsageChunk, add_include_usage, cooldown_from_headers,
    from_json, quota_error_in_body, remaining_from_headers, request_wants_stream, set_json_field,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::IgnoredAny;
use serde_json::Value;
use std::time::{Duration, UNIX_EPOCH};

const ROUNDS: u64 = 1500;

const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b":",
    b",",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b" ",
    b"data:",
    b"data: ",
    b"usage",
    b"\"usage\":",
    b"\"choices\":[]",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\\u0000",
    b"\"stream\":true",
    b"[DONE]",
    b"usageMetadata",
    b"message",
    b"GMT",
    b"Z",
    b"+01:00",
    b"ms",
    b"\xc2\xb5s",
];

/// `seed` changed by a few random edits: flips, inserts, deletes, truncation, duplication.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.below(v.len() + 1)
        };
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, ins.iter().copied());
            }
            2 if at < v.len() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at..end);
            }
            3 => v.truncate(at),
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let end = (i + 1 + rng.below(16)).min(v.len());
                let dup: Vec<u8> = v[i..end].to_vec();
                v.splice(at..at, dup);
            }
            5 => v.insert(at, rng.next() as u8),
            _ => {}
        }
    }
    v
}

fn each_mutation(seeds: &[&[u8]], mut check: impl FnMut(&[u8], &mut Rng)) {
    let mut rng = Rng::new(0xC0FFEE);
    for seed in seeds {
        check(seed, &mut rng);
        for n in 0..=seed.len() {
            check(&seed[..n], &mut rng);
        }
        for _ in 0..ROUNDS {
            let m = mutate(&mut rng, seed);
            check(&m, &mut rng);
        }
    }
}

const BODIES: &[&[u8]] = &[
    br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}"#,
    br#"{"type":"message","usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"output_tokens":6}}"#,
    br#"{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":20,"thoughtsTokenCount":3,"totalTokenCount":31}}"#,
    br#"[{"usageMetadata":{"promptTokenCount":8}},{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":2}}]"#,
    br#"{"type":"message_start","message":{"usage":{"input_tokens":4}},"response":{"usage":null},"x_groq":[]}"#,
];

#[test]
fn from_json_never_panics() {
    each_mutation(BODIES, |b, _| {
        if let Some(u) = from_json(b) {
            let _ = u.total();
        }
    });
    // Deep nesting hits serde_json's recursion limit, not the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(from_json(deep.as_bytes()), None);
    let deep = format!(
        r#"{{"usage":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_eq!(from_json(deep.as_bytes()), None);
}

const STREAMS: &[&[u8]] = &[
    b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n",
    b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n",
    b"data:{\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":3}}\r\rid: 4\r: c\rdata:{\"choices\":[],\"usage\":{\"total_tokens\":1}}\r\r",
];

#[test]
fn sse_never_panics_and_stays_bounded() {
    each_mutation(STREAMS, |b, rng| {
        let max = 1 + rng.below(48);
        let seed = rng.next();
        // The scanner gives the same answer however the stream is split.
        let mut whole = SseUsageScanner::with_max_line(max);
        whole.feed(b);
        let mut pieces = SseUsageScanner::with_max_line(max);
        for p in split(b, seed, 1 + rng.below(20)) {
            pieces.feed(p);
            assert!(pieces.buffered_capacity() <= 2 * max + 64);
        }
        assert_eq!(whole.usage(), pieces.usage());

        // So does the filter, which only ever removes bytes and holds a bounded amount.
        let limit = 1 + rng.below(200);
        let run = |parts: Vec<&[u8]>| {
            let mut f = StripUsageChunk::with_limit(limit);
            let mut out = Vec::new();
            for p in parts {
                out.extend_from_slice(&f.filter(p));
                assert!(f.held_len() <= limit + 1);
            }
            out.extend_from_slice(&f.finish());
            assert_eq!(f.held_len(), 0);
            out
        };
        let a = run(vec![b]);
        let c = run(split(b, seed, 1 + rng.below(20)));
        assert_eq!(
            a,
            c,
            "split-independent on {:?}",
            String::from_utf8_lossy(b)
        );
        assert!(a.len() <= b.len());
    });
}

const REQUESTS: &[&[u8]] = &[
    br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi \"there\""}],"stream":true}"#,
    br#"{"stream":true,"stream_options":{"include_usage":false,"x":[1,{"y":null}]},"api_key":"c"}"#,
    b" {\n \"stream\" : true , \"stream_options\" : null , \"n\" : -1.5e3 }\n",
    br#"{"\u0073tream":true,"api_key":{"a":"}"},"api_key":1}"#,
];

#[test]
fn request_rewrites_never_panic_and_stay_valid() {
    each_mutation(REQUESTS, |b, _| {
        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let stream = request_wants_stream(b);
        let with_usage = add_include_usage(b);
        let with_key = set_json_field(b, "api_key", "sk-\"key\"");
        // serde_json's `Value` is the oracle where it accepts the body (it also rejects
        // numbers out of f64 range, which are valid JSON and accepted here).
        let Ok(parsed) = serde_json::from_slice::<Value>(b) else {
            for out in [&with_usage, &with_key].into_iter().flatten() {
                assert!(
                    serde_json::from_slice::<IgnoredAny>(out).is_ok(),
                    "{}",
                    show(out)
                );
            }
            return;
        };
        let object = parsed.is_object();
        assert_eq!(
            stream,
            object && parsed["stream"] == Value::Bool(true),
            "{}",
            show(b)
        );
        match with_usage {
            Some(out) => {
                assert!(stream);
                let v: Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{} -> {}: {e}", show(b), show(&out)));
                assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
                assert_eq!(v["stream"], Value::Bool(true));
            }
            None => assert!(
                !stream || parsed["stream_options"]["include_usage"] == Value::Bool(true),
                "{}",
                show(b)
            ),
        }
        match with_key {
            Some(out) => {
                assert!(object);
                let v: Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v["api_key"], Value::from("sk-\"key\""));
            }
            None => assert!(!object, "{}", show(b)),
        }
    });
}

#[test]
fn rate_limit_parsers_never_panic() {
    let values: &[&[u8]] = &[
        b"120",
        b"1.5",
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        b"Sunday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov  6 08:49:37 1994",
        b"1h2m3.5s",
        b"6m0s",
        b"2024-06-04T12:00:00.123456+02:00",
        b"2024-06-04T12:00:00Z",
    ];
    let names = [
        "retry-after",
        "retry-after-ms",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-limit-tokens",
        "anthropic-ratelimit-requests-remaining",
    ];
    let nows = [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        UNIX_EPOCH - Duration::from_secs(10),
    ];
    each_mutation(values, |b, rng| {
        let s = String::from_utf8_lossy(b);
        let _ = parse_go_duration(&s);
        let _ = parse_http_date(&s);
        let _ = parse_rfc3339(&s);
        if let Ok(v) = HeaderValue::from_bytes(b) {
            let mut h = HeaderMap::new();
            h.append(HeaderName::from_static(names[rng.below(names.len())]), v);
            for now in nows {
                if let Some(d) = cooldown_from_headers(&h, now) {
                    assert!(d <= MAX_COOLDOWN);
                }
            }
            let r = remaining_from_headers(&h);
            let _ = r.nearly_spent(0.05);
            let _ = r.nearly_spent(f64::INFINITY);
        }
    });
}

#[test]
fn quota_error_in_body_never_panics() {
    let bodies: &[&[u8]] = &[
        br#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"Your credit balance is too low"}}"#,
        br#"[{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}]"#,
    ];
    each_mutation(bodies, |b, rng| {
        let status = [0u16, 200, 400, 429, 529, u16::MAX][rng.below(6)];
        let _ = quota_error_in_body(status, b);
    });
}
