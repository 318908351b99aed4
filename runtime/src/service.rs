//! Reading a Kubernetes Service the same way in the controller and the speaker.

use std::net::IpAddr;

use ferrolb_core::ServiceKey;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// The `spec.loadBalancerClass` values a ferrolb binary handles, from its
/// `--load-balancer-class` (repeatable, comma-separated) and
/// `--ignore-services-without-class` flags: Services without a class are
/// handled unless that flag is set, and those with one of the classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceClasses {
    pub names: std::collections::BTreeSet<String>,
    pub without_class: bool,
}

impl Default for ServiceClasses {
    /// Services without a class only.
    fn default() -> Self {
        ServiceClasses {
            names: Default::default(),
            without_class: true,
        }
    }
}

impl ServiceClasses {
    /// From the flags; refuses a set that would handle nothing.
    pub fn from_flags(names: &[String], ignore_without_class: bool) -> Result<Self, String> {
        let c = ServiceClasses {
            names: names
                .iter()
                .flat_map(|n| n.split(','))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
            without_class: !ignore_without_class,
        };
        if c.names.is_empty() && !c.without_class {
            return Err("--ignore-services-without-class without any --load-balancer-class would handle no Service".to_owned());
        }
        Ok(c)
    }

    /// Whether the Service's class (or its lack of one) is one of these.
    pub fn matches(&self, svc: &Service) -> bool {
        match svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
        {
            None => self.without_class,
            Some(c) => self.names.contains(c),
        }
    }
}

/// Whether ferrolb handles this Service: `type: LoadBalancer`, a class of
/// `classes`, and not being deleted.
pub fn is_handled(svc: &Service, classes: &ServiceClasses) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc
            .spec
            .as_ref()
            .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"))
        && classes.matches(svc)
}

/// The entries of `status.loadBalancer.ingress` that carry an address, with it
/// (entries with only a hostname are ignored).
pub fn status_ingress(svc: &Service) -> impl Iterator<Item = (IpAddr, &LoadBalancerIngress)> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i.ip.as_deref()?.parse().ok()?, i)))
}

/// The addresses in `status.loadBalancer.ingress`.
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    status_ingress(svc).map(|(ip, _)| ip).collect()
}

/// The Service's condition of type `kind` (`status.conditions`).
pub fn status_condition<'a>(svc: &'a Service, kind: &str) -> Option<&'a Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// The config document of the ConfigMap (its key `config`), or why it has none.
pub fn config_text(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Result<String, String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("config"))
        .cloned()
        .ok_or_else(|| "the ConfigMap has no key \"config\" under data".to_owned())
}

#[cfg(test)]
mod class_tests {
    use super::*;

    fn svc(class: Option<&str>) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": class}
        }))
        .unwrap()
    }

    #[test]
    fn classes_from_flags_handle_classless_unless_told_not_to() {
        let c = ServiceClasses::from_flags(&["a,b".into(), "c".into()], false).unwrap();
        assert!(is_handled(&svc(None), &c));
        for name in ["a", "b", "c"] {
            assert!(is_handled(&svc(Some(name)), &c), "{name}");
        }
        assert!(!is_handled(&svc(Some("other")), &c));
        let c = ServiceClasses::from_flags(&["a".into()], true).unwrap();
        assert!(!is_handled(&svc(None), &c));
        assert!(is_handled(&svc(Some("a")), &c));
        assert!(ServiceClasses::from_flags(&[], true).is_err());
        let d = ServiceClasses::default();
        assert!(is_handled(&svc(None), &d) && !is_handled(&svc(Some("a")), &d));
    }
}
