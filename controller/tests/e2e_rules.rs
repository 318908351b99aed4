//! The controller against an API server: each rule of docs/architecture.md, sections 3 and 4
//! as its own test. Runs against the test API server, or a real cluster when
//! FERROLB_E2E_KUBECONFIG is set.

mod common;

use common::*;
use serde_json::json;

const ONE_POOL: &str =
    "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10-192.0.2.12]\n";

async fn started(pools: &str) -> Harness {
    let mut h = Harness::new(pools).await;
    h.start_controller(&[]);
    h
}

#[tokio::test]
async fn service_gets_the_lowest_free_address_with_event_and_pool_annotation() {
    let h = started(ONE_POOL).await;
    h.create_service("web", json!({})).await;
    h.expect_ips("web", &["192.0.2.10"]).await;
    let svc = h.services().get("web").await.unwrap();
    let ingress = &svc.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0];
    assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));
    assert_eq!(
        svc.metadata.annotations.unwrap()["ferrolb.io/ip-allocated-from-pool"],
        "default"
    );
    h.expect_event("web", "IPAllocated", "192.0.2.10 from pool \"default\"")
        .await;
}

#[tokio::test]
async fn requested_address_by_spec_and_by_each_annotation_prefix() {
    let h = started(ONE_POOL).await;
    h.create_service("spec", json!({"spec": {"loadBalancerIP": "192.0.2.12"}}))
        .await;
    h.expect_ips("spec", &["192.0.2.12"]).await;
    for (i, prefix) in ["ferrolb.io", "metallb.universe.tf", "metallb.io"]
        .iter()
        .enumerate()
    {
        let h = started(ONE_POOL).await;
        let ip = format!("192.0.2.1{i}");
        h.create_service(
            "ann",
            json!({"metadata": {"annotations": {format!("{prefix}/loadBalancerIPs"): ip}}}),
        )
        .await;
        h.expect_ips("ann", &[ip.as_str()]).await;
    }
}

#[tokio::test]
async fn requested_address_outside_every_pool_is_a_warning() {
    let h = started(ONE_POOL).await;
    h.create_service("lost", json!({"spec": {"loadBalancerIP": "203.0.113.50"}}))
        .await;
    h.expect_event(
        "lost",
        "AllocationFailed",
        "203.0.113.50 is not in any configured pool",
    )
    .await;
    assert!(h.ips("lost").await.is_empty());
}

#[tokio::test]
async fn pool_annotation_and_auto_assign_false() {
    let pools = "address-pools:\n- name: manual\n  protocol: layer2\n  auto-assign: false\n  addresses: [198.51.100.1/32]\n- name: auto\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n";
    let h = started(pools).await;
    h.create_service("auto", json!({})).await;
    h.expect_ips("auto", &["192.0.2.1"]).await;
    h.create_service(
        "asks",
        json!({"metadata": {"annotations": {"metallb.universe.tf/address-pool": "manual"}}}),
    )
    .await;
    h.expect_ips("asks", &["198.51.100.1"]).await;
    // The auto pool is exhausted and the manual one is not offered.
    h.create_service("third", json!({})).await;
    h.expect_event(
        "third",
        "AllocationFailed",
        "no free IPv4 address left in pool \"auto\"",
    )
    .await;
}

#[tokio::test]
async fn namespaces_restrict_pools() {
    let pools_for = |ns: &str| {
        format!(
            "address-pools:\n- name: team\n  protocol: layer2\n  namespaces: [{ns}]\n  addresses: [198.51.100.7/32]\n- name: rest\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n"
        )
    };
    let mut h = Harness::new("").await;
    let team = format!("{}-team", h.ns);
    h.create_namespace(&team).await;
    h.set_config(&pools_for(&team)).await;
    h.start_controller(&[]);
    h.create_service(
        "other",
        json!({"metadata": {"annotations": {"ferrolb.io/address-pool": "team"}}}),
    )
    .await;
    h.expect_event(
        "other",
        "AllocationFailed",
        "may not be used by Services in namespace",
    )
    .await;
    h.create_service_in(&team, "mine", json!({})).await;
    h.expect_ips_in(&team, "mine", &["198.51.100.7"]).await;
}

#[tokio::test]
async fn sharing_allowed_port_clash_and_local_selectors() {
    let h = started(ONE_POOL).await;
    let shared = |port: u16, extra: serde_json::Value| {
        let mut v = json!({
            "metadata": {"annotations": {"ferrolb.io/allow-shared-ip": "k", "ferrolb.io/loadBalancerIPs": "192.0.2.11"}},
            "spec": {"ports": [{"port": port, "protocol": "TCP"}]}
        });
        if let serde_json::Value::Object(m) = extra {
            for (k, val) in m {
                v["spec"][k] = val;
            }
        }
        v
    };
    h.create_service("http", shared(80, json!({}))).await;
    h.create_service("https", shared(443, json!({}))).await;
    h.expect_ips("http", &["192.0.2.11"]).await;
    h.expect_ips("https", &["192.0.2.11"]).await;
    h.create_service("clash", shared(80, json!({}))).await;
    h.expect_event("clash", "AllocationFailed", "both use port TCP/80")
        .await;
    h.create_service(
        "local",
        shared(8080, json!({"externalTrafficPolicy": "Local"})),
    )
    .await;
    h.expect_event("local", "AllocationFailed", "externalTrafficPolicy: Local")
        .await;
}

#[tokio::test]
async fn dual_stack_single_prefer_require() {
    let pools = "address-pools:\n- name: v4\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n- name: ds\n  protocol: layer2\n  addresses: [198.51.100.1/32, \"2001:db8::1/128\"]\n";
    let h = started(pools).await;
    h.create_service(
        "v6",
        json!({"spec": {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}}),
    )
    .await;
    h.expect_ips("v6", &["2001:db8::1"]).await;
    h.create_service(
        "require",
        json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}}),
    )
    .await;
    h.expect_event("require", "AllocationFailed", "IPv4 and IPv6")
        .await;
    h.create_service(
        "prefer",
        json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
    )
    .await;
    // No pool can give both any more: the primary family alone, from the first pool.
    h.expect_ips("prefer", &["192.0.2.1"]).await;
    h.delete_service("v6").await;
    // The freed IPv6 address lets the pending RequireDualStack Service in, IPv4 first.
    h.expect_ips("require", &["198.51.100.1", "2001:db8::1"])
        .await;
}

#[tokio::test]
async fn exhausted_pool_then_type_change_frees_an_address_for_the_pending_service() {
    let h = started(ONE_POOL).await;
    for name in ["a", "b", "c", "d"] {
        h.create_service(name, json!({})).await;
    }
    h.expect_ips("c", &["192.0.2.12"]).await;
    h.expect_event("d", "AllocationFailed", "no free IPv4 address")
        .await;
    h.patch_service("a", json!({"spec": {"type": "ClusterIP"}}))
        .await;
    h.expect_ips("a", &[]).await;
    h.expect_ips("d", &["192.0.2.10"]).await;
    // The pool annotation goes with the address (a second write, so poll).
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let a = h.services().get("a").await.unwrap();
        if !a
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ferrolb.io/ip-allocated-from-pool")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool annotation stays on a released Service"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn other_classes_are_never_touched() {
    let h = started(ONE_POOL).await;
    h.create_service(
        "foreign",
        json!({"spec": {"loadBalancerClass": "example.com/other"}}),
    )
    .await;
    h.create_service("mine", json!({})).await;
    h.expect_ips("mine", &["192.0.2.10"]).await;
    assert!(h.ips("foreign").await.is_empty());
    assert!(h.events_about("foreign").await.is_empty());
}

#[tokio::test]
async fn stale_config_is_refused_and_accepted_after_the_service_is_gone() {
    let h = started(ONE_POOL).await;
    h.create_service("a", json!({})).await;
    h.create_service("b", json!({})).await;
    h.expect_ips("b", &["192.0.2.11"]).await;
    h.set_config(
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10/32]\n",
    )
    .await;
    let msg = h.expect_event("config", "StaleConfig", "192.0.2.11").await;
    assert!(
        msg.contains(&format!("{}/b", h.ns)),
        "the Event names the holder: {msg}"
    );
    h.expect_ips("b", &["192.0.2.11"]).await;
    h.delete_service("b").await;
    // The Event of this change (the first load's Event also says "1 address pool").
    h.expect_event("config", "ConfigLoaded", "resized from 3 to 1 addresses")
        .await;
    // The new, smaller config is in force: nothing left for another Service.
    h.create_service("c", json!({})).await;
    h.expect_event("c", "AllocationFailed", "no free IPv4 address")
        .await;
}

#[tokio::test]
async fn invalid_config_keeps_the_old_one_and_says_why() {
    let h = started(ONE_POOL).await;
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    h.set_config(
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10/33]\n",
    )
    .await;
    h.expect_event("config", "InvalidConfig", "larger than 32")
        .await;
    h.create_service("b", json!({})).await;
    h.expect_ips("b", &["192.0.2.11"]).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
}

#[tokio::test]
async fn oversized_config_and_long_pool_name_are_refused_with_an_event() {
    let h = started(ONE_POOL).await;
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    // Refused unread, whatever it holds (issue #17: a config of megabytes
    // could run the controller and every speaker out of memory).
    h.set_config(&format!("{ONE_POOL}#{}\n", "x".repeat(300 * 1024)))
        .await;
    h.expect_event(
        "config",
        "InvalidConfig",
        "more than the 262144 bytes (256 KiB) ferrolb accepts",
    )
    .await;
    // A pool name is written as an annotation on each of its Services.
    h.set_config(&ONE_POOL.replace("name: default", &format!("name: {}", "d".repeat(64))))
        .await;
    h.expect_event("config", "InvalidConfig", "at most 63 are allowed")
        .await;
    h.create_service("b", json!({})).await;
    h.expect_ips("b", &["192.0.2.11"]).await;
}

#[tokio::test]
async fn deleted_configmap_releases_nothing() {
    let h = started(ONE_POOL).await;
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    h.delete_config().await;
    h.create_service("b", json!({})).await;
    // The last good config stays in force.
    h.expect_ips("b", &["192.0.2.11"]).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
}

#[tokio::test]
async fn changed_request_moves_the_service_or_keeps_it_with_a_warning() {
    let pools = "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.10-192.0.2.12]\n- name: other\n  protocol: layer2\n  addresses: [198.51.100.20/32]\n";
    let h = started(pools).await;
    h.create_service("a", json!({})).await;
    h.expect_ips("a", &["192.0.2.10"]).await;
    h.patch_service(
        "a",
        json!({"metadata": {"annotations": {"ferrolb.io/address-pool": "other"}}}),
    )
    .await;
    h.expect_ips("a", &["198.51.100.20"]).await;
    h.patch_service("a", json!({"metadata": {"annotations": {"ferrolb.io/address-pool": null, "ferrolb.io/loadBalancerIPs": "203.0.113.1"}}})).await;
    h.expect_event("a", "LoadBalancerFailed", "keeping 198.51.100.20")
        .await;
    h.expect_ips("a", &["198.51.100.20"]).await;
}
