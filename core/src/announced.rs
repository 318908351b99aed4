//! The speakers' Service conditions, `ferrolb.io/AnnouncedIPv4` and
//! `ferrolb.io/AnnouncedIPv6`: which node announces the Service's address of
//! that family, on which interfaces, or why no node does.
//!
//! Written by the speakers, after the fact: a takeover answers ARP/NDP and
//! sends its gratuitous burst first, and the condition follows in the
//! background (one write per Service and family whose owner changed, by the
//! new owner). Each speaker writes only what it knows first-hand:
//! - the owner of an address writes True for every Service holding it;
//! - for an address nobody owns, one speaker writes False with the reason:
//!   the designated one (the lowest-named live member), so that the nodes do
//!   not all write the same thing.
//!
//! See docs/architecture.md ("Service status").

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::election::{Owner, ServiceInfo, Unowned};
use crate::{Family, ServiceKey};

/// The condition type of one family.
pub fn condition_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ferrolb.io/AnnouncedIPv4",
        Family::V6 => "ferrolb.io/AnnouncedIPv6",
    }
}

/// What one of the conditions should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The conditions this node should see on Services: `mine` is the interfaces
/// this node announces each of its addresses on (empty: it owns the address
/// but no interface may carry it); `designated` says this node speaks for
/// addresses nobody owns.
pub fn announcements(
    node: &str,
    ownership: &BTreeMap<IpAddr, Owner>,
    mine: &BTreeMap<IpAddr, Vec<String>>,
    services: &[ServiceInfo],
    designated: bool,
) -> BTreeMap<(ServiceKey, Family), Announcement> {
    let mut out = BTreeMap::new();
    for svc in services {
        for address in &svc.addresses {
            let family = Family::of(address);
            let said = match (ownership.get(address), mine.get(address)) {
                (Some(Owner::Node(n)), Some(on)) if n == node && !on.is_empty() => Announcement {
                    status: true,
                    reason: "Announced",
                    message: format!("{address} is announced by node {node} on {}", on.join(", ")),
                },
                (Some(Owner::Node(n)), _) if n == node => Announcement {
                    status: false,
                    reason: "NoInterface",
                    message: format!(
                        "node {node} was chosen to announce {address} but no interface may carry it (see the pool's interfaces and the speaker's --exclude-interfaces)"
                    ),
                },
                (Some(Owner::Nobody(why)), _) if designated => Announcement {
                    status: false,
                    reason: match why {
                        Unowned::OutsidePools => "OutsidePools",
                        Unowned::NoServingEndpoint => "NoServingEndpoint",
                        Unowned::NoEligibleNode => "NoEligibleNode",
                    },
                    message: format!("{address} is not announced: {why}"),
                },
                _ => continue,
            };
            out.insert((svc.key.clone(), family), said);
        }
    }
    out
}

/// Whether `node` speaks for unowned addresses among `alive` (the live
/// members; `None` without membership, when every speaker is alone).
pub fn is_designated(node: &str, alive: Option<&BTreeSet<String>>) -> bool {
    match alive {
        None => true,
        Some(alive) => alive.first().is_none_or(|m| m == node),
    }
}

/// What this node's MetalLB `ServiceL2Status` objects should say: one per
/// Service that holds an address this node announces (on at least one
/// interface), with the interfaces to list. `listed` gives, per address, the
/// interfaces named by the pool's advertisements that chose them (empty when
/// they name none: MetalLB then lists no interface, meaning all of them).
pub fn l2_statuses(
    mine: &BTreeMap<IpAddr, Vec<String>>,
    listed: &BTreeMap<IpAddr, Vec<String>>,
    services: &[ServiceInfo],
) -> BTreeMap<ServiceKey, Vec<String>> {
    let mut out: BTreeMap<ServiceKey, BTreeSet<String>> = BTreeMap::new();
    for s in services {
        for a in &s.addresses {
            if mine.get(a).is_some_and(|on| !on.is_empty()) {
                let entry = out.entry(s.key.clone()).or_default();
                entry.extend(listed.get(a).into_iter().flatten().cloned());
            }
        }
    }
    out.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// For each Service, the nodes that own one of its addresses (a dual-stack
/// Service may have one per family): another node's ServiceL2Status for it
/// is stale only if that node is not among them.
pub fn announcers(
    ownership: &BTreeMap<IpAddr, Owner>,
    services: &[ServiceInfo],
) -> BTreeMap<ServiceKey, BTreeSet<String>> {
    services
        .iter()
        .map(|s| {
            let nodes = s
                .addresses
                .iter()
                .filter_map(|a| ownership.get(a)?.node().map(str::to_owned))
                .collect();
            (s.key.clone(), nodes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::TrafficPolicy;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(name: &str, addresses: &[&str]) -> ServiceInfo {
        ServiceInfo {
            key: ServiceKey::new("ns", name),
            addresses: addresses.iter().map(|a| ip(a)).collect(),
            traffic_policy: TrafficPolicy::Cluster,
            endpoints: vec![],
            labels: Default::default(),
        }
    }

    #[test]
    fn the_owner_says_where_and_others_stay_silent() {
        let ownership = BTreeMap::from([
            (ip("192.0.2.1"), Owner::Node("a".into())),
            (ip("2001:db8::1"), Owner::Node("b".into())),
        ]);
        let services = [svc("web", &["192.0.2.1", "2001:db8::1"])];
        let mine_a = BTreeMap::from([(ip("192.0.2.1"), vec!["eth0".to_owned()])]);
        let a = announcements("a", &ownership, &mine_a, &services, true);
        assert_eq!(a.len(), 1, "b writes the IPv6 one");
        let said = &a[&(ServiceKey::new("ns", "web"), Family::V4)];
        assert!(said.status);
        assert_eq!(said.message, "192.0.2.1 is announced by node a on eth0");
        let mine_b = BTreeMap::from([(
            ip("2001:db8::1"),
            vec!["eth0".to_owned(), "eth1".to_owned()],
        )]);
        let b = announcements("b", &ownership, &mine_b, &services, false);
        assert_eq!(
            b[&(ServiceKey::new("ns", "web"), Family::V6)].message,
            "2001:db8::1 is announced by node b on eth0, eth1"
        );
        assert_eq!(condition_type(Family::V6), "ferrolb.io/AnnouncedIPv6");
    }

    #[test]
    fn an_unowned_address_is_reported_once_by_the_designated_node() {
        let ownership =
            BTreeMap::from([(ip("192.0.2.1"), Owner::Nobody(Unowned::NoServingEndpoint))]);
        let services = [svc("web", &["192.0.2.1"]), svc("api", &["192.0.2.1"])];
        let none = BTreeMap::new();
        assert!(announcements("b", &ownership, &none, &services, false).is_empty());
        let a = announcements("a", &ownership, &none, &services, true);
        assert_eq!(a.len(), 2, "every Service sharing the address");
        let said = &a[&(ServiceKey::new("ns", "api"), Family::V4)];
        assert!(!said.status);
        assert_eq!(said.reason, "NoServingEndpoint");
        let alive = BTreeSet::from(["b".to_owned(), "a".to_owned()]);
        assert!(is_designated("a", Some(&alive)));
        assert!(!is_designated("b", Some(&alive)));
        assert!(is_designated("b", None));
    }

    #[test]
    fn an_owner_without_an_interface_says_so() {
        let ownership = BTreeMap::from([(ip("192.0.2.1"), Owner::Node("a".into()))]);
        let mine = BTreeMap::from([(ip("192.0.2.1"), vec![])]);
        let a = announcements("a", &ownership, &mine, &[svc("web", &["192.0.2.1"])], false);
        assert_eq!(a.values().next().unwrap().reason, "NoInterface");
    }

    #[test]
    fn l2_statuses_list_services_this_node_announces() {
        let services = [
            svc("a", &["192.0.2.1"]),
            svc("b", &["192.0.2.2", "2001:db8::2"]),
            svc("c", &["192.0.2.3"]),
            svc("shared", &["192.0.2.1"]),
        ];
        let mine: BTreeMap<IpAddr, Vec<String>> = [
            (ip("192.0.2.1"), vec!["eth0".to_owned()]),
            (ip("2001:db8::2"), vec!["eth1".to_owned()]),
            // Owned, but no interface may carry it: not announced.
            (ip("192.0.2.3"), vec![]),
        ]
        .into_iter()
        .collect();
        let listed: BTreeMap<IpAddr, Vec<String>> = [(ip("2001:db8::2"), vec!["eth1".to_owned()])]
            .into_iter()
            .collect();
        let got = l2_statuses(&mine, &listed, &services);
        let keys: Vec<String> = got.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["ns/a", "ns/b", "ns/shared"]);
        assert!(
            got[&ServiceKey::new("ns", "a")].is_empty(),
            "all interfaces"
        );
        assert_eq!(got[&ServiceKey::new("ns", "b")], ["eth1"]);
    }

    #[test]
    fn announcers_are_the_owners_of_each_family() {
        let services = [
            svc("dual", &["192.0.2.2", "2001:db8::2"]),
            svc("none", &["192.0.2.9"]),
        ];
        let ownership: BTreeMap<IpAddr, Owner> = [
            (ip("192.0.2.2"), Owner::Node("a".into())),
            (ip("2001:db8::2"), Owner::Node("b".into())),
            (ip("192.0.2.9"), Owner::Nobody(Unowned::NoServingEndpoint)),
        ]
        .into_iter()
        .collect();
        let got = announcers(&ownership, &services);
        let nodes: Vec<&str> = got[&ServiceKey::new("ns", "dual")]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(nodes, ["a", "b"]);
        assert!(got[&ServiceKey::new("ns", "none")].is_empty());
    }
}
