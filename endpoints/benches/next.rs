//! ferrolb-endpoints: `next()` throughput and change-to-`next()` latency.
//!
//! `cargo bench -p ferrolb-endpoints --bench next` (release build). Prints a Markdown section
//! for BENCHMARKS.md on stdout; progress goes to stderr.
//!
//! - throughput: one load balancer over a Service with 16 ready endpoints, synchronised
//!   once from an in-process test API server; `next()` (and `next_addr()`, and `next()`
//!   with power-of-two-choices) called in a loop from 1 thread, then from 8 threads at once;
//! - latency: with the background sync running, the Service's only EndpointSlice is
//!   changed 1,000 times in the test API server's store (each change a new endpoint
//!   address; the server commits it and wakes its watches at once); a thread calls
//!   `next_addr()` without pause and notes when it first returns the new address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrolb_endpoints::{Config, LoadBalancer, Policy};
use ferrolb_tests::TestApiServer;
use ferrolb_tests::apiserver::resources;
use ferrolb_tests::apiserver::store::Subresource;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const ENDPOINTS: usize = 16;
const CALLS_PER_THREAD: u64 = 20_000_000;
const CHANGES: usize = 1000;

fn slice_json(ips: &[String]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-a", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "nodeName": "node-1", "zone": "zone-a",
            "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

async fn setup(ips: &[String]) -> (TestApiServer, kube::Client) {
    let server = TestApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    Api::<Service>::default_namespaced(client.clone())
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let slice: EndpointSlice = serde_json::from_value(slice_json(ips)).unwrap();
    Api::<EndpointSlice>::default_namespaced(client.clone())
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    (server, client)
}

/// CPU seconds this thread has run (user and system), from /proc (clock-tick resolution).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / ferrolb_tests::procfs::clock_tick()
}

/// Calls per second over all threads, per thread, and per CPU second (the threads' own CPU
/// time, so other load on the machine does not count).
fn throughput(threads: usize, call: impl Fn() -> u16 + Sync) -> (f64, f64, f64) {
    let start_flag = AtomicBool::new(false);
    let sink = AtomicU64::new(0);
    let elapsed: Vec<(Duration, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    while !start_flag.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    let (t, cpu) = (Instant::now(), thread_cpu());
                    let mut acc = 0u64;
                    for _ in 0..CALLS_PER_THREAD {
                        acc = acc.wrapping_add(u64::from(call()));
                    }
                    sink.fetch_add(acc, Ordering::Relaxed);
                    (t.elapsed(), thread_cpu() - cpu)
                })
            })
            .collect();
        start_flag.store(true, Ordering::Release);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::hint::black_box(sink.load(Ordering::Relaxed));
    let wall = elapsed.iter().map(|e| e.0).max().unwrap().as_secs_f64();
    let cpu: f64 = elapsed.iter().map(|e| e.1).sum();
    let calls = (threads as u64 * CALLS_PER_THREAD) as f64;
    let total = calls / wall;
    (total, total / threads as f64, calls / cpu.max(1e-9))
}

fn millions(x: f64) -> String {
    format!("{:.1} M", x / 1e6)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    // `cargo test --all-targets` runs benches without `--bench` (in CI, in a
    // debug build): nothing to measure there.
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        println!("next: run with `cargo bench -p ferrolb-endpoints --bench next`");
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ips: Vec<String> = (1..=ENDPOINTS).map(|i| format!("10.0.0.{i}")).collect();
    let (server, client) = rt.block_on(setup(&ips));

    println!("## Client-side load balancing: ferrolb-endpoints");
    println!();
    println!(
        "Command: `cargo bench -p ferrolb-endpoints --bench next`. One `LoadBalancer` over a Service with {ENDPOINTS} ready endpoints (one EndpointSlice), synchronised once from the in-process test API server; each thread makes {} calls in a loop, and the rate is the calls of all threads over the slowest thread's time. `next()` returns an `Endpoint` (address, and node/zone shared through an `Arc`); `next_addr()` only the address. The read path takes no lock: an `arc-swap` load of the snapshot, one `fetch_add` on the shared round-robin counter, one relaxed load of the endpoint's ejection state. This machine has {cores} cores, so 8 threads share them; the last column divides the calls by the CPU time the calling threads got (from /proc, 10 ms resolution), which other load on the machine does not lower.",
        CALLS_PER_THREAD
    );
    println!();
    println!("| call | threads | calls per second (all threads) | per thread | per CPU second |");
    println!("|---|---|---|---|---|");
    let rr = LoadBalancer::new(client.clone(), Config::new("web").port("http"));
    let p2c = LoadBalancer::new(
        client.clone(),
        Config::new("web")
            .port("http")
            .policy(Policy::PowerOfTwoChoices),
    );
    rt.block_on(async {
        rr.sync().await.unwrap();
        p2c.sync().await.unwrap();
    });
    type Case<'a> = (&'a str, Box<dyn Fn() -> u16 + Sync + 'a>);
    let cases: Vec<Case> = vec![
        (
            "`next()`, round-robin",
            Box::new(|| rr.next().unwrap().port()),
        ),
        (
            "`next_addr()`, round-robin",
            Box::new(|| rr.next_addr().unwrap().port()),
        ),
        (
            "`next()`, power of two choices",
            Box::new(|| p2c.next().unwrap().port()),
        ),
    ];
    for (what, call) in &cases {
        for threads in [1, 8] {
            eprintln!("next: {what}, {threads} threads");
            let (total, per, per_cpu) = throughput(threads, call);
            println!(
                "| {what} | {threads} | {} | {} | {} |",
                millions(total),
                millions(per),
                millions(per_cpu)
            );
        }
    }

    // Latency: change at the API server to next() returning the new endpoint.
    let lb = LoadBalancer::new(client.clone(), Config::new("web").port("http"));
    rt.block_on(lb.sync()).unwrap();
    let _guard = rt.enter();
    lb.start_background_sync().unwrap();
    // Let the watches open before the first change.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.open_watches() < 2 {
        assert!(
            Instant::now() < deadline,
            "the background sync's watches never opened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = resources::find("discovery.k8s.io", "v1", "endpointslices").unwrap();
    let mut lat = Vec::with_capacity(CHANGES);
    let server = Arc::new(server);
    eprintln!("next: {CHANGES} changes");
    for i in 0..CHANGES {
        let ip = format!("10.{}.{}.{}", 1 + i / 62_500, (i / 250) % 250, i % 250 + 1);
        let want: SocketAddr = format!("{ip}:8080").parse().unwrap();
        let body = slice_json(std::slice::from_ref(&ip));
        let t0 = Instant::now();
        server.with_store(|s| {
            s.update(r, "default", "web-a", body, Subresource::Main)
                .unwrap();
        });
        let limit = t0 + Duration::from_secs(30);
        loop {
            if lb.next_addr().ok() == Some(want) {
                break;
            }
            assert!(Instant::now() < limit, "change {i} never reached next()");
            std::hint::spin_loop();
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!();
    println!(
        "Change to `next()`: the background sync running (watches of the Service and of its EndpointSlices), the only EndpointSlice replaced {CHANGES} times in the test API server's store (the change is committed and the server's watches woken at once, as after a write); the time is from the change to the first `next_addr()` that returns the new endpoint, called without pause from another thread. Server and watch share one tokio worker thread; the polling thread is the second core's. Percentiles are nearest-rank."
    );
    println!();
    println!("| changes | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {CHANGES} | {} | {} | {} |",
        us(percentile(&lat, 0.50)),
        us(percentile(&lat, 0.99)),
        us(lat[lat.len() - 1])
    );
    rt.block_on(lb.shutdown());
}
