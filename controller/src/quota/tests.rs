use super::*;

fn client(identity: &str, proxy: &str, want: u64, held: u64, current: u64) -> Client {
    Client {
        identity: identity.into(),
        proxy: proxy.into(),
        want,
        held,
        used: 0,
        current,
    }
}

fn idle(proxy: &str) -> Client {
    client(&format!("sa-{proxy}"), proxy, 0, 0, 0)
}

#[test]
fn floors_let_idle_proxies_serve_and_the_busy_one_gets_the_rest() {
    let mut credits = Credits::new();
    let clients = vec![
        client("sa-a", "busy", UNBOUNDED, 0, 0),
        idle("b"),
        idle("c"),
        idle("d"),
    ];
    let t = targets(40, &clients, &mut credits);
    assert_eq!(t, vec![37, 1, 1, 1]);
    // Nothing held: the grants are the targets.
    assert_eq!(allocate(40, &clients, 0, &mut credits), vec![37, 1, 1, 1]);
}

#[test]
fn unwanted_capacity_stays_unallocated() {
    let mut credits = Credits::new();
    let clients = vec![client("sa-a", "a", 3, 0, 0), client("sa-b", "b", 2, 0, 0)];
    assert_eq!(targets(12, &clients, &mut credits), vec![3, 2]);
}

#[test]
fn max_min_fairness_over_identities_then_proxies() {
    let mut credits = Credits::new();
    // One identity with three proxies (say, made-up ids), another with one: the identities
    // split the quota evenly, whatever the proxy counts.
    let clients = vec![
        client("sa-x", "x1", UNBOUNDED, 0, 0),
        client("sa-x", "x2", UNBOUNDED, 0, 0),
        client("sa-x", "x3", UNBOUNDED, 0, 0),
        client("sa-y", "y1", UNBOUNDED, 0, 0),
    ];
    let t = targets(400, &clients, &mut credits);
    let x: u64 = t[..3].iter().sum();
    assert_eq!(t.iter().sum::<u64>(), 400);
    // Floors (4 each) aside, y gets half of the rest.
    assert_eq!(t[3], 4 + 192, "{t:?}");
    assert_eq!(x, 12 + 192);
    // A small want is met in full; the others share what it leaves.
    let clients = vec![
        client("sa-a", "a", 10, 0, 0),
        client("sa-b", "b", UNBOUNDED, 0, 0),
        client("sa-c", "c", UNBOUNDED, 0, 0),
    ];
    let t = targets(100, &clients, &mut credits);
    assert_eq!(t, vec![10, 45, 45]);
}

#[test]
fn more_proxies_than_quota_take_turns() {
    let mut credits = Credits::new();
    let clients: Vec<Client> = (0..20)
        .map(|i| client(&format!("sa-{i}"), &format!("p{i:02}"), UNBOUNDED, 0, 0))
        .collect();
    assert_eq!(floor(10, 20), 0);
    let mut got = vec![0u64; 20];
    for _ in 0..4 {
        let t = targets(10, &clients, &mut credits);
        assert_eq!(t.iter().sum::<u64>(), 10, "{t:?}");
        assert!(t.iter().all(|&g| g <= 1));
        for (g, t) in got.iter_mut().zip(t) {
            *g += t;
        }
    }
    assert!(
        got.iter().all(|&g| g == 2),
        "every proxy gets its turn: {got:?}"
    );
}

#[test]
fn a_unit_not_yet_used_stays_with_its_proxy() {
    let mut credits = Credits::new();
    let mut clients: Vec<Client> = (0..4)
        .map(|i| client(&format!("sa-{i}"), &format!("p{i}"), UNBOUNDED, 0, 0))
        .collect();
    // 2 units for 4 wanting proxies: p0 and p1 get them first.
    assert_eq!(targets(2, &clients, &mut credits), vec![1, 1, 0, 0]);
    // They hold them but have not used them (the grant is on its way): they keep them,
    // although p2 and p3 now have more credit.
    for c in &mut clients[..2] {
        c.current = 1;
        c.held = 1;
    }
    assert_eq!(targets(2, &clients, &mut credits), vec![1, 1, 0, 0]);
    // Once used, the units move on to the others as the minute frees them.
    for c in &mut clients[..2] {
        c.used = 1;
    }
    assert_eq!(targets(2, &clients, &mut credits), vec![0, 0, 1, 1]);
}

#[test]
fn grants_never_exceed_the_quota_while_capacity_is_held() {
    let mut credits = Credits::new();
    // a held 9 (used it in the last minute); it goes idle, b becomes busy.
    let clients = vec![
        client("sa-a", "a", 0, 9, 9),
        client("sa-b", "b", UNBOUNDED, 1, 1),
        idle("c"),
    ];
    let g = allocate(12, &clients, 0, &mut credits);
    // a's grant drops to its floor at once, but the 9 requests it started still count: b
    // can only grow into what nobody holds (12 - 9 - 1 - c's floor).
    assert_eq!(g[0], 1);
    let claimed: u64 = clients.iter().zip(&g).map(|(c, &g)| c.held.max(g)).sum();
    assert!(claimed <= 12, "{g:?}");
    assert_eq!(g[1], 1 + 1, "{g:?}");
    // Once a's minute has passed (held = its new grant), b gets the rest.
    let clients = vec![
        client("sa-a", "a", 0, 1, 1),
        client("sa-b", "b", UNBOUNDED, 2, 2),
        client("sa-c", "c", 0, 1, 1),
    ];
    let g = allocate(12, &clients, 0, &mut credits);
    assert_eq!(g, vec![1, 10, 1]);
}

#[test]
fn capacity_held_outside_the_round_is_not_handed_out() {
    let mut credits = Credits::new();
    // A disconnected proxy may still hold 5 until its lease and minute run out.
    let clients = vec![client("sa-a", "a", UNBOUNDED, 0, 0)];
    assert_eq!(allocate(12, &clients, 5, &mut credits), vec![7]);
}

#[test]
fn expiry_of_held_capacity_frees_it() {
    let mut credits = Credits::new();
    let clients = vec![client("sa-a", "a", UNBOUNDED, 7, 7)];
    // While someone else holds 5, a stays at 7; once that expires, a may take all 12.
    assert_eq!(allocate(12, &clients, 5, &mut credits), vec![7]);
    assert_eq!(allocate(12, &clients, 0, &mut credits), vec![12]);
}

#[test]
fn random_rounds_keep_the_sum_of_claims_within_the_quota() {
    // A simple simulation: proxies' wants change at random, proxies use what they are
    // granted (held = max(usage, grant)), and no round ever lets claims exceed the quota.
    let mut credits = Credits::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let quota = 30;
    let mut clients: Vec<Client> = (0..6)
        .map(|i| client(&format!("sa-{}", i % 3), &format!("p{i}"), 0, 0, 0))
        .collect();
    for _ in 0..500 {
        for c in &mut clients {
            c.want = match rand(4) {
                0 => UNBOUNDED,
                1 => rand(10),
                _ => c.want,
            };
        }
        let g = allocate(quota, &clients, 0, &mut credits);
        let claimed: u64 = clients.iter().zip(&g).map(|(c, &g)| c.held.max(g)).sum();
        assert!(claimed <= quota, "claims {claimed} > {quota}");
        for (c, g) in clients.iter_mut().zip(g) {
            // The proxy applies the grant; its usage decays towards it over time.
            let usage = if rand(2) == 0 {
                g
            } else {
                c.held.min(g + rand(3))
            };
            c.current = g;
            c.used = usage;
            c.held = usage.max(g);
        }
    }
}
