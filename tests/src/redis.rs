//! A real `redis-server` (the Debian package, installed by `e2e/tools/install.sh`) on a
//! loopback port, with no persistence, for the affinity-store tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A running `redis-server` (or Sentinel); killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

/// The `redis-server` binary: `$KEYWAY_REDIS_SERVER`, else on `PATH`, else `/usr/bin`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYWAY_REDIS_SERVER") {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "/usr/bin/redis-server".into())
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing (run `e2e/tools/install.sh`) or does not come up.
    pub async fn start() -> RedisServer {
        Self::start_on(crate::free_port()).await
    }

    /// Starts a server on `port` (e.g. the port of a stopped one, to bring it back).
    pub async fn start_on(port: u16) -> RedisServer {
        let bin = binary();
        let child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run e2e/tools/install.sh (it installs the Debian redis-server package)",
                    bin.display()
                )
            });
        let server = RedisServer {
            child: Some(child),
            port,
            _dir: None,
        };
        crate::eventually(Duration::from_secs(10), "redis-server answers PING", || {
            server.ping()
        })
        .await;
        server
    }

    /// Starts a server that speaks TLS only (certificate `cert`, key `key`; clients are not
    /// asked for certificates), requiring `password` when given, and waits until it accepts
    /// connections.
    pub async fn start_tls(cert: &Path, key: &Path, password: Option<&str>) -> RedisServer {
        let port = crate::free_port();
        let bin = binary();
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = password {
            args.extend(["--requirepass".to_string(), p.to_string()]);
        }
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} with TLS: {e}", bin.display()));
        let server = RedisServer {
            child: Some(child),
            port,
            _dir: None,
        };
        crate::eventually(
            Duration::from_secs(10),
            "redis-server (TLS) listens",
            || async move { TcpStream::connect(("127.0.0.1", port)).await.is_ok() },
        )
        .await;
        server
    }

    /// Starts a Sentinel (`redis-server --sentinel`) on a free port monitoring `master` as
    /// `name`, and waits until it knows the master's address.
    pub async fn start_sentinel(name: &str, master: &RedisServer) -> RedisServer {
        let port = crate::free_port();
        let dir = tempfile::tempdir().expect("sentinel dir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 1\n",
                master.port()
            ),
        )
        .expect("write sentinel.conf");
        let bin = binary();
        let child = Command::new(&bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} --sentinel: {e}", bin.display()));
        let server = RedisServer {
            child: Some(child),
            port,
            _dir: Some(dir),
        };
        crate::eventually(
            Duration::from_secs(10),
            "redis sentinel answers PING",
            || server.ping(),
        )
        .await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Whether the server answers `PING` now.
    pub async fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
    }
}
