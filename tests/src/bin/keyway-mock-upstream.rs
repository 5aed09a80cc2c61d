//! `keyway-mock-upstream`: run one or more mock LLM upstreams until Ctrl-C / SIGTERM.
//!
//! Prints one line per listener on stdout:
//! `mock upstream <name> listening on http://<addr>`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use keyway_testkit::MockUpstream;

/// Mock OpenAI-compatible LLM upstream for Keyway tests and demos.
#[derive(Debug, Parser)]
#[command(name = "keyway-mock-upstream", version)]
struct Args {
    /// Address to listen on; repeat to start several mocks (port 0 = random).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:9001")]
    listen: Vec<SocketAddr>,

    /// Mock name, sent back in the `x-mock-upstream` header. With several
    /// listeners the mocks are named `<name>-1`, `<name>-2`, ... in order.
    #[arg(long, default_value = "mock")]
    name: String,

    /// Number of content chunks in streamed chat completions.
    #[arg(long, default_value_t = keyway_testkit::mock::DEFAULT_STREAM_CHUNKS)]
    stream_chunks: usize,

    /// Milliseconds between SSE events in streamed chat completions.
    #[arg(long, default_value_t = 0)]
    stream_interval_ms: u64,

    /// Also serve what the mocks received (request count and keys per mock, as JSON) on this
    /// address: how the e2e harness reads a mock that runs in a Pod.
    #[arg(long, value_name = "ADDR")]
    stats_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let args = Args::parse();
    let several = args.listen.len() > 1;
    let mut mocks = Vec::with_capacity(args.listen.len());
    for (i, addr) in args.listen.iter().enumerate() {
        let name = if several {
            format!("{}-{}", args.name, i + 1)
        } else {
            args.name.clone()
        };
        match MockUpstream::start_on(&name, *addr).await {
            Ok(mock) => {
                mock.set_stream(
                    args.stream_chunks,
                    Duration::from_millis(args.stream_interval_ms),
                );
                println!("mock upstream {} listening on {}", mock.name(), mock.url());
                mocks.push(mock);
            }
            Err(e) => {
                eprintln!("keyway-mock-upstream: cannot start {name} on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    if let Some(addr) = args.stats_listen {
        let records: Vec<_> = mocks.iter().map(MockUpstream::records).collect();
        let snapshot = std::sync::Arc::new(move || {
            let mocks: Vec<_> = records
                .iter()
                .map(|m| {
                    let mut keys = serde_json::Map::new();
                    for k in m.received_keys() {
                        let n = keys.get(&k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                        keys.insert(k, (n + 1).into());
                    }
                    serde_json::json!({"name": m.name(), "requests": m.request_count(), "keys": keys})
                })
                .collect();
            serde_json::json!({ "mocks": mocks })
        });
        match keyway_testkit::stats::serve(addr, snapshot).await {
            Ok(local) => println!("mock stats listening on http://{local}"),
            Err(e) => {
                eprintln!("keyway-mock-upstream: cannot serve stats on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    if let Err(e) = wait_for_signal().await {
        eprintln!("keyway-mock-upstream: cannot wait for signals: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!("shutting down");
    futures::future::join_all(mocks.into_iter().map(MockUpstream::shutdown)).await;
    ExitCode::SUCCESS
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        res = tokio::signal::ctrl_c() => res,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
