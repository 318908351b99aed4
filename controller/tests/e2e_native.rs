//! Kubernetes-native behaviour (issue #13): the cleanup finalizer, several
//! load-balancer classes, and Services that kube-proxy skips. Runs against
//! the test API server, or a real cluster when FERROLB_E2E_KUBECONFIG is set.

mod common;

use common::*;
use serde_json::json;

const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
const ONE_ADDRESS: &str =
    "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10/32]\n";
const ONE_POOL: &str =
    "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10-192.0.2.12]\n";

#[tokio::test]
async fn the_finalizer_comes_with_the_address_and_a_type_change_removes_it() {
    let mut h = Harness::new(ONE_POOL).await;
    h.start_controller(&[]);
    // Another controller's finalizer stays whatever ferrolb does.
    h.create_service(
        "web",
        json!({"metadata": {"finalizers": ["example.com/keep"]}}),
    )
    .await;
    h.expect_ips("web", &["192.0.2.10"]).await;
    h.expect_finalizers("web", Some(&["example.com/keep", FINALIZER]))
        .await;
    h.patch_service("web", json!({"spec": {"type": "ClusterIP"}}))
        .await;
    h.expect_ips("web", &[]).await;
    h.expect_finalizers("web", Some(&["example.com/keep"]))
        .await;
    h.patch_service("web", json!({"metadata": {"finalizers": null}}))
        .await;
}

#[tokio::test]
async fn a_deleted_service_keeps_its_address_until_released_then_goes() {
    let mut h = Harness::new(ONE_ADDRESS).await;
    h.start_controller(&[]);
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    h.expect_finalizers("a", Some(&[FINALIZER])).await;
    h.create_service("b", json!({})).await;
    h.expect_event("b", "AllocationFailed", "no free IPv4 address")
        .await;
    h.delete_service("a").await;
    h.expect_finalizers("a", None).await;
    h.expect_ips("b", &["192.0.2.10"]).await;
}

#[tokio::test]
async fn a_service_deleted_while_the_controller_was_down_is_released_at_start_up() {
    let mut h = Harness::new(ONE_ADDRESS).await;
    let first = h.start_controller(&[]);
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    h.expect_finalizers("a", Some(&[FINALIZER])).await;
    h.kill_controller(first);
    h.delete_service("a").await;
    // The finalizer keeps it, and its address with it.
    let svc = h.services().get("a").await.unwrap();
    assert!(svc.metadata.deletion_timestamp.is_some());
    h.create_service("b", json!({})).await;
    h.start_controller(&[]);
    h.expect_finalizers("a", None).await;
    h.expect_ips("b", &["192.0.2.10"]).await;
}

#[tokio::test]
async fn remove_finalizers_leaves_no_service_undeletable_after_uninstalling() {
    let mut h = Harness::new(ONE_POOL).await;
    let first = h.start_controller(&[]);
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    h.expect_finalizers("a", Some(&[FINALIZER])).await;
    h.kill_controller(first);
    let (ok, out) = run_cli_async(
        h.cluster.kubeconfig_path(),
        &["remove-finalizers", "--namespace", &h.ns],
    )
    .await;
    assert!(ok, "remove-finalizers failed: {out}");
    assert!(out.contains(&format!("{}/a", h.ns)), "{out}");
    h.expect_finalizers("a", Some(&[])).await;
    h.delete_service("a").await;
    h.expect_finalizers("a", None).await;
}

#[tokio::test]
async fn several_classes_and_services_without_a_class() {
    let mut h = Harness::new(ONE_POOL).await;
    // The classes come from the environment, comma-separated.
    h.class = None;
    h.ignore_unclassed = false;
    let (a, b) = (
        format!("ferrolb.io/{}-a", h.ns),
        format!("ferrolb.io/{}-b", h.ns),
    );
    let first = h.start_controller_with_env(
        &["--ignore-services-without-class"],
        &[("FERROLB_LOAD_BALANCER_CLASS", &format!("{a},{b}"))],
    );
    h.create_service("none", json!({})).await;
    h.create_service(
        "other",
        json!({"spec": {"loadBalancerClass": "example.com/other"}}),
    )
    .await;
    h.create_service("ca", json!({"spec": {"loadBalancerClass": a}}))
        .await;
    h.create_service("cb", json!({"spec": {"loadBalancerClass": b}}))
        .await;
    h.expect_ips("ca", &["192.0.2.10"]).await;
    h.expect_ips("cb", &["192.0.2.11"]).await;
    assert!(h.ips("none").await.is_empty());
    assert!(h.events_about("none").await.is_empty());
    // Without the flag, Services without a class are handled too; the
    // classes from repeated flags.
    h.kill_controller(first);
    h.start_controller(&["--load-balancer-class", &a, "--load-balancer-class", &b]);
    h.expect_ips("none", &["192.0.2.12"]).await;
    h.expect_ips("ca", &["192.0.2.10"]).await;
    h.expect_ips("cb", &["192.0.2.11"]).await;
    assert!(h.ips("other").await.is_empty());
    assert!(h.events_about("other").await.is_empty());
    assert_eq!(h.finalizers("other").await, Some(vec![]));
    // Deleted here: against a real cluster no other test's controller
    // handles Services without a class, and this one is about to stop.
    h.delete_service("none").await;
    h.expect_finalizers("none", None).await;
}

#[tokio::test]
async fn a_service_kube_proxy_skips_is_assigned_with_a_warning_once() {
    let mut h = Harness::new(ONE_POOL).await;
    h.start_controller(&[]);
    h.create_service(
        "own-proxy",
        json!({"metadata": {"labels": {"service.kubernetes.io/service-proxy-name": "my-proxy"}}}),
    )
    .await;
    h.expect_ips("own-proxy", &["192.0.2.10"]).await;
    h.expect_event(
        "own-proxy",
        "NoKubeProxy",
        "will not carry traffic through kube-proxy",
    )
    .await;
    // A change to the Service is no reason to say it again.
    h.patch_service(
        "own-proxy",
        json!({"metadata": {"annotations": {"example.com/touch": "1"}}}),
    )
    .await;
    h.create_service("later", json!({})).await;
    h.expect_ips("later", &["192.0.2.11"]).await;
    // The controller has handled both changes by now.
    let n = h
        .events_about("own-proxy")
        .await
        .iter()
        .filter(|(r, _)| r == "NoKubeProxy")
        .count();
    assert_eq!(n, 1, "one NoKubeProxy Event");
}
