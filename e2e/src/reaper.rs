//! Making sure no child process outlives the test process.
//!
//! `kill_on_drop` and `Drop` guards cover a test that ends or panics, but the shared cluster
//! lives in a `static`, and statics are never dropped; the test process may also be killed
//! (Ctrl-C, a CI timeout). `prctl(PR_SET_PDEATHSIG)` would need `unsafe`, so instead:
//!
//! * The first child is a *reaper*: a tiny `sh` script that leads a new process group and
//!   blocks reading a pipe whose write end only the test process holds (Rust creates pipes
//!   close-on-exec, so no other child inherits it).
//! * Every other child the harness starts (etcd, kube-apiserver, controller, proxy) joins the
//!   reaper's process group.
//! * When the test process exits *for any reason* (normal exit, panic, SIGKILL), the kernel
//!   closes the write end, the reaper reads EOF, re-execs itself into a new session (so it is
//!   not its own victim), SIGKILLs the whole group and deletes the process's run directory ([`run_dir`]).
//!
//! The reaper ignores SIGINT/SIGHUP/SIGTERM, and the group is not the terminal's foreground
//! group, so Ctrl-C on `cargo test` kills the test process, which in turn fires the reaper.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::OnceLock;

const SCRIPT: &str = r#"trap '' INT HUP TERM
cat >/dev/null
exec setsid sh -c 'kill -KILL -"$1" 2>/dev/null; sleep 0.3; rm -rf -- "$2"' keyway-e2e-reaper "$$" "$1"
"#;

struct Reaper {
    pgid: i32,
    dir: PathBuf,
    /// Never written; held so that only the kernel closes it, when this process exits.
    _stdin: Option<ChildStdin>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("keyway-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create the e2e run directory: {e}"))
            .keep();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("keyway-e2e-reaper")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the e2e reaper (sh): {e}"));
        let pgid = i32::try_from(child.id()).expect("pid fits in i32");
        let stdin = child.stdin.take();
        // The reaper outlives every handle to it by design; init reaps it.
        drop(child);
        Reaper {
            pgid,
            dir,
            _stdin: stdin,
        }
    })
}

/// A directory for this test process, deleted by the reaper after the process exits.
pub(crate) fn run_dir() -> &'static Path {
    &reaper().dir
}

/// Puts a command into the reaper's process group (starting the reaper if needed).
pub(crate) fn adopt(cmd: &mut tokio::process::Command) {
    cmd.process_group(reaper().pgid);
}

/// Same as [`adopt`] for a `std` command.
pub(crate) fn adopt_std(cmd: &mut Command) {
    cmd.process_group(reaper().pgid);
}
