//! Restarts, leader changes and API faults never move or duplicate an address.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

const BIG_POOL: &str = "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24]\n";

async fn wait_all_assigned(h: &Harness, count: usize) -> BTreeMap<String, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = h.all_ips().await;
        let assigned = all.values().filter(|ips| ips.len() == 1).count();
        if all.len() == count && assigned == count {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{assigned} of {} Services assigned (expected {count})",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leader(h: &Harness) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(h.client(), &h.ns);
    leases
        .get_opt("ferrolb-controller")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

#[tokio::test]
async fn restart_with_pending_services_moves_and_duplicates_nothing() {
    let mut h = Harness::new(BIG_POOL).await;
    let first = h.start_controller(&[]);
    for i in 0..200 {
        h.create_service(&format!("s{i:03}"), json!({})).await;
    }
    let before = wait_all_assigned(&h, 200).await;
    h.kill_controller(first);
    // 50 more while no controller runs, some of them listed before the old ones.
    for i in 0..50 {
        h.create_service(&format!("a{i:03}"), json!({})).await;
    }
    // The killed controller's lease must expire first (2 s in tests).
    h.start_controller(&[]);
    let after = wait_all_assigned(&h, 250).await;
    for (name, ips) in &before {
        assert_eq!(&after[name], ips, "{name} moved across the restart");
    }
    assert_unique(&after);
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leader_dies_mid_churn() {
    let mut h = Harness::new(BIG_POOL).await;
    let a = h.start_controller(&[]);
    let b = h.start_controller(&[]);
    let deadline = Instant::now() + DEADLINE;
    let first_leader = loop {
        if let Some(l) = leader(&h).await {
            break l;
        }
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (leader_idx, follower_idx) = if first_leader == "controller-0" {
        (a, b)
    } else {
        (b, a)
    };
    for i in 0..60 {
        h.create_service(&format!("s{i:03}"), json!({})).await;
        if i == 20 {
            h.kill_controller(leader_idx);
        }
        if i % 10 == 5 {
            h.delete_service(&format!("s{:03}", i - 5)).await;
        }
    }
    let all = wait_all_assigned(&h, 54).await;
    assert_unique(&all);
    assert!(
        h.controller_running(follower_idx),
        "the follower keeps running"
    );
    assert_ne!(
        leader(&h).await,
        Some(first_leader),
        "the follower holds the lease now"
    );
}

#[tokio::test]
async fn watch_drops_and_failing_requests_lose_nothing() {
    let mut h = Harness::new(BIG_POOL).await;
    if h.cluster.server().is_none() {
        eprintln!("fault injection needs the test API server; skipped against a real cluster");
        return;
    }
    // A longer lease: a leader must survive the injected failures, not hand over.
    h.start_controller(&["--lease-duration", "10s", "--lease-renew-interval", "200ms"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = h.cluster.server().unwrap().url();
    // 10 % of all API requests fail with 500 (kube-rs does not retry those by
    // itself, so the controller's own retries are exercised), and every 3 s all
    // watches drop. Through the admin endpoint, as a user would inject them.
    admin_post(&url, "fail-every?code=500&n=10").await;
    let faults = {
        let stop = stop.clone();
        let url = url.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(3)).await;
                admin_post(&url, "close-watches").await;
            }
        })
    };
    let started = Instant::now();
    let mut created = 0;
    while created < 500 {
        let name = format!("s{created:03}");
        // The test's own requests can hit an injected failure too: retry them.
        let ok = tokio::time::timeout(Duration::from_secs(5), h.try_create_service(&name)).await;
        if matches!(ok, Ok(true)) {
            created += 1;
        }
    }
    eprintln!("created 500 Services in {:?}", started.elapsed());
    let all = wait_all_assigned(&h, 500).await;
    eprintln!("all assigned after {:?}", started.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    faults.await.unwrap();
    admin_post(&url, "fail-every?n=0").await;
    let injected = h.cluster.server().unwrap().injected_failures();
    assert!(injected >= 50, "only {injected} failures were injected");
    assert_unique(&all);
}
