//! The ICMPv6 message parsers (what an ICMPv6 raw socket delivers) on
//! arbitrary bytes: never panic, and whatever they accept survives
//! emit-then-parse unchanged; an accepted solicitation can be answered.
#![no_main]

use std::net::Ipv6Addr;

use ferrolb_core::packet::{MacAddr, NdpMessage, NeighborAdvertisement, NeighborSolicitation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = NdpMessage::parse(data) {
        let mut buf = vec![0u8; message.buffer_len()];
        assert_eq!(message.emit(&mut buf), Ok(buf.len()));
        assert_eq!(NdpMessage::parse(&buf), Ok(message));
    }
    if let Ok(ns) = NeighborSolicitation::parse(data) {
        let source = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let (to, na) = ns
            .answer(source, MacAddr([0x02, 0, 0, 0, 0, 0x0b]))
            .expect("a unicast source is always answered");
        assert_eq!(to, source);
        assert_eq!(na.target, ns.target);
    }
    let _ = NeighborAdvertisement::parse(data);
});
