//! Fault injection: kube-runtime watchers recover from dropped watches, 410 Gone and restarts;
//! injected 500/429 and delays reach clients; the admin endpoint drives the same faults.

use std::time::{Duration, Instant};

use ferrolb_tests::{Contents, TestApiServer, TestCluster};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

/// A reflector over ConfigMaps, its store, and a count of watcher (re)starts.
fn reflect(
    api: Api<ConfigMap>,
) -> (
    reflector::Store<ConfigMap>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let (reader, writer) = reflector::store();
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = inits.clone();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().timeout(290)),
    )
    .inspect(move |ev| {
        if matches!(ev, Ok(watcher::Event::Init)) {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .default_backoff();
    let task = tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    });
    (reader, inits, task)
}

fn has(store: &reflector::Store<ConfigMap>, name: &str) -> bool {
    store
        .state()
        .iter()
        .any(|o| o.metadata.name.as_deref() == Some(name))
}

#[tokio::test]
async fn watcher_recovers_from_dropped_watches() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let (store, _, task) = reflect(api.clone());
    api.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    eventually("the reflector sees the first object", || {
        has(&store, "before")
    })
    .await;
    eventually("a watch is open", || server.open_watches() == 1).await;
    server.close_watches();
    api.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    eventually(
        "the reflector sees an object created after the watch was dropped",
        || has(&store, "after"),
    )
    .await;
    eventually("the watcher watches again", || server.open_watches() == 1).await;
    task.abort();
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let (store, inits, task) = reflect(api.clone());
    api.create(&PostParams::default(), &cm("one"))
        .await
        .unwrap();
    eventually("the reflector sees the first object", || has(&store, "one")).await;
    eventually("a watch is open", || server.open_watches() == 1).await;
    assert_eq!(inits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A change the watcher has not seen yet is compacted away at once: its watch gets a
    // 410 Expired error event and it must relist to see "two".
    server.with_store(|s| {
        let r = ferrolb_tests::apiserver::resources::find("", "v1", "configmaps").unwrap();
        s.create(r, "default", json!({"metadata": {"name": "two"}}))
            .unwrap();
        s.compact();
    });
    eventually("the watcher relists", || {
        inits.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    eventually("the relisted store has the compacted-away object", || {
        has(&store, "two")
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn watcher_survives_a_restart_that_keeps_contents_and_one_that_drops_them() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let (store, _, task) = reflect(api.clone());
    api.create(&PostParams::default(), &cm("kept"))
        .await
        .unwrap();
    eventually("the reflector sees the object", || has(&store, "kept")).await;

    server.stop().await;
    assert!(
        api.list(&ListParams::default()).await.is_err(),
        "a stopped server refuses connections"
    );
    server.restart(Contents::Keep).await.unwrap();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    api.create(&PostParams::default(), &cm("new"))
        .await
        .unwrap();
    eventually(
        "the reflector sees an object created after the restart",
        || has(&store, "new"),
    )
    .await;

    server.restart(Contents::Drop).await.unwrap();
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    eventually(
        "the reflector forgets dropped objects after relisting",
        || store.state().is_empty(),
    )
    .await;
    api.create(&PostParams::default(), &cm("fresh"))
        .await
        .unwrap();
    eventually("the reflector sees objects in the new contents", || {
        has(&store, "fresh")
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn injected_errors_reach_the_client_as_status() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    server.fail_next_requests(2, 500);
    for _ in 0..2 {
        match api.get("x").await {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"))
            }
            other => panic!("expected an injected 500, got {other:?}"),
        }
    }
    assert!(
        api.list(&ListParams::default()).await.is_ok(),
        "only the next N requests fail"
    );
    assert_eq!(server.injected_failures(), 2);
    // kube-rs retries 429 on its own (honouring Retry-After), so the caller sees success
    // while the server did answer 429.
    server.fail_next_requests(1, 429);
    api.list(&ListParams::default()).await.unwrap();
    assert_eq!(server.injected_failures(), 3);
}

#[tokio::test]
async fn every_nth_request_fails_until_turned_off() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    server.fail_every(4, 500);
    let mut failed = Vec::new();
    for _ in 0..12 {
        failed.push(api.list(&ListParams::default()).await.is_err());
    }
    let expected: Vec<bool> = (1..=12).map(|i| i % 4 == 0).collect();
    assert_eq!(failed, expected, "a steady one-in-four ratio");
    server.fail_every(0, 500);
    for _ in 0..8 {
        api.list(&ListParams::default()).await.unwrap();
    }
    assert_eq!(server.injected_failures(), 3);
}

#[tokio::test]
async fn response_delay_slows_answers() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    server.set_response_delay(Duration::from_millis(300));
    let t = Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "the answer waited for the delay"
    );
    server.set_response_delay(Duration::ZERO);
}

/// The admin endpoint, as a test in another process (or a person with curl) would use it.
#[tokio::test]
async fn admin_endpoint_injects_the_same_faults() {
    let server = TestApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let api = Api::<ConfigMap>::default_namespaced(client.clone());
    let admin = |path: &str| {
        let req = http::Request::post(path).body(Vec::new()).unwrap();
        let client = client.clone();
        async move { client.request_text(req).await }
    };
    admin("/admin/fail?code=500&count=1").await.unwrap();
    match api.get("x").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 500),
        other => panic!("expected an injected 500, got {other:?}"),
    }
    let (store, _, task) = reflect(api.clone());
    eventually("a watch is open", || server.open_watches() == 1).await;
    admin("/admin/close-watches").await.unwrap();
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    eventually(
        "the reflector sees the object after the watch closed",
        || has(&store, "a"),
    )
    .await;
    let state: serde_json::Value = serde_json::from_str(
        &client
            .request_text(http::Request::get("/admin/state").body(Vec::new()).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(state["objects"].as_u64().unwrap() >= 5);
    admin("/admin/restart?contents=drop&downMs=100")
        .await
        .unwrap();
    eventually(
        "the reflector empties after the contents are dropped",
        || store.state().is_empty(),
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn test_cluster_starts_a_server_without_a_kubeconfig() {
    // CI has no real cluster; with FERROLB_E2E_KUBECONFIG set this runs against that cluster.
    let cluster = TestCluster::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(cluster.client.clone());
    api.list(&ListParams::default()).await.unwrap();
    assert!(cluster.kubeconfig_path().exists());
    if std::env::var_os(ferrolb_tests::E2E_KUBECONFIG_ENV).is_none() {
        assert!(cluster.server().is_some());
        // The kubeconfig file leads to the same server.
        let other = TestCluster::from_kubeconfig(cluster.kubeconfig_path())
            .await
            .unwrap();
        assert!(other.server().is_none());
        Api::<ConfigMap>::default_namespaced(other.client.clone())
            .create(&PostParams::default(), &cm("via-kubeconfig"))
            .await
            .unwrap();
        api.get("via-kubeconfig").await.unwrap();
    }
}
