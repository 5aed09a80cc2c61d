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
    /// Validate a manifest file with the same code the proxy runs; print every problem with
    /// its field path and a hint. Exit 0 when valid, 64 when not.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the manifests the KEYWAY_*_KEYS quick start builds, as multi-document YAML ready
    /// to edit and run with --config or `kubectl apply`. Key values are `${KEYWAY_..._KEY_n}`
    /// placeholders unless --include-secrets.
    ExportConfig {
        /// Write the key values themselves into the Secret.
        #[arg(long)]
        include_secrets: bool,
    },
    /// Print the manifests equivalent to another tool's config (Secret, ApiKeyPool,
    /// LoadBalancerPool), with a comment on every setting without an exact equivalent. Exit 64
    /// when the input is invalid.
    Import {
        /// tavily (its YAML), alyx (its config.yaml), workers or lm-proxy (their variables).
        #[arg(long = "from", value_parser = parse_tool)]
        from: keyway_proxy::import::Tool,
        /// The tool's config file (a .env file for workers and lm-proxy).
        #[arg(required_unless_present = "env", conflicts_with = "env")]
        file: Option<PathBuf>,
        /// Read the tool's variables from this process's environment (workers, lm-proxy).
        #[arg(long)]
        env: bool,
        /// Also serve every route under this path prefix and remove it before forwarding (the
        /// Workers balancer's /YOUR-UUID/lb).
        #[arg(long)]
        strip_prefix: Option<String>,
    },
}

fn parse_tool(s: &str) -> Result<keyway_proxy::import::Tool, String> {
    keyway_proxy::import::Tool::parse(s)
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
    /// Controller mode: the same CA certificates as PEM text (the sidecar injector sets it).
    #[arg(
        long,
        env = "KEYWAY_CONTROLLER_CA_PEM",
        conflicts_with = "controller_ca",
        allow_hyphen_values = true
    )]
    controller_ca_pem: Option<String>,
    /// Controller mode: the name the controller's TLS certificate must carry when it is not
    /// the URL's host (e.g. keyway-controller.keyway.svc while dialling an address).
    #[arg(long, env = "KEYWAY_CONTROLLER_SERVER_NAME")]
    controller_server_name: Option<String>,
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
    /// Traffic threads, each with its own event loop and upstream connections (a request
    /// never changes threads). Default: one per CPU. Health checks, config and the admin port
    /// run on one more, mostly idle, thread.
    #[arg(long, env = "KEYWAY_WORKER_THREADS")]
    worker_threads: Option<usize>,
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
    /// Traffic port: client addresses allowed (CIDRs or IPs, comma-separated); others get 403.
    #[arg(long, env = "KEYWAY_ALLOWED_SOURCES", value_parser = parse_cidrs, default_value = "")]
    allowed_sources: CidrList,
    /// Admin port: client addresses allowed (CIDRs or IPs, comma-separated).
    #[arg(long, env = "KEYWAY_ADMIN_ALLOWED_SOURCES", value_parser = parse_cidrs, default_value = "")]
    admin_allowed_sources: CidrList,
    /// Traffic port: require one of these client tokens (one per line; re-read on change).
    #[arg(long, env = "KEYWAY_CLIENT_TOKENS_FILE")]
    client_tokens_file: Option<PathBuf>,
    /// Serve a traffic port beyond loopback (a gateway) without client tokens: anyone who
    /// reaches it spends the pool's keys. Without this flag such a proxy refuses to start.
    #[arg(long, env = "KEYWAY_ALLOW_ANONYMOUS_CLIENTS")]
    allow_anonymous_clients: bool,
    /// The admin API's bearer token, from a file (else KEYWAY_ADMIN_TOKEN). Without one,
    /// admin writes are disabled.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Log this fraction of requests as access-log lines, e.g. 0.01.
    #[arg(long, env = "KEYWAY_ACCESS_LOG_SAMPLE", default_value = "0")]
    access_log_sample: f64,
}

/// A parsed `--allowed-sources` list.
#[derive(Clone, Debug, Default)]
struct CidrList(Vec<keyway_api::model::Cidr>);

fn parse_cidrs(s: &str) -> Result<CidrList, String> {
    keyway_api::model::Cidr::parse_list(s).map(CidrList)
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
    match &cli.command {
        Some(Command::Check { config }) => return check(config),
        Some(Command::ExportConfig { include_secrets }) => return export(*include_secrets),
        Some(Command::Import {
            from,
            file,
            env: _,
            strip_prefix,
        }) => return import(*from, file.as_deref(), strip_prefix.as_deref()),
        None => {}
    }
    // Control work (config, health checks, admin port, controller stream) on this thread;
    // traffic on its own threads (see `--worker-threads`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
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

/// A traffic port beyond loopback is a gateway: it needs client tokens, or the explicit
/// `--allow-anonymous-clients` (say, behind a mesh that authenticates callers).
fn gateway_is_not_an_open_relay(args: &RunArgs) -> Result<(), String> {
    if args.listen.ip().is_loopback()
        || args.client_tokens_file.is_some()
        || args.allow_anonymous_clients
    {
        return Ok(());
    }
    Err(format!(
        "--listen {} is reachable beyond this machine, and without client tokens anyone who \
         reaches it spends the pool's keys: give --client-tokens-file FILE, or \
         --allow-anonymous-clients if something in front authenticates callers",
        args.listen
    ))
}

/// `keyway-proxy check`: every problem, its field path and a hint.
fn check(config: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", config.display());
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let errors = keyway_api::manifest::Manifests::check(&text, &env);
    // Valid here, different in a cluster: said, but not an error (exit code unchanged).
    let (parsed, _) = keyway_api::manifest::Manifests::parse_lenient(&text, &env);
    for warning in parsed.warnings() {
        println!("warning: {warning}");
    }
    if errors.is_empty() {
        return match keyway_proxy::config::file::parse(&text) {
            Ok(snap) => {
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
    println!("{}: invalid ({} problems)", config.display(), errors.len());
    for e in &errors {
        println!("- {e}");
        if let Some(hint) = e.hint() {
            println!("  hint: {hint}");
        }
    }
    ExitCode::from(EXIT_INVALID_CONFIG)
}

/// `keyway-proxy import`.
fn import(
    tool: keyway_proxy::import::Tool,
    file: Option<&Path>,
    strip_prefix: Option<&str>,
) -> ExitCode {
    use keyway_proxy::import::{Input, import};
    let env = |name: &str| std::env::var(name).ok();
    let text;
    let input = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => {
                text = t;
                Input::File(&text)
            }
            Err(e) => {
                eprintln!("keyway-proxy import: {}: cannot read: {e}", path.display());
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
        },
        None => Input::Env(&env),
    };
    match import(tool, input, strip_prefix) {
        Ok(imported) => {
            print!("{}", imported.to_yaml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keyway-proxy import --from {}: {e}", tool.name());
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

/// `keyway-proxy export-config`.
fn export(include_secrets: bool) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    match keyway_proxy::quickstart::QuickStart::from_env(&env) {
        Ok(Some(qs)) => {
            for note in qs.notes() {
                eprintln!("note: {note}");
            }
            print!("{}", qs.manifests(include_secrets));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "keyway-proxy export-config: no keys in the environment; set e.g. KEYWAY_OPENAI_KEYS=sk-1,sk-2 (or KEYWAY_ANTHROPIC_KEYS, KEYWAY_GEMINI_KEYS, KEYWAY_TAVILY_KEYS, OPENAI_API_KEYS, ANTHROPIC_API_KEYS, LOAD_BALANCER_API_KEYS)"
            );
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
        Err(e) => {
            eprintln!("keyway-proxy export-config: {e}");
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = gateway_is_not_an_open_relay(&args) {
        eprintln!("keyway-proxy: {e}");
        return ExitCode::from(EXIT_INVALID_CONFIG);
    }
    let file_mode = args.config.is_some();
    let admin_token = match keyway_proxy::access::admin_token(
        args.admin_token_file.as_deref(),
        std::env::var("KEYWAY_ADMIN_TOKEN").ok(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("keyway-proxy: {e}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    if !(0.0..=1.0).contains(&args.access_log_sample) {
        eprintln!("keyway-proxy: --access-log-sample must be between 0 and 1");
        return ExitCode::from(EXIT_INVALID_CONFIG);
    }
    let access = keyway_proxy::access::AccessSettings {
        allowed_sources: args.allowed_sources.0,
        admin_allowed_sources: args.admin_allowed_sources.0,
        client_tokens_file: args.client_tokens_file,
        admin_token,
        access_log_sample: args.access_log_sample,
    };
    let mut quick_start = false;
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
            if let Some(pem) = &args.controller_ca_pem
                && let Err(e) =
                    keyway_proxy::discovery::ca_from_pem(pem.as_bytes(), "KEYWAY_CONTROLLER_CA_PEM")
            {
                eprintln!("keyway-proxy: --controller-ca-pem: {e:#}");
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
            let default_token = [
                keyway_proxy::discovery::KEYWAY_TOKEN_FILE,
                keyway_proxy::discovery::DEFAULT_TOKEN_FILE,
            ]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists());
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
                    .or_else(|| default_token.map(Path::to_path_buf)),
                controller_ca: args.controller_ca,
                controller_ca_pem: args.controller_ca_pem,
                controller_server_name: args.controller_server_name,
            })
        }
        (None, None) => {
            let env = |name: &str| std::env::var(name).ok();
            match keyway_proxy::quickstart::QuickStart::from_env(&env) {
                Ok(Some(qs)) => match qs.snapshot() {
                    Ok(snap) => {
                        for (pool, variable, key_ids, endpoints) in qs.summary() {
                            tracing::info!(pool = %pool, variable = %variable, key_ids = ?key_ids, endpoints = ?endpoints, "quick start: pool built from the environment");
                        }
                        for note in qs.notes() {
                            if note.contains("not used") {
                                tracing::warn!(note = %note, "quick start: a recognised variable is not used");
                            } else {
                                tracing::info!(note = %note, "quick start: how the environment was read");
                            }
                        }
                        tracing::info!(manifest = %qs.manifests(false), "quick start: the equivalent manifests (keyway-proxy export-config prints them)");
                        quick_start = true;
                        Source::QuickStart(snap)
                    }
                    Err(errors) => {
                        for e in errors {
                            eprintln!("keyway-proxy: quick start: {e}");
                        }
                        return ExitCode::from(EXIT_INVALID_CONFIG);
                    }
                },
                Ok(None) => {
                    eprintln!(
                        "keyway-proxy: give --config FILE (standalone), --controller URL (Kubernetes), or keys in the environment (KEYWAY_OPENAI_KEYS=sk-1,sk-2); see --help"
                    );
                    return ExitCode::from(EXIT_INVALID_CONFIG);
                }
                Err(e) => {
                    eprintln!("keyway-proxy: {e}");
                    return ExitCode::from(EXIT_INVALID_CONFIG);
                }
            }
        }
    };
    let settings = Settings {
        listen: args.listen,
        admin_listen: args.admin_listen,
        source,
        forwarder: ForwarderSettings {
            connect_timeout: args.connect_timeout,
            response_timeout: args.response_timeout,
            expose_headers: args.expose_headers.unwrap_or(file_mode || quick_start),
            overhead_header: args.overhead_header,
            upstream_ca: args.upstream_ca,
        },
        drain_timeout: args.drain_timeout,
        tls: args.tls_cert.zip(args.tls_key),
        traffic_threads: args.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        access,
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
