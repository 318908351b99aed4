//! The speaker's Prometheus metrics (docs/architecture.md, section 7), served by
//! `ferrolb_runtime::serve` as the controller's are.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::announcer::{MetalLbStats, Stats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// `gained` or `lost`.
    pub change: String,
}

/// MetalLB's labels of `metallb_speaker_announced`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnouncedLabel {
    pub service: String,
    pub protocol: String,
    pub node: String,
    pub ip: String,
}

pub struct Metrics {
    registry: Registry,
    pub announcer: Arc<Stats>,
    /// `metallb_speaker_announced`, when MetalLB's names are on.
    announced: Option<Family<AnnouncedLabel, Gauge>>,
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
    /// Events not published: `repeat` or `rate_limited` (core::events).
    pub events_suppressed: Family<ReasonLabel, Counter>,
    /// Announcement conditions written to Services.
    pub condition_writes: Counter,
    /// 1 while an interface that would announce has carrier.
    pub carrier: Gauge,
    /// `Local` Services this node withdrew from (healthCheckNodePort).
    pub withdrawn_services: Gauge,
    pub ready: AtomicBool,
}

impl Metrics {
    /// The `ferrolb_` metrics, and with `metallb_names` the MetalLB ones too.
    pub fn new(metallb_names: bool) -> Arc<Metrics> {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ferrolb");
        let m = Metrics {
            announcer: Arc::new(Stats {
                metallb: metallb_names.then(MetalLbStats::default),
                ..Stats::default()
            }),
            announced: metallb_names.then(Family::default),
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
            events_suppressed: Family::default(),
            condition_writes: Counter::default(),
            carrier: Gauge::default(),
            withdrawn_services: Gauge::default(),
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
        m.carrier.set(1);
        registry.register(
            "carrier",
            "1 while an interface that would announce has carrier and is up; 0 takes the node out of the membership (graceful hand-over) until carrier has held for 2 s",
            m.carrier.clone(),
        );
        registry.register(
            "withdrawn_services",
            "Local Services this node withdrew from because their healthCheckNodePort says it has no local endpoint",
            m.withdrawn_services.clone(),
        );
        registry.register(
            "condition_writes",
            "ferrolb.io/AnnouncedIPv4/IPv6 conditions written to Services (each once the owner held for 1 s)",
            m.condition_writes.clone(),
        );
        registry.register(
            "events_suppressed",
            "Events not published because the same one was published for the object within 10 minutes (repeat) or the object or process used up its allowance (rate_limited); the log line is written either way",
            m.events_suppressed.clone(),
        );
        if let (Some(ml), Some(announced)) = (&m.announcer.metallb, &m.announced) {
            let r = root.sub_registry_with_prefix("metallb");
            r.register(
                "layer2_requests_received",
                "Number of layer2 requests received for owned IPs",
                ml.requests_received.clone(),
            );
            r.register(
                "layer2_responses_sent",
                "Number of layer2 responses sent for owned IPs",
                ml.responses_sent.clone(),
            );
            r.register(
                "layer2_gratuitous_sent",
                "Number of gratuitous layer2 packets sent for owned IPs",
                ml.gratuitous_sent.clone(),
            );
            r.register(
                "speaker_announced",
                "IPs announced by this speaker (1), by Service, protocol and node",
                announced.clone(),
            );
        }
        Arc::new(Metrics {
            registry: root,
            ..m
        })
    }

    /// What this node announces, for `metallb_speaker_announced`: each
    /// owned address with the Services holding it.
    pub fn set_announced(&self, node: &str, announced: &[(String, IpAddr)]) {
        let Some(family) = &self.announced else {
            return;
        };
        family.clear();
        for (service, ip) in announced {
            family
                .get_or_create(&AnnouncedLabel {
                    service: service.clone(),
                    protocol: "layer2".into(),
                    node: node.to_owned(),
                    ip: ip.to_string(),
                })
                .set(1);
        }
    }

    pub fn membership_rejected(&self, reason: &str) {
        self.membership_auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
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
        "watches not synced or membership not joined"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metallb_names_carry_the_same_facts() {
        let m = Metrics::new(true);
        let ip: IpAddr = "192.0.2.240".parse().unwrap();
        m.set_announced("node-1", &[("default/web".into(), ip)]);
        let ml = m.announcer.metallb.as_ref().unwrap();
        ml.requests_received
            .get_or_create(&crate::announcer::IpLabel { ip: ip.to_string() })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                "metallb_speaker_announced{service=\"default/web\",protocol=\"layer2\",node=\"node-1\",ip=\"192.0.2.240\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("metallb_layer2_requests_received{ip=\"192.0.2.240\"} 1"),
            "{text}"
        );
        assert!(text.contains("ferrolb_announced_addresses"), "{text}");
        // Announcing nothing clears it.
        m.set_announced("node-1", &[]);
        assert!(!m.encode().contains("metallb_speaker_announced{"));
    }

    #[test]
    fn metallb_names_can_be_turned_off() {
        let m = Metrics::new(false);
        m.set_announced(
            "node-1",
            &[("default/web".into(), "192.0.2.240".parse().unwrap())],
        );
        assert!(m.announcer.metallb.is_none());
        assert!(!m.encode().contains("metallb_"));
    }
}
