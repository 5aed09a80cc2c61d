use crate::usage::{add_include_usage, request_wants_stream, set_json_field};
use serde_json::{Value, json};

fn add(body: &str) -> Option<String> {
    add_include_usage(body.as_bytes()).map(|b| String::from_utf8(b).unwrap())
}

fn set(body: &str, field: &str, value: &str) -> Option<String> {
    set_json_field(body.as_bytes(), field, value).map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn wants_stream() {
    assert!(request_wants_stream(br#"{"model":"m","stream":true}"#));
    assert!(request_wants_stream(b" {\n \"stream\" : true\n}\n"));
    assert!(request_wants_stream(br#"{"\u0073tream":true}"#));
    assert!(!request_wants_stream(br#"{"model":"m","stream":false}"#));
    assert!(!request_wants_stream(br#"{"model":"m"}"#));
    assert!(!request_wants_stream(br#"{"stream":"true"}"#));
    assert!(!request_wants_stream(br#"{"stream":1}"#));
    assert!(!request_wants_stream(br#"{"options":{"stream":true}}"#));
    assert!(!request_wants_stream(br#"{"stream":true"#));
    assert!(!request_wants_stream(br#"[{"stream":true}]"#));
    assert!(!request_wants_stream(b""));
    // Duplicates: the last wins, as in serde_json.
    assert!(request_wants_stream(br#"{"stream":false,"stream":true}"#));
    assert!(!request_wants_stream(br#"{"stream":true,"stream":false}"#));
}

#[test]
fn include_usage_added_in_place() {
    assert_eq!(
        add(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"}{\"x"}],"stream":true}"#)
            .as_deref(),
        Some(
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"}{\"x"}],"stream":true,"stream_options":{"include_usage":true}}"#
        )
    );
    // Existing stream_options: other members kept, include_usage set.
    assert_eq!(
        add(r#"{"stream":true,"stream_options":{"x":1},"z":2.50}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"x":1,"include_usage":true},"z":2.50}"#)
    );
    assert_eq!(
        add(r#"{"stream":true,"stream_options":{"include_usage":false,"x":[1]}}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true,"x":[1]}}"#)
    );
    assert_eq!(
        add(r#"{"stream":true,"stream_options":{}}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
    );
    assert_eq!(
        add(r#"{"stream_options":null,"stream":true}"#).as_deref(),
        Some(r#"{"stream_options":{"include_usage":true},"stream":true}"#)
    );
    // Pretty-printed bodies stay valid.
    let pretty = "{\n  \"stream\": true,\n  \"model\": \"m\"\n}\n";
    let out = add(pretty).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"stream": true, "model": "m", "stream_options": {"include_usage": true}})
    );
    assert!(out.starts_with("{\n  \"stream\": true,\n  \"model\": \"m\""));
}

#[test]
fn include_usage_left_alone() {
    assert_eq!(
        add(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
        None
    );
    assert_eq!(add(r#"{"stream":false}"#), None);
    assert_eq!(add(r#"{"model":"m"}"#), None);
    assert_eq!(add(r#"{"stream":true"#), None);
    assert_eq!(add("[]"), None);
    assert_eq!(add("not json"), None);
}

#[test]
fn include_usage_output_is_valid_json() {
    let bodies = [
        r#"{"stream":true}"#,
        r#"{ "stream" : true , "stream_options" : { "a" : { "b" : [ 1 , 2 ] } } }"#,
        r#"{"a":"\"}","stream":true,"stream_options":{"include_usage":null}}"#,
        r#"{"stream_options":{"include_usage":true},"stream":true,"stream_options":{"q":1}}"#,
    ];
    for b in bodies {
        let out = add(b).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(v["stream_options"]["include_usage"], json!(true), "{out}");
        assert_eq!(v["stream"], json!(true));
    }
}

#[test]
fn set_field() {
    assert_eq!(
        set(r#"{"model":"m","api_key":"client"}"#, "api_key", "sk-1").as_deref(),
        Some(r#"{"model":"m","api_key":"sk-1"}"#)
    );
    assert_eq!(
        set(r#"{"model":"m"}"#, "api_key", "sk-1").as_deref(),
        Some(r#"{"model":"m","api_key":"sk-1"}"#)
    );
    assert_eq!(set("{}", "key", "v").as_deref(), Some(r#"{"key":"v"}"#));
    assert_eq!(
        set(" { } ", "key", "v").as_deref(),
        Some(r#" {"key":"v" } "#)
    );
    // Non-string client values, nested objects, duplicates: all overwritten.
    assert_eq!(
        set(r#"{"key":{"a":[1,{"key":2}]},"b":1}"#, "key", "v").as_deref(),
        Some(r#"{"key":"v","b":1}"#)
    );
    assert_eq!(
        set(r#"{"key":"a","x":null,"key":"b"}"#, "key", "v").as_deref(),
        Some(r#"{"key":"v","x":null,"key":"v"}"#)
    );
    assert_eq!(
        set(r#"{"k\u0065y":1}"#, "key", "v").as_deref(),
        Some(r#"{"k\u0065y":"v"}"#)
    );
    // The value and the field name are JSON-escaped.
    let out = set(r#"{"a":1}"#, "we\"ird", "quo\"te\\ \n \u{1}").unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({"a": 1, "we\"ird": "quo\"te\\ \n \u{1}"}));
    // Not an object.
    assert_eq!(set("[]", "k", "v"), None);
    assert_eq!(set(r#""str""#, "k", "v"), None);
    assert_eq!(set("", "k", "v"), None);
    assert_eq!(set(r#"{"a":1"#, "k", "v"), None);
    assert_eq!(set(r#"{"a":1} x"#, "k", "v"), None);
}
