//! Whether this node may answer a request now: the request must be fresh,
//! and this node's ownership view must be current.
//!
//! A process that was stopped (SIGSTOP, a frozen cgroup, a VM paused) finds
//! on resuming every request that arrived meanwhile queued in its sockets,
//! and its table of owned addresses as it was before the stop. Meanwhile
//! its peers have declared it dead and another node answers. Two rules keep
//! it silent until it knows better:
//!
//! - **Freshness**: a request whose kernel receive timestamp is older than
//!   the limit (the membership timeout) is dropped. Whoever asked has asked
//!   again or moved on, and another node may have answered.
//! - **Liveness epoch**: the membership loop stamps a clock each time it
//!   runs (at least every heartbeat interval). A stamp older than the stall
//!   threshold means the loop has not run for long enough that peers may
//!   have declared this node dead: the view is not current. When the loop
//!   itself finds such a gap in its own clock, it re-joins (see
//!   [`rejoined`]) and the view stays not current until then.
//!
//! The decisions are the pure functions here; the clocks are read by the
//! callers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Why a request for an owned address was not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request waited in the socket longer than the freshness limit.
    Stale,
    /// The membership loop has not run recently enough, or is re-joining
    /// after a stall: this node's ownership may be out of date.
    NotCurrent,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Stale => "stale",
            Refusal::NotCurrent => "not_current",
        }
    }
}

/// The gap in the membership loop's clock (and the age of its stamp) past
/// which peers may have declared this node dead: they do so after `timeout`
/// of silence, and the last heartbeat may have left up to one `interval`
/// before the loop's last run. Never shorter than one interval.
pub fn stall_threshold(timeout: Duration, interval: Duration) -> Duration {
    timeout.saturating_sub(interval).max(interval)
}

/// The liveness epoch as read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    /// When the membership loop last ran (monotonic clock, boot-based).
    pub stamp: Duration,
    /// The loop's view was current then: joined and not re-joining.
    pub current: bool,
}

/// The pure rule: may a request of age `age` (from its kernel timestamp;
/// `None` if the kernel gave none) be answered at monotonic time `now`?
/// `epoch` is `None` without membership (nothing to be out of date with).
pub fn may_answer(
    age: Option<Duration>,
    max_age: Duration,
    epoch: Option<Epoch>,
    stall_after: Duration,
    now: Duration,
) -> Result<(), Refusal> {
    if let Some(e) = epoch
        && (!e.current || now.saturating_sub(e.stamp) > stall_after)
    {
        return Err(Refusal::NotCurrent);
    }
    if age.is_some_and(|a| a > max_age) {
        return Err(Refusal::Stale);
    }
    Ok(())
}

/// May gratuitous announcements go out now? The same liveness rule, no
/// request age.
pub fn may_announce(epoch: Option<Epoch>, stall_after: Duration, now: Duration) -> bool {
    may_answer(None, Duration::ZERO, epoch, stall_after, now).is_ok()
}

/// Did the loop stall? `last` and `now` are its own monotonic clock at its
/// previous and current run.
pub fn is_stall(last: Duration, now: Duration, stall_after: Duration) -> bool {
    now.saturating_sub(last) > stall_after
}

/// After a stall detected at `since`: has this node re-joined at `now`?
/// It waits at least `hold` (the membership timeout, long enough for peers
/// to hear its heartbeats again and hand its addresses back), and until it
/// has heard every expected peer again since the stall, or `grace` has
/// passed (the missing ones are dead, as at start).
pub fn rejoined(
    since: Duration,
    now: Duration,
    hold: Duration,
    grace: Duration,
    expected: &BTreeSet<String>,
    heard_since: &BTreeSet<String>,
) -> bool {
    let waited = now.saturating_sub(since);
    waited >= hold && (expected.is_subset(heard_since) || waited >= grace)
}

/// The epoch shared between the membership loop (which renews it) and the
/// responders (which read it on every request).
#[derive(Debug)]
pub struct Liveness {
    stamp_ns: AtomicU64,
    current: AtomicBool,
    /// Set by the daemon after a stall until its Kubernetes view is fresh
    /// again: the membership may have re-joined while the watch events that
    /// queued up during the stall (a label that excludes this node, say)
    /// are not yet applied.
    held: AtomicBool,
    stall_after: Duration,
}

impl Liveness {
    /// Not current until the loop says so.
    pub fn new(stall_after: Duration) -> Liveness {
        Liveness {
            stamp_ns: AtomicU64::new(0),
            current: AtomicBool::new(false),
            held: AtomicBool::new(false),
            stall_after,
        }
    }

    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// The loop ran at `now` and its view is (or is not) current. The flag
    /// is stored before the stamp, so that a reader that sees the new stamp
    /// also sees the flag that goes with it.
    pub fn renew(&self, now: Duration, current: bool) {
        self.current.store(current, Ordering::SeqCst);
        self.stamp_ns.store(
            now.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::SeqCst,
        );
    }

    pub fn epoch(&self) -> Epoch {
        let stamp = Duration::from_nanos(self.stamp_ns.load(Ordering::SeqCst));
        Epoch {
            stamp,
            current: self.current.load(Ordering::SeqCst) && !self.held.load(Ordering::SeqCst),
        }
    }

    /// Holds (or releases) every answer and announcement: the epoch reads as
    /// not current while held.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn epoch(stamp_ms: u64, current: bool) -> Option<Epoch> {
        Some(Epoch {
            stamp: MS * stamp_ms as u32,
            current,
        })
    }

    #[test]
    fn threshold_leaves_room_for_the_last_heartbeat() {
        assert_eq!(stall_threshold(150 * MS, 20 * MS), 130 * MS);
        assert_eq!(stall_threshold(10 * MS, 20 * MS), 20 * MS);
    }

    #[test]
    fn fresh_requests_are_answered_while_the_view_is_current() {
        let now = 10_000 * MS;
        assert_eq!(
            may_answer(Some(2 * MS), 150 * MS, epoch(9_990, true), 130 * MS, now),
            Ok(())
        );
        // Exactly at the limits still counts.
        assert_eq!(
            may_answer(Some(150 * MS), 150 * MS, epoch(9_870, true), 130 * MS, now),
            Ok(())
        );
        // No kernel timestamp: only the epoch decides.
        assert_eq!(
            may_answer(None, 150 * MS, epoch(9_990, true), 130 * MS, now),
            Ok(())
        );
    }

    #[test]
    fn a_request_that_waited_past_the_limit_is_stale() {
        let now = 10_000 * MS;
        assert_eq!(
            may_answer(Some(151 * MS), 150 * MS, epoch(9_990, true), 130 * MS, now),
            Err(Refusal::Stale)
        );
        // A request queued during a 1 s stop.
        assert_eq!(
            may_answer(Some(600 * MS), 150 * MS, None, 130 * MS, now),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn an_old_stamp_or_a_rejoin_means_not_current() {
        let now = 10_000 * MS;
        // The responder ran first after a resume: the loop's stamp is 1 s old.
        assert_eq!(
            may_answer(Some(MS), 150 * MS, epoch(9_000, true), 130 * MS, now),
            Err(Refusal::NotCurrent)
        );
        // The loop ran and is re-joining.
        assert_eq!(
            may_answer(Some(MS), 150 * MS, epoch(9_999, false), 130 * MS, now),
            Err(Refusal::NotCurrent)
        );
        assert!(!may_announce(epoch(9_000, true), 130 * MS, now));
        assert!(!may_announce(epoch(9_999, false), 130 * MS, now));
        assert!(may_announce(epoch(9_999, true), 130 * MS, now));
    }

    #[test]
    fn without_membership_only_freshness_counts() {
        let now = 10_000 * MS;
        assert_eq!(may_answer(Some(MS), 150 * MS, None, 130 * MS, now), Ok(()));
        assert!(may_announce(None, 130 * MS, now));
    }

    #[test]
    fn a_gap_past_the_threshold_is_a_stall() {
        assert!(!is_stall(1_000 * MS, 1_020 * MS, 130 * MS));
        assert!(!is_stall(1_000 * MS, 1_130 * MS, 130 * MS));
        assert!(is_stall(1_000 * MS, 2_000 * MS, 130 * MS));
        // A clock that did not move is no stall.
        assert!(!is_stall(1_000 * MS, 1_000 * MS, 130 * MS));
    }

    #[test]
    fn rejoin_waits_the_hold_and_for_every_peer_or_the_grace() {
        let expected: BTreeSet<String> = ["b".to_owned(), "c".to_owned()].into();
        let none = BTreeSet::new();
        let b: BTreeSet<String> = ["b".to_owned()].into();
        let since = 5_000 * MS;
        let (hold, grace) = (150 * MS, 1_000 * MS);
        // Every peer heard at once, but the hold is not over.
        assert!(!rejoined(
            since,
            5_020 * MS,
            hold,
            grace,
            &expected,
            &expected
        ));
        assert!(rejoined(
            since,
            5_150 * MS,
            hold,
            grace,
            &expected,
            &expected
        ));
        // One peer still silent: wait for it until the grace.
        assert!(!rejoined(since, 5_500 * MS, hold, grace, &expected, &b));
        assert!(rejoined(since, 6_000 * MS, hold, grace, &expected, &b));
        // A single-node cluster: no peer to wait for, only the hold.
        assert!(!rejoined(since, 5_100 * MS, hold, grace, &none, &none));
        assert!(rejoined(since, 5_150 * MS, hold, grace, &none, &none));
    }

    #[test]
    fn the_shared_epoch_reads_back_what_the_loop_wrote() {
        let l = Liveness::new(130 * MS);
        assert!(!l.epoch().current);
        l.renew(42 * MS, true);
        assert_eq!(
            l.epoch(),
            Epoch {
                stamp: 42 * MS,
                current: true
            }
        );
        l.renew(43 * MS, false);
        assert_eq!(
            l.epoch(),
            Epoch {
                stamp: 43 * MS,
                current: false
            }
        );
        assert_eq!(l.stall_after(), 130 * MS);
    }
}
