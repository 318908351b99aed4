//! The config parser against MetalLB v0.12's rules (reference/metallb.md
//! sections 1.2-1.4), one behaviour per test, plus ferrolb's extensions.

use ferrolb_core::config::{self, ConfigError};

fn ok(yaml: &str) -> ferrolb_core::Config {
    match config::parse(yaml) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got {e:#?}"),
    }
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    match config::parse(yaml) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e,
    }
}

/// The single error of an invalid config, which must name `pool` and contain `needle`.
fn one_error(yaml: &str, pool: Option<&str>, needle: &str) -> ConfigError {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!(e.pool.as_deref(), pool, "{e}");
    assert!(e.message.contains(needle), "{e} should contain {needle:?}");
    e
}

fn ranges(c: &ferrolb_core::Config, pool: usize) -> Vec<String> {
    c.pools[pool].ranges.iter().map(|r| r.to_string()).collect()
}

#[test]
fn empty_document_is_an_empty_config() {
    assert!(ok("").pools.is_empty());
    assert!(ok("# nothing yet\n").pools.is_empty());
    assert!(ok("address-pools: []\n").pools.is_empty());
}

#[test]
fn full_layer2_config_with_defaults() {
    let c = ok(r#"
address-pools:
- name: default
  protocol: layer2
  addresses:
  - 192.0.2.240-192.0.2.250
  - 198.51.100.0/28
  - 2001:db8:1::/120
- name: quiet
  protocol: layer2
  auto-assign: false
  avoid-buggy-ips: true
  addresses: [203.0.113.0/24]
"#);
    assert_eq!(c.pools.len(), 2);
    let d = &c.pools[0];
    assert_eq!(d.name, "default");
    assert!(d.auto_assign && !d.avoid_buggy_ips);
    assert_eq!(d.namespaces(), None);
    assert_eq!(
        ranges(&c, 0),
        [
            "192.0.2.240-192.0.2.250",
            "198.51.100.0-198.51.100.15",
            "2001:db8:1::-2001:db8:1::ff"
        ]
    );
    assert!(!c.pools[1].auto_assign && c.pools[1].avoid_buggy_ips);
}

#[test]
fn yaml_1_1_booleans_are_accepted_like_metallb() {
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  auto-assign: no\n  avoid-buggy-ips: yes\n  addresses: [192.0.2.0/24]\n",
    );
    assert!(!c.pools[0].auto_assign);
    assert!(c.pools[0].avoid_buggy_ips);
}

#[test]
fn numeric_pool_name_is_a_string() {
    assert_eq!(
        ok("address-pools:\n- name: 123\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n").pools
            [0]
        .name,
        "123"
    );
}

#[test]
fn yaml_syntax_error_is_reported_with_its_line() {
    let e = one_error("address-pools: [\n", None, "could not parse config");
    assert!(e.message.contains("line 1"), "{e}");
}

#[test]
fn unknown_key_names_the_key_and_the_pool() {
    let e = one_error(
        "address-pools:\n- name: first\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n- name: second\n  protocol: layer2\n  adresses: [192.0.2.16/28]\n",
        Some("second"),
        "unknown field `adresses`",
    );
    assert!(e.message.contains("line 7"), "{e}");
    one_error(
        "address-pool:\n- name: a\n",
        None,
        "unknown field `address-pool`",
    );
}

#[test]
fn repeated_key_is_an_error() {
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n",
        Some("a"),
        "duplicate",
    );
    one_error("address-pools: []\naddress-pools: []\n", None, "duplicate");
}

#[test]
fn wrong_types_are_errors() {
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: 192.0.2.0/24\n",
        Some("a"),
        "a list is expected here",
    );
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  auto-assign: maybe\n  addresses: [192.0.2.0/24]\n",
        Some("a"),
        "could not parse config",
    );
    one_error("address-pools: 5\n", None, "could not parse config");
}

#[test]
fn missing_name_is_the_first_error_of_a_pool() {
    one_error(
        "address-pools:\n- protocol: layer2\n  addresses: [192.0.2.0/24]\n",
        Some("address-pools[0]"),
        "missing pool name",
    );
    one_error(
        "address-pools:\n- name: \"\"\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n",
        Some("address-pools[0]"),
        "missing pool name",
    );
    // An empty list item is a pool with nothing in it: every rule that applies is reported, name first.
    let errs = errors("address-pools:\n-\n");
    assert!(errs[0].message.contains("missing pool name"), "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.message.contains("no prefixes")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("missing the protocol")),
        "{errs:#?}"
    );
}

#[test]
fn pool_without_addresses_is_refused() {
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n",
        Some("a"),
        "pool has no prefixes defined",
    );
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: []\n",
        Some("a"),
        "pool has no prefixes defined",
    );
}

#[test]
fn each_bad_address_is_reported_with_its_entry() {
    let errs = errors(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses:\n  - 192.0.2.0/33\n  - 192.0.2.9-192.0.2.1\n  - 192.0.2.7\n  - 198.51.100.0/24\n",
    );
    let entries: Vec<_> = errs.iter().map(|e| e.entry.as_deref().unwrap()).collect();
    assert_eq!(
        entries,
        ["192.0.2.0/33", "192.0.2.9-192.0.2.1", "192.0.2.7"]
    );
    assert!(errs.iter().all(|e| e.pool.as_deref() == Some("a")));
}

#[test]
fn protocol_rules() {
    one_error(
        "address-pools:\n- name: a\n  addresses: [192.0.2.0/24]\n",
        Some("a"),
        "missing the protocol field",
    );
    one_error(
        "address-pools:\n- name: a\n  protocol: Layer2\n  addresses: [192.0.2.0/24]\n",
        Some("a"),
        "unknown protocol \"Layer2\"",
    );
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  bgp-advertisements:\n  - aggregation-length: 32\n",
        Some("a"),
        "bgp-advertisements is not allowed in a layer2 pool",
    );
    // An explicitly empty list is accepted, as MetalLB does.
    ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  bgp-advertisements: []\n",
    );
}

#[test]
fn bgp_parts_are_refused_with_errors_that_name_them() {
    let errs = errors(
        r#"
peers:
- peer-address: 192.0.2.1
  peer-asn: 64501
  my-asn: 64500
bgp-communities:
  no-advertise: 65535:65282
address-pools:
- name: bgp-pool
  protocol: bgp
  addresses: [198.51.100.0/24]
- name: l2
  protocol: layer2
  addresses: [192.0.2.0/24]
- name: overlaps-the-bgp-pool
  protocol: layer2
  addresses: [198.51.100.0/25]
"#,
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    // The global BGP sections in one error...
    assert_eq!(errs[0].pool, None);
    assert!(errs[0].message.contains("BGP mode is not supported"));
    for part in ["peers (1)", "bgp-communities"] {
        assert!(
            errs[0].message.contains(part),
            "{} should name {part}",
            errs[0]
        );
    }
    // ...and the BGP pool in an error of its own that names it (the JSON
    // output's `pool` field), whose ranges take part in no overlap report.
    assert_eq!(errs[1].pool.as_deref(), Some("bgp-pool"));
    assert_eq!(errs[1].entry.as_deref(), Some("protocol"));
    assert!(errs[1].message.contains("BGP mode is not supported"));
}

/// MetalLB's YAML 1.1 parser reads a quoted "false" as a string and refuses
/// it for a boolean key; so does ferrolb. Unquoted YAML 1.1 spellings stay
/// booleans, as in MetalLB.
#[test]
fn quoted_booleans_are_type_errors() {
    for key in ["auto-assign", "avoid-buggy-ips"] {
        for quoted in ["\"false\"", "'true'"] {
            let yaml = format!(
                "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n  {key}: {quoted}\n"
            );
            let e = one_error(&yaml, Some("a"), "a boolean");
            assert!(e.message.contains("could not parse config"), "{e}");
        }
    }
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n  auto-assign: no\n  avoid-buggy-ips: yes\n",
    );
    assert!(!c.pools[0].auto_assign);
    assert!(c.pools[0].avoid_buggy_ips);
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n  auto-assign: false\n",
    );
    assert!(!c.pools[0].auto_assign);
}

/// The unknown-key message lists the keys a layer-2 pool may have:
/// `bgp-advertisements` is read only to be refused, so it is not offered.
#[test]
fn unknown_key_message_offers_only_layer2_keys() {
    let e = one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n  autoassign: true\n",
        Some("a"),
        "unknown field",
    );
    assert!(e.message.contains("auto-assign"), "{e}");
    assert!(!e.message.contains("bgp-advertisements"), "{e}");
}

#[test]
fn empty_bgp_sections_are_harmless() {
    let c = ok(
        "peers: []\nbgp-communities: {}\nbfd-profiles: []\naddress-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n",
    );
    assert_eq!(c.pools.len(), 1);
}

#[test]
fn duplicate_pool_names_are_refused_case_sensitively() {
    let yaml = "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.16/28]\n";
    let e = one_error(yaml, Some("a"), "duplicate definition of pool \"a\"");
    assert_eq!(e.entry.as_deref(), Some("name"));
    ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n- name: A\n  protocol: layer2\n  addresses: [192.0.2.16/28]\n",
    );
}

#[test]
fn a_duplicate_with_a_bad_body_reports_the_body_first() {
    let errs = errors(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n- name: a\n  protocol: layer2\n",
    );
    assert!(errs[0].message.contains("no prefixes"), "{errs:#?}");
    assert!(
        errs[1].message.contains("duplicate definition"),
        "{errs:#?}"
    );
}

#[test]
fn overlaps_between_pools_and_within_a_pool_are_refused() {
    // Identical prefixes in two pools.
    let e = one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n- name: b\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n",
        Some("b"),
        "overlaps with entry \"192.0.2.0/24\" of pool \"a\"",
    );
    assert_eq!(e.entry.as_deref(), Some("192.0.2.0/24"));
    // Containment.
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n- name: b\n  protocol: layer2\n  addresses: [192.0.2.128/25]\n",
        Some("b"),
        "overlaps",
    );
    // Partially overlapping ranges.
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.10-192.0.2.20]\n- name: b\n  protocol: layer2\n  addresses: [192.0.2.20-192.0.2.30]\n",
        Some("b"),
        "overlaps",
    );
    // Within one pool.
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24, 192.0.2.5-192.0.2.6]\n",
        Some("a"),
        "of the same pool",
    );
    // IPv6 too.
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [\"2001:db8::/64\"]\n- name: b\n  protocol: layer2\n  addresses: [\"2001:db8::5/128\"]\n",
        Some("b"),
        "overlaps",
    );
}

#[test]
fn adjacent_ranges_are_fine() {
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0-192.0.2.9, 192.0.2.10/31]\n- name: b\n  protocol: layer2\n  addresses: [192.0.2.12-192.0.2.20]\n",
    );
    assert_eq!(
        ranges(&c, 0),
        ["192.0.2.0-192.0.2.9", "192.0.2.10-192.0.2.11"]
    );
}

#[test]
fn dual_stack_pool_mixes_families() {
    let c = ok(
        "address-pools:\n- name: ds\n  protocol: layer2\n  addresses: [192.0.2.0/28, \"2001:db8::/124\"]\n",
    );
    assert_eq!(c.pools[0].ranges.len(), 2);
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let errs = errors(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/33]\n- name: b\n  protocol: udp\n  addresses: [192.0.2.0/24]\n- protocol: layer2\n  addresses: [198.51.100.0/24]\n",
    );
    let pools: Vec<_> = errs.iter().map(|e| e.pool.clone().unwrap()).collect();
    assert_eq!(pools, ["a", "b", "address-pools[2]"], "{errs:#?}");
}

#[test]
fn namespaces_extension() {
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  namespaces: [team-a, team-b]\n",
    );
    assert!(c.pools[0].allows_namespace("team-a"));
    assert!(!c.pools[0].allows_namespace("default"));
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  namespaces: [Team_A]\n",
        Some("a"),
        "not a valid namespace name",
    );
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  namespaces: []\n",
        Some("a"),
        "namespaces is empty",
    );
}

#[test]
fn node_selectors_extension() {
    let c = ok(r#"
address-pools:
- name: edge
  protocol: layer2
  addresses: [192.0.2.0/24]
  node-selectors:
  - matchLabels: {ferrolb.io/edge: "true"}
  - matchExpressions:
    - {key: zone, operator: In, values: [a]}
"#);
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(c.pools[0].selects_node(&labels(&[("ferrolb.io/edge", "true")])));
    assert!(c.pools[0].selects_node(&labels(&[("zone", "a")])));
    assert!(!c.pools[0].selects_node(&labels(&[("zone", "b")])));
    // MetalLB's hyphenated spelling is accepted too.
    ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  node-selectors:\n  - match-labels: {role: edge}\n",
    );
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  node-selectors:\n  - matchExpressions: [{key: zone, operator: Near, values: [a]}]\n",
        Some("a"),
        "unknown operator",
    );
}

#[test]
fn interfaces_extension() {
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  interfaces: [eth0, bond0]\n",
    );
    assert_eq!(c.pools[0].interfaces_on(None), ["eth0", "bond0"]);
    one_error(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n  interfaces: [a-very-long-interface-name]\n",
        Some("a"),
        "not a valid interface name",
    );
}

#[test]
fn configmap_manifest_or_bare_document() {
    let cm = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  namespace: metallb-system
  name: config
data:
  config: |
    address-pools:
    - name: default
      protocol: layer2
      addresses:
      - 192.0.2.240-192.0.2.250
"#;
    let doc = config::extract_config_document(cm).unwrap();
    assert_eq!(ok(&doc).pools[0].name, "default");
    let bare = "address-pools: []\n";
    assert_eq!(config::extract_config_document(bare).unwrap(), bare);
    let no_key = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config}\ndata: {other: x}\n";
    assert!(
        config::extract_config_document(no_key)
            .unwrap_err()
            .message
            .contains("no key \"config\"")
    );
}

#[test]
fn metallb_v0_12_documentation_example_is_accepted_unchanged() {
    // The layer-2 example from MetalLB v0.12's documentation, with
    // documentation-range addresses.
    let cm = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  namespace: metallb-system
  name: config
data:
  config: |
    address-pools:
    - name: default
      protocol: layer2
      addresses:
      - 192.0.2.240-192.0.2.250
    - name: production
      protocol: layer2
      auto-assign: false
      addresses:
      - 198.51.100.0/24
      avoid-buggy-ips: true
    - name: v6
      protocol: layer2
      addresses:
      - 2001:db8:cafe::/64
"#;
    let c = ok(&config::extract_config_document(cm).unwrap());
    assert_eq!(
        c.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["default", "production", "v6"]
    );
}

// === bounds on what a config may cost (issue #17, item 3) ===

#[test]
fn a_config_over_the_size_limit_is_refused_before_parsing() {
    // Exactly at the limit (padded with a comment) is accepted.
    let head = "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n#";
    let mut at_limit = head.to_owned();
    at_limit.push_str(&"x".repeat(config::MAX_CONFIG_BYTES - head.len()));
    assert_eq!(at_limit.len(), config::MAX_CONFIG_BYTES);
    assert_eq!(ok(&at_limit).pools.len(), 1);
    // One byte more is refused, whatever it holds, and not parsed: this one is
    // not even YAML, and the message is about its size only.
    let over = "[".repeat(config::MAX_CONFIG_BYTES + 1);
    let e = one_error(&over, None, "more than the 262144 bytes (256 KiB)");
    assert!(e.message.contains("262145 bytes"), "{e}");
    assert!(e.message.contains("not parsed"), "{e}");
    let five_mib = format!("{at_limit}{}", "y".repeat(5 << 20));
    one_error(&five_mib, None, "the config is 5505024 bytes (5.2 MiB)");
}

#[test]
fn an_alias_bomb_is_refused_with_a_clear_message() {
    let mut bomb =
        String::from("bgp-communities:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, cur) in ('a'..='h').zip('b'..='i') {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        bomb.push_str(&format!("  {cur}: &{cur} [{refs}]\n"));
    }
    let e = one_error(&bomb, None, "the YAML is over ferrolb's limits");
    assert!(
        e.message.contains("keep a config from exhausting memory"),
        "{e}"
    );
    // A long string used by many aliases.
    let fan_out = format!(
        "address-pools:\n- name: &n {}\n  protocol: layer2\n  addresses: [{}]\n",
        "x".repeat(60_000),
        vec!["*n"; 100].join(", ")
    );
    one_error(&fan_out, None, "the YAML is over ferrolb's limits");
    // A few aliases, as a real config might use them, are fine.
    let c = ok(
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n  namespaces: &ns [team-a, team-b]\n- name: b\n  protocol: layer2\n  addresses: [192.0.2.16/28]\n  namespaces: *ns\n",
    );
    assert_eq!(c.pools[0].namespaces(), c.pools[1].namespaces());
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!("peers: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    one_error(
        &deep,
        None,
        "recursion limit exceeded (lists or mappings nested more than 16 deep",
    );
    let mut block = String::from("peers:\n");
    for d in 0..100 {
        block.push_str(&" ".repeat(2 * d + 2));
        block.push_str("- k:\n");
    }
    one_error(&block, None, "nests deeper than 16 levels");
}

#[test]
fn pool_names_longer_than_63_characters_are_refused() {
    let pool = |name: &str| {
        format!("address-pools:\n- name: {name}\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n")
    };
    assert_eq!(ok(&pool(&"p".repeat(63))).pools[0].name.len(), 63);
    // Characters, not bytes: 63 two-byte characters are fine.
    assert_eq!(ok(&pool(&"é".repeat(63))).pools[0].name.chars().count(), 63);
    let e = one_error(
        &pool(&"p".repeat(64)),
        Some("address-pools[0]"),
        "is 64 characters long; at most 63 are allowed",
    );
    assert_eq!(e.entry.as_deref(), Some("name"));
    // A long name is quoted by its start only, in every message.
    let long = "q".repeat(200 * 1024);
    let errs = errors(&format!(
        "address-pools:\n- name: {long}\n  protocol: layer2\n  addresses: [192.0.2.0/33]\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    for e in &errs {
        assert_eq!(e.pool.as_deref(), Some("address-pools[0]"));
        assert!(e.to_string().len() < 300, "{e}");
    }
}

#[test]
fn check_config_extraction_is_bounded_too() {
    // An alias bomb in a manifest: extraction gives up, and the config parser
    // refuses the document within its budget.
    let mut bomb =
        String::from("bgp-communities:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, cur) in ('a'..='h').zip('b'..='i') {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        bomb.push_str(&format!("  {cur}: &{cur} [{refs}]\n"));
    }
    let doc = config::extract_config_document(&bomb).unwrap();
    one_error(&doc, None, "the YAML is over ferrolb's limits");
    // A ConfigMap whose config is over the limit: the same error as the
    // controller's.
    let big = format!(
        "kind: ConfigMap\nmetadata: {{name: config}}\ndata:\n  config: |\n    #{}\n",
        "x".repeat(300 * 1024)
    );
    let doc = config::extract_config_document(&big).unwrap();
    one_error(
        &doc,
        None,
        "more than the 262144 bytes (256 KiB) ferrolb accepts",
    );
}
