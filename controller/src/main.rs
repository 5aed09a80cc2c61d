//! `keyway-controller`: run the control plane, or print the CRDs.

use clap::{Parser, Subcommand};
use keyway_controller::runtime::Settings;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "keyway-controller",
    version,
    about = "Keyway control plane: reconciles LoadBalancerPool and ApiKeyPool resources and pushes them to proxies"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// gRPC discovery listener that proxies dial.
    #[arg(long, env = "KEYWAY_GRPC_LISTEN", default_value = "0.0.0.0:8443")]
    grpc_listen: SocketAddr,
    /// Admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "KEYWAY_ADMIN_LISTEN", default_value = "0.0.0.0:9902")]
    admin_listen: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "KEYWAY_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Least seconds between two status writes that only change usage counters.
    #[arg(long, default_value_t = 10)]
    status_counter_interval_seconds: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --out).
    Crd {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd { out }) = cli.command {
        return print_crds(out);
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "keyway-controller: no Kubernetes client config (in-cluster or KUBECONFIG): {e}"
                );
                return ExitCode::FAILURE;
            }
        };
        let settings = Settings {
            grpc_listen: cli.grpc_listen,
            admin_listen: cli.admin_listen,
            namespace: cli.watch_namespace,
            status_counter_interval: std::time::Duration::from_secs(
                cli.status_counter_interval_seconds,
            ),
        };
        match keyway_controller::runtime::run(
            settings,
            client,
            prometheus::Registry::new(),
            shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "keyway-controller stopped");
                eprintln!("keyway-controller: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn print_crds(out: Option<PathBuf>) -> ExitCode {
    let result = match out {
        None => keyway_controller::crdgen::crds_yaml()
            .map(|y| print!("{y}"))
            .map_err(|e| e.to_string()),
        Some(dir) => keyway_controller::crdgen::crds()
            .map_err(|e| e.to_string())
            .and_then(|files| {
                files.into_iter().try_for_each(|(name, yaml)| {
                    std::fs::write(dir.join(&name), yaml)
                        .map_err(|e| format!("{}: {e}", dir.join(&name).display()))
                })
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyway-controller crd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("KEYWAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("warn,keyway_controller=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("KEYWAY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
