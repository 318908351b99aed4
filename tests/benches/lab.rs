//! Whole-system figures in the lab (`ferrolb_tests::lab`: test API server,
//! controller, three speakers, kube-proxy emulation, a client; release
//! binaries):
//!
//! - speaker CPU while the owner node forwards bulk traffic: `iperf3` from
//!   the client to a LoadBalancer address for 30 s, beside 30 s idle;
//! - controller and speaker memory with 1 and with 1,000 announced
//!   addresses, and with 1,000: membership packets per second, CPU at rest,
//!   ownership changes.
//!
//! `cargo build --release --bins && cargo bench -p ferrolb-tests --bench lab`
//! (root; iperf3 installed, see scripts/install-deps.sh). Prints a Markdown
//! section for BENCHMARKS.md on stdout; progress goes to stderr.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferrolb_tests::lab::{Host, Lab, LabOptions, eventually, metric};
use ferrolb_tests::procfs::{clock_tick, cpu_ticks, memory};
use serde_json::{Value, json};

const BULK: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(10);
/// Addresses announced in the scale part, the iperf3 Service's included.
const SCALE: usize = 1000;
const SCALE_V4: usize = 600;

const CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: config
  namespace: ferrolb-system
data:
  config: |
    address-pools:
    - name: bench
      protocol: layer2
      addresses:
      - 192.0.2.128/25
      - 198.51.100.0/24
      - 203.0.113.0/24
      - 2001:db8::1000/118
";

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benches with harness=false too; only run under `cargo bench`.
        return Ok(());
    }
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    Lab::check_binaries(&bin_dir)?;
    Lab::clean_stale();
    let config =
        std::env::temp_dir().join(format!("ferrolb-bench-lab-{}.yaml", std::process::id()));
    std::fs::write(&config, CONFIG)?;
    let mut lab = Lab::up(&LabOptions {
        nodes: 3,
        bin_dir,
        kubeconfig: None,
        config: config.clone(),
        rbac_manifests: None,
        real: None,
    })?;
    let _ = std::fs::remove_file(&config);
    eventually("every speaker ready", Duration::from_secs(60), || {
        lab.nodes
            .iter()
            .all(|n| lab.speaker_metrics(n).is_some())
            .then_some(())
    })?;

    let mut out = String::new();
    bulk_traffic(&mut lab, &mut out)?;
    scale(&lab, &mut out)?;
    print!("{out}");
    Ok(())
}

fn bulk_traffic(lab: &mut Lab, out: &mut String) -> anyhow::Result<()> {
    lab.create_service(
        "iperf",
        json!({"ports": [{"name": "iperf", "port": 5201, "targetPort": 5201, "protocol": "TCP"}]}),
    )?;
    let ip = eventually(
        "the iperf Service's address",
        Duration::from_secs(60),
        || lab.external_ips("iperf").into_iter().next(),
    )?;
    lab.forward_to(&ip, 5201, 5201)?;
    for n in lab.nodes.clone() {
        lab.spawn(
            &n.ns,
            &format!("iperf3-{}", n.name),
            &[],
            "iperf3",
            &["-s", "-B", &n.ip4.to_string(), "-p", "5201"],
        )?;
        eventually("iperf3 listening", Duration::from_secs(20), || {
            lab.exec_output(&n.ns, &["ss", "-ltn"])
                .contains(&format!("{}:5201", n.ip4))
                .then_some(())
        })?;
    }
    let owner = eventually("one speaker announcing", Duration::from_secs(60), || {
        let owners: Vec<usize> = (0..lab.nodes.len())
            .filter(|i| announced(lab, &lab.nodes[*i]) == 1.0)
            .collect();
        (owners.len() == 1).then(|| owners[0])
    })?;
    let pids: Vec<u32> = lab
        .nodes
        .iter()
        .map(|n| lab.pid(&format!("speaker-{}", n.name)).expect("speaker"))
        .collect();
    eprintln!(
        "bulk traffic: {}s idle, then {}s of iperf3 to {ip}",
        BULK.as_secs(),
        BULK.as_secs()
    );
    let ticks = |pids: &[u32]| pids.iter().map(|p| cpu_ticks(*p)).collect::<Vec<_>>();

    let t0 = ticks(&pids);
    std::thread::sleep(BULK);
    let t1 = ticks(&pids);
    let report = lab.exec(
        &lab.client.ns,
        &[
            "iperf3",
            "-c",
            &ip,
            "-p",
            "5201",
            "-t",
            &BULK.as_secs().to_string(),
            "-J",
        ],
    )?;
    let t2 = ticks(&pids);
    let report: Value = serde_json::from_str(&report).context("iperf3 -J output")?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")?;
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    let neighbour = lab.client_neighbour(&ip).unwrap_or_default();
    if !lab.nodes[owner].mac.eq_ignore_ascii_case(&neighbour) {
        bail!(
            "the client reached {ip} through {neighbour}, not the owner {}",
            lab.nodes[owner].mac
        );
    }

    let tick = clock_tick();
    writeln!(out, "## Speaker CPU under bulk traffic\n")?;
    writeln!(
        out,
        "Command: `cargo bench -p ferrolb-tests --bench lab` (root; after `cargo build --release \
         --bins`). The whole lab: test API server, controller, three speakers, nftables DNAT as \
         kube-proxy's rules, a client; one LoadBalancer Service. `iperf3 -c <address> -t {}` runs \
         from the client at full speed (one TCP stream, virtual links on one machine) to the \
         owner node, whose DNAT rule hands it to an iperf3 server on that node (the lab's \
         backends run in the node's namespace; kube-proxy would hand it on to a Pod): {:.1} \
         Gbit/s, {retransmits} retransmits. \
         Speaker CPU is user plus system time from /proc, over the same length of time idle and \
         then under the traffic.\n",
        BULK.as_secs(),
        bits / 1e9
    )?;
    writeln!(
        out,
        "| node | speaker CPU, {} s idle | speaker CPU, {} s of iperf3 |\n|---|---|---|",
        BULK.as_secs(),
        BULK.as_secs()
    )?;
    for (i, n) in lab.nodes.iter().enumerate() {
        let role = if i == owner { " (owner)" } else { "" };
        let idle = (t1[i] - t0[i]) as f64 / tick;
        let busy = (t2[i] - t1[i]) as f64 / tick;
        writeln!(
            out,
            "| {}{role} | {:.2} s ({:.2} %) | {:.2} s ({:.2} %) |",
            n.name,
            idle,
            idle / BULK.as_secs_f64() * 100.0,
            busy,
            busy / BULK.as_secs_f64() * 100.0
        )?;
    }
    writeln!(
        out,
        "\nThe speaker's sockets see only ARP frames and, through a BPF filter, neighbour \
         solicitations; the node's data traffic never reaches it, so its CPU stays at its idle \
         level (membership heartbeats) however much traffic the node receives.\n"
    )?;
    Ok(())
}

fn scale(lab: &Lab, out: &mut String) -> anyhow::Result<()> {
    let controller = lab.pid("controller").expect("controller");
    let speakers: Vec<u32> = lab
        .nodes
        .iter()
        .map(|n| lab.pid(&format!("speaker-{}", n.name)).expect("speaker"))
        .collect();
    let before: Vec<(u64, u64)> = std::iter::once(controller)
        .chain(speakers.iter().copied())
        .map(memory)
        .collect();

    // 999 more Services (the iperf3 one holds the first address): IPv4 from
    // 192.0.2.128/25, 198.51.100.0/24 and 203.0.113.0/24, IPv6 from
    // 2001:db8::1000/118, each with a ready endpoint on every node.
    let mut items = Vec::new();
    for i in 0..SCALE - 1 {
        let v6 = i >= SCALE_V4 - 1;
        let name = format!("scale-{i}");
        let mut spec = json!({
            "type": "LoadBalancer", "selector": {"app": name},
            "allocateLoadBalancerNodePorts": false,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
        });
        if v6 {
            spec["ipFamilies"] = json!(["IPv6"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        items.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}));
        let endpoints: Vec<Value> = lab
            .nodes
            .iter()
            .map(|n| {
                let a = if v6 { n.ip6.to_string() } else { n.ip4.to_string() };
                json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": n.name})
            })
            .collect();
        items.push(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-lab"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": if v6 { "IPv6" } else { "IPv4" },
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        );
    }
    let file = lab.dir.join("scale.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
    )?;
    eprintln!("scale: creating {} Services", SCALE - 1);
    let start = Instant::now();
    // kubectl cannot validate a List against the test API server (no OpenAPI).
    lab.kubectl(&["create", "--validate=false", "-f", &file.to_string_lossy()])?;
    let created = start.elapsed();
    let total = eventually("every address announced", Duration::from_secs(600), || {
        let sum: f64 = lab.nodes.iter().map(|n| announced(lab, n)).sum();
        (sum as usize == SCALE).then_some(sum)
    })?;
    let announced_after = start.elapsed();
    let per_node: Vec<f64> = lab.nodes.iter().map(|n| announced(lab, n)).collect();
    // Let the takeover bursts and the status writes finish.
    std::thread::sleep(Duration::from_secs(5));

    let pids: Vec<u32> = std::iter::once(controller)
        .chain(speakers.iter().copied())
        .collect();
    let sample = |lab: &Lab| -> Vec<(f64, f64)> {
        lab.nodes
            .iter()
            .map(|n| {
                let m = lab.speaker_metrics(n).unwrap_or_default();
                (
                    metric(&m, "ferrolb_membership_packets_sent_total"),
                    metric(&m, "ferrolb_ownership_changes_total"),
                )
            })
            .collect()
    };
    let c0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let m0 = sample(lab);
    let w = Instant::now();
    std::thread::sleep(WINDOW);
    let c1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let m1 = sample(lab);
    let secs = w.elapsed().as_secs_f64();
    let after: Vec<(u64, u64)> = pids.iter().map(|p| memory(*p)).collect();

    let tick = clock_tick();
    writeln!(
        out,
        "## Memory and steady state with 1,000 announced addresses\n"
    )?;
    writeln!(
        out,
        "Same command and lab (`--bench lab`), right after the bulk-traffic run. {} more \
         LoadBalancer Services ({} IPv4 from 192.0.2.128/25, 198.51.100.0/24 and 203.0.113.0/24, {} \
         IPv6 from 2001:db8::1000/118), each with a ready endpoint on every node, are created in \
         one `kubectl create` ({:.1} s); all {total} addresses \
         were announced {:.1} s after it began, spread {} across the nodes by the election. \
         Resident memory is `VmRSS` (and its peak `VmHWM`) from /proc; the 10 s window follows a \
         5 s pause.\n",
        SCALE - 1,
        SCALE_V4 - 1,
        SCALE - SCALE_V4,
        created.as_secs_f64(),
        announced_after.as_secs_f64(),
        per_node
            .iter()
            .map(|n| format!("{n}"))
            .collect::<Vec<_>>()
            .join(" / "),
    )?;
    writeln!(
        out,
        "| process | RSS, 1 address | RSS, 1,000 addresses | peak RSS | CPU at rest | membership packets sent/s | ownership changes in the window |\n|---|---|---|---|---|---|---|"
    )?;
    let mib = |kb: u64| format!("{:.1} MiB", kb as f64 / 1024.0);
    for (i, pid) in pids.iter().enumerate() {
        let _ = pid;
        let name = if i == 0 {
            "controller".to_owned()
        } else {
            format!("speaker, {}", lab.nodes[i - 1].name)
        };
        let cpu = (c1[i] - c0[i]) as f64 / tick / secs * 100.0;
        let (pps, changes) = if i == 0 {
            ("".to_owned(), "".to_owned())
        } else {
            let (s0, o0) = m0[i - 1];
            let (s1, o1) = m1[i - 1];
            (
                format!("{:.0}", (s1 - s0) / secs),
                format!("{:.0}", o1 - o0),
            )
        };
        writeln!(
            out,
            "| {name} | {} | {} | {} | {cpu:.2} % | {pps} | {changes} |",
            mib(before[i].0),
            mib(after[i].0),
            mib(after[i].1),
        )?;
    }
    writeln!(
        out,
        "\nMembership traffic does not depend on the number of addresses: heartbeats carry no \
         per-address state, and every speaker computes owners from the same inputs.\n"
    )?;
    Ok(())
}

fn announced(lab: &Lab, n: &Host) -> f64 {
    metric(
        &lab.speaker_metrics(n).unwrap_or_default(),
        "ferrolb_announced_addresses",
    )
}
