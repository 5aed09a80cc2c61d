//! Token usage parsing on the response path:
//! - `sse_scan/*`: `SseUsageScanner` fed a streamed chat completion as the network hands it
//!   over (one read per event, or the whole body in one read): an OpenAI stream of 20 content
//!   chunks plus the usage chunk, and an Anthropic messages stream of the same length;
//! - `json/*`: `usage::from_json` on a whole chat.completion body (310 B, the benchmark's
//!   upstream answer) and on a 16 KiB one (a long answer; the usage object comes last).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyway_proxy::usage::{SseUsageScanner, from_json};
use std::hint::black_box;

fn openai_stream() -> Vec<String> {
    let mut events: Vec<String> = (0..20)
        .map(|i| {
            let delta = if i == 0 {
                r#"{"role":"assistant","content":"tok00 "}"#.to_string()
            } else {
                format!(r#"{{"content":"tok{i:02} "}}"#)
            };
            let finish = if i == 19 { r#""stop""# } else { "null" };
            format!(
                "data: {{\"id\":\"chatcmpl-bench1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
            )
        })
        .collect();
    events.push("data: {\"id\":\"chatcmpl-bench1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20,\"total_tokens\":32}}\n\n".to_string());
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn anthropic_stream() -> Vec<String> {
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n".to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for i in 0..20 {
        events.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i:02} \"}}}}\n\n"));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_string(),
    );
    events.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":20}}\n\n".to_string());
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    events
}

fn sse_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_scan");
    for (name, events) in [
        ("openai", openai_stream()),
        ("anthropic", anthropic_stream()),
    ] {
        let whole: String = events.concat();
        g.throughput(Throughput::Bytes(whole.len() as u64));
        g.bench_function(BenchmarkId::new(name, "per_event"), |b| {
            b.iter(|| {
                let mut s = SseUsageScanner::new();
                for e in &events {
                    s.feed(black_box(e.as_bytes()));
                }
                let u = s.usage().expect("usage");
                black_box(u.total())
            })
        });
        g.bench_function(BenchmarkId::new(name, "one_read"), |b| {
            b.iter(|| {
                let mut s = SseUsageScanner::new();
                s.feed(black_box(whole.as_bytes()));
                black_box(s.usage().expect("usage").total())
            })
        });
    }
    g.finish();
}

fn json(c: &mut Criterion) {
    let small = r#"{"id":"chatcmpl-bench1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the fake upstream."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#.to_string();
    let text = "lorem ipsum dolor sit amet ".repeat(600);
    let large = format!(
        r#"{{"id":"chatcmpl-bench2","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":4000,"total_tokens":4012}}}}"#
    );
    let mut g = c.benchmark_group("json_usage");
    for (name, body) in [("310B", small), ("16KiB", large)] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(from_json(black_box(body.as_bytes())).expect("usage")))
        });
    }
    g.finish();
}

criterion_group!(benches, sse_scan, json);
criterion_main!(benches);
