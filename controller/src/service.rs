//! Reading a Kubernetes Service: is it ours, what does it ask for, what does
//! its status say.

use std::collections::BTreeMap;

use ferrolb_core::service::{self, ALLOCATED_FROM_POOL};
use ferrolb_core::{Family, FamilyPolicy, PortKey, Protocol, ServiceSpec, Sharing};
pub use ferrolb_runtime::service::{is_handled, key_of, status_ips};
use k8s_openapi::api::core::v1::Service;

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
