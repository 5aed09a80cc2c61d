//! `keyway-controller`: run the control plane, or print the CRDs.

use clap::{Parser, Subcommand};
use keyway_controller::auth::ProxyAuth;
use keyway_controller::grpc::StreamLimits;
use keyway_controller::leader::{self, LeaseSettings};
use keyway_controller::runtime::{GrpcSecurity, GrpcTls, Settings};
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
    /// Serve the gRPC listener with this certificate chain (PEM) instead of the controller's
    /// self-managed one.
    #[arg(long, env = "KEYWAY_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "KEYWAY_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// Serve the gRPC listener in plaintext: API key values travel in clear. For development
    /// only; the default is TLS with a certificate the controller manages itself.
    #[arg(long, env = "KEYWAY_GRPC_PLAINTEXT", conflicts_with = "grpc_tls_cert")]
    grpc_plaintext: bool,
    /// How proxies authenticate: `tokenreview` (their ServiceAccount token, checked with a
    /// TokenReview; a proxy is served its ServiceAccount's namespace) or `none` (development).
    #[arg(long, env = "KEYWAY_PROXY_AUTH", value_enum, default_value_t = ProxyAuthArg::Tokenreview)]
    proxy_auth: ProxyAuthArg,
    /// The audience proxy tokens must carry. Empty (`--token-audience=`): any audience,
    /// so any pod's default token authenticates (warned; development only).
    #[arg(long, env = "KEYWAY_TOKEN_AUDIENCE", default_value = "keyway.dev")]
    token_audience: String,
    /// A discovery stream ends after at most this many seconds (less up to 20%, at random);
    /// the proxy reconnects with a fresh token, which is reviewed again.
    #[arg(long, env = "KEYWAY_STREAM_MAX_LIFETIME_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    stream_max_lifetime_seconds: u64,
    /// Most concurrent discovery streams per ServiceAccount (0: unbounded).
    #[arg(long, env = "KEYWAY_MAX_STREAMS_PER_IDENTITY", default_value_t = 1000)]
    max_streams_per_identity: usize,
    /// The Secret, in the controller's namespace, holding its CA and serving certificate
    /// (created and rotated by the controller; serves the webhook and the gRPC listener).
    #[arg(
        long,
        alias = "webhook-secret-name",
        env = "KEYWAY_TLS_SECRET_NAME",
        default_value = "keyway-webhook-tls"
    )]
    tls_secret_name: String,
    /// Names of the serving certificate, comma-separated; IP addresses become IP SANs
    /// (default: keyway-controller.<ns>.svc,keyway-controller.<ns>.svc.cluster.local).
    #[arg(
        long,
        alias = "webhook-dns-names",
        env = "KEYWAY_TLS_DNS_NAMES",
        value_delimiter = ','
    )]
    tls_dns_names: Vec<String>,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The sidecar-injection webhook: off unless `--webhook-listen` is given.
#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Serve the sidecar-injection admission webhook (HTTPS, `POST /inject`) on this address.
    #[arg(long, env = "KEYWAY_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// The MutatingWebhookConfiguration whose webhooks' `clientConfig.caBundle` the controller
    /// keeps up to date (it must exist; the controller never creates it).
    #[arg(
        long,
        env = "KEYWAY_WEBHOOK_CONFIG_NAME",
        default_value = "keyway-sidecar-injector"
    )]
    webhook_config_name: String,
    /// Image of the injected keyway-proxy container.
    #[arg(long, env = "KEYWAY_SIDECAR_IMAGE", default_value = "keyway:latest")]
    sidecar_image: String,
    /// What the injected proxy dials (default: https://keyway-controller.<ns>.svc:8443, or
    /// http:// with --grpc-plaintext).
    #[arg(long, env = "KEYWAY_SIDECAR_CONTROLLER_URL")]
    sidecar_controller_url: Option<String>,
    /// Audience of the injected proxy's projected token (default: --token-audience, else the
    /// API server's).
    #[arg(long, env = "KEYWAY_SIDECAR_TOKEN_AUDIENCE")]
    sidecar_token_audience: Option<String>,
    /// CA certificates (PEM file) injected proxies trust for an https:// controller URL;
    /// read at start and passed to them as KEYWAY_CONTROLLER_CA_PEM.
    #[arg(long, env = "KEYWAY_SIDECAR_CONTROLLER_CA")]
    sidecar_controller_ca: Option<std::path::PathBuf>,
    /// Form of the injected proxy: `native` (an init container with restartPolicy: Always:
    /// it starts before the app and Jobs complete), `container` (a regular container), or
    /// `auto` (native on Kubernetes 1.29+). A Pod's keyway.dev/sidecar-mode annotation
    /// overrides it.
    #[arg(long, env = "KEYWAY_SIDECAR_MODE", value_enum, default_value = "auto")]
    sidecar_mode: SidecarModeArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SidecarModeArg {
    Auto,
    Native,
    Container,
}

/// The controller's certificate settings: its TLS Secret in `namespace`, for the names
/// proxies and the API server dial.
fn cert_settings(
    namespace: &str,
    secret_name: String,
    dns_names: Vec<String>,
    webhook_config: Option<String>,
) -> keyway_controller::webhook::CertSettings {
    let dns_names: Vec<String> = dns_names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    let dns_names = if dns_names.is_empty() {
        vec![
            format!("keyway-controller.{namespace}.svc"),
            format!("keyway-controller.{namespace}.svc.cluster.local"),
        ]
    } else {
        dns_names
    };
    keyway_controller::webhook::CertSettings {
        namespace: namespace.to_owned(),
        secret_name,
        config_name: webhook_config,
        dns_names,
    }
}

impl WebhookArgs {
    /// The webhook's settings, when it is on; `namespace` is the controller's own.
    fn settings(
        self,
        namespace: &str,
        token_audience: Option<&str>,
        grpc_tls: bool,
        inject_own_ca: bool,
    ) -> Result<Option<keyway_controller::webhook::WebhookSettings>, String> {
        use keyway_controller::webhook::{Injector, SidecarMode, WebhookSettings};
        let Some(listen) = self.webhook_listen else {
            return Ok(None);
        };
        let controller_ca_pem = match &self.sidecar_controller_ca {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("--sidecar-controller-ca {}: {e}", path.display()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "--sidecar-controller-ca {}: no PEM certificate in it",
                        path.display()
                    ));
                }
                Some(pem)
            }
        };
        let scheme = if grpc_tls { "https" } else { "http" };
        Ok(Some(WebhookSettings {
            listen,
            inject_own_ca,
            injector: Injector {
                image: self.sidecar_image,
                controller_url: self.sidecar_controller_url.unwrap_or_else(|| {
                    format!("{scheme}://keyway-controller.{namespace}.svc:8443")
                }),
                token_audience: self
                    .sidecar_token_audience
                    .or_else(|| token_audience.map(str::to_owned)),
                controller_ca_pem,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                native_sidecar: false,
            },
            sidecar_mode: match self.sidecar_mode {
                SidecarModeArg::Auto => SidecarMode::Auto,
                SidecarModeArg::Native => SidecarMode::Native,
                SidecarModeArg::Container => SidecarMode::Container,
            },
        }))
    }
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
        let pod_namespace = std::env::var("POD_NAMESPACE").ok();
        // The controller's own namespace, resolved like the Lease's (without --lease-namespace).
        let own_namespace = leader::lease_namespace(
            None,
            pod_namespace.as_deref(),
            cli.watch_namespace.first().map(String::as_str),
        );
        let token_audience = Some(cli.token_audience.trim().to_owned()).filter(|a| !a.is_empty());
        let grpc_tls = match (cli.grpc_tls_cert.zip(cli.grpc_tls_key), cli.grpc_plaintext) {
            (Some((cert, key)), _) => GrpcTls::Files { cert, key },
            (None, true) => GrpcTls::Plaintext,
            (None, false) => GrpcTls::SelfManaged,
        };
        let webhook_config = cli
            .webhook
            .webhook_listen
            .is_some()
            .then(|| cli.webhook.webhook_config_name.clone());
        let certs = cert_settings(
            &own_namespace,
            cli.tls_secret_name.clone(),
            cli.tls_dns_names.clone(),
            webhook_config,
        );
        let webhook = match cli.webhook.settings(
            &own_namespace,
            token_audience.as_deref(),
            grpc_tls != GrpcTls::Plaintext,
            grpc_tls == GrpcTls::SelfManaged,
        ) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("keyway-controller: {e}");
                return ExitCode::from(2);
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
                    pod_namespace.as_deref(),
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
            webhook,
            certs: Some(certs),
            grpc_security: GrpcSecurity {
                tls: grpc_tls,
                proxy_auth: match cli.proxy_auth {
                    ProxyAuthArg::Tokenreview => ProxyAuth::TokenReview {
                        audience: token_audience,
                    },
                    ProxyAuthArg::None => ProxyAuth::None,
                },
                limits: StreamLimits {
                    max_lifetime: std::time::Duration::from_secs(cli.stream_max_lifetime_seconds),
                    max_streams_per_identity: cli.max_streams_per_identity,
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
