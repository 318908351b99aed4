//! The announcement plan: from the election's inputs, the config and this
//! node's interfaces, what this node announces and where. Pure: the daemon
//! gathers the inputs from its watches and the membership view, and carries
//! the plan out (the responders' tables, conditions, metrics, status
//! objects).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_core::config::Config;
use ferrolb_core::election::{self, ClusterState, Owner};
use ferrolb_core::selector::Labels;

use crate::interfaces::{self, Assigned, Interface};

/// What the plan is made from.
pub struct Inputs<'a> {
    /// This node's name.
    pub node: &'a str,
    /// This node's labels (`None` if its Node is not known).
    pub node_labels: Option<&'a Labels>,
    /// Nodes, live members and Services, as the election reads them.
    pub state: &'a ClusterState,
    pub config: &'a Config,
    /// Addresses never announced whatever a Service says: the nodes' own
    /// and those assigned to this node's interfaces.
    pub forbidden: &'a BTreeSet<IpAddr>,
    /// This node's interfaces and the addresses assigned to them.
    pub interfaces: &'a [Interface],
    pub assigned: &'a [Assigned],
    /// Interface name prefixes never used.
    pub excludes: &'a [String],
}

/// What this node announces.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Every address's owner.
    pub ownership: BTreeMap<IpAddr, Owner>,
    /// Each address this node owns, with the interfaces it answers on
    /// (none: owned, but no interface may carry it).
    pub mine: BTreeMap<IpAddr, Vec<String>>,
    /// The owned addresses whose pool names interfaces, with the ones used.
    pub listed: BTreeMap<IpAddr, Vec<String>>,
    /// (Service, address) for each address answered on some interface.
    pub announced: Vec<(String, IpAddr)>,
}

/// The addresses this node owns and where it answers for them.
pub fn plan(i: &Inputs) -> Plan {
    let ownership = election::owners(i.state, i.config);
    let mut p = Plan::default();
    for address in election::owned_by(&ownership, i.node) {
        if i.forbidden.contains(&address) {
            continue;
        }
        let holders: Vec<&Labels> = i
            .state
            .services
            .iter()
            .filter(|s| s.addresses.contains(&address))
            .map(|s| &s.labels)
            .collect();
        // The interfaces of the pool's advertisements that select this node
        // (all of them if its Node is not known) and a Service holding the
        // address.
        let pool_interfaces = i
            .config
            .locate(address)
            .map(|(pool, _)| i.config.pools[pool].interfaces_for(i.node_labels, Some(&holders)))
            .unwrap_or_default();
        let on: Vec<String> = interfaces::for_address(
            i.interfaces,
            i.assigned,
            i.excludes,
            &pool_interfaces,
            address,
        )
        .into_iter()
        .map(|i| i.name.clone())
        .collect();
        if !on.is_empty() {
            p.announced.extend(
                i.state
                    .services
                    .iter()
                    .filter(|s| s.addresses.contains(&address))
                    .map(|s| (s.key.to_string(), address)),
            );
        }
        if !pool_interfaces.is_empty() {
            p.listed.insert(address, on.clone());
        }
        p.mine.insert(address, on);
    }
    p.ownership = ownership;
    p
}

/// The responders' tables: per interface, the addresses it answers for.
/// Every interface that may announce is listed once the watches are
/// synced, with no addresses when it owns none, so that a takeover only
/// adds to a table instead of opening sockets first.
pub fn per_interface(
    interfaces: &[Interface],
    excludes: &[String],
    synced: bool,
    mine: &BTreeMap<IpAddr, Vec<String>>,
) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    if synced {
        for i in interfaces::select(interfaces, excludes, &[]) {
            out.insert(i.name.clone(), BTreeSet::new());
        }
    }
    for (address, names) in mine {
        for n in names {
            out.entry(n.clone()).or_default().insert(*address);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_core::ServiceKey;
    use ferrolb_core::election::{Endpoint, NodeInfo, ServiceInfo, TrafficPolicy};
    use ferrolb_core::packet::MacAddr;

    const CONFIG: &str = "\
address-pools:
- name: lan
  protocol: layer2
  addresses:
  - 192.0.2.128/25
- name: wired
  protocol: layer2
  addresses:
  - 198.51.100.0/28
  interfaces:
  - eth1
";

    fn config() -> Config {
        ferrolb_core::config::parse(CONFIG).expect("config")
    }

    fn interface(name: &str, index: u32) -> Interface {
        Interface {
            name: name.into(),
            index,
            mac: MacAddr([2, 0, 0, 0, 0, index as u8]),
            up: true,
            running: true,
            loopback: false,
            noarp: false,
            enslaved: false,
        }
    }

    fn service(name: &str, address: &str) -> ServiceInfo {
        ServiceInfo {
            key: ServiceKey::new("default", name),
            addresses: vec![address.parse().unwrap()],
            traffic_policy: TrafficPolicy::Cluster,
            // One serving endpoint somewhere.
            endpoints: vec![Endpoint::default()],
            labels: Labels::new(),
        }
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ..NodeInfo::default()
        }
    }

    /// The state with only `me` as a node: it owns every address.
    fn alone(me: &str, services: Vec<ServiceInfo>) -> ClusterState {
        ClusterState {
            nodes: vec![node(me)],
            members: None,
            services,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The inputs of node-a, its Node not known, no assigned addresses or
    /// excluded interfaces.
    fn inputs<'a>(
        state: &'a ClusterState,
        config: &'a Config,
        interfaces: &'a [Interface],
        forbidden: &'a BTreeSet<IpAddr>,
    ) -> Inputs<'a> {
        Inputs {
            node: "node-a",
            node_labels: None,
            state,
            config,
            forbidden,
            interfaces,
            assigned: &[],
            excludes: &[],
        }
    }

    #[test]
    fn an_owned_address_is_answered_on_its_pools_interfaces() {
        let config = config();
        let state = alone(
            "node-a",
            vec![service("web", "192.0.2.130"), service("db", "198.51.100.3")],
        );
        let all = [interface("eth0", 2), interface("eth1", 3)];
        let p = plan(&inputs(&state, &config, &all, &BTreeSet::new()));
        assert_eq!(p.mine[&ip("198.51.100.3")], vec!["eth1".to_owned()]);
        assert_eq!(
            p.listed.keys().collect::<Vec<_>>(),
            vec![&ip("198.51.100.3")]
        );
        assert!(!p.mine[&ip("192.0.2.130")].is_empty());
        assert_eq!(p.announced.len(), 2);
        let tables = per_interface(&all, &[], true, &p.mine);
        assert!(tables["eth1"].contains(&ip("198.51.100.3")));
    }

    #[test]
    fn a_forbidden_address_or_another_nodes_address_is_never_announced() {
        let config = config();
        let state = alone("node-a", vec![service("web", "192.0.2.130")]);
        // Another live member that wins the election for it.
        let mut two = state.clone();
        two.nodes = vec![node("node-a"), node("node-b")];
        two.members = Some(["node-b".to_owned()].into());
        let all = [interface("eth0", 2)];
        let forbidden: BTreeSet<IpAddr> = [ip("192.0.2.130")].into();
        let p = plan(&inputs(&state, &config, &all, &forbidden));
        assert!(p.mine.is_empty() && p.announced.is_empty());
        assert!(p.ownership.contains_key(&ip("192.0.2.130")));
        // Not this node's: another member owns it.
        let p = plan(&inputs(&two, &config, &all, &BTreeSet::new()));
        assert!(p.mine.is_empty());
        assert!(p.ownership.contains_key(&ip("192.0.2.130")));
    }

    #[test]
    fn with_no_usable_interface_an_address_is_owned_but_not_announced() {
        let config = config();
        let state = alone("node-a", vec![service("db", "198.51.100.3")]);
        // The pool names eth1, which this node does not have.
        let all = [interface("eth0", 2)];
        let p = plan(&inputs(&state, &config, &all, &BTreeSet::new()));
        assert_eq!(p.mine[&ip("198.51.100.3")], Vec::<String>::new());
        assert!(p.announced.is_empty());
        // The responders stay open on eth0 with nothing to answer, once synced.
        let tables = per_interface(&all, &[], true, &p.mine);
        assert_eq!(tables.len(), 1);
        assert!(tables["eth0"].is_empty());
        assert!(per_interface(&all, &[], false, &p.mine).is_empty());
        // An excluded interface is never opened.
        assert!(per_interface(&all, &["eth".to_owned()], true, &p.mine).is_empty());
    }
}
