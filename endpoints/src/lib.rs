//! Client-side load balancing over a Kubernetes Service's endpoints.
//!
//! A client inside (or beside) the cluster asks the API where a Service's endpoints are and
//! spreads its own requests over them: no virtual IP, no proxy, no DNS. The calls are those
//! of Kelsey Hightower's Go package `endpoints`, read from EndpointSlices (the v1 Endpoints
//! API it used is deprecated since Kubernetes 1.33):
//!
//! | Go package `endpoints` | this crate |
//! |---|---|
//! | `endpoints.New(&endpoints.Config{Namespace, Service})` | [`LoadBalancer::new`]`(client, `[`Config::new`]`(service).namespace(ns))` (no I/O) |
//! | `lb.SyncEndpoints()` | [`LoadBalancer::sync`]`().await` |
//! | `lb.Next()` → `Endpoint{Host, Port}` | [`LoadBalancer::next`]`()` → [`Endpoint`] (`host()`, `port()`, `node()`, `zone()`) |
//! | `lb.StartBackgroundSync()` | [`LoadBalancer::start_background_sync`]`()` |
//! | `lb.Shutdown()` | [`LoadBalancer::shutdown`]`().await` |
//! | `ErrNotExist`, `ErrNoEndpoints`, `ErrMissingServiceName` | [`Error::ServiceNotFound`], [`Error::NoEndpoints`], [`Error::MissingServiceName`] |
//!
//! ```no_run
//! use ferrolb_endpoints::{Config, LoadBalancer};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let lb = LoadBalancer::new(client, Config::new("web").port("http"));
//! lb.sync().await?;                // one get and one list; errors if no Service or no endpoints
//! lb.start_background_sync()?;     // watch the Service's EndpointSlices from now on
//! let ep = lb.next()?;             // round-robin; never blocks
//! println!("{}:{} on {:?}", ep.host(), ep.port(), ep.node());
//! // ... a request fails: skip that endpoint for a while
//! lb.report_failure(&ep);
//! lb.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! What a modern client does, as kube-proxy does it:
//!
//! - every EndpointSlice of the Service (label `kubernetes.io/service-name`) is merged, both
//!   address families unless [`FamilyPreference`] says otherwise;
//! - ready endpoints are used, and serving-but-terminating ones only when none is ready;
//! - topology hints (`hints.forNodes`, `hints.forZones`) are followed when the caller gives
//!   its node or zone ([`Config::node`], [`Config::zone`]), and ignored when they leave no
//!   endpoint;
//! - round-robin, or power-of-two-choices on requests in flight ([`Policy`],
//!   [`LoadBalancer::next_tracked`]);
//! - passive ejection ([`Ejection`]): a reported failure skips the endpoint for a backoff,
//!   never more than half of the endpoints at once.
//!
//! The read path takes no lock: the usable endpoints are an immutable snapshot behind an
//! [`arc_swap::ArcSwap`], replaced whole by the sync, and round-robin is one atomic counter.
//!
//! With the feature `tower`, [`LoadBalancer::discover`] is a `tower::discover::Discover` of
//! the endpoints, for tower's balancers.

mod balancer;
mod config;
#[cfg(any(feature = "tower", test))]
mod discover;
mod error;
pub mod select;
mod snapshot;

pub use balancer::{LoadBalancer, SERVICE_NAME_LABEL, State, Stats, Tracked};
pub use config::{
    Config, DEFAULT_RESYNC_INTERVAL, Ejection, Family, FamilyPreference, Policy, Port,
};
#[cfg(any(feature = "tower", test))]
pub use discover::Discover;
pub use error::{Error, Result};
pub use select::{Endpoint, HintsUsed};
