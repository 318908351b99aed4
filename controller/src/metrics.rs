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
    pub stale_writes: Counter,
    pub pending_services: Gauge,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ferrolb");
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
            stale_writes: Counter::default(),
            pending_services: Gauge::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
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
            "stale_status_writes",
            "Status writes dropped because their Service object was deleted (and perhaps created again under the same name) while the write was in flight",
            m.stale_writes.clone(),
        );
        registry.register(
            "pending_services",
            "Handled Services without an address",
            m.pending_services.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn set_pools(&self, stats: &[PoolStats]) {
        self.addresses_total.clear();
        self.addresses_in_use.clear();
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
        }
    }

    pub fn api_error(&self, kind: &str) {
        self.api_errors
            .get_or_create(&ReasonLabel {
                reason: kind.to_owned(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
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
