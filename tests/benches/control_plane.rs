//! Control-plane fan-out: how long one pool change takes to reach every affected proxy (ACKed),
//! and how much memory the controller's state takes at that size.
//!
//! Runs the controller's real discovery service (`keyway_controller::grpc::DiscoveryService`,
//! tonic, HTTP/2 over loopback TCP) in this process, fed an index built with
//! `keyway_controller::index::build` from 1,000 `LoadBalancerPool`s (each with its own
//! `ApiKeyPool` of 3 keys and 2 backends). 50 simulated proxies connect as real gRPC clients,
//! each on its own connection: they say Hello, decode and validate every snapshot exactly as
//! the proxy does before it ACKs (`model::Snapshot::try_from`), and ACK it.
//!
//! One measurement: edit one pool (a backend weight), rebuild the index from all 1,000 pools
//! (the controller rebuilds it whole on every change), publish it, and wait until the
//! controller's registry shows every affected proxy ACKed the new version. Scenarios:
//! - `gateway`: 1,000 pools over 50 namespaces (20 each); the 50 proxies are replicas of one
//!   gateway in the first namespace, so all 50 are affected, each is sent 20 pools;
//! - `one_namespace`: all 1,000 pools in one namespace with the 50 proxies (the worst case:
//!   each proxy is sent all 1,000 pools on every change);
//! - `spread`: 50 namespaces of 20 pools, one proxy per namespace: a change affects one.
//!
//! Not measured here: the Kubernetes watch latency and the controller's 10 ms coalescing of
//! watch events before a rebuild (`watch::run_indexer`), which the real controller adds.
//!
//! Each scenario runs in a child process of its own (clean memory figures).
//!
//! Env: `CP_PROXIES` (50), `CP_POOLS` (1000), `CP_REPS` (40), `CP_THREADS` (2: runtime worker
//! threads, shared by the controller and the simulated proxies), `CP_SCENARIOS`
//! (`gateway,one_namespace,spread`), `CP_OUT` (write the results as JSON there).

use keyway_api::model::{self, ObjectId};
use keyway_api::secret::SecretValue;
use keyway_api::spec::{ApiKeyPoolSpec, BackendSpec, LoadBalancerPoolSpec, LocalObjectRef};
use keyway_controller::grpc::DiscoveryService;
use keyway_controller::index::{self, Index, KeyPoolInput, LastGood, PoolInput};
use keyway_controller::proxies::Proxies;
use keyway_proto as pb;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

// === heap accounting ===

/// The system allocator, counting live bytes (for the memory figures).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_heap() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// `VmRSS` of this process in bytes (0 where /proc is missing).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// === the cluster ===

struct Cluster {
    pools: Vec<PoolInput>,
    key_pools: Vec<KeyPoolInput>,
    secrets: BTreeMap<ObjectId, BTreeMap<String, SecretValue>>,
}

fn namespace(i: usize) -> String {
    format!("ns-{i:02}")
}

/// `pools` pools spread evenly over `namespaces` namespaces.
fn cluster(namespaces: usize, pools: usize) -> Cluster {
    let mut c = Cluster {
        pools: Vec::with_capacity(pools),
        key_pools: Vec::with_capacity(pools),
        secrets: BTreeMap::new(),
    };
    for i in 0..pools {
        let ns = namespace(i % namespaces);
        let name = format!("pool-{i:04}");
        let keys = format!("keys-{i:04}");
        c.pools.push(PoolInput {
            id: ObjectId::new(&ns, &name),
            generation: Some(1),
            spec: LoadBalancerPoolSpec {
                backends: ["a", "b"]
                    .iter()
                    .map(|b| BackendSpec {
                        name: (*b).to_string(),
                        endpoint: format!("https://{b}-{i}.llm.example.com/v1"),
                        ..Default::default()
                    })
                    .collect(),
                api_key_pool_ref: Some(LocalObjectRef { name: keys.clone() }),
                ..Default::default()
            },
        });
        c.key_pools.push(KeyPoolInput {
            id: ObjectId::new(&ns, &keys),
            generation: Some(1),
            spec: ApiKeyPoolSpec {
                secret_ref: LocalObjectRef { name: keys.clone() },
                ..Default::default()
            },
        });
        c.secrets.insert(
            ObjectId::new(&ns, &keys),
            (0..3)
                .map(|k| {
                    (
                        format!("key-{k}"),
                        SecretValue::new(format!("sk-{i:04}-{k}-0123456789abcdef0123456789abcdef")),
                    )
                })
                .collect(),
        );
    }
    c
}

// === the controller ===

struct Controller {
    addr: SocketAddr,
    index: watch::Sender<Arc<Index>>,
    proxies: Proxies,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _drain: watch::Sender<bool>,
}

async fn start_controller(index: Index) -> Controller {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(Arc::new(index));
    let proxies = Proxies::default();
    let metrics = keyway_controller::metrics::Metrics::register(&prometheus::Registry::new())
        .expect("metrics");
    let (drain, drain_rx) = watch::channel(false);
    let svc = DiscoveryService::new(rx, proxies.clone(), metrics, drain_rx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("grpc server");
    });
    Controller {
        addr,
        index: tx,
        proxies,
        stop,
        task,
        _drain: drain,
    }
}

/// ACKs sent by the simulated proxies, so the measurement wakes only when all may be in
/// (reading the controller's registry on every change would cost more than what it measures).
#[derive(Default)]
struct Acks {
    sent: AtomicUsize,
    notify: Notify,
}

/// A proxy as the controller sees it: Hello, then decode + validate + ACK every snapshot.
async fn simulated_proxy(
    addr: SocketAddr,
    proxy_id: String,
    ns: String,
    acks: Arc<Acks>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::ProxyMessage>(16);
    tx.send(pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Hello(pb::Hello {
            proxy_id,
            namespace: ns,
            pools: vec![],
            build_version: "bench".into(),
            accepts_deltas: true,
            accepts_quota_grants: true,
            ..Default::default()
        })),
    })
    .await?;
    // As the proxy: the snapshot last applied, the base of the next delta.
    let mut base: Option<(u64, model::Snapshot)> = None;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(msg) = inbound.message().await? {
        let Some(pb::controller_message::Message::Snapshot(snapshot)) = msg.message else {
            continue;
        };
        let version = snapshot.version;
        let decoded = match (base.take(), snapshot.base_version) {
            (_, 0) => model::Snapshot::try_from(snapshot),
            (Some((v, mut b)), want) if v == want => pb::apply_delta(&mut b, snapshot).map(|()| b),
            _ => Err(pb::InvalidSnapshot {
                path: "baseVersion".into(),
                message: "unknown base".into(),
            }),
        };
        let reply = match decoded {
            Ok(s) => {
                std::hint::black_box(&s);
                base = Some((version, s));
                pb::proxy_message::Message::Ack(pb::Ack { version })
            }
            Err(e) => pb::proxy_message::Message::Nack(pb::Nack {
                version,
                error: e.to_string(),
            }),
        };
        tx.send(pb::ProxyMessage {
            message: Some(reply),
        })
        .await?;
        acks.sent.fetch_add(1, Ordering::SeqCst);
        acks.notify.notify_waiters();
    }
    Ok(())
}

/// Waits until the simulated proxies have sent `target` ACKs in total.
async fn acks_sent(acks: &Acks, target: usize, deadline: tokio::time::Instant) -> bool {
    loop {
        let notified = acks.notify.notified();
        if acks.sent.load(Ordering::SeqCst) >= target {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

/// Waits until the controller's registry shows that every proxy in `want` ACKed at least its
/// version there. `acks`: first wait until the proxies sent `target` ACKs in total.
async fn all_acked(
    proxies: &Proxies,
    want: &HashMap<String, u64>,
    acks: &Acks,
    target: usize,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    if !acks_sent(acks, target, deadline).await {
        return false;
    }
    let mut changed = proxies.subscribe();
    loop {
        changed.borrow_and_update();
        let acked: HashMap<String, u64> = proxies
            .list()
            .into_iter()
            .map(|p| (p.proxy_id, p.acked_version))
            .collect();
        if want
            .iter()
            .all(|(id, v)| acked.get(id).is_some_and(|a| a >= v))
        {
            return true;
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}

// === scenarios ===

struct Scenario {
    name: &'static str,
    namespaces: usize,
    /// Namespace index of each proxy.
    proxy_ns: Vec<usize>,
}

#[derive(Default)]
struct Outcome {
    name: String,
    namespaces: usize,
    pools: usize,
    proxies: usize,
    affected: usize,
    pools_per_snapshot: usize,
    reps: usize,
    build_ms: Vec<f64>,
    fanout_ms: Vec<f64>,
    total_ms: Vec<f64>,
    heap_inputs: usize,
    heap_index: usize,
    heap_sessions: usize,
    /// Of `heap_sessions`: the snapshots the simulated proxies keep as the base of the next
    /// delta (as a real proxy does), estimated as proxies × one decoded snapshot.
    heap_client_bases: usize,
    rss_before: usize,
    rss_index: usize,
    rss_sessions: usize,
    snapshot_bytes: usize,
}

fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn run(s: &Scenario, pools: usize, reps: usize) -> Outcome {
    let heap0 = live_heap();
    let rss_before = rss();
    let mut c = cluster(s.namespaces, pools);
    let heap_inputs = live_heap().saturating_sub(heap0);
    let mut last_good = LastGood::default();
    let idx = index::build(&c.pools, &c.key_pools, &c.secrets, &mut last_good);
    let heap_index = live_heap().saturating_sub(heap0 + heap_inputs);
    let rss_index = rss();
    let change_ns = namespace(0);
    let pools_per_snapshot = idx.namespaces.get(&change_ns).map_or(0, |n| n.pools.len());
    let snapshot_bytes = idx.namespaces.get(&change_ns).map_or(0, |n| {
        prost::Message::encoded_len(&pb::Snapshot::from_model(1, n))
    });
    // What one simulated proxy keeps: its namespace's snapshot, decoded.
    let base_bytes = |ns: usize| {
        let wire = idx
            .namespaces
            .get(&namespace(ns))
            .map(|n| pb::Snapshot::from_model(1, n));
        let h0 = live_heap();
        let decoded = wire.map(model::Snapshot::try_from);
        let bytes = live_heap().saturating_sub(h0);
        drop(decoded);
        bytes
    };
    let heap_client_bases: usize = s.proxy_ns.iter().map(|&ns| base_bytes(ns)).sum();

    let ctl = start_controller(idx).await;
    let heap_before_sessions = live_heap();
    let acks = Arc::new(Acks::default());
    let mut clients = Vec::new();
    for (i, &ns) in s.proxy_ns.iter().enumerate() {
        let (addr, id, ns, acks) = (
            ctl.addr,
            format!("proxy-{i:02}"),
            namespace(ns),
            acks.clone(),
        );
        clients.push(tokio::spawn(async move {
            if let Err(e) = simulated_proxy(addr, id.clone(), ns, acks).await {
                eprintln!("{id}: {e}");
            }
        }));
    }
    let first: HashMap<String, u64> = (0..s.proxy_ns.len())
        .map(|i| (format!("proxy-{i:02}"), 1))
        .collect();
    assert!(
        all_acked(
            &ctl.proxies,
            &first,
            &acks,
            s.proxy_ns.len(),
            Duration::from_secs(30)
        )
        .await,
        "{}: not every proxy connected and ACKed its first snapshot",
        s.name
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap_sessions = live_heap().saturating_sub(heap_before_sessions);
    let rss_sessions = rss();

    let affected: Vec<String> = s
        .proxy_ns
        .iter()
        .enumerate()
        .filter(|&(_, &ns)| ns == 0)
        .map(|(i, _)| format!("proxy-{i:02}"))
        .collect();
    let mut out = Outcome {
        name: s.name.to_string(),
        namespaces: s.namespaces,
        pools,
        proxies: s.proxy_ns.len(),
        affected: affected.len(),
        pools_per_snapshot,
        reps,
        heap_inputs,
        heap_index,
        heap_sessions,
        heap_client_bases,
        rss_before,
        rss_index,
        rss_sessions,
        snapshot_bytes,
        ..Default::default()
    };
    for rep in 0..reps {
        let acked: HashMap<String, u64> = ctl
            .proxies
            .list()
            .into_iter()
            .map(|p| (p.proxy_id, p.acked_version))
            .collect();
        let want: HashMap<String, u64> = affected
            .iter()
            .map(|id| (id.clone(), acked.get(id).copied().unwrap_or(0) + 1))
            .collect();

        let target = acks.sent.load(Ordering::SeqCst) + affected.len();
        let t0 = Instant::now();
        // The edit: pool-0000 (in the first namespace) gets another weight on backend b.
        let pool = &mut c.pools[0];
        pool.generation = pool.generation.map(|g| g + 1);
        pool.spec.backends[1].weight = Some(if rep % 2 == 0 { 2 } else { 1 });
        let idx = index::build(&c.pools, &c.key_pools, &c.secrets, &mut last_good);
        let built = Instant::now();
        ctl.index.send_replace(Arc::new(idx));
        let ok = all_acked(&ctl.proxies, &want, &acks, target, Duration::from_secs(30)).await;
        let done = Instant::now();
        assert!(ok, "{}: rep {rep}: not every affected proxy ACKed", s.name);
        out.build_ms
            .push(built.duration_since(t0).as_secs_f64() * 1e3);
        out.fanout_ms
            .push(done.duration_since(built).as_secs_f64() * 1e3);
        out.total_ms
            .push(done.duration_since(t0).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _ = ctl.stop.send(());
    for t in &clients {
        t.abort();
    }
    ctl.task.abort();
    let _ = ctl.task.await;
    for t in clients {
        let _ = t.await;
    }
    out
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn to_json(o: &Outcome, threads: usize) -> serde_json::Value {
    serde_json::json!({
        "scenario": o.name, "namespaces": o.namespaces, "pools": o.pools,
        "proxies": o.proxies, "affected": o.affected,
        "pools_per_snapshot": o.pools_per_snapshot, "snapshot_bytes": o.snapshot_bytes,
        "reps": o.reps, "threads": threads,
        "build_ms": o.build_ms, "fanout_ms": o.fanout_ms, "total_ms": o.total_ms,
        "build_ms_p50": pct(&o.build_ms, 50.0),
        "fanout_ms_p50": pct(&o.fanout_ms, 50.0), "fanout_ms_p99": pct(&o.fanout_ms, 99.0),
        "total_ms_p50": pct(&o.total_ms, 50.0), "total_ms_p99": pct(&o.total_ms, 99.0),
        "total_ms_max": pct(&o.total_ms, 100.0),
        "heap_inputs_bytes": o.heap_inputs, "heap_index_bytes": o.heap_index,
        "heap_sessions_bytes": o.heap_sessions, "heap_client_bases_bytes": o.heap_client_bases,
        "rss_before_bytes": o.rss_before,
        "rss_index_bytes": o.rss_index, "rss_sessions_bytes": o.rss_sessions,
    })
}

fn print_tables(results: &[serde_json::Value]) {
    let n = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let m = |v: &serde_json::Value, k: &str| mib(v[k].as_u64().unwrap_or(0) as usize);
    println!(
        "| scenario | namespaces | affected proxies | pools per snapshot | snapshot bytes | index rebuild ms p50 | push → all ACKed ms p50 / p99 | change → all ACKed ms p50 / p99 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for v in results {
        println!(
            "| {} | {} | {} of {} | {} | {} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
            v["scenario"].as_str().unwrap_or("?"),
            v["namespaces"],
            v["affected"],
            v["proxies"],
            v["pools_per_snapshot"],
            v["snapshot_bytes"],
            n(v, "build_ms_p50"),
            n(v, "fanout_ms_p50"),
            n(v, "fanout_ms_p99"),
            n(v, "total_ms_p50"),
            n(v, "total_ms_p99"),
            n(v, "total_ms_max"),
        );
    }
    println!(
        "\nmemory, one process per scenario (live heap bytes counted by the allocator; RSS of the process):"
    );
    println!(
        "| scenario | watched inputs MiB (heap) | index + last-good MiB (heap) | sessions MiB (heap, controller + client side) | of which the clients' base snapshots MiB | RSS before / with index / with sessions MiB |"
    );
    println!("|---|---|---|---|---|---|");
    for v in results {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} |",
            v["scenario"].as_str().unwrap_or("?"),
            m(v, "heap_inputs_bytes"),
            m(v, "heap_index_bytes"),
            m(v, "heap_sessions_bytes"),
            m(v, "heap_client_bases_bytes"),
            m(v, "rss_before_bytes"),
            m(v, "rss_index_bytes"),
            m(v, "rss_sessions_bytes"),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let proxies = env_usize("CP_PROXIES", 50);
    let pools = env_usize("CP_POOLS", if quick { 100 } else { 1000 });
    let reps = env_usize("CP_REPS", if quick { 3 } else { 40 });
    let threads = env_usize("CP_THREADS", 2);
    let namespaces = 50.min(pools);
    let wanted =
        std::env::var("CP_SCENARIOS").unwrap_or_else(|_| "gateway,one_namespace,spread".into());
    let out = std::env::var("CP_OUT").ok();

    if std::env::var_os("CP_CHILD").is_none() {
        // Each scenario in a fresh process, so its memory figures start from a clean heap.
        println!(
            "control plane: {pools} pools, {proxies} simulated proxies, {reps} changes per scenario, {threads} runtime threads"
        );
        let exe = std::env::current_exe().expect("own path");
        let mut results = Vec::new();
        for name in wanted.split(',').filter(|w| !w.is_empty()) {
            let tmp = std::env::temp_dir().join(format!(
                "keyway-control-plane-{}-{name}.json",
                std::process::id()
            ));
            let status = std::process::Command::new(&exe)
                .args(std::env::args().skip(1))
                .env("CP_CHILD", "1")
                .env("CP_SCENARIOS", name)
                .env("CP_OUT", &tmp)
                .status()
                .expect("run a scenario");
            assert!(status.success(), "scenario {name} failed: {status}");
            let text = std::fs::read_to_string(&tmp).expect("scenario results");
            let _ = std::fs::remove_file(&tmp);
            let v: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
            results.extend(v);
        }
        print_tables(&results);
        if let Some(path) = out {
            std::fs::write(&path, serde_json::to_string_pretty(&results).expect("json"))
                .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        }
        return;
    }

    let scenarios = [
        Scenario {
            name: "gateway",
            namespaces,
            proxy_ns: vec![0; proxies],
        },
        Scenario {
            name: "one_namespace",
            namespaces: 1,
            proxy_ns: vec![0; proxies],
        },
        Scenario {
            name: "spread",
            namespaces,
            proxy_ns: (0..proxies).map(|i| i % namespaces).collect(),
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<serde_json::Value> = scenarios
        .iter()
        .filter(|s| wanted.split(',').any(|w| w == s.name))
        .map(|s| to_json(&rt.block_on(run(s, pools, reps)), threads))
        .collect();
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&results).expect("json"))
            .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    } else {
        print_tables(&results);
    }
}
