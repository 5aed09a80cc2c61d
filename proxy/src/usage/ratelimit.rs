//! Rate-limit and quota signals in upstream responses.

use super::time::{clamp_secs, parse_go_duration, parse_http_date, parse_rfc3339, until};
use http::HeaderMap;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The longest cooldown [`cooldown_from_headers`] returns.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// Bodies larger than this are not looked at by [`quota_error_in_body`] (error bodies are
/// small; this bounds the work on a large success body passed by mistake).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long the provider asks the key to wait, from the first source present (a header that
/// does not parse counts as absent):
///
/// 1. `Retry-After`: delta-seconds (fractions accepted), or an HTTP date relative to `now`;
/// 2. `retry-after-ms` (OpenAI; milliseconds, fractions accepted);
/// 3. OpenAI `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` (Go durations such as
///    `6m0s`): the larger of those present. OpenAI sends these on every response, whichever
///    limit is hit, so the larger is the safe choice (a key that hit its token limit does not
///    come back when its request window resets);
/// 4. Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
///    (RFC 3339 instants, relative to `now`): the latest of those present.
///
/// Clamped to `0..=`[`MAX_COOLDOWN`] (a time in the past is zero). Meant for a throttled
/// response (429, or [`quota_error_in_body`]): on a successful OpenAI response the reset
/// headers are present too and only say when the window rolls over.
pub fn cooldown_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(d) = values(headers, "retry-after").find_map(|v| retry_after(v, now)) {
        return Some(d);
    }
    if let Some(ms) = values(headers, "retry-after-ms").find_map(seconds) {
        return Some(clamp_secs(ms / 1000.0, MAX_COOLDOWN));
    }
    let openai = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| values(headers, name).find_map(parse_go_duration))
        .map(|secs| clamp_secs(secs, MAX_COOLDOWN))
        .max();
    if openai.is_some() {
        return openai;
    }
    [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .into_iter()
    .filter_map(|name| values(headers, name).find_map(parse_rfc3339))
    .map(|at| until(at, now, MAX_COOLDOWN))
    .max()
}

fn retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if let Some(secs) = seconds(v) {
        return Some(clamp_secs(secs, MAX_COOLDOWN));
    }
    parse_http_date(v).map(|at| until((at, 0), now, MAX_COOLDOWN))
}

/// A plain decimal number (`120`, `1.5`, `-3`); huge integers saturate.
fn seconds(v: &str) -> Option<f64> {
    let v = v.trim();
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    v.parse::<f64>().ok().filter(|f| !f.is_nan())
}

/// The values of header `name` that are visible ASCII.
fn values<'a>(headers: &'a HeaderMap, name: &'static str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

/// The remaining allowance a response reports, OpenAI's headers first, then Anthropic's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Remaining {
    /// `x-ratelimit-remaining-requests` / `anthropic-ratelimit-requests-remaining`.
    pub requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens` / `anthropic-ratelimit-tokens-remaining`.
    pub tokens: Option<u64>,
    /// `x-ratelimit-limit-requests` / `anthropic-ratelimit-requests-limit`.
    pub request_limit: Option<u64>,
    /// `x-ratelimit-limit-tokens` / `anthropic-ratelimit-tokens-limit`.
    pub token_limit: Option<u64>,
}

impl Remaining {
    /// Whether requests or tokens are (nearly) used up: a remaining count of 0, or a remaining
    /// count below `fraction` of its limit (e.g. `0.05`). Limits of 0 are ignored.
    pub fn nearly_spent(&self, fraction: f64) -> bool {
        let low = |remaining: Option<u64>, limit: Option<u64>| match (remaining, limit) {
            (Some(0), _) => true,
            (Some(r), Some(l)) if l > 0 => (r as f64) < fraction * l as f64,
            _ => false,
        };
        low(self.requests, self.request_limit) || low(self.tokens, self.token_limit)
    }

    /// Whether no header was present.
    pub fn is_empty(&self) -> bool {
        *self == Remaining::default()
    }
}

/// The remaining allowance from OpenAI's `x-ratelimit-*` or Anthropic's
/// `anthropic-ratelimit-*` headers; each field independently, absent (or unparseable) → `None`.
pub fn remaining_from_headers(headers: &HeaderMap) -> Remaining {
    let get = |openai: &'static str, anthropic: &'static str| {
        values(headers, openai)
            .find_map(count)
            .or_else(|| values(headers, anthropic).find_map(count))
    };
    Remaining {
        requests: get(
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-requests-remaining",
        ),
        tokens: get(
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-tokens-remaining",
        ),
        request_limit: get(
            "x-ratelimit-limit-requests",
            "anthropic-ratelimit-requests-limit",
        ),
        token_limit: get(
            "x-ratelimit-limit-tokens",
            "anthropic-ratelimit-tokens-limit",
        ),
    }
}

/// A non-negative count; a fraction is truncated, a huge integer saturates.
fn count(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    match v.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => v.parse::<f64>().ok().map(|f| f as u64),
    }
}

/// Whether an error response's JSON body says the *key* ran out of quota or hit a rate limit,
/// whatever the status (providers also use 400, 403 and 413 for these). A 1xx–3xx status is
/// never an error; bodies over 64 KiB are not looked at.
///
/// True for:
/// - OpenAI (and compatible, e.g. Groq): `error.code` or `error.type` `insufficient_quota`,
///   `rate_limit_exceeded`, `billing_hard_limit_reached`, `quota_exceeded`; Azure OpenAI's
///   `error.code` `"429"`;
/// - Anthropic: `error.type` `rate_limit_error`, and the "credit balance is too low"
///   `invalid_request_error` (the key's account cannot pay);
/// - Gemini: `error.status` `RESOURCE_EXHAUSTED` or `error.code` 429 (also when the body is
///   an array of such errors, as the streaming endpoint sends).
///
/// Not a key problem, so false: Anthropic `overloaded_error`, OpenAI `server_error`/overload,
/// Gemini `UNAVAILABLE` — the provider is busy for every key, and rotating keys does not help.
pub fn quota_error_in_body(status: u16, body: &[u8]) -> bool {
    if status < 400 || body.len() > MAX_ERROR_BODY {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let error = match &v {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        _ => v.get("error"),
    };
    let Some(error) = error.filter(|e| e.is_object()) else {
        return false;
    };
    let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or_default();
    const OPENAI: [&str; 4] = [
        "insufficient_quota",
        "rate_limit_exceeded",
        "billing_hard_limit_reached",
        "quota_exceeded",
    ];
    let (code, kind) = (text("code"), text("type"));
    if OPENAI.contains(&code) || OPENAI.contains(&kind) || code == "429" {
        return true;
    }
    if kind == "rate_limit_error" {
        return true;
    }
    if kind == "invalid_request_error"
        && text("message")
            .to_ascii_lowercase()
            .contains("credit balance is too low")
    {
        return true;
    }
    text("status") == "RESOURCE_EXHAUSTED" || error.get("code").and_then(Value::as_u64) == Some(429)
}
