//! The `keyway-mock-upstream` binary, run as a separate process.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn binary_serves_every_listener_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyway-mock-upstream"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "demo",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    for expected in ["demo-1", "demo-2"] {
        let line = tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let url = line
            .strip_prefix(&format!("mock upstream {expected} listening on "))
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .to_owned();
        let resp = tokio::time::timeout(T, client.get(format!("{url}/healthz").parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-mock-upstream"], expected);
        resp.into_body().collect().await.unwrap();
    }

    let pid = child.id().unwrap().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut stderr = String::new();
    tokio::time::timeout(T, child.stderr.take().unwrap().read_to_string(&mut stderr))
        .await
        .unwrap()
        .unwrap();
    keyway_testkit::logs::assert_no_panic("keyway-mock-upstream", &stderr);
}
