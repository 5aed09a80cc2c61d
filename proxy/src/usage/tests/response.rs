use crate::usage::{Usage, from_json};

fn u(input: u64, output: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
    })
}

#[test]
fn openai_chat_completions() {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],
        "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
                 "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":3}}}"#;
    assert_eq!(from_json(body), u(19, 10));
    assert_eq!(from_json(body).unwrap().total(), 29);
}

#[test]
fn openai_responses_api() {
    let body = br#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"x"}]}],
        "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,
                 "output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
    assert_eq!(from_json(body), u(36, 87));
}

#[test]
fn anthropic_messages_with_cache() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"}],
        "usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":50,"output_tokens":6}}"#;
    assert_eq!(from_json(body), u(162, 6));
    let plain = br#"{"type":"message","usage":{"input_tokens":12,"output_tokens":6}}"#;
    assert_eq!(from_json(plain), u(12, 6));
    let nulls = br#"{"type":"message","usage":{"input_tokens":12,"cache_creation_input_tokens":null,"output_tokens":6}}"#;
    assert_eq!(from_json(nulls), u(12, 6));
}

#[test]
fn gemini() {
    let body = br#"{"candidates":[{"content":{"parts":[{"text":"x"}],"role":"model"}}],
        "usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":20,"totalTokenCount":28},"modelVersion":"gemini-2.0-flash"}"#;
    assert_eq!(from_json(body), u(8, 20));
    let thinking = br#"{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":20,"thoughtsTokenCount":30,"toolUsePromptTokenCount":2,"totalTokenCount":60}}"#;
    assert_eq!(from_json(thinking), u(10, 50));
    assert_eq!(from_json(thinking).unwrap().total(), 60);
    // Only a total: output is the rest.
    let total_only = br#"{"usageMetadata":{"promptTokenCount":8,"totalTokenCount":28}}"#;
    assert_eq!(from_json(total_only), u(8, 20));
}

#[test]
fn gemini_streamed_array_takes_latest() {
    let body = br#"[{"candidates":[],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}},
        {"candidates":[],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":5,"totalTokenCount":13}},
        {"candidates":[],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":9,"totalTokenCount":17}}]"#;
    assert_eq!(from_json(body), u(8, 9));
}

#[test]
fn absent_or_invalid() {
    assert_eq!(from_json(b""), None);
    assert_eq!(from_json(b"not json"), None);
    assert_eq!(from_json(b"{}"), None);
    assert_eq!(from_json(b"[]"), None);
    assert_eq!(from_json(b"42"), None);
    assert_eq!(from_json(br#"{"usage":null}"#), None);
    assert_eq!(from_json(br#"{"usage":{}}"#), None);
    assert_eq!(from_json(br#"{"usage":"lots"}"#), None);
    assert_eq!(from_json(br#"{"usage":{"prompt_tokens":-3}}"#), None);
    assert_eq!(from_json(br#"{"error":{"message":"nope"}}"#), None);
    // Truncated body.
    assert_eq!(
        from_json(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}"#),
        None
    );
}

#[test]
fn odd_but_valid_shapes() {
    // Floats truncate, huge numbers saturate in the sum.
    assert_eq!(
        from_json(br#"{"usage":{"input_tokens":3.9,"output_tokens":1e3}}"#),
        u(3, 1000)
    );
    let huge = format!(
        r#"{{"usage":{{"input_tokens":{m},"cache_read_input_tokens":{m},"output_tokens":{m}}}}}"#,
        m = u64::MAX
    );
    let got = from_json(huge.as_bytes()).unwrap();
    assert_eq!(
        got,
        Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX
        }
    );
    assert_eq!(got.total(), u64::MAX);
    // Escaped key, duplicate key (last wins), non-object `message`.
    assert_eq!(
        from_json(br#"{"\u0075sage":{"input_tokens":1,"output_tokens":2}}"#),
        u(1, 2)
    );
    assert_eq!(
        from_json(br#"{"usage":{"input_tokens":1},"usage":{"input_tokens":5,"output_tokens":1}}"#),
        u(5, 1)
    );
    assert_eq!(
        from_json(br#"{"message":"x","choices":7,"usage":{"output_tokens":2}}"#),
        u(0, 2)
    );
    // The nested forms (streaming events) also parse as bodies.
    assert_eq!(
        from_json(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":4,"output_tokens":1}}}"#
        ),
        u(4, 1)
    );
    assert_eq!(
        from_json(br#"{"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":9}}}"#),
        u(4, 9)
    );
}
