//! Table tests of the election (docs/architecture.md, section 5): who announces each
//! address, from nodes, members, Services with their endpoints, and the
//! config.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_core::election::{
    EXCLUDE_FROM_LB_LABEL, Endpoint, NodeInfo, Owner, ServiceInfo, TrafficPolicy, Unowned,
    owned_by, owners, rank_nodes,
};
use ferrolb_core::{ClusterState, Config, ServiceKey, config};

const CONFIG: &str = r#"
address-pools:
- name: default
  protocol: layer2
  addresses: [192.0.2.0/25, "2001:db8::/120"]
- name: edge
  protocol: layer2
  addresses: [198.51.100.0/28, "2001:db8:1::/120"]
  node-selectors:
  - matchLabels: {ferrolb.io/edge: "true"}
"#;

fn cfg() -> Config {
    config::parse(CONFIG).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_owned(),
        ..NodeInfo::default()
    }
}

fn labelled(name: &str, key: &str, value: &str) -> NodeInfo {
    let mut n = node(name);
    n.labels.insert(key.to_owned(), value.to_owned());
    n
}

fn nodes(names: &[&str]) -> Vec<NodeInfo> {
    names.iter().map(|n| node(n)).collect()
}

fn ready_on(node: &str) -> Endpoint {
    Endpoint {
        node: Some(node.to_owned()),
        ready: Some(true),
        serving: Some(true),
        terminating: Some(false),
    }
}

/// A Cluster-policy Service holding `addresses` with one ready endpoint.
fn svc(name: &str, addresses: &[&str]) -> ServiceInfo {
    ServiceInfo {
        key: ServiceKey::new("default", name),
        addresses: addresses.iter().map(|a| ip(a)).collect(),
        traffic_policy: TrafficPolicy::Cluster,
        endpoints: vec![ready_on("somewhere")],
        labels: Default::default(),
    }
}

fn local(mut s: ServiceInfo, endpoint_nodes: &[&str]) -> ServiceInfo {
    s.traffic_policy = TrafficPolicy::Local;
    s.endpoints = endpoint_nodes.iter().map(|n| ready_on(n)).collect();
    s
}

fn state(nodes: Vec<NodeInfo>, services: Vec<ServiceInfo>) -> ClusterState {
    ClusterState {
        nodes,
        members: None,
        services,
    }
}

fn owner_of(state: &ClusterState, address: &str) -> Owner {
    owners(state, &cfg())[&ip(address)].clone()
}

fn on(node: &str) -> Owner {
    Owner::Node(node.to_owned())
}

const ABC: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The node that wins `address` among `candidates`.
fn winner<'a>(candidates: &[&'a str], address: &str) -> &'a str {
    rank_nodes(candidates.iter().copied(), ip(address))[0]
}

#[test]
fn cluster_policy_owner_is_first_by_hash_among_all_nodes() {
    // 192.0.2.1 ranks node-c, node-a, node-b.
    let s = state(nodes(&ABC), vec![svc("web", &["192.0.2.1"])]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-c"));
}

#[test]
fn local_policy_owner_hosts_a_serving_endpoint() {
    // node-c ranks first for 192.0.2.1 but has no endpoint.
    let web = local(svc("web", &["192.0.2.1"]), &["node-a", "node-b"]);
    let s = state(nodes(&ABC), vec![web]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-a"));

    // An endpoint that is not serving does not count.
    let mut web = local(svc("web", &["192.0.2.1"]), &["node-a", "node-b"]);
    web.endpoints[0].ready = Some(false);
    web.endpoints[0].serving = Some(false);
    let s = state(nodes(&ABC), vec![web]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-b"));

    // A terminating endpoint that still serves does, when no endpoint is ready.
    let mut web = local(svc("web", &["192.0.2.1"]), &["node-c"]);
    web.endpoints[0].ready = Some(false);
    web.endpoints[0].terminating = Some(true);
    let s = state(nodes(&ABC), vec![web]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-c"));

    // But a node with a ready endpoint comes first, as kube-proxy prefers
    // ready endpoints: the owner's last Pod terminating hands over.
    let mut web = local(svc("web", &["192.0.2.1"]), &["node-c", "node-b"]);
    web.endpoints[0].ready = Some(false);
    web.endpoints[0].terminating = Some(true);
    let s = state(nodes(&ABC), vec![web]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-b"));
}

#[test]
fn a_node_that_withdrew_from_a_local_service_hands_it_over() {
    // node-a would own it (node-c, first by hash, has no endpoint).
    let web = local(svc("web", &["192.0.2.1"]), &["node-a", "node-b"]);
    let mut ns = nodes(&ABC);
    ns[0].withdrawn.insert(ServiceKey::new("default", "web"));
    let s = state(ns.clone(), vec![web.clone()]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-b"));
    // Only for that Service: a Cluster Service's address is unaffected by a
    // withdrawal (kube-proxy forwards it anywhere).
    let api = svc("web", &["192.0.2.1"]);
    let s = state(ns.clone(), vec![api]);
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-c"));
    // Every node with an endpoint withdrew: nobody.
    ns[1].withdrawn.insert(ServiceKey::new("default", "web"));
    let s = state(ns, vec![web]);
    assert_eq!(
        owner_of(&s, "192.0.2.1"),
        Owner::Nobody(Unowned::NoEligibleNode)
    );
}

#[test]
fn local_policy_with_endpoints_only_on_ineligible_nodes_has_no_owner() {
    let web = local(svc("web", &["192.0.2.1"]), &["node-x"]);
    let s = state(nodes(&ABC), vec![web]);
    assert_eq!(
        owner_of(&s, "192.0.2.1"),
        Owner::Nobody(Unowned::NoEligibleNode)
    );
}

#[test]
fn excluded_and_network_unavailable_nodes_never_own() {
    let web = || svc("web", &["192.0.2.1"]);
    // node-c ranks first: exclude it by label (any value), then by condition.
    let mut ns = nodes(&["node-a", "node-b"]);
    ns.push(labelled("node-c", EXCLUDE_FROM_LB_LABEL, ""));
    assert_eq!(owner_of(&state(ns, vec![web()]), "192.0.2.1"), on("node-a"));

    // Values that parse as true, or not at all, exclude; false ones keep the node.
    for value in ["true", "True", "1", "yes", "anything"] {
        let mut ns = nodes(&["node-a", "node-b"]);
        ns.push(labelled("node-c", EXCLUDE_FROM_LB_LABEL, value));
        assert_eq!(
            owner_of(&state(ns, vec![web()]), "192.0.2.1"),
            on("node-a"),
            "{value}"
        );
    }
    for value in ["false", "False", "FALSE", "0", "f", "F"] {
        let mut ns = nodes(&["node-a", "node-b"]);
        ns.push(labelled("node-c", EXCLUDE_FROM_LB_LABEL, value));
        assert_eq!(
            owner_of(&state(ns, vec![web()]), "192.0.2.1"),
            on("node-c"),
            "{value}"
        );
    }

    // A node going away (deleted, or tainted by the cluster autoscaler).
    let mut ns = nodes(&ABC);
    ns[2].leaving = true;
    assert_eq!(owner_of(&state(ns, vec![web()]), "192.0.2.1"), on("node-a"));

    let mut ns = nodes(&ABC);
    ns[2].network_unavailable = true;
    assert_eq!(owner_of(&state(ns, vec![web()]), "192.0.2.1"), on("node-a"));

    let mut ns = nodes(&ABC);
    for n in &mut ns {
        n.network_unavailable = true;
    }
    assert_eq!(
        owner_of(&state(ns, vec![web()]), "192.0.2.1"),
        Owner::Nobody(Unowned::NoEligibleNode)
    );
}

#[test]
fn pool_node_selectors_restrict_owners() {
    // 198.51.100.1 is in pool "edge", which only ferrolb.io/edge=true nodes announce.
    let all = ["node-a", "node-b", "node-c", "node-d"];
    let edge = ["node-b", "node-d"];
    let ns: Vec<NodeInfo> = all
        .iter()
        .map(|n| {
            if edge.contains(n) {
                labelled(n, "ferrolb.io/edge", "true")
            } else {
                labelled(n, "ferrolb.io/edge", "false")
            }
        })
        .collect();
    let services: Vec<ServiceInfo> = (1..=12)
        .map(|i| svc(&format!("s{i}"), &[&format!("198.51.100.{i}")]))
        .collect();
    let result = owners(&state(ns, services), &cfg());
    let mut unrestricted_winner_outside_edge = false;
    for i in 1..=12 {
        let address = format!("198.51.100.{i}");
        assert_eq!(
            result[&ip(&address)],
            on(winner(&edge, &address)),
            "{address}"
        );
        unrestricted_winner_outside_edge |= !edge.contains(&winner(&all, &address));
    }
    // Some addresses would go to an unselected node without the selector.
    assert!(unrestricted_winner_outside_edge);
}

#[test]
fn dual_stack_service_lands_on_one_node() {
    // Each family's address alone would often rank another node first.
    let services: Vec<ServiceInfo> = (1..=40)
        .map(|i| {
            svc(
                &format!("s{i}"),
                &[&format!("192.0.2.{i}"), &format!("2001:db8::{i:x}")],
            )
        })
        .collect();
    let result = owners(&state(nodes(&ABC), services), &cfg());
    let mut would_split = 0;
    for i in 1..=40 {
        let (v4, v6) = (format!("192.0.2.{i}"), format!("2001:db8::{i:x}"));
        assert_eq!(result[&ip(&v4)], result[&ip(&v6)], "{v4} and {v6}");
        assert_eq!(result[&ip(&v4)], on(winner(&ABC, &v4)));
        would_split += usize::from(winner(&ABC, &v4) != winner(&ABC, &v6));
    }
    assert!(would_split > 0);
}

#[test]
fn shared_address_has_one_owner_and_follows_the_dual_stack_holder() {
    // "dns-udp" is dual-stack; "dns-tcp" shares its IPv6 address only, as an
    // IPv6-only Service, so its own first address would be 2001:db8::36.
    let dns_udp = svc("dns-udp", &["192.0.2.53", "2001:db8::36"]);
    let dns_tcp = svc("dns-tcp", &["2001:db8::36"]);
    let s = state(nodes(&ABC), vec![dns_tcp, dns_udp]);
    let result = owners(&s, &cfg());
    let owner = on(winner(&ABC, "192.0.2.53"));
    assert_eq!(result[&ip("192.0.2.53")], owner);
    assert_eq!(result[&ip("2001:db8::36")], owner);
    assert_eq!(result.len(), 2);
    // Not the owner the IPv6 address would get on its own.
    assert_ne!(on(winner(&ABC, "2001:db8::36")), owner);
}

#[test]
fn shared_address_is_announced_while_any_holder_serves() {
    let mut idle = svc("idle", &["192.0.2.7"]);
    idle.endpoints.clear();
    let busy = svc("busy", &["192.0.2.7"]);
    let s = state(nodes(&ABC), vec![idle.clone(), busy]);
    assert!(owner_of(&s, "192.0.2.7").node().is_some());
    let s = state(nodes(&ABC), vec![idle]);
    assert_eq!(
        owner_of(&s, "192.0.2.7"),
        Owner::Nobody(Unowned::NoServingEndpoint)
    );
}

#[test]
fn no_serving_endpoint_means_no_owner() {
    let mut web = svc("web", &["192.0.2.1", "2001:db8::1"]);
    web.endpoints = vec![Endpoint {
        node: Some("node-a".into()),
        ready: Some(false),
        serving: Some(false),
        terminating: Some(true),
    }];
    let result = owners(&state(nodes(&ABC), vec![web]), &cfg());
    assert_eq!(
        result[&ip("192.0.2.1")],
        Owner::Nobody(Unowned::NoServingEndpoint)
    );
    assert_eq!(
        result[&ip("2001:db8::1")],
        Owner::Nobody(Unowned::NoServingEndpoint)
    );
}

#[test]
fn address_outside_every_pool_is_never_announced() {
    // 203.0.113.5 is in no pool, though a Service's status names it and it
    // has endpoints on every node.
    let web = local(svc("web", &["203.0.113.5", "192.0.2.1"]), &ABC);
    let result = owners(&state(nodes(&ABC), vec![web]), &cfg());
    assert_eq!(
        result[&ip("203.0.113.5")],
        Owner::Nobody(Unowned::OutsidePools)
    );
    assert!(result[&ip("192.0.2.1")].node().is_some());
    assert_eq!(
        owners(
            &state(nodes(&ABC), vec![svc("x", &["192.0.2.1"])]),
            &Config::default()
        )[&ip("192.0.2.1")],
        Owner::Nobody(Unowned::OutsidePools)
    );
}

fn many_services() -> Vec<ServiceInfo> {
    (1..=100)
        .map(|i| svc(&format!("s{i}"), &[&format!("192.0.2.{i}")]))
        .collect()
}

#[test]
fn adding_a_node_moves_only_what_it_wins() {
    let before = owners(&state(nodes(&ABC), many_services()), &cfg());
    let after = owners(
        &state(
            nodes(&["node-a", "node-b", "node-c", "node-d"]),
            many_services(),
        ),
        &cfg(),
    );
    let mut moved = 0;
    for (address, owner) in &before {
        if after[address] != *owner {
            moved += 1;
            assert_eq!(after[address], on("node-d"), "{address} moved elsewhere");
        }
    }
    // About a quarter of the addresses; none would be a broken ranking.
    assert!((10..=45).contains(&moved), "{moved} of 100 moved");
}

#[test]
fn removing_a_node_moves_only_what_it_owned() {
    let before = owners(&state(nodes(&ABC), many_services()), &cfg());
    let after = owners(
        &state(nodes(&["node-a", "node-c"]), many_services()),
        &cfg(),
    );
    let mut moved = 0;
    for (address, owner) in &before {
        if *owner == on("node-b") {
            moved += 1;
            assert_ne!(after[address], on("node-b"));
            assert!(after[address].node().is_some());
        } else {
            assert_eq!(
                after[address], *owner,
                "{address} moved from a surviving node"
            );
        }
    }
    assert!(moved > 0);
}

#[test]
fn only_live_members_own_and_all_nodes_without_membership() {
    let web = || svc("web", &["192.0.2.1"]);
    let mut s = state(nodes(&ABC), vec![web()]);
    s.members = Some(BTreeSet::from(["node-a".to_owned(), "node-b".to_owned()]));
    // node-c ranks first but its speaker is not a live member.
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-a"));
    s.members = Some(BTreeSet::new());
    assert_eq!(
        owner_of(&s, "192.0.2.1"),
        Owner::Nobody(Unowned::NoEligibleNode)
    );
    s.members = None;
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-c"));
}

#[test]
fn member_without_a_node_object_is_not_eligible() {
    let mut s = state(
        nodes(&["node-a", "node-b"]),
        vec![svc("web", &["192.0.2.1"])],
    );
    s.members = Some(ABC.iter().map(|n| n.to_string()).collect());
    assert_eq!(owner_of(&s, "192.0.2.1"), on("node-a"));
}

#[test]
fn every_node_computes_the_same_owners_from_the_same_inputs() {
    let mut shuffled = nodes(&ABC);
    shuffled.reverse();
    let mut services = many_services();
    services.reverse();
    assert_eq!(
        owners(&state(nodes(&ABC), many_services()), &cfg()),
        owners(&state(shuffled, services), &cfg())
    );
}

#[test]
fn owned_by_lists_a_nodes_addresses() {
    let result = owners(&state(nodes(&ABC), many_services()), &cfg());
    let mut total = 0;
    for n in ABC {
        let mine: Vec<IpAddr> = owned_by(&result, n).collect();
        assert!(mine.iter().all(|a| result[a] == on(n)));
        total += mine.len();
    }
    assert_eq!(total, 100);
    let by_node: BTreeMap<&str, usize> = ABC
        .iter()
        .map(|n| (*n, owned_by(&result, n).count()))
        .collect();
    // The hash spreads addresses over the nodes.
    assert!(by_node.values().all(|c| *c >= 15), "{by_node:?}");
}

/// MetalLB objects: a pool no L2Advertisement selects is owned by no node;
/// advertisements combine (a node announces if one selects it), and an
/// advertisement's serviceSelectors limit it to the Services they match.
#[test]
fn metallb_advertisements_choose_the_announcing_nodes() {
    let objects = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: web}
spec: {addresses: [192.0.2.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: silent}
spec: {addresses: [192.0.2.16/28]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: zone-a}
spec:
  ipAddressPools: [web]
  nodeSelectors: [{matchLabels: {zone: a}}]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: zone-b-gold}
spec:
  ipAddressPools: [web]
  nodeSelectors: [{matchLabels: {zone: b}}]
  serviceSelectors: [{matchLabels: {tier: gold}}]
"#;
    let config = ferrolb_core::crd::parse(objects).config.unwrap();
    let ns = vec![
        labelled("node-a", "zone", "a"),
        labelled("node-b", "zone", "b"),
        labelled("node-c", "zone", "c"),
    ];
    let plain = svc("plain", &["192.0.2.1"]);
    let mut gold = svc("gold", &["192.0.2.2"]);
    gold.labels.insert("tier".into(), "gold".into());
    let unannounced = svc("quiet", &["192.0.2.17"]);
    let result = owners(&state(ns, vec![plain, gold, unannounced]), &config);
    assert_eq!(result[&ip("192.0.2.1")], on("node-a"));
    assert_eq!(
        result[&ip("192.0.2.2")],
        on(winner(&["node-a", "node-b"], "192.0.2.2"))
    );
    assert_eq!(
        result[&ip("192.0.2.17")],
        Owner::Nobody(Unowned::NoEligibleNode)
    );
}
