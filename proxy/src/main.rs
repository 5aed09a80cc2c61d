//! `keyway-proxy`: run the data plane from a manifest file or from the controller, or check a
//! manifest file.

use clap::{Parser, Subcommand};
use keyway_proxy::discovery::DiscoverySettings;
use keyway_proxy::http::ForwarderSettings;
use keyway_proxy::{Settings, Source, StartError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for invalid configuration (EX_USAGE / EX_DATAERR family, as sysexits).
const EXIT_INVALID_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "keyway-proxy",
    version,
    about = "Keyway data plane: one local address in front of a pool of LLM API keys and backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a manifest file with the same code the proxy runs; print every problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Standalone mode: YAML manifests (LoadBalancerPool, ApiKeyPool, Secret), reloaded on change.
    #[arg(long, short, env = "KEYWAY_CONFIG", conflicts_with = "controller")]
    config: Option<PathBuf>,
    /// Kubernetes mode: the controller's discovery address, e.g. https://keyway-controller:8443.
    /// Several replicas may be listed, comma-separated: after a lost stream the next is tried.
    #[arg(long, env = "KEYWAY_CONTROLLER")]
    controller: Option<String>,
    /// Traffic listener.
    #[arg(long, env = "KEYWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener (/healthz, /readyz, /metrics, /status).
    #[arg(long, env = "KEYWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
    /// Controller mode: the namespace whose pools this proxy serves.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Controller mode: a stable name for this proxy (default: $POD_NAME or the hostname).
    #[arg(long, env = "KEYWAY_PROXY_ID")]
    proxy_id: Option<String>,
    /// Controller mode: serve only these pools, `name` or `namespace/name` (comma-separated;
    /// default all of the namespace).
    #[arg(long, env = "KEYWAY_POOLS", value_delimiter = ',')]
    pools: Vec<String>,
    /// Controller mode: also serve the pools of these namespaces that grant this proxy's
    /// namespace (their `spec.allowedProxyNamespaces`).
    #[arg(long, env = "KEYWAY_EXTRA_NAMESPACES", value_delimiter = ',')]
    extra_namespaces: Vec<String>,
    /// Controller mode: the ServiceAccount token presented to the controller, re-read on every
    /// reconnect (default: the pod's mounted token, if there is one).
    #[arg(long, env = "KEYWAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Controller mode: CA certificates (PEM) trusted for an https:// controller URL (default:
    /// the public webpki roots).
    #[arg(long, env = "KEYWAY_CONTROLLER_CA")]
    controller_ca: Option<PathBuf>,
    /// Add x-keyway-pool/-backend/-key-id to responses (default: on in file mode, off otherwise).
    #[arg(long, env = "KEYWAY_EXPOSE_HEADERS")]
    expose_headers: Option<bool>,
    /// Controller mode: how often usage and health are reported to the controller.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    report_interval: Duration,
    /// File mode: how often to check the file for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Upstream connect timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Upstream response-headers timeout (streams may run longer once headers arrived).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    response_timeout: Duration,
    /// Serve the traffic port over TLS: certificate chain (PEM).
    #[arg(long, env = "KEYWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Serve the traffic port over TLS: private key (PEM).
    #[arg(long, env = "KEYWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for upstream TLS, besides the public roots.
    #[arg(long, env = "KEYWAY_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// Add x-keyway-overhead-ms (time spent inside Keyway) to every response.
    #[arg(long, env = "KEYWAY_OVERHEAD_HEADER")]
    overhead_header: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// After SIGTERM, how long /readyz fails before the traffic listener closes (lets load
    /// balancers stop routing here first).
    #[arg(long, env = "KEYWAY_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// Open client connections at once; more are answered 503 and closed (0: unbounded).
    #[arg(long, env = "KEYWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Largest request body a client may declare (Content-Length), e.g. 32Mi; larger gets 413
    /// (0: unbounded).
    #[arg(long, env = "KEYWAY_MAX_REQUEST_BODY", default_value = "32Mi", value_parser = parse_bytes)]
    max_request_body: u64,
    /// Largest request head (request line and headers), e.g. 64Ki; larger gets 431.
    #[arg(long, env = "KEYWAY_MAX_HEADER_BYTES", default_value = "64Ki", value_parser = parse_bytes)]
    max_header_bytes: u64,
    /// A request head must arrive within this time (slowloris); also closes idle keep-alive
    /// connections.
    #[arg(long, env = "KEYWAY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
}

/// `1048576`, `64Ki`, `32Mi`, `1Gi` (also `k`/`m`/`g` as powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 65536, 64Ki, 32Mi"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" | "k" | "K" => 1 << 10,
        "Mi" | "m" | "M" => 1 << 20,
        "Gi" | "g" | "G" => 1 << 30,
        _ => return Err(format!("{s:?}: unit must be Ki, Mi or Gi")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    keyway_proxy::logging::init("warn,keyway_proxy=info,keyway_api=info");
    if let Some(Command::Check { config }) = &cli.command {
        return match keyway_proxy::config::file::load(config) {
            Ok((snap, _)) => {
                println!(
                    "{}: ok ({} pools, {} key pools)",
                    config.display(),
                    snap.pools.len(),
                    snap.key_pools.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid\n{e}", config.display());
                ExitCode::from(EXIT_INVALID_CONFIG)
            }
        };
    }
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
    runtime.block_on(run(cli.run))
}

async fn run(args: RunArgs) -> ExitCode {
    let file_mode = args.config.is_some();
    let source = match (args.config, args.controller) {
        (Some(path), _) => Source::File {
            path,
            reload_interval: args.reload_interval,
        },
        (None, Some(url)) => {
            // A bad CA file is a configuration error, not something to retry forever.
            if let Some(ca) = &args.controller_ca
                && let Err(e) = keyway_proxy::discovery::read_ca(ca)
            {
                eprintln!("keyway-proxy: --controller-ca: {e:#}");
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
            let default_token = Path::new(keyway_proxy::discovery::DEFAULT_TOKEN_FILE);
            Source::Controller(DiscoverySettings {
                controller_url: url,
                proxy_id: args.proxy_id.unwrap_or_else(default_proxy_id),
                namespace: args.namespace,
                namespaces: args.extra_namespaces,
                pools: args.pools,
                report_interval: args.report_interval,
                backoff_min: Duration::from_millis(200),
                backoff_max: Duration::from_secs(10),
                token_file: args
                    .token_file
                    .or_else(|| default_token.exists().then(|| default_token.to_path_buf())),
                controller_ca: args.controller_ca,
            })
        }
        (None, None) => {
            eprintln!(
                "keyway-proxy: give --config FILE (standalone) or --controller URL (Kubernetes); see --help"
            );
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let settings = Settings {
        listen: args.listen,
        admin_listen: args.admin_listen,
        source,
        forwarder: ForwarderSettings {
            connect_timeout: args.connect_timeout,
            response_timeout: args.response_timeout,
            expose_headers: args.expose_headers.unwrap_or(file_mode),
            overhead_header: args.overhead_header,
            upstream_ca: args.upstream_ca,
        },
        drain_timeout: args.drain_timeout,
        tls: args.tls_cert.zip(args.tls_key),
        limits: keyway_proxy::http::server::Limits {
            max_connections: (args.max_connections > 0).then_some(args.max_connections),
            header_read_timeout: args.header_read_timeout,
            max_header_bytes: usize::try_from(args.max_header_bytes).unwrap_or(usize::MAX),
            max_request_body: (args.max_request_body > 0).then_some(args.max_request_body),
        },
        shutdown_delay: args.shutdown_delay,
    };
    let running = match keyway_proxy::start(settings, prometheus::Registry::new()).await {
        Ok(r) => r,
        Err(StartError::InvalidConfig(e)) => {
            eprintln!("keyway-proxy: invalid config, not starting:\n{e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
        Err(e) => {
            eprintln!("keyway-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "keyway-proxy listening on http://{} (admin http://{})",
        running.addr, running.admin_addr
    );
    match running.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyway-proxy stopped unexpectedly");
            ExitCode::FAILURE
        }
    }
}

fn default_proxy_id() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "keyway-proxy".into());
    format!("{base}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
