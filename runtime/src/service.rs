//! Reading a Kubernetes Service the same way in the controller and the speaker.

use std::net::IpAddr;

use ferrolb_core::ServiceKey;
use k8s_openapi::api::core::v1::Service;

pub fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether ferrolb handles this Service: `type: LoadBalancer` with no
/// `loadBalancerClass`, or with the class given by `--load-balancer-class`,
/// and not being deleted.
pub fn is_handled(svc: &Service, class: Option<&str>) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc.spec.as_ref().is_some_and(|s| {
            s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.as_deref() == class
        })
}

/// The addresses in `status.loadBalancer.ingress` (entries with only a hostname are ignored).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
