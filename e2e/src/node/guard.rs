//! The machine-wide node lock and the cleanup that runs however the test process ends: a
//! `guard.sh` child (see that script) holds an exclusive `flock` on
//! `~/.cache/keyway/node.lock`, cleans up what a run that died left behind, and cleans up
//! after this process once it exits. The node's daemons join the guard's process group so the
//! guard can kill them first.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A running guard that holds the node lock.
pub(crate) struct Guard {
    pgid: i32,
    /// Never written; held so that only the kernel closes it, when this process exits.
    _stdin: Option<ChildStdin>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("pgid", &self.pgid).finish()
    }
}

impl Guard {
    /// Starts `guard.sh` and blocks until it holds the lock and has cleaned up (another run
    /// on this machine may hold the lock first: that wait is reported, and unbounded, since
    /// that run's own deadlines bound it).
    pub(crate) fn acquire(
        script: &Path,
        lock: &Path,
        state: &Path,
        log: &Path,
    ) -> anyhow::Result<Guard> {
        let log = std::fs::File::create(log)?;
        let mut child = Command::new("bash")
            .arg(script)
            .arg(lock)
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", script.display()))?;
        let pgid = i32::try_from(child.id())?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout from the node guard"))?;
        let start = Instant::now();
        for line in BufReader::new(stdout).lines() {
            match line?.trim() {
                "waiting" => eprintln!(
                    "[e2e node] another test run on this machine holds the node ({}); waiting \
                     for it to finish",
                    lock.display()
                ),
                "ready" => {
                    let waited = start.elapsed();
                    if waited > Duration::from_secs(1) {
                        eprintln!(
                            "[e2e node] node lock taken after {:.1}s",
                            waited.as_secs_f64()
                        );
                    }
                    // The guard outlives every handle to it by design; init reaps it.
                    drop(child);
                    return Ok(Guard {
                        pgid,
                        _stdin: stdin,
                    });
                }
                _ => {}
            }
        }
        anyhow::bail!(
            "the node guard ({}) exited before taking the lock",
            script.display()
        )
    }

    /// Puts a command into the guard's process group: killed when the test process exits.
    pub(crate) fn adopt(&self, cmd: &mut Command) {
        cmd.process_group(self.pgid);
    }
}
