//! What a Keyway process logged that must fail the test that started it.
//!
//! A panic in a detached task of a child process does not stop the process and fails no
//! request the test checks: only its log says so. Keyway's binaries log a panic as one JSON line
//! with `"severity":"CRITICAL"` (`keyway_api::logging`), followed by Rust's default message
//! (`thread '…' panicked at …`), which is also all a text-format log or another binary shows.
//! Every harness that starts a binary checks its log with [`assert_no_panic`] when the test is
//! done with it.

/// The lines of `log` that report a panic or a CRITICAL event.
pub fn panic_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains("\"severity\":\"CRITICAL\""))
        .collect()
}

/// Panics, quoting them, if `log` holds a panic or CRITICAL line of process `name`; does
/// nothing while the thread is already panicking (the test failed anyway, and a second panic
/// would abort the process).
pub fn assert_no_panic(name: &str, log: &str) {
    if std::thread::panicking() {
        return;
    }
    let lines = panic_lines(log);
    assert!(
        lines.is_empty(),
        "{name} logged a panic or a CRITICAL event:\n{}",
        lines.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_json_line_and_the_default_hooks_message() {
        let log = concat!(
            "{\"severity\":\"INFO\",\"message\":\"config applied\"}\n",
            "{\"timestamp\":\"2026-01-01T00:00:00Z\",\"severity\":\"CRITICAL\",\"message\":\"panic: boom\"}\n",
            "thread 'tokio-runtime-worker' panicked at proxy/src/lib.rs:1:1:\n",
            "boom\n",
        );
        assert_eq!(panic_lines(log).len(), 2);
        assert!(panic_lines("{\"severity\":\"ERROR\",\"message\":\"x\"}\n").is_empty());
    }

    #[test]
    #[should_panic(expected = "proxy logged a panic")]
    fn a_panic_line_fails_the_check() {
        assert_no_panic("proxy", "thread 'main' panicked at src/main.rs:1:1:\n");
    }
}
