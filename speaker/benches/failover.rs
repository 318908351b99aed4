//! Speaker failover in the three-node lab (`tests/common/mod.rs`): client-seen
//! outage when the owner's link is cut, SIGKILL of the owner's speaker to the
//! first reply from the new owner, outage on SIGTERM, and steady membership
//! traffic and CPU per node.
//!
//! `cargo bench -p ferrolb-speaker --bench failover` (root; `FERROLB_TRIALS`
//! changes the 20 trials per case). The client probes the address with an
//! ARP request every 10 ms and records every reply; the outage is the
//! longest silence between consecutive replies around the event.
//! Prints a Markdown section for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferrolb_core::packet::MacAddr;
use nix::sys::signal::Signal;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const PROBE_EVERY: Duration = Duration::from_millis(10);

fn main() {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benches with harness=false too; only run under `cargo bench`.
        return;
    }
    let trials: usize = std::env::var("FERROLB_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("FERROLB_LAB_QUIET", "1") };
    let mut lab = Lab::new("b");
    lab.populate(vec![LabService {
        name: "web",
        addresses: vec!["192.0.2.50"],
        local_on: None,
    }]);
    lab.start_all(&[]);
    let owner = lab.wait_owner(VIP);
    let rank = expected_rank("192.0.2.50");
    assert_eq!(owner, rank[0]);
    let next = rank[1];
    let mac = |i: usize| -> MacAddr { node_mac(i).parse().unwrap() };

    // Steady state: membership packets and CPU per node over 10 s.
    let window = Duration::from_secs(10);
    let before: Vec<(f64, u64)> = (0..3)
        .map(|i| (sent(&lab, i), cpu_ticks(&lab, i)))
        .collect();
    std::thread::sleep(window);
    let after: Vec<(f64, u64)> = (0..3)
        .map(|i| (sent(&lab, i), cpu_ticks(&lab, i)))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let steady: Vec<(f64, f64)> = before
        .iter()
        .zip(&after)
        .map(|((s0, c0), (s1, c1))| {
            (
                (s1 - s0) / window.as_secs_f64(),
                (c1 - c0) as f64 / tick / window.as_secs_f64() * 100.0,
            )
        })
        .collect();

    let mut link = Vec::new();
    let mut kill = Vec::new();
    let mut kill_gap = Vec::new();
    let mut term = Vec::new();
    for t in 0..trials {
        // Link cut: the owner's port on the bridge goes down (cable pulled).
        let port = format!("p{}", owner + 2);
        let (gap, _) = trial(&lab, mac(owner), mac(next), || {
            run_ok(&["ip", "-n", lab.ns("lan"), "link", "set", &port, "down"]);
        });
        link.push(gap);
        run_ok(&["ip", "-n", lab.ns("lan"), "link", "set", &port, "up"]);
        wait_back(&lab, mac(owner));

        // SIGKILL of the owner's speaker.
        let (gap, first) = trial(&lab, mac(owner), mac(next), || {
            lab.speakers[owner]
                .as_ref()
                .unwrap()
                .signal(Signal::SIGKILL);
        });
        kill.push(first);
        kill_gap.push(gap);
        restart(&mut lab, owner);

        // SIGTERM of the owner's speaker.
        let (gap, _) = trial(&lab, mac(owner), mac(next), || {
            lab.speakers[owner]
                .as_ref()
                .unwrap()
                .signal(Signal::SIGTERM);
        });
        term.push(gap);
        restart(&mut lab, owner);
        eprintln!(
            "trial {t}: link cut {:?}, SIGKILL first reply {:?} (gap {:?}), SIGTERM gap {:?}",
            link[t], kill[t], kill_gap[t], term[t]
        );
    }

    println!("## Speaker failover\n");
    println!(
        "`cargo bench -p ferrolb-speaker --bench failover` (root). Machine: 2 cores (AMD EPYC), Debian bookworm, kernel {}; three speakers (release build) in network namespaces on one bridge, default settings (heartbeat 20 ms, timeout 150 ms, 3 gratuitous bursts 600 ms apart). The client sends an ARP request for the address every 10 ms and records every reply; the outage is the longest silence between two consecutive replies (from any node) from just before the event to the first reply of the new owner, so about 10 ms means no probe went unanswered. {trials} trials per case.\n",
        kernel()
    );
    println!("| case | p50 | p99 | max |\n|---|---|---|---|");
    row(
        "owner's link cut (bridge port down): client-seen outage",
        &mut link,
    );
    row(
        "SIGKILL of the owner's speaker: kill to first reply from the new owner",
        &mut kill,
    );
    row("SIGKILL: client-seen outage", &mut kill_gap);
    row(
        "SIGTERM of the owner's speaker: client-seen outage",
        &mut term,
    );
    println!("\nSteady state, per node (3 nodes, 10 s):\n");
    println!("| node | membership packets sent/s | speaker CPU |\n|---|---|---|");
    for (i, (pps, cpu)) in steady.iter().enumerate() {
        println!("| {} | {pps:.0} | {cpu:.2} % |", NODES[i]);
    }
    println!(
        "\nEach speaker sends one heartbeat per peer per interval: (N-1) x 50 packets/s of 90 bytes at the default 20 ms, linear in the number of nodes (100 nodes: 4,950 packets/s, about 450 kB/s per node each way)."
    );
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn row(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "| {name} | {} | {} | {} |",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    );
}

/// Runs `event` while probing; returns the client-seen gap and the time
/// from the event to the first reply from `new`.
fn trial(lab: &Lab, old: MacAddr, new: MacAddr, event: impl FnOnce()) -> (Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_in_background(lab, VIP, PROBE_EVERY, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let at = Instant::now();
    event();
    eventually("the new owner answering", Duration::from_secs(20), || {
        lab.arp_answers(VIP, Duration::from_millis(50))
            .contains(&new)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let replies = prober.join().unwrap();
    let first_new = replies
        .iter()
        .find(|(t, m)| *m == new && *t >= at - Duration::from_millis(50))
        .map(|(t, _)| *t)
        .expect("a reply from the new owner");
    // The longest silence between two consecutive replies (from anyone)
    // from just before the event to the first reply of the new owner: with
    // a probe every 10 ms, about 10 ms means no probe went unanswered.
    let _ = old;
    let window: Vec<Instant> = replies
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= at - Duration::from_millis(100) && *t <= first_new)
        .collect();
    let silence = window
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (silence, first_new.saturating_duration_since(at))
}

fn wait_back(lab: &Lab, owner: MacAddr) {
    eventually(
        "the first-ranked node owning again",
        Duration::from_secs(30),
        || {
            let macs = lab.arp_answers(VIP, Duration::from_millis(100));
            (!macs.is_empty() && macs.iter().all(|m| *m == owner)).then_some(())
        },
    );
    // Let the takeover's gratuitous bursts finish.
    std::thread::sleep(Duration::from_millis(1500));
}

fn restart(lab: &mut Lab, i: usize) {
    if let Some(mut s) = lab.speakers[i].take() {
        let _ = s.child.wait();
    }
    lab.start_speaker(i, &[]);
    eventually(
        "the restarted speaker ready",
        Duration::from_secs(30),
        || lab.ready(i).then_some(()),
    );
    wait_back(lab, node_mac(i).parse().unwrap());
}

fn sent(lab: &Lab, i: usize) -> f64 {
    metric(
        &lab.metrics(i).expect("metrics"),
        "ferrolb_membership_packets_sent_total",
    )
}

fn cpu_ticks(lab: &Lab, i: usize) -> u64 {
    let pid = lab.speakers[i].as_ref().unwrap().child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: utime is the 14th field overall.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}
