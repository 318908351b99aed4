//! IPv6 Neighbor Discovery (RFC 4861): the Neighbor Solicitations the
//! speaker answers and the Neighbor Advertisements it sends.
//!
//! Two entry points: the ICMPv6 message alone ([`NeighborSolicitation::parse`],
//! as an ICMPv6 raw socket delivers it, the IPv6 header already removed and
//! the checksum already verified by the kernel), and a whole Ethernet frame
//! ([`NdpFrame::parse`], as a packet socket or a capture delivers it, where
//! this module checks the hop limit and the checksum itself).

use std::net::Ipv6Addr;

use pnet_packet::MutablePacket;
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOptionPacket, NdpOptionTypes,
    NeighborAdvertFlags, NeighborAdvertPacket, NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

use super::{Error, MacAddr};

/// ff02::1, the all-nodes group unsolicited advertisements go to.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The hop limit every NDP message is sent with and must arrive with: a
/// message that crossed a router has a lower one and is forged (RFC 4861
/// section 7.1). The speaker sets it on its socket and checks it on receipt.
pub const HOP_LIMIT: u8 = 255;

/// The ICMPv6 types of Neighbor Solicitation and Advertisement, for the
/// socket's ICMP6_FILTER.
pub const TYPE_NEIGHBOR_SOLICITATION: u8 = 135;
pub const TYPE_NEIGHBOR_ADVERTISEMENT: u8 = 136;

mod field {
    /// Type, code, checksum, flags/reserved, target: both NS and NA.
    pub const MESSAGE_HEADER: usize = 24;
    /// Type, length, six bytes of MAC.
    pub const LINK_LAYER_OPTION: usize = 8;
    pub const ETHERNET_HEADER: usize = 14;
    pub const IPV6_HEADER: usize = 40;
    /// Where the ICMPv6 checksum sits in the message.
    pub const CHECKSUM: std::ops::Range<usize> = 2..4;
}

/// The solicited-node multicast group of `addr`: ff02::1:ffXX:XXXX with
/// the low 24 bits of `addr` (RFC 4291 section 2.7.1). A responder in user
/// space must join it on the interface, or the NIC never delivers the
/// solicitations for `addr`.
pub fn solicited_node_multicast(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address an IPv6 multicast group maps to: 33:33 and the
/// group's low 32 bits (RFC 2464 section 7).
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The ICMPv6 checksum of `message` sent from `source` to `destination`
/// (RFC 4443 section 2.3, pseudo-header of RFC 8200 section 8.1). The bytes
/// where the checksum goes count as zero, so this is the value to write
/// there. Never panics: the sum is kept in 64 bits.
pub fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    !fold(pseudo_header_sum(source, destination, message.len()) + word_sum(message, true))
}

/// Whether `message` carries a correct checksum for this source and destination.
fn checksum_ok(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> bool {
    // Summing the checksum field in as well gives all ones when it is right,
    // whichever of the two ones'-complement zeroes the sender wrote.
    fold(pseudo_header_sum(source, destination, message.len()) + word_sum(message, false)) == 0xffff
}

fn pseudo_header_sum(source: Ipv6Addr, destination: Ipv6Addr, len: usize) -> u64 {
    word_sum(&source.octets(), false)
        + word_sum(&destination.octets(), false)
        + len as u64
        + u64::from(IpNextHeaderProtocols::Icmpv6.0)
}

fn word_sum(bytes: &[u8], skip_checksum: bool) -> u64 {
    bytes
        .chunks(2)
        .enumerate()
        .filter(|(i, _)| !(skip_checksum && *i == field::CHECKSUM.start / 2))
        .map(|(_, w)| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum()
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Finds the link-layer address option of type `wanted` among `options`,
/// checking every option on the way as RFC 4861 section 7.1 requires: a
/// zero length (which would loop forever) or one running past the end makes
/// the whole message invalid. Options of other types, such as the nonce of
/// a DAD probe, are skipped. A link-layer option must be exactly 8 bytes,
/// the size for Ethernet; Linux drops messages whose option is not. If the
/// option repeats, the first counts, as in Linux.
///
/// pnet's own option iterator is not used: it computes the option size in
/// `u8` and overflows for lengths of 32 and more.
fn link_layer_option(options: &[u8], wanted: u8) -> Result<Option<MacAddr>, Error> {
    let mut rest = options;
    let mut found = None;
    while !rest.is_empty() {
        let option = NdpOptionPacket::new(rest).ok_or(Error::BadOption)?;
        let len = usize::from(option.get_length()) * 8;
        let Some(bytes) = rest.get(..len).filter(|_| len > 0) else {
            return Err(Error::BadOption);
        };
        if option.get_option_type().0 == wanted {
            let [_, _, a, b, c, d, e, f] =
                <[u8; field::LINK_LAYER_OPTION]>::try_from(bytes).map_err(|_| Error::BadOption)?;
            found.get_or_insert(MacAddr([a, b, c, d, e, f]));
        }
        rest = &rest[len..];
    }
    Ok(found)
}

fn emit_link_layer_option(buf: &mut [u8], kind: u8, mac: MacAddr) {
    buf[0] = kind;
    buf[1] = (field::LINK_LAYER_OPTION / 8) as u8;
    buf[2..8].copy_from_slice(&mac.0);
}

/// A Neighbor Solicitation (RFC 4861 section 4.3) that passed the checks of
/// section 7.1.1 that the message alone allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighborSolicitation {
    /// The address being asked for.
    pub target: Ipv6Addr,
    /// The source link-layer address option, if present. Routers probing
    /// reachability by unicast may leave it out; the speaker answers anyway.
    pub source_mac: Option<MacAddr>,
}

impl NeighborSolicitation {
    /// Reads an ICMPv6 message as a solicitation. Rejects other types
    /// ([`Error::WrongKind`]), messages shorter than 24 bytes, a non-zero
    /// code or a multicast target ([`Error::InvalidNdp`]) and malformed
    /// options ([`Error::BadOption`]). The caller checks what the message
    /// cannot show: hop limit 255, and the source with
    /// [`NeighborSolicitation::answer`].
    pub fn parse(message: &[u8]) -> Result<NeighborSolicitation, Error> {
        let icmp = Icmpv6Packet::new(message).ok_or(Error::Truncated)?;
        if icmp.get_icmpv6_type() != Icmpv6Types::NeighborSolicit {
            return Err(Error::WrongKind);
        }
        let ns = NeighborSolicitPacket::new(message).ok_or(Error::Truncated)?;
        if ns.get_icmpv6_code() != Icmpv6Code(0) {
            return Err(Error::InvalidNdp);
        }
        let target = ns.get_target_addr();
        if target.is_multicast() {
            return Err(Error::InvalidNdp);
        }
        let options = message.get(field::MESSAGE_HEADER..).unwrap_or_default();
        let source_mac = link_layer_option(options, NdpOptionTypes::SourceLLAddr.0)?;
        Ok(NeighborSolicitation { target, source_mac })
    }

    /// Bytes [`NeighborSolicitation::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        field::MESSAGE_HEADER + self.source_mac.map_or(0, |_| field::LINK_LAYER_OPTION)
    }

    /// Writes the message with a zero checksum, which an ICMPv6 raw socket
    /// fills in; see [`icmpv6_checksum`] otherwise.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let buf = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        buf.fill(0);
        let mut ns = MutableNeighborSolicitPacket::new(buf).ok_or(Error::BufferTooSmall)?;
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_icmpv6_code(Icmpv6Code(0));
        ns.set_target_addr(self.target);
        if let Some(mac) = self.source_mac {
            emit_link_layer_option(
                &mut ns.packet_mut()[field::MESSAGE_HEADER..],
                NdpOptionTypes::SourceLLAddr.0,
                mac,
            );
        }
        Ok(len)
    }

    /// The advertisement answering this solicitation, received from
    /// `source`, by an interface with hardware address `mac`, and where it
    /// goes (RFC 4861 section 7.2.4):
    /// - from a unicast source: a solicited advertisement back to it, with
    ///   Override set and the target link-layer option. The source link-layer
    ///   option does not matter: without it (a router's unicast reachability
    ///   probe) the kernel resolves the source when sending, as RFC 4861
    ///   allows;
    /// - from the unspecified source (duplicate address detection by another
    ///   host): an unsolicited advertisement to all nodes, which defends the
    ///   address as Linux does for its own.
    ///
    /// Rejects a multicast source, and an unspecified source with a source
    /// link-layer option (RFC 4861 section 7.1.1).
    pub fn answer(
        &self,
        source: Ipv6Addr,
        mac: MacAddr,
    ) -> Result<(Ipv6Addr, NeighborAdvertisement), Error> {
        if source.is_multicast() {
            return Err(Error::InvalidNdp);
        }
        if source.is_unspecified() {
            if self.source_mac.is_some() {
                return Err(Error::InvalidNdp);
            }
            return Ok((
                ALL_NODES,
                NeighborAdvertisement::unsolicited(self.target, mac),
            ));
        }
        Ok((source, NeighborAdvertisement::solicited(self.target, mac)))
    }
}

/// A Neighbor Advertisement (RFC 4861 section 4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighborAdvertisement {
    /// R: the sender is a router. The speaker never sets it.
    pub router: bool,
    /// S: an answer to a solicitation, which confirms reachability.
    pub solicited: bool,
    /// O: replace a cached link-layer address. Set in everything the speaker
    /// sends, so that clients move to the new owner's MAC at once.
    pub override_flag: bool,
    pub target: Ipv6Addr,
    /// The target link-layer address option.
    pub target_mac: Option<MacAddr>,
}

impl NeighborAdvertisement {
    /// The answer to a solicitation for `target`: Solicited, Override, and
    /// the target link-layer option with `mac`.
    pub fn solicited(target: Ipv6Addr, mac: MacAddr) -> NeighborAdvertisement {
        NeighborAdvertisement {
            router: false,
            solicited: true,
            override_flag: true,
            target,
            target_mac: Some(mac),
        }
    }

    /// The announcement of `target` at `mac` after a takeover, to be sent to
    /// [`ALL_NODES`]: not Solicited (RFC 4861 section 7.2.6), Override set,
    /// so that every neighbour with an entry for `target` replaces it.
    pub fn unsolicited(target: Ipv6Addr, mac: MacAddr) -> NeighborAdvertisement {
        NeighborAdvertisement {
            router: false,
            solicited: false,
            override_flag: true,
            target,
            target_mac: Some(mac),
        }
    }

    /// Reads an ICMPv6 message as an advertisement, with the checks of RFC
    /// 4861 section 7.1.2 that the message alone allows.
    pub fn parse(message: &[u8]) -> Result<NeighborAdvertisement, Error> {
        let icmp = Icmpv6Packet::new(message).ok_or(Error::Truncated)?;
        if icmp.get_icmpv6_type() != Icmpv6Types::NeighborAdvert {
            return Err(Error::WrongKind);
        }
        let na = NeighborAdvertPacket::new(message).ok_or(Error::Truncated)?;
        if na.get_icmpv6_code() != Icmpv6Code(0) {
            return Err(Error::InvalidNdp);
        }
        let target = na.get_target_addr();
        if target.is_multicast() {
            return Err(Error::InvalidNdp);
        }
        let options = message.get(field::MESSAGE_HEADER..).unwrap_or_default();
        let target_mac = link_layer_option(options, NdpOptionTypes::TargetLLAddr.0)?;
        let flags = na.get_flags();
        Ok(NeighborAdvertisement {
            router: flags & NeighborAdvertFlags::Router != 0,
            solicited: flags & NeighborAdvertFlags::Solicited != 0,
            override_flag: flags & NeighborAdvertFlags::Override != 0,
            target,
            target_mac,
        })
    }

    /// Bytes [`NeighborAdvertisement::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        field::MESSAGE_HEADER + self.target_mac.map_or(0, |_| field::LINK_LAYER_OPTION)
    }

    /// Writes the message with a zero checksum, which an ICMPv6 raw socket
    /// fills in; see [`icmpv6_checksum`] otherwise.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let buf = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        buf.fill(0);
        let mut na = MutableNeighborAdvertPacket::new(buf).ok_or(Error::BufferTooSmall)?;
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Code(0));
        let mut flags = 0;
        for (set, bit) in [
            (self.router, NeighborAdvertFlags::Router),
            (self.solicited, NeighborAdvertFlags::Solicited),
            (self.override_flag, NeighborAdvertFlags::Override),
        ] {
            if set {
                flags |= bit;
            }
        }
        na.set_flags(flags);
        na.set_target_addr(self.target);
        if let Some(mac) = self.target_mac {
            emit_link_layer_option(
                &mut na.packet_mut()[field::MESSAGE_HEADER..],
                NdpOptionTypes::TargetLLAddr.0,
                mac,
            );
        }
        Ok(len)
    }
}

/// The NDP messages this module reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NdpMessage {
    Solicitation(NeighborSolicitation),
    Advertisement(NeighborAdvertisement),
}

impl NdpMessage {
    /// Reads a solicitation or an advertisement; other ICMPv6 types are
    /// [`Error::WrongKind`].
    pub fn parse(message: &[u8]) -> Result<NdpMessage, Error> {
        let icmp = Icmpv6Packet::new(message).ok_or(Error::Truncated)?;
        match icmp.get_icmpv6_type() {
            Icmpv6Types::NeighborSolicit => {
                NeighborSolicitation::parse(message).map(NdpMessage::Solicitation)
            }
            Icmpv6Types::NeighborAdvert => {
                NeighborAdvertisement::parse(message).map(NdpMessage::Advertisement)
            }
            _ => Err(Error::WrongKind),
        }
    }

    pub fn buffer_len(&self) -> usize {
        match self {
            NdpMessage::Solicitation(ns) => ns.buffer_len(),
            NdpMessage::Advertisement(na) => na.buffer_len(),
        }
    }

    /// Writes the message with a zero checksum.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self {
            NdpMessage::Solicitation(ns) => ns.emit(buf),
            NdpMessage::Advertisement(na) => na.emit(buf),
        }
    }
}

/// An Ethernet frame carrying an IPv6 packet carrying an NDP message, with
/// the header fields the speaker needs to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NdpFrame {
    pub eth_destination: MacAddr,
    pub eth_source: MacAddr,
    pub source: Ipv6Addr,
    pub destination: Ipv6Addr,
    pub message: NdpMessage,
}

impl NdpFrame {
    /// Reads a frame, checking everything RFC 4861 section 7.1 asks that the
    /// frame shows: IPv6 directly carrying ICMPv6 (NDP behind extension
    /// headers is not accepted; no NDP sender uses them), hop limit 255, the
    /// payload length, the checksum, the message itself, and the source and
    /// destination rules: a solicitation from the unspecified address carries
    /// no source link-layer option and goes to a solicited-node group; an
    /// advertisement to a multicast group is not Solicited. Bytes after the
    /// IPv6 payload (Ethernet padding) are ignored.
    pub fn parse(frame: &[u8]) -> Result<NdpFrame, Error> {
        let eth = EthernetPacket::new(frame).ok_or(Error::Truncated)?;
        if eth.get_ethertype() != EtherTypes::Ipv6 {
            return Err(Error::WrongProtocol);
        }
        let ip_bytes = frame.get(field::ETHERNET_HEADER..).unwrap_or_default();
        let ip = Ipv6Packet::new(ip_bytes).ok_or(Error::Truncated)?;
        if ip.get_version() != 6 || ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
            return Err(Error::WrongProtocol);
        }
        let payload_end = field::IPV6_HEADER + usize::from(ip.get_payload_length());
        let message = ip_bytes
            .get(field::IPV6_HEADER..payload_end)
            .ok_or(Error::Truncated)?;
        let (source, destination) = (ip.get_source(), ip.get_destination());
        // Parse before the hop limit and checksum, so that other ICMPv6 types
        // are told apart as WrongKind, not as invalid NDP.
        let parsed = NdpMessage::parse(message)?;
        if ip.get_hop_limit() != HOP_LIMIT {
            return Err(Error::InvalidNdp);
        }
        if !checksum_ok(source, destination, message) {
            return Err(Error::BadChecksum);
        }
        match parsed {
            NdpMessage::Solicitation(ns) => {
                if source.is_multicast()
                    || (source.is_unspecified()
                        && (ns.source_mac.is_some()
                            || destination != solicited_node_multicast(ns.target)))
                {
                    return Err(Error::InvalidNdp);
                }
            }
            NdpMessage::Advertisement(na) => {
                if source.is_multicast() || (destination.is_multicast() && na.solicited) {
                    return Err(Error::InvalidNdp);
                }
            }
        }
        Ok(NdpFrame {
            eth_destination: MacAddr::from_pnet(eth.get_destination()),
            eth_source: MacAddr::from_pnet(eth.get_source()),
            source,
            destination,
            message: parsed,
        })
    }

    /// Bytes [`NdpFrame::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        field::ETHERNET_HEADER + field::IPV6_HEADER + self.message.buffer_len()
    }

    /// Writes the frame: Ethernet header, an IPv6 header with hop limit 255
    /// and zero traffic class and flow label, and the message with its
    /// checksum.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let buf = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        let mut eth = MutableEthernetPacket::new(buf).ok_or(Error::BufferTooSmall)?;
        eth.set_destination(self.eth_destination.to_pnet());
        eth.set_source(self.eth_source.to_pnet());
        eth.set_ethertype(EtherTypes::Ipv6);
        let mut ip = MutableIpv6Packet::new(eth.payload_mut()).ok_or(Error::BufferTooSmall)?;
        let message_len = self.message.buffer_len();
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        // At most 32 bytes: NDP messages here are fixed-size.
        ip.set_payload_length(message_len as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        ip.set_hop_limit(HOP_LIMIT);
        ip.set_source(self.source);
        ip.set_destination(self.destination);
        let message = ip.payload_mut();
        self.message.emit(message)?;
        let checksum = icmpv6_checksum(self.source, self.destination, &message[..message_len]);
        message[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::Packet;

    const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const NODE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// `ndisc6 2001:db8::20 flbcapa` (ndisc6 1.0.5) from fe80::ff:fe00:a,
    /// captured with tcpdump on a veth pair: a multicast solicitation to
    /// ff02::1:ff00:20 with a source link-layer option, flow label 0xd6346.
    static NDISC6_NS: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x20, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x86, 0xdd, 0x60,
        0x0d, 0x63, 0x46, 0x00, 0x20, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0xff, 0xfe, 0x00, 0x00, 0x0a, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x20, 0x87, 0x00, 0x4c, 0x11, 0x00, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a,
    ];

    /// The Linux kernel's answer to `NDISC6_NS` from 2001:db8::20: Solicited,
    /// Override, target link-layer option.
    static KERNEL_SOLICITED_NA: [u8; 86] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0xff, 0xfe, 0x00, 0x00, 0x0a, 0x88, 0x00, 0xba, 0x5b, 0x60, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x20, 0x02, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b,
    ];

    /// The kernel's duplicate address detection probe for 2001:db8::30:
    /// unspecified source, no source link-layer option, a nonce option (14).
    static KERNEL_DAD_NS: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x30, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x30, 0x87, 0x00, 0xcf, 0x1e, 0x00, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x30, 0x0e, 0x01, 0x32, 0xfa, 0x89, 0x55, 0xb3, 0x17,
    ];

    /// The kernel's answer to its peer's unicast reachability probe: a
    /// solicited NA without Override and without any option.
    static KERNEL_NA_WITHOUT_OPTION: [u8; 78] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x18, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0xff, 0xfe, 0x00, 0x00, 0x0b, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0xff, 0xfe, 0x00, 0x00, 0x0a, 0x88, 0x00, 0x3f, 0x0a, 0x40, 0x00,
        0x00, 0x00, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xfe,
        0x00, 0x00, 0x0b,
    ];

    /// The kernel's unsolicited NA for 2001:db8::30 after DAD, with
    /// `ndisc_notify=1`: Override only, to ff02::1, target link-layer option.
    static KERNEL_UNSOLICITED_NA: [u8; 86] = [
        0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x88, 0x00, 0xf8, 0xc3, 0x20, 0x00,
        0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x30, 0x02, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a,
    ];

    const MESSAGE_START: usize = field::ETHERNET_HEADER + field::IPV6_HEADER;

    fn ndisc6_ns_repr() -> NdpFrame {
        NdpFrame {
            eth_destination: MacAddr([0x33, 0x33, 0xff, 0, 0, 0x20]),
            eth_source: CLIENT_MAC,
            source: ip("fe80::ff:fe00:a"),
            destination: ip("ff02::1:ff00:20"),
            message: NdpMessage::Solicitation(NeighborSolicitation {
                target: ip("2001:db8::20"),
                source_mac: Some(CLIENT_MAC),
            }),
        }
    }

    /// A solicitation message (ICMPv6 only) with one option appended.
    fn ns_message_with_option(option: &[u8]) -> Vec<u8> {
        let mut m = NDISC6_NS[MESSAGE_START..MESSAGE_START + field::MESSAGE_HEADER].to_vec();
        m.extend_from_slice(option);
        m
    }

    #[test]
    fn deconstruct_captured_ndisc6_solicitation() {
        let eth = EthernetPacket::new(&NDISC6_NS[..]).unwrap();
        let ip6 = Ipv6Packet::new(eth.payload()).unwrap();
        assert_eq!(ip6.get_hop_limit(), 255);
        assert_eq!(ip6.get_flow_label(), 0xd6346);
        let ns = NeighborSolicitPacket::new(ip6.payload()).unwrap();
        assert_eq!(ns.get_icmpv6_type(), Icmpv6Types::NeighborSolicit);
        assert_eq!(ns.get_target_addr(), ip("2001:db8::20"));
        assert_eq!(ns.get_checksum(), 0x4c11);
    }

    #[test]
    fn construct_equals_captured_solicitation_but_the_flow_label() {
        let mut expected = NDISC6_NS;
        // The flow label is random in ndisc6 and zero here; the checksum
        // does not cover it.
        expected[15..18].copy_from_slice(&[0, 0, 0]);
        expected[14] = 0x60;
        let mut buf = [0u8; 86];
        assert_eq!(ndisc6_ns_repr().emit(&mut buf), Ok(86));
        assert_eq!(buf, expected);
    }

    #[test]
    fn parse_captured_solicitation_with_source_option() {
        assert_eq!(NdpFrame::parse(&NDISC6_NS), Ok(ndisc6_ns_repr()));
        // As an ICMPv6 raw socket delivers it.
        let ns = NeighborSolicitation::parse(&NDISC6_NS[MESSAGE_START..]).unwrap();
        assert_eq!(ns.target, ip("2001:db8::20"));
        assert_eq!(ns.source_mac, Some(CLIENT_MAC));
    }

    #[test]
    fn answer_to_captured_solicitation_equals_kernel_answer() {
        let ns = NeighborSolicitation::parse(&NDISC6_NS[MESSAGE_START..]).unwrap();
        let (destination, na) = ns.answer(ip("fe80::ff:fe00:a"), NODE_MAC).unwrap();
        assert_eq!(destination, ip("fe80::ff:fe00:a"));
        let frame = NdpFrame {
            eth_destination: CLIENT_MAC,
            eth_source: NODE_MAC,
            source: ip("2001:db8::20"),
            destination,
            message: NdpMessage::Advertisement(na),
        };
        let mut buf = [0u8; 86];
        assert_eq!(frame.emit(&mut buf), Ok(86));
        assert_eq!(buf, KERNEL_SOLICITED_NA);
        assert_eq!(NdpFrame::parse(&KERNEL_SOLICITED_NA), Ok(frame));
    }

    #[test]
    fn unsolicited_advertisement_equals_kernel_one() {
        let frame = NdpFrame {
            eth_destination: multicast_mac(ALL_NODES),
            eth_source: CLIENT_MAC,
            source: ip("2001:db8::30"),
            destination: ALL_NODES,
            message: NdpMessage::Advertisement(NeighborAdvertisement::unsolicited(
                ip("2001:db8::30"),
                CLIENT_MAC,
            )),
        };
        let mut buf = [0u8; 86];
        assert_eq!(frame.emit(&mut buf), Ok(86));
        assert_eq!(buf, KERNEL_UNSOLICITED_NA);
        assert_eq!(NdpFrame::parse(&KERNEL_UNSOLICITED_NA), Ok(frame));
    }

    #[test]
    fn advertisement_without_option_parses_flags() {
        let frame = NdpFrame::parse(&KERNEL_NA_WITHOUT_OPTION).unwrap();
        let NdpMessage::Advertisement(na) = frame.message else {
            panic!("not an advertisement: {frame:?}");
        };
        assert!(na.solicited && !na.override_flag && !na.router);
        assert_eq!(na.target_mac, None);
        assert_eq!(na.target, ip("fe80::ff:fe00:b"));
    }

    #[test]
    fn solicitation_without_source_option_is_answered_by_unicast() {
        // What a router's unicast reachability probe looks like.
        let message = ns_message_with_option(&[]);
        let ns = NeighborSolicitation::parse(&message).unwrap();
        assert_eq!(ns.source_mac, None);
        let (destination, na) = ns.answer(ip("fe80::1"), NODE_MAC).unwrap();
        assert_eq!(destination, ip("fe80::1"));
        assert_eq!(
            na,
            NeighborAdvertisement::solicited(ip("2001:db8::20"), NODE_MAC)
        );
        assert!(na.solicited && na.override_flag);
    }

    #[test]
    fn duplicate_address_probe_is_answered_to_all_nodes() {
        let frame = NdpFrame::parse(&KERNEL_DAD_NS).unwrap();
        assert_eq!(frame.source, Ipv6Addr::UNSPECIFIED);
        let NdpMessage::Solicitation(ns) = frame.message else {
            panic!("not a solicitation: {frame:?}");
        };
        // The nonce option is skipped, not taken for a link-layer option.
        assert_eq!(ns.source_mac, None);
        let (destination, na) = ns.answer(frame.source, NODE_MAC).unwrap();
        assert_eq!(destination, ALL_NODES);
        assert!(!na.solicited && na.override_flag);
        assert_eq!(na.target_mac, Some(NODE_MAC));
    }

    #[test]
    fn unspecified_source_with_source_option_is_invalid() {
        let ns = NeighborSolicitation::parse(&NDISC6_NS[MESSAGE_START..]).unwrap();
        assert_eq!(
            ns.answer(Ipv6Addr::UNSPECIFIED, NODE_MAC),
            Err(Error::InvalidNdp)
        );
        assert_eq!(ns.answer(ip("ff02::1"), NODE_MAC), Err(Error::InvalidNdp));
        let mut frame = ndisc6_ns_repr();
        frame.source = Ipv6Addr::UNSPECIFIED;
        let mut buf = [0u8; 86];
        frame.emit(&mut buf).unwrap();
        assert_eq!(NdpFrame::parse(&buf), Err(Error::InvalidNdp));
    }

    #[test]
    fn solicited_node_group_and_its_mac() {
        let group = solicited_node_multicast(ip("2001:db8::20"));
        assert_eq!(group, ip("ff02::1:ff00:20"));
        assert_eq!(
            multicast_mac(group),
            MacAddr([0x33, 0x33, 0xff, 0, 0, 0x20])
        );
        // Only the low 24 bits count.
        assert_eq!(
            solicited_node_multicast(ip("2001:db8:1:2:3:4:5abc:def0")),
            ip("ff02::1:ffbc:def0")
        );
        assert_eq!(multicast_mac(ALL_NODES), MacAddr([0x33, 0x33, 0, 0, 0, 1]));
    }

    #[test]
    fn checksum_matches_the_kernel_and_pnet() {
        for frame in [
            &NDISC6_NS[..],
            &KERNEL_SOLICITED_NA,
            &KERNEL_DAD_NS,
            &KERNEL_UNSOLICITED_NA,
        ] {
            let ip6 = Ipv6Packet::new(&frame[field::ETHERNET_HEADER..]).unwrap();
            let message = &frame[MESSAGE_START..];
            let (s, d) = (ip6.get_source(), ip6.get_destination());
            let stored = u16::from_be_bytes([message[2], message[3]]);
            assert_eq!(icmpv6_checksum(s, d, message), stored);
            let pnet = Icmpv6Packet::new(message).unwrap();
            assert_eq!(pnet_packet::icmpv6::checksum(&pnet, &s, &d), stored);
            assert!(checksum_ok(s, d, message));
        }
    }

    #[test]
    fn checksum_of_odd_length_pads_with_zero() {
        let (s, d) = (ip("fe80::1"), ip("fe80::2"));
        let odd = [0x87, 0, 0, 0, 0xab];
        let even = [0x87, 0, 0, 0, 0xab, 0];
        // The lengths differ in the pseudo-header by one.
        assert_eq!(
            icmpv6_checksum(s, d, &odd).wrapping_sub(1),
            icmpv6_checksum(s, d, &even)
        );
    }

    #[test]
    fn frame_with_bad_checksum_or_hop_limit_is_rejected() {
        let mut bad_sum = NDISC6_NS;
        bad_sum[57] ^= 0x01;
        assert_eq!(NdpFrame::parse(&bad_sum), Err(Error::BadChecksum));
        let mut routed = NDISC6_NS;
        routed[21] = 254;
        assert_eq!(NdpFrame::parse(&routed), Err(Error::InvalidNdp));
    }

    #[test]
    fn frame_with_other_protocols_is_rejected() {
        let mut udp = NDISC6_NS;
        udp[20] = 17;
        assert_eq!(NdpFrame::parse(&udp), Err(Error::WrongProtocol));
        let mut ipv4 = NDISC6_NS;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(NdpFrame::parse(&ipv4), Err(Error::WrongProtocol));
        let mut version4 = NDISC6_NS;
        version4[14] = 0x40;
        assert_eq!(NdpFrame::parse(&version4), Err(Error::WrongProtocol));
    }

    #[test]
    fn frame_shorter_than_its_payload_length_is_rejected() {
        for len in 0..NDISC6_NS.len() {
            assert_eq!(
                NdpFrame::parse(&NDISC6_NS[..len]),
                Err(Error::Truncated),
                "length {len}"
            );
        }
        // Ethernet padding after the payload is fine.
        let mut padded = NDISC6_NS.to_vec();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(NdpFrame::parse(&padded), Ok(ndisc6_ns_repr()));
    }

    #[test]
    fn short_or_coded_or_multicast_target_messages_are_rejected() {
        let message = &NDISC6_NS[MESSAGE_START..];
        for len in 0..field::MESSAGE_HEADER {
            assert_eq!(
                NeighborSolicitation::parse(&message[..len]),
                Err(Error::Truncated),
                "length {len}"
            );
        }
        let mut coded = message.to_vec();
        coded[1] = 1;
        assert_eq!(NeighborSolicitation::parse(&coded), Err(Error::InvalidNdp));
        let mut multicast = message.to_vec();
        multicast[8..24].copy_from_slice(&ip("ff02::1").octets());
        assert_eq!(
            NeighborSolicitation::parse(&multicast),
            Err(Error::InvalidNdp)
        );
        // An advertisement is not a solicitation, and the other way round.
        let na = &KERNEL_SOLICITED_NA[MESSAGE_START..];
        assert_eq!(NeighborSolicitation::parse(na), Err(Error::WrongKind));
        assert_eq!(NeighborAdvertisement::parse(message), Err(Error::WrongKind));
        // Echo request.
        assert_eq!(NdpMessage::parse(&[128, 0, 0, 0]), Err(Error::WrongKind));
    }

    #[test]
    fn malformed_options_are_rejected() {
        let mac = [2, 0, 0, 0, 0, 0x0a];
        let cases: [(&str, Vec<u8>); 5] = [
            ("zero length", [&[1u8, 0][..], &mac].concat()),
            ("zero-length unknown option", vec![14, 0, 0, 0, 0, 0, 0, 0]),
            ("runs past the end", [&[1u8, 2][..], &mac].concat()),
            ("one byte left over", [&[1u8, 1][..], &mac, &[0]].concat()),
            (
                "link-layer option of 16 bytes",
                [&[1u8, 2][..], &mac, &[0; 8]].concat(),
            ),
        ];
        for (what, option) in cases {
            assert_eq!(
                NeighborSolicitation::parse(&ns_message_with_option(&option)),
                Err(Error::BadOption),
                "{what}"
            );
        }
    }

    #[test]
    fn option_length_beyond_u8_arithmetic_is_rejected_without_panic() {
        // Length 32 is 256 bytes: pnet's iterator overflows a u8 on it.
        let mut option = vec![0u8; 256];
        option[0] = 14;
        option[1] = 32;
        let message = ns_message_with_option(&option);
        assert_eq!(
            NeighborSolicitation::parse(&message).map(|ns| ns.source_mac),
            Ok(None)
        );
        assert_eq!(
            NeighborSolicitation::parse(&message[..message.len() - 1]),
            Err(Error::BadOption)
        );
    }

    #[test]
    fn first_of_repeated_source_options_counts_and_others_are_skipped() {
        let option = [
            &[14u8, 1, 9, 9, 9, 9, 9, 9][..],
            &[1, 1, 2, 0, 0, 0, 0, 0x0a],
            &[1, 1, 2, 0, 0, 0, 0, 0x0c],
        ]
        .concat();
        let ns = NeighborSolicitation::parse(&ns_message_with_option(&option)).unwrap();
        assert_eq!(ns.source_mac, Some(CLIENT_MAC));
    }

    #[test]
    fn multicast_advertisement_must_not_be_solicited() {
        let mut frame = NdpFrame::parse(&KERNEL_UNSOLICITED_NA).unwrap();
        let NdpMessage::Advertisement(ref mut na) = frame.message else {
            panic!("not an advertisement");
        };
        na.solicited = true;
        let mut buf = [0u8; 86];
        frame.emit(&mut buf).unwrap();
        assert_eq!(NdpFrame::parse(&buf), Err(Error::InvalidNdp));
    }

    #[test]
    fn emit_refuses_short_buffers() {
        let na = NeighborAdvertisement::solicited(ip("2001:db8::20"), NODE_MAC);
        assert_eq!(na.emit(&mut [0u8; 31]), Err(Error::BufferTooSmall));
        assert_eq!(
            ndisc6_ns_repr().emit(&mut [0u8; 85]),
            Err(Error::BufferTooSmall)
        );
        let mut buf = [0xffu8; 32];
        assert_eq!(na.emit(&mut buf), Ok(32));
        assert_eq!(NeighborAdvertisement::parse(&buf), Ok(na));
    }
}
