//! The controller's Prometheus metrics (served by `ferrolb_runtime::serve`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use ferrolb_core::PoolStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub addresses_total: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    pub addresses_in_use: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    pub allocations: Counter,
    pub allocation_failures: Family<ReasonLabel, Counter>,
    pub config_stale: Gauge,
    pub config_loaded: Gauge,
    pub reconcile_duration: Histogram,
    pub is_leader: Gauge,
    pub api_errors: Family<ReasonLabel, Counter>,
    /// Events not published: `repeat` or `rate_limited` (core::events).
    pub events_suppressed: Family<ReasonLabel, Counter>,
    pub stale_writes: Counter,
    pub pending_services: Gauge,
    pub ready: AtomicBool,
    /// The same facts under MetalLB's names, when turned on.
    metallb: Option<MetalLbMetrics>,
}

/// The controller's metrics under MetalLB's names and labels (v0.14), so
/// that MetalLB dashboards and alerts keep working.
struct MetalLbMetrics {
    addresses_total: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    addresses_in_use: Family<PoolLabel, Gauge<f64, AtomicU64>>,
    /// By family: [IPv4, IPv6].
    family_total: [Family<PoolLabel, Gauge<f64, AtomicU64>>; 2],
    family_in_use: [Family<PoolLabel, Gauge<f64, AtomicU64>>; 2],
    config_loaded: Gauge,
    config_stale: Gauge,
}

impl Metrics {
    /// The `ferrolb_` metrics, and with `metallb_names` the MetalLB ones too.
    pub fn new(metallb_names: bool) -> Arc<Metrics> {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ferrolb");
        let m = Metrics {
            addresses_total: Family::default(),
            addresses_in_use: Family::default(),
            allocations: Counter::default(),
            allocation_failures: Family::default(),
            config_stale: Gauge::default(),
            config_loaded: Gauge::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            is_leader: Gauge::default(),
            api_errors: Family::default(),
            events_suppressed: Family::default(),
            stale_writes: Counter::default(),
            pending_services: Gauge::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
            metallb: None,
        };
        registry.register(
            "addresses",
            "Usable addresses per pool",
            m.addresses_total.clone(),
        );
        registry.register(
            "addresses_in_use",
            "Addresses held by Services per pool (a shared address counts once)",
            m.addresses_in_use.clone(),
        );
        registry.register(
            "allocations",
            "Addresses assigned to Services",
            m.allocations.clone(),
        );
        registry.register(
            "allocation_failures",
            "Failed allocations by reason",
            m.allocation_failures.clone(),
        );
        registry.register(
            "config_stale",
            "1 while the ConfigMap's content is not in force (invalid, missing or refused)",
            m.config_stale.clone(),
        );
        registry.register(
            "config_loaded",
            "1 once a config has been loaded",
            m.config_loaded.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to process one watch event",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "is_leader",
            "1 while this replica holds the leader lease and writes",
            m.is_leader.clone(),
        );
        registry.register(
            "api_errors",
            "Failed API calls by kind",
            m.api_errors.clone(),
        );
        registry.register(
            "events_suppressed",
            "Events not published because the same one was published for the object within 10 minutes (repeat) or the object or process used up its allowance (rate_limited); the log line is written either way",
            m.events_suppressed.clone(),
        );
        registry.register(
            "stale_status_writes",
            "Status writes dropped because their Service object was deleted (and perhaps created again under the same name) while the write was in flight",
            m.stale_writes.clone(),
        );
        registry.register(
            "pending_services",
            "Handled Services without an address",
            m.pending_services.clone(),
        );
        let metallb = metallb_names.then(|| {
            let r = root.sub_registry_with_prefix("metallb");
            let ml = MetalLbMetrics {
                addresses_total: Family::default(),
                addresses_in_use: Family::default(),
                family_total: [Family::default(), Family::default()],
                family_in_use: [Family::default(), Family::default()],
                config_loaded: Gauge::default(),
                config_stale: Gauge::default(),
            };
            r.register(
                "allocator_addresses_total",
                "Number of usable IP addresses, per pool",
                ml.addresses_total.clone(),
            );
            r.register(
                "allocator_addresses_in_use_total",
                "Number of IP addresses in use, per pool",
                ml.addresses_in_use.clone(),
            );
            for (i, fam) in ["ipv4", "ipv6"].iter().enumerate() {
                r.register(
                    format!("allocator_{fam}_addresses_total"),
                    format!("Number of usable {fam} addresses, per pool"),
                    ml.family_total[i].clone(),
                );
                r.register(
                    format!("allocator_{fam}_addresses_in_use_total"),
                    format!("Number of {fam} addresses in use, per pool"),
                    ml.family_in_use[i].clone(),
                );
            }
            r.register(
                "k8s_client_config_loaded_bool",
                "1 if the config was ever loaded",
                ml.config_loaded.clone(),
            );
            r.register(
                "k8s_client_config_stale_bool",
                "1 if running on a stale config because the latest config failed to load",
                ml.config_stale.clone(),
            );
            ml
        });
        Arc::new(Metrics {
            registry: root,
            metallb,
            ..m
        })
    }

    /// The config's state: loaded at least once, and whether the latest is not in force.
    pub fn set_config(&self, loaded: bool, stale: bool) {
        self.config_loaded.set(i64::from(loaded));
        self.config_stale.set(i64::from(stale));
        if let Some(ml) = &self.metallb {
            ml.config_loaded.set(i64::from(loaded));
            ml.config_stale.set(i64::from(stale));
        }
    }

    pub fn set_pools(&self, stats: &[PoolStats]) {
        self.addresses_total.clear();
        self.addresses_in_use.clear();
        if let Some(ml) = &self.metallb {
            ml.addresses_total.clear();
            ml.addresses_in_use.clear();
            ml.family_total.iter().for_each(Family::clear);
            ml.family_in_use.iter().for_each(Family::clear);
        }
        for s in stats {
            let label = PoolLabel {
                pool: s.name.clone(),
            };
            self.addresses_total
                .get_or_create(&label)
                .set(s.total as f64);
            self.addresses_in_use
                .get_or_create(&label)
                .set(s.in_use as f64);
            if let Some(ml) = &self.metallb {
                ml.addresses_total.get_or_create(&label).set(s.total as f64);
                ml.addresses_in_use
                    .get_or_create(&label)
                    .set(s.in_use as f64);
                for (i, (total, in_use)) in [(s.total_v4, s.in_use_v4), (s.total_v6, s.in_use_v6)]
                    .into_iter()
                    .enumerate()
                {
                    ml.family_total[i].get_or_create(&label).set(total as f64);
                    ml.family_in_use[i].get_or_create(&label).set(in_use as f64);
                }
            }
        }
    }

    pub fn event_suppressed(&self, why: &str) {
        self.events_suppressed
            .get_or_create(&ReasonLabel {
                reason: why.to_owned(),
            })
            .inc();
    }

    pub fn api_error(&self, kind: &str) {
        self.api_errors
            .get_or_create(&ReasonLabel {
                reason: kind.to_owned(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        ferrolb_runtime::serve::encode(&self.registry)
    }
}

impl ferrolb_runtime::events::Counters for Metrics {
    fn api_error(&self, what: &str) {
        Metrics::api_error(self, what)
    }
    fn event_suppressed(&self, why: &str) {
        Metrics::event_suppressed(self, why)
    }
}

impl ferrolb_runtime::serve::Exposed for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
    fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn not_ready(&self) -> &'static str {
        "the first full sync has not finished"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Vec<PoolStats> {
        vec![PoolStats {
            name: "lab".into(),
            total: 22,
            in_use: 3,
            total_v4: 11,
            total_v6: 11,
            in_use_v4: 2,
            in_use_v6: 1,
        }]
    }

    #[test]
    fn metallb_names_carry_the_same_facts() {
        let m = Metrics::new(true);
        m.set_pools(&stats());
        m.set_config(true, false);
        let text = m.encode();
        for line in [
            "ferrolb_addresses{pool=\"lab\"} 22",
            "ferrolb_addresses_in_use{pool=\"lab\"} 3",
            "metallb_allocator_addresses_total{pool=\"lab\"} 22",
            "metallb_allocator_addresses_in_use_total{pool=\"lab\"} 3",
            "metallb_allocator_ipv4_addresses_total{pool=\"lab\"} 11",
            "metallb_allocator_ipv4_addresses_in_use_total{pool=\"lab\"} 2",
            "metallb_allocator_ipv6_addresses_total{pool=\"lab\"} 11",
            "metallb_allocator_ipv6_addresses_in_use_total{pool=\"lab\"} 1",
            "metallb_k8s_client_config_loaded_bool 1",
            "metallb_k8s_client_config_stale_bool 0",
            "ferrolb_config_loaded 1",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} missing:\n{text}"
            );
        }
        // A pool gone from the config is gone from both.
        m.set_pools(&[]);
        assert!(!m.encode().contains("pool=\"lab\""));
    }

    #[test]
    fn metallb_names_can_be_turned_off() {
        let m = Metrics::new(false);
        m.set_pools(&stats());
        assert!(!m.encode().contains("metallb_"));
        assert!(m.encode().contains("ferrolb_addresses{pool=\"lab\"} 22"));
    }
}
