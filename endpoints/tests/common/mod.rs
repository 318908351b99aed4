//! What every end-to-end test of ferrolb-endpoints shares: a cluster (the real one named by
//! `FERROLB_E2E_KUBECONFIG`, otherwise an in-process test API server), a namespace of its
//! own, and helpers that write Services and EndpointSlices.
//!
//! The Services have no selector, so on a real cluster no controller manages their
//! EndpointSlices: the tests write them, as a controller would.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use ferrolb_tests::{TestApiServer, TestCluster};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Env {
    pub cluster: TestCluster,
    pub client: kube::Client,
    pub ns: String,
}

impl Env {
    /// A cluster and a fresh namespace named after the test.
    pub async fn start(test: &str) -> Env {
        let cluster = TestCluster::start().await.expect("a cluster");
        let client = cluster.client.clone();
        let ns = format!(
            "flbep-{}-{}",
            test.replace('_', "-"),
            std::process::id() % 100_000
        );
        let ns = ns[..ns.len().min(63)].trim_end_matches('-').to_owned();
        let namespaces = Api::<Namespace>::all(client.clone());
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
        eventually_async("the namespace to be free", || async {
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
                )
                .await
                .is_ok()
        })
        .await;
        Env {
            cluster,
            client,
            ns,
        }
    }

    pub fn server(&self) -> Option<&TestApiServer> {
        self.cluster.server()
    }

    /// A client whose default namespace is the test's.
    pub async fn client_defaulting_to_namespace(&self) -> kube::Client {
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(self.cluster.kubeconfig_path()).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        config.default_namespace = self.ns.clone();
        kube::Client::try_from(config).unwrap()
    }

    /// A Service without selector; `ports` are (name, port, targetPort).
    pub async fn service(&self, name: &str, ports: &[(&str, u16, u16)]) {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, t)| {
                let mut v = json!({"port": p, "targetPort": t, "protocol": "TCP"});
                if !n.is_empty() {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": ports}
        }))
        .unwrap();
        Api::<Service>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &svc)
            .await
            .expect("create Service");
    }

    pub async fn delete_service(&self, name: &str) {
        Api::<Service>::namespaced(self.client.clone(), &self.ns)
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete Service");
    }

    /// Creates or replaces the EndpointSlice `slice` of Service `service`: `endpoints` are
    /// JSON endpoint objects (see [`ready`] and friends), all of `port_name`/`port`.
    pub async fn slice(
        &self,
        service: &str,
        slice: &str,
        family: &str,
        port_name: &str,
        port: u16,
        endpoints: Vec<Value>,
    ) {
        let api = Api::<EndpointSlice>::namespaced(self.client.clone(), &self.ns);
        let mut obj: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": slice, "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "ferrolb-endpoints-tests",
            }},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        }))
        .unwrap();
        match api.get_opt(slice).await.expect("get EndpointSlice") {
            Some(old) => {
                obj.metadata.resource_version = old.metadata.resource_version;
                api.replace(slice, &PostParams::default(), &obj)
                    .await
                    .expect("replace EndpointSlice");
            }
            None => {
                api.create(&PostParams::default(), &obj)
                    .await
                    .expect("create EndpointSlice");
            }
        }
    }

    pub async fn delete_slice(&self, slice: &str) {
        Api::<EndpointSlice>::namespaced(self.client.clone(), &self.ns)
            .delete(slice, &DeleteParams::default())
            .await
            .expect("delete EndpointSlice");
    }

    /// Deletes the namespace (on a real cluster; the in-process server goes away anyway).
    pub async fn cleanup(self) {
        if self.server().is_none() {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&self.ns, &DeleteParams::default())
                .await;
        }
    }
}

/// A ready endpoint at `ip` on `node`.
pub fn ready(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": true, "serving": true, "terminating": false}})
}

/// A terminating endpoint, still serving or not.
pub fn terminating(ip: &str, node: &str, serving: bool) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": false, "serving": serving, "terminating": true}})
}

/// A ready endpoint with a zone and zone hints.
pub fn zoned(ip: &str, zone: &str, hints: &[&str]) -> Value {
    let for_zones: Vec<Value> = hints.iter().map(|z| json!({"name": z})).collect();
    json!({"addresses": [ip], "zone": zone,
           "conditions": {"ready": true, "serving": true, "terminating": false},
           "hints": {"forZones": for_zones}})
}

/// Polls `cond` until it holds; fails the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
