//! Which node announces each load-balancer address (docs/architecture.md, section 5).
//!
//! Every speaker runs [`owners`] on the same inputs (its watches of Nodes,
//! Services and EndpointSlices, the live members of the speaker cluster, and
//! the config) and gets the same answer, so no node needs to tell another
//! what it announces. The inputs are plain structs that the speaker fills
//! from its watches; nothing here knows about Kubernetes objects.
//!
//! The unit of ownership is one address. A Service with an IPv4 and an IPv6
//! address, and every Service sharing an address, rank the nodes with the
//! same key (the allocation's first address), so their addresses land on
//! one node as long as they have the same eligible nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::config::{AddressPool, Config};
use crate::selector::Labels;
use crate::service::ServiceKey;

/// The Node label that keeps a node out of every load balancer, as in
/// Kubernetes' own service controller and MetalLB v0.14+: any value but one
/// that parses as false ([`label_excludes`]).
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether the value of [`EXCLUDE_FROM_LB_LABEL`] excludes the node: every
/// value but a false one as Go's `strconv.ParseBool` reads it (`0`, `f`,
/// `F`, `false`, `FALSE`, `False`), so an unparsable value excludes, as the
/// cloud-provider library does.
pub fn label_excludes(value: &str) -> bool {
    !matches!(value, "0" | "f" | "F" | "false" | "FALSE" | "False")
}

/// What the election needs to know about a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The Node has the condition `NetworkUnavailable=True` (its network is
    /// not set up yet, or the CNI says it is broken).
    pub network_unavailable: bool,
    /// The Node is going away: it has a `deletionTimestamp`, or the taint
    /// [`TO_BE_DELETED_TAINT`] (the cluster autoscaler drains it).
    pub leaving: bool,
    /// `Local` Services this node's speaker withdrew from: their
    /// `healthCheckNodePort` on this node says it has no local endpoint
    /// (kube-proxy's view), whatever the EndpointSlices say.
    pub withdrawn: BTreeSet<ServiceKey>,
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any node forwards to any endpoint: where endpoints run does not matter.
    #[default]
    Cluster,
    /// A node forwards only to endpoints on itself (and keeps the client's
    /// source address): only nodes hosting an endpoint may announce.
    Local,
}

/// One endpoint of a Service, from an EndpointSlice: the node it runs on and
/// its conditions, each `None` when the slice leaves it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `nodeName`; `None` for endpoints outside the cluster's nodes.
    pub node: Option<String>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Endpoint {
    /// Whether the endpoint takes traffic: ready, or still serving while it
    /// terminates (MetalLB v0.14.5+). The API says to read an absent
    /// `ready` as ready, so an endpoint with no conditions serves.
    pub fn is_serving(&self) -> bool {
        self.ready.unwrap_or(true) || self.serving == Some(true)
    }
}

/// What the election needs to know about a handled LoadBalancer Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    /// `status.loadBalancer.ingress[].ip`: the addresses the Service holds.
    /// The pool is not an input: an address belongs to the pool whose ranges
    /// contain it in the current config, and to none if no pool does.
    pub addresses: Vec<IpAddr>,
    pub traffic_policy: TrafficPolicy,
    /// Every endpoint of every EndpointSlice of the Service.
    pub endpoints: Vec<Endpoint>,
    /// The Service's labels, for L2Advertisements' `serviceSelectors`.
    pub labels: Labels,
}

impl ServiceInfo {
    /// The first address of the allocation: the lowest of the Service's
    /// addresses, which is the first in its status (IPv4 before IPv6, one
    /// per family). Taking the lowest keeps the key the same whatever order
    /// the status lists them in.
    pub fn first_address(&self) -> Option<IpAddr> {
        self.addresses.iter().min().copied()
    }

    /// Whether some endpoint anywhere in the cluster serves.
    pub fn has_serving_endpoint(&self) -> bool {
        self.endpoints.iter().any(Endpoint::is_serving)
    }

    /// The nodes hosting a serving endpoint.
    pub fn serving_nodes(&self) -> BTreeSet<&str> {
        self.endpoints
            .iter()
            .filter(|e| e.is_serving())
            .filter_map(|e| e.node.as_deref())
            .collect()
    }

    /// The nodes hosting a ready endpoint (an absent `ready` reads as ready).
    pub fn ready_nodes(&self) -> BTreeSet<&str> {
        self.endpoints
            .iter()
            .filter(|e| e.ready.unwrap_or(true))
            .filter_map(|e| e.node.as_deref())
            .collect()
    }
}

/// Everything the election reads, as the speaker's watches last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Every Node object.
    pub nodes: Vec<NodeInfo>,
    /// Nodes whose speaker is a live member of the speaker cluster; `None`
    /// when membership is disabled, in which case every Node is a candidate.
    pub members: Option<BTreeSet<String>>,
    /// Every handled LoadBalancer Service that holds addresses.
    pub services: Vec<ServiceInfo>,
}

/// Who announces an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// This node answers ARP/NDP for the address.
    Node(String),
    /// Nobody announces it, for this reason.
    Nobody(Unowned),
}

impl Owner {
    /// The owning node's name, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Owner::Node(n) => Some(n),
            Owner::Nobody(_) => None,
        }
    }
}

/// Why nobody announces an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unowned {
    /// No configured pool contains the address: a Service's status names an
    /// address that ferrolb did not give, and must not be announced.
    OutsidePools,
    /// No Service holding the address has a serving endpoint anywhere.
    NoServingEndpoint,
    /// Endpoints serve, but no node is eligible: none is a live member that
    /// is neither excluded nor network-unavailable, matches the pool's node
    /// selectors and, for a `Local` Service, hosts a serving endpoint.
    NoEligibleNode,
}

impl fmt::Display for Unowned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unowned::OutsidePools => "the address is in no configured pool",
            Unowned::NoServingEndpoint => "no Service holding the address has a serving endpoint",
            Unowned::NoEligibleNode => "no node is eligible to announce the address",
        })
    }
}

/// The eligibility rules that depend on the node alone and the pool: not
/// `NetworkUnavailable`, not excluded by [`EXCLUDE_FROM_LB_LABEL`], not
/// leaving (being deleted, or tainted [`TO_BE_DELETED_TAINT`]), and
/// selected by the pool's node selectors. Liveness and endpoints are
/// checked by [`eligible_nodes`]. The Node's `Ready` condition is not an
/// input: it lags by tens of seconds and depends on the API server.
pub fn node_may_announce(node: &NodeInfo, pool: &AddressPool) -> bool {
    !node.network_unavailable
        && !node.leaving
        && !node
            .labels
            .get(EXCLUDE_FROM_LB_LABEL)
            .is_some_and(|v| label_excludes(v))
        && pool.selects_node(&node.labels)
}

/// The nodes that may announce an address of `pool` held by `holders`, in
/// no particular order: live members (every Node when `members` is `None`)
/// that pass [`node_may_announce`] and, if any holder uses the `Local`
/// traffic policy, host a serving endpoint of such a holder. (Services
/// sharing an address must agree on `Local` and on its pod selector, so
/// their endpoints are the same pods; taking the union keeps the address up
/// while their EndpointSlices are briefly out of step.)
///
/// A member without a Node object is not eligible: its labels and
/// conditions cannot be checked.
pub fn eligible_nodes<'a>(
    nodes: &'a [NodeInfo],
    members: Option<&BTreeSet<String>>,
    pool: &AddressPool,
    holders: &[&ServiceInfo],
) -> Vec<&'a str> {
    let local: Option<BTreeSet<&str>> = holders
        .iter()
        .any(|s| s.traffic_policy == TrafficPolicy::Local)
        .then(|| {
            // As kube-proxy picks local endpoints: ready ones; serving but
            // terminating ones only when no endpoint is ready. A node whose
            // last Pod terminates thus hands over to a node with a ready one.
            let local: Vec<&&ServiceInfo> = holders
                .iter()
                .filter(|s| s.traffic_policy == TrafficPolicy::Local)
                .collect();
            let ready: BTreeSet<&str> = local.iter().flat_map(|s| s.ready_nodes()).collect();
            if ready.is_empty() {
                local.iter().flat_map(|s| s.serving_nodes()).collect()
            } else {
                ready
            }
        });
    nodes
        .iter()
        .filter(|n| members.is_none_or(|m| m.contains(&n.name)))
        .filter(|n| node_may_announce(n, pool))
        // An advertisement of the pool must select the node and a holder
        // (MetalLB's L2Advertisement serviceSelectors; a ConfigMap pool's
        // one advertisement selects every Service).
        .filter(|n| {
            holders.is_empty() || holders.iter().any(|s| pool.announces(&n.labels, &s.labels))
        })
        .filter(|n| local.as_ref().is_none_or(|l| l.contains(n.name.as_str())))
        // A node that withdrew from a `Local` holder: kube-proxy there would
        // drop the traffic.
        .filter(|n| {
            !holders
                .iter()
                .any(|s| s.traffic_policy == TrafficPolicy::Local && n.withdrawn.contains(&s.key))
        })
        .map(|n| n.name.as_str())
        .collect()
}

/// Orders `nodes` by SHA-256 of `"<node>#<first_address>"`, ascending; the
/// first one announces. This is MetalLB's rule since v0.11 (the address in
/// its usual text form, as Go prints it), so that a mixed cluster agrees, and
/// it makes ownership stable: adding a node moves only the addresses it now
/// ranks first for, and removing one moves only the addresses it owned.
pub fn rank_nodes<'a>(
    nodes: impl IntoIterator<Item = &'a str>,
    first_address: IpAddr,
) -> Vec<&'a str> {
    let mut keyed: Vec<([u8; 32], &str)> = nodes
        .into_iter()
        .map(|n| {
            let digest = Sha256::digest(format!("{n}#{first_address}"));
            (digest.into(), n)
        })
        .collect();
    // Two names with equal digests cannot be found in practice; the name
    // breaks the tie anyway so that the order is total.
    keyed.sort_unstable();
    keyed.dedup_by(|a, b| a.1 == b.1);
    keyed.into_iter().map(|(_, n)| n).collect()
}

/// The owner of every address some Service holds, under `config`.
///
/// For each address: it must lie in a pool; some Service holding it must
/// have a serving endpoint; the owner is the first of [`eligible_nodes`] by
/// [`rank_nodes`], keyed by the lowest first address among the Services
/// holding it (for an address held by one Service, that Service's first
/// address).
pub fn owners(state: &ClusterState, config: &Config) -> BTreeMap<IpAddr, Owner> {
    let mut holders: BTreeMap<IpAddr, Vec<&ServiceInfo>> = BTreeMap::new();
    for service in &state.services {
        for address in &service.addresses {
            let list = holders.entry(*address).or_default();
            // A status that repeats an address must not count the Service twice.
            if !list.iter().any(|s| std::ptr::eq(*s, service)) {
                list.push(service);
            }
        }
    }
    holders
        .into_iter()
        .map(|(address, holders)| (address, owner(address, &holders, state, config)))
        .collect()
}

fn owner(
    address: IpAddr,
    holders: &[&ServiceInfo],
    state: &ClusterState,
    config: &Config,
) -> Owner {
    let Some((pool, _)) = config.locate(address) else {
        return Owner::Nobody(Unowned::OutsidePools);
    };
    if !holders.iter().any(|s| s.has_serving_endpoint()) {
        return Owner::Nobody(Unowned::NoServingEndpoint);
    }
    let key = holders
        .iter()
        .filter_map(|s| s.first_address())
        .min()
        .unwrap_or(address);
    let eligible = eligible_nodes(
        &state.nodes,
        state.members.as_ref(),
        &config.pools[pool],
        holders,
    );
    match rank_nodes(eligible, key).first() {
        Some(node) => Owner::Node((*node).to_owned()),
        None => Owner::Nobody(Unowned::NoEligibleNode),
    }
}

/// The addresses `ownership` gives to `node`.
pub fn owned_by<'a>(
    ownership: &'a BTreeMap<IpAddr, Owner>,
    node: &'a str,
) -> impl Iterator<Item = IpAddr> + 'a {
    ownership
        .iter()
        .filter(move |(_, o)| o.node() == Some(node))
        .map(|(a, _)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rank_uses_sha256_of_node_hash_address() {
        // Orders from `printf 'node-a#192.0.2.1' | sha256sum` and so on:
        // 192.0.2.1: c 22e6..., a 9028..., b fbbf...
        // 2001:db8::1: b 1aee..., a 3c9f..., c bb83...
        let nodes = ["node-a", "node-b", "node-c"];
        assert_eq!(
            rank_nodes(nodes, ip("192.0.2.1")),
            ["node-c", "node-a", "node-b"]
        );
        assert_eq!(
            rank_nodes(nodes, ip("2001:db8::1")),
            ["node-b", "node-a", "node-c"]
        );
    }

    #[test]
    fn rank_ignores_input_order_and_duplicates() {
        assert_eq!(
            rank_nodes(["node-b", "node-c", "node-a", "node-c"], ip("192.0.2.1")),
            ["node-c", "node-a", "node-b"]
        );
        assert!(rank_nodes([], ip("192.0.2.1")).is_empty());
    }

    #[test]
    fn endpoint_serves_when_ready_or_serving_while_terminating() {
        let ep = |ready, serving, terminating| Endpoint {
            node: None,
            ready,
            serving,
            terminating,
        };
        assert!(ep(None, None, None).is_serving());
        assert!(ep(Some(true), Some(true), Some(false)).is_serving());
        assert!(ep(Some(false), Some(true), Some(true)).is_serving());
        assert!(!ep(Some(false), Some(false), Some(true)).is_serving());
        assert!(!ep(Some(false), None, None).is_serving());
    }

    #[test]
    fn first_address_is_the_lowest_whatever_the_status_order() {
        let svc = ServiceInfo {
            key: ServiceKey::new("ns", "s"),
            addresses: vec![ip("2001:db8::1"), ip("192.0.2.9")],
            traffic_policy: TrafficPolicy::Cluster,
            endpoints: vec![],
            labels: Labels::new(),
        };
        assert_eq!(svc.first_address(), Some(ip("192.0.2.9")));
    }
}
