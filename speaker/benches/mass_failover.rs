//! Mass failover in the speaker's three-node lab (`tests/common/mod.rs`):
//! node-a owns 1,000 addresses (IPv4 and IPv6, chosen so that the election
//! ranks node-a first for every one), its speaker is killed with SIGKILL,
//! and the client measures, per address, how long until
//!
//! - the new owner answers an ARP request (a sample of IPv4 addresses, each
//!   probed every 10 ms), and
//! - the client is told by a gratuitous ARP or unsolicited NA from the new
//!   owner (every address; this is what moves clients that hold an entry),
//!
//! and how the gratuitous frames were paced (`--gratuitous-rate`, frames
//! per second per interface). After each trial node-a's speaker starts again
//! and takes the addresses back once its hold-down ends.
//!
//! `cargo bench -p ferrolb-speaker --bench mass_failover` (root).
//! `FERROLB_TRIALS` (default 5) trials; `FERROLB_ADDRESSES` (default 1000).
//! Prints a Markdown section for BENCHMARKS.md on stdout; progress on stderr.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use ferrolb_core::packet::ndp::{NdpFrame, NdpMessage};
use ferrolb_core::packet::{ArpFrame, ArpOperation, MacAddr};
use ferrolb_tests::lab::metric;
use nix::sys::signal::Signal;

const SAMPLE: usize = 50;
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long after the kill the client keeps listening: the first bursts
/// and both repeats (600 ms apart) of every address.
const WATCH: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, Debug)]
enum Seen {
    /// A reply to the client's own request.
    Answer,
    /// A gratuitous ARP (request or reply) or an unsolicited NA.
    Claim,
}

/// Addresses the election gives to node-a first, `count` of them: every
/// IPv4 address of 198.51.100.0/24 and 203.0.113.0/24 that ranks node-a
/// first, then IPv6 addresses of 2001:db8:1::/112.
fn addresses(count: usize) -> Vec<IpAddr> {
    let v4 = (1..255u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
        .chain((1..255u8).map(|i| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i))));
    let v6 = (1..u16::MAX).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i)));
    v4.chain(v6)
        .filter(|a| expected_rank(&a.to_string())[0] == 0)
        .take(count)
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn announced(lab: &Lab, i: usize) -> Option<f64> {
    lab.metrics(i)
        .map(|m| metric(&m, "ferrolb_announced_addresses"))
}

/// Probes `sample` from the client every [`PROBE_EVERY`] and records every
/// ARP and NDP frame that answers or claims one of `watched`, until `stop`.
fn listen(
    lab: &Lab,
    sample: Vec<Ipv4Addr>,
    watched: BTreeSet<IpAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(SystemTime, Seen, IpAddr, MacAddr)>> {
    lab.spawn_in("cli", move || {
        let index = nix::net::if_::if_nametoindex("eth0").expect("client eth0");
        // ETH_P_ALL: ARP and IPv6 frames on one socket.
        let socket = ferrolb_speaker::sockets::packet_socket(0x0003, index).expect("packet socket");
        let _ = socket.set_recv_buffer_size(8 << 20);
        let client: MacAddr = CLIENT_MAC.parse().unwrap();
        let mut buf = [0u8; 1600];
        let mut seen = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                for &target in &sample {
                    let frame = ArpFrame {
                        eth_destination: MacAddr::BROADCAST,
                        eth_source: client,
                        operation: ArpOperation::Request,
                        sender_mac: client,
                        sender_ip: CLIENT_IP,
                        target_mac: MacAddr::ZERO,
                        target_ip: target,
                    }
                    .to_bytes();
                    let _ = socket.send(&frame);
                }
                next += PROBE_EVERY;
            }
            while let Ok((n, stamp)) = ferrolb_speaker::sockets::recv_stamped(&socket, &mut buf) {
                let at = stamp.unwrap_or_else(SystemTime::now);
                let frame = &buf[..n];
                if let Ok(f) = ArpFrame::parse(frame) {
                    let ip = IpAddr::V4(f.sender_ip);
                    if f.sender_mac == client || !watched.contains(&ip) {
                        continue;
                    }
                    if f.sender_ip == f.target_ip {
                        seen.push((at, Seen::Claim, ip, f.sender_mac));
                    } else if f.operation == ArpOperation::Reply && f.eth_destination == client {
                        seen.push((at, Seen::Answer, ip, f.sender_mac));
                    }
                } else if let Ok(f) = NdpFrame::parse(frame)
                    && let NdpMessage::Advertisement(na) = f.message
                    && !na.solicited
                    && watched.contains(&IpAddr::V6(na.target))
                {
                    let mac = na.target_mac.unwrap_or(f.eth_source);
                    seen.push((at, Seen::Claim, IpAddr::V6(na.target), mac));
                }
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        seen
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benches with harness=false too; only run under `cargo bench`.
        return;
    }
    let trials: usize = std::env::var("FERROLB_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let count: usize = std::env::var("FERROLB_ADDRESSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("FERROLB_LAB_QUIET", "1") };
    let all = addresses(count);
    let v4: Vec<Ipv4Addr> = all
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect();
    let step = (v4.len() / SAMPLE).max(1);
    let sample: Vec<Ipv4Addr> = v4.iter().step_by(step).take(SAMPLE).copied().collect();
    eprintln!(
        "{} addresses ({} IPv4, {} IPv6), all ranked node-a first; {} IPv4 probed",
        all.len(),
        v4.len(),
        all.len() - v4.len(),
        sample.len()
    );
    let mut lab = Lab::new("m");
    let services: Vec<LabService> = all
        .iter()
        .enumerate()
        .map(|(i, a)| LabService {
            name: Box::leak(format!("svc-{i}").into_boxed_str()),
            addresses: vec![Box::leak(a.to_string().into_boxed_str())],
            local_on: None,
        })
        .collect();
    let created = Instant::now();
    lab.populate_with(
        &["198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/112"],
        services,
    );
    eprintln!(
        "created {} Services in {:.1?}",
        all.len(),
        created.elapsed()
    );
    lab.start_all(&[]);
    let node_macs: Vec<MacAddr> = (0..NODES.len())
        .map(|i| node_mac(i).parse().unwrap())
        .collect();
    let owns_all = |lab: &Lab| {
        eventually(
            "node-a announcing every address, the others none",
            Duration::from_secs(120),
            || {
                (announced(lab, 0)? == all.len() as f64
                    && announced(lab, 1)? == 0.0
                    && announced(lab, 2)? == 0.0)
                    .then_some(())
            },
        )
    };
    owns_all(&lab);
    let watched: BTreeSet<IpAddr> = all.iter().copied().collect();
    let mut answer_ms = Vec::new();
    let mut told_ms = Vec::new();
    let mut untold = 0usize;
    let mut unanswered = 0usize;
    let mut peak_10ms = 0usize;
    let mut span_ms = Vec::new();
    let mut owner_start_ms = Vec::new();
    let mut owner_span_ms = Vec::new();
    let mut frames_per_trial = Vec::new();
    let mut old_owner_after = 0usize;
    for trial in 0..trials {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = listen(&lab, sample.clone(), watched.clone(), stop.clone());
        // Let the prober run a moment so the kill falls between probes.
        std::thread::sleep(Duration::from_millis(200 + 37 * trial as u64));
        let t0 = SystemTime::now();
        lab.speakers[0]
            .as_ref()
            .expect("node-a's speaker")
            .signal(Signal::SIGKILL);
        std::thread::sleep(WATCH);
        stop.store(true, Ordering::Relaxed);
        let seen = listener.join().expect("listener");
        let after: Vec<_> = seen
            .iter()
            .filter_map(|(at, kind, ip, mac)| {
                at.duration_since(t0)
                    .ok()
                    .map(|d| (d.as_secs_f64() * 1000.0, *kind, *ip, *mac))
            })
            .collect();
        old_owner_after += after.iter().filter(|s| s.3 == node_macs[0]).count();
        let mut first_answer: BTreeMap<IpAddr, f64> = BTreeMap::new();
        let mut first_claim: BTreeMap<IpAddr, f64> = BTreeMap::new();
        let mut claims: Vec<f64> = Vec::new();
        for (ms, kind, ip, mac) in &after {
            if *mac == node_macs[0] {
                continue;
            }
            match kind {
                Seen::Answer => {
                    first_answer.entry(*ip).or_insert(*ms);
                }
                Seen::Claim => {
                    first_claim.entry(*ip).or_insert(*ms);
                    claims.push(*ms);
                }
            }
        }
        for a in &sample {
            match first_answer.get(&IpAddr::V4(*a)) {
                Some(ms) => answer_ms.push(*ms),
                None => unanswered += 1,
            }
        }
        for a in &all {
            match first_claim.get(a) {
                Some(ms) => told_ms.push(*ms),
                None => untold += 1,
            }
        }
        claims.sort_by(f64::total_cmp);
        // Frames in the busiest 10 ms window, and how long the first
        // bursts took from the first claim to the last address's first.
        for (i, t) in claims.iter().enumerate() {
            let n = claims[i..].iter().take_while(|x| **x < t + 10.0).count();
            peak_10ms = peak_10ms.max(n);
        }
        // Per new owner: kill to its first claim, and from there to its
        // last address's first claim (the time its first bursts took).
        let mut by_owner: BTreeMap<MacAddr, (f64, f64)> = BTreeMap::new();
        for (ms, kind, ip, mac) in &after {
            if matches!(kind, Seen::Claim)
                && *mac != node_macs[0]
                && first_claim.get(ip) == Some(ms)
            {
                let e = by_owner.entry(*mac).or_insert((*ms, *ms));
                e.0 = e.0.min(*ms);
                e.1 = e.1.max(*ms);
            }
        }
        for (first, last) in by_owner.values() {
            owner_start_ms.push(*first);
            owner_span_ms.push(last - first);
        }
        let firsts: Vec<f64> = first_claim.values().copied().collect();
        if let (Some(lo), Some(hi)) = (
            firsts.iter().copied().reduce(f64::min),
            firsts.iter().copied().reduce(f64::max),
        ) {
            span_ms.push(hi - lo);
        }
        frames_per_trial.push(claims.len());
        eprintln!(
            "trial {}: {} answered, {} told; last told at {:.0} ms; {} claim frames; per owner (first, last) {:?}",
            trial + 1,
            first_answer.len(),
            first_claim.len(),
            firsts.iter().copied().fold(0.0, f64::max),
            claims.len(),
            by_owner.values().collect::<Vec<_>>()
        );
        lab.start_speaker(0, &[]);
        owns_all(&lab);
    }
    answer_ms.sort_by(f64::total_cmp);
    told_ms.sort_by(f64::total_cmp);
    span_ms.sort_by(f64::total_cmp);
    owner_start_ms.sort_by(f64::total_cmp);
    owner_span_ms.sort_by(f64::total_cmp);
    println!(
        "## Mass failover: the owner of {} addresses dies\n",
        all.len()
    );
    println!(
        "Command: `cargo bench -p ferrolb-speaker --bench mass_failover` (root; {trials} trials). The speaker's \
         three-node lab (test API server; no kube-proxy): {} Services whose addresses ({} IPv4 from \
         198.51.100.0/24 and 203.0.113.0/24, {} IPv6 from 2001:db8:1::/112) the election gives to node-a \
         first, so node-a owns all of them; its speaker is killed with SIGKILL and node-b and node-c take \
         over their shares. The client probes {} of the IPv4 addresses with an ARP request every 10 ms \
         and records every gratuitous ARP and unsolicited NA (kernel receive timestamps); times are from \
         the kill. Speakers run with their defaults: `--gratuitous-rate` 50,000 frames/s per interface \
         (up to 512 at once), 3 bursts 600 ms apart, each burst a gratuitous ARP request and reply (IPv4) \
         or one unsolicited NA (IPv6). After each trial node-a's speaker starts again and takes its \
         addresses back after its hold-down.\n",
        all.len(),
        v4.len(),
        all.len() - v4.len(),
        sample.len(),
    );
    println!("| measure | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| new owner answers the client's ARP request (ms) | {}{} | {:.0} | {:.0} | {:.0} |",
        answer_ms.len(),
        if unanswered > 0 {
            format!(" ({unanswered} never)")
        } else {
            String::new()
        },
        pct(&answer_ms, 50.0),
        pct(&answer_ms, 99.0),
        pct(&answer_ms, 100.0)
    );
    println!(
        "| client told by the new owner's gratuitous frame (ms) | {}{} | {:.0} | {:.0} | {:.0} |",
        told_ms.len(),
        if untold > 0 {
            format!(" ({untold} never)")
        } else {
            String::new()
        },
        pct(&told_ms, 50.0),
        pct(&told_ms, 99.0),
        pct(&told_ms, 100.0)
    );
    println!(
        "| first bursts: first to last address, both new owners (ms) | {} | {:.1} | {:.1} | {:.1} |",
        span_ms.len(),
        pct(&span_ms, 50.0),
        pct(&span_ms, 99.0),
        pct(&span_ms, 100.0)
    );
    println!(
        "| a new owner's first claim (ms) | {} | {:.0} | {:.0} | {:.0} |",
        owner_start_ms.len(),
        pct(&owner_start_ms, 50.0),
        pct(&owner_start_ms, 99.0),
        pct(&owner_start_ms, 100.0)
    );
    println!(
        "| a new owner's first bursts: its first to its last address (ms) | {} | {:.1} | {:.1} | {:.1} |",
        owner_span_ms.len(),
        pct(&owner_span_ms, 50.0),
        pct(&owner_span_ms, 99.0),
        pct(&owner_span_ms, 100.0)
    );
    println!();
    println!(
        "Gratuitous frames seen by the client per trial: {} (mean; 3 bursts of every address); at most {} in \
         any 10 ms window (both new owners together). Frames from the killed owner after the kill: {}.",
        frames_per_trial.iter().sum::<usize>() / frames_per_trial.len().max(1),
        peak_10ms,
        old_owner_after
    );
}
