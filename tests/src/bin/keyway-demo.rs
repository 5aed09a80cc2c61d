//! `keyway-demo`: Keyway with no cluster and no real API keys. Starts two mock LLM upstreams
//! and a proxy in standalone mode from a generated manifest file, and prints what to try.

use clap::Parser;
use keyway_proxy::http::ForwarderSettings;
use keyway_proxy::{Settings, Source};
use keyway_testkit::MockUpstream;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "keyway-demo",
    about = "Run Keyway locally against two mock LLM upstreams"
)]
struct Args {
    /// Proxy traffic listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Proxy admin listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
}

fn manifest(a: &str, b: &str) -> String {
    format!(
        r#"# Keyway demo config: the same manifests you would `kubectl apply`.
# Edit this file while the demo runs; valid changes apply within a second,
# invalid ones are logged with the field path and the old config keeps serving.
apiVersion: v1
kind: Secret
metadata:
  name: demo-keys
  labels: {{keyway.dev/api-keys: "true"}}
stringData:
  key-1: demo-secret-value-1
  key-2: demo-secret-value-2
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata:
  name: demo-keys
spec:
  secretRef:
    name: demo-keys
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata:
  name: demo
spec:
  apiKeyPoolRef:
    name: demo-keys
  auth:
    header: Authorization
    prefix: "Bearer "
  backends:
    - name: upstream-a
      endpoint: {a}
    - name: upstream-b
      endpoint: {b}
"#
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    keyway_proxy::logging::init("warn,keyway_proxy=info");
    let (a, b) = match (
        MockUpstream::start("upstream-a").await,
        MockUpstream::start("upstream-b").await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("keyway-demo: cannot start the mock upstreams: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = std::env::temp_dir().join(format!("keyway-demo-{}", std::process::id()));
    let path = dir.join("keyway.yaml");
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, manifest(&a.url(), &b.url())))
    {
        eprintln!("keyway-demo: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        listen: args.listen,
        admin_listen: args.admin_listen,
        source: Source::File {
            path: path.clone(),
            reload_interval: Duration::from_secs(1),
        },
        forwarder: ForwarderSettings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            expose_headers: true,
            overhead_header: false,
            upstream_ca: None,
        },
        drain_timeout: Duration::from_secs(5),
        tls: None,
        limits: Default::default(),
        shutdown_delay: Duration::ZERO,
        traffic_threads: 0,
        access: Default::default(),
    };
    let running = match keyway_proxy::start(settings, prometheus::Registry::new()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keyway-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (p, admin) = (running.addr, running.admin_addr);
    println!(
        r#"Keyway demo is running.

  mock upstreams   {a_url} and {b_url}
  proxy            http://{p}
  admin            http://{admin}
  config (live)    {config}

Try:
  curl -si http://{p}/v1/chat/completions -H 'content-type: application/json' \
       -d '{{"model":"mock-model","messages":[{{"role":"user","content":"hi"}}]}}'
      (repeat it: x-keyway-backend and x-keyway-key-id alternate)
  curl -sN http://{p}/v1/chat/completions -H 'content-type: application/json' \
       -d '{{"model":"mock-model","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
  curl -s http://{admin}/status
  curl -s http://{admin}/metrics | grep keyway_proxy_requests_total

Ctrl-C stops it."#,
        a_url = a.url(),
        b_url = b.url(),
        config = path.display(),
    );
    let result = running
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyway-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
