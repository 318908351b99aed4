//! Who watches whom (docs/membership.md, "Topology"): `K` pseudo-random
//! rings over the members; on each ring a member's successor observes it.
//!
//! Every member computes the same rings from the same member list, so the
//! observers of a node are agreed without any message. Each node has at
//! most `K` observers and at most `K` subjects whatever the cluster size,
//! and adding or removing one member changes at most `2K` edges. With
//! `n - 1 <= K` every member observes every other one.

use std::collections::BTreeSet;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

/// The position of `name` on ring `ring`: FNV-1a over the name, mixed
/// with the ring index by splitmix64. Fixed forever: every speaker version
/// must place nodes the same way.
pub fn position(name: &str, ring: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h ^ (u64::from(ring) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// splitmix64's finaliser: a bijective mix of 64 bits.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rings over one member list, kept up to date member by member: a
/// change costs `O(K log n)`.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    k: usize,
    /// Names are shared (`Arc`): the simulator keeps thousands of these.
    members: BTreeSet<Arc<str>>,
    /// Per ring: (position, name) in ring order.
    rings: Vec<BTreeSet<(u64, Arc<str>)>>,
}

impl Topology {
    /// The rings over `members` (duplicates are ignored) with `k` rings.
    pub fn new<I, S>(members: I, k: usize) -> Topology
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut t = Topology::empty(k);
        for m in members {
            t.insert(&Arc::from(m.into()));
        }
        t
    }

    /// No members yet, `k` rings.
    pub fn empty(k: usize) -> Topology {
        Topology {
            k,
            members: BTreeSet::new(),
            rings: (0..k).map(|_| BTreeSet::new()).collect(),
        }
    }

    /// Adds a member; false if it was one.
    pub fn insert(&mut self, name: &Arc<str>) -> bool {
        if !self.members.insert(name.clone()) {
            return false;
        }
        for (r, ring) in self.rings.iter_mut().enumerate() {
            ring.insert((position(name, r as u32), name.clone()));
        }
        true
    }

    /// Removes a member; false if it was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(name) = self.members.take(name) else {
            return false;
        };
        for (r, ring) in self.rings.iter_mut().enumerate() {
            ring.remove(&(position(&name, r as u32), name.clone()));
        }
        true
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains(name)
    }

    /// The members, sorted by name.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| &**m)
    }

    /// The member whose name sorts first.
    pub fn lowest(&self) -> Option<&str> {
        self.members.first().map(|m| &**m)
    }

    fn neighbours(&self, name: &str, forward: bool) -> Vec<&str> {
        let Some(name) = self.members.get(name) else {
            return Vec::new();
        };
        let mut out: Vec<&str> = Vec::with_capacity(self.k);
        if self.members.len() <= self.k + 1 {
            // Every member observes every other one.
            out.extend(self.members.iter().map(|m| &**m).filter(|m| *m != &**name));
            return out;
        }
        for (r, ring) in self.rings.iter().enumerate() {
            let at = (position(name, r as u32), name.clone());
            let next = if forward {
                ring.range((Excluded(&at), Unbounded))
                    .next()
                    .or_else(|| ring.first())
            } else {
                ring.range((Unbounded, Excluded(&at)))
                    .next_back()
                    .or_else(|| ring.last())
            };
            if let Some((_, other)) = next
                && other != name
                && !out.contains(&&**other)
            {
                out.push(other);
            }
        }
        out
    }

    /// The members that watch `name` (its successor on each ring),
    /// distinct, never `name` itself; empty if `name` is not a member.
    pub fn observers(&self, name: &str) -> Vec<&str> {
        self.neighbours(name, true)
    }

    /// The members `name` watches (its predecessor on each ring).
    pub fn subjects(&self, name: &str) -> Vec<&str> {
        self.neighbours(name, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    #[test]
    fn small_clusters_observe_everyone() {
        let t = Topology::new(names(3), 8);
        assert_eq!(t.observers("node-0000"), vec!["node-0001", "node-0002"]);
        assert_eq!(t.subjects("node-0001"), vec!["node-0000", "node-0002"]);
        assert!(t.observers("stranger").is_empty());
        let one = Topology::new(names(1), 8);
        assert!(one.observers("node-0000").is_empty());
    }

    #[test]
    fn observer_and_subject_are_inverse_and_bounded() {
        for n in [10, 11, 50, 300] {
            let t = Topology::new(names(n), 8);
            let mut in_degree: BTreeMap<&str, usize> = BTreeMap::new();
            for s in t.members() {
                let obs = t.observers(s);
                assert!(!obs.is_empty() && obs.len() <= 8, "{n}: {s} has {obs:?}");
                assert!(!obs.contains(&s));
                for o in obs {
                    assert!(t.subjects(o).contains(&s), "{o} watches {s}");
                    *in_degree.entry(o).or_default() += 1;
                }
            }
            assert!(in_degree.values().all(|&d| d <= 8));
        }
    }

    #[test]
    fn the_rings_depend_only_on_the_member_set() {
        let mut shuffled = names(40);
        shuffled.reverse();
        let (a, b) = (Topology::new(names(40), 8), Topology::new(shuffled, 8));
        for s in a.members() {
            assert_eq!(a.observers(s), b.observers(s));
        }
    }

    #[test]
    fn one_departure_changes_few_edges() {
        let all = names(200);
        let a = Topology::new(all.clone(), 8);
        let mut b = a.clone();
        b.remove("node-0007");
        assert_eq!(
            b.members().collect::<Vec<_>>(),
            Topology::new(all.iter().filter(|n| *n != "node-0007").cloned(), 8)
                .members()
                .collect::<Vec<_>>()
        );
        let changed = all
            .iter()
            .filter(|s| *s != "node-0007")
            .filter(|s| a.observers(s) != b.observers(s))
            .count();
        // Only the departed node's subjects get a new observer on a ring.
        assert!(changed <= 8, "{changed} nodes changed observers");
    }
}
