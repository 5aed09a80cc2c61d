//! The real `keyway-proxy` binary: `check`, `export-config`, and the quick start's JSON logs
//! (every line parses, carries the stated fields and no key value).

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_keyway-proxy");
const SECRETS: [&str; 4] = [
    "sk-live-secret-1",
    "sk-live-secret-2",
    "sk-ant-secret-3",
    "admin-token-0123456789",
];

fn command() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "KEYWAY_CONFIG",
        "KEYWAY_CONTROLLER",
        "KEYWAY_OPENAI_KEYS",
        "OPENAI_API_KEYS",
        "KEYWAY_ANTHROPIC_KEYS",
        "KEYWAY_GEMINI_KEYS",
        "KEYWAY_TAVILY_KEYS",
        "KEYWAY_ENDPOINTS",
        "KEYWAY_LOG",
        "RUST_LOG",
        "KEYWAY_ADMIN_TOKEN",
    ] {
        c.env_remove(var);
    }
    for var in keyway_proxy::quickstart::VARIABLES {
        c.env_remove(var);
    }
    c
}

/// Fails if a run of the binary logged a panic (Rust's `panicked at`, or the JSON log's
/// CRITICAL line): a panicking task need not change the exit code.
fn assert_no_panic(stderr: &str) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("\"severity\":\"CRITICAL\""))
        .collect();
    assert!(
        lines.is_empty(),
        "keyway-proxy panicked:\n{}",
        lines.join("\n")
    );
}

/// Runs the command to completion and checks its stderr for panics.
fn output(c: &mut Command) -> std::process::Output {
    let out = c.output().expect("run keyway-proxy");
    assert_no_panic(&String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn check_reports_every_problem_with_a_hint_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys}
spec: {secretRef: {name: missing-secret}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: one}
spec:
  backends: [{name: a, endpoint: "ftp://nope"}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: two}
spec:
  backends: [{name: a, endpoint: "http://127.0.0.1:1"}]
  retires: {maxRetries: 2}
"#,
    )
    .unwrap();
    let out = output(command().args(["check", "--config"]).arg(&path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{stdout}");
    let problems: Vec<&str> = stdout.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(problems.len(), 3, "{stdout}");
    assert!(stdout.contains("invalid (3 problems)"), "{stdout}");
    assert!(
        stdout.contains("LoadBalancerPool default/two: spec.retires"),
        "{stdout}"
    );
    assert!(stdout.contains("spec.backends[0].endpoint"), "{stdout}");
    assert!(stdout.contains("spec.secretRef.name"), "{stdout}");
    assert_eq!(stdout.matches("  hint: ").count(), 3, "{stdout}");
}

#[test]
fn export_config_prints_placeholders_that_check_accepts() {
    let out = output(
        command()
            .arg("export-config")
            .env("KEYWAY_OPENAI_KEYS", "sk-live-secret-1,sk-live-secret-2:2")
            .env("KEYWAY_ANTHROPIC_KEYS", "sk-ant-secret-3"),
    );
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    for s in SECRETS {
        assert!(!yaml.contains(s), "{yaml}");
    }
    assert!(yaml.contains("${KEYWAY_OPENAI_KEY_2}"), "{yaml}");
    assert!(yaml.contains("provider: anthropic"), "{yaml}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exported.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = output(
        command()
            .args(["check", "--config"])
            .arg(&path)
            .env("KEYWAY_OPENAI_KEY_1", "v1")
            .env("KEYWAY_OPENAI_KEY_2", "v2")
            .env("KEYWAY_ANTHROPIC_KEY_1", "v3"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let with = output(
        command()
            .args(["export-config", "--include-secrets"])
            .env("KEYWAY_OPENAI_KEYS", "sk-live-secret-1"),
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("sk-live-secret-1"));
    let none = output(command().arg("export-config"));
    assert_eq!(none.status.code(), Some(64));
}

async fn http(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn quick_start_logs_json_lines_without_key_values() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = tokio::process::Command::from(command());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--access-log-sample",
        "1",
    ])
    .env("KEYWAY_OPENAI_KEYS", "sk-live-secret-1,sk-live-secret-2:2")
    .env("KEYWAY_ANTHROPIC_KEYS", "sk-ant-secret-3")
    .env(
        "KEYWAY_ENDPOINTS",
        format!(r#"{{"openai":["http://{closed}"]}}"#),
    )
    .env("KEYWAY_ADMIN_TOKEN", "admin-token-0123456789")
    // No KEYWAY_LOG_FORMAT: stderr is a pipe, so JSON is the default.
    .env_remove("KEYWAY_LOG_FORMAT")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // "keyway-proxy listening on http://A (admin http://B)"
    let mut urls = line
        .split("http://")
        .skip(1)
        .map(|s| s.trim_end_matches(|c: char| c == ')' || c.is_whitespace() || c == '('));
    let traffic = urls.next().unwrap().split(' ').next().unwrap().to_string();
    let admin = urls.next().unwrap().to_string();

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let r = http(&traffic, "POST", "/v1/chat/completions", "", body).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    let auth = "authorization: Bearer admin-token-0123456789\r\n";
    let r = http(&admin, "PUT", "/log-level", auth, "debug").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = http(
        &admin,
        "POST",
        "/pools/openai/keys",
        auth,
        r#"{"id":"x","value":"y"}"#,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 409") && r.contains("export-config"),
        "{r}"
    );
    let r = http(&admin, "GET", "/pools/openai", "", "").await;
    assert!(r.contains("openai-1"), "{r}");

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // SIGTERM drains and exits 0; stderr ends when the process does. Both within a deadline:
    // a proxy that ignores SIGTERM fails here instead of hanging the suite.
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), pipe.read_to_string(&mut stderr))
        .await
        .expect("stderr closed within 20 s of SIGTERM")
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exited within 20 s of SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}\n{stderr}"
    );
    assert_no_panic(&stderr);

    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        for s in SECRETS {
            assert!(!line.contains(s), "a log line holds a secret: {line}");
        }
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
                .contains(&v["severity"].as_str().unwrap()),
            "{line}"
        );
        assert_eq!(v["component"], "proxy", "{line}");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        messages.push(v);
    }
    let find = |msg: &str| {
        messages
            .iter()
            .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with(msg)))
            .unwrap_or_else(|| panic!("no {msg:?} line in:\n{stderr}"))
    };
    assert_eq!(find("quick start: pool built")["pool"], "openai");
    let added = messages
        .iter()
        .find(|v| v["message"] == "key added" && v["key_id"] == "openai-2")
        .unwrap_or_else(|| panic!("no key added line:\n{stderr}"));
    assert_eq!(added["key_pool"], "default/openai");
    assert_eq!(find("config applied")["version"], 1);
    let failed = find("upstream request failed");
    assert_eq!(failed["severity"], "WARNING");
    assert_eq!(failed["pool"], "default/openai");
    let access = messages
        .iter()
        .find(|v| v["access_log"] == true)
        .unwrap_or_else(|| panic!("no access log line:\n{stderr}"));
    assert_eq!(access["status"], 502);
    assert_eq!(access["path"], "/v1/chat/completions");
    find("log filter changed");
}

#[test]
fn a_gateway_needs_client_tokens_or_an_explicit_opt_out() {
    // A traffic port on every interface without client tokens: refused, naming both ways out.
    let out = output(
        command()
            .args(["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"])
            .env("KEYWAY_OPENAI_KEYS", "sk-live-secret-1"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--client-tokens-file") && stderr.contains("--allow-anonymous-clients"),
        "{stderr}"
    );
    // With the opt-out it starts (and is stopped here).
    let mut child = command()
        .args([
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--allow-anonymous-clients",
        ])
        .env("KEYWAY_OPENAI_KEYS", "sk-live-secret-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(line.contains("listening"), "{line}");
    assert_no_panic(&stderr);
}

#[test]
fn check_warns_about_what_a_cluster_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyway.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {k1: sk-live-secret-1}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys}
spec: {secretRef: {name: keys}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: shared}
spec:
  apiKeyPoolRef: {name: keys}
  allowedProxyNamespaces: [team-b]
  backends: [{name: a, endpoint: "http://127.0.0.1:1"}]
"#,
    )
    .unwrap();
    let out = output(command().args(["check", "--config"]).arg(&path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Valid here (a user's own file), but said: a cluster would not serve it the same way.
    assert!(out.status.success(), "{stdout}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings.iter().any(|w| w.contains("Secret default/keys")
            && w.contains("keyway.dev/api-keys")
            && w.contains("SecretNotLabelled")),
        "{stdout}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.allowedProxyNamespaces")
                && w.contains("team-b")
                && w.contains("key owner")),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-live-secret-1"));
}

#[test]
fn import_prints_manifests_that_check_accepts_and_refuses_bad_input_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tavily.yaml");
    std::fs::write(
        &src,
        "servers:\n  - {name: backend-a, host: 10.0.1.20, port: 443, weight: 1}\n\
         api_keys:\n  - {id: key-1, value: sk-live-secret-1, quota_per_minute: 60}\n\
         strategy: weighted_round_robin\n",
    )
    .unwrap();
    let out = command()
        .args(["import", "--from", "tavily"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.starts_with("# Generated by `keyway-proxy import --from tavily`"),
        "{yaml}"
    );
    let path = dir.path().join("imported.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The environment: the Python proxy's variables.
    let out = command()
        .args(["import", "--from", "lm-proxy", "--env"])
        .env("OPENAI_API_KEYS", "sk-live-secret-1,sk-live-secret-2")
        .env("ANTHROPIC_API_KEY", "sk-ant-secret-3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("provider: anthropic") && yaml.contains("gpt-*"),
        "{yaml}"
    );

    // Bad input: the field is named, the value never shown, exit 64.
    std::fs::write(
        &src,
        "servers: []\napi_keys:\n  - {value: sk-live-secret-2}\n",
    )
    .unwrap();
    let out = command()
        .args(["import", "--from", "tavily"])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api_keys[0].id") && !err.contains("sk-live"),
        "{err}"
    );
    let out = command()
        .args(["import", "--from", "alyx", "--env"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn an_invalid_config_at_startup_exits_64_naming_the_field_and_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyway.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: v1
kind: Secret
metadata: {name: keys, labels: {keyway.dev/api-keys: "true"}}
stringData: {k1: sk-live-secret-1}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys}
spec: {secretRef: {name: keys}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: llm}
spec:
  apiKeyPoolRef: {name: keys}
  backends: [{name: a, endpoint: "ftp://nope"}]
"#,
    )
    .unwrap();
    let mut cmd = tokio::process::Command::from(command());
    cmd.arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A proxy that starts serving anyway never exits: the deadline turns that into a failure.
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("an invalid config stops the proxy at once")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stdout}{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("invalid config") && stderr.contains("spec.backends[0].endpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-live-secret-1"), "{stderr}");
    assert_no_panic(&stderr);
}
