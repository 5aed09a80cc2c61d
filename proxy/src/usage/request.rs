//! Request body rewrites. They edit the body in place: every byte outside the changed member
//! is kept (member order, whitespace, number spelling), so the upstream sees the client's body
//! but for the one member.

use super::json::Object;

/// Whether a JSON request body asks for a streaming response (top-level `"stream": true`).
pub fn request_wants_stream(body: &[u8]) -> bool {
    Object::top_level(body).is_some_and(|o| is_true(body, &o, "stream"))
}

/// For a streaming OpenAI chat/completions request that does not already ask for usage,
/// the body with `stream_options.include_usage` set to `true`; `None` when nothing needs to
/// change (not JSON, not an object, not `"stream": true`, or `include_usage` already `true`).
///
/// Other members of `stream_options` are kept; a `stream_options` that is not an object
/// (e.g. `null`) is replaced. Nothing else in the body changes (no reordering), and the new
/// member is appended last. Pair with [`StripUsageChunk`](super::StripUsageChunk) so the
/// client does not see the chunk it did not ask for.
pub fn add_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let top = Object::top_level(body)?;
    if !is_true(body, &top, "stream") {
        return None;
    }
    let options = match top.last(body, "stream_options") {
        Some(m) if body.get(m.value.start) == Some(&b'{') => {
            let sub = body.get(m.value.clone())?;
            let inner = Object::parse(sub, 0)?;
            if is_true(sub, &inner, "include_usage") {
                return None;
            }
            inner.set(sub, "include_usage", b"true")?
        }
        _ => br#"{"include_usage":true}"#.to_vec(),
    };
    top.set(body, "stream_options", &options)
}

/// The body with the top-level string member `field` set to `value` (replacing whatever the
/// client sent there, every occurrence if the key is duplicated; appended last if absent).
/// `None` when the body is not a well-formed JSON object.
pub fn set_json_field(body: &[u8], field: &str, value: &str) -> Option<Vec<u8>> {
    let top = Object::top_level(body)?;
    top.set(body, field, &serde_json::to_vec(value).ok()?)
}

/// Whether the (last) member `name` of `o` is the literal `true`.
fn is_true(b: &[u8], o: &Object, name: &str) -> bool {
    o.last(b, name)
        .and_then(|m| b.get(m.value.clone()))
        .is_some_and(|v| v == b"true")
}
