//! `ArpFrame::parse` and `ArpRequest::parse` on arbitrary bytes: never panic,
//! and whatever they accept survives emit-then-parse unchanged.
#![no_main]

use ferrolb_core::packet::{ArpFrame, ArpOperation, ArpRequest, MacAddr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ArpFrame::parse(data) {
        assert_eq!(ArpFrame::parse(&frame.to_bytes()), Ok(frame));
    }
    if let Ok(request) = ArpRequest::parse(data) {
        assert_eq!(request.frame().operation, ArpOperation::Request);
        let ours = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
        let reply = ArpFrame::parse(&request.reply(ours).to_bytes()).expect("reply parses");
        assert_eq!(reply.target_mac, request.sender_mac());
        assert_eq!(reply.sender_ip, request.target_ip());
    }
});
