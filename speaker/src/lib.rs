//! ferrolb-speaker's parts: interface selection, and the announcer that
//! answers ARP and NDP for owned addresses and sends gratuitous ARP and
//! unsolicited NA on takeover. The decisions themselves (who owns what, and
//! the packets) live in `ferrolb-core`.

pub mod announcer;
pub mod cluster;
pub mod daemon;
pub mod interfaces;
pub mod membership;
pub mod metrics;
pub mod sys;
