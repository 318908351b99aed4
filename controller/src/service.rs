//! Reading a Kubernetes Service: is it ours, what does it ask for, what does
//! its status say.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_core::service::{self, ALLOCATED_FROM_POOL};
use ferrolb_core::{Family, FamilyPolicy, PortKey, Protocol, ServiceKey, ServiceSpec, Sharing};
use k8s_openapi::api::core::v1::Service;

pub fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether ferrolb handles this Service: `type: LoadBalancer` with no
/// `loadBalancerClass`, or with the class the controller was given.
pub fn is_handled(svc: &Service, class: Option<&str>) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.as_deref() == class
        && svc.metadata.deletion_timestamp.is_none()
}

/// The addresses in `status.loadBalancer.ingress` (entries with only a hostname are ignored).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|ip| ip.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pool annotation ferrolb wrote, if any.
pub fn pool_annotation(svc: &Service) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOCATED_FROM_POOL))
        .map(String::as_str)
}

/// What the allocator needs of the Service, or why its annotations are unusable.
pub fn spec_of(svc: &Service) -> Result<ServiceSpec, String> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let spec = svc.spec.clone().unwrap_or_default();
    let requests = service::read_requests(annotations, spec.load_balancer_ip.as_deref())?;
    let families = spec
        .ip_families
        .iter()
        .flatten()
        .map(|f| f.parse::<Family>())
        .collect::<Result<Vec<_>, _>>()?;
    let family_policy = match spec.ip_family_policy.as_deref() {
        None => FamilyPolicy::SingleStack,
        Some(p) => p.parse()?,
    };
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            Ok(PortKey {
                protocol: p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>()?,
                port: u16::try_from(p.port)
                    .map_err(|_| format!("port {} is out of range", p.port))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ServiceSpec {
        key: key_of(svc),
        families: if families.is_empty() {
            vec![Family::V4]
        } else {
            families
        },
        family_policy,
        requested_ips: requests.ips,
        pool: requests.pool,
        sharing: Sharing {
            key: requests.sharing_key,
            backend: service::backend_key(local, spec.selector.as_ref().unwrap_or(&empty)),
            ports,
        },
    })
}
