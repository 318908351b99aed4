//! Scale: the server holds 20,000 Services and a watch of them keeps up with their creation.

use std::time::{Duration, Instant};

use ferrolb_tests::TestApiServer;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

const SERVICES: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_services_and_a_watch_that_keeps_up() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = api
        .watch(&WatchParams::default().timeout(290), &rv)
        .await
        .unwrap()
        .boxed();
    let watcher = tokio::spawn(async move {
        let mut seen = 0usize;
        let mut last_rv = 0u64;
        while seen < SERVICES {
            match watch.try_next().await.expect("the watch does not fail") {
                Some(WatchEvent::Added(s)) => {
                    let rv: u64 = s.metadata.resource_version.unwrap().parse().unwrap();
                    assert!(rv > last_rv, "events arrive in resourceVersion order");
                    last_rv = rv;
                    seen += 1;
                }
                Some(WatchEvent::Bookmark(_)) => {}
                Some(other) => panic!("unexpected watch event {other:?}"),
                None => panic!("the watch ended after {seen} events"),
            }
        }
        Instant::now()
    });

    let start = Instant::now();
    futures::stream::iter(0..SERVICES)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("svc-{i:05}")},
                    "spec": {"ports": [{"port": 80}]},
                }))
                .unwrap();
                api.create(&PostParams::default(), &svc).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = start.elapsed();
    let last_event = tokio::time::timeout(Duration::from_secs(300), watcher)
        .await
        .expect("the watch delivers every event")
        .unwrap();
    println!(
        "{SERVICES} Services created in {created:?}; the watch had them all {:?} after the last create",
        last_event.saturating_duration_since(start + created)
    );

    // Every Service got its own cluster IP, and the list pages through all of them.
    let mut ips = std::collections::HashSet::new();
    let mut lp = ListParams::default().limit(5000);
    loop {
        let page = api.list(&lp).await.unwrap();
        for s in &page.items {
            assert!(ips.insert(s.spec.as_ref().unwrap().cluster_ip.clone().unwrap()));
        }
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => lp = lp.continue_token(&t),
            _ => break,
        }
    }
    assert_eq!(ips.len(), SERVICES);
}
