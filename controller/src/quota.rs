//! Quota allocation, in the spirit of YouTube's Doorman: a key's `requestsPerMinute` and
//! `tokensPerMinute` are global, proxies report what they *want*, and the leader hands out
//! *grants* that never add up to more than the quota. Pure: the leader's allocator task
//! ([`crate::allocator`]) feeds it what every replica published.
//!
//! Per key and per dimension (requests, tokens), over the proxies serving the key:
//!
//! 1. **Floor.** Every proxy gets `min(quota / proxies, ceil(quota / 100))`, so an idle proxy
//!    can start serving at once. With more proxies than the quota the floor is 0, and a proxy
//!    gets capacity when it asks for it (see 3).
//! 2. **Max-min fair share of the rest, by identity first.** What is left is water-filled over
//!    the authenticated identities (ServiceAccounts) by their demand (the sum of their
//!    proxies' wants beyond the floor), then within each identity over its proxies. A proxy
//!    cannot claim more by inventing proxy ids: its identity's share does not grow with them.
//!    Capacity nobody wants stays unallocated, ready for the next demand.
//! 3. **Whole requests, fair over time.** Fractional shares (20 proxies on a 10 rpm key want
//!    half a request per minute each) become whole units given to the proxies with the largest
//!    accumulated fraction ("credit", deficit round robin), so every proxy gets its turn.
//! 4. **Reclaim before grant.** A proxy may still use what it *holds*: its window usage and
//!    every grant it may not have applied yet. Decreases apply at once; an increase only uses
//!    room that no proxy holds: the sum over proxies of `max(held, grant)` never exceeds the
//!    quota, so the requests started in any sliding minute never do either.

use std::collections::HashMap;

/// A want with no bound (the proxy's requests found its grant spent).
pub const UNBOUNDED: u64 = u64::MAX;

/// One proxy serving a key, as the allocator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The authenticated identity (`system:serviceaccount:<ns>:<name>`).
    pub identity: String,
    pub proxy: String,
    /// Per minute; [`UNBOUNDED`] for "as much as possible".
    pub want: u64,
    /// What it may use now: window usage and grants it may not have applied yet.
    pub held: u64,
    /// What it used in its sliding minute (at most `held`).
    pub used: u64,
    /// Its grant in the table in force.
    pub current: u64,
}

/// Per-client credit (accumulated fractional share), kept by the leader between rounds.
pub type Credits = HashMap<(String, String), f64>;

/// The floor every proxy gets: `min(quota / n, ceil(quota / 100))`.
pub fn floor(quota: u64, n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    (quota / n as u64).min(quota.div_ceil(100))
}

/// The grants of `clients` for a key of `quota` (same order), given `others_held`: capacity
/// held by proxies that get no grant this round (disconnected or on a replica that stopped
/// publishing) whose usage or lease may still count.
pub fn allocate(
    quota: u64,
    clients: &[Client],
    others_held: u64,
    credits: &mut Credits,
) -> Vec<u64> {
    let targets = targets(quota, clients, credits);
    constrain(quota, clients, &targets, others_held)
}

/// Max-min fair targets with floors (steps 1 to 3), ignoring what proxies hold.
pub fn targets(quota: u64, clients: &[Client], credits: &mut Credits) -> Vec<u64> {
    let n = clients.len();
    if n == 0 {
        return Vec::new();
    }
    let f = floor(quota, n);
    let rest = (quota - f * n as u64) as f64;
    let demand: Vec<f64> = clients
        .iter()
        .map(|c| match c.want {
            UNBOUNDED => f64::INFINITY,
            w => w.saturating_sub(f) as f64,
        })
        .collect();
    // Level 1: identities.
    let mut identities: Vec<&str> = clients.iter().map(|c| c.identity.as_str()).collect();
    identities.sort_unstable();
    identities.dedup();
    let members =
        |id: &str| -> Vec<usize> { (0..n).filter(|&i| clients[i].identity == id).collect() };
    let identity_demand: Vec<f64> = identities
        .iter()
        .map(|id| members(id).iter().map(|&i| demand[i]).sum())
        .collect();
    let identity_share = water_fill(rest, &identity_demand);
    // Level 2: proxies of each identity.
    let mut share = vec![0.0; n];
    for (id, cap) in identities.iter().zip(identity_share) {
        let idx = members(id);
        let d: Vec<f64> = idx.iter().map(|&i| demand[i]).collect();
        for (&i, s) in idx.iter().zip(water_fill(cap, &d)) {
            share[i] = s;
        }
    }
    // Whole units: the integer parts, then the leftover units by credit.
    let mut out: Vec<u64> = share.iter().map(|s| f + s.floor() as u64).collect();
    let total: f64 = share.iter().sum();
    let given: u64 = share.iter().map(|s| s.floor() as u64).sum();
    let mut units = ((total + 1e-9).floor() as u64).saturating_sub(given);
    let key = |c: &Client| (c.identity.clone(), c.proxy.clone());
    let mut order: Vec<(f64, usize)> = share
        .iter()
        .enumerate()
        .filter(|(_, s)| s.fract() > 1e-9)
        .map(|(i, s)| {
            let credit = credits.get(&key(&clients[i])).copied().unwrap_or(0.0) + s.fract();
            (credit, i)
        })
        .collect();
    // A proxy keeps a unit it holds and has not used yet: a grant is not taken back before
    // it could reach the proxy. Then the largest credit.
    let keeps = |i: usize| {
        let c = &clients[i];
        c.current > out[i] && c.used < c.current
    };
    order.sort_by(|a, b| {
        keeps(b.1)
            .cmp(&keeps(a.1))
            .then_with(|| b.0.total_cmp(&a.0))
            .then_with(|| clients[a.1].proxy.cmp(&clients[b.1].proxy))
    });
    let mut next_credits = Credits::new();
    for (credit, i) in order {
        let credit = if units > 0 {
            units -= 1;
            out[i] += 1;
            credit - 1.0
        } else {
            credit
        };
        // Bounded, so a long-starved proxy cannot bank an unbounded claim.
        next_credits.insert(key(&clients[i]), credit.clamp(-1.0, 1.0));
    }
    *credits = next_credits;
    out
}

/// Water-filling: max-min fair shares of `capacity` for `demands` (any may be infinite).
pub fn water_fill(capacity: f64, demands: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| demands[a].total_cmp(&demands[b]));
    let mut out = vec![0.0; demands.len()];
    let mut left = capacity.max(0.0);
    let mut k = demands.len();
    for i in order {
        let fair = left / k as f64;
        let give = demands[i].max(0.0).min(fair);
        out[i] = give;
        left -= give;
        k -= 1;
    }
    out
}

/// Step 4: moves each grant towards its target, decreases at once, increases only into room
/// that no proxy holds. `others_held` is capacity held outside `clients`.
pub fn constrain(quota: u64, clients: &[Client], targets: &[u64], others_held: u64) -> Vec<u64> {
    let mut grants: Vec<u64> = clients
        .iter()
        .zip(targets)
        .map(|(c, &t)| t.min(c.current))
        .collect();
    // `held` covers the grant in force until the proxy acknowledged a smaller one.
    let claim = |c: &Client, g: u64| c.held.max(g);
    let mut used: u64 = others_held
        + clients
            .iter()
            .zip(&grants)
            .map(|(c, &g)| claim(c, g))
            .sum::<u64>();
    // Floors first (every proxy can serve), then the largest shortfalls.
    let f = floor(quota, clients.len());
    for cap in [Some(f), None] {
        let mut order: Vec<usize> = (0..clients.len())
            .filter(|&i| targets[i] > grants[i])
            .collect();
        order.sort_by(|&a, &b| {
            (targets[b] - grants[b])
                .cmp(&(targets[a] - grants[a]))
                .then_with(|| clients[a].proxy.cmp(&clients[b].proxy))
        });
        for i in order {
            let c = &clients[i];
            let room = quota.saturating_sub(used);
            let before = claim(c, grants[i]);
            let target = cap.map_or(targets[i], |f| targets[i].min(f));
            let raised = target.min(before + room);
            if raised > grants[i] {
                grants[i] = raised;
                used += claim(c, raised) - before;
            }
        }
    }
    grants
}

#[cfg(test)]
mod tests;
