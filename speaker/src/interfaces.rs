//! Which interfaces the speaker announces on (DESIGN section 6): up, not
//! loopback, not NOARP, not enslaved to a bond or bridge (the bond or
//! bridge itself is used), and not matching the exclude list.

use std::collections::BTreeMap;
use std::io;
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
                loopback: flags.contains(InterfaceFlags::IFF_LOOPBACK),
                noarp: flags.contains(InterfaceFlags::IFF_NOARP),
            },
        );
    }
    Ok(by_name.into_values().collect())
}

/// The interfaces to announce on, by DESIGN section 6's rules; `only`, when
/// not empty (a pool's `interfaces`), narrows them to those names.
pub fn select<'a>(
    all: &'a [Interface],
    excludes: &[String],
    only: &[String],
) -> Vec<&'a Interface> {
    all.iter()
        .filter(|i| i.up && !i.loopback && !i.noarp && !i.enslaved)
        .filter(|i| !excludes.iter().any(|p| i.name.starts_with(p.as_str())))
        .filter(|i| only.is_empty() || only.contains(&i.name))
        .collect()
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
    }
}
