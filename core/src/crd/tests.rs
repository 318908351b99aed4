use super::*;
use crate::service::ServiceSpec;

const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: a\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.0/28]\n";
const ALL_ADS: &str = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: all\n  namespace: metallb-system\n";

fn docs(parts: &[&str]) -> String {
    parts.join("---\n")
}

fn ok(text: &str) -> (Config, Vec<Problem>) {
    let p = parse(text);
    let config = p
        .config
        .clone()
        .unwrap_or_else(|| panic!("expected valid: {:#?}", p.problems));
    (config, p.problems)
}

/// The errors, as `object | field | message` lines.
fn errors(text: &str) -> Vec<String> {
    let p = parse(text);
    assert!(p.config.is_none(), "expected errors");
    p.errors()
        .map(|e| {
            format!(
                "{} | {} | {}",
                e.object,
                e.field.as_deref().unwrap_or("-"),
                e.message
            )
        })
        .collect()
}

fn has(lines: &[String], needle: &str) {
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "no line contains {needle:?}: {lines:#?}"
    );
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn pool_defaults_and_every_field() {
    let (c, problems) = ok(&docs(&[POOL, ALL_ADS]));
    assert!(problems.is_empty(), "{problems:#?}");
    let p = &c.pools[0];
    assert_eq!(p.name, "a");
    assert!(p.auto_assign, "autoAssign defaults to true");
    assert!(!p.avoid_buggy_ips, "avoidBuggyIPs defaults to false");
    assert_eq!(p.service_allocation, None);
    assert_eq!(p.advertisements, vec![Advertisement::default()]);
    assert_eq!(c.order, PoolOrder::Priority);

    let full = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: b\nspec:\n  addresses: [192.0.2.16-192.0.2.20, \"2001:db8::/126\"]\n  autoAssign: false\n  avoidBuggyIPs: true\n  serviceAllocation:\n    priority: 5\n    namespaces: [web, api]\n    namespaceSelectors:\n    - matchLabels: {env: prod}\n    serviceSelectors:\n    - matchExpressions:\n      - {key: tier, operator: In, values: [gold]}\n";
    let (c, _) = ok(&docs(&[full, ALL_ADS]));
    let p = &c.pools[0];
    assert_eq!(p.ranges.len(), 2);
    assert!(!p.auto_assign && p.avoid_buggy_ips);
    let a = p.service_allocation.as_ref().unwrap();
    assert_eq!(a.priority, Some(5));
    assert_eq!(
        a.namespaces,
        ["api".to_owned(), "web".to_owned()].into_iter().collect()
    );
    assert!(a.namespace_selectors[0].matches(&labels(&[("env", "prod")])));
    assert!(a.service_selectors[0].matches(&labels(&[("tier", "gold")])));
    assert!(!a.service_selectors[0].matches(&labels(&[("tier", "iron")])));
}

#[test]
fn priority_zero_is_unset() {
    let p = POOL.replace(
        "  addresses: [192.0.2.0/28]\n",
        "  addresses: [192.0.2.0/28]\n  serviceAllocation: {priority: 0, namespaces: [x]}\n",
    );
    let (c, _) = ok(&docs(&[&p, ALL_ADS]));
    assert_eq!(
        c.pools[0].service_allocation.as_ref().unwrap().priority,
        None
    );
}

#[test]
fn advertisement_fields() {
    let ad = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: edge\nspec:\n  ipAddressPools: [a]\n  nodeSelectors:\n  - matchLabels: {edge: \"true\"}\n  interfaces: [eth0, bond0]\n  serviceSelectors:\n  - matchLabels: {expose: l2}\n";
    let (c, problems) = ok(&docs(&[POOL, ad]));
    assert!(problems.is_empty(), "{problems:#?}");
    let p = &c.pools[0];
    assert_eq!(p.advertisements.len(), 1);
    assert!(p.selects_node(&labels(&[("edge", "true")])));
    assert!(!p.selects_node(&labels(&[])));
    assert_eq!(p.interfaces_on(None), ["eth0", "bond0"]);
    assert!(p.announces(&labels(&[("edge", "true")]), &labels(&[("expose", "l2")])));
    let edge = labels(&[("edge", "true")]);
    let l2 = labels(&[("expose", "l2")]);
    assert_eq!(
        p.interfaces_for(Some(&edge), Some(&[&l2])),
        ["eth0", "bond0"]
    );
    // No advertisement for these holders: no interface of its own, so the
    // answer is empty (the election gives such an address no owner anyway).
    assert!(p.interfaces_for(Some(&edge), Some(&[])).is_empty());
    assert!(!p.announces(&labels(&[("edge", "true")]), &labels(&[])));
}

#[test]
fn several_advertisements_of_a_pool_combine() {
    let a1 = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: one\nspec:\n  ipAddressPools: [a]\n  nodeSelectors: [{matchLabels: {zone: a}}]\n  interfaces: [eth0]\n";
    let a2 = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: two\nspec:\n  ipAddressPools: [a]\n  nodeSelectors: [{matchLabels: {zone: b}}]\n  interfaces: [eth1, eth0]\n";
    let a3 = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: three\nspec:\n  ipAddressPools: [a]\n  nodeSelectors: [{matchLabels: {zone: c}}]\n";
    // The same advertisement twice counts once, as in MetalLB.
    let a1_again = a1.replace("name: one", "name: one-again");
    let (c, _) = ok(&docs(&[POOL, a1, a2, a3, &a1_again]));
    let p = &c.pools[0];
    assert_eq!(p.advertisements.len(), 3);
    let zone = |z| labels(&[("zone", z)]);
    // A node announces if one advertisement selects it...
    assert!(p.selects_node(&zone("a")) && p.selects_node(&zone("b")));
    assert!(!p.selects_node(&zone("d")));
    // ...on the interfaces of the advertisements that select it.
    assert_eq!(p.interfaces_on(Some(&zone("a"))), ["eth0"]);
    assert_eq!(p.interfaces_on(Some(&zone("b"))), ["eth1", "eth0"]);
    // One without interfaces means every interface (the default choice).
    assert!(p.interfaces_on(Some(&zone("c"))).is_empty());
    assert!(p.interfaces_on(None).is_empty());
    let (c, _) = ok(&docs(&[POOL, a1, a2]));
    assert_eq!(c.pools[0].interfaces_on(None), ["eth0", "eth1"]);
}

#[test]
fn advertisement_selects_pools_by_name_by_label_or_all() {
    let pools = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: px\n  labels: {exposure: public}\nspec:\n  addresses: [192.0.2.0/28]\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: py\nspec:\n  addresses: [192.0.2.16/28]\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: pz\nspec:\n  addresses: [192.0.2.32/28]\n";
    let by_label = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: public\nspec:\n  ipAddressPoolSelectors: [{matchLabels: {exposure: public}}]\n  interfaces: [eth9]\n";
    let by_name = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: named\nspec:\n  ipAddressPools: [py]\n  interfaces: [eth8]\n";
    let (c, problems) = ok(&docs(&[pools, by_label, by_name]));
    assert_eq!(c.pools[0].interfaces_on(None), ["eth9"]);
    assert_eq!(c.pools[1].interfaces_on(None), ["eth8"]);
    assert!(c.pools[2].advertisements.is_empty());
    // z is assigned but not announced: a warning, not an error.
    let w: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .collect();
    assert_eq!(w.len(), 1, "{problems:#?}");
    assert_eq!(w[0].object, "IPAddressPool pz");
    assert!(w[0].message.contains("not announced"), "{}", w[0].message);
    // An advertisement that names no pool and selects none announces all.
    let (c, _) = ok(&docs(&[pools, ALL_ADS]));
    assert!(c.pools.iter().all(|p| p.advertisements.len() == 1));
}

#[test]
fn unknown_pool_name_in_an_advertisement_is_a_warning() {
    let ad = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2\n  namespace: metallb-system\nspec:\n  ipAddressPools: [a, nope]\n";
    let (c, problems) = ok(&docs(&[POOL, ad]));
    assert_eq!(c.pools[0].advertisements.len(), 1);
    let w = &problems[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.object, "L2Advertisement metallb-system/l2");
    assert_eq!(w.field.as_deref(), Some("spec.ipAddressPools[1]"));
    assert!(w.message.contains("\"nope\""), "{w}");
}

#[test]
fn bgp_kinds_are_one_notice_and_never_an_error() {
    let peer = "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata:\n  name: router\n  namespace: metallb-system\nspec:\n  myASN: 64500\n  peerASN: 64501\n  peerAddress: 10.0.0.1\n";
    let ad = "apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata:\n  name: bgp\n  namespace: metallb-system\n";
    let bfd = "apiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata:\n  name: fast\n";
    let community = "apiVersion: metallb.io/v1beta1\nkind: Community\nmetadata:\n  name: c\n";
    let (c, problems) = ok(&docs(&[POOL, ALL_ADS, peer, ad, bfd, community]));
    assert_eq!(c.pools.len(), 1);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let n = &problems[0];
    assert_eq!(n.severity, Severity::Notice);
    assert!(n.message.contains("BGP is not supported"), "{n}");
    for name in [
        "BGPPeer metallb-system/router",
        "BGPAdvertisement metallb-system/bgp",
        "BFDProfile fast",
        "Community c",
    ] {
        assert!(n.object.contains(name), "{n}");
    }
}

#[test]
fn unknown_kinds_and_versions_are_errors_naming_the_object() {
    let cm = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: metallb-system\n";
    let old = POOL.replace("metallb.io/v1beta1", "metallb.io/v1alpha1");
    let legacy = "apiVersion: metallb.io/v1beta1\nkind: AddressPool\nmetadata:\n  name: old\nspec:\n  protocol: layer2\n  addresses: [192.0.2.64/28]\n";
    let strange = "apiVersion: metallb.io/v1beta1\nkind: Frobnicator\nmetadata:\n  name: f\n";
    let e = errors(&docs(&[cm, &old, legacy, strange]));
    assert_eq!(e.len(), 4, "{e:#?}");
    has(
        &e,
        "Namespace metallb-system | - | not a MetalLB layer-2 object",
    );
    has(
        &e,
        "IPAddressPool metallb-system/a | apiVersion | apiVersion \"metallb.io/v1alpha1\" is not read",
    );
    has(
        &e,
        "AddressPool old | kind | AddressPool is MetalLB's deprecated kind",
    );
    has(&e, "Frobnicator f | - | not a MetalLB layer-2 object");
}

#[test]
fn objects_in_several_namespaces_are_a_warning() {
    let elsewhere = ALL_ADS.replace("namespace: metallb-system", "namespace: default");
    let (_, problems) = ok(&docs(&[POOL, &elsewhere]));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].severity, Severity::Warning);
    assert!(
        problems[0]
            .message
            .contains("several namespaces (default, metallb-system)"),
        "{}",
        problems[0]
    );
}

#[test]
fn status_objects_are_ignored_with_a_notice() {
    let status = "apiVersion: metallb.io/v1beta1\nkind: ServiceL2Status\nmetadata:\n  name: l2-abc\n  namespace: metallb-system\nstatus:\n  node: n1\n";
    let (_, problems) = ok(&docs(&[POOL, ALL_ADS, status]));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].severity, Severity::Notice);
}

#[test]
fn every_error_is_reported_with_its_field_path() {
    let bad = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: b\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.0/24, 192.0.2.0/33, 10.0.0.9-10.0.0.1, 192.0.2.128/25]\n  autoAssign: \"false\"\n  avoidBuggyIPs: 1\n  colour: blue\n  serviceAllocation:\n    priority: many\n    namespaces: [web, web, Bad_NS]\n    serviceSelectors:\n    - matchLabels: {tier: gold}\n    - matchLabels: {tier: gold}\n    - matchExpressions: [{key: tier, operator: Near, values: [x]}]\n";
    let e = errors(&docs(&[bad, ALL_ADS]));
    let at = |field: &str, msg: &str| {
        let head = format!("IPAddressPool metallb-system/b | {field} | ");
        assert!(
            e.iter().any(|l| l.starts_with(&head) && l.contains(msg)),
            "no error at {field} with {msg:?}: {e:#?}"
        );
    };
    at("spec.addresses[1]", "larger than 32");
    at("spec.addresses[2]", "");
    at(
        "spec.addresses[3]",
        "\"192.0.2.128/25\" overlaps with entry \"192.0.2.0/24\" of the same pool",
    );
    at(
        "spec.autoAssign",
        "expected true or false (unquoted), found a string",
    );
    at("spec.avoidBuggyIPs", "found a number");
    at("spec.colour", "unknown field \"colour\"");
    at(
        "spec.serviceAllocation.priority",
        "expected a whole number, found a string",
    );
    at("spec.serviceAllocation.namespaces[1]", "listed twice");
    at(
        "spec.serviceAllocation.namespaces[2]",
        "not a valid namespace name",
    );
    at(
        "spec.serviceAllocation.serviceSelectors[1]",
        "the same selector is listed twice",
    );
    at(
        "spec.serviceAllocation.serviceSelectors[2]",
        "matchExpressions \"tier\": unknown operator \"Near\"",
    );
    assert_eq!(e.len(), 11, "{e:#?}");
}

#[test]
fn missing_parts_are_errors() {
    let no_name = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {}\nspec:\n  addresses: [192.0.2.0/28]\n";
    let no_spec = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: c\n";
    let empty = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: d\nspec:\n  addresses: []\n";
    let bad_name = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: Bad_Name\nspec:\n  addresses: [192.0.2.64/28]\n";
    let long = format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {}.{}\nspec:\n  addresses: [192.0.2.96/28]\n",
        "p".repeat(32),
        "p".repeat(31)
    );
    let e = errors(&docs(&[no_name, no_spec, empty, bad_name, &long, ALL_ADS]));
    has(&e, "IPAddressPool in document 1 | metadata.name | missing");
    has(&e, "IPAddressPool c | spec | missing");
    has(
        &e,
        "IPAddressPool c | spec.addresses | pool has no prefixes defined",
    );
    has(
        &e,
        "IPAddressPool d | spec.addresses | pool has no prefixes defined",
    );
    has(
        &e,
        "IPAddressPool Bad_Name | metadata.name | \"Bad_Name\" is not a valid object name",
    );
    has(&e, "is 64 characters long; at most 63");
}

#[test]
fn duplicates_and_overlaps_across_pools() {
    let b = POOL
        .replace("name: a", "name: b")
        .replace("192.0.2.0/28", "192.0.2.8-192.0.2.20");
    let a_again = POOL.replace("192.0.2.0/28", "198.51.100.0/28");
    let ad2 = ALL_ADS.to_owned();
    let e = errors(&docs(&[POOL, &b, &a_again, ALL_ADS, &ad2]));
    has(
        &e,
        "IPAddressPool metallb-system/b | spec.addresses[0] | \"192.0.2.8-192.0.2.20\" overlaps with entry \"192.0.2.0/28\" of IPAddressPool metallb-system/a",
    );
    has(
        &e,
        "IPAddressPool metallb-system/a | metadata.name | duplicate definition of pool \"a\"",
    );
    has(
        &e,
        "L2Advertisement metallb-system/all | metadata.name | duplicate definition of L2Advertisement",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn advertisement_errors_name_their_fields() {
    let ad = "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: bad\nspec:\n  ipAddressPools: [a, a]\n  interfaces: [\"eth 0\"]\n  nodeSelectors: [{matchLabels: {zone: 7}}]\n  ipAddressPoolSelector: []\n";
    let e = errors(&docs(&[POOL, ad]));
    has(
        &e,
        "L2Advertisement bad | spec.ipAddressPools[1] | \"a\" is listed twice",
    );
    has(
        &e,
        "L2Advertisement bad | spec.interfaces[0] | \"eth 0\" is not a valid interface name",
    );
    has(
        &e,
        "L2Advertisement bad | spec.nodeSelectors[0].matchLabels.zone | expected a string",
    );
    has(
        &e,
        "L2Advertisement bad | spec.ipAddressPoolSelector | unknown field",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn yaml_errors_and_lists() {
    let e = errors("apiVersion: metallb.io/v1beta1\nkind: [\n");
    has(&e, "the file | - | could not parse the YAML");
    // `kubectl get ipaddresspools,l2advertisements -o yaml` prints a List.
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: metallb.io/v1beta1\n  kind: IPAddressPool\n  metadata: {name: a, namespace: metallb-system, uid: x, resourceVersion: \"1\"}\n  spec: {addresses: [192.0.2.0/28]}\n  status: {assignedIPv4: 0}\n- apiVersion: metallb.io/v1beta1\n  kind: L2Advertisement\n  metadata: {name: l2, namespace: metallb-system}\n  spec: {}\n";
    assert!(looks_like_crds(list));
    let (c, problems) = ok(list);
    assert_eq!(c.pools.len(), 1);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn detection_by_content() {
    assert!(looks_like_crds(POOL));
    assert!(!looks_like_crds(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n"
    ));
    assert!(!looks_like_crds(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config\ndata:\n  config: |\n    address-pools: []\n"
    ));
    assert!(!looks_like_crds("not: [valid"));
}

#[test]
fn a_priority_alone_selects_no_service() {
    let p = POOL.replace(
        "  addresses: [192.0.2.0/28]\n",
        "  addresses: [192.0.2.0/28]\n  serviceAllocation: {priority: 3}\n",
    );
    let (c, problems) = ok(&docs(&[&p, ALL_ADS]));
    has(
        &problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "names no namespaces, namespaceSelectors or serviceSelectors",
    );
    // MetalLB assigns from it only on request.
    assert!(
        c.auto_assign_candidates(&ServiceSpec::simple("web", "s"))
            .iter()
            .all(Vec::is_empty)
    );
}

/// MetalLB's order: pools whose service allocation picks the Service, by
/// priority (unset last), then pools without one.
#[test]
fn candidates_follow_metallb_priorities() {
    let pool = |name: &str, cidr: &str, alloc: &str| {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\nspec:\n  addresses: [{cidr}]\n{alloc}"
        )
    };
    let text = docs(&[
        &pool("open", "192.0.2.0/28", ""),
        &pool(
            "web-low",
            "192.0.2.16/28",
            "  serviceAllocation: {priority: 20, namespaces: [web]}\n",
        ),
        &pool(
            "web-unset",
            "192.0.2.32/28",
            "  serviceAllocation: {namespaces: [web]}\n",
        ),
        &pool(
            "web-high",
            "192.0.2.48/28",
            "  serviceAllocation: {priority: 10, namespaces: [web]}\n",
        ),
        &pool(
            "gold",
            "192.0.2.64/28",
            "  serviceAllocation:\n    priority: 15\n    serviceSelectors: [{matchLabels: {tier: gold}}]\n",
        ),
        &pool(
            "staging",
            "192.0.2.80/28",
            "  serviceAllocation:\n    priority: 1\n    namespaceSelectors: [{matchLabels: {env: staging}}]\n",
        ),
        ALL_ADS,
    ]);
    let (c, _) = ok(&text);
    let names = |spec: &ServiceSpec| -> Vec<Vec<&str>> {
        c.auto_assign_candidates(spec)
            .into_iter()
            .map(|g| g.into_iter().map(|i| c.pools[i].name.as_str()).collect())
            .collect()
    };
    let web = ServiceSpec::simple("web", "s");
    assert_eq!(
        names(&web),
        vec![vec!["web-high", "web-low", "web-unset"], vec!["open"]]
    );
    let mut gold = ServiceSpec::simple("web", "g");
    gold.labels = labels(&[("tier", "gold")]);
    assert_eq!(
        names(&gold),
        vec![
            vec!["web-high", "gold", "web-low", "web-unset"],
            vec!["open"]
        ]
    );
    let other = ServiceSpec::simple("other", "s");
    assert_eq!(names(&other), vec![vec![], vec!["open"]]);
    // Namespace selectors need the namespace's labels: unknown, not chosen.
    let mut staging = ServiceSpec::simple("qa", "s");
    assert_eq!(names(&staging), vec![vec![], vec!["open"]]);
    staging.namespace_labels = Some(labels(&[("env", "staging")]));
    assert_eq!(names(&staging), vec![vec!["staging"], vec!["open"]]);
}

/// A ConfigMap keeps config order where MetalLB's rule would change it.
#[test]
fn configmap_order_is_kept() {
    let in_order = config::parse(
        "address-pools:\n- name: team\n  protocol: layer2\n  namespaces: [web]\n  addresses: [192.0.2.0/28]\n- name: rest\n  protocol: layer2\n  addresses: [192.0.2.16/28]\n",
    )
    .unwrap();
    assert_eq!(in_order.order, PoolOrder::Priority);
    let out_of_order = config::parse(
        "address-pools:\n- name: rest\n  protocol: layer2\n  addresses: [192.0.2.16/28]\n- name: team\n  protocol: layer2\n  namespaces: [web]\n  addresses: [192.0.2.0/28]\n",
    )
    .unwrap();
    assert_eq!(out_of_order.order, PoolOrder::ConfigOrder);
    let web = ServiceSpec::simple("web", "s");
    assert_eq!(out_of_order.auto_assign_candidates(&web), vec![vec![0, 1]]);
    let conv = to_crds(&out_of_order, "metallb-system").unwrap();
    assert_eq!(conv.warnings.len(), 1);
    assert!(
        conv.warnings[0].contains("pool \"rest\" (every namespace) comes before \"team\""),
        "{:?}",
        conv.warnings
    );
}

#[test]
fn converted_configmaps_read_back_equal() {
    let cm = "address-pools:\n- name: team-a\n  protocol: layer2\n  namespaces: [team-a, team-b]\n  addresses: [198.51.100.0/28, 198.51.100.77/32]\n  node-selectors:\n  - matchLabels: {ferrolb.io/edge: \"true\"}\n    matchExpressions:\n    - {key: zone, operator: NotIn, values: [z]}\n  interfaces: [bond0, eth1]\n- name: shared\n  protocol: layer2\n  addresses: [203.0.113.10-203.0.113.20, \"2001:db8::/120\"]\n  avoid-buggy-ips: true\n- name: manual\n  protocol: layer2\n  auto-assign: false\n  addresses: [192.0.2.0/24]\n";
    let from_cm = config::parse(cm).unwrap();
    let conv = to_crds(&from_cm, "lb").unwrap();
    assert!(conv.warnings.is_empty());
    assert!(conv.yaml.contains("namespace: lb"), "{}", conv.yaml);
    let (from_crds, problems) = ok(&conv.yaml);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(from_cm, from_crds);
}

#[test]
fn conversion_refuses_names_that_cannot_be_objects() {
    let c = config::parse(
        "address-pools:\n- name: Team_A\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n",
    )
    .unwrap();
    let e = to_crds(&c, "metallb-system").unwrap_err();
    assert!(
        e[0].contains("pool \"Team_A\": not a valid object name"),
        "{e:?}"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: a\n  labels: {x: y}\nspec:\n  addresses: [192.0.2.0/28, \"2001:db8::/126\"]\n  autoAssign: false\n  serviceAllocation:\n    priority: 3\n    namespaces: [web]\n    namespaceSelectors: [{matchLabels: {env: prod}}]\n    serviceSelectors: [{matchExpressions: [{key: tier, operator: In, values: [gold]}]}]\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2\nspec:\n  ipAddressPools: [a]\n  ipAddressPoolSelectors: [{matchLabels: {x: y}}]\n  nodeSelectors: [{matchLabels: {edge: \"true\"}}]\n  interfaces: [eth0]\n";

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Any edit of a valid file (a cut, an insertion) parses without a
        /// panic; what it accepts has a pool per valid IPAddressPool, and what
        /// it refuses has an error naming an object.
        #[test]
        fn edits_never_panic(at in 0usize..FILE.len(), cut in 0usize..12, insert in "[-a-z0-9:{}\\[\\], \n\"]{0,6}") {
            let mut text = FILE.to_owned();
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + cut).min(text.len());
            text.replace_range(at..end, &insert);
            let parsed = parse(&text);
            match &parsed.config {
                Some(c) => {
                    prop_assert!(c.pools.len() <= 1);
                    prop_assert!(parsed.errors().next().is_none());
                }
                None => {
                    let first = parsed.errors().next();
                    prop_assert!(first.is_some_and(|e| !e.object.is_empty() && !e.message.is_empty()));
                }
            }
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,6}"
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Any valid ConfigMap config, converted and read back, is the same config.
        #[test]
        fn conversion_round_trips(
            pools in proptest::collection::vec(
                (name(), any::<bool>(), any::<bool>(), proptest::option::of(proptest::collection::btree_set(name(), 1..3)), proptest::collection::vec("eth[0-9]", 0..3), 0u8..3),
                1..5,
            )
        ) {
            let mut text = String::from("address-pools:\n");
            let mut used = BTreeSet::new();
            for (i, (n, auto, buggy, ns, ifs, sel)) in pools.iter().enumerate() {
                if !used.insert(n.clone()) {
                    continue;
                }
                text.push_str(&format!("- name: {n}\n  protocol: layer2\n  addresses: [10.{i}.0.0/24, \"2001:db8:{i}::/120\"]\n  auto-assign: {auto}\n  avoid-buggy-ips: {buggy}\n"));
                if let Some(ns) = ns {
                    text.push_str(&format!("  namespaces: [{}]\n", ns.iter().cloned().collect::<Vec<_>>().join(", ")));
                }
                if !ifs.is_empty() {
                    text.push_str(&format!("  interfaces: [{}]\n", ifs.join(", ")));
                }
                match sel {
                    1 => text.push_str("  node-selectors: [{matchLabels: {edge: \"true\"}}]\n"),
                    2 => text.push_str("  node-selectors: [{matchExpressions: [{key: zone, operator: Exists}]}]\n"),
                    _ => {}
                }
            }
            let from_cm = config::parse(&text).unwrap();
            let conv = to_crds(&from_cm, "metallb-system").unwrap();
            let back = parse(&conv.yaml);
            prop_assert!(back.errors().next().is_none(), "{:#?}", back.problems);
            let back = back.config.unwrap();
            // The order is the one thing the objects may not carry over.
            if from_cm.order == PoolOrder::Priority {
                prop_assert_eq!(&from_cm, &back);
            } else {
                prop_assert_eq!(&from_cm.pools, &back.pools);
                prop_assert_eq!(conv.warnings.len(), 1);
            }
        }
    }
}
