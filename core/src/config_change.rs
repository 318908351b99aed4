//! What changed between two configs, in words for the `ConfigLoaded` Event and
//! log line: pools added, removed, resized or otherwise changed.

use crate::config::{AddressPool, Config};

/// One difference between the config in force and a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolChange {
    Added {
        pool: String,
        addresses: u128,
    },
    Removed {
        pool: String,
    },
    /// The ranges changed; `from`/`to` count usable addresses.
    Resized {
        pool: String,
        from: u128,
        to: u128,
    },
    /// Same addresses; other settings changed (named in `what`).
    Changed {
        pool: String,
        what: Vec<&'static str>,
    },
    /// The pools are the same but come in another order (which decides the
    /// choice among auto-assign pools).
    Reordered,
}

/// The differences from `old` (`None`: nothing was loaded before) to `new`,
/// pools matched by name, in `new`'s order then removed pools.
pub fn changes(old: Option<&Config>, new: &Config) -> Vec<PoolChange> {
    let Some(old) = old else {
        return new
            .pools
            .iter()
            .map(|p| PoolChange::Added {
                pool: p.name.clone(),
                addresses: p.usable_addresses(),
            })
            .collect();
    };
    let mut out = Vec::new();
    for p in &new.pools {
        match old.pool(&p.name) {
            None => out.push(PoolChange::Added {
                pool: p.name.clone(),
                addresses: p.usable_addresses(),
            }),
            Some(o) => {
                if o.ranges != p.ranges || o.avoid_buggy_ips != p.avoid_buggy_ips {
                    out.push(PoolChange::Resized {
                        pool: p.name.clone(),
                        from: o.usable_addresses(),
                        to: p.usable_addresses(),
                    });
                }
                let what = settings_changed(o, p);
                if !what.is_empty() {
                    out.push(PoolChange::Changed {
                        pool: p.name.clone(),
                        what,
                    });
                }
            }
        }
    }
    for o in &old.pools {
        if new.pool(&o.name).is_none() {
            out.push(PoolChange::Removed {
                pool: o.name.clone(),
            });
        }
    }
    if out.is_empty() && old != new {
        out.push(PoolChange::Reordered);
    }
    out
}

fn settings_changed(o: &AddressPool, p: &AddressPool) -> Vec<&'static str> {
    let mut what = Vec::new();
    if o.auto_assign != p.auto_assign {
        what.push("auto-assign");
    }
    // The ConfigMap's words first; what only MetalLB's objects can change after.
    if o.namespaces() != p.namespaces() {
        what.push("namespaces");
    }
    let node_selectors = |a: &AddressPool| {
        a.advertisements
            .iter()
            .flat_map(|ad| ad.node_selectors.clone())
            .collect::<Vec<_>>()
    };
    if node_selectors(o) != node_selectors(p) {
        what.push("node-selectors");
    }
    let interfaces = |a: &AddressPool| {
        a.advertisements
            .iter()
            .flat_map(|ad| ad.interfaces.clone())
            .collect::<Vec<_>>()
    };
    if interfaces(o) != interfaces(p) {
        what.push("interfaces");
    }
    let rest = |a: &AddressPool| {
        a.service_allocation
            .as_ref()
            .map(|s| {
                (
                    s.priority,
                    s.namespace_selectors.clone(),
                    s.service_selectors.clone(),
                )
            })
            .unwrap_or_default()
    };
    if rest(o) != rest(p) {
        what.push("service allocation");
    }
    if o.advertisements.len() != p.advertisements.len()
        || o.advertisements
            .iter()
            .zip(&p.advertisements)
            .any(|(a, b)| a.service_selectors != b.service_selectors)
    {
        what.push("L2 advertisements");
    }
    what
}

/// The `ConfigLoaded` message: how many pools, then what changed.
pub fn describe(old: Option<&Config>, new: &Config) -> String {
    let n = new.pools.len();
    let head = format!(
        "config loaded: {n} address pool{}",
        if n == 1 { "" } else { "s" }
    );
    let parts: Vec<String> = changes(old, new)
        .iter()
        .map(|c| match c {
            PoolChange::Added { pool, addresses } => format!(
                "added pool {pool:?} ({addresses} address{})",
                if *addresses == 1 { "" } else { "es" }
            ),
            PoolChange::Removed { pool } => format!("removed pool {pool:?}"),
            PoolChange::Resized { pool, from, to } => {
                format!("pool {pool:?} resized from {from} to {to} addresses")
            }
            PoolChange::Changed { pool, what } => {
                format!("pool {pool:?} changed {}", what.join(", "))
            }
            PoolChange::Reordered => "pools reordered".to_owned(),
        })
        .collect();
    if parts.is_empty() {
        format!("{head} (unchanged)")
    } else {
        format!("{head}: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn cfg(text: &str) -> Config {
        parse(text).unwrap()
    }

    const A8: &str = "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/29]\n";

    #[test]
    fn first_load_lists_every_pool() {
        assert_eq!(
            describe(None, &cfg(A8)),
            "config loaded: 1 address pool: added pool \"a\" (8 addresses)"
        );
    }

    #[test]
    fn same_pool_count_but_resized_is_described() {
        let new =
            cfg("address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n");
        assert_eq!(
            describe(Some(&cfg(A8)), &new),
            "config loaded: 1 address pool: pool \"a\" resized from 8 to 16 addresses"
        );
    }

    #[test]
    fn added_removed_and_changed_pools() {
        let old = cfg(
            "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/29]\n- name: gone\n  protocol: layer2\n  addresses: [198.51.100.1-198.51.100.1]\n",
        );
        let new = cfg(
            "address-pools:\n- name: a\n  protocol: layer2\n  auto-assign: false\n  addresses: [192.0.2.0/29]\n- name: b\n  protocol: layer2\n  addresses: [203.0.113.0/30]\n",
        );
        assert_eq!(
            changes(Some(&old), &new),
            vec![
                PoolChange::Changed {
                    pool: "a".into(),
                    what: vec!["auto-assign"]
                },
                PoolChange::Added {
                    pool: "b".into(),
                    addresses: 4
                },
                PoolChange::Removed {
                    pool: "gone".into()
                },
            ]
        );
        assert_eq!(
            describe(Some(&old), &new),
            "config loaded: 2 address pools: pool \"a\" changed auto-assign; added pool \"b\" (4 addresses); removed pool \"gone\""
        );
    }

    #[test]
    fn reorder_and_unchanged() {
        let ab = cfg(
            "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/29]\n- name: b\n  protocol: layer2\n  addresses: [203.0.113.0/30]\n",
        );
        let ba = cfg(
            "address-pools:\n- name: b\n  protocol: layer2\n  addresses: [203.0.113.0/30]\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/29]\n",
        );
        assert_eq!(changes(Some(&ab), &ba), vec![PoolChange::Reordered]);
        assert!(describe(Some(&ab), &ab).ends_with("(unchanged)"));
    }

    /// What only MetalLB's objects can change has words of its own.
    #[test]
    fn service_allocation_and_advertisements_of_metallb_objects() {
        let objects = |priority: u32, ads: &str| {
            crate::crd::parse(&format!(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: a\nspec:\n  addresses: [192.0.2.0/29]\n  serviceAllocation: {{priority: {priority}, namespaces: [web]}}\n{ads}"
            ))
            .config
            .unwrap()
        };
        let one =
            "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2\n";
        let two = format!(
            "{one}---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2b\nspec:\n  interfaces: [eth0]\n"
        );
        assert_eq!(
            changes(Some(&objects(1, one)), &objects(2, one)),
            vec![PoolChange::Changed {
                pool: "a".into(),
                what: vec!["service allocation"]
            }]
        );
        assert_eq!(
            changes(Some(&objects(1, one)), &objects(1, &two)),
            vec![PoolChange::Changed {
                pool: "a".into(),
                what: vec!["interfaces", "L2 advertisements"]
            }]
        );
    }
}
