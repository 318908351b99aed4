//! How ferrolb fits the rest of Kubernetes, measured on the real control
//! plane lab (kube-apiserver, kube-controller-manager, kube-scheduler, real
//! kube-proxy, ferrolb from `manifests/`; 3 nodes and a client):
//!
//! - the client-seen gap when the owner is taken out (the exclusion label,
//!   the cluster autoscaler's taint), when the last Pod of a `Local` Service
//!   on the owner terminates while another node has a ready one, when the
//!   owner's kube-proxy stops answering that Service's `healthCheckNodePort`,
//!   and when kube-proxy dies on the owner (data-path check, default 500 ms
//!   threshold);
//! - the Events and API writes of 1,000 Services whose owners flap: one node
//!   excluded and let back in, repeatedly, beside a steady state.
//!
//! `FERROLB_KUBE_BIN=$(scripts/build-kube.sh | tail -n1) cargo bench -p ferrolb-tests --bench kube_native`
//! (root; `cargo build --release --bins` first). Prints a Markdown section for
//! BENCHMARKS.md on stdout; progress goes to stderr.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferrolb_tests::kube::{KUBE_BIN_ENV, KubeBinaries};
use ferrolb_tests::kubeproxy::ProxyMode;
use ferrolb_tests::lab::{Lab, LabOptions, RealOptions, System, eventually, metric, stats};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);
const TRIALS: usize = 5;
const SERVICES: usize = 1000;
/// How long the owners flap.
const FLAPPING: Duration = Duration::from_secs(60);
const STEADY: Duration = Duration::from_secs(30);
const LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

const CONFIG: &str = "apiVersion: v1
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
      - 192.0.2.240-192.0.2.250
    - name: churn
      protocol: layer2
      auto-assign: false
      addresses:
      - 2001:db8::c:0/118
";

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benches with harness=false too; only run under `cargo bench`.
        return Ok(());
    }
    let Some(bins) = KubeBinaries::from_env() else {
        bail!("{KUBE_BIN_ENV} is unset: run `scripts/build-kube.sh` and export its last line");
    };
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    Lab::check_binaries(&bin_dir)?;
    Lab::clean_stale();
    let config =
        std::env::temp_dir().join(format!("ferrolb-bench-native-{}.yaml", std::process::id()));
    std::fs::write(&config, CONFIG)?;
    let mut lab = Lab::up(&LabOptions {
        nodes: 3,
        bin_dir,
        kubeconfig: None,
        config: config.clone(),
        rbac_manifests: None,
        real: Some(RealOptions {
            kube: bins?,
            proxy_mode: ProxyMode::Nftables,
            manifests: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests")),
            system: System::Ferrolb,
        }),
    })?;
    let _ = std::fs::remove_file(&config);

    let mut out = String::new();
    writeln!(out, "## Kubernetes-native behaviour (real control plane)")?;
    writeln!(out)?;
    writeln!(
        out,
        "`FERROLB_KUBE_BIN=$(scripts/build-kube.sh | tail -n1) cargo bench -p ferrolb-tests --bench kube_native`:"
    )?;
    writeln!(
        out,
        "the real-control-plane lab (kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy v1.36.3 in nftables mode, ferrolb from `manifests/`), 3 nodes, defaults. The client sends an HTTP request to the Service every 10 ms; a gap is the longest time between two answers. {TRIALS} trials per row."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| the owner... | trials | client-seen gap p50 | p99 | max | address moved after (p50) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;

    let (ip, target) = lab.quickstart_web()?;
    for step in ["label", "taint"] {
        let mut gaps = vec![];
        for trial in 0..TRIALS {
            let (gap, _) = take_out(&lab, &ip, target, step)
                .with_context(|| format!("{step}, trial {trial}"))?;
            gaps.push(gap);
        }
        let what = match step {
            "label" => format!("is labelled `{LABEL}=true`"),
            _ => "is tainted `ToBeDeletedByClusterAutoscaler`".to_owned(),
        };
        row(&mut out, &what, &gaps, None)?;
    }
    let (gaps, moved) = local_terminating(&lab)?;
    row(
        &mut out,
        "hosts the last ready Pod of a `Local` Service, deleted while another node has one",
        &gaps,
        Some(&moved),
    )?;
    let (gaps, moved) = health_check_node_port(&lab)?;
    row(
        &mut out,
        "stops answering a `Local` Service's `healthCheckNodePort` (dropped by nftables) while its Pod is ready",
        &gaps,
        Some(&moved),
    )?;
    let (gaps, moved) = kube_proxy_death(&mut lab, &ip, target)?;
    row(
        &mut out,
        "loses kube-proxy (SIGKILL; data-path check: 500 ms threshold, polled every 100 ms)",
        &gaps,
        Some(&moved),
    )?;
    writeln!(out)?;
    events_under_churn(&lab, &mut out)?;
    print!("{out}");
    Ok(())
}

fn row(out: &mut String, what: &str, gaps: &[u64], moved: Option<&[u64]>) -> anyhow::Result<()> {
    let (p50, p99, max) = stats(gaps);
    let moved = moved
        .map(|m| format!("{} ms", stats(m).0))
        .unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "| {what} | {} | {p50} ms | {p99} ms | {max} ms | {moved} |",
        gaps.len()
    )?;
    Ok(())
}

/// Takes the owner out by `step` and lets it back: the gap and the new owner.
fn take_out(lab: &Lab, ip: &str, target: SocketAddr, step: &str) -> anyhow::Result<(u64, String)> {
    let from = eventually("an owner", LIMIT, || {
        lab.answered(target, 3).then(|| lab.owner(ip)).flatten()
    })?;
    let prober = lab.start_prober(target)?;
    let event = Instant::now();
    match step {
        "label" => lab.kubectl(&[
            "label",
            "node",
            &from,
            &format!("{LABEL}=true"),
            "--overwrite",
        ])?,
        _ => lab.kubectl(&[
            "taint",
            "node",
            &from,
            "ToBeDeletedByClusterAutoscaler=1:NoSchedule",
        ])?,
    };
    let to = eventually(&format!("{ip} moved off {from}"), LIMIT, || {
        let ok = lab.answered(target, 3);
        lab.owner(ip).filter(|n| ok && *n != from)
    })?;
    prober.wait_answer_after(event, LIMIT)?;
    let (answers, gap) = prober.stop();
    if answers < 10 {
        bail!("the prober got only {answers} answers");
    }
    match step {
        "label" => lab.kubectl(&["label", "node", &from, &format!("{LABEL}-")])?,
        _ => lab.kubectl(&["taint", "node", &from, "ToBeDeletedByClusterAutoscaler-"])?,
    };
    eprintln!("{step}: {ip} {from} -> {to}, gap {gap} ms");
    Ok((gap, to))
}

fn echo_pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "loc"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 5,
                 "containers": [{"name": "echo", "image": "ferrolb.io/lab-echo"}]}
    })
}

/// A `Local` Service with one Pod on each of two nodes; the owner's Pod is
/// deleted: the gap, and when the address moved.
fn local_terminating(lab: &Lab) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let nodes = [lab.nodes[0].name.clone(), lab.nodes[1].name.clone()];
    for n in &nodes {
        lab.apply(&echo_pod(&format!("loc-{n}"), n))?;
    }
    lab.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "loc", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "loc"},
                 "ports": [{"port": 80, "protocol": "TCP"}]}
    }))?;
    let ip = eventually("an address for loc", LIMIT, || {
        lab.external_ips("loc").into_iter().next()
    })?;
    let target: SocketAddr = format!("{ip}:80").parse()?;
    let (mut gaps, mut moved) = (vec![], vec![]);
    for trial in 0..TRIALS {
        let from = eventually("loc answered by its owner", LIMIT, || {
            let ok = lab.answered(target, 10);
            lab.owner(&ip).filter(|n| ok && nodes.contains(n))
        })?;
        let prober = lab.start_prober(target)?;
        let pod = format!("loc-{from}");
        let deleted = Instant::now();
        lab.kubectl(&["delete", "pod", &pod, "--wait=false"])?;
        let to = eventually(&format!("{ip} moved off {from}"), LIMIT, || {
            lab.owner(&ip).filter(|n| *n != from)
        })?;
        moved.push(deleted.elapsed().as_millis() as u64);
        eventually("answers from the other node", LIMIT, || {
            lab.answered(target, 5).then_some(())
        })?;
        prober.wait_answer_after(deleted, LIMIT)?;
        let (_, gap) = prober.stop();
        eprintln!("local, trial {trial}: {ip} {from} -> {to}, gap {gap} ms");
        gaps.push(gap);
        lab.kubectl(&[
            "wait",
            "--for=delete",
            &format!("pod/{pod}"),
            "--timeout=60s",
        ])?;
        lab.apply(&echo_pod(&pod, &from))?;
        eventually("both loc Pods ready", LIMIT, || {
            let out = lab
                .kubectl(&[
                    "get", "pods", "-l", "app=loc", "-o",
                    "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{end}",
                ])
                .ok()?;
            (out.split_whitespace().filter(|s| *s == "True").count() == 2).then_some(())
        })?;
    }
    Ok((gaps, moved))
}

/// The `loc` Service's healthCheckNodePort dropped on its owner: the owner
/// withdraws, the other node takes over; then the port is let through again
/// and the withdrawal ends.
fn health_check_node_port(lab: &Lab) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let ip = lab
        .external_ips("loc")
        .into_iter()
        .next()
        .context("loc has an address")?;
    let target: SocketAddr = format!("{ip}:80").parse()?;
    let svc: Value = serde_json::from_str(&lab.kubectl(&["get", "svc", "loc", "-o", "json"])?)?;
    let port = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .context("loc has a healthCheckNodePort")?;
    let withdrawn = |lab: &Lab| -> usize {
        lab.nodes
            .iter()
            .filter_map(|n| lab.speaker_metrics(n))
            .map(|m| metric(&m, "ferrolb_withdrawn_services") as usize)
            .sum()
    };
    let (mut gaps, mut moved) = (vec![], vec![]);
    for trial in 0..TRIALS {
        let from = eventually("loc answered, nothing withdrawn", LIMIT, || {
            let ok = lab.answered(target, 10) && withdrawn(lab) == 0;
            lab.owner(&ip).filter(|_| ok)
        })?;
        let ns = lab.node(&from).context("the owner")?.ns.clone();
        let nft = |args: &str| lab.nft(&ns, args);
        let prober = lab.start_prober(target)?;
        let blocked = Instant::now();
        nft("add table inet flbbench")?;
        nft("add chain inet flbbench input { type filter hook input priority -10 ; }")?;
        nft(&format!(
            "add rule inet flbbench input tcp dport {port} drop"
        ))?;
        let to = eventually(&format!("{ip} moved off {from}"), LIMIT, || {
            lab.owner(&ip).filter(|n| *n != from)
        })?;
        moved.push(blocked.elapsed().as_millis() as u64);
        eventually("answers from the other node", LIMIT, || {
            lab.answered(target, 5).then_some(())
        })?;
        prober.wait_answer_after(blocked, LIMIT)?;
        let (_, gap) = prober.stop();
        eprintln!("healthCheckNodePort, trial {trial}: {ip} {from} -> {to}, gap {gap} ms");
        gaps.push(gap);
        nft("delete table inet flbbench")?;
    }
    Ok((gaps, moved))
}

/// kube-proxy killed on the owner, then started again.
fn kube_proxy_death(
    lab: &mut Lab,
    ip: &str,
    target: SocketAddr,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let healthy = |lab: &Lab, node: &str| {
        lab.node(node)
            .and_then(|h| lab.speaker_metrics(h))
            .map(|m| metric(&m, "ferrolb_data_path_healthy"))
    };
    let (mut gaps, mut moved) = (vec![], vec![]);
    for trial in 0..TRIALS {
        let from = eventually("an owner with a healthy data path", LIMIT, || {
            let n = lab.answered(target, 3).then(|| lab.owner(ip)).flatten()?;
            (healthy(lab, &n) == Some(1.0)).then_some(n)
        })?;
        let prober = lab.start_prober(target)?;
        let killed = Instant::now();
        lab.signal(&format!("kube-proxy-{from}"), "KILL")?;
        let to = eventually(&format!("{ip} moved off {from}"), LIMIT, || {
            lab.owner(ip).filter(|n| *n != from)
        })?;
        moved.push(killed.elapsed().as_millis() as u64);
        eventually("answers from the new owner", LIMIT, || {
            lab.answered(target, 5).then_some(())
        })?;
        prober.wait_answer_after(killed, LIMIT)?;
        let (_, gap) = prober.stop();
        eprintln!("kube-proxy, trial {trial}: {ip} {from} -> {to}, gap {gap} ms");
        gaps.push(gap);
        lab.start_kube_proxy(&from)?;
        eventually("the data path healthy again", LIMIT, || {
            (healthy(lab, &from) == Some(1.0)).then_some(())
        })?;
    }
    Ok((gaps, moved))
}

/// Sum of a metric over every speaker.
fn speakers_sum(lab: &Lab, name: &str) -> f64 {
    lab.nodes
        .iter()
        .filter_map(|n| lab.speaker_metrics(n))
        .map(|m| metric(&m, name))
        .sum()
}

fn controller_metric(lab: &Lab, name: &str) -> Option<f64> {
    lab.leader_metrics().map(|m| metric(&m, name))
}

fn events_total(lab: &Lab) -> anyhow::Result<usize> {
    Ok(lab
        .kubectl(&["get", "events", "-A", "-o", "name"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

struct Counts {
    events: usize,
    repeat: f64,
    limited: f64,
    writes: f64,
}

fn counts(lab: &Lab) -> anyhow::Result<Counts> {
    let controller = |r: &str| {
        controller_metric(
            lab,
            &format!("ferrolb_events_suppressed_total{{reason=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    };
    Ok(Counts {
        events: events_total(lab)?,
        repeat: speakers_sum(lab, "ferrolb_events_suppressed_total{reason=\"repeat\"}")
            + controller("repeat"),
        limited: speakers_sum(
            lab,
            "ferrolb_events_suppressed_total{reason=\"rate_limited\"}",
        ) + controller("rate_limited"),
        writes: speakers_sum(lab, "ferrolb_condition_writes_total"),
    })
}

/// 1,000 Services on the `web` Pods; one node excluded and let back in
/// `FLAPPING` (a minute), then a steady state.
fn events_under_churn(lab: &Lab, out: &mut String) -> anyhow::Result<()> {
    let items: Vec<Value> = (0..SERVICES)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("churn-{i}"), "namespace": "default",
                             "annotations": {"ferrolb.io/address-pool": "churn"}},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                         "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                         "ports": [{"port": 80, "protocol": "TCP"}]}
            })
        })
        .collect();
    let before_create = counts(lab)?;
    let created = Instant::now();
    lab.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?;
    eprintln!(
        "churn: {SERVICES} Services created in {:?}",
        created.elapsed()
    );
    let total_addresses = || speakers_sum(lab, "ferrolb_announced_addresses");
    eventually(
        "every churn address announced",
        Duration::from_secs(600),
        || (total_addresses() >= SERVICES as f64).then_some(()),
    )?;
    // Settled: every condition written (each Service once).
    eventually(
        "the announcement conditions written",
        Duration::from_secs(600),
        || {
            (speakers_sum(lab, "ferrolb_condition_writes_total")
                >= before_create.writes + SERVICES as f64)
                .then_some(())
        },
    )?;
    let creating = created.elapsed();
    let start = counts(lab)?;
    eprintln!("churn: settled {creating:?} after the create began");

    let node = lab.nodes[0].clone();
    let announced_by = |lab: &Lab| {
        lab.speaker_metrics(&node)
            .map(|m| metric(&m, "ferrolb_announced_addresses"))
            .unwrap_or(-1.0)
    };
    let before = announced_by(lab);
    let flapping = Instant::now();
    let mut moved = 0.0;
    let mut rounds = 0;
    while flapping.elapsed() < FLAPPING {
        let round = rounds;
        rounds += 1;
        lab.kubectl(&[
            "label",
            "node",
            &node.name,
            &format!("{LABEL}=true"),
            "--overwrite",
        ])?;
        eventually(
            &format!("round {round}: {} announces nothing", node.name),
            LIMIT,
            || (announced_by(lab) == 0.0).then_some(()),
        )?;
        lab.kubectl(&[
            "label",
            "node",
            &node.name,
            &format!("{LABEL}=false"),
            "--overwrite",
        ])?;
        eventually(
            &format!("round {round}: {} announces again", node.name),
            LIMIT,
            || (announced_by(lab) >= before).then_some(()),
        )?;
        moved += 2.0 * before;
    }
    let flapped = flapping.elapsed();
    // Background work catches up: the conditions settle one second after
    // the last move, Events are queued at once.
    let settled = Instant::now();
    eventually("the conditions settled after the flapping", LIMIT, || {
        let a = speakers_sum(lab, "ferrolb_condition_writes_total");
        std::thread::sleep(Duration::from_secs(3));
        (speakers_sum(lab, "ferrolb_condition_writes_total") == a).then_some(())
    })?;
    let end = counts(lab)?;
    eprintln!("churn: quiet {:?} after the flapping", settled.elapsed());
    // Steady state.
    let steady_start = counts(lab)?;
    std::thread::sleep(STEADY);
    let steady_end = counts(lab)?;

    let minutes = flapped.as_secs_f64() / 60.0;
    let published = end.events - start.events;
    let repeat = end.repeat - start.repeat;
    let limited = end.limited - start.limited;
    let writes = end.writes - start.writes;
    writeln!(
        out,
        "Events and condition writes: {SERVICES} Services (IPv6, on the `web` Pods) spread over the 3 nodes; node {} excluded and let back in as fast as the moves complete for a minute ({rounds} times, {moved:.0} address moves in {:.1} s), then {} s at rest. \"Would have been\" counts the Events the limiter dropped (`ferrolb_events_suppressed_total`); condition writes are the speakers' `ferrolb_condition_writes_total`.",
        node.name,
        flapped.as_secs_f64(),
        STEADY.as_secs()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| phase | Events published | per minute | would have been without the limiter | dropped as repeats | dropped by rate | condition writes |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let create = |a: f64, b: f64| a - b;
    writeln!(
        out,
        "| creating the {SERVICES} Services, until every address is announced and its condition written ({:.1} s) | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        creating.as_secs_f64(),
        start.events - before_create.events,
        (start.events - before_create.events) as f64 / (creating.as_secs_f64() / 60.0),
        (start.events - before_create.events) as f64
            + create(start.repeat, before_create.repeat)
            + create(start.limited, before_create.limited),
        create(start.repeat, before_create.repeat),
        create(start.limited, before_create.limited),
        create(start.writes, before_create.writes),
    )?;
    writeln!(
        out,
        "| flapping ({:.1} s) | {published} | {:.0} | {:.0} | {repeat:.0} | {limited:.0} | {writes:.0} |",
        flapped.as_secs_f64(),
        published as f64 / minutes,
        published as f64 + repeat + limited,
    )?;
    writeln!(
        out,
        "| at rest ({} s) | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        STEADY.as_secs(),
        steady_end.events - steady_start.events,
        (steady_end.events - steady_start.events) as f64 / (STEADY.as_secs_f64() / 60.0),
        (steady_end.events - steady_start.events) as f64
            + (steady_end.repeat - steady_start.repeat)
            + (steady_end.limited - steady_start.limited),
        steady_end.repeat - steady_start.repeat,
        steady_end.limited - steady_start.limited,
        steady_end.writes - steady_start.writes,
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "The stated bound (README, \"Events\"): per process at most 1,000 at once and 600 a minute after that, per object 5 and then 2 a minute, and a repeat within 10 minutes never."
    )?;
    Ok(())
}
