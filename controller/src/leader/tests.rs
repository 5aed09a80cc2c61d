use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One in-memory Lease shared by several electors; each elector's view can be broken.
#[derive(Clone, Default)]
struct Fake {
    lease: Arc<Mutex<(Option<Lease>, u64)>>,
    broken: Arc<AtomicBool>,
}

impl Fake {
    /// Another client of the same Lease, with its own `broken` switch.
    fn peer(&self) -> Fake {
        Fake {
            lease: self.lease.clone(),
            broken: Arc::default(),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Api("connection refused".into()))
        } else {
            Ok(())
        }
    }

    fn spec(&self) -> LeaseSpec {
        let guard = self.lease.lock().unwrap();
        guard.0.as_ref().and_then(|l| l.spec.clone()).unwrap()
    }

    fn holder(&self) -> Option<String> {
        self.spec().holder_identity
    }
}

impl LeaseStore for Fake {
    async fn get(&self) -> Result<Option<Lease>, StoreError> {
        self.check()?;
        Ok(self.lease.lock().unwrap().0.clone())
    }

    async fn create(&self, mut lease: Lease) -> Result<(), StoreError> {
        self.check()?;
        let mut guard = self.lease.lock().unwrap();
        if guard.0.is_some() {
            return Err(StoreError::Conflict);
        }
        guard.1 += 1;
        lease.metadata.resource_version = Some(guard.1.to_string());
        guard.0 = Some(lease);
        Ok(())
    }

    async fn replace(&self, mut lease: Lease) -> Result<(), StoreError> {
        self.check()?;
        let mut guard = self.lease.lock().unwrap();
        let current = guard
            .0
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        if current.is_none() || current != lease.metadata.resource_version {
            return Err(StoreError::Conflict);
        }
        guard.1 += 1;
        lease.metadata.resource_version = Some(guard.1.to_string());
        guard.0 = Some(lease);
        Ok(())
    }
}

const DURATION: Duration = Duration::from_secs(3);

struct Elector {
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
}

fn start(store: Fake, identity: &str) -> Elector {
    let settings = LeaseSettings {
        name: "keyway-controller".into(),
        namespace: "ns".into(),
        identity: identity.into(),
        duration: DURATION,
    };
    let (leader_tx, leader) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let task = tokio::spawn(run(store, settings, leader_tx, metrics.clone(), stop_rx));
    Elector {
        leader,
        stop,
        task,
        metrics,
    }
}

/// Waits until `rx` shows `want`; returns when, or panics after `within`.
async fn until(rx: &mut watch::Receiver<bool>, want: bool, within: Duration) -> Instant {
    tokio::time::timeout(within, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("not {want} within {within:?}"))
        .expect("elector alive");
    Instant::now()
}

#[tokio::test(start_paused = true)]
async fn one_leader_and_a_crashed_one_is_replaced_after_the_lease_duration() {
    let store = Fake::default();
    let mut a = start(store.clone(), "a");
    until(&mut a.leader, true, Duration::from_millis(10)).await;
    let mut b = start(store.peer(), "b");
    // b keeps following while a renews, for many lease durations.
    tokio::time::sleep(DURATION * 5).await;
    assert!(*a.leader.borrow() && !*b.leader.borrow());
    assert_eq!(store.holder().as_deref(), Some("a"));
    assert_eq!(a.metrics.leader.get(), 1);
    assert_eq!(b.metrics.leader.get(), 0);

    // kill -9: no release.
    a.task.abort();
    let killed = Instant::now();
    let took = until(&mut b.leader, true, DURATION * 2).await - killed;
    // b must wait for a full duration without renewal; a renewed at most a period earlier.
    assert!(took >= DURATION - DURATION / 3, "took over after {took:?}");
    assert!(
        took <= DURATION + DURATION * 2 / 3,
        "took over after {took:?}"
    );
    let spec = store.spec();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(b.metrics.leader_transitions.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_cannot_renew_steps_down_before_anyone_takes_over() {
    let store = Fake::default();
    let mut a = start(store.clone(), "a");
    until(&mut a.leader, true, Duration::from_millis(10)).await;
    let b_store = store.peer();
    let mut b = start(b_store, "b");
    tokio::time::sleep(DURATION).await;

    let a_store_broken = {
        // a's view of the API server fails from now on.
        let s = store.clone();
        s.broken.store(true, Ordering::SeqCst);
        s
    };
    let broke = Instant::now();
    let (down, up) = tokio::join!(
        until(&mut a.leader, false, DURATION * 2),
        until(&mut b.leader, true, DURATION * 3),
    );
    assert!(down < up, "a stepped down only after b took over");
    assert!(
        down - broke <= DURATION * 2 / 3,
        "a kept leading for {:?}",
        down - broke
    );
    assert_eq!(store.peer().holder().as_deref(), Some("b"));

    // a recovers and follows.
    a_store_broken.broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(DURATION * 3).await;
    assert!(!*a.leader.borrow() && *b.leader.borrow());
    assert_eq!(a.metrics.leader_transitions.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn stopping_releases_the_lease_for_a_fast_handover() {
    let store = Fake::default();
    let mut a = start(store.clone(), "a");
    until(&mut a.leader, true, Duration::from_millis(10)).await;
    let mut b = start(store.peer(), "b");
    tokio::time::sleep(DURATION).await;

    let _ = a.stop.send(true);
    let stopped = Instant::now();
    a.task.await.expect("a ends cleanly");
    assert!(!*a.leader.borrow());
    assert_eq!(a.metrics.leader.get(), 0);
    let took = until(&mut b.leader, true, DURATION).await - stopped;
    assert!(took <= DURATION / 3, "took over after {took:?}");
    assert_eq!(store.holder().as_deref(), Some("b"));
}

#[test]
fn claims() {
    let d = Duration::from_secs(15);
    let held = claim(&LeaseSpec::default(), "a", false, d).unwrap();
    assert_eq!(held.holder_identity.as_deref(), Some("a"));
    assert_eq!(held.lease_duration_seconds, Some(15));
    assert!(held.acquire_time.is_some() && held.renew_time.is_some());

    // Renewal keeps the acquire time and the transitions.
    let renewed = claim(&held, "a", false, d).unwrap();
    assert_eq!(renewed.acquire_time, held.acquire_time);
    assert_eq!(renewed.lease_transitions, held.lease_transitions);

    // Someone else's valid claim is respected; an expired one is taken over.
    assert_eq!(claim(&held, "b", false, d), None);
    let taken = claim(&held, "b", true, d).unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    assert_eq!(
        taken.lease_transitions,
        Some(held.lease_transitions.unwrap_or(0) + 1)
    );

    // A released (empty) holder is free.
    let released = LeaseSpec {
        holder_identity: Some(String::new()),
        ..held
    };
    assert!(claim(&released, "b", false, d).is_some());
}

#[test]
fn identities_and_namespaces() {
    assert_eq!(identity(Some("ctl-0"), Some("host"), 7), "ctl-0");
    assert_eq!(identity(Some(""), Some("host"), 0xab), "host-000000ab");
    assert_eq!(identity(None, None, 1), "keyway-controller-00000001");

    assert_eq!(lease_namespace(Some("a"), Some("b"), Some("c")), "a");
    assert_eq!(lease_namespace(None, Some("b"), Some("c")), "b");
    assert_eq!(lease_namespace(None, Some(""), Some("c")), "c");
    assert_eq!(lease_namespace(None, None, None), "default");
}
