//! Controller benchmark (BENCHMARKS.md): create N LoadBalancer Services as fast
//! as the API accepts them (32 creates in flight) and measure, from a watch,
//! how long each waits for its status; plus the controller's peak RSS.
//!
//! Run: `cargo bench -p ferrolb-controller --bench create_to_status`
//! The API server is the in-process test API server on loopback; the controller
//! is the release binary in its own process. The Services are IPv6 single-stack
//! from 2001:db8::/112 (documentation range; addresses are data, nothing is sent),
//! without node ports (a cluster has only 2,768 of them).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "create_to_status: run with `cargo bench -p ferrolb-controller --bench create_to_status`"
        );
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("## Controller: create-to-status\n");
    println!(
        "Command: `cargo bench -p ferrolb-controller --bench create_to_status`. The test API \
         server runs in the bench process on 127.0.0.1; the controller is the release binary in \
         its own process (single-threaded runtime, 32 status writes in flight); 32 creates are in \
         flight at once, as fast as the API accepts them. Services are IPv6 single-stack from a \
         `2001:db8::/112` pool, without node ports (a cluster has only 2,768). Latency is from the \
         start of a Service's create request to the watch event showing its status; peak RSS is \
         the controller's `VmHWM`. Targets: 10,000 Services assigned in under 10 s with under 64 \
         MiB.\n"
    );
    println!(
        "| Services | all have status after | create-to-status p50 | p99 | max | controller peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    let mut verdict = String::new();
    for n in [1_000usize, 10_000] {
        let (all_done, rss_kib) = rt.block_on(run(n));
        if n == 10_000 {
            let ok = all_done < Duration::from_secs(10) && rss_kib < 64 * 1024;
            verdict = format!(
                "Targets {}: 10,000 Services had their status after {:.2} s with a peak of {:.1} MiB.",
                if ok { "met" } else { "**not met**" },
                all_done.as_secs_f64(),
                rss_kib as f64 / 1024.0
            );
        }
    }
    println!("\n{verdict}");
    println!(
        "\nThe latency under a burst is queueing behind it (each Service takes two writes, status \
         and pool annotation), not per-Service work: the engine spends microseconds per event \
         (`ferrolb_reconcile_duration_seconds`).\n"
    );
}

/// One run with `n` Services: prints its table row; returns when all had status, and the
/// controller's peak RSS in KiB.
async fn run(n: usize) -> (Duration, u64) {
    let server = ferrolb_tests::apiserver::TestApiServer::start()
        .await
        .unwrap();
    let client = server.client().unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    server.write_kubeconfig(kubeconfig.path()).unwrap();
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench");
    let pools =
        "address-pools:\n- name: bench\n  protocol: layer2\n  addresses: [\"2001:db8::/112\"]\n";
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "config"}, "data": {"config": pools}}))
            .unwrap(),
    )
    .await
    .unwrap();
    let mut controller = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
        .env("KUBECONFIG", kubeconfig.path())
        .args([
            "--config-namespace",
            "bench",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Let it take the lease and sync the (empty) cluster first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let svcs: Api<Service> = Api::namespaced(client.clone(), "bench");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn({
        let svcs = svcs.clone();
        async move {
            let mut events = watcher::watcher(svcs, watcher::Config::default()).boxed();
            while let Ok(Some(ev)) = events.try_next().await {
                if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = ev {
                    let has = s
                        .status
                        .as_ref()
                        .and_then(|st| st.load_balancer.as_ref())
                        .and_then(|lb| lb.ingress.as_ref())
                        .is_some_and(|i| !i.is_empty());
                    if has && tx.send((s.metadata.name.unwrap(), Instant::now())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let created: Vec<(String, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let name = format!("s{i:05}");
                let svc = json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6"], "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}});
                let at = Instant::now();
                svcs.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.unwrap();
                (name, at)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let created: HashMap<String, Instant> = created.into_iter().collect();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((name, at))) => {
                seen.entry(name).or_insert(at);
            }
            _ => panic!("only {} of {n} Services got a status", seen.len()),
        }
    }
    let all_done = seen.values().max().unwrap().duration_since(start);
    let mut lat: Vec<Duration> = seen
        .iter()
        .map(|(k, t)| t.duration_since(created[k]))
        .collect();
    lat.sort();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", controller.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let _ = controller.kill();
    let _ = controller.wait();
    watch.abort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    println!(
        "| {n} | {:.2} s | {} | {} | {} | {:.1} MiB |",
        all_done.as_secs_f64(),
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 99 / 100]),
        ms(*lat.last().unwrap()),
        rss as f64 / 1024.0
    );
    (all_done, rss)
}
