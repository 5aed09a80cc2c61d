//! Shared setup for the in-process tests: a proxy started from a manifest file.
#![allow(dead_code)]

use keyway_proxy::http::ForwarderSettings;
use keyway_proxy::{Running, Settings, Source};
use std::path::PathBuf;
use std::time::Duration;

pub struct FileProxy {
    pub proxy: Running,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FileProxy {
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, |_| {}).await
    }

    /// Like [`FileProxy::start`], with the settings adjusted by `tweak` first.
    pub async fn start_with(yaml: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut s = settings(Source::File {
            path: path.clone(),
            reload_interval: Duration::from_millis(50),
        });
        tweak(&mut s);
        let proxy = keyway_proxy::start(s, prometheus::Registry::new())
            .await
            .unwrap();
        Self {
            proxy,
            path,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.proxy.admin_addr)
    }

    /// Rewrites the manifest file the way an editor does: new file, then rename.
    pub fn rewrite(&self, yaml: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

pub fn settings(source: Source) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        source,
        forwarder: ForwarderSettings {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            expose_headers: true,
            overhead_header: false,
            upstream_ca: None,
        },
        drain_timeout: Duration::from_secs(1),
        tls: None,
        limits: Default::default(),
        shutdown_delay: Duration::ZERO,
        traffic_threads: 0,
        access: Default::default(),
    }
}

/// A pool of two backends and two keys, with `{auth}` spliced into the pool spec.
pub fn two_backend_pool(a: &str, b: &str, keys: &[(&str, &str)], auth: &str) -> String {
    let entries: String = keys
        .iter()
        .map(|(k, v)| format!("  {k}: \"{v}\"\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys, labels: {{keyway.dev/api-keys: "true"}}}}
stringData:
{entries}---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys}}
spec:
  secretRef: {{name: llm-keys}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  apiKeyPoolRef: {{name: keys}}
  {auth}
  backends:
    - {{name: a, endpoint: "{a}"}}
    - {{name: b, endpoint: "{b}"}}
"#
    )
}

/// Counts panics in runtime worker threads of this test process (a panic in a detached proxy
/// task, e.g. a connection handler, would otherwise only print). Installed once; chains to
/// the default hook.
pub fn panics() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Only panics in runtime worker and traffic threads (where the proxy's tasks run): a test's
            // own failed assertion panics on its test thread and fails that test anyway.
            if std::thread::current().name().is_some_and(|n| {
                n.starts_with("tokio-runtime-worker") || n.starts_with("keyway-traffic")
            }) {
                COUNT.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

/// What one request of a [`Load`] came to.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub started: std::time::Instant,
    pub took: Duration,
    /// `None`: the request failed at the transport level or hit the client deadline.
    pub status: Option<u16>,
    pub body: String,
    pub error: Option<String>,
}

/// Concurrent client load: `workers` loops, each sending one request at a time until
/// stopped. Every request is bounded by `deadline`: a hang becomes an outcome, not a stuck
/// test.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

pub type ReplyFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    keyway_testkit::client::Reply,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl Load {
    pub fn start<F>(workers: usize, deadline: Duration, request: F) -> Load
    where
        F: Fn(usize) -> ReplyFuture + Send + Sync + 'static,
    {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let request = std::sync::Arc::new(request);
        let tasks = (0..workers)
            .map(|w| {
                let stop = stop.clone();
                let request = request.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = std::time::Instant::now();
                        let r = tokio::time::timeout(deadline, request(w)).await;
                        let took = started.elapsed();
                        out.push(match r {
                            Ok(Ok(reply)) => Outcome {
                                started,
                                took,
                                status: Some(reply.status.as_u16()),
                                body: reply.text(),
                                error: None,
                            },
                            Ok(Err(e)) => Outcome {
                                started,
                                took,
                                status: None,
                                body: String::new(),
                                error: Some(e.to_string()),
                            },
                            Err(_) => Outcome {
                                started,
                                took,
                                status: None,
                                body: String::new(),
                                error: Some(format!("no answer within {deadline:?}")),
                            },
                        });
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the workers and returns every outcome (each worker finishes its current request).
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load worker panicked"));
        }
        all
    }
}

/// A summary line for assertion messages: counts by status and the first few errors.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for o in outcomes {
        let k = o
            .status
            .map_or_else(|| "error".to_string(), |s| s.to_string());
        *by.entry(k).or_default() += 1;
    }
    let errors: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status != Some(200))
        .take(3)
        .map(|o| format!("{:?} {:?} {}", o.status, o.error, o.body))
        .collect();
    format!(
        "{} requests {by:?}; first non-200: {errors:?}",
        outcomes.len()
    )
}

/// A metric from the proxy's `/metrics`: the sum over series whose line contains every one
/// of `labels` (`name="value"` fragments); 0 when no series matches (a labelled counter has
/// none before its first increment).
///
/// # Panics
///
/// If `/metrics` cannot be read or does not answer 200: a check of a metric must not pass
/// on an empty page.
pub async fn metric(admin: &str, name: &str, labels: &[&str]) -> f64 {
    let r = keyway_testkit::client::get(&format!("{admin}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("GET {admin}/metrics: {e}"));
    assert_eq!(r.status, 200, "GET {admin}/metrics: {}", r.text());
    let text = r.text();
    assert!(
        text.contains("# TYPE keyway_"),
        "GET {admin}/metrics has no keyway metric: {text}"
    );
    keyway_testkit::metrics::sum(&text, name, labels)
}

/// The `keyway-proxy` binary next to the test executable (`make test` builds every binary
/// first: `cargo build --workspace --bins`).
pub fn proxy_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("keyway-proxy");
    assert!(
        bin.is_file(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` (make test does)",
        bin.display()
    );
    bin
}

/// Streams a chat completion (`"stream": true`) from `url`; `first` fires at the first
/// chunk. Returns the bytes received and whether the body ended in an error.
pub async fn stream_chat(
    url: &str,
    first: Option<tokio::sync::oneshot::Sender<()>>,
) -> (Vec<u8>, bool) {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let body = serde_json::json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    let Ok(resp) = client.request(req).await else {
        return (Vec::new(), true);
    };
    if resp.status() != 200 {
        return (format!("HTTP {}", resp.status()).into_bytes(), true);
    }
    let mut body = resp.into_body().into_data_stream();
    let mut got = Vec::new();
    let mut first = first;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                got.extend_from_slice(&c);
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
            }
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// A `keyway-proxy` process started from a manifest file on free ports; killed on drop (its
/// log is printed then if the test is failing, and checked for panics if it is not).
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    pub url: String,
    pub admin: String,
    pub path: PathBuf,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    pub async fn start(yaml: &str, extra_args: &[&str]) -> ProxyProcess {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut child = tokio::process::Command::new(proxy_binary())
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("KEYWAY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start keyway-proxy");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("keyway-proxy prints its addresses")
            .unwrap()
            .unwrap_or_default();
        // "keyway-proxy listening on http://A (admin http://B)"
        let mut urls = line
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches(')').strip_prefix("http://"))
            .map(|a| format!("http://{a}"));
        let (url, admin) = (urls.next().expect("url"), urls.next().expect("admin"));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ProxyProcess {
            child,
            url,
            admin,
            path,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// What the proxy logged (stderr) so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// (RSS in KiB, open file descriptors) from /proc.
    ///
    /// # Panics
    ///
    /// If either cannot be read, or reads as zero: a leak check must not pass on zeros.
    pub fn resources(&self) -> (u64, usize) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let rss: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
            .count();
        // A live proxy holds at least stdin/stdout/stderr and its listeners, and some memory.
        assert!(
            rss > 0 && fds >= 3,
            "implausible /proc reading: RSS {rss} KiB, {fds} FDs"
        );
        (rss, fds)
    }
}

impl Drop for ProxyProcess {
    /// Kills the process. A test that did not fail otherwise fails here if the proxy logged a
    /// panic (a panicking connection task would not stop it, only print).
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        keyway_testkit::logs::assert_no_panic("keyway-proxy", &self.logs());
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("----- keyway-proxy log (last {} lines) -----", tail.len());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
