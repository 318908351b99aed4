//! Layer-2 benchmarks in the speaker's three-node lab (`tests/common/mod.rs`),
//! with keepalived (VRRP, Debian's package) in the same run and the same lab:
//!
//! - failover: the owner's link cut, SIGKILL and SIGTERM of the owner's agent,
//!   for ferrolb with its defaults and for keepalived with 1 s (its default)
//!   and 10 ms advertisements (`vrrp_version 3`), with ratios;
//! - ARP reply latency from the client: an address the speaker answers beside
//!   the owner node's own address, which the kernel answers;
//! - steady state per node: packets sent per second, CPU, and replies from a
//!   node that is not the owner (spurious owner changes).
//!
//! `cargo bench -p ferrolb-speaker --bench layer2` (root; keepalived installed,
//! see scripts/install-deps.sh). `FERROLB_TRIALS` changes the 20 trials per
//! case. The client probes the address with an ARP request every 10 ms and
//! records every reply. Prints a Markdown section for BENCHMARKS.md on stdout;
//! progress goes to stderr.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferrolb_core::packet::MacAddr;
use ferrolb_tests::lab::{metric, run_with_input};
use nix::sys::signal::Signal;

/// The address ferrolb announces (a Service's status address).
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// The address keepalived holds (its `virtual_ipaddress`).
const KA_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);
const PROBE_EVERY: Duration = Duration::from_millis(10);
const ARP_SAMPLES: usize = 1000;
const STEADY: Duration = Duration::from_secs(10);

fn main() {
    if std::env::args().any(|a| a == "--list") || !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benches with harness=false too; only run under `cargo bench`.
        return;
    }
    let trials: usize = std::env::var("FERROLB_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let keepalived_version = keepalived_version();
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

    eprintln!("ARP reply latency ({ARP_SAMPLES} samples each)");
    let node_address: Ipv4Addr = node_ip(owner).parse().unwrap();
    let (speaker_rtt, kernel_rtt) = arp_latency(&lab, VIP, node_address, node_mac(owner));

    let mut systems: Vec<System> = Vec::new();
    for (label, extra) in [
        ("ferrolb, defaults", vec![]),
        (
            "ferrolb, 10 ms heartbeat, 40 ms timeout",
            vec![
                "--membership-interval",
                "10ms",
                "--membership-timeout",
                "40ms",
            ],
        ),
    ] {
        if !systems.is_empty() {
            stop_speakers(&mut lab);
            lab.start_all(&extra);
            assert_eq!(lab.wait_owner(VIP), owner);
            wait_back(&lab, VIP, mac(owner));
        }
        let mut ferrolb = Ferrolb { extra };
        eprintln!("{label}: steady state");
        let steady = steady(&lab, &ferrolb, owner);
        let failover = failover(&mut lab, &mut ferrolb, owner, next, trials);
        systems.push(System {
            label: label.to_owned(),
            steady,
            failover,
        });
    }
    stop_speakers(&mut lab);

    for (advert, version) in [(Duration::from_secs(1), 2), (Duration::from_millis(10), 3)] {
        let mut ka = Keepalived::new(&lab, advert, version, owner, next);
        for i in 0..NODES.len() {
            ka.start(&lab, i);
        }
        wait_back(&lab, KA_VIP, mac(owner));
        let label = format!("keepalived, {} adverts", ka.label());
        eprintln!("{label}: steady state");
        let steady = steady(&lab, &ka, owner);
        let failover = failover(&mut lab, &mut ka, owner, next, trials);
        systems.push(System {
            label,
            steady,
            failover,
        });
        // Dropping `ka` stops its daemons (SIGTERM, so they remove their address).
    }

    report(
        trials,
        &keepalived_version,
        owner,
        (&speaker_rtt, &kernel_rtt),
        &systems,
    );
}

struct System {
    label: String,
    steady: Steady,
    failover: Failover,
}

fn stop_speakers(lab: &mut Lab) {
    for i in 0..NODES.len() {
        if let Some(mut s) = lab.speakers[i].take() {
            s.signal(Signal::SIGTERM);
            let _ = s.child.wait();
        }
    }
}

fn mac(i: usize) -> MacAddr {
    node_mac(i).parse().unwrap()
}

/// One system that makes an address answer on one node: ferrolb's speakers,
/// or keepalived.
trait Announcer {
    fn vip(&self) -> Ipv4Addr;
    /// Sends `signal` to node `i`'s agent (all of its processes for SIGKILL).
    fn signal(&mut self, lab: &Lab, i: usize, signal: Signal);
    /// Starts node `i`'s agent again after a signal ended it, and waits
    /// until it owns the address again.
    fn restart(&mut self, lab: &mut Lab, i: usize);
    /// Protocol packets node `i` has sent so far (heartbeats, advertisements).
    fn packets_sent(&self, lab: &Lab, i: usize) -> f64;
    /// CPU time of node `i`'s agent so far, in clock ticks.
    fn cpu_ticks(&self, lab: &Lab, i: usize) -> u64;
}

/// ferrolb's speakers, started with `extra` flags.
struct Ferrolb {
    extra: Vec<&'static str>,
}

impl Announcer for Ferrolb {
    fn vip(&self) -> Ipv4Addr {
        VIP
    }

    fn signal(&mut self, lab: &Lab, i: usize, signal: Signal) {
        lab.speakers[i].as_ref().expect("running").signal(signal);
    }

    fn restart(&mut self, lab: &mut Lab, i: usize) {
        if let Some(mut s) = lab.speakers[i].take() {
            let _ = s.child.wait();
        }
        lab.start_speaker(i, &self.extra);
        eventually(
            "the restarted speaker ready",
            Duration::from_secs(30),
            || lab.ready(i).then_some(()),
        );
        wait_back(lab, VIP, mac(i));
    }

    fn packets_sent(&self, lab: &Lab, i: usize) -> f64 {
        metric(
            &lab.metrics(i).expect("metrics"),
            "ferrolb_membership_packets_sent_total",
        )
    }

    fn cpu_ticks(&self, lab: &Lab, i: usize) -> u64 {
        ferrolb_tests::procfs::cpu_ticks(lab.speakers[i].as_ref().unwrap().child.id())
    }
}

/// keepalived in every node namespace: one VRRP instance holding [`KA_VIP`],
/// priorities chosen so that its owner and runner-up are ferrolb's.
struct Keepalived {
    dir: PathBuf,
    advert: Duration,
    version: u8,
    priority: [u8; 3],
    children: Vec<Option<Child>>,
}

impl Keepalived {
    fn new(lab: &Lab, advert: Duration, version: u8, owner: usize, next: usize) -> Keepalived {
        let dir = std::env::temp_dir().join(format!(
            "ferrolb-bench-keepalived-{}-{}",
            std::process::id(),
            advert.as_millis()
        ));
        std::fs::create_dir_all(&dir).expect("keepalived directory");
        let mut priority = [50; 3];
        priority[owner] = 150;
        priority[next] = 100;
        // Count VRRP packets each node sends (keepalived keeps no such counter).
        for n in NODES {
            let rules = "add table ip flbbench\n\
                         add chain ip flbbench out { type filter hook output priority 0; policy accept; }\n\
                         flush chain ip flbbench out\n\
                         add rule ip flbbench out ip protocol vrrp counter\n";
            run_with_input(
                "ip",
                &["netns", "exec", lab.ns(n), "nft", "-f", "-"],
                Some(rules),
            )
            .unwrap_or_else(|e| panic!("nft counter in {n}: {e:#}"));
        }
        Keepalived {
            dir,
            advert,
            version,
            priority,
            children: (0..NODES.len()).map(|_| None).collect(),
        }
    }

    fn label(&self) -> String {
        if self.advert >= Duration::from_secs(1) {
            format!("{} s", self.advert.as_secs())
        } else {
            format!("{} ms", self.advert.as_millis())
        }
    }

    fn start(&mut self, lab: &Lab, i: usize) {
        let node = NODES[i];
        let conf = self.dir.join(format!("{node}.conf"));
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id {node}\n  vrrp_version {}\n}}\n\
                 vrrp_instance lab {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 70\n  \
                 priority {}\n  advert_int {}\n  virtual_ipaddress {{\n    {KA_VIP}/24\n  }}\n}}\n",
                self.version,
                self.priority[i],
                self.advert.as_secs_f64()
            ),
        )
        .expect("keepalived.conf");
        // A SIGKILLed keepalived leaves its address on the interface; remove it
        // as whoever restarts it would have to.
        let _ = run(
            "ip",
            &[
                "-n",
                lab.ns(node),
                "addr",
                "del",
                &format!("{KA_VIP}/24"),
                "dev",
                "eth0",
            ],
        );
        let path = |what: &str| {
            self.dir
                .join(format!("{node}.{what}"))
                .to_string_lossy()
                .into_owned()
        };
        let log = std::fs::File::create(path("log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", lab.ns(node), "keepalived"])
            .args(["--dont-fork", "--log-console", "--no-syslog", "--vrrp"])
            .args(["--use-file", &conf.to_string_lossy()])
            .args(["--pid", &path("pid"), "--vrrp_pid", &path("vrrp.pid")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so that SIGKILL reaches the VRRP child too.
            .process_group(0)
            .spawn()
            .expect("keepalived (scripts/install-deps.sh installs it)");
        self.children[i] = Some(child);
    }

    fn vrrp_child(&self, i: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{}.vrrp.pid", NODES[i])))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Announcer for Keepalived {
    fn vip(&self) -> Ipv4Addr {
        KA_VIP
    }

    fn signal(&mut self, _lab: &Lab, i: usize, signal: Signal) {
        let pid = self.children[i].as_ref().expect("running").id() as i32;
        let target = if signal == Signal::SIGKILL {
            // The whole group: the parent would respawn a killed VRRP child.
            nix::unistd::Pid::from_raw(-pid)
        } else {
            nix::unistd::Pid::from_raw(pid)
        };
        nix::sys::signal::kill(target, signal).expect("signal keepalived");
    }

    fn restart(&mut self, lab: &mut Lab, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.wait();
        }
        // The VRRP child may outlive its parent for a moment.
        eventually(
            "keepalived's VRRP child gone",
            Duration::from_secs(10),
            || {
                self.vrrp_child(i)
                    .is_none_or(|p| !PathBuf::from(format!("/proc/{p}")).exists())
                    .then_some(())
            },
        );
        self.start(lab, i);
        wait_back(lab, KA_VIP, mac(i));
    }

    fn packets_sent(&self, lab: &Lab, i: usize) -> f64 {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                lab.ns(NODES[i]),
                "nft",
                "list",
                "chain",
                "ip",
                "flbbench",
                "out",
            ],
        )
        .expect("nft list chain");
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                return words.next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
            }
        }
        0.0
    }

    fn cpu_ticks(&self, _lab: &Lab, i: usize) -> u64 {
        let parent = self.children[i].as_ref().unwrap().id();
        ferrolb_tests::procfs::cpu_ticks(parent)
            + self
                .vrrp_child(i)
                .map_or(0, ferrolb_tests::procfs::cpu_ticks)
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Failover trials for one system.
#[derive(Default)]
struct Failover {
    link: Vec<Duration>,
    kill_first: Vec<Duration>,
    kill_gap: Vec<Duration>,
    term: Vec<Duration>,
    /// Replies during the trials from a node that was neither the old nor
    /// the new owner.
    spurious: usize,
    /// SIGKILL trials after which the old owner still answered once the new
    /// one had taken over: two nodes answering for the address.
    split_after_kill: usize,
}

fn failover(
    lab: &mut Lab,
    sys: &mut dyn Announcer,
    owner: usize,
    next: usize,
    trials: usize,
) -> Failover {
    let vip = sys.vip();
    let mut f = Failover::default();
    for t in 0..trials {
        // Link cut: the owner's port on the bridge goes down (cable pulled).
        let r = trial(lab, vip, mac(owner), mac(next), || {
            lab.net.set_port(NODES[owner], false).expect("port down");
        });
        f.link.push(r.gap);
        f.spurious += r.spurious;
        lab.net.set_port(NODES[owner], true).expect("port up");
        wait_back(lab, vip, mac(owner));

        let shared: &Lab = lab;
        let r = trial(shared, vip, mac(owner), mac(next), || {
            sys.signal(shared, owner, Signal::SIGKILL)
        });
        f.kill_first.push(r.first_new);
        f.kill_gap.push(r.gap);
        f.spurious += r.spurious;
        f.split_after_kill += usize::from(r.old_after_new);
        sys.restart(lab, owner);

        let shared: &Lab = lab;
        let r = trial(shared, vip, mac(owner), mac(next), || {
            sys.signal(shared, owner, Signal::SIGTERM)
        });
        f.term.push(r.gap);
        f.spurious += r.spurious;
        sys.restart(lab, owner);
        eprintln!(
            "  trial {t}: link cut {:?}, SIGKILL first reply {:?} (gap {:?}), SIGTERM gap {:?}",
            f.link[t], f.kill_first[t], f.kill_gap[t], f.term[t]
        );
    }
    f
}

struct Trial {
    /// The longest silence between consecutive replies (from any node), from
    /// just before the event to the first reply of the new owner: with a
    /// probe every 10 ms, about 10 ms means no probe went unanswered.
    gap: Duration,
    /// From the event to the first reply of the new owner.
    first_new: Duration,
    spurious: usize,
    old_after_new: bool,
}

/// Runs `event` while the client probes `vip` every 10 ms.
fn trial(lab: &Lab, vip: Ipv4Addr, old: MacAddr, new: MacAddr, event: impl FnOnce()) -> Trial {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_in_background(lab, vip, PROBE_EVERY, stop.clone());
    // A random moment of the heartbeat or advertisement cycle (keepalived's
    // longest is 1 s): a fixed delay after the previous takeover would always
    // hit the same phase of it.
    std::thread::sleep(Duration::from_millis(300) + jitter(Duration::from_secs(1)));
    let at = Instant::now();
    event();
    eventually("the new owner answering", Duration::from_secs(30), || {
        lab.arp_answers(vip, Duration::from_millis(50))
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
    let window: Vec<Instant> = replies
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= at - Duration::from_millis(100) && *t <= first_new)
        .collect();
    let gap = window
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    Trial {
        gap,
        first_new: first_new.saturating_duration_since(at),
        spurious: replies
            .iter()
            .filter(|(_, m)| *m != old && *m != new)
            .count(),
        // Allow one reply in flight at the moment of takeover.
        old_after_new: replies
            .iter()
            .any(|(t, m)| *m == old && *t > first_new + PROBE_EVERY * 2),
    }
}

/// A random duration in `[0, max)`, from the standard library's random hasher keys.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    max.mul_f64((h.finish() % 1_000_000) as f64 / 1_000_000.0)
}

/// Waits until only node `owner` answers for `vip`, then lets the takeover's
/// gratuitous announcements finish.
fn wait_back(lab: &Lab, vip: Ipv4Addr, owner: MacAddr) {
    eventually(
        "the first-ranked node owning again",
        Duration::from_secs(30),
        || {
            let macs = lab.arp_answers(vip, Duration::from_millis(100));
            (!macs.is_empty() && macs.iter().all(|m| *m == owner)).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
}

struct Steady {
    /// Per node: protocol packets sent per second, and CPU (% of one core).
    per_node: Vec<(f64, f64)>,
    /// Replies from a node other than the owner during the window.
    foreign_replies: usize,
    replies: usize,
}

/// 10 s with nothing happening, the client probing every 10 ms.
fn steady(lab: &Lab, sys: &dyn Announcer, owner: usize) -> Steady {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_in_background(lab, sys.vip(), PROBE_EVERY, stop.clone());
    let before: Vec<(f64, u64)> = (0..NODES.len())
        .map(|i| (sys.packets_sent(lab, i), sys.cpu_ticks(lab, i)))
        .collect();
    let start = Instant::now();
    std::thread::sleep(STEADY);
    let after: Vec<(f64, u64)> = (0..NODES.len())
        .map(|i| (sys.packets_sent(lab, i), sys.cpu_ticks(lab, i)))
        .collect();
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let replies = prober.join().unwrap();
    let tick = ferrolb_tests::procfs::clock_tick();
    Steady {
        per_node: before
            .iter()
            .zip(&after)
            .map(|((s0, c0), (s1, c1))| ((s1 - s0) / secs, (c1 - c0) as f64 / tick / secs * 100.0))
            .collect(),
        foreign_replies: replies.iter().filter(|(_, m)| *m != mac(owner)).count(),
        replies: replies.len(),
    }
}

/// Round-trip times of ARP requests from the client, alternating between
/// `speaker` (answered by ferrolb) and `kernel` (the node's own address).
fn arp_latency(
    lab: &Lab,
    speaker: Ipv4Addr,
    kernel: Ipv4Addr,
    owner_mac: String,
) -> (Vec<Duration>, Vec<Duration>) {
    let owner: MacAddr = owner_mac.parse().unwrap();
    lab.with_netns("cli", move || {
        let mut p = Prober::open();
        let (mut s, mut k) = (Vec::new(), Vec::new());
        for _ in 0..ARP_SAMPLES {
            for (target, out) in [(speaker, &mut s), (kernel, &mut k)] {
                let (rtt, mac) = p
                    .round_trip(target, Duration::from_secs(1))
                    .unwrap_or_else(|| panic!("no ARP reply for {target} within 1 s"));
                assert_eq!(mac, owner, "{target} answered by the owner");
                out.push(rtt);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        (s, k)
    })
}

fn keepalived_version() -> String {
    let out = Command::new("keepalived")
        .arg("--version")
        .output()
        .expect("keepalived is needed for the comparison (scripts/install-deps.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .unwrap_or("keepalived")
        .trim()
        .to_owned()
}

/// The value at quantile `q` (nearest rank) of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> String {
    let r = a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    if r < 1.0 {
        format!("{r:.2}×")
    } else {
        format!("{r:.1}×")
    }
}

fn report(
    trials: usize,
    keepalived_version: &str,
    owner: usize,
    (speaker_rtt, kernel_rtt): (&[Duration], &[Duration]),
    systems: &[System],
) {
    type Case = (&'static str, fn(&Failover) -> &Vec<Duration>);
    let cases: [Case; 4] = [
        ("owner's link cut: client-seen outage", |f| &f.link),
        ("agent SIGKILL: to the new owner's first reply", |f| {
            &f.kill_first
        }),
        ("agent SIGKILL: client-seen outage", |f| &f.kill_gap),
        ("agent SIGTERM: client-seen outage", |f| &f.term),
    ];
    let find = |prefix: &str| {
        systems
            .iter()
            .find(|s| s.label.starts_with(prefix))
            .expect("system measured")
    };
    let ferrolb = find("ferrolb, defaults");
    let tuned = find("ferrolb, 10 ms");
    let ka_default = find("keepalived, 1 s");
    let ka_fast = find("keepalived, 10 ms");
    println!("## Failover: ferrolb beside keepalived\n");
    println!(
        "Command: `cargo bench -p ferrolb-speaker --bench layer2` (root). Three nodes in network \
         namespaces on one bridge, a client probing the address with an ARP request every 10 ms and \
         recording every reply. ferrolb: release build, with its defaults (heartbeat 20 ms, timeout \
         130 ms), then with `--membership-interval 10ms --membership-timeout 40ms`. keepalived: \
         {keepalived_version} (Debian's package), one VRRP instance per node namespace, run in the \
         same lab right after ferrolb, once with its default 1 s advertisements (VRRP v2) and once \
         with 10 ms advertisements (`vrrp_version 3`, `advert_int 0.01`); priorities make its owner \
         and runner-up the same nodes as ferrolb's. The outage is the longest silence between two \
         consecutive replies (from any node) from just before the event to the first reply of the \
         new owner, so about 10 ms means no probe went unanswered. Each event falls at a random \
         moment (0.3-1.3 s after the probing starts), so at a random phase of the heartbeat or \
         advertisement cycle. {trials} trials per case and system; percentiles are nearest-rank, \
         so with 20 trials the p99 is the worst trial.\n"
    );
    println!("| case | system | p50 | p99 | max |\n|---|---|---|---|---|");
    for (name, get) in cases {
        for sys in systems {
            let v = sorted(get(&sys.failover));
            println!(
                "| {name} | {} | {} | {} | {} |",
                sys.label,
                ms(quantile(&v, 0.5)),
                ms(quantile(&v, 0.99)),
                ms(v[v.len() - 1])
            );
        }
    }
    let pairs = [
        ("keepalived 1 s ÷ ferrolb defaults", ka_default, ferrolb),
        ("keepalived 10 ms ÷ ferrolb defaults", ka_fast, ferrolb),
        ("keepalived 10 ms ÷ ferrolb 10 ms/40 ms", ka_fast, tuned),
    ];
    println!(
        "\nRatios, the other's figure divided by ferrolb's (above 1× means ferrolb is faster). The \
         SIGKILL client-seen outage is short for keepalived because its old node keeps answering \
         (see below), not because it takes over sooner.\n"
    );
    println!("| case | comparison | p50 | p99 |\n|---|---|---|---|");
    for (name, get) in cases {
        for (label, theirs, ours) in &pairs {
            let (t, o) = (sorted(get(&theirs.failover)), sorted(get(&ours.failover)));
            println!(
                "| {name} | {label} | {} | {} |",
                ratio(quantile(&t, 0.5), quantile(&o, 0.5)),
                ratio(quantile(&t, 0.99), quantile(&o, 0.99))
            );
        }
    }

    let f = &ferrolb.failover;
    let hard_p99 = quantile(&sorted(&f.link), 0.99).max(quantile(&sorted(&f.kill_gap), 0.99));
    let hard_max = sorted(&f.link)
        .last()
        .copied()
        .max(sorted(&f.kill_gap).last().copied())
        .unwrap_or_default();
    let graceful_p99 = quantile(&sorted(&f.term), 0.99);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    println!(
        "\nTargets for ferrolb with its defaults: hard failover p99 under 200 ms: {} ({}, worst \
         single trial {}); graceful p99 under 20 ms: {} ({}); no spurious owner change: {}.",
        verdict(hard_p99 < Duration::from_millis(200)),
        ms(hard_p99),
        ms(hard_max),
        verdict(graceful_p99 < Duration::from_millis(20)),
        ms(graceful_p99),
        verdict(f.spurious == 0 && ferrolb.steady.foreign_replies == 0),
    );
    println!(
        "\nOwners during the runs: replies from a third node (neither the old nor the new owner) \
         during the trials, and SIGKILL trials after which the old owner still answered once the \
         new one had taken over (two nodes answering ARP for the address):\n"
    );
    println!("| system | third-node replies | two owners after SIGKILL |\n|---|---|---|");
    for sys in systems {
        println!(
            "| {} | {} | {} of {} |",
            sys.label,
            sys.failover.spurious,
            sys.failover.split_after_kill,
            sys.failover.kill_first.len()
        );
    }
    println!(
        "\nA SIGKILLed keepalived leaves the address on its node's interface, so the kernel there \
         keeps answering ARP beside the new owner until someone removes it: that is why its \
         client-seen outage on SIGKILL is short while its takeover is not. ferrolb answers from \
         the speaker process, so a dead speaker stops answering."
    );

    println!("\n### Steady state\n");
    println!(
        "10 s with nothing happening, the client probing every 10 ms. Packets are ferrolb's \
         membership heartbeats (its own counter) or keepalived's VRRP advertisements (an nftables \
         counter on each node's output); CPU is the agent's user and system time (keepalived: \
         parent and VRRP child) as a share of one core, counted in 10 ms ticks (so to about \
         0.1 %).\n"
    );
    println!("| system | node | packets sent/s | CPU |\n|---|---|---|---|");
    for sys in systems {
        for (i, node) in NODES.iter().enumerate() {
            let role = if i == owner { " (owner)" } else { "" };
            let (pps, cpu) = sys.steady.per_node[i];
            println!("| {} | {node}{role} | {pps:.0} | {cpu:.1} % |", sys.label);
        }
    }
    println!("\n| system | replies from a non-owner / all replies |\n|---|---|");
    for sys in systems {
        println!(
            "| {} | {} / {} |",
            sys.label, sys.steady.foreign_replies, sys.steady.replies
        );
    }
    println!(
        "\nferrolb sends one heartbeat per peer per interval, from every node: (N-1) x 50 packets/s \
         of 90 bytes at the default 20 ms, linear in the number of nodes (100 nodes: 4,950 \
         packets/s, about 450 kB/s per node each way). VRRP has only the owner send, one multicast \
         advertisement per interval, whatever the number of nodes; a backup declares the owner \
         dead 3 intervals plus a skew ((256 - priority) / 256 of an interval) after the last \
         advertisement it heard, so a cut at a random moment costs between 2 and 3 intervals plus \
         the skew."
    );

    let s = sorted(speaker_rtt);
    let k = sorted(kernel_rtt);
    println!("\n## ARP reply latency\n");
    println!(
        "Same run and lab (`--bench layer2`, ferrolb with its defaults). The client sends an ARP \
         request and waits in poll(2) for the reply; {ARP_SAMPLES} requests for the address the \
         speaker answers (user space, AF_PACKET) alternate with {ARP_SAMPLES} for the owner node's \
         own address (the kernel answers), 2 ms apart. Time is from send to the reply reaching the \
         client's user space.\n"
    );
    println!("| answered by | p50 | p99 | max |\n|---|---|---|---|");
    println!(
        "| ferrolb speaker | {} | {} | {} |",
        us(quantile(&s, 0.5)),
        us(quantile(&s, 0.99)),
        us(s[s.len() - 1])
    );
    println!(
        "| kernel (node address) | {} | {} | {} |",
        us(quantile(&k, 0.5)),
        us(quantile(&k, 0.99)),
        us(k[k.len() - 1])
    );
    println!(
        "| ratio speaker ÷ kernel | {} | {} | |",
        ratio(quantile(&s, 0.5), quantile(&k, 0.5)),
        ratio(quantile(&s, 0.99), quantile(&k, 0.99))
    );
    println!();
}
