use super::*;

fn health(fail: u32, success: u32) -> BackendHealth {
    BackendHealth::new(fail, success, OutlierSettings::default())
}

fn outlier(n: u32) -> OutlierSettings {
    OutlierSettings {
        consecutive_failures: n,
        ..OutlierSettings::default()
    }
}

#[test]
fn starts_healthy() {
    let h = BackendHealth::default();
    assert!(h.is_healthy());
    assert!(h.is_active_healthy());
    assert_eq!(h.thresholds(), (3, 2));
    assert!(!h.is_ejected(Instant::now()));
}

#[test]
fn unhealthy_after_exactly_fail_threshold() {
    let h = health(3, 2);
    assert_eq!(h.record_check(false), None);
    assert_eq!(h.record_check(false), None);
    assert!(h.is_healthy());
    assert_eq!(h.record_check(false), Some(Transition::Unhealthy));
    assert!(!h.is_healthy());
    // More failures: no new transition.
    assert_eq!(h.record_check(false), None);
    assert!(!h.is_healthy());
}

#[test]
fn healthy_after_exactly_success_threshold() {
    let h = health(1, 3);
    assert_eq!(h.record_check(false), Some(Transition::Unhealthy));
    assert_eq!(h.record_check(true), None);
    assert_eq!(h.record_check(true), None);
    assert!(!h.is_healthy());
    assert_eq!(h.record_check(true), Some(Transition::Healthy));
    assert!(h.is_healthy());
    assert_eq!(h.record_check(true), None);
}

#[test]
fn interleaved_results_reset_counts() {
    let h = health(3, 2);
    // F F S F F: never 3 in a row.
    for ok in [false, false, true, false, false] {
        assert_eq!(h.record_check(ok), None);
    }
    assert!(h.is_healthy());
    assert_eq!(h.record_check(false), Some(Transition::Unhealthy));
    // S F S F: never 2 successes in a row.
    for ok in [true, false, true, false] {
        assert_eq!(h.record_check(ok), None);
    }
    assert!(!h.is_healthy());
    assert_eq!(h.record_check(true), None);
    assert_eq!(h.record_check(true), Some(Transition::Healthy));
    // Successes while healthy do not count toward anything; failures start from zero.
    assert_eq!(h.record_check(false), None);
    assert_eq!(h.record_check(false), None);
    assert_eq!(h.record_check(false), Some(Transition::Unhealthy));
}

#[test]
fn zero_thresholds_mean_one() {
    let h = health(0, 0);
    assert_eq!(h.thresholds(), (1, 1));
    assert_eq!(h.record_check(false), Some(Transition::Unhealthy));
    assert_eq!(h.record_check(true), Some(Transition::Healthy));
}

#[test]
fn ejection_after_consecutive_failures() {
    let h = BackendHealth::new(3, 2, outlier(5));
    let t0 = Instant::now();
    for _ in 0..4 {
        assert_eq!(h.record_outcome(false, t0), None);
    }
    // A success resets the count.
    assert_eq!(h.record_outcome(true, t0), None);
    for _ in 0..4 {
        assert_eq!(h.record_outcome(false, t0), None);
    }
    assert!(!h.is_ejected(t0));
    let e = h.record_outcome(false, t0).expect("ejected");
    assert_eq!(e.level, 1);
    assert_eq!(e.duration, Duration::from_secs(10));
    assert_eq!(e.until, t0 + Duration::from_secs(10));
    assert!(h.is_ejected(t0));
    assert!(!h.is_available(t0, false));
    assert!(h.is_available(t0, true));
    assert!(h.is_active_healthy());
    assert!(h.is_ejected(t0 + Duration::from_millis(9_999)));
    assert!(!h.is_ejected(t0 + Duration::from_secs(10)));
    assert!(h.is_available(t0 + Duration::from_secs(10), false));
    assert_eq!(h.ejection_count(), 1);
}

#[test]
fn failures_while_ejected_do_not_extend() {
    let h = BackendHealth::new(3, 2, outlier(2));
    let t0 = Instant::now();
    h.record_outcome(false, t0);
    assert!(h.record_outcome(false, t0).is_some());
    h.record_outcome(false, t0);
    assert_eq!(h.record_outcome(false, t0), None);
    assert!(!h.is_ejected(t0 + Duration::from_secs(10)));
    assert_eq!(h.ejection_count(), 1);
}

fn eject(h: &BackendHealth, now: Instant) -> Ejection {
    for _ in 1..h.outlier_settings().consecutive_failures {
        assert_eq!(h.record_outcome(false, now), None);
    }
    h.record_outcome(false, now).expect("ejection")
}

#[test]
fn backoff_grows_caps_and_decays() {
    let h = BackendHealth::new(3, 2, outlier(5));
    let mut now = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..7 {
        let e = eject(&h, now);
        seen.push(e.duration.as_secs());
        // Fail again right after the ejection ends: no decay.
        now = e.until;
    }
    assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
    // Two decay periods after the 7th ejection: level 7 - 2 + 1.
    let e = eject(&h, now + Duration::from_secs(120));
    assert_eq!(e.level, 6);
    assert_eq!(e.duration, Duration::from_secs(300));
    // A long healthy period resets the streak completely.
    let later = e.until + Duration::from_secs(3600);
    let e = eject(&h, later);
    assert_eq!((e.level, e.duration), (1, Duration::from_secs(10)));
    // One decay period after that: level 1 - 1 + 1 = 1.
    let e = eject(&h, e.until + Duration::from_secs(60));
    assert_eq!(e.level, 1);
    // Immediately after: level 2.
    let e = eject(&h, e.until);
    assert_eq!((e.level, e.duration), (2, Duration::from_secs(20)));
}

#[test]
fn decay_zero_never_forgets() {
    let h = BackendHealth::new(
        3,
        2,
        OutlierSettings {
            consecutive_failures: 1,
            decay_period: Duration::ZERO,
            ..OutlierSettings::default()
        },
    );
    let t0 = Instant::now();
    let e = eject(&h, t0);
    let e = eject(&h, e.until + Duration::from_secs(86_400));
    assert_eq!(e.level, 2);
}

#[test]
fn passive_disabled_with_zero() {
    let h = BackendHealth::new(3, 2, outlier(0));
    let t0 = Instant::now();
    for _ in 0..100 {
        assert_eq!(h.record_outcome(false, t0), None);
    }
    assert!(h.is_healthy());
}

#[test]
fn ejection_duration_saturates() {
    let o = OutlierSettings {
        base_ejection: Duration::from_secs(u64::MAX / 2),
        max_ejection: Duration::from_secs(u64::MAX),
        ..OutlierSettings::default()
    };
    assert_eq!(o.ejection_duration(40), Duration::from_secs(u64::MAX));
    assert_eq!(
        OutlierSettings::default().ejection_duration(0),
        Duration::from_secs(10)
    );
}

#[test]
fn clear_ejection() {
    let h = BackendHealth::new(3, 2, outlier(1));
    let t0 = Instant::now();
    assert!(h.record_outcome(false, t0).is_some());
    assert!(h.is_ejected(t0));
    h.clear_ejection();
    assert!(!h.is_ejected(t0));
}

#[test]
fn pool_ignores_ejections_when_all_ejected() {
    let backends: Vec<_> = (0..3)
        .map(|_| Arc::new(BackendHealth::new(1, 1, outlier(1))))
        .collect();
    let t0 = Instant::now();
    assert!(any_available(&backends, t0));
    backends[0].record_outcome(false, t0);
    backends[1].record_outcome(false, t0);
    assert!(any_available(&backends, t0));
    // The last one is actively unhealthy: ejections must be ignored, but only the
    // actively healthy backends become available again.
    backends[2].record_check(false);
    assert!(!any_available(&backends, t0));
    let avail: Vec<_> = backends.iter().map(|b| b.is_available(t0, true)).collect();
    assert_eq!(avail, [true, true, false]);
    // All ejected.
    backends[2].record_check(true);
    backends[2].record_outcome(false, t0);
    assert!(!any_available(&backends, t0));
    assert!(backends.iter().all(|b| b.is_available(t0, true)));
    assert!(backends.iter().all(|b| !b.is_available(t0, false)));
    assert!(!any_available(&[], t0));
}

#[test]
fn concurrent_failures_eject_once() {
    let h = Arc::new(BackendHealth::new(3, 2, outlier(5)));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                (0..5)
                    .filter(|_| h.record_outcome(false, t0).is_some())
                    .count()
            })
        })
        .collect();
    let ejections: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // 40 failures at the same instant: one ejection, the rest hit an ejected backend.
    assert_eq!(ejections, 1);
    assert_eq!(h.ejection_count(), 1);
    assert!(h.is_ejected(t0));
}

#[test]
fn deep_models_roundtrip() {
    let h = BackendHealth::default();
    assert_eq!(h.model("m"), None);
    assert_eq!(h.load(), None);
    assert!(h.models().is_empty());
    let load = ModelLoad {
        healthy: Some(true),
        capacity: Some(10.0),
        consumption: Some(4.0),
    };
    h.set_models(vec![("m".into(), load)], Instant::now());
    assert_eq!(h.model("m"), Some(load));
    assert_eq!(h.models(), vec![("m".to_owned(), load)]);
    assert_eq!(h.load(), Some((10.0, 4.0)));
    assert!(h.deep_snapshot().updated().is_some());
}
