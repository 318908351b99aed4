//! Which interfaces the speaker announces on (docs/architecture.md, section 6): up, not
//! loopback, not NOARP, not enslaved to a bond or bridge (the bond or
//! bridge itself is used), and not matching the exclude list.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use ferrolb_core::packet::MacAddr;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// Name prefixes skipped by default: container, CNI and tunnel devices,
/// where announcing would answer for the wrong segment. `--exclude-interfaces`
/// replaces the list.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "docker",
    "cbr",
    "virbr",
    "lxcbr",
    "veth",
    "cali",
    "tunl",
    "flannel",
    "kube-ipvs",
    "cni",
    "nodelocaldns",
    "lxc",
    "cilium",
    "vxlan",
];

/// What the speaker needs to know about a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
    pub up: bool,
    /// The link has carrier (IFF_RUNNING): an interface without it must not
    /// hold addresses, so that a node whose cable is pulled stops announcing.
    pub running: bool,
    pub loopback: bool,
    pub noarp: bool,
    /// Enslaved to a bond or bridge.
    pub enslaved: bool,
}

/// The interfaces of this network namespace. The MAC and index come from
/// the kernel over netlink (getifaddrs); whether an interface is enslaved
/// from `/sys/class/net/<name>/master`, which is right as long as /sys
/// belongs to the speaker's namespace (host network, or `ip netns exec`).
pub fn list() -> io::Result<Vec<Interface>> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for ifaddr in getifaddrs().map_err(io::Error::from)? {
        let Some(link) = ifaddr.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        let flags = ifaddr.flags;
        by_name.insert(
            ifaddr.interface_name.clone(),
            Interface {
                enslaved: Path::new("/sys/class/net")
                    .join(&ifaddr.interface_name)
                    .join("master")
                    .exists(),
                name: ifaddr.interface_name,
                index: link.ifindex() as u32,
                mac: MacAddr(link.addr().unwrap_or_default()),
                up: flags.contains(InterfaceFlags::IFF_UP),
                running: flags.contains(InterfaceFlags::IFF_RUNNING),
                loopback: flags.contains(InterfaceFlags::IFF_LOOPBACK),
                noarp: flags.contains(InterfaceFlags::IFF_NOARP),
            },
        );
    }
    Ok(by_name.into_values().collect())
}

/// The interfaces to announce on, by the rules of docs/architecture.md, section 6; `only`, when
/// not empty (a pool's `interfaces`), narrows them to those names.
pub fn select<'a>(
    all: &'a [Interface],
    excludes: &[String],
    only: &[String],
) -> Vec<&'a Interface> {
    all.iter()
        .filter(|i| i.up && i.running && !i.loopback && !i.noarp && !i.enslaved)
        .filter(|i| !excludes.iter().any(|p| i.name.starts_with(p.as_str())))
        .filter(|i| only.is_empty() || only.contains(&i.name))
        .collect()
}

/// Whether this node can announce at all, as far as links go: `None` when
/// no interface would announce (nothing to judge), else whether one of those
/// that would has carrier and is up. The interfaces that would announce are
/// those the rules allow whatever their link state, named by a pool's
/// advertisement or holding an address in the subnet of a pool's addresses.
pub fn carrier(
    all: &[Interface],
    assigned: &[Assigned],
    excludes: &[String],
    pool_addresses: &[IpAddr],
    named: &[String],
) -> Option<bool> {
    let candidates: Vec<&Interface> = all
        .iter()
        .filter(|i| !i.loopback && !i.noarp && !i.enslaved)
        .filter(|i| !excludes.iter().any(|p| i.name.starts_with(p.as_str())))
        .filter(|i| {
            named.contains(&i.name)
                || assigned.iter().any(|a| {
                    a.interface == i.name && pool_addresses.iter().any(|ip| a.subnet_contains(*ip))
                })
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates.iter().any(|i| i.up && i.running))
}

/// An address assigned to an interface, with its prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub interface: String,
    pub address: IpAddr,
    pub prefix: u8,
}

impl Assigned {
    /// Whether `ip` lies in this address's subnet.
    pub fn subnet_contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Every address assigned to an interface of this network namespace.
pub fn assigned() -> io::Result<Vec<Assigned>> {
    let mut out = Vec::new();
    for ifaddr in getifaddrs().map_err(io::Error::from)? {
        let (Some(address), Some(mask)) = (ifaddr.address.as_ref(), ifaddr.netmask.as_ref()) else {
            continue;
        };
        let (address, prefix) =
            if let (Some(a), Some(m)) = (address.as_sockaddr_in(), mask.as_sockaddr_in()) {
                (IpAddr::V4(a.ip()), m.ip().to_bits().count_ones() as u8)
            } else if let (Some(a), Some(m)) = (address.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (IpAddr::V6(a.ip()), m.ip().to_bits().count_ones() as u8)
            } else {
                continue;
            };
        out.push(Assigned {
            interface: ifaddr.interface_name,
            address,
            prefix,
        });
    }
    Ok(out)
}

/// The interfaces to announce `vip` on: [`select`]'s, and when the pool
/// names no interfaces, only those with an address in the VIP's subnet if
/// there are any (docs/architecture.md, section 3: the default is every eligible
/// interface with an address in the same subnet, else every eligible one).
pub fn for_address<'a>(
    all: &'a [Interface],
    assigned: &[Assigned],
    excludes: &[String],
    pool_interfaces: &[String],
    vip: IpAddr,
) -> Vec<&'a Interface> {
    let base = select(all, excludes, pool_interfaces);
    if !pool_interfaces.is_empty() {
        return base;
    }
    let same_subnet: Vec<&Interface> = base
        .iter()
        .copied()
        .filter(|i| {
            assigned
                .iter()
                .any(|a| a.interface == i.name && a.subnet_contains(vip))
        })
        .collect();
    if same_subnet.is_empty() {
        base
    } else {
        same_subnet
    }
}

/// [`DEFAULT_EXCLUDES`] as owned strings, for flags.
pub fn default_excludes() -> Vec<String> {
    DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str) -> Interface {
        Interface {
            name: name.to_owned(),
            index: 1,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            up: true,
            running: true,
            loopback: false,
            noarp: false,
            enslaved: false,
        }
    }

    fn names(v: Vec<&Interface>) -> Vec<&str> {
        v.into_iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn selects_up_unenslaved_arp_interfaces_not_excluded() {
        let mut down = iface("eth1");
        down.up = false;
        let mut lo = iface("lo");
        lo.loopback = true;
        let mut noarp = iface("wg0");
        noarp.noarp = true;
        let mut slave = iface("eth2");
        slave.enslaved = true;
        let all = vec![
            iface("eth0"),
            down,
            lo,
            noarp,
            slave,
            iface("bond0"),
            iface("veth1234"),
            iface("cali0"),
            iface("docker0"),
        ];
        assert_eq!(
            names(select(&all, &default_excludes(), &[])),
            ["eth0", "bond0"]
        );
        // A replaced exclude list lets veth through and keeps docker out.
        assert_eq!(
            names(select(&all, &["docker".to_owned()], &[])),
            ["eth0", "bond0", "veth1234", "cali0"]
        );
        // A pool's interfaces narrow, never widen.
        assert_eq!(
            names(select(
                &all,
                &default_excludes(),
                &["bond0".into(), "eth2".into()]
            )),
            ["bond0"]
        );
        // No carrier: not announced on.
        let mut cut = iface("eth9");
        cut.running = false;
        assert!(select(&[cut], &[], &[]).is_empty());
    }

    #[test]
    fn carrier_is_judged_on_the_interfaces_that_would_announce() {
        let mut all = vec![iface("eth0"), iface("eth1"), iface("veth9")];
        let assigned = vec![
            Assigned {
                interface: "eth0".into(),
                address: "192.0.2.1".parse().unwrap(),
                prefix: 24,
            },
            Assigned {
                interface: "eth1".into(),
                address: "198.51.100.1".parse().unwrap(),
                prefix: 24,
            },
        ];
        let ex = default_excludes();
        let pool: Vec<IpAddr> = vec!["192.0.2.240".parse().unwrap()];
        assert_eq!(carrier(&all, &assigned, &ex, &pool, &[]), Some(true));
        // eth1 (another subnet) losing carrier does not matter...
        all[1].running = false;
        assert_eq!(carrier(&all, &assigned, &ex, &pool, &[]), Some(true));
        // ...eth0, the pool's subnet, does; so does it being set down.
        all[0].running = false;
        assert_eq!(carrier(&all, &assigned, &ex, &pool, &[]), Some(false));
        all[0].running = true;
        all[0].up = false;
        assert_eq!(carrier(&all, &assigned, &ex, &pool, &[]), Some(false));
        // An interface named by an advertisement counts whatever its addresses.
        all[0].up = true;
        assert_eq!(
            carrier(&all, &assigned, &ex, &pool, &["eth1".into()]),
            Some(true),
            "eth0 still has carrier"
        );
        // No pool address in any subnet, nothing named: nothing to judge.
        let elsewhere: Vec<IpAddr> = vec!["203.0.113.9".parse().unwrap()];
        assert_eq!(carrier(&all, &assigned, &ex, &elsewhere, &[]), None);
    }

    #[test]
    fn default_interfaces_are_those_in_the_vips_subnet_if_any() {
        let all = vec![iface("eth0"), iface("eth1")];
        let assigned = vec![
            Assigned {
                interface: "eth0".into(),
                address: "192.0.2.1".parse().unwrap(),
                prefix: 24,
            },
            Assigned {
                interface: "eth1".into(),
                address: "2001:db8::1".parse().unwrap(),
                prefix: 64,
            },
        ];
        let ex = default_excludes();
        let on = |vip: &str, pool: &[String]| {
            names(for_address(
                &all,
                &assigned,
                &ex,
                pool,
                vip.parse().unwrap(),
            ))
        };
        assert_eq!(on("192.0.2.50", &[]), ["eth0"]);
        assert_eq!(on("2001:db8::50", &[]), ["eth1"]);
        assert_eq!(on("203.0.113.5", &[]), ["eth0", "eth1"]);
        assert_eq!(on("192.0.2.50", &["eth1".into()]), ["eth1"]);
    }
}
