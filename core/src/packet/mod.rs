//! The ARP and NDP packets the speaker reads and writes (docs/architecture.md, section 6),
//! parsed and built without I/O.
//!
//! The shape follows smoltcp's `wire` module: pnet's packet views do the
//! byte-level work, and the types here are high-level representations
//! (`ArpRequest`, `NeighborSolicitation`, ...) that accept only what the speaker
//! answers and reject the rest with an [`Error`] saying why.
//!
//! The contract, which the property tests and the fuzz targets in `core/fuzz`
//! check:
//! - parsing never panics and never allocates, whatever the input; every
//!   length is checked before a field is read;
//! - parsing borrows the input and copies out only the few fixed-size fields
//!   it returns (addresses), never the buffer;
//! - what `emit` writes, `parse` reads back as the same value.

pub mod arp;
pub mod ndp;

use std::fmt;
use std::str::FromStr;

pub use arp::{ArpFrame, ArpOperation, ArpRequest};
pub use ndp::{
    NdpFrame, NdpMessage, NeighborAdvertisement, NeighborSolicitation, icmpv6_checksum,
    multicast_mac, solicited_node_multicast,
};

/// Why a frame or message was not accepted, or could not be written.
///
/// The variants are coarse on purpose: the speaker counts rejected packets
/// by [`Error::reason`] and drops them; nobody answers a malformed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than its headers, or than a length field inside it says.
    #[error("truncated: shorter than its headers or length fields say")]
    Truncated,
    /// The output buffer cannot hold the packet.
    #[error("buffer too small for the packet")]
    BufferTooSmall,
    /// Not the EtherType or protocol this parser handles.
    #[error("not the expected protocol")]
    WrongProtocol,
    /// ARP for something other than Ethernet hardware and IPv4 addresses, or
    /// an operation other than request and reply.
    #[error("ARP packet is not Ethernet/IPv4 request or reply")]
    UnsupportedArp,
    /// A valid packet of a kind this parser does not accept (an ARP reply
    /// where a request is expected, an NA where an NS is expected).
    #[error("packet is of a kind that is not answered")]
    WrongKind,
    /// The sender's hardware address is multicast or broadcast: an answer
    /// would go to a group, so the packet is forged or broken.
    #[error("sender hardware address is multicast")]
    MulticastSender,
    /// NDP validity checks of RFC 4861 section 7.1 failed: a non-zero ICMP
    /// code, a hop limit other than 255, a multicast target, or a link-layer
    /// option where the source address is unspecified.
    #[error("NDP message fails RFC 4861 validation")]
    InvalidNdp,
    /// An NDP option with length zero or running past the message end.
    #[error("malformed NDP option")]
    BadOption,
    /// The ICMPv6 checksum does not match.
    #[error("ICMPv6 checksum mismatch")]
    BadChecksum,
}

impl Error {
    /// A short, stable label for metrics (`reason="truncated"`).
    pub fn reason(self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BufferTooSmall => "buffer_too_small",
            Error::WrongProtocol => "wrong_protocol",
            Error::UnsupportedArp => "unsupported_arp",
            Error::WrongKind => "wrong_kind",
            Error::MulticastSender => "multicast_sender",
            Error::InvalidNdp => "invalid_ndp",
            Error::BadOption => "bad_option",
            Error::BadChecksum => "bad_checksum",
        }
    }
}

/// An Ethernet (EUI-48) hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00, the "unknown" target of a kernel ARP request.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub fn is_broadcast(self) -> bool {
        self == MacAddr::BROADCAST
    }

    /// Group bit set: multicast, which includes broadcast.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    fn to_pnet(self) -> pnet_base::MacAddr {
        let [a, b, c, d, e, f] = self.0;
        pnet_base::MacAddr(a, b, c, d, e, f)
    }

    fn from_pnet(m: pnet_base::MacAddr) -> MacAddr {
        MacAddr(m.octets())
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses `02:00:00:00:00:0a`, the form of `/sys/class/net/<if>/address`.
impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("invalid MAC address {s:?}"));
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints_sysfs_form() {
        let mac: MacAddr = "02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 0, 0, 0, 0x0a]));
        assert_eq!(mac.to_string(), "02:00:00:00:00:0a");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0a:0b",
            "2:0:0:0:0:a",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mac_group_bit_marks_multicast() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(!MacAddr::ZERO.is_broadcast());
    }
}
