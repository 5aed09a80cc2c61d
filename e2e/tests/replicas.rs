//! Several controller replicas and many proxies against the real API server: a key's quota is
//! global (requests admitted in any sliding minute, counted at the upstream, never exceed it,
//! also while the leader is killed), it goes where the demand is, every proxy can still serve
//! when there are more proxies than the quota, and `kubectl get lbp` counts every replica's
//! proxies whichever replica leads.

use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, wait_for};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE_SECONDS: &str = "3";

fn manifests(upstream: &str, rpm: u32, queue_wait: u32) -> String {
    Manifests::new()
        .secret("keys", &[("key-a", "sk-e2e-replicas-aaaa")])
        .key_pool("keys", "keys")
        .spec(&format!(
            "defaults:\n  requestsPerMinute: {rpm}\nqueue:\n  maxWaitSeconds: {queue_wait}\n"
        ))
        .pool("llm", "keys")
        .backend("a", upstream)
        .yaml()
}

/// Two controllers electing a leader on a Lease in `ns`.
async fn two_controllers(ns: &str) -> (Controller, Controller) {
    let cluster = cluster().await;
    let args = [
        "--lease-namespace",
        ns,
        "--lease-duration-seconds",
        LEASE_SECONDS,
    ];
    tokio::join!(
        Controller::start_with(cluster, Some(ns), &args),
        Controller::start_with(cluster, Some(ns), &args),
    )
}

/// `n` proxies for each controller; each lists its own controller first, then the other.
async fn proxies(ns: &str, controllers: [&Controller; 2], each: usize) -> Vec<Proxy> {
    let mut out = Vec::new();
    for (first, second) in [(0, 1), (1, 0)] {
        let urls = format!(
            "{},{}",
            controllers[first].grpc_url, controllers[second].grpc_url
        );
        let args = ["--controller", urls.as_str()];
        let started = futures::future::join_all(
            (0..each).map(|_| Proxy::start(controllers[first], ns, &args)),
        )
        .await;
        out.extend(started);
    }
    out
}

async fn is_leader(http: &HttpClient, c: &Controller) -> bool {
    match http.get(&format!("{}/metrics", c.admin_url)).await {
        Ok(r) => keyway_testkit::metrics::sum(&r.text(), "keyway_controller_leader", &[]) == 1.0,
        Err(_) => false,
    }
}

/// Which of the two leads (waits until exactly one does).
async fn leader(http: &HttpClient, controllers: [&Controller; 2]) -> usize {
    wait_for(
        Duration::from_secs(15),
        "exactly one controller leads",
        || async {
            match (
                is_leader(http, controllers[0]).await,
                is_leader(http, controllers[1]).await,
            ) {
                (true, false) => Ok(0),
                (false, true) => Ok(1),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Waits until `kubectl get lbp llm` says `proxies` are connected and backend `a` is healthy
/// on all of them.
async fn status_counts(ns: &keyway_e2e::TestNamespace, proxies: usize, deadline: Duration) {
    let want = format!("{proxies} {proxies}/{proxies}");
    wait_for(
        deadline,
        &format!("kubectl get lbp shows {proxies} proxies and backend a healthy on all"),
        || async {
            let out = ns
                .kubectl_ok(&[
                    "get",
                    "lbp",
                    "llm",
                    "-o",
                    "jsonpath={.status.connectedProxies} {.status.backends[0].healthy}",
                ])
                .await;
            if out.trim() == want { Ok(()) } else { Err(out) }
        },
    )
    .await;
}

/// The most requests the upstream received in any window of `window`.
fn max_in_window(upstream: &MockUpstream, window: Duration) -> usize {
    let mut at: Vec<Instant> = upstream.requests().iter().map(|r| r.at).collect();
    at.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..at.len() {
        while at[i].duration_since(at[j]) >= window {
            j += 1;
        }
        best = best.max(i + 1 - j);
    }
    best
}

/// Sends one request through `proxy` every `every` until `until`; returns the 200s.
async fn load(http: HttpClient, url: String, every: Duration, until: Instant) -> usize {
    let mut ok = 0;
    while Instant::now() < until {
        let sent = Instant::now();
        if let Ok(r) = http
            .post_json(
                &format!("{url}/v1/chat/completions"),
                &chat_request("m", "hi"),
            )
            .await
            && r.status == 200
        {
            ok += 1;
        }
        tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
    }
    ok
}

/// Two replicas, four proxies (two on each), a key of 12 requests per minute and far more
/// demand: the upstream never sees more than 12 in any sliding minute, first with both
/// replicas, then while the leader is killed half-way through a minute; the status counts
/// all four proxies whichever replica leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_quota_holds_across_replicas_and_a_leader_kill() {
    let mut t = Timings::new("replicas_quota");
    let cluster = cluster().await;
    let ns = cluster.namespace("replicas-quota").await;
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    ns.apply(&manifests(&upstream.url(), 12, 2)).await;
    let (a, b) = two_controllers(ns.name()).await;
    let mut controllers = [a, b];
    let http = HttpClient::new();
    let first = leader(&http, [&controllers[0], &controllers[1]]).await;
    let proxies = proxies(ns.name(), [&controllers[0], &controllers[1]], 2).await;
    t.phase("two controllers, four proxies");

    status_counts(&ns, 4, Duration::from_secs(20)).await;
    t.phase("status counts all four proxies (both replicas')");

    let writes = |http: HttpClient, c: String| async move {
        match http.get(&format!("{c}/metrics")).await {
            Ok(r) => keyway_testkit::metrics::sum(
                &r.text(),
                "keyway_controller_replica_report_writes_total",
                &[],
            ),
            Err(_) => f64::NAN,
        }
    };
    let writes_before = [
        writes(http.clone(), controllers[0].admin_url.clone()).await,
        writes(http.clone(), controllers[1].admin_url.clone()).await,
    ];
    let churn_started = Instant::now();

    // --- a minute of demand far above the quota (4 proxies × 2 requests/s) ---
    let minute = |secs: u64| Instant::now() + Duration::from_secs(secs);
    let run = |until: Instant| {
        futures::future::join_all(proxies.iter().map(|p| {
            tokio::spawn(load(
                http.clone(),
                p.url.clone(),
                Duration::from_millis(500),
                until,
            ))
        }))
    };
    let until = minute(62);
    let served: usize = run(until).await.into_iter().map(|r| r.unwrap_or(0)).sum();
    let peak = max_in_window(&upstream, Duration::from_secs(60));
    eprintln!(
        "[replicas] first minute: {served} admitted in 62 s (quota 12 per sliding minute), peak {peak} in any 60 s"
    );
    assert!(
        peak <= 12,
        "at most 12 in any minute across four proxies, got {peak}"
    );
    assert!(served >= 9, "the quota is used, not wasted: {served} of 12");
    t.phase("a minute within quota");
    // Reports and grants changed all minute long; each replica wrote its report at most
    // about once a second.
    let secs = churn_started.elapsed().as_secs_f64();
    for (i, before) in writes_before.iter().enumerate() {
        let after = writes(http.clone(), controllers[i].admin_url.clone()).await;
        let n = after - before;
        eprintln!("[replicas] replica {i} wrote its report {n} times in {secs:.0} s");
        assert!(n <= secs + 2.0, "replica {i}: {n} writes in {secs:.0} s");
        assert!(
            n >= secs / 3.0,
            "replica {i} kept publishing: {n} writes in {secs:.0} s"
        );
    }

    // --- the same with the leader killed half-way ---
    let before = upstream.request_count();
    let until = minute(62);
    let load = tokio::spawn(run(until));
    tokio::time::sleep(Duration::from_secs(30)).await;
    controllers[first].process.kill().await;
    let survivor = 1 - first;
    let served: usize = load
        .await
        .expect("load")
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum();
    let peak = max_in_window(&upstream, Duration::from_secs(60));
    eprintln!(
        "[replicas] minute with the leader killed: {served} admitted, peak {peak} in any 60 s"
    );
    assert!(
        peak <= 12,
        "at most 12 in any minute while the leader was killed, got {peak}"
    );
    assert!(upstream.request_count() > before, "still serving");
    t.phase("a minute with the leader killed half-way");

    assert!(is_leader(&http, &controllers[survivor]).await);
    status_counts(&ns, 4, Duration::from_secs(20)).await;
    t.phase("the survivor leads and counts all four proxies");
}

/// One busy proxy among four (on two replicas): within seconds it holds at least 80% of a
/// key's quota, and the idle ones still serve their occasional request at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_proxy_gets_most_of_the_quota_and_idle_ones_still_serve() {
    let mut t = Timings::new("replicas_skew");
    let cluster = cluster().await;
    let ns = cluster.namespace("replicas-skew").await;
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    ns.apply(&manifests(&upstream.url(), 40, 2)).await;
    let (a, b) = two_controllers(ns.name()).await;
    let http = HttpClient::new();
    leader(&http, [&a, &b]).await;
    let proxies = proxies(ns.name(), [&a, &b], 2).await;
    status_counts(&ns, 4, Duration::from_secs(20)).await;
    t.phase("two controllers, four proxies");

    // The busy proxy (on the second replica) asks far more than the quota.
    let busy = &proxies[2];
    let until = Instant::now() + Duration::from_secs(40);
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                http.clone(),
                busy.url.clone(),
                Duration::from_millis(100),
                until,
            ))
        })
        .collect();
    // Its grant: what it may use this minute (used + left).
    let limit = |s: serde_json::Value| {
        let k = &s["keyPools"][0]["keys"][0];
        k["requestsThisMinute"].as_u64().unwrap_or(0)
            + k["requestsLeftThisMinute"].as_u64().unwrap_or(0)
    };
    let grant = wait_for(
        Duration::from_secs(15),
        "the busy proxy holds at least 80% of the key's 40 rpm",
        || async {
            let s = http
                .get(&format!("{}/status", busy.admin_url))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .map_err(|e| e.to_string())?;
            let g = limit(s);
            if g >= 32 {
                Ok(g)
            } else {
                Err(format!("grant {g}"))
            }
        },
    )
    .await;
    let converged = started.elapsed();
    eprintln!("[replicas] busy proxy holds {grant} of 40 rpm after {converged:?}");
    t.phase("busy proxy converged");

    // Each idle proxy serves its occasional request at once (its floor).
    for p in [&proxies[0], &proxies[1], &proxies[3]] {
        let asked = Instant::now();
        let r = http
            .post_json(
                &format!("{}/v1/chat/completions", p.url),
                &chat_request("m", "hi"),
            )
            .await
            .expect("request");
        assert_eq!(r.status, 200, "an idle proxy still serves: {}", r.text());
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "{:?}",
            asked.elapsed()
        );
    }
    t.phase("idle proxies served");
    let busy_served: usize = futures::future::join_all(workers)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum();
    let peak = max_in_window(&upstream, Duration::from_secs(60));
    eprintln!("[replicas] busy proxy admitted {busy_served}; peak {peak} in any 60 s");
    assert!(peak <= 40, "within the quota: {peak}");
    assert!(
        busy_served >= 32,
        "the busy proxy used its share: {busy_served}"
    );
}

/// Twenty proxies on a key of 10 requests per minute: each can still serve (they take turns
/// as the minute slides), and the upstream never sees more than 10 in any sliding minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_proxies_than_the_quota_all_serve_within_it() {
    let mut t = Timings::new("replicas_many");
    let cluster = cluster().await;
    let ns = cluster.namespace("replicas-many").await;
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    ns.apply(&manifests(&upstream.url(), 10, 8)).await;
    let (a, b) = two_controllers(ns.name()).await;
    let http = HttpClient::new();
    leader(&http, [&a, &b]).await;
    let proxies = Arc::new(proxies(ns.name(), [&a, &b], 10).await);
    status_counts(&ns, 20, Duration::from_secs(30)).await;
    t.phase("two controllers, twenty proxies");

    // Each proxy asks until it is served once (a request waits up to 8 s for a grant).
    let deadline = Instant::now() + Duration::from_secs(170);
    let tasks: Vec<_> = (0..proxies.len())
        .map(|i| {
            let proxies = proxies.clone();
            let http = http.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = http
                        .post_json(
                            &format!("{}/v1/chat/completions", proxies[i].url),
                            &chat_request("m", "hi"),
                        )
                        .await;
                    if r.is_ok_and(|r| r.status == 200) {
                        return Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None
            })
        })
        .collect();
    let started = Instant::now();
    let served: Vec<Option<Instant>> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(None))
        .collect();
    let missing: Vec<&str> = served
        .iter()
        .zip(proxies.iter())
        .filter(|(s, _)| s.is_none())
        .map(|(_, p)| p.id.as_str())
        .collect();
    let last = served
        .iter()
        .flatten()
        .map(|at| at.duration_since(started))
        .max();
    let peak = max_in_window(&upstream, Duration::from_secs(60));
    eprintln!("[replicas] 20 proxies on 10 rpm: all served by {last:?}; peak {peak} in any 60 s");
    assert!(missing.is_empty(), "proxies never served: {missing:?}");
    assert!(peak <= 10, "at most 10 in any minute, got {peak}");
    t.phase("every proxy served within the quota");
}
