//! What the allocator needs to know of a Service, free of Kubernetes types,
//! and the annotations that carry a Service's requests (docs/architecture.md, section 4).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::addr::Family;
use crate::selector::Labels;

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl FromStr for FamilyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "SingleStack" => Ok(FamilyPolicy::SingleStack),
            "PreferDualStack" => Ok(FamilyPolicy::PreferDualStack),
            "RequireDualStack" => Ok(FamilyPolicy::RequireDualStack),
            other => Err(format!("unknown ipFamilyPolicy {other:?}")),
        }
    }
}

/// A port a Service exposes, as it counts for sharing an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortKey {
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TCP" | "" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("unknown protocol {other:?}")),
        }
    }
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        };
        write!(f, "{proto}/{}", self.port)
    }
}

/// How a Service may share its address: the sharing key, the backend key
/// (the pod selector when `externalTrafficPolicy: Local`) and its ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sharing {
    pub key: Option<String>,
    pub backend: Option<String>,
    pub ports: Vec<PortKey>,
}

/// Everything the allocator needs to decide a Service's addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    /// `spec.ipFamilies`, primary first (IPv4 alone when empty).
    pub families: Vec<Family>,
    pub family_policy: FamilyPolicy,
    /// Requested addresses (annotation or `spec.loadBalancerIP`), at most one per family.
    pub requested_ips: Vec<IpAddr>,
    /// Requested pool (annotation).
    pub pool: Option<String>,
    pub sharing: Sharing,
    /// The Service's labels, for pools' `serviceAllocation.serviceSelectors`.
    pub labels: Labels,
    /// The labels of the Service's namespace, for pools'
    /// `serviceAllocation.namespaceSelectors`; `None` when the caller does not
    /// know them: such a pool then gives the Service no new address unless
    /// it lists the namespace by name (an address already held is kept).
    pub namespace_labels: Option<Labels>,
}

impl ServiceSpec {
    /// A single-stack IPv4 Service with no requests, for tests and examples.
    pub fn simple(namespace: &str, name: &str) -> ServiceSpec {
        ServiceSpec {
            key: ServiceKey::new(namespace, name),
            families: vec![Family::V4],
            family_policy: FamilyPolicy::SingleStack,
            requested_ips: vec![],
            pool: None,
            sharing: Sharing::default(),
            labels: Labels::new(),
            namespace_labels: None,
        }
    }

    pub fn primary_family(&self) -> Family {
        self.families.first().copied().unwrap_or(Family::V4)
    }
}

/// The backend key of a Service: its pod selector in a canonical form when its
/// traffic policy is `Local` (pods must then be the same for sharers), else none.
pub fn backend_key(
    local_traffic_policy: bool,
    selector: &BTreeMap<String, String>,
) -> Option<String> {
    local_traffic_policy.then(|| {
        selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

// === annotations ===

/// Annotation prefixes that mean the same, ferrolb's first.
pub const ANNOTATION_PREFIXES: [&str; 3] = ["ferrolb.io/", "metallb.universe.tf/", "metallb.io/"];
pub const LOAD_BALANCER_IPS: &str = "loadBalancerIPs";
pub const ADDRESS_POOL: &str = "address-pool";
pub const ALLOW_SHARED_IP: &str = "allow-shared-ip";
/// Written by the controller: the pool the Service's addresses came from.
pub const ALLOCATED_FROM_POOL: &str = "ferrolb.io/ip-allocated-from-pool";

/// A Service's requests, read from its annotations and `spec.loadBalancerIP`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub ips: Vec<IpAddr>,
    pub pool: Option<String>,
    pub sharing_key: Option<String>,
}

/// Reads the ferrolb and MetalLB annotations. The same annotation under two
/// prefixes with different values is an error, not a guess.
pub fn read_requests(
    annotations: &BTreeMap<String, String>,
    spec_load_balancer_ip: Option<&str>,
) -> Result<Requests, String> {
    let ips_annotation = annotation(annotations, LOAD_BALANCER_IPS)?;
    let pool = annotation(annotations, ADDRESS_POOL)?.map(|(_, v)| v.trim().to_owned());
    let sharing_key = annotation(annotations, ALLOW_SHARED_IP)?
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let spec_ip = spec_load_balancer_ip
        .map(str::trim)
        .filter(|s| !s.is_empty());

    let ips = match (ips_annotation, spec_ip) {
        (Some((name, _)), Some(_)) => {
            return Err(format!(
                "both the annotation {name} and spec.loadBalancerIP are set; use only one"
            ));
        }
        (Some((name, list)), None) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for item in list.split(',') {
                let item = item.trim();
                let ip = IpAddr::from_str(item)
                    .map_err(|_| format!("annotation {name}: {item:?} is not an IP address"))?;
                if ips.iter().any(|o| Family::of(o) == Family::of(&ip)) {
                    return Err(format!(
                        "annotation {name}: at most one {} address may be requested",
                        Family::of(&ip)
                    ));
                }
                ips.push(ip);
            }
            ips
        }
        (None, Some(ip)) => vec![
            IpAddr::from_str(ip)
                .map_err(|_| format!("spec.loadBalancerIP {ip:?} is not an IP address"))?,
        ],
        (None, None) => vec![],
    };
    Ok(Requests {
        ips,
        pool: pool.filter(|p| !p.is_empty()),
        sharing_key,
    })
}

/// The value of an annotation under any prefix, with the full name it was found under.
fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<Option<(String, &'a str)>, String> {
    let mut found: Option<(String, &str)> = None;
    for prefix in ANNOTATION_PREFIXES {
        let full = format!("{prefix}{name}");
        if let Some(v) = annotations.get(&full) {
            match &found {
                Some((first, fv)) if fv.trim() != v.trim() => {
                    return Err(format!(
                        "annotations {first} ({fv:?}) and {full} ({v:?}) disagree; remove one or make them equal"
                    ));
                }
                Some(_) => {}
                None => found = Some((full, v.as_str())),
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_prefix_is_read() {
        for prefix in ANNOTATION_PREFIXES {
            let r = read_requests(
                &ann(&[
                    (
                        &format!("{prefix}loadBalancerIPs"),
                        "192.0.2.1, 2001:db8::1",
                    ),
                    (&format!("{prefix}address-pool"), "edge"),
                    (&format!("{prefix}allow-shared-ip"), "k"),
                ]),
                None,
            )
            .unwrap();
            assert_eq!(
                r.ips,
                [
                    "192.0.2.1".parse::<IpAddr>().unwrap(),
                    "2001:db8::1".parse().unwrap()
                ]
            );
            assert_eq!(r.pool.as_deref(), Some("edge"));
            assert_eq!(r.sharing_key.as_deref(), Some("k"));
        }
    }

    #[test]
    fn same_value_under_two_prefixes_is_fine_different_is_an_error() {
        let same = ann(&[
            ("ferrolb.io/address-pool", "a"),
            ("metallb.universe.tf/address-pool", "a"),
        ]);
        assert_eq!(
            read_requests(&same, None).unwrap().pool.as_deref(),
            Some("a")
        );
        let differ = ann(&[
            ("ferrolb.io/address-pool", "a"),
            ("metallb.io/address-pool", "b"),
        ]);
        let err = read_requests(&differ, None).unwrap_err();
        assert!(
            err.contains("ferrolb.io/address-pool") && err.contains("metallb.io/address-pool"),
            "{err}"
        );
    }

    #[test]
    fn spec_load_balancer_ip_is_a_request() {
        let r = read_requests(&ann(&[]), Some("192.0.2.9")).unwrap();
        assert_eq!(r.ips, ["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert!(read_requests(&ann(&[]), Some("")).unwrap().ips.is_empty());
    }

    #[test]
    fn bad_requests_are_refused() {
        let both = ann(&[("ferrolb.io/loadBalancerIPs", "192.0.2.1")]);
        assert!(
            read_requests(&both, Some("192.0.2.1"))
                .unwrap_err()
                .contains("only one")
        );
        let two_v4 = ann(&[("metallb.universe.tf/loadBalancerIPs", "192.0.2.1,192.0.2.2")]);
        assert!(
            read_requests(&two_v4, None)
                .unwrap_err()
                .contains("at most one IPv4")
        );
        let garbage = ann(&[("ferrolb.io/loadBalancerIPs", "192.0.2.1,")]);
        assert!(
            read_requests(&garbage, None)
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(read_requests(&ann(&[]), Some("nope")).is_err());
    }

    #[test]
    fn empty_sharing_key_means_no_sharing() {
        let r = read_requests(&ann(&[("ferrolb.io/allow-shared-ip", " ")]), None).unwrap();
        assert_eq!(r.sharing_key, None);
    }

    #[test]
    fn backend_key_only_for_local_policy() {
        let sel = ann(&[("app", "web"), ("tier", "front")]);
        assert_eq!(
            backend_key(true, &sel).as_deref(),
            Some("app=web,tier=front")
        );
        assert_eq!(backend_key(false, &sel), None);
    }
}
