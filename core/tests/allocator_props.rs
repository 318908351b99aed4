//! Property tests over random sequences of ensure / release / config changes
//! on small pools (so that conflicts, exhaustion and sharing happen often).
//!
//! - no address is ever held by two Services that may not share it;
//! - every held address lies in a pool its holders may use, and is not an
//!   address the pool avoids;
//! - a successful ensure satisfies the request (requested addresses, pool);
//! - the stale check is exact: a config it accepts orphans nothing, and every
//!   orphan it reports really would be orphaned;
//! - replaying the same sequence gives the same assignments, and release then
//!   re-allocate is deterministic.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_core::addr::{AddrRange, is_buggy};
use ferrolb_core::config::{Advertisement, PoolOrder, ServiceAllocation};
use ferrolb_core::{
    AddressPool, Allocator, Config, Family, FamilyPolicy, PortKey, Protocol, ServiceKey,
    ServiceSpec, Sharing,
};
use proptest::prelude::*;

const CASES: u32 = 10_000;

/// The universe: 192.0.2.0-15 and 2001:db8::0-7, cut into ranges for pools.
fn universe_v4(i: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, i])
}
fn universe_v6(i: u8) -> IpAddr {
    format!("2001:db8::{i:x}").parse().unwrap()
}

#[derive(Clone, Debug)]
struct PoolShape {
    auto_assign: bool,
    avoid_buggy: bool,
    only_ns0: bool,
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        // For each v4 / v6 segment: which pool (0..3) or none (3).
        prop::collection::vec(0u8..4, 4),
        prop::collection::vec(0u8..4, 2),
        prop::collection::vec(
            (any::<bool>(), any::<bool>(), prop::bool::weighted(0.25)),
            3,
        ),
    )
        .prop_map(|(v4_owner, v6_owner, shapes)| {
            let shapes: Vec<PoolShape> = shapes
                .into_iter()
                .map(|(a, b, c)| PoolShape {
                    auto_assign: a || c,
                    avoid_buggy: b,
                    only_ns0: c,
                })
                .collect();
            let mut ranges: Vec<Vec<AddrRange>> = vec![vec![]; 3];
            // v4 segments of 4 addresses: .0-.3, .4-.7, .8-.11, .12-.15 (.0 is buggy)
            for (seg, owner) in v4_owner.iter().enumerate() {
                if *owner < 3 {
                    let s = seg as u8 * 4;
                    ranges[*owner as usize]
                        .push(AddrRange::new(universe_v4(s), universe_v4(s + 3)).unwrap());
                }
            }
            for (seg, owner) in v6_owner.iter().enumerate() {
                if *owner < 3 {
                    let s = seg as u8 * 4;
                    ranges[*owner as usize]
                        .push(AddrRange::new(universe_v6(s), universe_v6(s + 3)).unwrap());
                }
            }
            let pools = ranges
                .into_iter()
                .zip(shapes)
                .enumerate()
                .filter(|(_, (r, _))| !r.is_empty())
                .map(|(i, (ranges, shape))| AddressPool {
                    name: format!("p{i}"),
                    ranges,
                    auto_assign: shape.auto_assign,
                    avoid_buggy_ips: shape.avoid_buggy,
                    service_allocation: shape.only_ns0.then(|| ServiceAllocation {
                        namespaces: ["ns0".to_owned()].into(),
                        ..ServiceAllocation::default()
                    }),
                    advertisements: vec![Advertisement::default()],
                })
                .collect();
            // The ConfigMap's rule: every pool a Service may use, in config order.
            Config {
                pools,
                order: PoolOrder::ConfigOrder,
            }
        })
}

fn spec_strategy() -> impl Strategy<Value = ServiceSpec> {
    let families = prop_oneof![
        Just((FamilyPolicy::SingleStack, vec![Family::V4])),
        Just((FamilyPolicy::SingleStack, vec![Family::V6])),
        Just((FamilyPolicy::PreferDualStack, vec![Family::V4, Family::V6])),
        Just((FamilyPolicy::PreferDualStack, vec![Family::V6, Family::V4])),
        Just((FamilyPolicy::RequireDualStack, vec![Family::V4, Family::V6])),
    ];
    let requested = prop_oneof![
        4 => Just(vec![]),
        2 => (0u8..16).prop_map(|i| vec![universe_v4(i)]),
        1 => (0u8..8).prop_map(|i| vec![universe_v6(i)]),
        1 => (0u8..16, 0u8..8).prop_map(|(a, b)| vec![universe_v4(a), universe_v6(b)]),
        1 => Just(vec!["203.0.113.1".parse().unwrap()]),
    ];
    let pool = prop_oneof![4 => Just(None), 1 => (0u8..4).prop_map(|i| Some(format!("p{i}")))];
    let key = prop_oneof![
        Just(None),
        Just(Some("k1".to_owned())),
        Just(Some("k2".to_owned()))
    ];
    let backend = prop_oneof![3 => Just(None), 1 => Just(Some("app=a".to_owned())), 1 => Just(Some("app=b".to_owned()))];
    let ports = prop::collection::btree_set(0usize..3, 0..=2).prop_map(|set| {
        let all = [
            PortKey {
                protocol: Protocol::Tcp,
                port: 80,
            },
            PortKey {
                protocol: Protocol::Tcp,
                port: 443,
            },
            PortKey {
                protocol: Protocol::Udp,
                port: 53,
            },
        ];
        set.into_iter().map(|i| all[i]).collect::<Vec<_>>()
    });
    (0usize..6, families, requested, pool, key, backend, ports).prop_map(
        |(svc, (policy, families), requested_ips, pool, key, backend, ports)| ServiceSpec {
            key: service_key(svc),
            families,
            family_policy: policy,
            requested_ips,
            pool,
            sharing: Sharing {
                key,
                backend,
                ports,
            },
            labels: Default::default(),
            namespace_labels: None,
        },
    )
}

fn service_key(i: usize) -> ServiceKey {
    ServiceKey::new(format!("ns{}", i % 2), format!("svc{i}"))
}

#[derive(Clone, Debug)]
// A test's operation list: the size of a Service's spec (labels included) does not matter.
#[allow(clippy::large_enum_variant)]
enum Op {
    Ensure(ServiceSpec),
    Release(usize),
    SetConfig(Config),
}

fn ops_strategy() -> impl Strategy<Value = (Config, Vec<Op>)> {
    let op = prop_oneof![
        6 => spec_strategy().prop_map(Op::Ensure),
        2 => (0usize..6).prop_map(Op::Release),
        1 => config_strategy().prop_map(Op::SetConfig),
    ];
    (config_strategy(), prop::collection::vec(op, 1..30))
}

/// Applies `op`, checking what can be checked about its outcome, and records
/// the sharing terms each Service holds its addresses under.
fn apply(a: &mut Allocator, terms: &mut BTreeMap<ServiceKey, ServiceSpec>, op: &Op) -> String {
    match op {
        Op::Ensure(spec) => {
            let status = a.allocation(&spec.key).map(|x| x.ips).unwrap_or_default();
            match a.ensure(spec, &status) {
                Ok(r) => {
                    let config = a.config().unwrap();
                    if !spec.requested_ips.is_empty() {
                        let mut want = spec.requested_ips.clone();
                        want.sort();
                        assert_eq!(
                            r.allocation.ips, want,
                            "requested addresses are what is held"
                        );
                    }
                    if let Some(pool) = &spec.pool {
                        for ip in &r.allocation.ips {
                            let (pi, _) = config.locate(*ip).unwrap();
                            assert_eq!(
                                &config.pools[pi].name, pool,
                                "held address is in the requested pool"
                            );
                        }
                    }
                    terms.insert(spec.key.clone(), spec.clone());
                    format!("ok {:?} {:?}", r.allocation, r.change)
                }
                Err(e) => {
                    match &e.kept {
                        Some(kept) => assert_eq!(Some(kept.clone()), a.allocation(&spec.key)),
                        None => {
                            assert_eq!(a.allocation(&spec.key), None);
                            terms.remove(&spec.key);
                        }
                    }
                    format!("err {} kept {:?}", e.error, e.kept)
                }
            }
        }
        Op::Release(i) => {
            terms.remove(&service_key(*i));
            format!("release {:?}", a.release(&service_key(*i)))
        }
        Op::SetConfig(c) => {
            let expected_orphans = held_addresses(a)
                .into_iter()
                .filter(|(ip, holders)| !valid_under(c, *ip, holders))
                .map(|(ip, _)| ip)
                .collect::<Vec<_>>();
            let result = a.set_config(c.clone());
            match &result {
                Ok(()) => assert!(
                    expected_orphans.is_empty(),
                    "accepted a config that orphans {expected_orphans:?}"
                ),
                Err(orphans) => {
                    let reported: Vec<IpAddr> = orphans.iter().map(|o| o.ip).collect();
                    assert_eq!(reported, expected_orphans, "the stale check is exact");
                }
            }
            format!("config {:?}", result.map_err(|o| o.len()))
        }
    }
}

fn held_addresses(a: &Allocator) -> BTreeMap<IpAddr, Vec<ServiceKey>> {
    let mut m: BTreeMap<IpAddr, Vec<ServiceKey>> = BTreeMap::new();
    for (k, ips) in a.allocations() {
        for ip in ips {
            m.entry(*ip).or_default().push(k.clone());
        }
    }
    m
}

fn valid_under(c: &Config, ip: IpAddr, holders: &[ServiceKey]) -> bool {
    c.locate(ip).is_some_and(|(pi, _)| {
        let p = &c.pools[pi];
        !(p.avoid_buggy_ips && is_buggy(ip))
            && holders.iter().all(|h| p.allows_namespace(&h.namespace))
    })
}

fn check_invariants(a: &Allocator, terms: &BTreeMap<ServiceKey, ServiceSpec>) {
    let held = held_addresses(a);
    let config = a.config().expect("a config was set first");
    for (ip, holders) in &held {
        assert!(
            valid_under(config, *ip, holders),
            "{ip} held by {holders:?} outside an allowed pool"
        );
        let mut from_index = a.holders(*ip);
        from_index.sort();
        let mut sorted = holders.clone();
        sorted.sort();
        assert_eq!(from_index, sorted, "holder index agrees with allocations");
        if holders.len() > 1 {
            let specs: Vec<&ServiceSpec> = holders.iter().map(|h| &terms[h]).collect();
            for (i, x) in specs.iter().enumerate() {
                for y in &specs[i + 1..] {
                    assert!(
                        x.sharing.key.is_some() && x.sharing.key == y.sharing.key,
                        "{ip}: keys {x:?} {y:?}"
                    );
                    assert_eq!(x.sharing.backend, y.sharing.backend, "{ip}: backends");
                    assert!(
                        !x.sharing.ports.iter().any(|p| y.sharing.ports.contains(p)),
                        "{ip}: port clash between {} and {}",
                        x.key,
                        y.key
                    );
                }
            }
        }
    }
    for (k, ips) in a.allocations() {
        let fams: Vec<Family> = ips.iter().map(Family::of).collect();
        assert!(!ips.is_empty() && ips.len() <= 2, "{k}: {ips:?}");
        assert!(
            fams.windows(2).all(|w| w[0] != w[1]),
            "{k}: one address per family, {ips:?}"
        );
    }
    for stats in a.pool_stats() {
        let pi = config
            .pools
            .iter()
            .position(|p| p.name == stats.name)
            .unwrap();
        let in_pool = held
            .keys()
            .filter(|ip| config.locate(**ip).map(|(p, _)| p) == Some(pi))
            .count();
        assert_eq!(
            stats.in_use, in_pool as u128,
            "in-use count of pool {}",
            stats.name
        );
    }
}

fn run(config: &Config, ops: &[Op]) -> (Allocator, Vec<String>, BTreeMap<ServiceKey, ServiceSpec>) {
    let mut a = Allocator::new();
    a.set_config(config.clone()).unwrap();
    let mut terms = BTreeMap::new();
    let mut log = Vec::new();
    for op in ops {
        log.push(apply(&mut a, &mut terms, op));
        check_invariants(&a, &terms);
    }
    (a, log, terms)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // Failures print the minimal case; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_over_random_histories((config, ops) in ops_strategy()) {
        run(&config, &ops);
    }

    #[test]
    fn replaying_a_history_gives_the_same_assignments((config, ops) in ops_strategy()) {
        let (a, log_a, _) = run(&config, &ops);
        let (b, log_b, _) = run(&config, &ops);
        prop_assert_eq!(log_a, log_b);
        prop_assert_eq!(a.allocations().collect::<Vec<_>>(), b.allocations().collect::<Vec<_>>());
    }

    #[test]
    fn release_then_reallocate_is_deterministic((config, ops) in ops_strategy(), victim in 0usize..6) {
        let (a, _, terms) = run(&config, &ops);
        let key = service_key(victim);
        let spec = terms.get(&key).cloned().unwrap_or_else(|| {
            let mut s = ServiceSpec::simple(&key.namespace, &key.name);
            s.sharing = Sharing::default();
            s
        });
        let (mut x, mut y) = (a.clone(), a.clone());
        x.release(&key);
        y.release(&key);
        let rx = x.ensure(&spec, &[]);
        let ry = y.ensure(&spec, &[]);
        prop_assert_eq!(rx, ry);
        prop_assert_eq!(x.allocations().collect::<Vec<_>>(), y.allocations().collect::<Vec<_>>());
    }

    #[test]
    fn the_config_parser_never_panics(text in "\\PC{0,200}") {
        let _ = ferrolb_core::config::parse(&text);
    }

    #[test]
    fn the_config_parser_never_panics_on_near_miss_yaml(
        name in "[a-z]{0,3}",
        proto in prop_oneof![Just("layer2"), Just("bgp"), Just(""), Just("l2")],
        entry in "[0-9a-f:./ -]{0,24}",
        flag in prop_oneof![Just("yes"), Just("no"), Just("true"), Just("\"false\""), Just("3")],
    ) {
        let yaml = format!("address-pools:\n- name: {name}\n  protocol: {proto}\n  auto-assign: {flag}\n  addresses:\n  - \"{entry}\"\n");
        if let Ok(c) = ferrolb_core::config::parse(&yaml) {
            // A config the parser accepts is internally consistent: pools never overlap.
            for (i, p) in c.pools.iter().enumerate() {
                for q in &c.pools[i + 1..] {
                    for r in &p.ranges {
                        prop_assert!(!q.ranges.iter().any(|s| s.overlaps(r)));
                    }
                }
            }
        }
    }
}
