//! Controller benchmark (BENCHMARKS.md): create N LoadBalancer Services as fast
//! as the API accepts them (32 creates in flight) and measure, from a watch,
//! how long each waits for its status; plus the controller's peak RSS.
//!
//! Run: `cargo bench -p ferrolb-controller --bench create_to_status`
//! The API server is the in-process test API server on loopback and, when
//! `FERROLB_KUBE_BIN` names the binaries of scripts/build-kube.sh, also a real
//! kube-apiserver v1.36.3 (with etcd) on loopback; there the same writes made
//! by a plain kube-rs client in the bench process (no controller) are the
//! floor the controller is compared with. The controller is the release
//! binary in its own process. The Services are IPv6 single-stack
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
        "Command: `cargo bench -p ferrolb-controller --bench create_to_status` (with \
         `FERROLB_KUBE_BIN` set, as scripts/bench.sh sets it, also on a real kube-apiserver \
         v1.36.3 with etcd on 127.0.0.1, beside the floor: a plain kube-rs client in the bench \
         process making the same two writes per Service, 32 in flight, with no allocation). The \
         test API server runs in the bench process on 127.0.0.1; the controller is the release \
         binary in its own process (single-threaded runtime, 32 status writes in flight); 32 \
         creates are in flight at once, as fast as the API accepts them. API requests per Service \
         are the real server's `apiserver_request_total` for services, creates included. Services are IPv6 single-stack from a \
         `2001:db8::/112` pool, without node ports (a cluster has only 2,768). Latency is from the \
         start of a Service's create request to the watch event showing its status; peak RSS is \
         the controller's `VmHWM`. Targets: 10,000 Services assigned in under 10 s with under 64 \
         MiB.\n"
    );
    println!(
        "| API server | writer | Services | all have status after | create-to-status p50 | p99 | max | controller peak RSS | API requests per Service |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut verdict = String::new();
    let real = ferrolb_tests::kube::KubeBinaries::from_env().map(|b| {
        let b = b.expect("FERROLB_KUBE_BIN names the binaries");
        ferrolb_tests::kube::ControlPlane::start(b, &std::env::temp_dir())
            .expect("a real control plane")
    });
    let mut ratios = Vec::new();
    for n in [1_000usize, 10_000] {
        let t = rt.block_on(run(n, Backend::Test, Writer::Controller));
        if n == 10_000 {
            let ok = t.all_done < Duration::from_secs(10) && t.rss_kib < 64 * 1024;
            verdict = format!(
                "Targets {}: 10,000 Services had their status after {:.2} s with a peak of {:.1} MiB (test API server).",
                if ok { "met" } else { "**not met**" },
                t.all_done.as_secs_f64(),
                t.rss_kib as f64 / 1024.0
            );
        }
        if let Some(cp) = &real {
            let c = rt.block_on(run(n, Backend::Real(cp), Writer::Controller));
            let f = rt.block_on(run(n, Backend::Real(cp), Writer::Floor));
            ratios.push((n, c.all_done.as_secs_f64() / f.all_done.as_secs_f64()));
        }
    }
    if real.is_none() {
        println!(
            "\n(FERROLB_KUBE_BIN was not set: no run on the real kube-apiserver; set it to the directory `scripts/build-kube.sh` prints.)"
        );
    }
    for (n, r) in &ratios {
        println!(
            "\nReal kube-apiserver, {n} Services: controller ÷ floor = **{r:.2}×** (time until all have status; the floor is a plain kube-rs client in the bench process making the same two writes per Service, 32 in flight, with no allocation, election or Events)."
        );
    }
    println!("\n{verdict}");
    println!(
        "\nThe latency under a burst is queueing behind it (each Service takes two writes, status \
         and pool annotation), not per-Service work: the engine spends microseconds per event \
         (`ferrolb_reconcile_duration_seconds`).\n"
    );
}

enum Backend<'a> {
    Test,
    Real(&'a ferrolb_tests::kube::ControlPlane),
}

#[derive(Clone, Copy, PartialEq)]
enum Writer {
    /// The ferrolb controller binary.
    Controller,
    /// A plain kube-rs client in this process making the same writes.
    Floor,
}

struct Outcome {
    all_done: Duration,
    rss_kib: u64,
}

static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Requests the API server has served for Services so far (real server: its
/// `apiserver_request_total` for services; test server: not counted).
async fn service_requests(client: &kube::Client, real: bool) -> Option<f64> {
    if !real {
        return None;
    }
    let req = http::Request::get("/metrics").body(Vec::new()).ok()?;
    let text = client.request_text(req).await.ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{") && l.contains("resource=\"services\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// One run with `n` Services: prints its table row; returns when all had
/// status, and the controller's peak RSS in KiB.
async fn run(n: usize, backend: Backend<'_>, writer: Writer) -> Outcome {
    let server;
    let kubeconfig_file;
    let (client, kubeconfig, api_name): (kube::Client, std::path::PathBuf, &str) = match backend {
        Backend::Test => {
            server = ferrolb_tests::apiserver::TestApiServer::start()
                .await
                .unwrap();
            kubeconfig_file = tempfile::NamedTempFile::new().unwrap();
            server.write_kubeconfig(kubeconfig_file.path()).unwrap();
            (
                server.client().unwrap(),
                kubeconfig_file.path().to_path_buf(),
                "test API server",
            )
        }
        Backend::Real(cp) => {
            let c = ferrolb_tests::TestCluster::from_kubeconfig(&cp.kubeconfig)
                .await
                .unwrap();
            (
                c.client.clone(),
                cp.kubeconfig.clone(),
                "kube-apiserver v1.36.3",
            )
        }
    };
    let real = matches!(backend, Backend::Real(_));
    let ns_name = format!(
        "bench-{}",
        RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns_name}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_name);
    let pools =
        "address-pools:\n- name: bench\n  protocol: layer2\n  addresses: [\"2001:db8::/112\"]\n";
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "config"}, "data": {"config": pools}}))
            .unwrap(),
    )
    .await
    .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns_name);
    // Each run has its own class, so a run on a shared API server sees only its Services.
    let class = format!("ferrolb.io/{ns_name}");
    let mut controller = (writer == Writer::Controller).then(|| {
        Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "--config-namespace",
                &ns_name,
                "--load-balancer-class",
                &class,
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    });
    let floor = (writer == Writer::Floor).then(|| tokio::spawn(floor_writer(svcs.clone())));
    // Let the controller take the lease and sync the (empty) namespace first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests_before = service_requests(&client, real).await;

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
            let class = class.clone();
            async move {
                let name = format!("s{i:05}");
                let svc = json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "loadBalancerClass": class, "ipFamilies": ["IPv6"], "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}});
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
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((name, at))) => {
                seen.entry(name).or_insert(at);
            }
            _ => panic!("only {} of {n} Services got a status", seen.len()),
        }
    }
    let all_done = seen.values().max().unwrap().duration_since(start);
    let requests_after = service_requests(&client, real).await;
    let mut lat: Vec<Duration> = seen
        .iter()
        .map(|(k, t)| t.duration_since(created[k]))
        .collect();
    lat.sort();
    let rss = controller.as_ref().map_or(0, |c| {
        std::fs::read_to_string(format!("/proc/{}/status", c.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    });
    if let Some(c) = controller.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    if let Some(f) = floor {
        f.abort();
    }
    watch.abort();
    // The next run starts clean (a real API server keeps what it stored).
    let _ = ns.delete(&ns_name, &Default::default()).await;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let per_service = match (requests_before, requests_after) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) / n as f64),
        _ => "-".to_owned(),
    };
    println!(
        "| {api_name} | {} | {n} | {:.2} s | {} | {} | {} | {} | {per_service} |",
        match writer {
            Writer::Controller => "ferrolb controller",
            Writer::Floor => "floor (kube-rs client)",
        },
        all_done.as_secs_f64(),
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 99 / 100]),
        ms(*lat.last().unwrap()),
        if writer == Writer::Controller {
            format!("{:.1} MiB", rss as f64 / 1024.0)
        } else {
            "-".to_owned()
        },
    );
    Outcome {
        all_done,
        rss_kib: rss,
    }
}

/// The floor: what the controller's writes cost without the controller. A
/// watch of the namespace's Services; for each new one, the same two merge
/// patches the controller makes (pool annotation, then status), 32 in
/// flight, addresses from a counter.
async fn floor_writer(svcs: Api<Service>) {
    use kube::api::{Patch, PatchParams};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let feed = tokio::spawn({
        let svcs = svcs.clone();
        async move {
            let mut events = watcher::watcher(svcs, watcher::Config::default()).boxed();
            let mut done = std::collections::HashSet::new();
            while let Ok(Some(ev)) = events.try_next().await {
                if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = ev {
                    let name = s.metadata.name.clone().unwrap();
                    if done.insert(name.clone()) {
                        let _ = tx.send((name, s.metadata.uid.clone().unwrap_or_default()));
                    }
                }
            }
        }
    });
    let mut next_ip: u32 = 1;
    let rx = tokio_stream_of(rx).map(move |(name, uid)| {
        let ip = format!("2001:db8::{:x}", next_ip);
        next_ip += 1;
        let svcs = svcs.clone();
        async move {
            let p = PatchParams::default();
            let _ = svcs
                .patch(
                    &name,
                    &p,
                    &Patch::Merge(json!({"metadata": {"uid": uid, "annotations": {"ferrolb.io/ip-allocated-from-pool": "bench"}}})),
                )
                .await;
            let _ = svcs
                .patch_status(
                    &name,
                    &p,
                    &Patch::Merge(json!({"metadata": {"uid": uid}, "status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}})),
                )
                .await;
        }
    });
    rx.buffer_unordered(32).for_each(|_| async {}).await;
    feed.abort();
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
