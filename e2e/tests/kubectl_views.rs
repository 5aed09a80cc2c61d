//! The first questions answered by `kubectl` alone, against the real API server with the real
//! `kubectl`: `get akp -o wide` counts the cooling, exhausted and disabled keys; `get lbp -o
//! wide` names the active backend and the `Degraded` reason through a failover and a
//! failback; `describe lbp` lists the Events in the order they happened. The controller's own
//! `/status` names the connected proxy and its ACK.

use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{
    Controller, MockUpstream, Proxy, TestNamespace, Timings, cluster, random_hex, wait_for,
};
use keyway_testkit::Behavior;
use keyway_testkit::browser::Browser;
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `kubectl get KIND NAME -o wide` as column → value (no value holds a space in these tables).
async fn wide(ns: &TestNamespace, kind: &str, name: &str) -> BTreeMap<String, String> {
    let out = ns.kubectl_ok(&["get", kind, name, "-o", "wide"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    header
        .iter()
        .zip(row.iter().chain(std::iter::repeat(&"")))
        .map(|(h, v)| (h.to_string(), v.to_string()))
        .collect()
}

fn expect(row: &BTreeMap<String, String>, want: &[(&str, &str)]) -> Result<(), String> {
    if want
        .iter()
        .all(|(k, v)| row.get(*k).map(String::as_str) == Some(*v))
    {
        Ok(())
    } else {
        Err(format!("{row:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wide_views_show_key_states_the_active_backend_and_events_in_order() {
    let mut t = Timings::new("kubectl_views");
    let cluster = cluster().await;
    let ns = cluster.namespace("kubectl-views").await;
    let primary = MockUpstream::start("primary").await.expect("mock");
    let secondary = MockUpstream::start("secondary").await.expect("mock");
    let key = |n: &str| format!("sk-e2e-{n}-{}", random_hex(12));
    let (ok, cooling, exhausted, disabled) = (key("ok"), key("cool"), key("exh"), key("dis"));
    ns.apply(
        &Manifests::new()
            .secret(
                "keys",
                &[
                    ("key-ok", &ok),
                    ("key-cooling", &cooling),
                    ("key-exhausted", &exhausted),
                    ("key-disabled", &disabled),
                ],
            )
            .key_pool("keys", "keys")
            .spec("selection: roundRobin")
            .pool("llm", "keys")
            .spec(
                "mode: failover\nhealthCheck: {path: /v1/models, intervalSeconds: 1, timeoutSeconds: 1, failThreshold: 2, successThreshold: 2}",
            )
            .backend_with_role("primary", "primary", &primary.url())
            .backend_with_role("secondary", "secondary", &secondary.url())
            .yaml(),
    )
    .await;
    let controller = Controller::start_with(
        cluster,
        Some(ns.name()),
        &["--status-counter-interval-seconds", "1"],
    )
    .await;
    let proxy = Proxy::start(&controller, ns.name(), &["--report-interval", "200ms"]).await;
    t.phase("applied, controller and proxy ready");

    // One key rate limited for under a minute (cooling), one for longer (exhausted), one
    // revoked (disabled); the fourth serves everything.
    for up in [&primary, &secondary] {
        up.set_key_behavior(&cooling, Some(Behavior::rate_limited(50)));
        up.set_key_behavior(&exhausted, Some(Behavior::rate_limited(600)));
        up.set_key_behavior(&disabled, Some(Behavior::status(401)));
    }
    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    for _ in 0..8 {
        let r = http
            .post_json(&url, &chat_request("m", "hi"))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_for(
        T,
        "kubectl get akp -o wide counts the key states",
        || async {
            let row = wide(&ns, "akp", "keys").await;
            expect(
                &row,
                &[
                    ("ACTIVE", "1"),
                    ("KEYS", "4"),
                    ("COOLING", "1"),
                    ("EXHAUSTED", "1"),
                    ("DISABLED", "1"),
                    ("READY", "True"),
                ],
            )
        },
    )
    .await;
    wait_for(
        T,
        "kubectl get lbp -o wide: primary, as expected",
        || async {
            let row = wide(&ns, "lbp", "llm").await;
            expect(&row, &[("ACTIVE", "primary"), ("DEGRADED", "AsExpected")])
        },
    )
    .await;
    t.phase("akp and lbp wide views");

    // The primary fails its health checks: traffic fails over, and back once it recovers.
    primary.set_behavior(Behavior::status(503));
    wait_for(T, "kubectl get lbp -o wide: failed over", || async {
        let row = wide(&ns, "lbp", "llm").await;
        expect(&row, &[("ACTIVE", "secondary"), ("DEGRADED", "FailedOver")])
    })
    .await;
    primary.set_behavior(Behavior::Normal);
    wait_for(T, "kubectl get lbp -o wide: failed back", || async {
        let row = wide(&ns, "lbp", "llm").await;
        expect(&row, &[("ACTIVE", "primary"), ("DEGRADED", "AsExpected")])
    })
    .await;
    t.phase("failover and failback in the wide view");

    // `kubectl describe` lists the two moves in the order they happened.
    let describe = wait_for(T, "both moves in kubectl describe", || async {
        let out = ns.kubectl_ok(&["describe", "lbp", "llm"]).await;
        let events = out.split("Events:").nth(1).unwrap_or_default().to_owned();
        let away = events.find("traffic moved from backend primary to secondary");
        let back = events.find("traffic moved from backend secondary to primary");
        match (away, back) {
            (Some(a), Some(b)) => Ok((a, b, out)),
            _ => Err(out),
        }
    })
    .await;
    let (away, back, out) = describe;
    assert!(
        away < back,
        "kubectl describe lists the failover before the failback:\n{out}"
    );
    let akp = ns.kubectl_ok(&["describe", "akp", "keys"]).await;
    assert!(
        akp.contains("KeyDisabled") && akp.contains("key-disabled"),
        "the disabled key's event is in kubectl describe akp:\n{akp}"
    );
    let views = format!(
        "{out}{akp}{}",
        ns.kubectl_ok(&["get", "akp,lbp", "-o", "wide"]).await
    );
    for v in [&ok, &cooling, &exhausted, &disabled] {
        assert!(!views.contains(v.as_str()), "a key value in a kubectl view");
    }
    eprintln!("[kubectl_views] what an operator sees:\n{views}");

    // The controller's own status (loopback only): this replica leads, watches the test's
    // namespace, resolved both objects, and the proxy ACKed the version it was sent.
    let st = wait_for(T, "the controller's /status", || async {
        let r = http
            .get(&format!("{}/status", controller.admin_url))
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&r.text()).map_err(|e| e.to_string())?;
        let p = &v["proxies"][0];
        let ok = v["leader"] == true
            && v["watchedNamespaces"][0] == ns.name()
            && p["id"] == proxy.id.as_str()
            && p["acked"] == true
            && p["sentVersion"].as_u64() > Some(0)
            && p["pools"][0] == format!("{}/llm", ns.name())
            && v["pools"][0]["resolved"] == true
            && v["keyPools"][0]["count"] == 4;
        if ok {
            Ok(v.to_string())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    for v in [&ok, &cooling, &exhausted, &disabled] {
        assert!(
            !st.contains(v.as_str()),
            "a key value in the controller's status"
        );
    }
    let page = http
        .get(&format!("{}/", controller.admin_url))
        .await
        .expect("the controller's page");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Keyway controller"));

    // Both pages in a real browser: the proxy's (controller mode) says its config version is
    // ACKed; the controller's lists the proxy as ACKed.
    let browser = Browser::start().await;
    browser.goto(&format!("{}/", proxy.admin_url)).await;
    browser
        .wait_for(
            "the proxy's page: the pool and an ACKed config",
            "const s = document.getElementById('sync'); \
             return !!document.querySelector('[data-pool]') && !!s && s.dataset.acked === 'true' \
               && s.textContent.includes('ACKed');",
        )
        .await;
    browser.screenshot("proxy-controller-mode.png").await;
    let secrets = [
        ok.as_str(),
        cooling.as_str(),
        exhausted.as_str(),
        disabled.as_str(),
    ];
    browser.assert_absent(&secrets).await;
    browser.goto(&format!("{}/", controller.admin_url)).await;
    browser
        .wait_for(
            "the controller's page: the proxy, ACKed",
            &format!(
                "const r = document.querySelector('[data-proxy=\"{}/{}\"]'); \
                 return !!r && r.dataset.acked === 'true' \
                   && document.getElementById('leader').textContent !== '-';",
                ns.name(),
                proxy.id
            ),
        )
        .await;
    browser.screenshot("controller.png").await;
    browser.assert_absent(&secrets).await;
    drop(browser);
    let (mut proxy, mut controller) = (proxy, controller);
    proxy.process.kill().await;
    controller.process.kill().await;
    t.total();
}
