//! Membership cost with real speakers (docs/membership.md): the lab at 3, 10,
//! 25 and 50 nodes (test API server, controller, speakers, a lab backend per
//! node), each size with the ring protocol and with the all-to-all mesh in
//! the same run. Per speaker, at rest: CPU from /proc, membership packets sent per
//! second (the speaker's own counter), and RSS. Then, with the ring, owner
//! failover: the node owning a Service's address dies (its speaker is
//! killed with SIGKILL and its switch port set down, so its backend goes
//! too) while the client starts a request every 5 ms (each on its own, so
//! the gap is measured to about 5 ms); the longest gap between answered
//! requests, over `--failover-trials` trials (the node plugged in
//! again, its speaker restarted and the address settled between trials).
//!
//! `cargo bench -p ferrolb-tests --bench membership_lab [-- --nodes 3,10,25,50 --secs 10 --failover-trials 20]`
//! (root; after `cargo build --release --bins`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrolb_tests::lab::{Host, Lab, LabOptions, eventually, metric, stats};
use ferrolb_tests::procfs::{clock_tick, cpu_ticks, memory};

const CONFIG: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  namespace: ferrolb-system
  name: config
data:
  config: |
    address-pools:
    - name: default
      protocol: layer2
      addresses:
      - 192.0.2.128/25
";

struct Row {
    nodes: usize,
    protocol: &'static str,
    cpu: (f64, f64),
    pps: (f64, f64),
    rss_kib: f64,
    /// Failover gaps (ms), one per trial.
    gaps: Vec<u64>,
}

/// Each speaker's `ferrolb_members_alive` (-1 while it does not answer).
fn members_seen(lab: &Lab) -> Vec<f64> {
    lab.nodes
        .iter()
        .map(|n| {
            lab.speaker_metrics(n)
                .map_or(-1.0, |m| metric(&m, "ferrolb_members_alive"))
        })
        .collect()
}

fn mean_max(v: &[f64]) -> (f64, f64) {
    (
        v.iter().sum::<f64>() / v.len().max(1) as f64,
        v.iter().copied().fold(0.0, f64::max),
    )
}

fn measure(
    bin_dir: &std::path::Path,
    nodes: usize,
    protocol: &'static str,
    secs: u64,
    trials: usize,
) -> anyhow::Result<Row> {
    // The lab's speakers inherit this process's environment.
    // SAFETY: set before any thread of this process reads the environment
    // (the lab is not up yet; nothing else runs).
    unsafe { std::env::set_var("FERROLB_MEMBERSHIP_PROTOCOL", protocol) };
    let config =
        std::env::temp_dir().join(format!("ferrolb-bench-members-{}.yaml", std::process::id()));
    std::fs::write(&config, CONFIG)?;
    let mut lab = Lab::up(&LabOptions {
        nodes,
        bin_dir: bin_dir.to_path_buf(),
        kubeconfig: None,
        config: config.clone(),
        rbac_manifests: None,
        real: None,
    })?;
    let _ = std::fs::remove_file(&config);
    let mut last_report = Instant::now();
    let converged = eventually(
        "every speaker seeing every member",
        Duration::from_secs(180),
        || {
            let seen = members_seen(&lab);
            if last_report.elapsed() > Duration::from_secs(20) {
                last_report = Instant::now();
                eprintln!("membership_lab: members seen per speaker: {seen:?}");
            }
            seen.iter().all(|m| *m == nodes as f64).then_some(())
        },
    );
    if let Err(e) = converged {
        eprintln!(
            "membership_lab: logs in {} (kept until a later lab cleans stale ones)",
            lab.dir.display()
        );
        drop(lab);
        return Err(e);
    }
    // Past the joins.
    std::thread::sleep(Duration::from_secs(3));
    let pids: Vec<u32> = lab
        .nodes
        .iter()
        .map(|n| lab.pid(&format!("speaker-{}", n.name)).expect("speaker"))
        .collect();
    let sent = |n: &Host| {
        metric(
            &lab.speaker_metrics(n).unwrap_or_default(),
            "ferrolb_membership_packets_sent_total",
        )
    };
    let c0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let s0: Vec<f64> = lab.nodes.iter().map(sent).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let s1: Vec<f64> = lab.nodes.iter().map(sent).collect();
    let took = t0.elapsed().as_secs_f64();
    let tick = clock_tick();
    let cpu: Vec<f64> = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| (b - a) as f64 / tick / took * 100.0)
        .collect();
    let pps: Vec<f64> = s0.iter().zip(&s1).map(|(a, b)| (b - a) / took).collect();
    let rss: Vec<f64> = pids.iter().map(|p| memory(*p).0 as f64).collect();
    let gaps = if protocol == "ring" && trials > 0 {
        failover(&mut lab, trials)?
    } else {
        Vec::new()
    };
    Ok(Row {
        nodes,
        protocol,
        cpu: mean_max(&cpu),
        pps: mean_max(&pps),
        rss_kib: mean_max(&rss).0,
        gaps,
    })
}

/// The longest gap a client sees (ms) when the node owning a Service's
/// address dies (speaker killed, switch port down: a killed speaker alone
/// leaves the node's data path up, and the client's neighbour entry keeps
/// reaching it), once per trial. Between trials the node is plugged in and
/// its speaker restarted, and the address is left where the protocol puts
/// it once the restarted node's hold-down has passed, so every trial starts
/// from a settled cluster.
fn failover(lab: &mut Lab, trials: usize) -> anyhow::Result<Vec<u64>> {
    const LIMIT: Duration = Duration::from_secs(120);
    // The hold-down of a node back after being removed as failed (10 s),
    // and a margin: the address may move back to it once, then stays.
    const SETTLED: Duration = Duration::from_secs(12);
    let nodes = lab.nodes.len();
    lab.create_service("web", serde_json::json!({}))?;
    let ip = eventually("an address for web", LIMIT, || {
        lab.external_ips("web").into_iter().next()
    })?;
    lab.forward(&ip, 80)?;
    let target = SocketAddr::new(ip.parse().context("the address")?, 80);
    let mut gaps = Vec::new();
    for trial in 0..trials {
        let from = eventually("an owner answering", LIMIT, || {
            lab.answered(target, 3).then(|| lab.owner(&ip)).flatten()
        })?;
        // A request started every 5 ms, each on its own (100 ms timeout):
        // the gap between two answered requests' starts is measured to
        // about 5 ms (a healthy request takes about a millisecond here).
        let prober = lab.start_prober_parallel(
            target,
            Duration::from_millis(5),
            Duration::from_millis(100),
        )?;
        let killed = Instant::now();
        lab.signal(&format!("speaker-{from}"), "KILL")?;
        lab.unplug(&from)?;
        let to = eventually(&format!("{ip} moved off {from}"), LIMIT, || {
            lab.answered(target, 3)
                .then(|| lab.owner(&ip))
                .flatten()
                .filter(|n| *n != from)
        })?;
        prober.wait_answer_after(killed, LIMIT)?;
        let (answers, gap) = prober.stop();
        if answers < 10 {
            anyhow::bail!("the prober got only {answers} answers");
        }
        eprintln!("membership_lab: {nodes} nodes, trial {trial}: {from} -> {to}, gap {gap} ms");
        gaps.push(gap);
        lab.wait_exit(&format!("speaker-{from}"), LIMIT)?;
        lab.plug(&from)?;
        let host = lab.node(&from).context("the killed node")?.clone();
        lab.start_speaker(&host)?;
        let back = Instant::now();
        eventually("every speaker seeing every member again", LIMIT, || {
            members_seen(lab)
                .iter()
                .all(|m| *m == nodes as f64)
                .then_some(())
        })?;
        eventually("the address settled", LIMIT, || {
            (back.elapsed() >= SETTLED && lab.answered(target, 3)).then_some(())
        })?;
    }
    Ok(gaps)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let mut sizes = vec![3, 10, 25, 50];
    let mut secs = 10;
    // All-to-all at 50 speakers saturates a small machine (it is the
    // point of the ring); the mesh runs up to this size.
    let mut mesh_max = 25;
    let mut trials = 20;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => {
                sizes = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|x| x.parse().ok())
                    .collect()
            }
            "--secs" => secs = it.next().and_then(|x| x.parse().ok()).unwrap_or(secs),
            "--mesh-max" => mesh_max = it.next().and_then(|x| x.parse().ok()).unwrap_or(mesh_max),
            "--failover-trials" => {
                trials = it.next().and_then(|x| x.parse().ok()).unwrap_or(trials)
            }
            _ => {}
        }
    }
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    Lab::check_binaries(&bin_dir)?;
    Lab::clean_stale();
    let mut rows = Vec::new();
    for &n in &sizes {
        for protocol in ["ring", "mesh"] {
            if protocol == "mesh" && n > mesh_max {
                continue;
            }
            eprintln!("membership_lab: {n} nodes, {protocol}");
            match measure(&bin_dir, n, protocol, secs, trials) {
                Ok(r) => {
                    eprintln!(
                        "membership_lab: {n} {protocol}: CPU {:.2} % / {:.2} %, {:.0} / {:.0} packets/s, RSS {:.1} MiB",
                        r.cpu.0,
                        r.cpu.1,
                        r.pps.0,
                        r.pps.1,
                        r.rss_kib / 1024.0
                    );
                    rows.push(r);
                }
                // A size this machine cannot hold is reported, the others kept.
                Err(e) => eprintln!("membership_lab: {n} nodes, {protocol}: {e:#}"),
            }
        }
    }
    let mut out = String::new();
    writeln!(out, "## Membership cost with real speakers\n")?;
    writeln!(
        out,
        "Command: `cargo bench -p ferrolb-tests --bench membership_lab -- --nodes {} --secs {secs} --mesh-max {mesh_max} --failover-trials {trials}` (root). \
         The lab with N nodes (test API server, controller, N speakers, a lab backend per node), once with \
         `--membership-protocol ring` (the default) and, up to {mesh_max} nodes, once with `mesh` (all-to-all), in one run. \
         Per speaker at rest over {secs} s: CPU (user + system from /proc, % of one core), membership \
         packets sent per second (its `ferrolb_membership_packets_sent_total`), RSS. All N speakers \
         share this machine's cores. Failover (ring only): the node owning a Service's address dies (its speaker \
         killed with SIGKILL, its switch port set down) while the client starts a request every 5 ms, each on its own \
         (100 ms timeout), so gaps are measured to about 5 ms; the longest \
         gap between the starts of two answered requests, p50 / p99 / max over the trials (the node plugged in again, its speaker \
         restarted and the address settled between trials).\n",
        sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    )?;
    writeln!(
        out,
        "| nodes | protocol | CPU per speaker (mean / max) | packets/s sent per speaker (mean / max) | RSS per speaker | failover gap p50 / p99 / max (trials) |\n|---|---|---|---|---|---|"
    )?;
    for r in &rows {
        let failover = if r.gaps.is_empty() {
            "-".to_owned()
        } else {
            let (p50, p99, max) = stats(&r.gaps);
            format!("{p50} / {p99} / {max} ms ({})", r.gaps.len())
        };
        writeln!(
            out,
            "| {} | {} | {:.2} % / {:.2} % | {:.0} / {:.0} | {:.1} MiB | {failover} |",
            r.nodes,
            r.protocol,
            r.cpu.0,
            r.cpu.1,
            r.pps.0,
            r.pps.1,
            r.rss_kib / 1024.0
        )?;
    }
    print!("{out}");
    Ok(())
}
