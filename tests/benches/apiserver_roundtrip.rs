//! Create-and-watch-event round trips through the test API server.
//!
//! `cargo bench -p ferrolb-tests --bench apiserver_roundtrip` (release build). Prints:
//! - sequential: one client creates a Service, waits until its watch delivers the ADDED event
//!   for it, then creates the next: round trips per second and latency percentiles;
//! - pipelined: 32 creates in flight, one watch; events per second until the watch has them all.

use std::time::{Duration, Instant};

use ferrolb_tests::TestApiServer;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

fn service(name: String) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap()
}

async fn watch_from_now(
    api: &Api<Service>,
) -> futures::stream::BoxStream<'static, Result<WatchEvent<Service>, kube::Error>> {
    let rv = api
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.watch(&WatchParams::default().timeout(290), &rv)
        .await
        .unwrap()
        .boxed()
}

async fn next_added(
    watch: &mut futures::stream::BoxStream<'static, Result<WatchEvent<Service>, kube::Error>>,
) -> Service {
    loop {
        match watch.try_next().await.unwrap() {
            Some(WatchEvent::Added(s)) => return s,
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected watch event {other:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn sequential(n: usize) {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let mut watch = watch_from_now(&api).await;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let name = format!("seq-{i}");
        api.create(&PostParams::default(), &service(name.clone()))
            .await
            .unwrap();
        let s = next_added(&mut watch).await;
        assert_eq!(s.metadata.name.as_deref(), Some(name.as_str()));
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!(
        "| sequential: create, wait for its watch event, next | {n} | {:.0} | p50 {}, p99 {}, max {} |",
        n as f64 / total.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat[n - 1]),
    );
}

async fn pipelined(n: usize, in_flight: usize) {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let mut watch = watch_from_now(&api).await;
    let start = Instant::now();
    let watcher = tokio::spawn(async move {
        for _ in 0..n {
            next_added(&mut watch).await;
        }
        Instant::now()
    });
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &service(format!("pipe-{i}")))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
    let done = watcher.await.unwrap();
    let total = done - start;
    println!(
        "| pipelined: {in_flight} creates in flight, one watch | {n} | {:.0} (all {n} events in {:.2} s) | |",
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it (and in a
    // debug build): skip there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "apiserver_roundtrip: run with `cargo bench -p ferrolb-tests --bench apiserver_roundtrip`"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("## Test API server\n");
    println!(
        "Command: `cargo bench -p ferrolb-tests --bench apiserver_roundtrip`. Server and client \
         (kube-rs) share one tokio runtime with 2 worker threads, over HTTP on 127.0.0.1. A round \
         trip is: the client creates a Service (ClusterIP, one port: the server defaults it and \
         allocates a cluster IP), and a watch of Services on a second connection delivers the \
         ADDED event for it.\n"
    );
    println!("| mode | Services | round trips per second | latency |\n|---|---|---|---|");
    runtime.block_on(async {
        sequential(5_000).await;
        pipelined(20_000, 32).await;
    });
}
