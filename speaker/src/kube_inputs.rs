//! Kubernetes objects (Nodes, Services, EndpointSlices, speaker Pods) in,
//! `ferrolb_core::election` inputs and membership candidates out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_core::ServiceKey;
use ferrolb_core::election::{Endpoint, NodeInfo, ServiceInfo, TO_BE_DELETED_TAINT, TrafficPolicy};
pub use ferrolb_runtime::service::{ServiceClasses, is_handled, key_of, status_ips};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub fn node_info(node: &Node) -> NodeInfo {
    let network_unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
        });
    let to_be_deleted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        network_unavailable,
        leaving: node.metadata.deletion_timestamp.is_some() || to_be_deleted,
        // From the speaker Pods (`servicehealth::withdrawn_by_node`).
        withdrawn: Default::default(),
    }
}

/// Every address in the Nodes' `status.addresses`: never announced.
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeSet<IpAddr> {
    nodes
        .into_iter()
        .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The endpoints of every slice, by the Service they belong to.
pub fn endpoints_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<ServiceKey, Vec<Endpoint>> {
    let mut out: BTreeMap<ServiceKey, Vec<Endpoint>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let key = ServiceKey::new(
            slice.metadata.namespace.clone().unwrap_or_default(),
            service.clone(),
        );
        let list = out.entry(key).or_default();
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            list.push(Endpoint {
                node: ep.node_name.clone(),
                ready: c.and_then(|c| c.ready),
                serving: c.and_then(|c| c.serving),
                terminating: c.and_then(|c| c.terminating),
            });
        }
    }
    out
}

/// The election's view of every handled Service holding addresses.
pub fn service_infos<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    endpoints: &BTreeMap<ServiceKey, Vec<Endpoint>>,
    classes: &ServiceClasses,
) -> Vec<ServiceInfo> {
    services
        .into_iter()
        .filter(|s| is_handled(s, classes))
        .filter_map(|s| {
            let addresses = status_ips(s);
            if addresses.is_empty() {
                return None;
            }
            let key = key_of(s);
            let local = s
                .spec
                .as_ref()
                .and_then(|s| s.external_traffic_policy.as_deref())
                == Some("Local");
            Some(ServiceInfo {
                endpoints: endpoints.get(&key).cloned().unwrap_or_default(),
                key,
                addresses,
                traffic_policy: if local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                },
                labels: s.metadata.labels.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// Peer speakers from their Pods: node name and Pod IP (the node's address,
/// speakers use the host network). Pods being deleted or without an IP yet
/// are left out.
pub fn peers<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<String, IpAddr> {
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some((node, ip))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn services_become_election_inputs_with_their_slices_endpoints() {
        let svc: Service = from(json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}, {"hostname": "x"}]}}
        }));
        let classed: Service = from(json!({
            "metadata": {"namespace": "ns", "name": "other"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "else"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.51"}]}}
        }));
        let slice: EndpointSlice = from(json!({
            "metadata": {"namespace": "ns", "name": "web-abc", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": false, "serving": true}}]
        }));
        let eps = endpoints_by_service([&slice]);
        let infos = service_infos([&svc, &classed], &eps, &ServiceClasses::default());
        assert_eq!(infos.len(), 1);
        assert_eq!(
            infos[0].addresses,
            vec!["192.0.2.50".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(infos[0].traffic_policy, TrafficPolicy::Local);
        assert_eq!(infos[0].serving_nodes(), BTreeSet::from(["n1"]));
    }

    #[test]
    fn nodes_and_peers() {
        let node: Node = from(json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "status": {
                "conditions": [{"type": "NetworkUnavailable", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "n1"}]
            }
        }));
        assert!(node_info(&node).network_unavailable);
        assert!(!node_info(&node).leaving);
        let tainted: Node = from(json!({
            "metadata": {"name": "n2"},
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]}
        }));
        assert!(node_info(&tainted).leaving);
        let deleted: Node = from(json!({
            "metadata": {"name": "n3", "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]}
        }));
        assert!(node_info(&deleted).leaving);
        assert_eq!(
            node_addresses([&node]),
            BTreeSet::from(["192.0.2.1".parse().unwrap()])
        );
        let pod: Pod = from(json!({
            "metadata": {"namespace": "ferrolb-system", "name": "speaker-x"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIP": "192.0.2.1"}
        }));
        let pending: Pod = from(json!({
            "metadata": {"namespace": "ferrolb-system", "name": "speaker-y"},
            "spec": {"nodeName": "n2", "containers": []}
        }));
        assert_eq!(
            peers([&pod, &pending]),
            BTreeMap::from([("n1".to_owned(), "192.0.2.1".parse().unwrap())])
        );
    }
}
