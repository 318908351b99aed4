//! Property tests for `ferrolb_core::packet` (docs/architecture.md, section 8):
//!
//! - no input makes a parser panic: arbitrary bytes, and valid frames with
//!   random bytes changed and random lengths cut off (random bytes alone
//!   rarely get past the EtherType);
//! - whatever a parser accepts, emitting it and parsing again gives the same
//!   value;
//! - building then parsing round-trips for every representable frame;
//! - the answers the speaker builds parse back as what they claim to be.

use std::net::{Ipv4Addr, Ipv6Addr};

use ferrolb_core::packet::arp::FRAME_LEN;
use ferrolb_core::packet::ndp::ALL_NODES;
use ferrolb_core::packet::{
    ArpFrame, ArpOperation, ArpRequest, MacAddr, NdpFrame, NdpMessage, NeighborAdvertisement,
    NeighborSolicitation, multicast_mac, solicited_node_multicast,
};
use proptest::prelude::*;

const CASES: u32 = 10_000;

fn mac() -> impl Strategy<Value = MacAddr> {
    prop_oneof![
        any::<[u8; 6]>().prop_map(MacAddr),
        Just(MacAddr::BROADCAST),
        Just(MacAddr::ZERO),
    ]
}

fn unicast_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(|mut m| {
        m[0] &= 0xfe;
        MacAddr(m)
    })
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<u32>().prop_map(Ipv4Addr::from),
        (0u8..=255).prop_map(|i| Ipv4Addr::new(192, 0, 2, i)),
        Just(Ipv4Addr::UNSPECIFIED),
    ]
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        any::<u16>().prop_map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)),
        any::<u64>().prop_map(|i| Ipv6Addr::from(0xfe80_u128 << 112 | u128::from(i))),
        Just(Ipv6Addr::UNSPECIFIED),
        Just(ALL_NODES),
    ]
}

fn unicast_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    ipv6().prop_filter("unicast", |a| !a.is_multicast())
}

fn arp_frame() -> impl Strategy<Value = ArpFrame> {
    (
        mac(),
        mac(),
        prop_oneof![Just(ArpOperation::Request), Just(ArpOperation::Reply)],
        mac(),
        ipv4(),
        mac(),
        ipv4(),
    )
        .prop_map(
            |(
                eth_destination,
                eth_source,
                operation,
                sender_mac,
                sender_ip,
                target_mac,
                target_ip,
            )| {
                ArpFrame {
                    eth_destination,
                    eth_source,
                    operation,
                    sender_mac,
                    sender_ip,
                    target_mac,
                    target_ip,
                }
            },
        )
}

fn solicitation() -> impl Strategy<Value = NeighborSolicitation> {
    (unicast_ipv6(), proptest::option::of(mac()))
        .prop_map(|(target, source_mac)| NeighborSolicitation { target, source_mac })
}

fn advertisement() -> impl Strategy<Value = NeighborAdvertisement> {
    (
        any::<(bool, bool, bool)>(),
        unicast_ipv6(),
        proptest::option::of(mac()),
    )
        .prop_map(|((router, solicited, override_flag), target, target_mac)| {
            NeighborAdvertisement {
                router,
                solicited,
                override_flag,
                target,
                target_mac,
            }
        })
}

/// Frames that satisfy every rule `NdpFrame::parse` checks.
fn ndp_frame() -> impl Strategy<Value = NdpFrame> {
    let message = prop_oneof![
        solicitation().prop_map(NdpMessage::Solicitation),
        advertisement().prop_map(NdpMessage::Advertisement),
    ];
    (mac(), mac(), unicast_ipv6(), ipv6(), message).prop_map(
        |(eth_destination, eth_source, source, mut destination, mut message)| {
            match &mut message {
                NdpMessage::Solicitation(ns) if source.is_unspecified() => {
                    // Duplicate address detection: no option, to the group.
                    ns.source_mac = None;
                    destination = solicited_node_multicast(ns.target);
                }
                NdpMessage::Advertisement(na) if destination.is_multicast() => {
                    na.solicited = false;
                }
                _ => {}
            }
            NdpFrame {
                eth_destination,
                eth_source,
                source,
                destination,
                message,
            }
        },
    )
}

fn emit_arp(frame: &ArpFrame) -> Vec<u8> {
    frame.to_bytes().to_vec()
}

fn emit_ndp(frame: &NdpFrame) -> Vec<u8> {
    let mut buf = vec![0u8; frame.buffer_len()];
    assert_eq!(frame.emit(&mut buf), Ok(buf.len()));
    buf
}

fn emit_message(message: &NdpMessage) -> Vec<u8> {
    let mut buf = vec![0u8; message.buffer_len()];
    assert_eq!(message.emit(&mut buf), Ok(buf.len()));
    buf
}

/// Runs every parser on `bytes`; whatever one accepts must survive
/// emit-then-parse unchanged.
fn parse_everything(bytes: &[u8]) {
    if let Ok(frame) = ArpFrame::parse(bytes) {
        assert_eq!(ArpFrame::parse(&emit_arp(&frame)), Ok(frame));
    }
    if let Ok(request) = ArpRequest::parse(bytes) {
        assert_eq!(request.frame().operation, ArpOperation::Request);
        assert!(!request.sender_mac().is_multicast());
    }
    if let Ok(frame) = NdpFrame::parse(bytes) {
        assert_eq!(NdpFrame::parse(&emit_ndp(&frame)), Ok(frame));
    }
    if let Ok(message) = NdpMessage::parse(bytes) {
        assert_eq!(NdpMessage::parse(&emit_message(&message)), Ok(message));
    }
    let _ = NeighborSolicitation::parse(bytes);
    let _ = NeighborAdvertisement::parse(bytes);
}

/// Valid frames of every kind, for mutation.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arp_frame().prop_map(|f| emit_arp(&f)),
        ndp_frame().prop_map(|f| emit_ndp(&f)),
        ndp_frame().prop_map(|f| emit_message(&f.message)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn no_parser_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        parse_everything(&bytes);
    }

    #[test]
    fn no_parser_panics_on_damaged_valid_frames(
        frame in valid_frame(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = frame;
        for (at, value) in damage {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        parse_everything(&bytes);
        // Cut anywhere, and grown with trailing bytes (padding, or options).
        parse_everything(&bytes[..cut.index(bytes.len() + 1)]);
        bytes.extend_from_slice(&extra);
        parse_everything(&bytes);
    }

    #[test]
    fn arp_frame_build_then_parse_round_trips(frame in arp_frame()) {
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), FRAME_LEN);
        prop_assert_eq!(ArpFrame::parse(&bytes), Ok(frame));
    }

    #[test]
    fn reply_to_any_request_answers_the_sender_with_our_mac(
        mut request in arp_frame(),
        sender in unicast_mac(),
        ours in unicast_mac(),
    ) {
        request.operation = ArpOperation::Request;
        request.sender_mac = sender;
        let parsed = ArpRequest::parse(&request.to_bytes()).unwrap();
        let reply = ArpFrame::parse(&parsed.reply(ours).to_bytes()).unwrap();
        prop_assert_eq!(reply.operation, ArpOperation::Reply);
        prop_assert_eq!(reply.eth_destination, sender);
        prop_assert_eq!(reply.eth_source, ours);
        prop_assert_eq!(reply.sender_mac, ours);
        prop_assert_eq!(reply.sender_ip, request.target_ip);
        prop_assert_eq!(reply.target_mac, sender);
        prop_assert_eq!(reply.target_ip, request.sender_ip);
    }

    #[test]
    fn gratuitous_arp_parses_as_an_announcement(addr in ipv4(), ours in unicast_mac(), reply in any::<bool>()) {
        let op = if reply { ArpOperation::Reply } else { ArpOperation::Request };
        let parsed = ArpFrame::parse(&ArpFrame::gratuitous(op, addr, ours).to_bytes()).unwrap();
        prop_assert_eq!(parsed.operation, op);
        prop_assert_eq!(parsed.eth_destination, MacAddr::BROADCAST);
        prop_assert_eq!(parsed.target_mac, MacAddr::BROADCAST);
        prop_assert_eq!((parsed.sender_ip, parsed.target_ip), (addr, addr));
        prop_assert_eq!(parsed.sender_mac, ours);
    }

    #[test]
    fn ndp_frame_build_then_parse_round_trips(frame in ndp_frame()) {
        let bytes = emit_ndp(&frame);
        prop_assert_eq!(NdpFrame::parse(&bytes), Ok(frame));
        // The ICMPv6 part alone, as a raw socket delivers it.
        let message = &bytes[14 + 40..];
        prop_assert_eq!(NdpMessage::parse(message), Ok(frame.message));
    }

    #[test]
    fn answer_to_any_solicitation_is_a_valid_advertisement(
        ns in solicitation(),
        source in unicast_ipv6(),
        ours in unicast_mac(),
    ) {
        let ns = NeighborSolicitation {
            source_mac: if source.is_unspecified() { None } else { ns.source_mac },
            ..ns
        };
        let (destination, na) = ns.answer(source, ours).unwrap();
        let frame = NdpFrame {
            eth_destination: if destination.is_multicast() {
                multicast_mac(destination)
            } else {
                ns.source_mac.unwrap_or(MacAddr([2, 0, 0, 0, 0, 1]))
            },
            eth_source: ours,
            source: ns.target,
            destination,
            message: NdpMessage::Advertisement(na),
        };
        let parsed = NdpFrame::parse(&emit_ndp(&frame)).unwrap();
        let NdpMessage::Advertisement(back) = parsed.message else {
            panic!("answer is not an advertisement");
        };
        prop_assert_eq!(back.target, ns.target);
        prop_assert_eq!(back.target_mac, Some(ours));
        prop_assert!(back.override_flag && !back.router);
        prop_assert_eq!(back.solicited, !source.is_unspecified());
    }

    #[test]
    fn solicited_node_group_keeps_the_low_24_bits(addr in ipv6()) {
        let group = solicited_node_multicast(addr);
        prop_assert_eq!(u128::from(group) >> 24, u128::from(solicited_node_multicast(Ipv6Addr::UNSPECIFIED)) >> 24);
        prop_assert_eq!(u128::from(group) & 0xff_ffff, u128::from(addr) & 0xff_ffff);
        prop_assert_eq!(multicast_mac(group).0[2], 0xff);
    }
}
