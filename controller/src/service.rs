//! Reading a Kubernetes Service: is it ours, what does it ask for, what does
//! its status say.

use std::collections::BTreeMap;

use ferrolb_core::selector::Labels;
use ferrolb_core::service::{self, ALLOCATED_FROM_POOL};
use ferrolb_core::{Family, FamilyPolicy, PortKey, Protocol, ServiceSpec, Sharing};
pub use ferrolb_runtime::service::{key_of, status_ips};
use k8s_openapi::api::core::v1::Service;

/// The finalizer ferrolb adds to the Services it gives an address, as the
/// cloud-provider library does: the Service stays until the address is released.
pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

/// The label that makes kube-proxy skip a Service.
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// The `spec.loadBalancerClass` values this controller handles: the same
/// rule as the speaker's (`runtime::service::ServiceClasses`).
pub use ferrolb_runtime::service::ServiceClasses as Classes;

/// The controller's questions about a Service's class, on top of the shared rule.
pub trait ClassesExt {
    fn handles(&self, svc: &Service) -> bool;
    fn held_by_finalizer(&self, svc: &Service) -> bool;
}

impl ClassesExt for Classes {
    /// Whether ferrolb handles this Service: `type: LoadBalancer`, a class of
    /// ours, and not being deleted.
    fn handles(&self, svc: &Service) -> bool {
        svc.metadata.deletion_timestamp.is_none() && is_load_balancer(svc) && self.matches(svc)
    }

    /// A Service of ours being deleted that still carries ferrolb's finalizer:
    /// its address stays held until the finalizer is removed.
    fn held_by_finalizer(&self, svc: &Service) -> bool {
        svc.metadata.deletion_timestamp.is_some()
            && has_finalizer(svc)
            && is_load_balancer(svc)
            && self.matches(svc)
    }
}

pub fn is_load_balancer(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"))
}

pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// The value of the `service.kubernetes.io/service-proxy-name` label, if any.
pub fn service_proxy_name(svc: &Service) -> Option<&str> {
    svc.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_PROXY_NAME))
        .map(String::as_str)
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
/// `namespace_labels`: the labels of its namespace, when watched.
pub fn spec_of(svc: &Service, namespace_labels: Option<Labels>) -> Result<ServiceSpec, String> {
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
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        // Known when the config source may select namespaces by label (the
        // MetalLB objects); else such a pool gives no new address to a
        // namespace it does not list.
        namespace_labels,
    })
}
