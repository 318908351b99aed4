//! MetalLB's objects as a config source, through the allocator: every
//! ConfigMap example converted to IPAddressPool and L2Advertisement objects
//! reads back as the same config and gives the same assignments, and the CRD
//! examples assign as MetalLB's serviceAllocation rules say.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::SpecExt;
use ferrolb_core::selector::Labels;
use ferrolb_core::{AllocError, Allocator, Config, Family, FamilyPolicy, ServiceSpec, config, crd};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config-examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn from_configmap(name: &str) -> Config {
    let doc = config::extract_config_document(&example(name)).unwrap();
    config::parse(&doc).unwrap()
}

fn from_crds(text: &str) -> Config {
    let parsed = crd::parse(text);
    parsed
        .config
        .unwrap_or_else(|| panic!("invalid objects: {:#?}", parsed.problems))
}

fn allocator(c: Config) -> Allocator {
    let mut a = Allocator::new();
    a.set_config(c).unwrap();
    a
}

/// A few Services of several namespaces, families and requests.
fn services() -> Vec<ServiceSpec> {
    vec![
        common::svc("default", "web"),
        common::svc("team-a", "api").tcp(443),
        common::svc("team-b", "db"),
        common::svc("team-a", "dns")
            .udp(53)
            .families(FamilyPolicy::PreferDualStack, &[Family::V4, Family::V6]),
        common::svc("other", "v6").families(FamilyPolicy::SingleStack, &[Family::V6]),
        common::svc("default", "web2").tcp(80).shared("k"),
        common::svc("default", "web3").tcp(81).shared("k"),
        common::svc("default", "manual").pool("manual"),
        common::svc("default", "reserved").pool("reserved"),
    ]
}

fn assign_all(a: &mut Allocator) -> Vec<String> {
    services()
        .iter()
        .map(|s| match a.ensure(s, &[]) {
            Ok(e) => format!(
                "{}: {:?} from {}",
                s.key, e.allocation.ips, e.allocation.pool
            ),
            Err(e) => format!("{}: {}", s.key, e.error),
        })
        .collect()
}

#[test]
fn every_configmap_example_converts_to_equal_objects_and_assignments() {
    let examples = [
        "single-ipv4.yaml",
        "dual-stack.yaml",
        "per-namespace.yaml",
        "node-restricted.yaml",
        "metallb-v0.12.yaml",
    ];
    for name in examples {
        let cm = from_configmap(name);
        let conv = crd::to_crds(&cm, "metallb-system").unwrap();
        assert!(conv.warnings.is_empty(), "{name}: {:?}", conv.warnings);
        let objects = from_crds(&conv.yaml);
        assert_eq!(cm, objects, "{name}:\n{}", conv.yaml);
        let (mut a, mut b) = (allocator(cm), allocator(objects));
        let got = assign_all(&mut a);
        assert_eq!(got, assign_all(&mut b), "{name}");
        assert!(
            got.iter().any(|l| l.contains(" from ")),
            "{name}: nothing assigned: {got:#?}"
        );
    }
}

#[test]
fn every_crd_example_is_valid() {
    for name in [
        "metallb-crds-single-pool.yaml",
        "metallb-crds-dual-stack.yaml",
        "metallb-crds-per-namespace.yaml",
        "metallb-crds-node-restricted.yaml",
    ] {
        let parsed = crd::parse(&example(name));
        assert!(parsed.config.is_some(), "{name}: {:#?}", parsed.problems);
        assert!(parsed.problems.is_empty(), "{name}: {:#?}", parsed.problems);
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
}

fn pool_of(a: &mut Allocator, spec: &ServiceSpec) -> Result<String, Box<AllocError>> {
    a.ensure(spec, &[])
        .map(|e| e.allocation.pool)
        .map_err(|e| Box::new(e.error))
}

#[test]
fn per_namespace_priorities_choose_pools_as_metallb_does() {
    let mut a = allocator(from_crds(&example("metallb-crds-per-namespace.yaml")));
    // team-a's own pool first (priority 10).
    assert_eq!(
        pool_of(&mut a, &common::svc("team-a", "one")).unwrap(),
        "team-a"
    );
    // A premium Service elsewhere: the premium pool (priority 20).
    let mut premium = common::svc("shop", "front");
    premium.labels = labels(&[("tier", "premium")]);
    assert_eq!(pool_of(&mut a, &premium).unwrap(), "premium");
    // A namespace labelled env=staging, when its labels are known.
    let mut staging = common::svc("qa", "app");
    assert_eq!(pool_of(&mut a, &staging).unwrap(), "shared");
    a.release(&staging.key);
    staging.namespace_labels = Some(labels(&[("env", "staging")]));
    assert_eq!(pool_of(&mut a, &staging).unwrap(), "staging");
    // Everyone else: the pool without serviceAllocation; never "reserved".
    assert_eq!(
        pool_of(&mut a, &common::svc("default", "x")).unwrap(),
        "shared"
    );
    // Asking for a pool whose service selectors do not match is refused.
    let refused = pool_of(&mut a, &common::svc("default", "y").pool("premium")).unwrap_err();
    assert!(
        matches!(*refused, AllocError::PoolNotAllowed { ref pool, .. } if pool == "premium"),
        "{refused}"
    );
    let refused = pool_of(&mut a, &common::svc("default", "z").pool("team-a")).unwrap_err();
    assert!(
        matches!(*refused, AllocError::NamespaceNotAllowed { .. }),
        "{refused}"
    );
    // "reserved" on request only.
    assert_eq!(
        pool_of(&mut a, &common::svc("default", "r").pool("reserved")).unwrap(),
        "reserved"
    );
    // When team-a's pool is full, its Services fall back to "shared".
    for i in 0..15 {
        assert_eq!(
            pool_of(&mut a, &common::svc("team-a", &format!("fill{i}"))).unwrap(),
            "team-a"
        );
    }
    assert_eq!(
        pool_of(&mut a, &common::svc("team-a", "overflow")).unwrap(),
        "shared"
    );
}

#[test]
fn unknown_namespace_labels_take_no_held_address_away() {
    let mut a = allocator(from_crds(&example("metallb-crds-per-namespace.yaml")));
    let mut staging = common::svc("qa", "app");
    staging.namespace_labels = Some(labels(&[("env", "staging")]));
    let held = a.ensure(&staging, &[]).unwrap().allocation;
    assert_eq!(held.pool, "staging");
    // A caller that does not know the labels (after a restart) keeps it.
    let mut fresh = allocator(from_crds(&example("metallb-crds-per-namespace.yaml")));
    let unlabelled = common::svc("qa", "app");
    let kept = fresh.ensure(&unlabelled, &held.ips).unwrap();
    assert_eq!(kept.allocation, held);
    assert_eq!(kept.change, ferrolb_core::Change::None);
}
