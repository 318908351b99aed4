//! ferrolb's domain logic, free of I/O: the address-pool config, the allocator
//! that hands addresses to Services, and the annotations that carry requests.
//! The controller and speaker binaries feed it events and carry out its answers.
#![forbid(unsafe_code)]

pub mod addr;
pub mod allocator;
pub mod announced;
pub mod config;
pub mod config_change;
pub mod config_gate;
pub mod crd;
pub mod datapath;
pub mod election;
pub mod events;
pub mod membership;
pub mod pacing;
pub mod packet;
pub mod ring;
pub mod selector;
pub mod service;
pub mod sources;

pub use addr::{AddrRange, Family};
pub use allocator::{
    AllocError, Allocation, Allocator, Change, EnsureError, Ensured, Orphan, PoolStats,
};
pub use config::{AddressPool, Config, ConfigError};
pub use election::{ClusterState, Endpoint, NodeInfo, Owner, ServiceInfo, TrafficPolicy, Unowned};
pub use service::{FamilyPolicy, PortKey, Protocol, ServiceKey, ServiceSpec, Sharing};
