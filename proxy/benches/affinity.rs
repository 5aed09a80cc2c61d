//! The multi-cluster placement hot path: an affinity lookup in the memory store (a hit among
//! 100,000 users), the weighted rendezvous choice of a first cluster, and a Redis lookup
//! (`GETEX`) against a real `redis-server` on loopback when one can be started.

use criterion::{Criterion, criterion_group, criterion_main};
use keyway_proxy::affinity::MemoryStore;
use keyway_proxy::multicluster::{rendezvous, weight};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: usize = 100_000;

fn memory(c: &mut Criterion) {
    let store = MemoryStore::new(Duration::from_secs(900), USERS * 2);
    let now = Instant::now();
    let value: Arc<str> = "c\teast".into();
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    for u in &users {
        store.put(u, value.clone(), now);
    }
    let mut i = 0;
    c.bench_function("affinity/memory_get_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % USERS;
            black_box(store.get(&users[i], now))
        })
    });
}

fn first_choice(c: &mut Criterion) {
    let clusters = [
        (0usize, "east", weight(2000.0, 100.0, 0.05)),
        (1, "west", weight(2000.0, 900.0, 0.05)),
        (2, "north", weight(1000.0, 10.0, 0.05)),
    ];
    let users: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();
    let mut i = 0;
    c.bench_function("affinity/rendezvous_3_clusters", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            black_box(rendezvous(&users[i], clusters.iter().copied()))
        })
    });
}

fn redis(c: &mut Criterion) {
    use keyway_proxy::affinity::resp::RedisClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let Ok(mut child) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not found; skipping the Redis lookup benchmark");
        return;
    };
    let client = RedisClient::new(&keyway_api::model::RedisStore {
        target: keyway_api::model::RedisTarget::Direct(format!("127.0.0.1:{port}")),
        db: 0,
        key_prefix: String::new(),
        timeout: Duration::from_secs(1),
        password_env: None,
        password: None,
        tls: false,
    });
    let ready = rt.block_on(async {
        for _ in 0..100 {
            if client
                .command(&[b"SET", b"user-1", b"c\teast"])
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    if ready {
        c.bench_function("affinity/redis_getex_loopback", |b| {
            b.iter(|| {
                rt.block_on(client.command(&[b"GETEX", b"user-1", b"PX", b"900000"]))
                    .expect("getex")
            })
        });
    }
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(benches, memory, first_choice, redis);
criterion_main!(benches);
