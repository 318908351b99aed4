//! The errors of the load balancer.

/// What can go wrong; each of Hightower's package's errors has its variant
/// (`ErrNoEndpoints`: [`Error::NoEndpoints`], `ErrNotExist`: [`Error::ServiceNotFound`],
/// `ErrMissingServiceName`: [`Error::MissingServiceName`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config names no Service.
    #[error("endpoints: missing service name")]
    MissingServiceName,
    /// The Service does not exist (or was deleted).
    #[error("endpoints: service {namespace}/{service} does not exist")]
    ServiceNotFound { namespace: String, service: String },
    /// The Service exists but has no usable endpoint (none ready, none serving while
    /// terminating, or no EndpointSlice with the wanted port).
    #[error("endpoints: no endpoints available for service {namespace}/{service}")]
    NoEndpoints { namespace: String, service: String },
    /// The Service has no port of that name or number (or no port at all).
    #[error("endpoints: service {namespace}/{service} has no port {port}")]
    PortNotFound {
        namespace: String,
        service: String,
        port: String,
    },
    /// No port was configured and the Service has several.
    #[error("endpoints: service {namespace}/{service} has several ports: name one in the config")]
    AmbiguousPort { namespace: String, service: String },
    /// `next()` before the first `sync()` or the background sync's first list.
    #[error("endpoints: not synchronised yet (call sync() or start_background_sync() first)")]
    NotSynced,
    /// `start_background_sync()` a second time.
    #[error("endpoints: background sync already started")]
    AlreadyStarted,
    /// `start_background_sync()` after `shutdown()`.
    #[error("endpoints: the load balancer was shut down")]
    Shutdown,
    /// The Kubernetes API failed (`sync()` only: the background sync retries).
    #[error("endpoints: Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
