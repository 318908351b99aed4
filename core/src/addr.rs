//! Addresses as numbers: families, inclusive ranges, CIDR summarisation and the
//! parsing of pool entries exactly as MetalLB v0.12 reads them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// An IP family, as Kubernetes names them in `spec.ipFamilies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Number of address bits.
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "IPv4" => Ok(Family::V4),
            "IPv6" => Ok(Family::V6),
            other => Err(format!(
                "unknown IP family {other:?} (expected IPv4 or IPv6)"
            )),
        }
    }
}

/// The address as an unsigned number within its family.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_u128`]; `n` must fit the family.
pub fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// MetalLB's "buggy" addresses: IPv4 ending in .0 or .255, which some old
/// clients and routers mistake for network or broadcast addresses.
pub fn is_buggy(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

/// An inclusive range of addresses of one family, `first <= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    family: Family,
    first: u128,
    last: u128,
}

impl AddrRange {
    /// `None` when the ends are of different families or out of order.
    pub fn new(first: IpAddr, last: IpAddr) -> Option<AddrRange> {
        let family = Family::of(&first);
        if family != Family::of(&last) || to_u128(first) > to_u128(last) {
            return None;
        }
        Some(AddrRange {
            family,
            first: to_u128(first),
            last: to_u128(last),
        })
    }

    pub fn from_network(net: IpNetwork) -> AddrRange {
        let family = Family::of(&net.ip());
        let host_bits = family.bits() - u32::from(net.prefix());
        let first = to_u128(net.network());
        let last = if host_bits >= 128 {
            u128::MAX
        } else {
            first | ((1u128 << host_bits) - 1)
        };
        AddrRange {
            family,
            first,
            last,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }
    pub fn first(&self) -> IpAddr {
        from_u128(self.family, self.first)
    }
    pub fn last(&self) -> IpAddr {
        from_u128(self.family, self.last)
    }
    pub(crate) fn first_raw(&self) -> u128 {
        self.first
    }
    pub(crate) fn last_raw(&self) -> u128 {
        self.last
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(&ip) == self.family && (self.first..=self.last).contains(&to_u128(ip))
    }

    pub fn overlaps(&self, other: &AddrRange) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }

    /// Number of addresses, saturating at `u128::MAX` for the whole IPv6 space.
    pub fn len(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of addresses that `avoid-buggy-ips` excludes from this range.
    pub fn buggy_count(&self) -> u128 {
        if self.family != Family::V4 {
            return 0;
        }
        count_congruent(self.first, self.last, 0) + count_congruent(self.first, self.last, 255)
    }

    /// The minimal list of CIDR prefixes that covers exactly this range, in
    /// ascending order (what MetalLB calls summarising a range).
    pub fn cidrs(&self) -> Vec<IpNetwork> {
        let bits = self.family.bits();
        let mut out = Vec::new();
        let mut start = self.first;
        loop {
            // The largest aligned block at `start` that does not pass `last`.
            let align = if start == 0 {
                bits
            } else {
                start.trailing_zeros().min(bits)
            };
            let span = self.last - start; // block size - 1 must be <= span
            let fit = if span == u128::MAX {
                128
            } else {
                127 - (span + 1).leading_zeros()
            };
            let host_bits = align.min(fit);
            let prefix = (bits - host_bits) as u8;
            out.push(
                IpNetwork::new(from_u128(self.family, start), prefix)
                    .expect("prefix is within the family's width"),
            );
            let block_last = if host_bits >= 128 {
                u128::MAX
            } else {
                start + ((1u128 << host_bits) - 1)
            };
            if block_last >= self.last {
                break;
            }
            start = block_last + 1;
        }
        out
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first(), self.last())
    }
}

/// How many numbers in `[a, b]` are congruent to `r` modulo 256.
fn count_congruent(a: u128, b: u128, r: u128) -> u128 {
    // numbers x <= n with x % 256 == r
    let upto = |n: u128| -> u128 { if n < r { 0 } else { (n - r) / 256 + 1 } };
    upto(b) - if a == 0 { 0 } else { upto(a - 1) }
}

/// Parses one entry of a pool's `addresses` list the way MetalLB v0.12 does:
/// a CIDR (`192.0.2.0/24`; host bits are masked, a bare address is refused) or
/// a range `first-last` (split at the first `-`, both halves trimmed).
///
/// Differences from MetalLB, on purpose: a range whose ends are of different
/// families is refused (MetalLB silently contributes no address for it).
pub fn parse_entry(entry: &str) -> Result<AddrRange, String> {
    match entry.split_once('-') {
        None => parse_cidr(entry).map(AddrRange::from_network),
        Some((start, end)) => {
            let start = start.trim();
            let end = end.trim();
            let first = parse_ip(start).ok_or_else(|| {
                format!("invalid range {entry:?}: invalid start address {start:?}")
            })?;
            let last = parse_ip(end)
                .ok_or_else(|| format!("invalid range {entry:?}: invalid end address {end:?}"))?;
            if Family::of(&first) != Family::of(&last) {
                return Err(format!(
                    "invalid range {entry:?}: start {first} and end {last} are of different IP families"
                ));
            }
            AddrRange::new(first, last).ok_or_else(|| {
                format!("invalid range {entry:?}: start {first} is after end {last}")
            })
        }
    }
}

/// An address, with IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) taken as
/// IPv4, as Go's `net.IP` does.
fn parse_ip(s: &str) -> Option<IpAddr> {
    IpAddr::from_str(s).ok().map(|ip| ip.to_canonical())
}

fn parse_cidr(entry: &str) -> Result<IpNetwork, String> {
    let (ip, prefix) = entry.split_once('/').ok_or_else(|| {
        format!("invalid CIDR {entry:?}: a prefix length is required (for one address write /32 or /128)")
    })?;
    let ip = IpAddr::from_str(ip)
        .map_err(|_| format!("invalid CIDR {entry:?}: invalid address {ip:?}"))?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
        return Err(format!(
            "invalid CIDR {entry:?}: invalid prefix length {prefix:?}"
        ));
    }
    let mut prefix: u32 = prefix.parse().expect("at most three ASCII digits");
    let mut ip = ip;
    let width = Family::of(&ip).bits();
    if prefix > width {
        return Err(format!(
            "invalid CIDR {entry:?}: prefix length {prefix} is larger than {width}"
        ));
    }
    // An IPv4-mapped prefix that stays inside ::ffff:0:0/96 is an IPv4 prefix.
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
        && prefix >= 96
    {
        ip = IpAddr::V4(v4);
        prefix -= 96;
    }
    let net =
        IpNetwork::new(ip, prefix as u8).map_err(|e| format!("invalid CIDR {entry:?}: {e}"))?;
    // Host bits are masked, as Go's net.ParseCIDR does.
    Ok(IpNetwork::new(net.network(), prefix as u8).expect("same prefix"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(entry: &str) -> Vec<String> {
        parse_entry(entry)
            .unwrap()
            .cidrs()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn range_summarises_like_metallb() {
        assert_eq!(
            cidrs("192.168.1.240-192.168.1.250"),
            ["192.168.1.240/29", "192.168.1.248/31", "192.168.1.250/32"]
        );
        assert_eq!(cidrs("192.0.2.7-192.0.2.7"), ["192.0.2.7/32"]);
        assert_eq!(cidrs("0.0.0.0-255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            cidrs("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ["::/0"]
        );
        assert_eq!(
            cidrs("2001:db8::1-2001:db8::4"),
            ["2001:db8::1/128", "2001:db8::2/127", "2001:db8::4/128"]
        );
    }

    #[test]
    fn range_halves_are_trimmed() {
        let r = parse_entry("192.0.2.1 - 192.0.2.9").unwrap();
        assert_eq!(r.to_string(), "192.0.2.1-192.0.2.9");
    }

    #[test]
    fn cidr_host_bits_are_masked() {
        assert_eq!(cidrs("192.0.2.77/24"), ["192.0.2.0/24"]);
        assert_eq!(cidrs("2001:db8::77/120"), ["2001:db8::/120"]);
    }

    #[test]
    fn ipv4_mapped_is_ipv4() {
        assert_eq!(cidrs("::ffff:192.0.2.0/120"), ["192.0.2.0/24"]);
        assert_eq!(
            parse_entry("::ffff:192.0.2.1-::ffff:192.0.2.3")
                .unwrap()
                .family(),
            Family::V4
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (entry, needle) in [
            ("192.0.2.1", "prefix length is required"),
            ("192.0.2.0/33", "larger than 32"),
            ("2001:db8::/129", "larger than 128"),
            ("192.0.2.0/", "invalid prefix length"),
            ("192.0.2.0/-1", "invalid start"),
            ("192.0.2.0/2a", "invalid prefix length"),
            (" 192.0.2.0/24", "invalid address"),
            ("192.0.2.0/24 ", "invalid prefix length"),
            ("192.0.2.256/24", "invalid address"),
            ("-192.0.2.1", "invalid start"),
            ("192.0.2.1-", "invalid end"),
            ("192.0.2.1-192.0.2.2-192.0.2.3", "invalid end"),
            ("192.0.2.9-192.0.2.1", "is after end"),
            ("192.0.2.1-2001:db8::1", "different IP families"),
            ("2001:db8::1-192.0.2.1", "different IP families"),
            ("192.0.2.0/24/1", "invalid prefix length"),
            ("hello", "prefix length is required"),
        ] {
            let err = parse_entry(entry).unwrap_err();
            assert!(err.contains(needle), "{entry:?}: {err}");
        }
    }

    #[test]
    fn buggy_addresses_are_counted() {
        assert_eq!(parse_entry("192.0.2.0/24").unwrap().buggy_count(), 2);
        assert_eq!(parse_entry("198.51.100.0/22").unwrap().buggy_count(), 8);
        assert_eq!(
            parse_entry("192.0.2.1-192.0.2.254").unwrap().buggy_count(),
            0
        );
        assert_eq!(
            parse_entry("192.0.2.255-198.51.100.0")
                .unwrap()
                .buggy_count()
                % 2,
            0
        );
        assert_eq!(parse_entry("0.0.0.0/0").unwrap().buggy_count(), 2 << 24);
        assert_eq!(parse_entry("2001:db8::/120").unwrap().buggy_count(), 0);
    }

    #[test]
    fn lengths_saturate() {
        assert_eq!(parse_entry("::/0").unwrap().len(), u128::MAX);
        assert_eq!(parse_entry("192.0.2.0/24").unwrap().len(), 256);
    }
}
