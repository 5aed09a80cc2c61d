use super::split;
use crate::usage::{SseUsageScanner, StripUsageChunk, Usage};

const OPENAI: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}\n\n",
    "data: [DONE]\n\n",
);

/// The usage-only event of `OPENAI`, which the filter removes.
const OPENAI_USAGE_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}\n\n";

const ANTHROPIC: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":2,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":10}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const GEMINI: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9}}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 3,\"totalTokenCount\": 12}}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"!\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 4,\"totalTokenCount\": 13}}\r\n\r\n",
);

const RESPONSES: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":37,\"output_tokens\":11,\"total_tokens\":48}}}\n\n",
);

fn u(input: u64, output: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
    })
}

fn scan<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Option<Usage> {
    let mut s = SseUsageScanner::new();
    for p in pieces {
        s.feed(p);
    }
    s.usage()
}

/// Whole, byte by byte, and in many random splits: always `want`.
fn scan_all_ways(stream: &str, want: Option<Usage>) {
    let b = stream.as_bytes();
    assert_eq!(scan([b]), want, "whole");
    assert_eq!(scan(b.chunks(1)), want, "byte by byte");
    for seed in 0..200 {
        assert_eq!(
            scan(split(b, seed, 1 + (seed as usize % 40))),
            want,
            "seed {seed}"
        );
    }
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

fn cr(s: &str) -> String {
    s.replace('\n', "\r")
}

#[test]
fn scanner_openai() {
    scan_all_ways(OPENAI, u(11, 7));
    scan_all_ways(&crlf(OPENAI), u(11, 7));
    scan_all_ways(&cr(OPENAI), u(11, 7));
    // Without include_usage: nothing.
    scan_all_ways(&OPENAI.replace(OPENAI_USAGE_EVENT, ""), None);
}

#[test]
fn scanner_anthropic_delta_is_cumulative() {
    // 25 + 3 + 2 input; output 15 (the latest delta), not 1 + 10 + 15.
    scan_all_ways(ANTHROPIC, u(30, 15));
    scan_all_ways(&crlf(ANTHROPIC), u(30, 15));
}

#[test]
fn scanner_gemini_latest() {
    scan_all_ways(GEMINI, u(9, 4));
    scan_all_ways(&GEMINI.replace("\r\n", "\n"), u(9, 4));
}

#[test]
fn scanner_responses_api() {
    scan_all_ways(RESPONSES, u(37, 11));
}

#[test]
fn scanner_line_forms() {
    // `data:` without a space, several events in one chunk, comments and unknown fields.
    let s = ": keep-alive\nid: 1\nretry: 100\ndata:{\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}\n\ndata:   {\"usage\":{\"output_tokens\":5}}\n\ndata: [DONE]\n\n";
    scan_all_ways(s, u(1, 5));
    // A last line without a line end is not counted.
    assert_eq!(scan([&b"data: {\"usage\":{\"input_tokens\":1}}"[..]]), None);
    // Not data lines, or not JSON objects.
    assert_eq!(
        scan([&b"event: {\"usage\":{\"input_tokens\":1}}\n"[..]]),
        None
    );
    assert_eq!(
        scan([&b"data: [{\"usage\":{\"input_tokens\":1}}]x\n"[..]]),
        None
    );
    assert_eq!(scan([&b"data: \"usage\"\n"[..]]), None);
}

#[test]
fn scanner_skips_overlong_lines() {
    let mut s = SseUsageScanner::with_max_line(64);
    let long = format!(
        "data: {{\"pad\":\"{}\",\"usage\":{{\"input_tokens\":100}}}}\n",
        "x".repeat(100)
    );
    let short = "data: {\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}\n";
    for p in split(long.as_bytes(), 7, 9) {
        s.feed(p);
    }
    assert_eq!(s.usage(), None);
    assert!(s.buffered_capacity() <= 128, "buffer stayed bounded");
    s.feed(short.as_bytes());
    assert_eq!(s.usage(), u(1, 1));
    // The overlong line, the short one after it in the same chunk.
    let mut s = SseUsageScanner::with_max_line(64);
    s.feed(format!("{long}{short}").as_bytes());
    assert_eq!(s.usage(), u(1, 1));
    // Growing past the cap across chunks, then ending in the chunk that has the next line.
    let mut s = SseUsageScanner::with_max_line(64);
    s.feed(&long.as_bytes()[..50]);
    s.feed(format!("{}{short}", &long[50..]).as_bytes());
    assert_eq!(s.usage(), u(1, 1));
}

fn strip<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut f = StripUsageChunk::new();
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&f.filter(p));
    }
    out.extend_from_slice(&f.finish());
    out
}

fn strip_all_ways(stream: &str, want: &str) {
    let b = stream.as_bytes();
    let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    assert_eq!(show(&strip([b])), want, "whole");
    assert_eq!(show(&strip(b.chunks(1))), want, "byte by byte");
    for seed in 0..200 {
        assert_eq!(
            show(&strip(split(b, seed, 1 + (seed as usize % 40)))),
            want,
            "seed {seed}"
        );
    }
}

#[test]
fn strip_removes_exactly_the_usage_event() {
    let want = OPENAI.replace(OPENAI_USAGE_EVENT, "");
    assert_eq!(want.len(), OPENAI.len() - OPENAI_USAGE_EVENT.len());
    strip_all_ways(OPENAI, &want);
    strip_all_ways(&crlf(OPENAI), &crlf(&want));
    strip_all_ways(&cr(OPENAI), &cr(&want));
}

#[test]
fn strip_keeps_everything_else() {
    for s in [ANTHROPIC, GEMINI, RESPONSES] {
        strip_all_ways(s, s);
    }
    // Usage on a content chunk, `choices: []` without usage (Azure's prompt filter results),
    // an error event: all kept.
    let kept = concat!(
        "data: {\"choices\":[],\"prompt_filter_results\":[],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n",
        "data: {\"error\":{\"message\":\"boom\"}}\n\n",
        ": comment\n\n",
        "\n\n\n",
        "data: [DONE]\n\n",
    );
    strip_all_ways(kept, kept);
}

#[test]
fn strip_with_other_fields_and_odd_events() {
    // An `event:` / `id:` line before the usage data goes with it.
    let s = "data: {\"choices\":[{}]}\n\nevent: chunk\nid: 9\ndata:{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
    strip_all_ways(s, "data: {\"choices\":[{}]}\n\ndata: [DONE]\n\n");
    // A second data line in the usage event: not the usage chunk, kept.
    let two = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\ndata: more\n\n";
    strip_all_ways(two, two);
    // The usage chunk at the very end, without its closing blank line: dropped by finish.
    let tail =
        "data: {\"choices\":[{}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n";
    strip_all_ways(tail, "data: {\"choices\":[{}]}\n\n");
    // An incomplete other event at the end is released by finish.
    let partial = "data: {\"choices\":[{}]}\n\ndata: {\"choi";
    strip_all_ways(partial, partial);
    // Mixed line ends.
    let mixed = "data: {\"choices\":[{}]}\r\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\r\ndata: [DONE]\r\r";
    strip_all_ways(mixed, "data: {\"choices\":[{}]}\r\n\ndata: [DONE]\r\r");
}

#[test]
fn strip_never_delays_a_complete_event() {
    let b = OPENAI.as_bytes();
    let want = OPENAI.replace(OPENAI_USAGE_EVENT, "");
    let mut f = StripUsageChunk::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for p in b.chunks(3) {
        out.extend_from_slice(&f.filter(p));
        fed += p.len();
        let done = &OPENAI[..fed];
        // Everything up to the last complete event is out already.
        if let Some(end) = done.rfind("\n\n") {
            let complete = done[..end + 2].replace(OPENAI_USAGE_EVENT, "");
            assert!(out.starts_with(complete.as_bytes()), "after {fed} bytes");
        }
        // Only the current event is held.
        assert!(out.len() <= want.len());
        assert!(want.as_bytes().starts_with(&out));
    }
    out.extend_from_slice(&f.finish());
    assert_eq!(out, want.as_bytes());
}

#[test]
fn strip_releases_a_non_usage_event_as_soon_as_its_data_line_ends() {
    let mut f = StripUsageChunk::new();
    assert_eq!(&f.filter(b"data: {\"choices\":[{}]}")[..], b"");
    assert_eq!(&f.filter(b"\n")[..], b"data: {\"choices\":[{}]}\n");
    assert_eq!(&f.filter(b"\n")[..], b"\n");
    // The usage chunk is held until its end, then dropped.
    assert_eq!(
        &f.filter(b"data: {\"choices\":[],\"usage\":{\"total_tokens\":1}}\n")[..],
        b""
    );
    assert_eq!(&f.filter(b"\ndata: [DONE]\n\n")[..], b"data: [DONE]\n\n");
    assert_eq!(&f.finish()[..], b"");
}

#[test]
fn strip_releases_overlong_events_unchanged() {
    let pad = "x".repeat(300);
    let big =
        format!("data: {{\"pad\":\"{pad}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":1}}}}\n\n");
    let small = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
    let stream = format!("{big}{small}data: [DONE]\n\n");
    let want = format!("{big}data: [DONE]\n\n");
    for seed in 0..50 {
        let mut f = StripUsageChunk::with_limit(128);
        let mut out = Vec::new();
        for p in split(stream.as_bytes(), seed, 1 + seed as usize) {
            out.extend_from_slice(&f.filter(p));
            assert!(f.held_len() <= 129, "held {} bytes", f.held_len());
        }
        out.extend_from_slice(&f.finish());
        assert_eq!(String::from_utf8(out).unwrap(), want, "seed {seed}");
    }
    // Many header lines push an event over the limit too.
    let lines = "id: 1\n".repeat(100);
    let s = format!("{lines}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}}}}\n\n");
    let mut f = StripUsageChunk::with_limit(128);
    let mut out = Vec::new();
    for p in s.as_bytes().chunks(5) {
        out.extend_from_slice(&f.filter(p));
        assert!(f.held_len() <= 129);
    }
    out.extend_from_slice(&f.finish());
    assert_eq!(out, s.as_bytes());
}

#[test]
fn scan_then_strip_composition() {
    for seed in 0..50 {
        let mut scanner = SseUsageScanner::new();
        let mut f = StripUsageChunk::new();
        let mut out = Vec::new();
        for p in split(OPENAI.as_bytes(), seed, 17) {
            scanner.feed(p);
            out.extend_from_slice(&f.filter(p));
        }
        out.extend_from_slice(&f.finish());
        assert_eq!(scanner.usage(), u(11, 7));
        assert_eq!(out, OPENAI.replace(OPENAI_USAGE_EVENT, "").as_bytes());
        // The client's view has no usage left in it.
        assert_eq!(scan([&out[..]]), None);
    }
}
