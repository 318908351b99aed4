//! The down reports in force and the cut they make (docs/membership.md,
//! "The agreement rule"), kept up to date report by report.
//!
//! A member receives every observer's reports, and in a partition that is
//! hundreds of alerts within a few heartbeat intervals, each over hundreds
//! of subjects. Recomputing the cut from all reports after each alert cost
//! `O(subjects × K log n)` per message; here one report changes the status
//! of its subject and, when the subject's own report count crosses the
//! implicit threshold, of the at most `K` members it observes: `O(K²)`.
//! A change of the member set marks everything stale and the next query
//! recomputes it once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::Topology;

/// Explicit reports an observer needs against itself before its own silence
/// counts as an implicit report about its subjects (Rapid's low watermark).
pub(super) const IMPLICIT_MIN: usize = 2;

/// Reports that must agree to remove a node with `observers` observers.
pub(super) fn threshold(observers: usize) -> usize {
    (observers * 3).div_ceil(4).max(1)
}

/// The reports against one subject.
#[derive(Debug, Default)]
struct Against {
    /// Observer -> the subject's incarnation it reported.
    by: BTreeMap<Arc<str>, u64>,
    /// The subject's observers in the current member set.
    observers: Vec<Arc<str>>,
    /// How many of `by` are among `observers`.
    explicit: usize,
}

/// Down reports in force and the cut they make.
#[derive(Debug, Default)]
pub(super) struct Reports {
    against: HashMap<Arc<str>, Against>,
    /// Members with at least one report from one of their observers.
    reported: BTreeSet<Arc<str>>,
    /// Members enough observers agree on.
    stable: BTreeSet<Arc<str>>,
    /// The member set changed since `observers`, `reported` and `stable`
    /// were computed.
    stale: bool,
}

impl Reports {
    /// Records `observer`'s report on `subject` (down with `incarnation`,
    /// or up). True if the reports changed.
    pub fn set(
        &mut self,
        topology: &Topology,
        subject: &str,
        observer: &str,
        incarnation: u64,
        down: bool,
    ) -> bool {
        let changed;
        let counts;
        match self.against.get_mut(subject) {
            Some(a) => {
                changed = if down {
                    a.by.insert(Arc::from(observer), incarnation).is_none()
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
                a.by.insert(Arc::from(observer), incarnation);
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
        *self = Reports::default();
    }

    /// The member set changed: observers are recomputed before the next
    /// query.
    pub fn members_changed(&mut self) {
        self.stale = true;
    }

    /// The members reported by at least one of their observers, and those
    /// enough observers agree on.
    pub fn cut(&mut self, topology: &Topology) -> (&BTreeSet<Arc<str>>, &BTreeSet<Arc<str>>) {
        if self.stale {
            self.rebuild(topology);
        }
        (&self.reported, &self.stable)
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
        for s in &subjects {
            self.status(s);
        }
    }

    /// `subject`'s report count changed: its own status, and that of the
    /// members it observes if its count crossed the implicit threshold.
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
        self.status(subject);
        if (before >= IMPLICIT_MIN) != (after >= IMPLICIT_MIN) {
            for s in topology.subjects(subject) {
                self.status(s);
            }
        }
    }

    /// Recomputes whether `subject` is reported and agreed on from the
    /// counts in force.
    fn status(&mut self, subject: &str) {
        let (reported, stable) = match self.against.get(subject) {
            Some(a) if a.explicit > 0 => {
                let implicit = a
                    .observers
                    .iter()
                    .filter(|o| {
                        !a.by.contains_key(*o)
                            && self
                                .against
                                .get(*o)
                                .is_some_and(|b| b.explicit >= IMPLICIT_MIN)
                    })
                    .count();
                (
                    true,
                    a.explicit + implicit >= threshold(a.observers.len()),
                )
            }
            _ => (false, false),
        };
        let key = || -> Arc<str> {
            self.against
                .get_key_value(subject)
                .map_or_else(|| Arc::from(subject), |(k, _)| k.clone())
        };
        match (reported, self.reported.contains(subject)) {
            (true, false) => {
                let k = key();
                self.reported.insert(k);
            }
            (false, true) => {
                self.reported.remove(subject);
            }
            _ => {}
        }
        match (stable, self.stable.contains(subject)) {
            (true, false) => {
                let k = key();
                self.stable.insert(k);
            }
            (false, true) => {
                self.stable.remove(subject);
            }
            _ => {}
        }
    }
}

/// `subject`'s observers as shared names (none for a non-member).
fn shared(topology: &Topology, subject: &str) -> Vec<Arc<str>> {
    topology.observers(subject).into_iter().map(Arc::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The cut recomputed from scratch, as the member did before reports
    /// were kept incrementally: the reference the fast path must match.
    fn reference(
        topology: &Topology,
        reports: &BTreeMap<String, BTreeSet<String>>,
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut explicit: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
        for (subject, by) in reports {
            let observers = topology.observers(subject);
            let n = by.iter().filter(|o| observers.contains(&o.as_str())).count();
            if n > 0 {
                explicit.insert(subject.as_str(), (n, observers));
            }
        }
        let (mut reported, mut stable) = (BTreeSet::new(), BTreeSet::new());
        for (subject, (n, observers)) in &explicit {
            reported.insert((*subject).to_owned());
            let by = &reports[*subject];
            let implicit = observers
                .iter()
                .filter(|o| {
                    !by.contains(**o) && explicit.get(**o).is_some_and(|(m, _)| *m >= IMPLICIT_MIN)
                })
                .count();
            if n + implicit >= threshold(observers.len()) {
                stable.insert((*subject).to_owned());
            }
        }
        (reported, stable)
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
            let mut fast = Reports::default();
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
                        let changed = fast.set(&topology, subject, &observer, 1, down);
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
                let (reported, stable) = fast.cut(&topology);
                let (r, s) = reference(&topology, &slow);
                prop_assert_eq!(owned(reported), r);
                prop_assert_eq!(owned(stable), s);
            }
        }
    }

    #[test]
    fn three_quarters_of_the_observers_make_a_cut() {
        let all = names(20);
        let topology = Topology::new(all.clone(), 8);
        let mut r = Reports::default();
        let subject = &all[3];
        let observers: Vec<String> = topology
            .observers(subject)
            .into_iter()
            .map(String::from)
            .collect();
        let need = threshold(observers.len());
        for (i, o) in observers.iter().enumerate() {
            r.set(&topology, subject, o, 1, true);
            let (reported, stable) = r.cut(&topology);
            assert!(reported.contains(subject.as_str()));
            assert_eq!(stable.contains(subject.as_str()), i + 1 >= need, "{i}");
        }
        // One observer takes its report back: below the threshold again
        // only if it had exactly enough.
        r.set(&topology, subject, &observers[0], 1, false);
        let (_, stable) = r.cut(&topology);
        assert_eq!(
            stable.contains(subject.as_str()),
            observers.len() > need
        );
    }
}
