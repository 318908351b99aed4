//! The ring membership in the simulator (docs/membership.md): per-node
//! cost, failure detection time and false removals at 1,000 and 5,000
//! nodes and several loss rates, and partitions. Virtual time, seeded: the
//! same arguments give the same table.
//!
//! `cargo bench -p ferrolb-core --bench membership -- [--nodes 1000,5000]
//! [--loss 0,1,5,10] [--quiet-secs 60] [--kills 20] [--seed 1]
//! [--partitions 0.1,10,30,45,50 | --no-partitions] [--heal-secs 10]`
//! (`--loss ""` skips the loss rows; partitions are minority shares in
//! percent; a healed partition is watched for `--heal-secs` of virtual time,
//! 0: not healed).

use std::time::{Duration, Instant};

use ferrolb_core::ring::Settings;
use ferrolb_core::ring::sim::{Network, Record, Rng, Sim};

struct Args {
    nodes: Vec<usize>,
    loss: Vec<f64>,
    quiet: u64,
    kills: usize,
    seed: u64,
    partitions: bool,
    shares: Vec<f64>,
    heal: u64,
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn args() -> Args {
    let mut a = Args {
        nodes: vec![1000, 5000],
        loss: vec![0.0, 1.0, 5.0, 10.0],
        quiet: 60,
        kills: 20,
        seed: 1,
        partitions: true,
        shares: vec![0.1, 10.0, 30.0, 45.0, 50.0],
        heal: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--nodes" => a.nodes = list(&it.next().unwrap_or_default()),
            "--loss" => a.loss = list(&it.next().unwrap_or_default()),
            "--quiet-secs" => a.quiet = it.next().and_then(|x| x.parse().ok()).unwrap_or(a.quiet),
            "--kills" => a.kills = it.next().and_then(|x| x.parse().ok()).unwrap_or(a.kills),
            "--seed" => a.seed = it.next().and_then(|x| x.parse().ok()).unwrap_or(a.seed),
            "--no-partitions" => a.partitions = false,
            "--partitions" => a.shares = list(&it.next().unwrap_or_default()),
            "--heal-secs" => a.heal = it.next().and_then(|x| x.parse().ok()).unwrap_or(a.heal),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

const MS: f64 = 1e6;

fn main() {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs benches without a harness too;
        // this one runs only under `cargo bench`.
        return;
    }
    let a = args();
    let join = |v: &[String]| v.join(",");
    println!("## Membership: the ring protocol in the simulator\n");
    println!(
        "Command: `cargo bench -p ferrolb-core --bench membership -- --nodes {} --loss {} --quiet-secs {} --kills {}` \
         (virtual time, seed {}: the real `core::ring` code for every node over a simulated network with \
         100-400 µs delay; K = 8 observers, heartbeat 20 ms, edge timeout 100 ms, settle 30 ms). Each row: \
         a cluster formed before the measurement, {} s at rest (packets and bytes each node sent, false \
         removals), then {} nodes killed one a second (detection: from the kill to its removal at each \
         surviving node). docs/membership.md explains the protocol.\n",
        join(&a.nodes.iter().map(ToString::to_string).collect::<Vec<_>>()),
        join(&a.loss.iter().map(ToString::to_string).collect::<Vec<_>>()),
        a.quiet,
        a.kills,
        a.seed,
        a.quiet,
        a.kills
    );
    println!(
        "| nodes | loss | pkts/s sent per node (mean / max) | bytes/s sent per node (mean) | false removals in {} s | detection p50 / p99 / max over {} kills (ms) | wall s |",
        a.quiet, a.kills
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &a.nodes {
        for &loss in &a.loss {
            let wall = Instant::now();
            let net = Network {
                loss: loss / 100.0,
                ..Network::default()
            };
            let mut sim = Sim::formed(n, a.seed ^ n as u64, Settings::default(), net);
            sim.run_for(Duration::from_secs(3));
            let before: Vec<_> = (0..n as u32).map(|i| sim.traffic(i)).collect();
            let t0 = sim.now();
            sim.run_for(Duration::from_secs(a.quiet));
            let per_node: Vec<(f64, f64)> = (0..n as u32)
                .map(|i| {
                    let (b, t) = (before[i as usize], sim.traffic(i));
                    (
                        (t.sent - b.sent) as f64 / a.quiet as f64,
                        (t.sent_bytes - b.sent_bytes) as f64 / a.quiet as f64,
                    )
                })
                .collect();
            let mean_p = per_node.iter().map(|x| x.0).sum::<f64>() / n as f64;
            let max_p = per_node.iter().map(|x| x.0).fold(0.0, f64::max);
            let mean_b = per_node.iter().map(|x| x.1).sum::<f64>() / n as f64;
            let false_removals = sim.removals_since(t0).len();
            if std::env::var_os("SIM_KINDS").is_some() {
                eprintln!("{n} nodes, {loss} %: {:?}", sim.sent_by_kind());
            }
            // Kills, one a second: detection = kill to removal, at every
            // surviving node.
            let mut rng = Rng::new(a.seed);
            let mut detect = Vec::new();
            let mut missed = 0usize;
            let mut killed = Vec::new();
            for _ in 0..a.kills {
                let victim = loop {
                    let v = rng.below(n as u64) as u32;
                    if !killed.contains(&v) {
                        break v;
                    }
                };
                killed.push(victim);
                let at = sim.now();
                sim.kill(victim);
                sim.run_for(Duration::from_secs(1));
                for by in (0..n as u32).filter(|i| !killed.contains(i)) {
                    let t = sim.records.iter().rev().find_map(|r| match r {
                        Record::Removed {
                            at: when,
                            by: b,
                            node,
                            ..
                        } if *b == by && *node == victim && *when >= at => Some(*when),
                        _ => None,
                    });
                    match t {
                        Some(t) => detect.push((t - at) as f64 / MS),
                        None => missed += 1,
                    }
                }
            }
            let wrong = sim
                .removals_since(t0)
                .iter()
                .filter(|(_, _, node)| !killed.contains(node))
                .count();
            detect.sort_by(f64::total_cmp);
            println!(
                "| {n} | {loss} % | {mean_p:.0} / {max_p:.0} | {mean_b:.0} | {false_removals} | {:.0} / {:.0} / {:.0}{} | {:.0} |",
                pct(&detect, 50.0),
                pct(&detect, 99.0),
                pct(&detect, 100.0),
                if missed > 0 || wrong > 0 {
                    format!(" ({missed} not removed, {wrong} wrong removals)")
                } else {
                    String::new()
                },
                wall.elapsed().as_secs_f64()
            );
        }
    }
    if !a.partitions {
        return;
    }
    println!();
    println!(
        "Partitions (`--partitions {}`): a formed cluster is split, the smaller side chosen at random (at an even \
         split, the side without the lowest name), sampled every 5 ms; then the partition heals and the \
         cluster is watched for {} s of virtual time.\n",
        join(&a.shares.iter().map(ToString::to_string).collect::<Vec<_>>()),
        a.heal
    );
    println!(
        "| nodes | partition (minority share) | minority all fenced after (ms) | majority agreed after (ms) | majority nodes removed | re-formed after heal (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &a.nodes {
        for &share in &a.shares {
            let minority = ((n as f64 * share / 100.0).round() as usize).max(1);
            let mut sim = Sim::formed(n, a.seed ^ 77, Settings::default(), Network::default());
            sim.run_for(Duration::from_secs(3));
            let mut rng = Rng::new(a.seed ^ n as u64);
            let mut group = vec![0u32; n];
            let mut placed = 0;
            while placed < minority {
                let i = rng.below(n as u64) as usize;
                if group[i] == 0 {
                    group[i] = 1;
                    placed += 1;
                }
            }
            let small: Vec<u32> = (0..n as u32).filter(|&i| group[i as usize] == 1).collect();
            let big: Vec<u32> = (0..n as u32).filter(|&i| group[i as usize] == 0).collect();
            // An even split keeps the side with the lowest name.
            let (small, big) = if small.len() * 2 == n && small.contains(&0) {
                (big, small)
            } else {
                (small, big)
            };
            let t0 = sim.now();
            sim.partition(group);
            let (mut fenced_at, mut agreed_at) = (None, None);
            for step in 1..=100u64 {
                sim.run_for(Duration::from_millis(5));
                if fenced_at.is_none() && small.iter().all(|&i| !sim.member(i).may_announce()) {
                    fenced_at = Some(step * 5);
                }
                if agreed_at.is_none() && sim.agree_on(&big) {
                    agreed_at = Some(step * 5);
                }
                if fenced_at.is_some() && agreed_at.is_some() {
                    break;
                }
            }
            let wrong = sim
                .removals_since(t0)
                .iter()
                .filter(|(_, by, node)| big.contains(by) && big.contains(node))
                .count();
            let show = |x: Option<u64>| x.map_or("never (500 ms)".to_owned(), |v| format!("≤ {v}"));
            let healed = if a.heal == 0 {
                "not watched".to_owned()
            } else {
                sim.heal();
                let all: Vec<u32> = (0..n as u32).collect();
                (1..=(a.heal * 40))
                    .find(|_| {
                        sim.run_for(Duration::from_millis(25));
                        sim.agree_on(&all) && all.iter().all(|&i| sim.member(i).may_announce())
                    })
                    .map_or(format!("not in {} s", a.heal), |step| {
                        format!("≤ {}", step * 25)
                    })
            };
            println!(
                "| {n} | {} of {n} ({:.1} %) | {} | {} | {wrong} | {healed} |",
                small.len(),
                100.0 * small.len() as f64 / n as f64,
                show(fenced_at),
                show(agreed_at),
            );
        }
    }
}
