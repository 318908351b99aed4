//! `NdpFrame::parse` on arbitrary bytes (Ethernet + IPv6 + ICMPv6, with the
//! checksum checked): never panics, and whatever it accepts survives
//! emit-then-parse unchanged.
#![no_main]

use ferrolb_core::packet::NdpFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = NdpFrame::parse(data) {
        let mut buf = vec![0u8; frame.buffer_len()];
        assert_eq!(frame.emit(&mut buf), Ok(buf.len()));
        assert_eq!(NdpFrame::parse(&buf), Ok(frame));
    }
});
