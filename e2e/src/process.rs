//! Child processes with captured output, and the product binaries started on loopback.

use crate::cluster::Cluster;
use crate::http::HttpClient;
use crate::{paths, random_hex, reaper};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// How long a product binary may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of each log printed when a test panics while the process is alive.
const TAIL_LINES: usize = 40;

/// A running child process. Its stdout and stderr go to files (see [`Process::logs`]) so a
/// test can grep them afterwards. Dropping it SIGKILLs the process and, for a Keyway binary
/// (`keyway-*`), fails the test if the process logged a panic or a CRITICAL line
/// ([`keyway_testkit::logs::assert_no_panic`]); if the thread is panicking (or
/// `KEYWAY_E2E_KEEP_LOGS=1`), the log directory is kept and the end of each log is printed.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: tokio::process::Child,
    log_dir: Option<TempDir>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    /// A Keyway binary (`keyway-*`): its logs are checked for panics on drop.
    checks_panics: bool,
}

impl Process {
    /// Spawns `program` with `args`. The environment is cleared except `PATH` and `HOME`, then
    /// `env` is added, so stray `KEYWAY_*` variables of the developer's shell cannot leak in.
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(&str, &str)]) -> Process {
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("keyway-e2e-{name}-"))
            .tempdir()
            .expect("create a log directory");
        let stdout_path = log_dir.path().join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.path().join(format!("{name}.stderr.log"));
        let stdout = File::create(&stdout_path).expect("create stdout log");
        let stderr = File::create(&stderr_path).expect("create stderr log");
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(
                ["PATH", "HOME"]
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        reaper::adopt(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Process {
            name: name.to_owned(),
            child,
            log_dir: Some(log_dir),
            stdout_path,
            stderr_path,
            checks_panics: program
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("keyway-")),
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// stdout followed by stderr.
    pub fn logs(&self) -> String {
        let mut all = self.stdout();
        all.push_str(&self.stderr());
        all
    }

    /// The directory holding `<name>.stdout.log` and `<name>.stderr.log`.
    pub fn log_dir(&self) -> &Path {
        self.stdout_path.parent().unwrap_or(Path::new("."))
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the process and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Polls `GET url` until it answers 200. Fails early, with the end of the logs, if the
    /// process exits in the meantime.
    pub async fn wait_http_ok(&mut self, url: &str, timeout: Duration) -> Result<(), String> {
        let client = HttpClient::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before {url} answered 200\n{}",
                    self.name,
                    self.tail()
                ));
            }
            match client.get(url).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("HTTP {}: {}", r.status, r.text().trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{}: {url} did not answer 200 within {timeout:?} (last: {last})\n{}",
                    self.name,
                    self.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of both logs, labelled, for failure messages.
    pub fn tail(&self) -> String {
        let mut out = String::new();
        for (label, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
            let text = read_lossy(path);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            out.push_str(&format!(
                "----- {} {label} (last {} of {} lines; {}) -----\n",
                self.name,
                lines.len() - from,
                lines.len(),
                path.display()
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // A Keyway binary that logged a panic fails the test that started it, even when every
        // request the test checked was answered (a panicking task does not stop the process).
        let logs = if self.checks_panics && !std::thread::panicking() {
            self.logs()
        } else {
            String::new()
        };
        let panicked = !keyway_testkit::logs::panic_lines(&logs).is_empty();
        let keep = panicked
            || std::thread::panicking()
            || std::env::var_os("KEYWAY_E2E_KEEP_LOGS").is_some_and(|v| v == "1");
        if keep && let Some(dir) = self.log_dir.take() {
            let kept = dir.keep();
            eprintln!(
                "{}[e2e] kept the logs of {} in {}",
                self.tail(),
                self.name,
                kept.display()
            );
        }
        keyway_testkit::logs::assert_no_panic(&self.name, &logs);
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Spawns a process on free ports until it gets ready: binding a port found by
/// [`free_port`](crate::free_port) can lose a race with another process, which shows up as the
/// process exiting early; that is retried (a few times) with new ports.
pub(crate) async fn start_ready<T>(
    what: &str,
    mut attempt: impl FnMut() -> (Process, String, T),
) -> (Process, T) {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let (mut process, ready_url, extra) = attempt();
        match process.wait_http_ok(&ready_url, READY_TIMEOUT).await {
            Ok(()) => return (process, extra),
            Err(e) => {
                let exited = process.exited().is_some();
                errors.push(e);
                if !exited {
                    break; // alive but not ready: not a port race
                }
            }
        }
    }
    panic!("{what} did not become ready:\n{}", errors.join("\n"));
}

/// The audience `keyway-controller` requires of proxy tokens by default.
pub const DEFAULT_AUDIENCE: &str = "keyway.dev";

/// A running `keyway-controller`.
#[derive(Debug)]
pub struct Controller {
    pub process: Process,
    /// `http://127.0.0.1:PORT`, what proxies dial.
    pub grpc_url: String,
    /// `http://127.0.0.1:PORT` of /healthz, /readyz, /metrics.
    pub admin_url: String,
}

impl Controller {
    /// Starts the controller against `cluster` (watching only `watch_namespace` if given) and
    /// waits until its `/readyz` answers 200.
    ///
    /// Tests run in parallel in one process against one API server: a controller watching
    /// all namespaces would also write the status of other tests' pools, so tests should pass
    /// their own namespace.
    pub async fn start(cluster: &Cluster, watch_namespace: Option<&str>) -> Controller {
        Self::start_with(cluster, watch_namespace, &[]).await
    }

    /// Like [`Controller::start`], with `extra_args` appended to the command line.
    pub async fn start_with(
        cluster: &Cluster,
        watch_namespace: Option<&str>,
        extra_args: &[&str],
    ) -> Controller {
        Self::launch(
            cluster.kubeconfig(),
            watch_namespace,
            None,
            extra_args,
            &[],
            false,
        )
        .await
    }

    /// Starts the controller with another identity than the admin: `kubeconfig` (for example
    /// a ServiceAccount token's, to prove that its RBAC is enough), with `env` added (such as
    /// `POD_NAMESPACE`, as a pod would have it). `args` are the whole command line except
    /// `--grpc-listen` and `--admin-listen`, which the harness sets to free loopback ports.
    pub async fn start_as(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Controller {
        Self::launch(kubeconfig, None, None, args, env, true).await
    }

    /// Starts a controller on the same addresses as `previous` (which must be dead), so that
    /// proxies configured with its URL reconnect to it.
    pub async fn restart(
        cluster: &Cluster,
        watch_namespace: Option<&str>,
        previous: &Controller,
    ) -> Controller {
        let strip = |u: &str| {
            u.trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_owned()
        };
        let addrs = (strip(&previous.grpc_url), strip(&previous.admin_url));
        Self::launch(
            cluster.kubeconfig(),
            watch_namespace,
            Some(addrs),
            &[],
            &[],
            false,
        )
        .await
    }

    async fn launch(
        kubeconfig: &Path,
        watch_namespace: Option<&str>,
        fixed: Option<(String, String)>,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
        whole_command_line: bool,
    ) -> Controller {
        let binary = paths::workspace_binary("keyway-controller");
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        // The controller serves TLS with its own certificate by default. Tests that are not
        // about TLS opt out explicitly, as a developer would; a test that passes any TLS flag
        // (or the opt-out itself) keeps its own choice.
        let chooses_tls = whole_command_line
            || extra_args.iter().any(|a| {
                a.starts_with("--grpc-tls")
                    || a.starts_with("--tls-")
                    || a.starts_with("--grpc-plaintext")
            });
        let plaintext: &[&str] = if chooses_tls {
            &[]
        } else {
            &["--grpc-plaintext"]
        };
        let scheme = if !plaintext.is_empty()
            || extra_args.iter().any(|a| a.starts_with("--grpc-plaintext"))
        {
            "http"
        } else {
            "https"
        };
        let (process, (grpc_url, admin_url)) = start_ready("keyway-controller", || {
            let (grpc, admin) = fixed.clone().unwrap_or_else(|| {
                (
                    format!("127.0.0.1:{}", crate::free_port()),
                    format!("127.0.0.1:{}", crate::free_port()),
                )
            });
            let mut args = vec![
                "--grpc-listen".to_owned(),
                grpc.clone(),
                "--admin-listen".to_owned(),
                admin.clone(),
            ];
            if let Some(ns) = watch_namespace {
                args.extend(["--watch-namespace".to_owned(), ns.to_owned()]);
            }
            args.extend(extra_args.iter().map(|s| (*s).to_owned()));
            args.extend(plaintext.iter().map(|s| (*s).to_owned()));
            let mut env = vec![("KUBECONFIG", kubeconfig.as_str()), ("KEYWAY_LOG", "debug")];
            env.extend_from_slice(extra_env);
            let process = Process::spawn("controller", &binary, &args, &env);
            let admin_url = format!("http://{admin}");
            (
                process,
                format!("{admin_url}/readyz"),
                (format!("{scheme}://{grpc}"), admin_url),
            )
        })
        .await;
        Controller {
            process,
            grpc_url,
            admin_url,
        }
    }
}

/// A running `keyway-proxy` in controller mode.
#[derive(Debug)]
pub struct Proxy {
    pub process: Process,
    /// `http://127.0.0.1:PORT`, the traffic listener.
    pub url: String,
    /// `http://127.0.0.1:PORT` of /healthz, /readyz, /status, /metrics.
    pub admin_url: String,
    /// The `--proxy-id` it was given.
    pub id: String,
    /// Holds the ServiceAccount token file the harness made, if it made one.
    _token_dir: Option<TempDir>,
}

impl Proxy {
    /// Starts a proxy serving `namespace` from `controller` and waits until its `/readyz`
    /// answers 200 (a configuration is loaded). `extra_args` are appended to the command line.
    ///
    /// The controller authenticates proxies, so unless `extra_args` has a `--token-file`, the
    /// proxy gets a token of ServiceAccount `keyway-proxy` of `namespace` with the
    /// controller's default audience ([`DEFAULT_AUDIENCE`]), as the injector projects it.
    pub async fn start(controller: &Controller, namespace: &str, extra_args: &[&str]) -> Proxy {
        let binary = paths::workspace_binary("keyway-proxy");
        let id = format!("e2e-proxy-{}", random_hex(6));
        let mut extra_args = extra_args.to_vec();
        let mut token_dir = None;
        let token_path;
        if !extra_args.contains(&"--token-file") {
            let token = crate::cluster()
                .await
                .service_account_token(namespace, "keyway-proxy", Some(DEFAULT_AUDIENCE))
                .await;
            let dir = tempfile::Builder::new()
                .prefix("keyway-e2e-token-")
                .tempdir()
                .expect("create a token directory");
            token_path = dir.path().join("token").to_string_lossy().into_owned();
            std::fs::write(&token_path, token).expect("write the token file");
            extra_args.extend(["--token-file", &token_path]);
            token_dir = Some(dir);
        }
        let (process, (url, admin_url)) = start_ready("keyway-proxy", || {
            let listen = format!("127.0.0.1:{}", crate::free_port());
            let admin = format!("127.0.0.1:{}", crate::free_port());
            // `--controller` in `extra_args` (several replicas' URLs) replaces the default.
            let mut args: Vec<String> = if extra_args.contains(&"--controller") {
                Vec::new()
            } else {
                vec!["--controller".to_owned(), controller.grpc_url.clone()]
            };
            args.extend(
                [
                    "--namespace",
                    namespace,
                    "--proxy-id",
                    &id,
                    "--listen",
                    &listen,
                    "--admin-listen",
                    &admin,
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
            args.extend(extra_args.iter().map(|s| (*s).to_owned()));
            let process = Process::spawn("proxy", &binary, &args, &[("KEYWAY_LOG", "debug")]);
            let admin_url = format!("http://{admin}");
            (
                process,
                format!("{admin_url}/readyz"),
                (format!("http://{listen}"), admin_url),
            )
        })
        .await;
        Proxy {
            process,
            url,
            admin_url,
            id,
            _token_dir: token_dir,
        }
    }
}
