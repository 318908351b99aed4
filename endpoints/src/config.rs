//! What a [`LoadBalancer`](crate::LoadBalancer) balances over, and how.

use std::fmt;
use std::time::Duration;

/// The Service port whose endpoints are returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// The Service port's `name` (the EndpointSlices carry the same name).
    Name(String),
    /// The Service port's `port` number (not the target port): it is looked up in the
    /// Service's spec and followed by its name into the EndpointSlices, which carry the
    /// target port. `next()` returns endpoints with the target port.
    Number(u16),
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Name(n) => write!(f, "{n:?}"),
            Port::Number(p) => write!(f, "{p}"),
        }
    }
}

impl From<&str> for Port {
    /// A name, or a number when the text is one (`"http"`, `"80"`).
    fn from(s: &str) -> Self {
        match s.parse::<u16>() {
            Ok(n) => Port::Number(n),
            Err(_) => Port::Name(s.to_owned()),
        }
    }
}

impl From<String> for Port {
    fn from(s: String) -> Self {
        Port::from(s.as_str())
    }
}

impl From<u16> for Port {
    fn from(n: u16) -> Self {
        Port::Number(n)
    }
}

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub(crate) fn other(self) -> Family {
        match self {
            Family::IPv4 => Family::IPv6,
            Family::IPv6 => Family::IPv4,
        }
    }

    pub(crate) fn of(ip: &std::net::IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::IPv4
        } else {
            Family::IPv6
        }
    }
}

/// Which address families' endpoints to use (a dual-stack Service has an EndpointSlice per
/// family).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FamilyPreference {
    /// Endpoints of both families, merged into one rotation.
    #[default]
    Both,
    /// This family's endpoints when it has usable ones (ready, or else serving-but-terminating
    /// when the other family has no ready ones either), otherwise the other family's.
    Prefer(Family),
    /// Only this family's endpoints.
    Only(Family),
}

/// How `next()` chooses among the usable endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Each endpoint in turn (the endpoints in address order, one shared counter).
    #[default]
    RoundRobin,
    /// Two endpoints at random, the one with fewer requests in flight (as counted by
    /// [`LoadBalancer::next_tracked`](crate::LoadBalancer::next_tracked) guards).
    PowerOfTwoChoices,
}

/// Passive ejection: the caller reports failures
/// ([`LoadBalancer::report_failure`](crate::LoadBalancer::report_failure)), and an endpoint
/// with `consecutive_failures` of them in a row is skipped by `next()` for a backoff: `base`
/// the first time, doubling with each ejection that follows without a reported success in
/// between, at most `max`. At most half of the usable endpoints (rounded down) are ever
/// ejected at once; a failure that would eject more is counted but ejects nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub consecutive_failures: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            consecutive_failures: 1,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Ejection {
    /// How long the `n`-th consecutive ejection (0 for the first) lasts.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// The default time between two full relists of the background sync.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// What a [`LoadBalancer`](crate::LoadBalancer) balances over. Build one with
/// [`Config::new`] and the setters:
///
/// ```
/// use ferrolb_endpoints::{Config, Policy};
/// let config = Config::new("web").namespace("shop").port("http").zone("zone-a")
///     .policy(Policy::PowerOfTwoChoices);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The Service's namespace; `None`: the client's default namespace, which for an
    /// in-cluster client is the Pod's own.
    pub namespace: Option<String>,
    /// The Service's name.
    pub service: String,
    /// Which of the Service's ports; `None`: its only port (an error when it has several).
    pub port: Option<Port>,
    /// Which address families.
    pub families: FamilyPreference,
    /// The caller's zone (`topology.kubernetes.io/zone` of its node), for `hints.forZones`.
    pub zone: Option<String>,
    /// The caller's node name, for `hints.forNodes`.
    pub node: Option<String>,
    /// How `next()` chooses.
    pub policy: Policy,
    /// Passive ejection; `None` turns it off (reported failures are then ignored).
    pub ejection: Option<Ejection>,
    /// The background sync lists everything again this often, whatever its watches say
    /// (`None`: only when a watch cannot resume).
    pub resync_interval: Option<Duration>,
}

impl Config {
    /// The Service `service`, in the default namespace, its only port, both families, no
    /// topology, round-robin, default ejection, relist every 5 minutes.
    pub fn new(service: impl Into<String>) -> Self {
        Config {
            namespace: None,
            service: service.into(),
            port: None,
            families: FamilyPreference::Both,
            zone: None,
            node: None,
            policy: Policy::RoundRobin,
            ejection: Some(Ejection::default()),
            resync_interval: Some(DEFAULT_RESYNC_INTERVAL),
        }
    }

    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// `"http"` or `Port::Name(..)` for a name, `80` or `"80"` for the Service port number.
    pub fn port(mut self, port: impl Into<Port>) -> Self {
        self.port = Some(port.into());
        self
    }

    pub fn families(mut self, families: FamilyPreference) -> Self {
        self.families = families;
        self
    }

    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn ejection(mut self, ejection: Option<Ejection>) -> Self {
        self.ejection = ejection;
        self
    }

    pub fn resync_interval(mut self, interval: Option<Duration>) -> Self {
        self.resync_interval = interval;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_from_text() {
        assert_eq!(Port::from("http"), Port::Name("http".into()));
        assert_eq!(Port::from("8080"), Port::Number(8080));
        assert_eq!(Port::from(80u16), Port::Number(80));
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let e = Ejection {
            consecutive_failures: 1,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(e.backoff(0), Duration::from_millis(100));
        assert_eq!(e.backoff(1), Duration::from_millis(200));
        assert_eq!(e.backoff(3), Duration::from_millis(800));
        assert_eq!(e.backoff(4), Duration::from_secs(1));
        assert_eq!(e.backoff(u32::MAX), Duration::from_secs(1));
    }
}
