//! Which endpoints of a Service are usable: the pure part, from EndpointSlices to a sorted
//! list of endpoints, with kube-proxy's rules.
//!
//! 1. Every EndpointSlice of the Service is merged; an address listed twice (an endpoint
//!    moving between slices) counts once, its ready listing winning.
//! 2. Of each endpoint, the first address and the slice's port of the wanted name are used;
//!    FQDN slices and slices without that port are skipped.
//! 3. Ready endpoints (`ready` unset counts as ready) are used; only when none is ready,
//!    the serving-but-terminating ones (`serving` unset defers to `ready`).
//! 4. Among ready endpoints, topology hints as kube-proxy applies them: `hints.forNodes`
//!    when the caller gives its node, every ready endpoint has node hints and at least one
//!    names the caller's node; else `hints.forZones` likewise with the caller's zone; else
//!    every ready endpoint.
//! 5. Address families by [`FamilyPreference`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{Family, FamilyPreference, Port};

/// One endpoint as `next()` returns it: an address and port, and where it runs.
///
/// Cloning is cheap (the address is copied, the rest shared).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    addr: SocketAddr,
    info: Arc<Info>,
}

#[derive(Debug, PartialEq, Eq, Hash, Default)]
struct Info {
    node: Option<String>,
    zone: Option<String>,
    hostname: Option<String>,
    terminating: bool,
}

impl Endpoint {
    /// An endpoint without topology (for tests and callers building their own).
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            info: Arc::new(Info::default()),
        }
    }

    /// The endpoint's IP address.
    pub fn host(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The endpoint's port (the EndpointSlice's, i.e. the Service's target port).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Address and port, ready for `TcpStream::connect`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node it runs on (`nodeName`), when the EndpointSlice says.
    pub fn node(&self) -> Option<&str> {
        self.info.node.as_deref()
    }

    /// Its zone (`zone`), when the EndpointSlice says.
    pub fn zone(&self) -> Option<&str> {
        self.info.zone.as_deref()
    }

    /// Its `hostname` (set for the Pods of a StatefulSet behind a headless Service).
    pub fn hostname(&self) -> Option<&str> {
        self.info.hostname.as_deref()
    }

    /// Whether it is terminating (returned only when no endpoint is ready).
    pub fn is_terminating(&self) -> bool {
        self.info.terminating
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(node) = self.node() {
            write!(f, " (node {node}")?;
            if let Some(zone) = self.zone() {
                write!(f, ", zone {zone}")?;
            }
            write!(f, ")")?;
        } else if let Some(zone) = self.zone() {
            write!(f, " (zone {zone})")?;
        }
        Ok(())
    }
}

/// The caller's side of the selection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectOptions {
    pub families: FamilyPreference,
    pub zone: Option<String>,
    pub node: Option<String>,
}

/// Which topology hints a selection followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintsUsed {
    None,
    /// `hints.forNodes` named the caller's node.
    Node,
    /// `hints.forZones` named the caller's zone.
    Zone,
}

/// The usable endpoints, sorted by address, and how they were chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub endpoints: Vec<Endpoint>,
    /// No endpoint was ready: these are serving-but-terminating ones.
    pub terminating_fallback: bool,
    pub hints: HintsUsed,
}

impl Selection {
    fn empty() -> Self {
        Selection {
            endpoints: vec![],
            terminating_fallback: false,
            hints: HintsUsed::None,
        }
    }
}

/// Why the wanted port cannot be found in a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortProblem {
    /// The Service has no such port (or no port at all).
    NotFound,
    /// No port was named and the Service has several.
    Ambiguous,
}

/// The name (empty for an unnamed port) under which the Service's EndpointSlices list the
/// wanted port.
pub fn resolve_port(service: &Service, port: Option<&Port>) -> Result<String, PortProblem> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let name = |p: &k8s_openapi::api::core::v1::ServicePort| p.name.clone().unwrap_or_default();
    match port {
        Some(Port::Name(n)) => ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == n)
            .map(name)
            .ok_or(PortProblem::NotFound),
        Some(Port::Number(n)) => ports
            .iter()
            .find(|p| p.port == i32::from(*n))
            .map(name)
            .ok_or(PortProblem::NotFound),
        None => match ports {
            [only] => Ok(name(only)),
            [] => Err(PortProblem::NotFound),
            _ => Err(PortProblem::Ambiguous),
        },
    }
}

/// One endpoint of a slice, with what the selection needs.
#[derive(Debug)]
struct Candidate {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    zone: Option<String>,
    hostname: Option<String>,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

impl Candidate {
    fn family(&self) -> Family {
        Family::of(&self.addr.ip())
    }

    fn endpoint(&self, terminating: bool) -> Endpoint {
        Endpoint {
            addr: self.addr,
            info: Arc::new(Info {
                node: self.node.clone(),
                zone: self.zone.clone(),
                hostname: self.hostname.clone(),
                terminating: terminating && self.terminating,
            }),
        }
    }
}

fn candidates<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
) -> Vec<Candidate> {
    // Sorted by slice name, so that which duplicate wins does not depend on the order the
    // slices arrived in.
    let mut slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut by_addr: HashMap<SocketAddr, Candidate> = HashMap::new();
    for slice in slices {
        let family = match slice.address_type.as_str() {
            "IPv4" => Family::IPv4,
            "IPv6" => Family::IPv6,
            _ => continue, // FQDN (deprecated) or unknown
        };
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .filter(|ip| Family::of(ip) == family)
            else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let hints = ep.hints.as_ref();
            let c = Candidate {
                addr: SocketAddr::new(ip, port),
                ready,
                serving,
                terminating,
                node: ep.node_name.clone(),
                zone: ep.zone.clone(),
                hostname: ep.hostname.clone(),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default(),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_default(),
            };
            match by_addr.get(&c.addr) {
                Some(old) if old.ready || !c.ready => {}
                _ => {
                    by_addr.insert(c.addr, c);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// kube-proxy's topology rule over the ready endpoints: the hinted subset, or `None` to use
/// them all.
fn hinted<'a>(
    ready: &[&'a Candidate],
    opts: &SelectOptions,
) -> Option<(Vec<&'a Candidate>, HintsUsed)> {
    type HintsOf = fn(&Candidate) -> &[String];
    let rules: [(Option<&String>, HintsOf, HintsUsed); 2] = [
        (opts.node.as_ref(), |c| &c.node_hints, HintsUsed::Node),
        (opts.zone.as_ref(), |c| &c.zone_hints, HintsUsed::Zone),
    ];
    for (mine, hints_of, used) in rules {
        let Some(mine) = mine else { continue };
        if ready.iter().all(|c| !hints_of(c).is_empty()) {
            let subset: Vec<&Candidate> = ready
                .iter()
                .copied()
                .filter(|c| hints_of(c).contains(mine))
                .collect();
            if !subset.is_empty() {
                return Some((subset, used));
            }
        }
    }
    None
}

fn select_among(cands: &[&Candidate], opts: &SelectOptions) -> Selection {
    let ready: Vec<&Candidate> = cands.iter().copied().filter(|c| c.ready).collect();
    let (chosen, hints, terminating_fallback) = if !ready.is_empty() {
        match hinted(&ready, opts) {
            Some((subset, used)) => (subset, used, false),
            None => (ready, HintsUsed::None, false),
        }
    } else {
        let fallback: Vec<&Candidate> = cands
            .iter()
            .copied()
            .filter(|c| c.serving && c.terminating)
            .collect();
        let any = !fallback.is_empty();
        (fallback, HintsUsed::None, any)
    };
    let mut endpoints: Vec<Endpoint> = chosen
        .iter()
        .map(|c| c.endpoint(terminating_fallback))
        .collect();
    endpoints.sort_by_key(|e| e.addr);
    Selection {
        endpoints,
        terminating_fallback,
        hints,
    }
}

/// The usable endpoints of a Service's EndpointSlices for the port named `port_name` (see
/// [`resolve_port`]), sorted by address.
pub fn select<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
    opts: &SelectOptions,
) -> Selection {
    let cands = candidates(slices, port_name);
    let of = |f: Option<Family>| -> Vec<&Candidate> {
        cands
            .iter()
            .filter(|c| f.is_none_or(|f| c.family() == f))
            .collect()
    };
    match opts.families {
        FamilyPreference::Both => select_among(&of(None), opts),
        FamilyPreference::Only(f) => select_among(&of(Some(f)), opts),
        FamilyPreference::Prefer(f) => {
            let mine = select_among(&of(Some(f)), opts);
            if !mine.endpoints.is_empty() && !mine.terminating_fallback {
                return mine;
            }
            let other = select_among(&of(Some(f.other())), opts);
            match (mine.endpoints.is_empty(), other.endpoints.is_empty()) {
                (_, true) => mine,
                (true, false) => other,
                // Both have endpoints and mine are terminating: the other's ready ones win.
                (false, false) if !other.terminating_fallback => other,
                (false, false) => mine,
            }
        }
    }
}

/// An empty selection (no slices).
pub fn nothing() -> Selection {
    Selection::empty()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointHints, EndpointPort, ForNode,
        ForZone,
    };
    use proptest::prelude::*;

    /// One endpoint of a test slice.
    #[derive(Clone, Debug)]
    pub(crate) struct Ep {
        pub ip: IpAddr,
        pub ready: Option<bool>,
        pub serving: Option<bool>,
        pub terminating: Option<bool>,
        pub zone_hints: Option<Vec<String>>,
        pub node_hints: Option<Vec<String>>,
        pub node: Option<String>,
        pub zone: Option<String>,
    }

    pub(crate) fn ep(ip: &str) -> Ep {
        Ep {
            ip: ip.parse().unwrap(),
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            zone_hints: None,
            node_hints: None,
            node: None,
            zone: None,
        }
    }

    pub(crate) fn terminating(ip: &str, serving: bool) -> Ep {
        Ep {
            ready: Some(false),
            serving: Some(serving),
            terminating: Some(true),
            ..ep(ip)
        }
    }

    pub(crate) fn slice(name: &str, port_name: &str, port: i32, eps: &[Ep]) -> EndpointSlice {
        let v6 = eps.first().is_some_and(|e| e.ip.is_ipv6());
        EndpointSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(port),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
            endpoints: eps
                .iter()
                .map(|e| SliceEndpoint {
                    addresses: vec![e.ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    }),
                    hints: (e.zone_hints.is_some() || e.node_hints.is_some()).then(|| {
                        EndpointHints {
                            for_zones: e
                                .zone_hints
                                .as_ref()
                                .map(|z| z.iter().map(|n| ForZone { name: n.clone() }).collect()),
                            for_nodes: e
                                .node_hints
                                .as_ref()
                                .map(|z| z.iter().map(|n| ForNode { name: n.clone() }).collect()),
                        }
                    }),
                    node_name: e.node.clone(),
                    zone: e.zone.clone(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn addrs(s: &Selection) -> Vec<String> {
        s.endpoints.iter().map(|e| e.addr().to_string()).collect()
    }

    fn both() -> SelectOptions {
        SelectOptions::default()
    }

    #[test]
    fn merges_slices_sorted_and_deduplicated() {
        let a = slice("web-a", "http", 8080, &[ep("10.0.0.3"), ep("10.0.0.1")]);
        let b = slice("web-b", "http", 8080, &[ep("10.0.0.2"), ep("10.0.0.1")]);
        let s = select([&a, &b], "http", &both());
        assert_eq!(
            addrs(&s),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
        assert!(!s.terminating_fallback);
    }

    #[test]
    fn port_by_name_per_slice() {
        let a = slice("a", "http", 8080, &[ep("10.0.0.1")]);
        let b = slice("b", "metrics", 9090, &[ep("10.0.0.2")]);
        let c = slice("c", "http", 8081, &[ep("10.0.0.3")]);
        assert_eq!(
            addrs(&select([&a, &b, &c], "http", &both())),
            ["10.0.0.1:8080", "10.0.0.3:8081"]
        );
        assert_eq!(
            addrs(&select([&a, &b, &c], "metrics", &both())),
            ["10.0.0.2:9090"]
        );
    }

    #[test]
    fn unset_conditions_count_as_ready() {
        let mut e = ep("10.0.0.1");
        e.ready = None;
        e.serving = None;
        e.terminating = None;
        let s = select([&slice("a", "", 80, &[e])], "", &both());
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
    }

    #[test]
    fn ready_first_then_serving_terminating() {
        let a = slice(
            "a",
            "http",
            80,
            &[
                ep("10.0.0.1"),
                terminating("10.0.0.2", true),
                terminating("10.0.0.3", false),
            ],
        );
        let s = select([&a], "http", &both());
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        let b = slice(
            "a",
            "http",
            80,
            &[
                terminating("10.0.0.2", true),
                terminating("10.0.0.3", false),
            ],
        );
        let s = select([&b], "http", &both());
        assert_eq!(addrs(&s), ["10.0.0.2:80"]);
        assert!(s.terminating_fallback);
        assert!(s.endpoints[0].is_terminating());
        // Not ready, not terminating (starting up): never used.
        let mut starting = ep("10.0.0.4");
        starting.ready = Some(false);
        starting.serving = Some(false);
        let s = select([&slice("a", "http", 80, &[starting])], "http", &both());
        assert!(s.endpoints.is_empty());
    }

    fn zoned(ip: &str, zones: &[&str]) -> Ep {
        Ep {
            zone_hints: Some(zones.iter().map(|z| z.to_string()).collect()),
            ..ep(ip)
        }
    }

    #[test]
    fn zone_hints() {
        let a = slice(
            "a",
            "http",
            80,
            &[
                zoned("10.0.0.1", &["a"]),
                zoned("10.0.0.2", &["b"]),
                zoned("10.0.0.3", &["a", "c"]),
            ],
        );
        let in_zone = |z: &str| SelectOptions {
            zone: Some(z.into()),
            ..both()
        };
        let s = select([&a], "http", &in_zone("a"));
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.3:80"]);
        assert_eq!(s.hints, HintsUsed::Zone);
        assert_eq!(addrs(&select([&a], "http", &in_zone("b"))), ["10.0.0.2:80"]);
        // A zone no hint names: every endpoint.
        let s = select([&a], "http", &in_zone("d"));
        assert_eq!(s.endpoints.len(), 3);
        assert_eq!(s.hints, HintsUsed::None);
        // No zone given: every endpoint.
        assert_eq!(select([&a], "http", &both()).endpoints.len(), 3);
        // One ready endpoint without hints: hints ignored (kube-proxy's rule).
        let b = slice(
            "a",
            "http",
            80,
            &[zoned("10.0.0.1", &["a"]), ep("10.0.0.2")],
        );
        assert_eq!(select([&b], "http", &in_zone("a")).endpoints.len(), 2);
        // ... but a not-ready one without hints does not count.
        let mut down = ep("10.0.0.2");
        down.ready = Some(false);
        down.serving = Some(false);
        let c = slice(
            "a",
            "http",
            80,
            &[zoned("10.0.0.1", &["a"]), down, zoned("10.0.0.3", &["b"])],
        );
        assert_eq!(addrs(&select([&c], "http", &in_zone("a"))), ["10.0.0.1:80"]);
    }

    #[test]
    fn node_hints_before_zone_hints() {
        let mut e1 = zoned("10.0.0.1", &["a"]);
        e1.node_hints = Some(vec!["n1".into()]);
        let mut e2 = zoned("10.0.0.2", &["a"]);
        e2.node_hints = Some(vec!["n2".into()]);
        let e3 = zoned("10.0.0.3", &["b"]);
        let opts = SelectOptions {
            zone: Some("a".into()),
            node: Some("n1".into()),
            ..both()
        };
        // e3 has no node hints: node hints ignored, zone hints used.
        let s = select(
            [&slice("a", "http", 80, &[e1.clone(), e2.clone(), e3])],
            "http",
            &opts,
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(s.hints, HintsUsed::Zone);
        let s = select(
            [&slice("a", "http", 80, &[e1.clone(), e2.clone()])],
            "http",
            &opts,
        );
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert_eq!(s.hints, HintsUsed::Node);
        let other_node = SelectOptions {
            node: Some("n3".into()),
            ..opts
        };
        let s = select([&slice("a", "http", 80, &[e1, e2])], "http", &other_node);
        assert_eq!(s.hints, HintsUsed::Zone);
        assert_eq!(s.endpoints.len(), 2);
    }

    #[test]
    fn families() {
        let v4 = slice("web-v4", "http", 80, &[ep("10.0.0.1")]);
        let v6 = slice("web-v6", "http", 80, &[ep("fd00::1"), ep("fd00::2")]);
        let with = |families| SelectOptions { families, ..both() };
        assert_eq!(select([&v4, &v6], "http", &both()).endpoints.len(), 3);
        assert_eq!(
            addrs(&select(
                [&v4, &v6],
                "http",
                &with(FamilyPreference::Only(Family::IPv4))
            )),
            ["10.0.0.1:80"]
        );
        assert_eq!(
            addrs(&select(
                [&v4, &v6],
                "http",
                &with(FamilyPreference::Prefer(Family::IPv6))
            )),
            ["[fd00::1]:80", "[fd00::2]:80"]
        );
        // Preferred family has nothing: the other one.
        assert_eq!(
            addrs(&select(
                [&v4],
                "http",
                &with(FamilyPreference::Prefer(Family::IPv6))
            )),
            ["10.0.0.1:80"]
        );
        // Preferred family only terminating, the other ready: the other one.
        let v6t = slice("web-v6", "http", 80, &[terminating("fd00::1", true)]);
        assert_eq!(
            addrs(&select(
                [&v4, &v6t],
                "http",
                &with(FamilyPreference::Prefer(Family::IPv6))
            )),
            ["10.0.0.1:80"]
        );
        // A slice whose addresses are not of its type is skipped.
        let mut wrong = slice("web-x", "http", 80, &[ep("10.0.0.9")]);
        wrong.address_type = "IPv6".into();
        assert!(select([&wrong], "http", &both()).endpoints.is_empty());
        wrong.address_type = "FQDN".into();
        assert!(select([&wrong], "http", &both()).endpoints.is_empty());
    }

    #[test]
    fn ports_of_a_service() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "metrics", "port": 9090}
            ]}
        }))
        .unwrap();
        assert_eq!(
            resolve_port(&svc, Some(&Port::from("http"))),
            Ok("http".into())
        );
        assert_eq!(
            resolve_port(&svc, Some(&Port::Number(80))),
            Ok("http".into())
        );
        assert_eq!(
            resolve_port(&svc, Some(&Port::Number(8080))),
            Err(PortProblem::NotFound)
        );
        assert_eq!(resolve_port(&svc, None), Err(PortProblem::Ambiguous));
        let one: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        assert_eq!(resolve_port(&one, None), Ok(String::new()));
        assert_eq!(
            resolve_port(&one, Some(&Port::Number(80))),
            Ok(String::new())
        );
    }

    fn arb_ep() -> impl Strategy<Value = Ep> {
        (
            0u8..12,
            any::<bool>(),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["a", "b", "c"]),
                0..3,
            )),
        )
            .prop_map(|(host, v6, ready, serving, terminating, zones)| Ep {
                ip: if v6 {
                    format!("fd00::{host}").parse().unwrap()
                } else {
                    format!("10.0.0.{host}").parse().unwrap()
                },
                ready,
                serving,
                terminating,
                zone_hints: zones.map(|z| z.into_iter().map(String::from).collect()),
                node_hints: None,
                node: None,
                zone: None,
            })
    }

    fn arb_slices() -> impl Strategy<Value = Vec<EndpointSlice>> {
        prop::collection::vec(
            (
                prop::collection::vec(arb_ep(), 0..8),
                any::<bool>(),
                prop::sample::select(vec!["http", "other"]),
            ),
            0..5,
        )
        .prop_map(|slices| {
            slices
                .into_iter()
                .enumerate()
                .map(|(i, (eps, v6, port))| {
                    let eps: Vec<Ep> = eps.into_iter().filter(|e| e.ip.is_ipv6() == v6).collect();
                    let mut s = slice(&format!("s{i}"), port, 80, &eps);
                    s.address_type = if v6 { "IPv6" } else { "IPv4" }.into();
                    s
                })
                .collect()
        })
    }

    /// What kube-proxy would use, computed the slow, obvious way.
    fn model(slices: &[EndpointSlice], zone: Option<&str>) -> (Vec<SocketAddr>, bool) {
        // (address, ready, serving, terminating, zone hints)
        type Row = (SocketAddr, bool, bool, bool, Option<Vec<String>>);
        let mut all: Vec<Row> = vec![];
        let mut names: Vec<&EndpointSlice> = slices.iter().collect();
        names.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for s in names {
            let Some(port) = s
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("http"))
            else {
                continue;
            };
            for e in &s.endpoints {
                let addr =
                    SocketAddr::new(e.addresses[0].parse().unwrap(), port.port.unwrap() as u16);
                let c = e.conditions.clone().unwrap();
                let ready = c.ready.unwrap_or(true);
                let serving = c.serving.unwrap_or(ready);
                let term = c.terminating.unwrap_or(false);
                let hints = e
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.clone())
                    .map(|z| z.into_iter().map(|z| z.name).collect());
                match all.iter_mut().find(|x| x.0 == addr) {
                    Some(old) if !old.1 && ready => *old = (addr, ready, serving, term, hints),
                    Some(_) => {}
                    None => all.push((addr, ready, serving, term, hints)),
                }
            }
        }
        let ready: Vec<_> = all.iter().filter(|x| x.1).collect();
        let mut out: Vec<SocketAddr>;
        let mut fallback = false;
        if !ready.is_empty() {
            out = ready.iter().map(|x| x.0).collect();
            if let Some(z) = zone {
                let all_hinted = ready
                    .iter()
                    .all(|x| x.4.as_ref().is_some_and(|h| !h.is_empty()));
                let mine: Vec<SocketAddr> = ready
                    .iter()
                    .filter(|x| x.4.as_ref().is_some_and(|h| h.iter().any(|h| h == z)))
                    .map(|x| x.0)
                    .collect();
                if all_hinted && !mine.is_empty() {
                    out = mine;
                }
            }
        } else {
            out = all.iter().filter(|x| x.2 && x.3).map(|x| x.0).collect();
            fallback = !out.is_empty();
        }
        out.sort();
        (out, fallback)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn selection_is_kube_proxys(slices in arb_slices(), zone in prop::option::of(prop::sample::select(vec!["a", "b", "d"]))) {
            let opts = SelectOptions { zone: zone.map(String::from), ..both() };
            let s = select(&slices, "http", &opts);
            let got: Vec<SocketAddr> = s.endpoints.iter().map(|e| e.addr()).collect();
            let (want, fallback) = model(&slices, zone);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(s.terminating_fallback, fallback);
            // Sorted, no duplicates.
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            // The order the slices arrive in does not matter.
            let mut reversed = slices.clone();
            reversed.reverse();
            prop_assert_eq!(select(&reversed, "http", &opts), s);
        }

        #[test]
        fn family_preference_stays_within_families(slices in arb_slices(), v6 in any::<bool>()) {
            let f = if v6 { Family::IPv6 } else { Family::IPv4 };
            let only = select(&slices, "http", &SelectOptions { families: FamilyPreference::Only(f), ..both() });
            prop_assert!(only.endpoints.iter().all(|e| Family::of(&e.host()) == f));
            let prefer = select(&slices, "http", &SelectOptions { families: FamilyPreference::Prefer(f), ..both() });
            let fams: std::collections::HashSet<Family> = prefer.endpoints.iter().map(|e| Family::of(&e.host())).collect();
            prop_assert!(fams.len() <= 1);
            if !only.endpoints.is_empty() && !only.terminating_fallback {
                prop_assert_eq!(prefer, only);
            }
        }
    }
}
