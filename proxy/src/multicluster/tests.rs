use super::*;

fn reported(capacity: f64, consumption: f64) -> Candidate {
    Candidate {
        available: true,
        load: Load::Reported {
            capacity: Some(capacity),
            consumption: Some(consumption),
        },
    }
}

#[test]
fn smoothing_example_gives_near_equal_shares() {
    // capacities 2000/2000, consumptions 1 and 2, s = 0.05
    let a = weight(2000.0, 1.0, 0.05);
    let b = weight(2000.0, 2.0, 0.05);
    assert!((a - 2100.0 / 101.0).abs() < 1e-9, "{a}");
    assert!((b - 2100.0 / 102.0).abs() < 1e-9, "{b}");
    let share_a = a / (a + b);
    assert!((share_a - 0.5).abs() < 0.005, "share of a: {share_a}");
    // Without smoothing the same consumptions would split 2:1.
    let (a0, b0) = (weight(2000.0, 1.0, 0.0), weight(2000.0, 2.0, 0.0));
    assert!((a0 / (a0 + b0) - 2.0 / 3.0).abs() < 1e-9);
}

#[test]
fn eligibility_rules() {
    let ratio = 0.95;
    assert!(eligibility(&reported(100.0, 95.0), ratio, 0.05).is_ok());
    assert_eq!(
        eligibility(&reported(100.0, 96.0), ratio, 0.05),
        Err(Ineligible::Overloaded)
    );
    assert_eq!(
        eligibility(&reported(0.0, 0.0), ratio, 0.05),
        Err(Ineligible::Overloaded)
    );
    let mut down = reported(100.0, 0.0);
    down.available = false;
    assert_eq!(eligibility(&down, ratio, 0.05), Err(Ineligible::Unhealthy));
    for load in [Load::Absent, Load::Unhealthy] {
        let c = Candidate {
            available: true,
            load,
        };
        assert_eq!(eligibility(&c, ratio, 0.05), Err(Ineligible::Unhealthy));
    }
    let unknown = Candidate {
        available: true,
        load: Load::Unknown,
    };
    assert_eq!(eligibility(&unknown, ratio, 0.05), Ok(NEUTRAL_WEIGHT));
}

#[test]
fn weighted_pick_follows_the_weights() {
    let weights = [(0usize, 1.0), (1, 3.0)];
    let mut counts = [0usize; 2];
    let n = 10_000;
    for i in 0..n {
        let r = (i as f64 + 0.5) / n as f64;
        counts[weighted_pick(weights.iter().copied(), r).unwrap()] += 1;
    }
    assert_eq!(counts, [2_500, 7_500]);
    assert_eq!(weighted_pick([(0usize, 0.0)].iter().copied(), 0.3), None);
    assert_eq!(
        weighted_pick([(0usize, 0.0), (4, 2.0)].iter().copied(), 0.0),
        Some(4)
    );
}

#[test]
fn rendezvous_is_deterministic_weighted_and_minimally_disruptive() {
    let clusters = [(0usize, "east", 1.0), (1, "west", 3.0)];
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let first: Vec<usize> = users
        .iter()
        .map(|u| rendezvous(u, clusters.iter().copied()).unwrap())
        .collect();
    // Same inputs, same answers (what two replicas do independently).
    let again: Vec<usize> = users
        .iter()
        .map(|u| rendezvous(u, clusters.iter().copied()).unwrap())
        .collect();
    assert_eq!(first, again);
    // Shares follow the weights.
    let west = first.iter().filter(|&&c| c == 1).count() as f64 / users.len() as f64;
    assert!((west - 0.75).abs() < 0.02, "west share {west}");
    // A third cluster joins: users move only to it, never between the first two.
    let three = [(0usize, "east", 1.0), (1, "west", 3.0), (2, "north", 2.0)];
    for (u, before) in users.iter().zip(&first) {
        let after = rendezvous(u, three.iter().copied()).unwrap();
        assert!(
            after == *before || after == 2,
            "{u} moved {before} -> {after}"
        );
    }
    // A small change of weight moves few users.
    let nudged = [(0usize, "east", 1.0), (1, "west", 3.03)];
    let moved = users
        .iter()
        .zip(&first)
        .filter(|(u, before)| rendezvous(u, nudged.iter().copied()).unwrap() != **before)
        .count();
    assert!(moved < 100, "{moved} of 10000 moved on a 1% weight change");
    assert_eq!(rendezvous("u", [(0usize, "a", 0.0)]), None);
}

#[test]
fn token_imbalance_finds_busiest_and_idlest() {
    // Per unit of capacity: 0 -> 10, 1 -> 2, 2 -> 5.
    let c = [
        (0usize, 1000.0, 100.0),
        (1, 400.0, 200.0),
        (2, 500.0, 100.0),
    ];
    assert_eq!(token_imbalance(c, 1.5), Some((0, 1)));
    assert_eq!(token_imbalance(c, 6.0), None);
    assert_eq!(
        token_imbalance([(0usize, 0.0, 1.0), (1, 0.0, 1.0)], 1.5),
        None
    );
    assert_eq!(token_imbalance([(0usize, 10.0, 1.0)], 1.5), None);
}

/// Every replica must place a user on the same first cluster, whatever its build: computed
/// independently (Python, FNV-1a and SplitMix64 from their definitions).
#[test]
fn rendezvous_choices_are_pinned() {
    let clusters = [(0, "east", 1.0), (1, "west", 2.0), (2, "north", 1.0)];
    let chosen: Vec<usize> = (0..12)
        .map(|i| rendezvous(&format!("user-{i}"), clusters).unwrap())
        .collect();
    assert_eq!(chosen, [2, 1, 0, 0, 0, 1, 1, 1, 2, 1, 1, 1]);
}
