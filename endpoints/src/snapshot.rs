//! The state `next()` reads: an immutable snapshot of the usable endpoints (swapped whole
//! when the Service changes), each with the counters that outlive snapshots (requests in
//! flight, passive ejection), and the picking policies over it. No locks: `next()` is an
//! atomic load of the snapshot, one `fetch_add` (round-robin) and one relaxed load per
//! endpoint looked at.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config::{Ejection, Policy};
use crate::select::{Endpoint, HintsUsed, Selection};

/// What the API said last, when it gave no endpoints to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// No list has completed yet.
    NotSynced,
    /// The endpoints are in `entries` (which may be empty: no endpoints).
    Listed,
    ServiceNotFound,
    PortNotFound,
    AmbiguousPort,
}

/// Per-endpoint counters, shared by every snapshot the endpoint is in. The ejection state
/// (read by every `next()`) and the in-flight counter (written by tracked requests) sit on
/// separate cache lines.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    pub(crate) eject: EjectState,
    pub(crate) in_flight: InFlight,
}

#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct EjectState {
    /// Nanoseconds on the load balancer's clock until which the endpoint is skipped; 0: not
    /// ejected.
    until: AtomicU64,
    /// Failures reported since the last success or ejection.
    failures: AtomicU32,
    /// Ejections since the last reported success (the backoff's exponent).
    ejections: AtomicU32,
}

#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct InFlight(pub(crate) AtomicUsize);

impl EndpointState {
    /// Whether `next()` skips it at `now`.
    #[inline]
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        let until = self.eject.until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// Whether it might be ejected (no clock needed to say no).
    #[inline]
    fn maybe_ejected(&self) -> bool {
        self.eject.until.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn record_success(&self) {
        self.eject.failures.store(0, Ordering::Relaxed);
        self.eject.ejections.store(0, Ordering::Relaxed);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) endpoint: Endpoint,
    pub(crate) state: Arc<EndpointState>,
}

/// One published view of the Service.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) status: Status,
    /// Sorted by address.
    pub(crate) entries: Vec<Entry>,
    pub(crate) terminating_fallback: bool,
    pub(crate) hints: HintsUsed,
}

impl Snapshot {
    pub(crate) fn not_synced() -> Self {
        Self::with_status(Status::NotSynced)
    }

    pub(crate) fn with_status(status: Status) -> Self {
        Snapshot {
            status,
            entries: vec![],
            terminating_fallback: false,
            hints: HintsUsed::None,
        }
    }

    /// A snapshot of `selection`, keeping the counters of endpoints `previous` also had.
    pub(crate) fn build(selection: Selection, previous: Option<&Snapshot>) -> Self {
        let entries = selection
            .endpoints
            .into_iter()
            .map(|endpoint| {
                let state = previous
                    .and_then(|p| p.find(endpoint.addr()))
                    .map(|e| e.state.clone())
                    .unwrap_or_default();
                Entry { endpoint, state }
            })
            .collect();
        Snapshot {
            status: Status::Listed,
            entries,
            terminating_fallback: selection.terminating_fallback,
            hints: selection.hints,
        }
    }

    pub(crate) fn find(&self, addr: SocketAddr) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&addr, |e| e.endpoint.addr())
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The index `next()` returns, `None` when there is no endpoint. `now` is called only
    /// when an endpoint looked at may be ejected.
    #[inline]
    pub(crate) fn pick(
        &self,
        policy: Policy,
        counter: &AtomicUsize,
        now: impl Fn() -> u64,
    ) -> Option<usize> {
        let n = self.entries.len();
        if n == 0 {
            return None;
        }
        match policy {
            Policy::RoundRobin => Some(self.round_robin(counter, now)),
            Policy::PowerOfTwoChoices => Some(self.two_choices(counter, now)),
        }
    }

    #[inline]
    fn round_robin(&self, counter: &AtomicUsize, now: impl Fn() -> u64) -> usize {
        let n = self.entries.len();
        let first = counter.fetch_add(1, Ordering::Relaxed) % n;
        if !self.entries[first].state.maybe_ejected() {
            return first;
        }
        // Skipping an ejected endpoint takes the counter's next value rather than the next
        // index, so the endpoint after it does not get its share too.
        let now = now();
        let mut i = first;
        for _ in 0..n {
            if !self.entries[i].state.is_ejected(now) {
                return i;
            }
            i = counter.fetch_add(1, Ordering::Relaxed) % n;
        }
        first
    }

    fn two_choices(&self, counter: &AtomicUsize, now: impl Fn() -> u64) -> usize {
        let n = self.entries.len();
        if n == 1 {
            return 0;
        }
        // The clock is read at most once, and only when an endpoint may be ejected.
        let clock = Cell::new(None::<u64>);
        let now = || match clock.get() {
            Some(t) => t,
            None => {
                let t = now();
                clock.set(Some(t));
                t
            }
        };
        let usable = |i: usize| {
            let s = &self.entries[i].state;
            !s.maybe_ejected() || !s.is_ejected(now())
        };
        for _ in 0..4 {
            let r = random();
            let a = (r as usize) % n;
            // A second index different from the first.
            let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
            match (usable(a), usable(b)) {
                (true, true) => {
                    let (la, lb) = (
                        self.entries[a].state.in_flight(),
                        self.entries[b].state.in_flight(),
                    );
                    return if lb < la { b } else { a };
                }
                (true, false) => return a,
                (false, true) => return b,
                (false, false) => {}
            }
        }
        // Unlucky draws among many ejected endpoints: the next usable one in turn.
        self.round_robin(counter, now)
    }

    /// Counts a failure of the endpoint at `index` and ejects it when the policy says so and
    /// fewer than half the endpoints would then be ejected. The caller serialises calls.
    /// Returns whether it was ejected.
    pub(crate) fn record_failure(&self, index: usize, policy: &Ejection, now: u64) -> bool {
        let state = &self.entries[index].state;
        if state.is_ejected(now) {
            return false;
        }
        let failures = state.eject.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.consecutive_failures.max(1) {
            return false;
        }
        let ejected = self
            .entries
            .iter()
            .filter(|e| e.state.is_ejected(now))
            .count();
        if (ejected + 1) * 2 > self.entries.len() {
            return false;
        }
        let k = state.eject.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = policy.backoff(k).as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        state
            .eject
            .until
            .store(now.saturating_add(backoff).max(1), Ordering::Relaxed);
        state.eject.failures.store(0, Ordering::Relaxed);
        true
    }

    /// How many endpoints are ejected at `now`.
    pub(crate) fn ejected(&self, now: u64) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state.is_ejected(now))
            .count()
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    splitmix(NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ t) | 1
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A thread-local xorshift64* draw: no shared state, no lock.
#[inline]
fn random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{SelectOptions, select, tests::ep, tests::slice};
    use proptest::prelude::*;
    use std::time::Duration;

    fn snapshot(n: usize) -> Snapshot {
        let eps: Vec<_> = (0..n)
            .map(|i| ep(&format!("10.0.{}.{}", i / 200, i % 200 + 1)))
            .collect();
        let s = slice("s", "http", 80, &eps);
        Snapshot::build(select([&s], "http", &SelectOptions::default()), None)
    }

    const EJECT: Ejection = Ejection {
        consecutive_failures: 1,
        base: Duration::from_secs(1),
        max: Duration::from_secs(8),
    };
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn round_robin_in_address_order() {
        let s = snapshot(3);
        let c = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..7)
            .map(|_| {
                s.pick(Policy::RoundRobin, &c, || panic!("no clock needed"))
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            Snapshot::not_synced().pick(Policy::RoundRobin, &c, || 1),
            None
        );
    }

    #[test]
    fn ejected_endpoint_is_skipped_until_its_backoff_ends() {
        let s = snapshot(4);
        let c = AtomicUsize::new(0);
        assert!(s.record_failure(1, &EJECT, SEC));
        let picks: Vec<usize> = (0..6)
            .map(|_| s.pick(Policy::RoundRobin, &c, || SEC + 1).unwrap())
            .collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // The others share evenly: the counter moves past the ejected one.
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
        // After the backoff (1 s), it is back.
        let picks: Vec<usize> = (0..4)
            .map(|_| s.pick(Policy::RoundRobin, &c, || 2 * SEC + 1).unwrap())
            .collect();
        assert!(picks.contains(&1));
        // The second ejection lasts twice as long; a success resets it.
        assert!(s.record_failure(1, &EJECT, 3 * SEC));
        assert!(s.entries[1].state.is_ejected(4 * SEC + 1));
        assert!(!s.entries[1].state.is_ejected(5 * SEC));
        s.entries[1].state.record_success();
        assert!(s.record_failure(1, &EJECT, 6 * SEC));
        assert!(!s.entries[1].state.is_ejected(7 * SEC));
    }

    #[test]
    fn consecutive_failures_threshold() {
        let s = snapshot(2);
        let policy = Ejection {
            consecutive_failures: 3,
            ..EJECT
        };
        assert!(!s.record_failure(0, &policy, SEC));
        assert!(!s.record_failure(0, &policy, SEC));
        assert!(s.record_failure(0, &policy, SEC));
    }

    #[test]
    fn never_more_than_half() {
        let s = snapshot(1);
        assert!(!s.record_failure(0, &EJECT, SEC));
        let s = snapshot(5);
        assert!(s.record_failure(0, &EJECT, SEC));
        assert!(s.record_failure(1, &EJECT, SEC));
        assert!(!s.record_failure(2, &EJECT, SEC));
        assert_eq!(s.ejected(SEC), 2);
    }

    #[test]
    fn counters_survive_a_new_snapshot() {
        let old = snapshot(3);
        assert!(old.record_failure(2, &EJECT, SEC));
        old.entries[0].state.in_flight.0.store(7, Ordering::Relaxed);
        let eps: Vec<_> = (0..3)
            .map(|i| ep(&format!("10.0.0.{}", i + 1)))
            .chain([ep("10.0.0.9")])
            .collect();
        let new = Snapshot::build(
            select(
                [&slice("s", "http", 80, &eps)],
                "http",
                &SelectOptions::default(),
            ),
            Some(&old),
        );
        assert_eq!(new.entries[0].state.in_flight(), 7);
        assert!(new.entries[2].state.is_ejected(SEC + 1));
        assert!(!new.entries[3].state.is_ejected(SEC + 1));
    }

    #[test]
    fn two_choices_prefers_fewer_in_flight() {
        let s = snapshot(2);
        let c = AtomicUsize::new(0);
        s.entries[0].state.in_flight.0.store(5, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(s.pick(Policy::PowerOfTwoChoices, &c, || 1), Some(1));
        }
        let one = snapshot(1);
        assert_eq!(one.pick(Policy::PowerOfTwoChoices, &c, || 1), Some(0));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Fail(usize),
        Succeed(usize),
        Advance(u64),
        Pick,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..16).prop_map(Op::Fail),
            (0usize..16).prop_map(Op::Succeed),
            (0u64..3 * SEC).prop_map(Op::Advance),
            Just(Op::Pick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn round_robin_is_fair(n in 1usize..40, rounds in 1usize..5, start in any::<usize>()) {
            let s = snapshot(n);
            let c = AtomicUsize::new(start);
            let mut counts = vec![0usize; n];
            let mut prev = None;
            for _ in 0..n * rounds {
                let i = s.pick(Policy::RoundRobin, &c, || 1).unwrap();
                if let Some(p) = prev {
                    // In turn (wrapping at usize::MAX may repeat one index once).
                    prop_assert!(i == (p + 1) % n || start > usize::MAX - n * rounds);
                }
                prev = Some(i);
                counts[i] += 1;
            }
            if start <= usize::MAX - n * rounds {
                prop_assert!(counts.iter().all(|&k| k == rounds));
            }
        }

        #[test]
        fn ejection_keeps_half_and_picks_avoid_ejected(n in 1usize..16, ops in prop::collection::vec(arb_op(), 0..200), p2c in any::<bool>()) {
            let s = snapshot(n);
            let c = AtomicUsize::new(0);
            let policy = if p2c { Policy::PowerOfTwoChoices } else { Policy::RoundRobin };
            let mut now = SEC;
            for op in ops {
                match op {
                    Op::Fail(i) => { s.record_failure(i % n, &EJECT, now); }
                    Op::Succeed(i) => s.entries[i % n].state.record_success(),
                    Op::Advance(d) => now += d,
                    Op::Pick => {
                        let i = s.pick(policy, &c, || now).unwrap();
                        prop_assert!(!s.entries[i].state.is_ejected(now), "picked an ejected endpoint");
                    }
                }
                prop_assert!(s.ejected(now) * 2 <= n, "{} of {} ejected", s.ejected(now), n);
            }
        }

        #[test]
        fn two_choices_never_picks_the_busiest(n in 2usize..20, loads in prop::collection::vec(0usize..100, 20), draws in 1usize..50) {
            let s = snapshot(n);
            for (i, e) in s.entries.iter().enumerate() {
                e.state.in_flight.0.store(loads[i], Ordering::Relaxed);
            }
            let max = *loads[..n].iter().max().unwrap();
            let busiest: Vec<usize> = (0..n).filter(|&i| loads[i] == max).collect();
            let c = AtomicUsize::new(0);
            for _ in 0..draws {
                let i = s.pick(Policy::PowerOfTwoChoices, &c, || 1).unwrap();
                if busiest.len() == 1 {
                    prop_assert_ne!(i, busiest[0]);
                }
            }
        }
    }
}
