//! ferrolb-speaker's parts: interface selection, and the announcer that
//! answers ARP and NDP for owned addresses and sends gratuitous ARP and
//! unsolicited NA on takeover, and the rule deciding when a request may be
//! answered at all (fresh, and while the ownership view is current). The
//! decisions themselves (who owns what, and the packets) live in
//! `ferrolb-core`.

pub mod announcer;
pub mod clock;
pub mod conditions;
pub mod daemon;
pub mod datapath;
pub mod interfaces;
pub mod kube_inputs;
pub mod l2status;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod ring_runner;
pub mod servicehealth;
pub mod sockets;
