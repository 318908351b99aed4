//! Whether this node's data path can carry traffic, from a health check
//! polled by the speaker (kube-proxy's `/healthz`): a pure gate that turns a
//! stream of probe results into a state that changes only after a failure
//! (or a recovery) has lasted long enough (docs/architecture.md, section 5).
//!
//! A node whose data path is down must not own addresses: traffic it
//! attracts with ARP/NDP would be dropped. The speaker then leaves the
//! membership gracefully, so the next node takes over before this one stops
//! answering, and re-joins once the check has passed for `up_after`.

use std::time::Duration;

/// The state of the data path as the gate reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthGate {
    down_after: Duration,
    up_after: Duration,
    healthy: bool,
    /// Start of the current run of results that disagree with `healthy`.
    since: Option<Duration>,
}

impl HealthGate {
    /// Starts healthy: a node is not taken out before a check has failed
    /// for `down_after`; it is back after passing for `up_after`.
    pub fn new(down_after: Duration, up_after: Duration) -> HealthGate {
        HealthGate {
            down_after,
            up_after,
            healthy: true,
            since: None,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// One probe result at `now` (a monotonic clock). Returns the new state
    /// when it changes.
    pub fn observe(&mut self, now: Duration, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let needed = if self.healthy {
            self.down_after
        } else {
            self.up_after
        };
        if now.saturating_sub(since) >= needed {
            self.healthy = ok;
            self.since = None;
            Some(ok)
        } else {
            None
        }
    }
}

/// Why this node stays out of the membership: out while any reason holds
/// (kube-proxy's health check failing, no interface with carrier to announce
/// on), back once none does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PauseReasons(std::collections::BTreeSet<&'static str>);

impl PauseReasons {
    /// Sets or clears `reason`; returns whether the node should be out when
    /// that changed.
    pub fn set(&mut self, reason: &'static str, on: bool) -> Option<bool> {
        let before = !self.0.is_empty();
        if on {
            self.0.insert(reason);
        } else {
            self.0.remove(reason);
        }
        let after = !self.0.is_empty();
        (before != after).then_some(after)
    }

    pub fn reasons(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().copied()
    }
}

/// The gate for carrier: an announcing interface that lost carrier takes
/// the node out at once (nothing it answers can reach it), and it is back
/// after carrier has held for 2 s (a flapping link does not flap ownership).
pub fn carrier_gate() -> HealthGate {
    HealthGate::new(Duration::ZERO, Duration::from_secs(2))
}

/// The `healthCheckNodePort` checks of one node: a [`HealthGate`] per
/// `Local` Service it probes (those it owns, and those it withdrew from, to
/// see them recover). A Service whose gate is down is withdrawn: the node
/// says so to its peers, and the election passes it over for that Service.
#[derive(Clone, Debug)]
pub struct ServiceGates<K: Ord + Clone> {
    down_after: Duration,
    up_after: Duration,
    gates: std::collections::BTreeMap<K, HealthGate>,
}

impl<K: Ord + Clone> ServiceGates<K> {
    pub fn new(down_after: Duration, up_after: Duration) -> ServiceGates<K> {
        ServiceGates {
            down_after,
            up_after,
            gates: Default::default(),
        }
    }

    /// One round of probes at `now`: per Service probed, `Some(ok)`, or
    /// `None` when there was nothing to judge (nothing listens on the port:
    /// kube-proxy does not serve it, or not yet). Services not in `results`
    /// are no longer probed and no longer withdrawn. Returns whether the
    /// withdrawn set changed.
    pub fn observe(
        &mut self,
        now: Duration,
        results: &std::collections::BTreeMap<K, Option<bool>>,
    ) -> bool {
        let before = self.withdrawn();
        self.gates.retain(|k, _| results.contains_key(k));
        for (k, result) in results {
            let gate = self
                .gates
                .entry(k.clone())
                .or_insert_with(|| HealthGate::new(self.down_after, self.up_after));
            if let Some(ok) = result {
                gate.observe(now, *ok);
            }
        }
        self.withdrawn() != before
    }

    pub fn withdrawn(&self) -> std::collections::BTreeSet<K> {
        self.gates
            .iter()
            .filter(|(_, g)| !g.healthy())
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_service_is_withdrawn_while_its_check_fails_and_back_after_recovery() {
        use std::collections::BTreeMap;
        let mut g: ServiceGates<&str> = ServiceGates::new(ms(500), ms(2000));
        let round =
            |web: Option<bool>, api: Option<bool>| BTreeMap::from([("web", web), ("api", api)]);
        assert!(!g.observe(ms(0), &round(Some(false), Some(true))));
        assert!(!g.observe(ms(400), &round(Some(false), None)));
        assert!(g.observe(ms(500), &round(Some(false), Some(true))));
        assert_eq!(g.withdrawn().into_iter().collect::<Vec<_>>(), ["web"]);
        // Nothing listening says nothing: still withdrawn.
        assert!(!g.observe(ms(1000), &round(None, Some(true))));
        assert!(!g.observe(ms(1100), &round(Some(true), Some(true))));
        assert!(!g.observe(ms(3000), &round(Some(true), Some(true))));
        assert!(g.observe(ms(3100), &round(Some(true), Some(true))));
        assert!(g.withdrawn().is_empty());
        // A Service no longer probed is forgotten, withdrawn or not.
        g.observe(ms(4000), &round(Some(false), Some(true)));
        g.observe(ms(4600), &round(Some(false), Some(true)));
        assert_eq!(g.withdrawn().len(), 1);
        assert!(g.observe(ms(4700), &BTreeMap::from([("api", Some(true))])));
        assert!(g.withdrawn().is_empty());
    }

    #[test]
    fn the_node_is_out_while_any_reason_holds() {
        let mut p = PauseReasons::default();
        assert_eq!(p.set("carrier", true), Some(true));
        assert_eq!(p.set("data_path", true), None, "already out");
        assert_eq!(p.set("carrier", false), None, "kube-proxy still fails");
        assert_eq!(p.reasons().collect::<Vec<_>>(), ["data_path"]);
        assert_eq!(p.set("data_path", false), Some(false));
        assert_eq!(p.set("data_path", false), None);
    }

    #[test]
    fn carrier_loss_counts_at_once_and_recovery_after_two_seconds() {
        let mut g = carrier_gate();
        assert_eq!(g.observe(ms(0), false), Some(false));
        assert_eq!(g.observe(ms(1000), true), None);
        // Flapping: the count starts again.
        assert_eq!(g.observe(ms(1300), false), None);
        assert_eq!(g.observe(ms(1600), true), None);
        assert_eq!(g.observe(ms(3599), true), None);
        assert_eq!(g.observe(ms(3600), true), Some(true));
    }

    #[test]
    fn a_failure_counts_only_once_it_lasts() {
        let mut g = HealthGate::new(ms(500), ms(2000));
        assert!(g.healthy());
        assert_eq!(g.observe(ms(0), false), None);
        assert_eq!(g.observe(ms(400), false), None);
        // A success in between starts the count again.
        assert_eq!(g.observe(ms(450), true), None);
        assert_eq!(g.observe(ms(500), false), None);
        assert_eq!(g.observe(ms(999), false), None);
        assert_eq!(g.observe(ms(1000), false), Some(false));
        assert!(!g.healthy());
        assert_eq!(g.observe(ms(1100), false), None);
    }

    #[test]
    fn recovery_needs_its_own_streak() {
        let mut g = HealthGate::new(ms(500), ms(2000));
        g.observe(ms(0), false);
        assert_eq!(g.observe(ms(500), false), Some(false));
        assert_eq!(g.observe(ms(600), true), None);
        assert_eq!(g.observe(ms(2500), false), None);
        assert_eq!(g.observe(ms(2600), true), None);
        assert_eq!(g.observe(ms(4599), true), None);
        assert_eq!(g.observe(ms(4600), true), Some(true));
        assert!(g.healthy());
    }

    #[test]
    fn flapping_faster_than_the_threshold_never_changes_the_state() {
        let mut g = HealthGate::new(ms(500), ms(2000));
        for i in 0..100u64 {
            // Down for 300 ms, up for 300 ms.
            let ok = (i / 3) % 2 == 1;
            assert_eq!(g.observe(ms(i * 100), ok), None, "at {i}");
        }
        assert!(g.healthy());
    }
}
