use crate::usage::ratelimit::{MAX_COOLDOWN, Remaining};
use crate::usage::time::{parse_go_duration, parse_http_date, parse_rfc3339};
use crate::usage::{cooldown_from_headers, quota_error_in_body, remaining_from_headers};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// 1994-11-06T08:49:37Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(784_111_777)
}

fn cooldown(pairs: &[(&str, &str)]) -> Option<Duration> {
    cooldown_from_headers(&headers(pairs), now())
}

const fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

#[test]
fn retry_after_seconds() {
    assert_eq!(cooldown(&[("retry-after", "120")]), secs(120));
    assert_eq!(cooldown(&[("Retry-After", " 7 ")]), secs(7));
    assert_eq!(cooldown(&[("retry-after", "0")]), secs(0));
    assert_eq!(
        cooldown(&[("retry-after", "1.5")]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(cooldown(&[("retry-after", "-5")]), secs(0));
    assert_eq!(cooldown(&[("retry-after", "86400")]), Some(MAX_COOLDOWN));
    assert_eq!(
        cooldown(&[("retry-after", "99999999999999999999999999999")]),
        Some(MAX_COOLDOWN)
    );
    // Unparseable: falls through to the next source.
    assert_eq!(
        cooldown(&[("retry-after", "soon"), ("retry-after-ms", "250")]),
        Some(Duration::from_millis(250))
    );
    assert_eq!(cooldown(&[("retry-after", "soon")]), None);
    // The first parseable of several.
    assert_eq!(
        cooldown(&[("retry-after", "soon"), ("retry-after", "3")]),
        secs(3)
    );
}

#[test]
fn retry_after_http_date() {
    assert_eq!(
        cooldown(&[("retry-after", "Sun, 06 Nov 1994 08:50:37 GMT")]),
        secs(60)
    );
    assert_eq!(
        cooldown(&[("retry-after", "Sunday, 06-Nov-94 08:51:37 GMT")]),
        secs(120)
    );
    assert_eq!(
        cooldown(&[("retry-after", "Sun Nov  6 08:49:47 1994")]),
        secs(10)
    );
    // In the past: zero. Far future: capped.
    assert_eq!(
        cooldown(&[("retry-after", "Sat, 05 Nov 1994 08:49:37 GMT")]),
        secs(0)
    );
    assert_eq!(
        cooldown(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
        Some(MAX_COOLDOWN)
    );
    // Retry-After wins over the others.
    assert_eq!(
        cooldown(&[
            ("retry-after", "Sun, 06 Nov 1994 08:49:40 GMT"),
            ("retry-after-ms", "9000"),
            ("x-ratelimit-reset-tokens", "1m")
        ]),
        secs(3)
    );
}

#[test]
fn http_dates() {
    assert_eq!(
        parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(
        parse_http_date("Wed, 29 Feb 2024 12:00:00 GMT"),
        Some(1_709_208_000)
    );
    assert_eq!(
        parse_http_date("sun, 06 nov 1994 08:49:37 gmt"),
        Some(784_111_777)
    );
    assert_eq!(parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT"), Some(0));
    assert_eq!(
        parse_http_date("Sun Nov  6 08:49:37 1994"),
        Some(784_111_777)
    );
    for bad in [
        "",
        "GMT",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 PST",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Thu, 29 Feb 2023 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Nov 1994 08:49:37:1 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT extra tokens here",
        "1994-11-06T08:49:37Z",
    ] {
        assert_eq!(parse_http_date(bad), None, "{bad:?}");
    }
}

#[test]
fn retry_after_ms() {
    assert_eq!(
        cooldown(&[("retry-after-ms", "1500")]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        cooldown(&[("retry-after-ms", "20.5")]),
        Some(Duration::from_micros(20_500))
    );
    assert_eq!(
        cooldown(&[("retry-after-ms", "99999999999")]),
        Some(MAX_COOLDOWN)
    );
    assert_eq!(
        cooldown(&[
            ("retry-after-ms", "x"),
            ("x-ratelimit-reset-requests", "2s")
        ]),
        secs(2)
    );
}

#[test]
fn go_durations() {
    let cases: &[(&str, f64)] = &[
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("7.66s", 7.66),
        ("1.5µs", 1.5e-6),
        ("1.5us", 1.5e-6),
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("-1m", -60.0),
        ("+2s", 2.0),
        (" 3s ", 3.0),
    ];
    for (s, want) in cases {
        let got = parse_go_duration(s).unwrap_or_else(|| panic!("{s:?}"));
        assert!((got - want).abs() < 1e-9, "{s:?}: {got} != {want}");
    }
    for bad in [
        "", "s", "1", "1x", "1.2.3s", ".s", "1s2", "-", "h1", "1 s", "5m 2s",
    ] {
        assert_eq!(parse_go_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn openai_reset_headers_take_the_max() {
    assert_eq!(
        cooldown(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s")
        ]),
        secs(360)
    );
    assert_eq!(
        cooldown(&[
            ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-reset-tokens", "bogus")
        ]),
        Some(Duration::from_millis(20))
    );
    assert_eq!(
        cooldown(&[("x-ratelimit-reset-tokens", "2h")]),
        Some(MAX_COOLDOWN)
    );
    assert_eq!(cooldown(&[("x-ratelimit-reset-tokens", "-3s")]), secs(0));
    // OpenAI's win over Anthropic's.
    assert_eq!(
        cooldown(&[
            ("anthropic-ratelimit-requests-reset", "1994-11-06T08:59:37Z"),
            ("x-ratelimit-reset-tokens", "5s")
        ]),
        secs(5)
    );
}

#[test]
fn anthropic_reset_headers() {
    assert_eq!(
        cooldown(&[("anthropic-ratelimit-requests-reset", "1994-11-06T08:50:37Z")]),
        secs(60)
    );
    assert_eq!(
        cooldown(&[
            ("anthropic-ratelimit-requests-reset", "1994-11-06T08:50:37Z"),
            ("anthropic-ratelimit-tokens-reset", "1994-11-06T08:51:37Z"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "1994-11-06T08:49:00Z"
            ),
            ("anthropic-ratelimit-output-tokens-reset", "not a time"),
        ]),
        secs(120)
    );
    assert_eq!(
        cooldown(&[(
            "anthropic-ratelimit-output-tokens-reset",
            "1994-11-06T09:49:38.5+01:00"
        )]),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        cooldown(&[("anthropic-ratelimit-tokens-reset", "1994-11-06T00:00:00Z")]),
        secs(0)
    );
    assert_eq!(
        cooldown(&[("anthropic-ratelimit-tokens-reset", "2099-01-01T00:00:00Z")]),
        Some(MAX_COOLDOWN)
    );
    assert_eq!(cooldown(&[]), None);
    assert_eq!(cooldown(&[("x-unrelated", "1s")]), None);
}

#[test]
fn rfc3339() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(
        parse_rfc3339("1994-11-06T08:49:37Z"),
        Some((784_111_777, 0))
    );
    assert_eq!(
        parse_rfc3339("1994-11-06t08:49:37z"),
        Some((784_111_777, 0))
    );
    assert_eq!(
        parse_rfc3339("1994-11-06 08:49:37Z"),
        Some((784_111_777, 0))
    );
    assert_eq!(
        parse_rfc3339("1994-11-06T09:49:37+01:00"),
        Some((784_111_777, 0))
    );
    assert_eq!(
        parse_rfc3339("1994-11-06T03:49:37-05:00"),
        Some((784_111_777, 0))
    );
    assert_eq!(
        parse_rfc3339("1994-11-06T08:49:37.25Z"),
        Some((784_111_777, 250_000_000))
    );
    assert_eq!(
        parse_rfc3339("1994-11-06T08:49:37.123456789123Z"),
        Some((784_111_777, 123_456_789))
    );
    assert_eq!(
        parse_rfc3339("2024-02-29T00:00:00Z"),
        Some((1_709_164_800, 0))
    );
    assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
    for bad in [
        "",
        "1994-11-06",
        "1994-11-06T08:49:37",
        "1994-11-06T08:49:37.Z",
        "1994-13-06T08:49:37Z",
        "1994-02-30T08:49:37Z",
        "1994-11-06T25:49:37Z",
        "1994-11-06T08:49:37+0100",
        "1994-11-06T08:49:37+01:00x",
        "1994-11-06T08:49:37Zx",
        "1994/11/06T08:49:37Z",
        "+994-11-06T08:49:37Z",
        "Sun, 06 Nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
    }
}

#[test]
fn remaining() {
    let r = remaining_from_headers(&headers(&[
        ("x-ratelimit-limit-requests", "5000"),
        ("x-ratelimit-remaining-requests", "4999"),
        ("x-ratelimit-limit-tokens", "160000"),
        ("x-ratelimit-remaining-tokens", "1000"),
    ]));
    assert_eq!(
        r,
        Remaining {
            requests: Some(4999),
            tokens: Some(1000),
            request_limit: Some(5000),
            token_limit: Some(160000)
        }
    );
    assert!(r.nearly_spent(0.05), "1000/160000 < 5%");
    assert!(!r.nearly_spent(0.001));

    let a = remaining_from_headers(&headers(&[
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-tokens-limit", "40000"),
        ("anthropic-ratelimit-tokens-remaining", "39000"),
    ]));
    assert_eq!(
        a,
        Remaining {
            requests: Some(49),
            tokens: Some(39000),
            request_limit: Some(50),
            token_limit: Some(40000)
        }
    );
    assert!(!a.nearly_spent(0.05));

    // Zero remaining is spent whatever the limit; no limit, no fraction.
    let zero = remaining_from_headers(&headers(&[("x-ratelimit-remaining-tokens", "0")]));
    assert!(zero.nearly_spent(0.0));
    let no_limit = remaining_from_headers(&headers(&[("x-ratelimit-remaining-requests", "1")]));
    assert!(!no_limit.nearly_spent(0.5));
    // A zero limit is ignored; NaN fractions are never "spent".
    let zero_limit = Remaining {
        requests: Some(3),
        request_limit: Some(0),
        ..Remaining::default()
    };
    assert!(!zero_limit.nearly_spent(0.5));
    assert!(!r.nearly_spent(f64::NAN));
    // Junk and odd forms.
    let junk = remaining_from_headers(&headers(&[
        ("x-ratelimit-remaining-requests", "lots"),
        ("x-ratelimit-remaining-tokens", "12.7"),
        ("x-ratelimit-limit-requests", "99999999999999999999999"),
        ("x-ratelimit-limit-tokens", "-1"),
    ]));
    assert_eq!(
        junk,
        Remaining {
            requests: None,
            tokens: Some(12),
            request_limit: Some(u64::MAX),
            token_limit: None
        }
    );
    assert!(remaining_from_headers(&HeaderMap::new()).is_empty());
    // OpenAI first, Anthropic for what OpenAI lacks.
    let mixed = remaining_from_headers(&headers(&[
        ("x-ratelimit-remaining-requests", "1"),
        ("anthropic-ratelimit-requests-remaining", "2"),
        ("anthropic-ratelimit-tokens-remaining", "3"),
    ]));
    assert_eq!((mixed.requests, mixed.tokens), (Some(1), Some(3)));
}

#[test]
fn quota_errors() {
    let yes: &[(u16, &str)] = &[
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            413,
            r#"{"error":{"message":"Request too large on tokens per minute (TPM)","type":"tokens","code":"rate_limit_exceeded"}}"#,
        ),
        (
            400,
            r#"{"error":{"type":"insufficient_quota","code":null}}"#,
        ),
        (
            429,
            r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded call rate limit"}}"#,
        ),
        (
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
        ),
        (
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#,
        ),
        (
            429,
            r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (403, r#"{"error":{"status":"RESOURCE_EXHAUSTED"}}"#),
        (
            429,
            r#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#,
        ),
    ];
    for (status, body) in yes {
        assert!(
            quota_error_in_body(*status, body.as_bytes()),
            "{status} {body}"
        );
    }
    let no: &[(u16, &str)] = &[
        (
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
        (
            503,
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
        ),
        (
            500,
            r#"{"error":{"message":"The server had an error","type":"server_error","code":null}}"#,
        ),
        (
            400,
            r#"{"error":{"message":"Invalid model","type":"invalid_request_error","code":"model_not_found"}}"#,
        ),
        (
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#,
        ),
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ),
        // Success statuses never are, whatever the body.
        (200, r#"{"error":{"code":"insufficient_quota"}}"#),
        (429, ""),
        (429, "Too Many Requests"),
        (429, r#"{"error":"rate_limit_exceeded"}"#),
        (429, r#"{"code":"rate_limit_exceeded"}"#),
        (429, "[]"),
    ];
    for (status, body) in no {
        assert!(
            !quota_error_in_body(*status, body.as_bytes()),
            "{status} {body}"
        );
    }
    // Oversized bodies are not looked at.
    let big = format!(
        r#"{{"error":{{"code":"insufficient_quota","pad":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    assert!(!quota_error_in_body(429, big.as_bytes()));
}
