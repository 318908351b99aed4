//! ARP for IPv4 over Ethernet (RFC 826): the requests the speaker answers,
//! its replies, and gratuitous ARP (RFC 5227 section 3, RFC 5944 section 4.6).

use std::net::Ipv4Addr;

use pnet_packet::MutablePacket;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};

use super::{Error, MacAddr};

/// Bytes of an Ethernet frame carrying Ethernet/IPv4 ARP: a 14-byte Ethernet
/// header and a 28-byte ARP packet. Frames on the wire may be padded to 60
/// bytes; parsing ignores the padding, and building leaves padding to the
/// driver, as the kernel's own ARP does.
pub const FRAME_LEN: usize = 42;

/// The EtherType of ARP, for binding packet sockets.
pub const ETHERTYPE_ARP: u16 = 0x0806;

mod field {
    pub const HARDWARE_LEN_ETHERNET: u8 = 6;
    pub const PROTOCOL_LEN_IPV4: u8 = 4;
}

/// The two ARP operations the speaker deals with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    Request,
    Reply,
}

/// An Ethernet frame carrying an Ethernet/IPv4 ARP request or reply: every
/// field of both headers except the fixed hardware and protocol types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpFrame {
    pub eth_destination: MacAddr,
    pub eth_source: MacAddr,
    pub operation: ArpOperation,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// Reads an Ethernet frame carrying ARP. Rejects other EtherTypes (VLAN
    /// tags included: packet sockets see frames after the kernel strips
    /// them), ARP for other hardware or protocols, operations other than
    /// request and reply, and frames too short for both headers.
    pub fn parse(frame: &[u8]) -> Result<ArpFrame, Error> {
        let eth = EthernetPacket::new(frame).ok_or(Error::Truncated)?;
        if eth.get_ethertype() != EtherTypes::Arp {
            return Err(Error::WrongProtocol);
        }
        let arp = ArpPacket::new(eth.payload()).ok_or(Error::Truncated)?;
        if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
            || arp.get_protocol_type() != EtherTypes::Ipv4
            || arp.get_hw_addr_len() != field::HARDWARE_LEN_ETHERNET
            || arp.get_proto_addr_len() != field::PROTOCOL_LEN_IPV4
        {
            return Err(Error::UnsupportedArp);
        }
        let operation = match arp.get_operation() {
            ArpOperations::Request => ArpOperation::Request,
            ArpOperations::Reply => ArpOperation::Reply,
            _ => return Err(Error::UnsupportedArp),
        };
        Ok(ArpFrame {
            eth_destination: MacAddr::from_pnet(eth.get_destination()),
            eth_source: MacAddr::from_pnet(eth.get_source()),
            operation,
            sender_mac: MacAddr::from_pnet(arp.get_sender_hw_addr()),
            sender_ip: arp.get_sender_proto_addr(),
            target_mac: MacAddr::from_pnet(arp.get_target_hw_addr()),
            target_ip: arp.get_target_proto_addr(),
        })
    }

    /// Writes the frame into the first [`FRAME_LEN`] bytes of `buf` and
    /// returns that length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let buf = buf.get_mut(..FRAME_LEN).ok_or(Error::BufferTooSmall)?;
        let mut eth = MutableEthernetPacket::new(buf).ok_or(Error::BufferTooSmall)?;
        eth.set_destination(self.eth_destination.to_pnet());
        eth.set_source(self.eth_source.to_pnet());
        eth.set_ethertype(EtherTypes::Arp);
        let mut arp = MutableArpPacket::new(eth.payload_mut()).ok_or(Error::BufferTooSmall)?;
        arp.set_hardware_type(ArpHardwareTypes::Ethernet);
        arp.set_protocol_type(EtherTypes::Ipv4);
        arp.set_hw_addr_len(field::HARDWARE_LEN_ETHERNET);
        arp.set_proto_addr_len(field::PROTOCOL_LEN_IPV4);
        arp.set_operation(match self.operation {
            ArpOperation::Request => ArpOperations::Request,
            ArpOperation::Reply => ArpOperations::Reply,
        });
        arp.set_sender_hw_addr(self.sender_mac.to_pnet());
        arp.set_sender_proto_addr(self.sender_ip);
        arp.set_target_hw_addr(self.target_mac.to_pnet());
        arp.set_target_proto_addr(self.target_ip);
        Ok(FRAME_LEN)
    }

    /// The frame as bytes, ready for a packet socket.
    pub fn to_bytes(&self) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        // Cannot fail: `out` is exactly FRAME_LEN bytes.
        let written = self.emit(&mut out);
        debug_assert_eq!(written, Ok(FRAME_LEN));
        out
    }

    /// A gratuitous ARP for `ip` from an interface with hardware address
    /// `mac`, in the request or the reply form, exactly as MetalLB sends
    /// them: broadcast, sender and target IP both `ip`, target MAC broadcast.
    /// Sending both forms reaches receivers that only honour one of them
    /// (reference/peers.md section B).
    pub fn gratuitous(operation: ArpOperation, ip: Ipv4Addr, mac: MacAddr) -> ArpFrame {
        ArpFrame {
            eth_destination: MacAddr::BROADCAST,
            eth_source: mac,
            operation,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: MacAddr::BROADCAST,
            target_ip: ip,
        }
    }
}

/// An ARP request the speaker may answer: Ethernet/IPv4, operation request,
/// from a unicast sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpRequest(ArpFrame);

impl ArpRequest {
    /// Reads a frame as an answerable request. Replies are rejected with
    /// [`Error::WrongKind`]; a request whose sender MAC is multicast with
    /// [`Error::MulticastSender`], since a reply to it would be sent to a
    /// group (Linux drops such requests too).
    pub fn parse(frame: &[u8]) -> Result<ArpRequest, Error> {
        let frame = ArpFrame::parse(frame)?;
        if frame.operation != ArpOperation::Request {
            return Err(Error::WrongKind);
        }
        if frame.sender_mac.is_multicast() {
            return Err(Error::MulticastSender);
        }
        Ok(ArpRequest(frame))
    }

    /// The whole frame as received.
    pub fn frame(&self) -> &ArpFrame {
        &self.0
    }

    pub fn eth_destination(&self) -> MacAddr {
        self.0.eth_destination
    }

    pub fn sender_mac(&self) -> MacAddr {
        self.0.sender_mac
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        self.0.sender_ip
    }

    /// The address being asked for.
    pub fn target_ip(&self) -> Ipv4Addr {
        self.0.target_ip
    }

    /// Whether an interface with hardware address `mac` should consider the
    /// request: sent to broadcast or to `mac` itself (docs/architecture.md, section 6).
    /// Unicast requests to `mac` are how Linux re-validates a cached entry.
    pub fn is_addressed_to(&self, mac: MacAddr) -> bool {
        self.0.eth_destination.is_broadcast() || self.0.eth_destination == mac
    }

    /// A gratuitous request: another host announcing `sender_ip`, not asking
    /// for it. It needs no answer; for an owned address it means a conflict.
    pub fn is_gratuitous(&self) -> bool {
        self.0.sender_ip == self.0.target_ip
    }

    /// An ARP probe (RFC 5227): sender IP 0.0.0.0, a host checking whether
    /// `target_ip` is in use before taking it. Answering it defends the
    /// address, as Linux does for its own.
    pub fn is_probe(&self) -> bool {
        self.0.sender_ip.is_unspecified()
    }

    /// The reply an interface with hardware address `mac` sends when it owns
    /// `target_ip`: unicast to the requester's hardware address, as the Linux
    /// kernel's reply is. For a probe the target IP stays 0.0.0.0.
    pub fn reply(&self, mac: MacAddr) -> ArpFrame {
        ArpFrame {
            eth_destination: self.0.sender_mac,
            eth_source: mac,
            operation: ArpOperation::Reply,
            sender_mac: mac,
            sender_ip: self.0.target_ip,
            target_mac: self.0.sender_mac,
            target_ip: self.0.sender_ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const NODE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

    /// `arping -I flbcapa 192.0.2.20` (iputils 20221126) from 192.0.2.10,
    /// captured with tcpdump on a veth pair. iputils puts ff:ff:ff:ff:ff:ff
    /// in the target MAC; the kernel's own requests put 00:00:00:00:00:00.
    static ARPING_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xc0, 0x00,
        0x02, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0, 0x00, 0x02, 0x14,
    ];

    /// The Linux kernel's reply to `ARPING_REQUEST` from 192.0.2.20, same capture.
    static KERNEL_REPLY: [u8; 42] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0xc0, 0x00,
        0x02, 0x14, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xc0, 0x00, 0x02, 0x0a,
    ];

    /// `arping -U -I flbcapa 192.0.2.10`: gratuitous ARP, request form.
    static ARPING_GRATUITOUS_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xc0, 0x00,
        0x02, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0, 0x00, 0x02, 0x0a,
    ];

    /// `arping -A -I flbcapa 192.0.2.10`: gratuitous ARP, reply form. iputils
    /// puts its own MAC in the target MAC, where MetalLB puts broadcast.
    static ARPING_GRATUITOUS_REPLY: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xc0, 0x00,
        0x02, 0x0a, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xc0, 0x00, 0x02, 0x0a,
    ];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn arping_request_repr() -> ArpFrame {
        ArpFrame {
            eth_destination: MacAddr::BROADCAST,
            eth_source: CLIENT_MAC,
            operation: ArpOperation::Request,
            sender_mac: CLIENT_MAC,
            sender_ip: ip("192.0.2.10"),
            target_mac: MacAddr::BROADCAST,
            target_ip: ip("192.0.2.20"),
        }
    }

    #[test]
    fn deconstruct_captured_arping_request() {
        let eth = EthernetPacket::new(&ARPING_REQUEST[..]).unwrap();
        assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Request);
        assert_eq!(arp.get_sender_proto_addr(), ip("192.0.2.10"));
        assert_eq!(arp.get_target_proto_addr(), ip("192.0.2.20"));
    }

    #[test]
    fn construct_equals_captured_request() {
        assert_eq!(arping_request_repr().to_bytes(), ARPING_REQUEST);
    }

    #[test]
    fn parse_captured_request_exposes_sender_and_target() {
        let req = ArpRequest::parse(&ARPING_REQUEST).unwrap();
        assert_eq!(req.frame(), &arping_request_repr());
        assert_eq!(req.sender_mac(), CLIENT_MAC);
        assert_eq!(req.sender_ip(), ip("192.0.2.10"));
        assert_eq!(req.target_ip(), ip("192.0.2.20"));
        assert_eq!(req.eth_destination(), MacAddr::BROADCAST);
        assert!(req.is_addressed_to(NODE_MAC));
        assert!(!req.is_gratuitous());
        assert!(!req.is_probe());
    }

    #[test]
    fn reply_to_captured_request_equals_kernel_reply() {
        let req = ArpRequest::parse(&ARPING_REQUEST).unwrap();
        assert_eq!(req.reply(NODE_MAC).to_bytes(), KERNEL_REPLY);
    }

    #[test]
    fn emit_then_parse_round_trips_the_kernel_reply() {
        let reply = ArpFrame::parse(&KERNEL_REPLY).unwrap();
        assert_eq!(reply.operation, ArpOperation::Reply);
        let mut buf = [0u8; 64];
        assert_eq!(reply.emit(&mut buf), Ok(FRAME_LEN));
        assert_eq!(&buf[..FRAME_LEN], &KERNEL_REPLY[..]);
    }

    #[test]
    fn emit_refuses_a_short_buffer() {
        let mut buf = [0u8; FRAME_LEN - 1];
        assert_eq!(
            arping_request_repr().emit(&mut buf),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn padded_frame_parses_like_the_bare_one() {
        // What a real NIC delivers: the frame padded to the 60-byte minimum.
        let mut padded = [0u8; 60];
        padded[..42].copy_from_slice(&ARPING_REQUEST);
        assert_eq!(
            ArpRequest::parse(&padded).unwrap(),
            ArpRequest::parse(&ARPING_REQUEST).unwrap()
        );
    }

    #[test]
    fn replies_are_not_requests() {
        assert_eq!(ArpRequest::parse(&KERNEL_REPLY), Err(Error::WrongKind));
        assert_eq!(
            ArpRequest::parse(&ARPING_GRATUITOUS_REPLY),
            Err(Error::WrongKind)
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        for len in 0..FRAME_LEN {
            assert_eq!(
                ArpFrame::parse(&ARPING_REQUEST[..len]),
                Err(Error::Truncated),
                "length {len}"
            );
        }
    }

    #[test]
    fn other_ethertypes_hardware_and_protocols_are_rejected() {
        let patch = |at: usize, bytes: &[u8]| {
            let mut f = ARPING_REQUEST;
            f[at..at + bytes.len()].copy_from_slice(bytes);
            ArpRequest::parse(&f)
        };
        // EtherType IPv4, and an 802.1Q tag.
        assert_eq!(patch(12, &[0x08, 0x00]), Err(Error::WrongProtocol));
        assert_eq!(patch(12, &[0x81, 0x00]), Err(Error::WrongProtocol));
        // Hardware type IEEE 802 (6), protocol IPv6, bad address lengths.
        assert_eq!(patch(14, &[0x00, 0x06]), Err(Error::UnsupportedArp));
        assert_eq!(patch(16, &[0x86, 0xdd]), Err(Error::UnsupportedArp));
        assert_eq!(patch(18, &[0x08]), Err(Error::UnsupportedArp));
        assert_eq!(patch(19, &[0x10]), Err(Error::UnsupportedArp));
        // RARP request (operation 3).
        assert_eq!(patch(20, &[0x00, 0x03]), Err(Error::UnsupportedArp));
        // A request from a multicast sender MAC.
        assert_eq!(patch(22, &[0x01, 0x00, 0x5e]), Err(Error::MulticastSender));
    }

    #[test]
    fn unicast_request_to_another_mac_is_not_addressed_to_us() {
        let mut frame = arping_request_repr();
        frame.eth_destination = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);
        let req = ArpRequest::parse(&frame.to_bytes()).unwrap();
        assert!(!req.is_addressed_to(NODE_MAC));
        frame.eth_destination = NODE_MAC;
        let req = ArpRequest::parse(&frame.to_bytes()).unwrap();
        assert!(req.is_addressed_to(NODE_MAC));
    }

    #[test]
    fn gratuitous_request_matches_arping_and_metallb() {
        let garp = ArpFrame::gratuitous(ArpOperation::Request, ip("192.0.2.10"), CLIENT_MAC);
        assert_eq!(garp.to_bytes(), ARPING_GRATUITOUS_REQUEST);
        let parsed = ArpRequest::parse(&ARPING_GRATUITOUS_REQUEST).unwrap();
        assert!(parsed.is_gratuitous());
    }

    #[test]
    fn gratuitous_reply_uses_broadcast_target_mac() {
        let garp = ArpFrame::gratuitous(ArpOperation::Reply, ip("192.0.2.10"), CLIENT_MAC);
        let bytes = garp.to_bytes();
        // Same as arping -A except the target MAC, which MetalLB sets to broadcast.
        assert_eq!(bytes[..32], ARPING_GRATUITOUS_REPLY[..32]);
        assert_eq!(bytes[32..38], [0xff; 6]);
        assert_eq!(bytes[38..], ARPING_GRATUITOUS_REPLY[38..]);
        let parsed = ArpFrame::parse(&bytes).unwrap();
        assert_eq!(parsed, garp);
        assert_eq!(parsed.eth_destination, MacAddr::BROADCAST);
        assert_eq!(parsed.sender_ip, parsed.target_ip);
    }

    #[test]
    fn probe_reply_goes_to_the_prober_with_zero_target_ip() {
        let mut probe = arping_request_repr();
        probe.sender_ip = Ipv4Addr::UNSPECIFIED;
        probe.target_mac = MacAddr::ZERO;
        let req = ArpRequest::parse(&probe.to_bytes()).unwrap();
        assert!(req.is_probe());
        let reply = req.reply(NODE_MAC);
        assert_eq!(reply.eth_destination, CLIENT_MAC);
        assert_eq!(reply.sender_ip, ip("192.0.2.20"));
        assert_eq!(reply.target_ip, Ipv4Addr::UNSPECIFIED);
    }
}
