//! ferrolb beside its peers in the same lab, with the same failures and the
//! same client, in one run (docs/peers.md): the real-control-plane lab
//! (kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy
//! v1.36.3, the node agent for kubelet), 3 nodes and a client, with each
//! system deployed from its own manifests in turn:
//!
//! - ferrolb from `manifests/`, its ConfigMap;
//! - MetalLB (`scripts/build-peers.sh`: the pinned release built from its Go
//!   module) from its `metallb-native.yaml`, layer 2, memberlist on, an
//!   IPAddressPool and an L2Advertisement;
//! - kube-vip when the Go module proxy serves it (the refusal is reported).
//!
//! Cases, each `FERROLB_TRIALS` (default 20) trials, each event at a random
//! phase (0-1 s after the client's prober started): the owner node's link cut
//! (client-seen outage; and how long two nodes answer ARP after it is plugged
//! back), the owner's agent SIGKILLed (until a new owner answers; whether two
//! nodes answer once the killed agent is back), the owner's agent Pod deleted
//! (SIGTERM; client-seen outage). At rest with 100 Services: agent CPU and
//! RSS per node, controller RSS, and the API requests per second of each
//! system (its ServiceAccounts' requests in the API server's audit log).
//!
//! `FERROLB_KUBE_BIN=$(scripts/build-kube.sh | tail -n1) FERROLB_PEERS_BIN=$(scripts/build-peers.sh | tail -n1) cargo bench -p ferrolb-tests --bench peers`
//! (root; `cargo build --release --bins` first). Prints a Markdown section for
//! BENCHMARKS.md on stdout; progress goes to stderr.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferrolb_core::ring::sim::Rng;
use ferrolb_tests::kube::{KUBE_BIN_ENV, KubeBinaries};
use ferrolb_tests::kubeproxy::ProxyMode;
use ferrolb_tests::lab::{Lab, LabOptions, RealOptions, System, eventually, stats};
use ferrolb_tests::procfs::{clock_tick, cpu_ticks, memory};

const PEERS_BIN_ENV: &str = "FERROLB_PEERS_BIN";
const LIMIT: Duration = Duration::from_secs(120);
/// How long a moved address is waited for before a trial counts as "did not move".
const MOVE_LIMIT: Duration = Duration::from_secs(30);
/// How long the cluster gets to settle on one answering node after a trial.
const SETTLE_LIMIT: Duration = Duration::from_secs(150);
const REST_SERVICES: usize = 100;
const REST_WINDOW: Duration = Duration::from_secs(60);
/// Random loss between the nodes, and for how long.
const LOSS_PERCENT: u32 = 5;
const LOSS_WINDOW: Duration = Duration::from_secs(60);
/// Services created at once for create-to-status.
const CREATE: usize = 1000;

const FERROLB_CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: config
  namespace: ferrolb-system
data:
  config: |
    address-pools:
    - name: lab
      protocol: layer2
      addresses:
      - 192.0.2.120-192.0.2.250
    - name: churn
      protocol: layer2
      auto-assign: false
      addresses:
      - 2001:db8::c:0/118
";

const METALLB_CONFIG: &str = "apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: lab
  namespace: metallb-system
spec:
  addresses:
  - 192.0.2.120-192.0.2.250
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: churn
  namespace: metallb-system
spec:
  autoAssign: false
  addresses:
  - 2001:db8::c:0/118
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: lab
  namespace: metallb-system
";

/// One system's deployment in the lab.
struct Peer {
    name: &'static str,
    version: String,
    system: System,
    config: &'static str,
    namespace: &'static str,
    /// The agent's and the controller's process names (`comm`).
    agent: &'static str,
    controller: &'static str,
    agent_label: &'static str,
    /// How long the owner must stay the same before a trial starts: longer
    /// than the time after which the system moves an address back on its
    /// own (ferrolb's 10 s hold-down after a node it removed returns), so
    /// that no trial starts in the middle of that move.
    quiet: Duration,
}

#[derive(Default)]
struct Figures {
    /// Link cut: when the client's ARP entry named another node (None: not
    /// in [`MOVE_LIMIT`]); client-seen outage; how long until one node
    /// answered ARP after the plug.
    cut_moved: Vec<Option<u64>>,
    cut_gap: Vec<u64>,
    cut_both: Vec<u64>,
    /// SIGKILL: until another node answers (None: the address never moved);
    /// client-seen outage; trials in which two nodes answered afterwards.
    kill_moved: Vec<Option<u64>>,
    kill_gap: Vec<u64>,
    kill_two: usize,
    /// Pod deleted (SIGTERM): client-seen outage.
    term_gap: Vec<u64>,
    /// Owner changes of the quickstart address seen by the client during
    /// [`LOSS_WINDOW`] at [`LOSS_PERCENT`] loss between the nodes.
    loss_changes: usize,
    /// Create-to-status of [`CREATE`] Services: until the API server had
    /// created them all, and until all had an address.
    create_done_ms: u64,
    create_all_ms: u64,
    /// At rest with 100 Services (CPU in % of a core, RSS in KiB).
    agent_cpu: f64,
    agent_rss: u64,
    controller_rss: u64,
    api_rps: f64,
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benches with harness=false too; only run under `cargo bench`.
        return Ok(());
    }
    let Some(kube) = KubeBinaries::from_env() else {
        bail!("{KUBE_BIN_ENV} is unset: run `scripts/build-kube.sh` and export its last line");
    };
    let kube = kube?;
    let Some(peers_bin) = std::env::var_os(PEERS_BIN_ENV).map(PathBuf::from) else {
        bail!("{PEERS_BIN_ENV} is unset: run `scripts/build-peers.sh` and export its last line");
    };
    let status = std::fs::read_to_string(peers_bin.with_file_name("status"))
        .with_context(|| format!("{}/../status (scripts/build-peers.sh)", peers_bin.display()))?;
    let trials: usize = std::env::var("FERROLB_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    Lab::check_binaries(&bin_dir)?;
    Lab::clean_stale();

    let metallb_version = status
        .lines()
        .find_map(|l| l.strip_prefix("built metallb "))
        .map(str::to_owned);
    let mut peers = vec![Peer {
        name: "ferrolb",
        version: env!("CARGO_PKG_VERSION").to_owned(),
        system: System::Ferrolb,
        config: FERROLB_CONFIG,
        namespace: "ferrolb-system",
        agent: "ferrolb-speaker",
        controller: "ferrolb-control",
        agent_label: "app.kubernetes.io/component=speaker",
        quiet: Duration::from_secs(12),
    }];
    if let Some(v) = &metallb_version {
        peers.push(Peer {
            name: "MetalLB",
            version: v.clone(),
            system: System::Metallb {
                bin: peers_bin.clone(),
            },
            config: METALLB_CONFIG,
            namespace: "metallb-system",
            agent: "speaker",
            controller: "controller",
            agent_label: "app=metallb,component=speaker",
            // It moves an address back when memberlist re-admits the node,
            // which the one-answerer wait already waits for.
            quiet: Duration::from_secs(3),
        });
    }
    if let Some(only) = std::env::var("FERROLB_PEERS_ONLY")
        .ok()
        .filter(|s| !s.is_empty())
    {
        peers.retain(|p| p.name.eq_ignore_ascii_case(&only));
    }

    let mut results = vec![];
    for peer in &peers {
        eprintln!("peers: {} {}", peer.name, peer.version);
        let f = measure(peer, &kube, &bin_dir, trials)
            .with_context(|| format!("measuring {}", peer.name))?;
        results.push(f);
    }
    print!("{}", report(&peers, &results, &status, trials)?);
    Ok(())
}

fn measure(
    peer: &Peer,
    kube: &KubeBinaries,
    bin_dir: &Path,
    trials: usize,
) -> anyhow::Result<Figures> {
    let config =
        std::env::temp_dir().join(format!("ferrolb-bench-peers-{}.yaml", std::process::id()));
    std::fs::write(&config, peer.config)?;
    let lab = Lab::up(&LabOptions {
        nodes: 3,
        bin_dir: bin_dir.to_path_buf(),
        kubeconfig: None,
        config: config.clone(),
        rbac_manifests: None,
        real: Some(RealOptions {
            kube: kube.clone(),
            proxy_mode: ProxyMode::Nftables,
            manifests: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests")),
            system: peer.system.clone(),
        }),
    });
    let _ = std::fs::remove_file(&config);
    let lab = lab?;
    let (ip, target) = lab.quickstart_web()?;
    // Local: a node forwards only to its own Pods, so what the client sees
    // is the load balancer's failover, not requests kube-proxy sends to the
    // Pod on the node that is gone (they would time out until its endpoint
    // is removed, tens of seconds later, whichever system runs).
    lab.kubectl(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ])?;
    eventually("20 answers in a row with Local", LIMIT, || {
        lab.answered(target, 20).then_some(())
    })?;
    let mut f = Figures::default();
    // Random phases for the events, seeded from the clock.
    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let mut phase = move || Duration::from_millis(rng.below(1000));

    for trial in 0..trials {
        let from = settled(&lab, &ip, target, peer.quiet)?;
        let prober = lab.start_prober(target)?;
        std::thread::sleep(phase());
        let event = Instant::now();
        lab.unplug(&from)?;
        let moved = moved_off(&lab, &ip, &from);
        prober.wait_answer_after(event, SETTLE_LIMIT)?;
        let (_, gap) = prober.stop();
        lab.plug(&from)?;
        let both = one_answerer(&lab, &ip)?;
        eprintln!(
            "{} link cut {trial}: off {from} after {:?}, gap {gap} ms, one answerer {both} ms after the plug",
            peer.name,
            moved.as_ref().map(|(_, t)| *t)
        );
        f.cut_moved.push(moved.map(|(_, t)| t));
        f.cut_gap.push(gap);
        f.cut_both.push(both);
    }

    for trial in 0..trials {
        let from = settled(&lab, &ip, target, peer.quiet)?;
        let prober = lab.start_prober(target)?;
        std::thread::sleep(phase());
        let ns = &lab.node(&from).context("owner node")?.ns;
        let pids = lab.pids_in(ns, peer.agent);
        let pid = pids
            .first()
            .with_context(|| format!("no {} on {from}", peer.agent))?;
        let event = Instant::now();
        ferrolb_tests::lab::run("kill", &["-KILL", &pid.to_string()])?;
        let moved = moved_off(&lab, &ip, &from);
        // The agent restarts the killed process (restartPolicy Always).
        eventually("the killed agent running again", LIMIT, || {
            lab.pids_in(ns, peer.agent)
                .first()
                .filter(|p| *p != pid)
                .copied()
        })?;
        prober.wait_answer_after(event, SETTLE_LIMIT)?;
        let (_, gap) = prober.stop();
        let answerers = lab.arp_answerers(&ip, 3);
        if answerers.len() > 1 {
            f.kill_two += 1;
        }
        eprintln!(
            "{} SIGKILL {trial}: off {from} after {:?}, gap {gap} ms, answerers {answerers:?}",
            peer.name,
            moved.as_ref().map(|(_, t)| *t)
        );
        f.kill_moved.push(moved.map(|(_, t)| t));
        f.kill_gap.push(gap);
    }

    for trial in 0..trials {
        let from = settled(&lab, &ip, target, peer.quiet)?;
        let pod = agent_pod(&lab, peer, &from)?;
        let prober = lab.start_prober(target)?;
        std::thread::sleep(phase());
        let event = Instant::now();
        lab.kubectl(&["-n", peer.namespace, "delete", "pod", &pod, "--wait=false"])?;
        let moved = moved_off(&lab, &ip, &from);
        eventually("the agent's new Pod ready", LIMIT, || {
            let p = agent_pod(&lab, peer, &from).ok()?;
            (p != pod && ready(&lab, peer.namespace, &p)).then_some(())
        })?;
        prober.wait_answer_after(event, SETTLE_LIMIT)?;
        let (_, gap) = prober.stop();
        eprintln!(
            "{} Pod deleted {trial}: off {from} after {:?}, gap {gap} ms",
            peer.name,
            moved.as_ref().map(|(_, t)| *t)
        );
        f.term_gap.push(gap);
    }

    f.loss_changes = under_loss(&lab, &ip)?;
    eprintln!(
        "{} {LOSS_PERCENT} % loss: {} owner changes",
        peer.name, f.loss_changes
    );
    (f.create_done_ms, f.create_all_ms) = create_to_status(&lab)?;
    eprintln!(
        "{} {CREATE} Services: created in {} ms, all assigned after {} ms",
        peer.name, f.create_done_ms, f.create_all_ms
    );
    at_rest(&lab, peer, &mut f)?;
    Ok(f)
}

/// Drops [`LOSS_PERCENT`] of what each node receives from the other nodes
/// (nftables in each node's namespace) for [`LOSS_WINDOW`], watching the
/// client's neighbour entry for `ip` every 20 ms: the owner changes it saw.
fn under_loss(lab: &Lab, ip: &str) -> anyhow::Result<usize> {
    let peers: Vec<String> = lab.nodes.iter().map(|n| n.ip4.to_string()).collect();
    let set = peers.join(", ");
    for n in &lab.nodes {
        lab.nft(&n.ns, "add table inet flbloss")?;
        lab.nft(
            &n.ns,
            "add chain inet flbloss input { type filter hook input priority -300 ; }",
        )?;
        lab.nft(
            &n.ns,
            &format!(
                "add rule inet flbloss input ip saddr {{ {set} }} numgen random mod 100 < {LOSS_PERCENT} drop"
            ),
        )?;
    }
    let mut owner = lab.owner(ip);
    let mut changes = 0;
    let start = Instant::now();
    while start.elapsed() < LOSS_WINDOW {
        let now = lab.owner(ip);
        if now.is_some() && now != owner {
            if owner.is_some() {
                changes += 1;
            }
            owner = now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in &lab.nodes {
        lab.nft(&n.ns, "delete table inet flbloss")?;
    }
    Ok(changes)
}

/// Creates [`CREATE`] single-stack IPv6 Services from the `churn` pool in
/// one request list and waits until every one has an address: how long
/// creating them took and until all had an address (ms). Deletes them
/// afterwards.
fn create_to_status(lab: &Lab) -> anyhow::Result<(u64, u64)> {
    let items: Vec<serde_json::Value> = (0..CREATE)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("c2s-{i}"), "namespace": "default",
                             "labels": {"bench": "c2s"},
                             "annotations": {"metallb.universe.tf/address-pool": "churn"}},
                "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                         "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]}
            })
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let file = lab.dir.join("c2s.json");
    std::fs::write(&file, list.to_string())?;
    let start = Instant::now();
    lab.kubectl(&["create", "-f", &file.to_string_lossy()])?;
    let created = start.elapsed().as_millis() as u64;
    eventually(
        &format!("{CREATE} Services with an address"),
        Duration::from_secs(600),
        || {
            let out = lab
                .kubectl(&[
                    "get",
                    "services",
                    "-l",
                    "bench=c2s",
                    "-o",
                    "jsonpath={range .items[*]}{.status.loadBalancer.ingress[0].ip}{\"\\n\"}{end}",
                ])
                .ok()?;
            (out.lines().filter(|l| !l.is_empty()).count() >= CREATE).then_some(())
        },
    )?;
    let took = start.elapsed().as_millis() as u64;
    lab.kubectl(&["delete", "services", "-l", "bench=c2s", "--wait=false"])?;
    eventually("the Services deleted", Duration::from_secs(300), || {
        let out = lab
            .kubectl(&["get", "services", "-l", "bench=c2s", "-o", "name"])
            .ok()?;
        out.trim().is_empty().then_some(())
    })?;
    Ok((created, took))
}

/// The owner once one node answers ARP and the client is served.
fn settled(lab: &Lab, ip: &str, target: SocketAddr, quiet: Duration) -> anyhow::Result<String> {
    one_answerer(lab, ip)?;
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut owner = None;
    let mut since = Instant::now();
    loop {
        let now = lab.answered(target, 3).then(|| lab.owner(ip)).flatten();
        if now.is_none() || now != owner {
            owner = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return owner.context("an owner");
        }
        if Instant::now() > deadline {
            bail!("{ip}: no owner stayed for {quiet:?} within {SETTLE_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node the client's neighbour entry names once it is not `from`, and
/// when (ms), polled every 10 ms; `None` if that did not happen in [`MOVE_LIMIT`].
fn moved_off(lab: &Lab, ip: &str, from: &str) -> Option<(String, u64)> {
    let start = Instant::now();
    while start.elapsed() < MOVE_LIMIT {
        if let Some(n) = lab.owner(ip).filter(|n| n != from) {
            return Some((n, start.elapsed().as_millis() as u64));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Waits until exactly one node answers ARP for `ip` (three probes); how
/// long that took (ms).
fn one_answerer(lab: &Lab, ip: &str) -> anyhow::Result<u64> {
    let start = Instant::now();
    eventually("one node answering ARP", SETTLE_LIMIT, || {
        (lab.arp_answerers(ip, 3).len() == 1).then_some(())
    })?;
    Ok(start.elapsed().as_millis() as u64)
}

fn agent_pod(lab: &Lab, peer: &Peer, node: &str) -> anyhow::Result<String> {
    let out = lab.kubectl(&[
        "-n",
        peer.namespace,
        "get",
        "pods",
        "-l",
        peer.agent_label,
        "--field-selector",
        &format!("spec.nodeName={node}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ])?;
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            w.next().is_none().then(|| name.to_owned())
        })
        .next()
        .with_context(|| format!("no agent Pod on {node}"))
}

fn ready(lab: &Lab, namespace: &str, pod: &str) -> bool {
    lab.kubectl(&[
        "-n",
        namespace,
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
    .is_ok_and(|s| s.trim() == "True")
}

/// At rest with [`REST_SERVICES`] Services: CPU and RSS of the agents, the
/// controller's RSS, and the system's API requests per second.
fn at_rest(lab: &Lab, peer: &Peer, f: &mut Figures) -> anyhow::Result<()> {
    for i in 1..REST_SERVICES {
        lab.kubectl(&[
            "expose",
            "deployment",
            "web",
            "--type=LoadBalancer",
            "--port=80",
            &format!("--name=rest-{i}"),
        ])?;
    }
    eventually(
        &format!("{REST_SERVICES} Services with an address"),
        Duration::from_secs(300),
        || {
            let out = lab
                .kubectl(&[
                    "get",
                    "services",
                    "-o",
                    "jsonpath={range .items[*]}{.status.loadBalancer.ingress[0].ip}{\"\\n\"}{end}",
                ])
                .ok()?;
            (out.lines().filter(|l| !l.is_empty()).count() >= REST_SERVICES).then_some(())
        },
    )?;
    // Let the writes of the assignment settle.
    std::thread::sleep(Duration::from_secs(10));
    let agents: Vec<u32> = lab
        .nodes
        .iter()
        .filter_map(|n| lab.pids_in(&n.ns, peer.agent).first().copied())
        .collect();
    if agents.len() != lab.nodes.len() {
        bail!("found {} of {} agents", agents.len(), lab.nodes.len());
    }
    let controllers = pids_named(peer.controller);
    let log = lab
        .control_plane
        .as_ref()
        .context("a real control plane")?
        .audit_log();
    let ticks: u64 = agents.iter().map(|p| cpu_ticks(*p)).sum();
    let requests = audit_requests(&log, peer.namespace);
    let start = Instant::now();
    std::thread::sleep(REST_WINDOW);
    let elapsed = start.elapsed().as_secs_f64();
    let ticks = agents.iter().map(|p| cpu_ticks(*p)).sum::<u64>() - ticks;
    f.api_rps = (audit_requests(&log, peer.namespace) - requests) as f64 / elapsed;
    f.agent_cpu = ticks as f64 / clock_tick() / elapsed / agents.len() as f64 * 100.0;
    f.agent_rss = agents.iter().map(|p| memory(*p).0).max().unwrap_or(0);
    f.controller_rss = controllers.iter().map(|p| memory(*p).0).max().unwrap_or(0);
    eprintln!(
        "{} at rest: agent CPU {:.2} %, agent RSS {} KiB, controller RSS {} KiB, {:.2} API requests/s",
        peer.name, f.agent_cpu, f.agent_rss, f.controller_rss, f.api_rps
    );
    Ok(())
}

/// The processes named `comm` (the controller runs in a Pod namespace of
/// its own, so it is found through `/proc`).
fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (c.trim_end() == comm).then_some(pid)
        })
        .collect()
}

/// Requests the ServiceAccounts of `namespace` completed so far.
fn audit_requests(log: &Path, namespace: &str) -> usize {
    let user = format!("\"username\":\"system:serviceaccount:{namespace}:");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&user) && l.contains("\"stage\":\"ResponseComplete\""))
        .count()
}

fn ratio(other: f64, ours: f64) -> String {
    if ours <= 0.0 {
        return "-".into();
    }
    format!("{:.1}×", other / ours)
}

fn report(
    peers: &[Peer],
    results: &[Figures],
    status: &str,
    trials: usize,
) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "## Peers in the same lab (real control plane)")?;
    writeln!(out)?;
    writeln!(
        out,
        "`FERROLB_KUBE_BIN=$(scripts/build-kube.sh | tail -n1) FERROLB_PEERS_BIN=$(scripts/build-peers.sh | tail -n1) cargo bench -p ferrolb-tests --bench peers`:"
    )?;
    writeln!(
        out,
        "each system deployed from its own manifests with defaults, one at a time, on the same real-control-plane lab (kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy v1.36.3 in nftables mode; 3 nodes; the node agent runs the Pods' containers as processes, docs/peers.md), the same client (an HTTP request to the Service every 10 ms; an outage is the longest time between two answers) and the same pool. {trials} trials per failure, each at a random phase. Ratios are the peer's figure ÷ ferrolb's."
    )?;
    writeln!(out)?;
    write!(out, "| | ")?;
    for p in peers {
        write!(out, "{} {} | ", p.name, p.version)?;
    }
    for p in peers.iter().skip(1) {
        write!(out, "{} ÷ ferrolb | ", p.name)?;
    }
    writeln!(out)?;
    writeln!(out, "|---|{}", "---|".repeat(peers.len() * 2 - 1))?;
    type Row<'a> = (&'a str, Box<dyn Fn(&Figures) -> (String, f64)>);
    let ms = |v: &[u64], q: usize| {
        let s = stats(v);
        let x = [s.0, s.1, s.2][q];
        (format!("{x} ms"), x as f64)
    };
    let moved = |v: &[Option<u64>], q: usize| {
        let m: Vec<u64> = v.iter().flatten().copied().collect();
        let not = v.len() - m.len();
        let x = [stats(&m).0, stats(&m).1][q];
        let tail = if not > 0 {
            format!(" ({not} never)")
        } else {
            String::new()
        };
        (format!("{x} ms{tail}"), x as f64)
    };
    let rows: Vec<Row> = vec![
        (
            "owner's link cut: the client's ARP entry names the new owner, p50",
            Box::new(move |f: &Figures| moved(&f.cut_moved, 0)),
        ),
        (
            "owner's link cut: new owner, p99",
            Box::new(move |f: &Figures| moved(&f.cut_moved, 1)),
        ),
        (
            "owner's link cut: client-seen outage p50",
            Box::new(move |f: &Figures| ms(&f.cut_gap, 0)),
        ),
        (
            "owner's link cut: outage p99",
            Box::new(move |f: &Figures| ms(&f.cut_gap, 1)),
        ),
        (
            "owner's link cut: outage max",
            Box::new(move |f: &Figures| ms(&f.cut_gap, 2)),
        ),
        (
            "link back: until one node answers ARP (p50)",
            Box::new(move |f: &Figures| ms(&f.cut_both, 0)),
        ),
        (
            "owner's agent SIGKILL: another node answers, p50 (trials in which it did)",
            Box::new(|f: &Figures| {
                let m: Vec<u64> = f.kill_moved.iter().flatten().copied().collect();
                let of = format!("{} of {}", m.len(), f.kill_moved.len());
                if m.is_empty() {
                    (format!("never ({of})"), 0.0)
                } else {
                    let p50 = stats(&m).0;
                    (format!("{p50} ms ({of})"), p50 as f64)
                }
            }),
        ),
        (
            "owner's agent SIGKILL: client-seen outage p99",
            Box::new(move |f: &Figures| ms(&f.kill_gap, 1)),
        ),
        (
            "owner's agent SIGKILL: trials with two nodes answering after the restart",
            Box::new(|f: &Figures| {
                (
                    format!("{} of {}", f.kill_two, f.kill_gap.len()),
                    f.kill_two as f64,
                )
            }),
        ),
        (
            "owner's agent Pod deleted (SIGTERM): outage p50",
            Box::new(move |f: &Figures| ms(&f.term_gap, 0)),
        ),
        (
            "owner's agent Pod deleted (SIGTERM): outage p99",
            Box::new(move |f: &Figures| ms(&f.term_gap, 1)),
        ),
        (
            "60 s at 5 % loss between nodes: owner changes",
            Box::new(|f: &Figures| (f.loss_changes.to_string(), f.loss_changes as f64)),
        ),
        (
            "create-to-status, 1,000 Services in one `kubectl create`: all assigned, after the create returned (the create took)",
            Box::new(|f: &Figures| {
                let after = f.create_all_ms.saturating_sub(f.create_done_ms) as f64 / 1000.0;
                let c = f.create_done_ms as f64 / 1000.0;
                (format!("{after:.1} s ({c:.1} s)"), after)
            }),
        ),
        (
            "at rest, 100 Services: agent CPU per node",
            Box::new(|f: &Figures| (format!("{:.2} %", f.agent_cpu), f.agent_cpu)),
        ),
        (
            "at rest: agent RSS (largest)",
            Box::new(|f: &Figures| {
                let m = f.agent_rss as f64 / 1024.0;
                (format!("{m:.1} MiB"), m)
            }),
        ),
        (
            "at rest: controller RSS",
            Box::new(|f: &Figures| {
                let m = f.controller_rss as f64 / 1024.0;
                (format!("{m:.1} MiB"), m)
            }),
        ),
        (
            "at rest: API requests/s (all its ServiceAccounts)",
            Box::new(|f: &Figures| (format!("{:.2}", f.api_rps), f.api_rps)),
        ),
    ];
    for (what, cell) in &rows {
        write!(out, "| {what} | ")?;
        let cells: Vec<(String, f64)> = results.iter().map(cell).collect();
        for (text, _) in &cells {
            write!(out, "{text} | ")?;
        }
        for (_, v) in cells.iter().skip(1) {
            write!(out, "{} | ", ratio(*v, cells[0].1))?;
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "What `scripts/build-peers.sh` built or was refused (`status` beside its bin directory):"
    )?;
    writeln!(out)?;
    for l in status.lines() {
        writeln!(out, "- {l}")?;
    }
    Ok(out)
}
