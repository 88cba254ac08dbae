//! What one api replica knows of one key's rate limits on one model, and the capacity it has
//! reserved in Redis for that key's next requests.
//!
//! A key that sends many requests would otherwise cost a Redis round trip each. Instead, when
//! requests come faster than one per [`LEASE_TTL`] and every limit is far from full, the
//! admission asks Redis for a *lease*: this request and the next few, charged at once by the
//! same atomic script. The following requests are admitted from the lease with no round trip;
//! what is left when it expires (or no longer fits a request) is given back.
//!
//! Limits stay exact: Redis has charged every leased request before any is served, so no
//! replica can exceed a limit. A lease only holds capacity back from other replicas while the
//! limit is far from reached (at least half of it left after the lease, which is at most
//! 1/32 of the limit) and for at most [`LEASE_TTL`]. Keys with a concurrency cap are never
//! leased: a slot is held by one running request, not by time.
//!
//! The same knowledge decides whether a request's jobs may be published while Redis decides
//! (see `Gate::admit_and_dispatch`): only when the last admission left a quarter of every
//! limit to spare.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_broker::ratelimit::{Limit, LimitKind, LimitState};

/// How long a lease lasts; also the request spacing below which a key is worth leasing.
pub const LEASE_TTL: Duration = Duration::from_millis(250);

/// The most requests one lease reserves.
const MAX_LEASE: u32 = 1024;

/// How long what this replica learned of a key's limits is good for judging its next request.
/// Time only refills limits; what it cannot see is other replicas' use, which the margins of
/// [`far_from_limit`] and [`room_for_lease`] absorb.
const SEEN_TTL: Duration = Duration::from_secs(10);

/// One key's limits on one model, as this replica knows them.
#[derive(Default)]
pub struct Scope {
    /// The limits' state after this replica's last admission in Redis, and when.
    seen: Option<(Vec<LimitState>, Instant)>,
    /// When this replica last admitted a request of this scope (from a lease or not).
    last_request: Option<Instant>,
    lease: Option<Lease>,
    /// When this replica last asked Redis for a lease here, until the answer: one at a time,
    /// so that concurrent requests do not each reserve one.
    leasing_since: Option<Instant>,
    /// Requests the next lease reserves: doubled when a lease runs out, otherwise what the last
    /// one served.
    next_lease: u32,
}

/// Requests and tokens reserved in Redis for this replica.
pub struct Lease {
    /// The limits as charged: windows by `requests`, buckets by `tokens`.
    pub limits: Arc<[Limit]>,
    /// The reservation's member; its window entries are `reserved_member(member, 1..=requests)`.
    pub member: String,
    /// The limits' state right after the reservation.
    states: Vec<LimitState>,
    requests: u32,
    served: u32,
    tokens: u32,
    tokens_used: u32,
    expires: Instant,
}

/// How to ask Redis for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Requests to reserve: 1 is this request alone.
    pub reserve: u32,
    /// Whether the request's jobs may be published before Redis answers.
    pub overlap: bool,
}

/// What a lease did for one request.
pub enum Draw {
    /// Admitted from the lease: the limits to settle against and their state for the headers.
    Served {
        limits: Arc<[Limit]>,
        states: Vec<LimitState>,
    },
    /// The lease has ended (expired, or this request does not fit): give back what it left.
    Ended(Lease),
    NoLease,
}

impl Scope {
    /// Admits the request from this scope's lease if it fits.
    pub fn draw(&mut self, limits: &[Limit], estimated_tokens: u32) -> Draw {
        let Some(lease) = &mut self.lease else { return Draw::NoLease };
        let tokens_fit = lease.tokens_used.saturating_add(estimated_tokens) <= lease.tokens
            || !lease.limits.iter().any(|limit| limit.kind == LimitKind::TokensPerMinute);
        let fits = lease.expires > Instant::now() && lease.served < lease.requests && tokens_fit && same_limits(&lease.limits, limits);
        if !fits {
            return self.end(None).map_or(Draw::NoLease, Draw::Ended);
        }
        lease.served += 1;
        lease.tokens_used = lease.tokens_used.saturating_add(estimated_tokens).min(lease.tokens);
        self.last_request = Some(Instant::now());
        Draw::Served { limits: lease.limits.clone(), states: lease.states_now() }
    }

    /// How to ask Redis for a request this scope's lease could not serve.
    pub fn plan(&mut self, limits: &[Limit]) -> Plan {
        let alone = Plan { reserve: 1, overlap: false };
        let Some((states, at)) = &self.seen else { return alone };
        if at.elapsed() >= SEEN_TTL || states.len() != limits.len() {
            return alone;
        }
        let pairs = || limits.iter().zip(states);
        let overlap = pairs().all(|(limit, state)| far_from_limit(limit, state));
        let busy = self.last_request.is_some_and(|last| last.elapsed() < LEASE_TTL);
        let asking = self.leasing_since.is_some_and(|since| since.elapsed() < SEEN_TTL);
        let leasable = busy && !asking && limits.iter().all(|limit| limit.kind != LimitKind::Concurrent);
        let mut reserve = if leasable { self.next_lease.clamp(2, MAX_LEASE) } else { 1 };
        while reserve > 1 && !pairs().all(|(limit, state)| room_for_lease(limit, state, reserve)) {
            reserve /= 2;
        }
        if reserve > 1 {
            self.leasing_since = Some(Instant::now());
        }
        Plan { reserve: reserve.max(1), overlap }
    }

    /// Records Redis's admission of a request that reserved `reserve` requests (`charged`
    /// holds the limits as charged). Returns the limits' state as this request sees it, and a
    /// lease the new one replaces, whose rest must be given back.
    pub fn admitted(
        &mut self,
        states: Vec<LimitState>,
        charged: &Arc<[Limit]>,
        reserve: u32,
        member: &str,
        estimated_tokens: u32,
    ) -> (Vec<LimitState>, Option<Lease>) {
        let now = Instant::now();
        self.seen = Some((states.clone(), now));
        self.last_request = Some(now);
        if reserve <= 1 {
            return (states, None);
        }
        let lease = Lease {
            limits: charged.clone(),
            member: member.to_string(),
            states,
            requests: reserve,
            served: 1,
            tokens: estimated_tokens.saturating_mul(reserve),
            tokens_used: estimated_tokens,
            expires: now + LEASE_TTL,
        };
        let states = lease.states_now();
        let replaced = self.lease.replace(lease);
        (states, replaced)
    }

    /// Redis has answered this replica's request for a lease (granted or not).
    pub fn lease_answered(&mut self) {
        self.leasing_since = None;
    }

    /// Redis refused or failed: what this replica knew no longer holds.
    pub fn forget(&mut self) {
        self.seen = None;
    }

    /// Ends the lease (only the one made under `member`, if given) and returns it, so that
    /// what it left can be given back.
    pub fn end(&mut self, member: Option<&str>) -> Option<Lease> {
        if member.is_some_and(|member| self.lease.as_ref().is_some_and(|lease| lease.member != member)) {
            return None;
        }
        let lease = self.lease.take()?;
        let ran_out = lease.served == lease.requests || lease.expires > Instant::now();
        self.next_lease = if ran_out { lease.requests.saturating_mul(2) } else { lease.served }.min(MAX_LEASE);
        Some(lease)
    }

    /// Whether this scope may be forgotten: no lease and nothing recent.
    pub fn is_stale(&self) -> bool {
        self.lease.is_none() && self.seen.as_ref().is_none_or(|(_, at)| at.elapsed() >= SEEN_TTL)
    }
}

impl Lease {
    /// The limits' state as a request served now sees it: what the lease has not handed out
    /// yet is still available to this key.
    fn states_now(&self) -> Vec<LimitState> {
        self.limits
            .iter()
            .zip(&self.states)
            .map(|(limit, state)| {
                let unused = match limit.kind {
                    LimitKind::RequestsPerMinute => self.requests - self.served,
                    LimitKind::TokensPerMinute => self.tokens - self.tokens_used,
                    LimitKind::Concurrent => 0,
                };
                LimitState { remaining: state.remaining + unused as i64, reset_ms: state.reset_ms }
            })
            .collect()
    }

    /// The window entries and tokens this lease did not use.
    pub fn unused(&self) -> (RangeInclusive<u32>, u32) {
        (self.served + 1..=self.requests, self.tokens - self.tokens_used)
    }
}

/// `limit` as charged for `reserve` requests.
pub fn reserved(limit: &Limit, reserve: u32) -> Limit {
    let cost = match limit.kind {
        LimitKind::Concurrent => limit.cost,
        LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => limit.cost.saturating_mul(reserve),
    };
    Limit { cost, ..limit.clone() }
}

/// Whether `lease` was charged for the same limits (keys and sizes) that apply now.
fn same_limits(lease: &[Limit], limits: &[Limit]) -> bool {
    lease.len() == limits.len() && lease.iter().zip(limits).all(|(a, b)| a.kind == b.kind && a.key == b.key && a.limit == b.limit)
}

/// Whether a limit last seen at `state` would still pass this request with a quarter of the
/// limit to spare: that much use by other replicas (or by this replica's requests in flight)
/// is what it takes for a request dispatched early to be refused.
fn far_from_limit(limit: &Limit, state: &LimitState) -> bool {
    state.remaining - limit.cost as i64 >= (limit.limit as i64 / 4).max(1)
}

/// Whether a lease of `reserve` requests is small next to the limit (1/32 of it at most) and
/// leaves at least half of it to everyone else.
fn room_for_lease(limit: &Limit, state: &LimitState, reserve: u32) -> bool {
    let cost = limit.cost as i64 * reserve as i64;
    cost <= limit.limit as i64 / 32 && state.remaining - cost >= limit.limit as i64 / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u32, tpm: u32, tokens: u32) -> Vec<Limit> {
        vec![
            Limit { kind: LimitKind::RequestsPerMinute, key: "req".into(), limit: rpm, cost: 1 },
            Limit { kind: LimitKind::TokensPerMinute, key: "tok".into(), limit: tpm, cost: tokens },
        ]
    }

    fn full(limits: &[Limit]) -> Vec<LimitState> {
        limits.iter().map(|limit| LimitState { remaining: limit.limit as i64 - limit.cost as i64, reset_ms: 0 }).collect()
    }

    /// Admits one request the way the gate does, with Redis always agreeing.
    fn admit(scope: &mut Scope, limits: &[Limit]) -> Plan {
        let plan = scope.plan(limits);
        let charged: Arc<[Limit]> = limits.iter().map(|limit| reserved(limit, plan.reserve)).collect();
        let (_, replaced) = scope.admitted(full(&charged), &charged, plan.reserve, "m", limits[1].cost);
        scope.lease_answered();
        assert!(replaced.is_none(), "a lease is only asked for when none is left");
        plan
    }

    #[test]
    fn a_busy_key_far_from_its_limits_gets_growing_leases() {
        let limits = limits(1_000_000, 100_000_000, 100);
        let mut scope = Scope::default();
        assert_eq!(admit(&mut scope, &limits), Plan { reserve: 1, overlap: false }, "nothing known yet");
        assert_eq!(admit(&mut scope, &limits), Plan { reserve: 2, overlap: true });
        let mut sizes = Vec::new();
        for _ in 0..200 {
            match scope.draw(&limits, 100) {
                Draw::Served { .. } => {}
                Draw::Ended(_) => sizes.push(admit(&mut scope, &limits).reserve),
                Draw::NoLease => panic!("a lease was expected"),
            }
        }
        assert_eq!(sizes[..4], [4, 8, 16, 32], "each lease that runs out doubles the next");
    }

    #[test]
    fn served_requests_see_the_leased_capacity_count_down() {
        let limits = limits(10_000, 100_000_000, 100);
        let mut scope = Scope::default();
        admit(&mut scope, &limits);
        let plan = scope.plan(&limits);
        assert_eq!(plan.reserve, 2);
        let charged: Arc<[Limit]> = limits.iter().map(|limit| reserved(limit, 2)).collect();
        // Redis: 9000 requests left before this lease of 2.
        let states = vec![LimitState { remaining: 8998, reset_ms: 5 }, LimitState { remaining: 1000, reset_ms: 5 }];
        let (first, _) = scope.admitted(states, &charged, 2, "m", 100);
        assert_eq!((first[0].remaining, first[1].remaining), (8999, 1100));
        let Draw::Served { states: second, .. } = scope.draw(&limits, 100) else { panic!("the lease has a second request") };
        assert_eq!((second[0].remaining, second[1].remaining), (8998, 1000));
        let Draw::Ended(lease) = scope.draw(&limits, 100) else { panic!("the lease is used up") };
        let (unused, count) = lease.unused();
        assert_eq!((*unused.start(), *unused.end(), count), (3, 2, 0), "nothing unused: an empty range");
    }

    #[test]
    fn no_lease_near_a_limit_or_with_a_concurrency_cap() {
        // 1/32 of 40 is 1: no room for a lease of 2.
        let small = limits(40, 100_000_000, 100);
        let mut scope = Scope::default();
        admit(&mut scope, &small);
        assert_eq!(scope.plan(&small), Plan { reserve: 1, overlap: true });

        // Less than half of the limit left after the lease.
        let limits = limits(1_000_000, 100_000_000, 100);
        let mut scope = Scope::default();
        scope.admitted(
            vec![LimitState { remaining: 500_001, reset_ms: 0 }, LimitState { remaining: 90_000_000, reset_ms: 0 }],
            &limits.clone().into(),
            1,
            "m",
            100,
        );
        assert_eq!(scope.plan(&limits), Plan { reserve: 1, overlap: true });

        // A quarter of the limit or less left: Redis decides before anything is dispatched.
        scope.admitted(
            vec![LimitState { remaining: 250_000, reset_ms: 0 }, LimitState { remaining: 90_000_000, reset_ms: 0 }],
            &limits.clone().into(),
            1,
            "m",
            100,
        );
        assert_eq!(scope.plan(&limits), Plan { reserve: 1, overlap: false });

        let mut capped = limits.clone();
        capped.push(Limit { kind: LimitKind::Concurrent, key: "conc".into(), limit: 1000, cost: 1 });
        let mut scope = Scope::default();
        admit(&mut scope, &capped);
        assert_eq!(scope.plan(&capped).reserve, 1);
    }

    #[test]
    fn a_slow_key_is_not_leased() {
        let limits = limits(1_000_000, 100_000_000, 100);
        let mut scope = Scope::default();
        admit(&mut scope, &limits);
        scope.last_request = Some(Instant::now() - LEASE_TTL * 2);
        assert_eq!(scope.plan(&limits), Plan { reserve: 1, overlap: true });
    }

    #[test]
    fn a_refusal_forgets_what_was_known() {
        let limits = limits(1_000_000, 100_000_000, 100);
        let mut scope = Scope::default();
        admit(&mut scope, &limits);
        scope.forget();
        assert_eq!(scope.plan(&limits), Plan { reserve: 1, overlap: false });
    }
}
