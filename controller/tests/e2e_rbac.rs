//! The controller runs as its service account under the RBAC rules of
//! `manifests/controller-rbac.yaml`, enforced by the test API server: no call is
//! denied, and every permission granted is used (least privilege).

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferrolb_tests::apiserver::rbac::Rbac;
use serde_json::json;

const USER: &str = "system:serviceaccount:ferrolb-system:ferrolb-controller";

fn manifest_policy() -> Rbac {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/controller-rbac.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    Rbac::from_documents(&docs).unwrap()
}

#[tokio::test]
async fn the_manifests_grant_exactly_what_the_controller_uses() {
    let mut h = Harness::in_namespace("ferrolb-system", "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10-192.0.2.11]\n").await;
    let Some(server) = h.cluster.server() else {
        eprintln!("RBAC enforcement needs the test API server; skipped against a real cluster");
        return;
    };
    let policy = server.enforce_rbac(manifest_policy());
    h.start_controller_with_env(&[], &[("KUBE_RS_DEBUG_IMPERSONATE_USER", USER)]);

    // Assign, fail, release: every kind of write the controller makes.
    let web = format!("{}-web", h.ns);
    h.create_namespace(&web).await;
    h.create_service_in(&web, "a", json!({})).await;
    h.expect_ips_in(&web, "a", &["192.0.2.10"]).await;
    h.create_service("b", json!({"spec": {"loadBalancerIP": "203.0.113.1"}}))
        .await;
    h.expect_event("b", "AllocationFailed", "not in any configured pool")
        .await;
    h.set_config("address-pools: [\n").await;
    h.expect_event("config", "InvalidConfig", "could not parse")
        .await;
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(h.client(), &web);
    api.patch(
        "a",
        &Default::default(),
        &kube::api::Patch::Merge(&json!({"spec": {"type": "ClusterIP"}})),
    )
    .await
    .unwrap();
    h.expect_ips_in(&web, "a", &[]).await;

    // The leader renews its lease (an update) within a renew interval or two.
    let deadline = Instant::now() + DEADLINE;
    while !policy.unused(USER).is_empty() {
        assert!(
            Instant::now() < deadline,
            "granted but never used: {:?}",
            policy.unused(USER)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        policy.denied(),
        Vec::<String>::new(),
        "calls the manifests do not allow"
    );
}
