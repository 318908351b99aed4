//! The down reports in force and the cut they make (docs/membership.md,
//! "The agreement rule"), kept up to date report by report.
//!
//! A member receives every observer's reports, and in a partition that is
//! hundreds of alerts within a few heartbeat intervals, each over hundreds
//! of subjects. Recomputing the cut from all reports after each alert cost
//! `O(subjects × K log n)` per message; here one report changes the status
//! of its subject and, when the subject's own report count crosses the
//! implicit threshold or goes from or to none, of the at most `K` members
//! it observes: `O(K²)`.
//! A change of the member set marks everything stale and the next query
//! recomputes it once.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Topology;

/// Explicit reports an observer needs against itself before its own silence
/// counts as an implicit report about its subjects (Rapid's low watermark).
pub(super) const IMPLICIT_MIN: usize = 2;

/// Reports that must agree to remove a node with `observers` observers.
pub(super) fn threshold(observers: usize) -> usize {
    (observers * 3).div_ceil(4).max(1)
}

/// What [`Reports::cut`] returns: reported, agreed on, unwatched.
pub(super) type Cut<'a> = (
    &'a BTreeSet<Arc<str>>,
    &'a BTreeSet<Arc<str>>,
    &'a BTreeSet<Arc<str>>,
);

/// The reports against one subject.
#[derive(Debug, Default)]
struct Against {
    /// Observer -> the subject's incarnation it reported, and when it
    /// last said so.
    by: BTreeMap<Arc<str>, (u64, Instant)>,
    /// The subject's observers in the current member set.
    observers: Vec<Arc<str>>,
    /// How many of `by` are among `observers`.
    explicit: usize,
}

/// Down reports in force and the cut they make.
#[derive(Debug, Default)]
pub(super) struct Reports {
    /// This node: it never counts itself as unwatched.
    me: Arc<str>,
    against: HashMap<Arc<str>, Against>,
    /// Members with at least one report from one of their observers, and
    /// the unwatched.
    reported: BTreeSet<Arc<str>>,
    /// Members enough observers agree on.
    stable: BTreeSet<Arc<str>>,
    /// The members counted as reported although no observer reports them:
    /// all their observers are reported instead (some are also `stable`).
    unwatched: BTreeSet<Arc<str>>,
    /// The member set changed since `observers` and the three sets were
    /// computed.
    stale: bool,
}

impl Reports {
    pub fn new(me: &str) -> Reports {
        Reports {
            me: Arc::from(me),
            ..Reports::default()
        }
    }

    /// Records `observer`'s report on `subject` (down with `incarnation`,
    /// or up), heard at `now`. True if the reports changed (a repeated
    /// down report only refreshes it).
    pub fn set(
        &mut self,
        topology: &Topology,
        subject: &str,
        observer: &str,
        incarnation: u64,
        down: bool,
        now: Instant,
    ) -> bool {
        let changed;
        let counts;
        match self.against.get_mut(subject) {
            Some(a) => {
                changed = if down {
                    a.by.insert(Arc::from(observer), (incarnation, now))
                        .is_none()
                } else {
                    a.by.remove(observer).is_some()
                };
                counts = a.observers.iter().any(|o| &**o == observer);
                if a.by.is_empty() {
                    self.against.remove(subject);
                }
            }
            None if down => {
                let observers: Vec<Arc<str>> = if self.stale {
                    Vec::new()
                } else {
                    shared(topology, subject)
                };
                counts = observers.iter().any(|o| &**o == observer);
                let mut a = Against {
                    observers,
                    ..Against::default()
                };
                a.by.insert(Arc::from(observer), (incarnation, now));
                self.against.insert(Arc::from(subject), a);
                changed = true;
            }
            None => return false,
        }
        if changed && counts && !self.stale {
            self.recount(topology, subject);
        }
        changed
    }

    /// Whether an observer other than this node said `subject` was down
    /// at or after `since`.
    pub fn reported_by_another(&self, subject: &str, since: Instant) -> bool {
        self.against.get(subject).is_some_and(|a| {
            a.by.iter()
                .any(|(o, (_, at))| *o != self.me && *at >= since)
        })
    }

    /// Forgets down reports of observers other than this node not repeated
    /// for `ttl` (observers repeat theirs while in force): the up report
    /// that ended one may have been lost. True if any went.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> bool {
        let me = &self.me;
        let mut gone = false;
        for a in self.against.values_mut() {
            a.by.retain(|o, (_, at)| {
                let keep = o == me || now.saturating_duration_since(*at) < ttl;
                gone |= !keep;
                keep
            });
        }
        if gone {
            self.against.retain(|_, a| !a.by.is_empty());
            self.stale = true;
        }
        gone
    }

    /// Forgets the reports on `name` (it joined under a new incarnation).
    pub fn forget_subject(&mut self, name: &str) {
        self.against.remove(name);
        self.stale = true;
    }

    /// Forgets every report on `name` and every report `name` made (it
    /// left the member set).
    pub fn forget(&mut self, name: &str) {
        self.against.remove(name);
        for a in self.against.values_mut() {
            a.by.remove(name);
        }
        self.against.retain(|_, a| !a.by.is_empty());
        self.stale = true;
    }

    pub fn clear(&mut self) {
        *self = Reports::new(&self.me);
    }

    /// The member set changed: observers are recomputed before the next
    /// query.
    pub fn members_changed(&mut self) {
        self.stale = true;
    }

    /// The members reported by at least one of their observers (or
    /// agreed on), those agreed on, and those agreed on only because every
    /// observer of theirs is reported.
    pub fn cut(&mut self, topology: &Topology) -> Cut<'_> {
        if self.stale {
            self.rebuild(topology);
        }
        (&self.reported, &self.stable, &self.unwatched)
    }

    fn rebuild(&mut self, topology: &Topology) {
        self.stale = false;
        let subjects: Vec<Arc<str>> = self.against.keys().cloned().collect();
        for s in &subjects {
            let observers = shared(topology, s);
            let a = self.against.get_mut(s).expect("a subject");
            a.explicit = observers.iter().filter(|o| a.by.contains_key(*o)).count();
            a.observers = observers;
        }
        self.reported.clear();
        self.stable.clear();
        self.unwatched.clear();
        let mut all: BTreeSet<&str> = subjects.iter().map(|s| &**s).collect();
        for s in &subjects {
            if self.against[s].explicit > 0 {
                all.extend(topology.subjects(s));
            }
        }
        for s in all {
            self.status(topology, s);
        }
    }

    /// `subject`'s report count changed: its own status, and that of the
    /// members it observes if its count crossed the implicit threshold or
    /// went from or to none.
    fn recount(&mut self, topology: &Topology, subject: &str) {
        let (before, after) = match self.against.get_mut(subject) {
            Some(a) => {
                let before = a.explicit;
                a.explicit = a.observers.iter().filter(|o| a.by.contains_key(*o)).count();
                (before, a.explicit)
            }
            // Its last report went: it was counted with one at most.
            None => (1, 0),
        };
        self.status(topology, subject);
        if (before >= IMPLICIT_MIN) != (after >= IMPLICIT_MIN) || (before > 0) != (after > 0) {
            for s in topology.subjects(subject) {
                self.status(topology, s);
            }
        }
    }

    /// Recomputes whether `subject` is reported and agreed on from the
    /// counts in force. A member that none of its observers reports, but
    /// every one of whose observers is itself reported, is *unwatched*: no
    /// node on this side of a partition watches it, so nothing here says
    /// it is alive. It counts as reported (for fencing); it is agreed on
    /// (removed) only if each of its observers is reported by two or more
    /// of theirs (one report each is not enough: a node that hears nothing
    /// reports all its subjects, and a member observed only by those would
    /// be removed).
    fn status(&mut self, topology: &Topology, subject: &str) {
        let implicit = |a: Option<&Against>, observers: &[Arc<str>], min: usize| {
            observers
                .iter()
                .filter(|o| {
                    a.is_none_or(|a| !a.by.contains_key(*o))
                        && self.against.get(*o).is_some_and(|b| b.explicit >= min)
                })
                .count()
        };
        let (reported, stable, unwatched) = match self.against.get(subject) {
            Some(a) if a.explicit > 0 => (
                true,
                a.explicit + implicit(Some(a), &a.observers, IMPLICIT_MIN)
                    >= threshold(a.observers.len()),
                false,
            ),
            a => {
                let observers = match a {
                    Some(a) => Cow::Borrowed(&a.observers),
                    None => Cow::Owned(shared(topology, subject)),
                };
                let all_reported = |min| {
                    subject != &*self.me
                        && !observers.is_empty()
                        && implicit(a, &observers, min) == observers.len()
                };
                let unwatched = all_reported(1);
                (
                    unwatched,
                    unwatched && all_reported(IMPLICIT_MIN),
                    unwatched,
                )
            }
        };
        let key = || {
            self.against
                .get_key_value(subject)
                .map_or_else(|| Arc::from(subject), |(k, _)| k.clone())
        };
        for (set, member) in [
            (&mut self.reported, reported),
            (&mut self.stable, stable),
            (&mut self.unwatched, unwatched),
        ] {
            if !member {
                set.remove(subject);
            } else if !set.contains(subject) {
                set.insert(key());
            }
        }
    }
}

/// `subject`'s observers as shared names (none for a non-member).
fn shared(topology: &Topology, subject: &str) -> Vec<Arc<str>> {
    topology
        .observers(subject)
        .into_iter()
        .map(Arc::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The cut recomputed from scratch, as the member did before reports
    /// were kept incrementally: the reference the fast path must match.
    fn reference(
        me: &str,
        topology: &Topology,
        reports: &BTreeMap<String, BTreeSet<String>>,
    ) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
        let mut explicit: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
        for (subject, by) in reports {
            let observers = topology.observers(subject);
            let n = by
                .iter()
                .filter(|o| observers.contains(&o.as_str()))
                .count();
            if n > 0 {
                explicit.insert(subject.as_str(), (n, observers));
            }
        }
        let (mut reported, mut stable, mut unwatched_set) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let none = BTreeSet::new();
        for subject in topology.members() {
            let n = explicit.get(subject).map_or(0, |(n, _)| *n);
            let observers = topology.observers(subject);
            let by = reports.get(subject).unwrap_or(&none);
            let implicit = observers
                .iter()
                .filter(|o| {
                    !by.contains(**o) && explicit.get(**o).is_some_and(|(m, _)| *m >= IMPLICIT_MIN)
                })
                .count();
            let all_reported = |min: usize| {
                subject != me
                    && !observers.is_empty()
                    && observers.iter().all(|o| {
                        !by.contains(*o) && explicit.get(o).is_some_and(|(m, _)| *m >= min)
                    })
            };
            let unwatched = n == 0 && all_reported(1);
            let agreed = if n > 0 {
                n + implicit >= threshold(observers.len())
            } else {
                all_reported(IMPLICIT_MIN)
            };
            if n > 0 || unwatched {
                reported.insert(subject.to_owned());
            }
            if agreed {
                stable.insert(subject.to_owned());
            }
            if unwatched {
                unwatched_set.insert(subject.to_owned());
            }
        }
        (reported, stable, unwatched_set)
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:03}")).collect()
    }

    fn owned(s: &BTreeSet<Arc<str>>) -> BTreeSet<String> {
        s.iter().map(|n| n.to_string()).collect()
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Observer index (into the subject's observers, or any member when
        /// out of range), subject, down.
        Report(usize, usize, bool),
        /// A member leaves the member set.
        Remove(usize),
        /// A removed member comes back.
        Add(usize),
    }

    fn step(n: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0..12usize, 0..n, prop::bool::weighted(0.8))
                .prop_map(|(o, s, d)| Step::Report(o, s, d)),
            1 => (0..n).prop_map(Step::Remove),
            1 => (0..n).prop_map(Step::Add),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// After every step, the incremental cut equals the cut recomputed
        /// from all reports in force.
        #[test]
        fn incremental_cut_matches_recomputing_it(
            n in 5usize..40,
            steps in prop::collection::vec(step(40), 1..200),
        ) {
            let all = names(n);
            let mut topology = Topology::new(all.clone(), 8);
            let mut fast = Reports::new(&all[0]);
            let t0 = Instant::now();
            let mut slow: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Report(o, subject, down) => {
                        let subject = &all[subject % n];
                        if !topology.contains(subject) {
                            continue;
                        }
                        let observers = topology.observers(subject);
                        let observer = observers
                            .get(o)
                            .map(|o| o.to_string())
                            .unwrap_or_else(|| all[o % n].clone());
                        if observer == *subject {
                            continue;
                        }
                        let changed = fast.set(&topology, subject, &observer, 1, down, t0);
                        let by = slow.entry(subject.clone()).or_default();
                        let was = if down {
                            by.insert(observer)
                        } else {
                            by.remove(&observer)
                        };
                        if by.is_empty() {
                            slow.remove(subject);
                        }
                        prop_assert_eq!(changed, was);
                    }
                    Step::Remove(i) => {
                        let name = &all[i % n];
                        if topology.len() > 3 && topology.remove(name) {
                            fast.forget(name);
                            slow.remove(name);
                            for by in slow.values_mut() {
                                by.remove(name);
                            }
                            slow.retain(|_, by| !by.is_empty());
                        }
                    }
                    Step::Add(i) => {
                        if topology.insert(&Arc::from(all[i % n].as_str())) {
                            fast.members_changed();
                        }
                    }
                }
                let (reported, stable, unwatched) = fast.cut(&topology);
                let (r, s, u) = reference(&all[0], &topology, &slow);
                prop_assert_eq!(owned(reported), r);
                prop_assert_eq!(owned(stable), s);
                prop_assert_eq!(owned(unwatched), u);
            }
        }
    }

    #[test]
    fn three_quarters_of_the_observers_make_a_cut() {
        let all = names(20);
        let topology = Topology::new(all.clone(), 8);
        let mut r = Reports::new("not-a-member");
        let t0 = Instant::now();
        let subject = &all[3];
        let observers: Vec<String> = topology
            .observers(subject)
            .into_iter()
            .map(String::from)
            .collect();
        let need = threshold(observers.len());
        for (i, o) in observers.iter().enumerate() {
            r.set(&topology, subject, o, 1, true, t0);
            let (reported, stable, _) = r.cut(&topology);
            assert!(reported.contains(subject.as_str()));
            assert_eq!(stable.contains(subject.as_str()), i + 1 >= need, "{i}");
        }
        // One observer takes its report back: below the threshold again
        // only if it had exactly enough.
        r.set(&topology, subject, &observers[0], 1, false, t0);
        let (_, stable, _) = r.cut(&topology);
        assert_eq!(stable.contains(subject.as_str()), observers.len() > need);
    }
}

#[cfg(test)]
mod expiry {
    use super::*;

    #[test]
    fn a_report_not_repeated_expires_but_this_nodes_own_stays() {
        let all: Vec<String> = (0..20).map(|i| format!("node-{i:03}")).collect();
        let topology = Topology::new(all.clone(), 8);
        let subject = &all[5];
        let observers = topology.observers(subject);
        let (me, other) = (observers[0], observers[1]);
        let t0 = Instant::now();
        let ttl = Duration::from_millis(1500);
        let mut r = Reports::new(me);
        r.set(&topology, subject, me, 1, true, t0);
        r.set(&topology, subject, other, 1, true, t0);
        assert!(r.reported_by_another(subject, t0));
        // Repeated: a refresh, not a change, and it stays in force.
        assert!(!r.set(&topology, subject, other, 1, true, t0 + ttl / 2));
        assert!(!r.expire(t0 + ttl, ttl));
        assert!(r.reported_by_another(subject, t0));
        assert!(r.expire(t0 + ttl * 2, ttl));
        assert!(!r.reported_by_another(subject, t0));
        let (reported, _, _) = r.cut(&topology);
        assert!(
            reported.contains(subject.as_str()),
            "this node's own report stays"
        );
    }
}
