//! `keyway-app-client`: the "application" of the real-node e2e tests. It runs in a Pod next to
//! its injected `keyway-proxy` and calls its LLM the way an app would, through
//! `http://127.0.0.1:8080`, one chat completion at a time.
//!
//! - Without `--count` it sends forever, every `--interval-ms`, and serves what it counted as
//!   JSON on `--stats-listen` (sent, ok, failed, which upstream answered, when the first
//!   answer came): the harness reads it from the Pod's IP.
//! - With `--count N` it sends N requests and exits 0 only if every one succeeded (a Job).
//!
//! Every failed request is logged on stderr with its cause.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use clap::Parser;
use http::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "keyway-app-client", version)]
struct Args {
    /// Where the app's LLM is: its sidecar.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The request path (a chat completion).
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Pause between two requests.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Send this many requests, then exit (0 if all succeeded); 0 = forever.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// One request's deadline.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Serve the counters here (JSON); not with --count.
    #[arg(long, value_name = "ADDR")]
    stats_listen: Option<SocketAddr>,
}

#[derive(Debug, Default)]
struct Counters {
    sent: u64,
    ok: u64,
    failed: u64,
    /// Failures before the first success: requests the app sent before its proxy served.
    failed_before_first_ok: u64,
    first_ok_ms: Option<u128>,
    upstreams: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    last_error: Option<String>,
}

impl Counters {
    fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "failed_before_first_ok": self.failed_before_first_ok,
            "first_ok_ms": self.first_ok_ms,
            "upstreams": self.upstreams,
            "statuses": self.statuses,
            "last_error": self.last_error,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let counters = Arc::new(Mutex::new(Counters::default()));
    if let Some(addr) = args.stats_listen {
        let view = Arc::clone(&counters);
        let snapshot = Arc::new(move || {
            view.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .to_json()
        });
        match keyway_testkit::stats::serve(addr, snapshot).await {
            Ok(local) => eprintln!("keyway-app-client: stats on http://{local}"),
            Err(e) => {
                eprintln!("keyway-app-client: cannot serve stats on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let url = format!("{}{}", args.target.trim_end_matches('/'), args.path);
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello from the app"}],
    })
    .to_string();
    let mut n = 0u64;
    while args.count == 0 || n < args.count {
        n += 1;
        let result = tokio::time::timeout(
            Duration::from_millis(args.timeout_ms),
            keyway_testkit::client::send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                body.clone(),
            ),
        )
        .await;
        let outcome = match result {
            Ok(Ok(reply)) if reply.status.is_success() => Ok(reply),
            Ok(Ok(reply)) => Err(format!("HTTP {}: {}", reply.status, reply.text().trim())),
            Ok(Err(e)) => Err(format!("request failed: {e}")),
            Err(_) => Err(format!("no answer within {} ms", args.timeout_ms)),
        };
        {
            let mut c = counters.lock().unwrap_or_else(PoisonError::into_inner);
            c.sent += 1;
            match &outcome {
                Ok(reply) => {
                    c.ok += 1;
                    c.first_ok_ms.get_or_insert(started.elapsed().as_millis());
                    let upstream = reply.header("x-mock-upstream").unwrap_or("(none)");
                    *c.upstreams.entry(upstream.to_owned()).or_default() += 1;
                    *c.statuses.entry(reply.status.as_u16()).or_default() += 1;
                }
                Err(e) => {
                    c.failed += 1;
                    if c.first_ok_ms.is_none() {
                        c.failed_before_first_ok += 1;
                    }
                    c.last_error = Some(e.clone());
                    eprintln!("keyway-app-client: request {n}: {e}");
                }
            }
        }
        if args.count == 0 || n < args.count {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    let c = counters.lock().unwrap_or_else(PoisonError::into_inner);
    println!("{}", c.to_json());
    if c.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
