//! The speaker's Prometheus metrics (docs/architecture.md, section 7), served by
//! `ferrolb_runtime::serve` as the controller's are.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::announcer::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// `gained` or `lost`.
    pub change: String,
}

pub struct Metrics {
    registry: Registry,
    pub announcer: Arc<Stats>,
    pub ownership_changes: Family<ChangeLabel, Counter>,
    pub announced_addresses: Gauge,
    pub members_alive: Gauge,
    pub fenced: Gauge,
    pub membership_stalls: Counter,
    pub membership_packets_sent: Counter,
    pub membership_packets_received: Counter,
    pub membership_auth_failures: Family<ReasonLabel, Counter>,
    pub config_stale: Gauge,
    pub data_path_healthy: Gauge,
    pub api_errors: Family<ReasonLabel, Counter>,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ferrolb");
        let m = Metrics {
            announcer: Arc::default(),
            ownership_changes: Family::default(),
            announced_addresses: Gauge::default(),
            members_alive: Gauge::default(),
            fenced: Gauge::default(),
            membership_stalls: Counter::default(),
            membership_packets_sent: Counter::default(),
            membership_packets_received: Counter::default(),
            membership_auth_failures: Family::default(),
            config_stale: Gauge::default(),
            data_path_healthy: Gauge::default(),
            api_errors: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        let a = &m.announcer;
        registry.register(
            "requests_received",
            "ARP requests and neighbour solicitations received for an address this node announces, by address and protocol",
            a.requests_received.clone(),
        );
        registry.register(
            "requests_answered",
            "ARP replies and neighbour advertisements sent in answer, by address and protocol",
            a.requests_answered.clone(),
        );
        registry.register(
            "requests_seen",
            "ARP requests and neighbour solicitations seen for any address, by protocol",
            a.requests_seen.clone(),
        );
        registry.register(
            "gratuitous_sent",
            "Gratuitous ARP (request and reply form) and unsolicited NA sent",
            a.gratuitous_sent.clone(),
        );
        registry.register(
            "malformed_packets",
            "ARP or NDP frames dropped as malformed",
            a.malformed_packets.clone(),
        );
        registry.register(
            "requests_dropped",
            "Requests for an address this node announces that were not answered, by reason: stale (waited in the socket longer than the membership timeout) or not_current (the membership loop has not run recently or is re-joining after a stall)",
            a.requests_dropped.clone(),
        );
        registry.register(
            "ownership_changes",
            "Addresses this node started (gained) or stopped (lost) announcing",
            m.ownership_changes.clone(),
        );
        registry.register(
            "announced_addresses",
            "Addresses this node announces now",
            m.announced_addresses.clone(),
        );
        registry.register(
            "members_alive",
            "Live speakers as this node sees them, itself included",
            m.members_alive.clone(),
        );
        registry.register(
            "fenced",
            "1 while this node announces nothing because it reaches no peer although peers are expected",
            m.fenced.clone(),
        );
        registry.register(
            "data_path_healthy",
            "1 while the data-path check (kube-proxy's health) passes or is off; 0 while it fails and this node stays out of the membership",
            m.data_path_healthy.clone(),
        );
        registry.register(
            "membership_stalls",
            "Times the membership loop found a gap in its own clock long enough for peers to have declared this node dead; each is followed by a re-join, during which nothing is announced",
            m.membership_stalls.clone(),
        );
        registry.register(
            "membership_packets_sent",
            "Membership packets sent (heartbeats, leaves, acknowledgements)",
            m.membership_packets_sent.clone(),
        );
        registry.register(
            "membership_packets_received",
            "Membership packets received, accepted or not",
            m.membership_packets_received.clone(),
        );
        registry.register(
            "membership_auth_failures",
            "Membership packets dropped, by reason (unauthenticated, malformed, replayed, from_self)",
            m.membership_auth_failures.clone(),
        );
        registry.register(
            "config_stale",
            "1 while the ConfigMap's content is not in force (invalid or missing)",
            m.config_stale.clone(),
        );
        registry.register(
            "api_errors",
            "Failed API calls by kind",
            m.api_errors.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn membership_rejected(&self, reason: &str) {
        self.membership_auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
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

    pub fn ownership_change(&self, change: &str, n: usize) {
        if n > 0 {
            self.ownership_changes
                .get_or_create(&ChangeLabel {
                    change: change.to_owned(),
                })
                .inc_by(n as u64);
        }
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
        "watches not synced or membership not joined"
    }
}
