//! `keyway-controller`: run the control plane, or print the CRDs.

use clap::{Parser, Subcommand};
use keyway_controller::auth::ProxyAuth;
use keyway_controller::leader::{self, LeaseSettings};
use keyway_controller::runtime::{GrpcSecurity, Settings};
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
    /// Watch only these namespaces (comma-separated or repeated; default: all namespaces).
    #[arg(long, env = "KEYWAY_WATCH_NAMESPACE", value_delimiter = ',')]
    watch_namespace: Vec<String>,
    /// Least seconds between two status writes that only change usage counters.
    #[arg(long, default_value_t = 10)]
    status_counter_interval_seconds: u64,
    /// Elect a leader among replicas with a Lease: every replica serves proxies, only the
    /// leader writes status and events. `--leader-election=false` for a single replica.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "keyway-controller")]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the first --watch-namespace, else
    /// `default`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// How long a leader's claim holds without renewal; it renews every third of it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration_seconds: u64,
    /// Serve the gRPC listener over TLS: certificate chain (PEM). Without it the stream, and
    /// the key values it carries, are plaintext.
    #[arg(long, env = "KEYWAY_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// Serve the gRPC listener over TLS: private key (PEM).
    #[arg(long, env = "KEYWAY_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// How proxies authenticate: `tokenreview` (their ServiceAccount token, checked with a
    /// TokenReview; a proxy is served its ServiceAccount's namespace) or `none` (development).
    #[arg(long, env = "KEYWAY_PROXY_AUTH", value_enum, default_value_t = ProxyAuthArg::Tokenreview)]
    proxy_auth: ProxyAuthArg,
    /// The audience proxy tokens must carry (default: the API server's).
    #[arg(long, env = "KEYWAY_TOKEN_AUDIENCE")]
    token_audience: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ProxyAuthArg {
    Tokenreview,
    None,
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
            status_counter_interval: std::time::Duration::from_secs(
                cli.status_counter_interval_seconds,
            ),
            leader_election: cli.leader_election.then(|| LeaseSettings {
                name: cli.lease_name.clone(),
                namespace: leader::lease_namespace(
                    cli.lease_namespace.as_deref(),
                    std::env::var("POD_NAMESPACE").ok().as_deref(),
                    cli.watch_namespace.first().map(String::as_str),
                ),
                identity: leader::identity(
                    std::env::var("POD_NAME").ok().as_deref(),
                    leader::hostname().as_deref(),
                    rand::random(),
                ),
                duration: std::time::Duration::from_secs(cli.lease_duration_seconds),
            }),
            namespaces: cli.watch_namespace,
            grpc_security: GrpcSecurity {
                tls: cli.grpc_tls_cert.zip(cli.grpc_tls_key),
                proxy_auth: match cli.proxy_auth {
                    ProxyAuthArg::Tokenreview => ProxyAuth::TokenReview {
                        audience: cli.token_audience,
                    },
                    ProxyAuthArg::None => ProxyAuth::None,
                },
            },
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
    // The same JSON lines and runtime filter as the proxy (keyway_api::logging).
    keyway_api::logging::init("controller", "warn,keyway_controller=info");
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
