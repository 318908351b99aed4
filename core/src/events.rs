//! Which Kubernetes Events to publish: repeats are dropped and each object
//! gets a bounded number per minute, so that a flapping endpoint or a config
//! applied to 1,000 Services cannot flood the API server (MetalLB users have
//! seen millions of repeated Events). The log line and a counter stay for
//! every Event dropped. Pure: the caller passes the time.
//!
//! The bounds, per publishing process (the controller, or one speaker):
//! - an Event identical to one published for the same object within
//!   [`Limits::repeat_window`] (10 minutes) is dropped as a repeat;
//! - each object has a bucket of [`Limits::burst`] (5) Events that refills at
//!   one per [`Limits::refill`] (30 s): at most 5 in any burst and 2 per minute
//!   after that;
//! - the whole process has a bucket of [`Limits::total_burst`] (1,000) that
//!   refills at [`Limits::total_per_second`] (10/s): a config change that
//!   touches 1,000 Services is reported for each, and the sustained rate
//!   stays under 600 per minute however many objects are involved.
//!
//! See docs/architecture.md ("Events").

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// The rules; [`Limits::default`] is what the binaries use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub repeat_window: Duration,
    pub burst: u32,
    pub refill: Duration,
    pub total_burst: u32,
    pub total_per_second: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            repeat_window: Duration::from_secs(600),
            burst: 5,
            refill: Duration::from_secs(30),
            total_burst: 1000,
            total_per_second: 10,
        }
    }
}

impl Limits {
    /// The most Events one object can get from one process in `span`.
    pub fn per_object_bound(&self, span: Duration) -> u64 {
        u64::from(self.burst) + (span.as_nanos() / self.refill.as_nanos().max(1)) as u64
    }
    /// The most Events one process can publish in `span`.
    pub fn total_bound(&self, span: Duration) -> u64 {
        u64::from(self.total_burst)
            + (span.as_secs_f64() * f64::from(self.total_per_second)).floor() as u64
    }
}

/// What to do with one Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Publish,
    /// The same Event was published for this object within the repeat window.
    Repeat,
    /// The object, or the process, used up its allowance.
    RateLimited,
}

/// A token bucket counted in nanoseconds of refill time.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

impl Bucket {
    fn full(cap: u32, now: Duration) -> Bucket {
        Bucket {
            tokens: f64::from(cap),
            at: now,
        }
    }
    fn refill(&mut self, now: Duration, cap: u32, per_second: f64) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_second).min(f64::from(cap));
        self.at = now.max(self.at);
    }
    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct PerObject {
    bucket: Bucket,
    /// (fingerprint of reason and note, when published), oldest first.
    recent: VecDeque<(u64, Duration)>,
    last: Duration,
}

/// The limiter of one publishing process.
pub struct Limiter {
    limits: Limits,
    objects: HashMap<String, PerObject>,
    total: Bucket,
    calls: u64,
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            objects: HashMap::new(),
            total: Bucket::full(limits.total_burst, Duration::ZERO),
            calls: 0,
        }
    }

    /// Decides about one Event for `object` (any stable name: uid, or
    /// kind/namespace/name) at `now` (time since any fixed start).
    pub fn admit(&mut self, now: Duration, object: &str, reason: &str, note: &str) -> Verdict {
        let l = self.limits;
        self.calls += 1;
        if self.calls.is_multiple_of(1024) {
            self.prune(now);
        }
        let fp = fingerprint(reason, note);
        let per_object_rate = 1.0 / l.refill.as_secs_f64().max(1e-9);
        let o = self
            .objects
            .entry(object.to_owned())
            .or_insert_with(|| PerObject {
                bucket: Bucket::full(l.burst, now),
                recent: VecDeque::new(),
                last: now,
            });
        while o
            .recent
            .front()
            .is_some_and(|(_, at)| now.saturating_sub(*at) >= l.repeat_window)
        {
            o.recent.pop_front();
        }
        o.last = now;
        if o.recent.iter().any(|(f, _)| *f == fp) {
            return Verdict::Repeat;
        }
        o.bucket.refill(now, l.burst, per_object_rate);
        self.total
            .refill(now, l.total_burst, f64::from(l.total_per_second));
        if o.bucket.tokens < 1.0 || self.total.tokens < 1.0 {
            return Verdict::RateLimited;
        }
        o.bucket.take();
        self.total.take();
        o.recent.push_back((fp, now));
        Verdict::Publish
    }

    /// Objects tracked (for tests and a memory bound).
    pub fn tracked(&self) -> usize {
        self.objects.len()
    }

    /// Forgets objects whose state no longer matters: no repeat to catch
    /// and a full bucket again.
    pub fn prune(&mut self, now: Duration) {
        let l = self.limits;
        let full_after = l.refill * l.burst;
        let keep = l.repeat_window.max(full_after);
        self.objects
            .retain(|_, o| now.saturating_sub(o.last) < keep);
    }
}

/// FNV-1a over reason and note: repeats are found without keeping the text.
fn fingerprint(reason: &str, note: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in reason.bytes().chain([0]).chain(note.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_repeat_within_the_window_is_dropped_and_published_after_it() {
        let mut l = Limiter::new(Limits::default());
        assert_eq!(l.admit(s(0.0), "a", "IPAllocated", "x"), Verdict::Publish);
        assert_eq!(l.admit(s(1.0), "a", "IPAllocated", "x"), Verdict::Repeat);
        assert_eq!(l.admit(s(599.0), "a", "IPAllocated", "x"), Verdict::Repeat);
        // Another object, or another note, is not a repeat.
        assert_eq!(l.admit(s(2.0), "b", "IPAllocated", "x"), Verdict::Publish);
        assert_eq!(l.admit(s(3.0), "a", "IPAllocated", "y"), Verdict::Publish);
        assert_eq!(l.admit(s(600.0), "a", "IPAllocated", "x"), Verdict::Publish);
    }

    #[test]
    fn an_object_gets_its_burst_then_one_per_refill() {
        let mut l = Limiter::new(Limits::default());
        for i in 0..5 {
            assert_eq!(
                l.admit(s(0.0), "a", "R", &format!("n{i}")),
                Verdict::Publish
            );
        }
        assert_eq!(l.admit(s(0.0), "a", "R", "n5"), Verdict::RateLimited);
        assert_eq!(l.admit(s(29.0), "a", "R", "n6"), Verdict::RateLimited);
        assert_eq!(l.admit(s(30.0), "a", "R", "n7"), Verdict::Publish);
        // A limited Event was not published, so it is no repeat later.
        assert_eq!(l.admit(s(60.0), "a", "R", "n5"), Verdict::Publish);
    }

    #[test]
    fn the_process_total_is_bounded_across_objects() {
        let mut l = Limiter::new(Limits::default());
        let published = (0..1500)
            .filter(|i| l.admit(s(0.0), &format!("svc{i}"), "IPAllocated", "x") == Verdict::Publish)
            .count();
        assert_eq!(published, 1000);
        // 10 per second after that.
        let later = (1500..1600)
            .filter(|i| l.admit(s(2.0), &format!("svc{i}"), "IPAllocated", "x") == Verdict::Publish)
            .count();
        assert_eq!(later, 20);
    }

    /// The case MetalLB users hit: ownership of 1,000 Services' addresses
    /// flapping every 300 ms for a minute (a flapping endpoint), the notes
    /// alternating between two nodes. The steady state afterwards adds none.
    #[test]
    fn a_flapping_endpoint_on_1000_services_stays_within_the_stated_bound() {
        let limits = Limits::default();
        let mut l = Limiter::new(limits);
        let mut published = 0u64;
        let mut per_object = HashMap::<usize, u64>::new();
        let mut t = 0.0;
        while t < 60.0 {
            for svc in 0..1000 {
                let node = if ((t / 0.3) as u64).is_multiple_of(2) {
                    "a"
                } else {
                    "b"
                };
                if l.admit(
                    s(t),
                    &format!("ns/svc{svc}"),
                    "Announcing",
                    &format!("node {node} announces 192.0.2.{} on eth0", svc % 250),
                ) == Verdict::Publish
                {
                    published += 1;
                    *per_object.entry(svc).or_default() += 1;
                }
            }
            t += 0.3;
        }
        // Two distinct notes per object: each is published once.
        assert!(per_object.values().all(|n| *n <= 2), "{per_object:?}");
        assert!(published <= limits.total_bound(s(60.0)));
        // The process bound, not the objects', is what held here.
        assert!(published >= 1500, "{published}");
        // Steady state: nothing new.
        let quiet = (0..1000)
            .filter(|svc| {
                l.admit(
                    s(61.0),
                    &format!("ns/svc{svc}"),
                    "Announcing",
                    &format!("node a announces 192.0.2.{} on eth0", svc % 250),
                ) == Verdict::Publish
            })
            .count();
        assert_eq!(quiet, 0);
    }

    #[test]
    fn notes_that_always_differ_are_bounded_per_object() {
        let limits = Limits::default();
        let mut l = Limiter::new(limits);
        let mut published = 0;
        for i in 0..6000 {
            let t = f64::from(i) * 0.01; // 100 per second for a minute
            if l.admit(s(t), "obj", "R", &format!("attempt {i}")) == Verdict::Publish {
                published += 1;
            }
        }
        assert!(published as u64 <= limits.per_object_bound(s(60.0)));
        assert_eq!(published, 5 + 1);
    }

    #[test]
    fn pruning_forgets_quiet_objects_and_keeps_live_ones() {
        let mut l = Limiter::new(Limits::default());
        l.admit(s(0.0), "old", "R", "x");
        l.admit(s(500.0), "new", "R", "x");
        l.prune(s(650.0));
        assert_eq!(l.tracked(), 1);
        assert_eq!(l.admit(s(651.0), "new", "R", "x"), Verdict::Repeat);
        assert_eq!(l.admit(s(651.0), "old", "R", "x"), Verdict::Publish);
    }
}
