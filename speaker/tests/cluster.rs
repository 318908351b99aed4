//! Three real `ferrolb-speaker` processes in network namespaces, driven by
//! the test API server (see `common/mod.rs` for the lab): who answers, what
//! happens when the owner is killed or stopped, and that membership holds
//! under packet loss and forged packets.
//!
//! Needs root, iproute2, iputils-arping, ndisc6, nftables and curl. The
//! tests run one at a time (a lock), so that timing depends on one lab.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferrolb_core::packet::MacAddr;
use ferrolb_core::ring::wire::{self, Body, Message};
use ferrolb_tests::lab::metric;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const VIP6: &str = "2001:db8::49";

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn lab(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    lab.populate(vec![
        LabService {
            name: "web",
            addresses: vec!["192.0.2.50", VIP6],
            local_on: None,
        },
        // A status naming an address outside every pool: never announced.
        LabService {
            name: "rogue",
            addresses: vec!["203.0.113.9"],
            local_on: None,
        },
        // A status naming node-b's own address (outside the pool, as a
        // node address must be): no speaker answers for it.
        LabService {
            name: "node-address",
            addresses: vec!["192.0.2.2"],
            local_on: None,
        },
    ]);
    lab.start_all(&[]);
    lab
}

fn mac(i: usize) -> MacAddr {
    node_mac(i).parse().unwrap()
}

#[test]
fn only_the_owner_answers_and_sigkill_moves_the_address_with_gratuitous_updates() {
    let _l = lock();
    let lab = lab("k");
    let owner = lab.wait_owner(VIP);
    let rank = expected_rank("192.0.2.50");
    assert_eq!(owner, rank[0], "the owner is the first by SHA-256 rank");
    let next = rank[1];

    // Only the owner answers, with its MAC, every time.
    let macs = lab.arp_answers(VIP, Duration::from_millis(500));
    assert!(
        !macs.is_empty() && macs.iter().all(|m| *m == mac(owner)),
        "{macs:?}"
    );
    // IPv6 of the same Service: same node (ranked by the first address).
    eventually(
        "an NA for the IPv6 address",
        Duration::from_secs(10),
        || {
            let out = lab.exec(
                "cli",
                &["ndisc6", "-1", "-r", "2", "-w", "500", VIP6, "eth0"],
            );
            String::from_utf8_lossy(&out.stdout)
                .to_lowercase()
                .contains(&node_mac(owner))
                .then_some(())
        },
    );
    let maddr = run(
        "ip",
        &["-n", lab.ns(NODES[owner]), "maddr", "show", "dev", "eth0"],
    )
    .expect("ip maddr show");
    assert!(maddr.contains("ff02::1:ff00:49"), "{maddr}");
    // Unassigned in-pool, outside every pool, a node's own address: silence.
    for silent in ["192.0.2.51", "203.0.113.9"] {
        let ip: Ipv4Addr = silent.parse().unwrap();
        assert!(
            lab.arp_answers(ip, Duration::from_millis(500)).is_empty(),
            "{silent} answered"
        );
    }
    // 192.0.2.2 is node-b's own address: only node-b's kernel answers,
    // never a speaker with another MAC.
    let macs = lab.arp_answers("192.0.2.2".parse().unwrap(), Duration::from_millis(500));
    assert!(macs.iter().all(|m| *m == mac(1)), "{macs:?}");

    // The client holds entries pointing at the owner, as after using it.
    lab.set_client_neighbour("192.0.2.50", &node_mac(owner));
    lab.set_client_neighbour(VIP6, &node_mac(owner));
    let killed = Instant::now();
    lab.speakers[owner]
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    // Without the client asking, gratuitous ARP / unsolicited NA move them.
    for ip in ["192.0.2.50", VIP6] {
        eventually(
            &format!("the client's entry for {ip} moving to the new owner"),
            Duration::from_secs(10),
            || {
                lab.client_neighbour(ip)
                    .contains(&node_mac(next))
                    .then_some(())
            },
        );
    }
    let moved = killed.elapsed();
    let macs = lab.arp_answers(VIP, Duration::from_millis(500));
    assert!(
        !macs.is_empty() && macs.iter().all(|m| *m == mac(next)),
        "{macs:?}"
    );
    eprintln!("SIGKILL: client entry moved after {moved:?}");
}

#[test]
fn sigterm_hands_over_before_the_old_speaker_exits() {
    let _l = lock();
    let mut lab = lab("t");
    let owner = lab.wait_owner(VIP);
    let next = expected_rank("192.0.2.50")[1];
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_in_background(&lab, VIP, Duration::from_millis(5), stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    lab.speakers[owner]
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGTERM);
    let exited = eventually("the old owner to exit", Duration::from_secs(10), || {
        let s = lab.speakers[owner].as_mut().unwrap();
        (!s.is_running()).then(Instant::now)
    });
    eventually("a reply from the new owner", Duration::from_secs(5), || {
        lab.arp_answers(VIP, Duration::from_millis(100))
            .contains(&mac(next))
            .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let replies = prober.join().unwrap();
    let first_new = replies
        .iter()
        .find(|(_, m)| *m == mac(next))
        .map(|(t, _)| *t)
        .expect("the prober saw the new owner");
    assert!(
        first_new < exited,
        "the successor answered {:?} after the old owner exited",
        first_new - exited
    );
    assert_eq!(
        lab.speakers[owner]
            .as_mut()
            .unwrap()
            .child
            .wait()
            .unwrap()
            .code(),
        Some(0)
    );
}

/// Sends one UDP datagram from the client to every node's membership port.
fn send_to_nodes(lab: &Lab, payload: Vec<u8>) {
    lab.with_netns("cli", move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..NODES.len() {
            let to: SocketAddr = format!("{}:{MEMBERSHIP_PORT}", node_ip(i)).parse().unwrap();
            s.send_to(&payload, to).unwrap();
        }
    });
}

fn total(lab: &Lab, prefix: &str) -> f64 {
    (0..NODES.len())
        .map(|i| metric(&lab.metrics(i).expect("metrics"), prefix))
        .sum()
}

#[test]
fn forged_membership_packets_change_nothing() {
    let _l = lock();
    let lab = lab("f");
    let owner = lab.wait_owner(VIP);
    let changes = total(&lab, "ferrolb_ownership_changes_total");
    let failures = total(&lab, "ferrolb_membership_auth_failures_total");
    // A leave "from" the owner under the wrong key.
    let leave = Message {
        from: NODES[owner].into(),
        from_inc: u64::MAX,
        seq: 1,
        to_inc: 0,
        view_id: 0,
        body: Body::Leave,
    };
    send_to_nodes(&lab, wire::encode(&leave, b"not the key").unwrap());
    // The same, valid under the key, but addressed to an incarnation of
    // the receivers that is not theirs (a recording from before they
    // started).
    let replay = Message {
        to_inc: 1,
        ..leave.clone()
    };
    send_to_nodes(&lab, wire::encode(&replay, SECRET).unwrap());
    // Garbage.
    send_to_nodes(&lab, vec![0x42; 64]);

    eventually(
        "the packets counted as failures",
        Duration::from_secs(10),
        || (total(&lab, "ferrolb_membership_auth_failures_total") >= failures + 9.0).then_some(()),
    );
    let text = lab.metrics((owner + 1) % 3).unwrap();
    for reason in ["unauthenticated", "replayed", "malformed"] {
        assert!(
            metric(
                &text,
                &format!("ferrolb_membership_auth_failures_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason} not counted:\n{text}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let macs = lab.arp_answers(VIP, Duration::from_millis(300));
    assert!(
        !macs.is_empty() && macs.iter().all(|m| *m == mac(owner)),
        "{macs:?}"
    );
    assert_eq!(total(&lab, "ferrolb_ownership_changes_total"), changes);
}

#[test]
fn five_percent_membership_loss_for_60s_moves_nothing() {
    let _l = lock();
    let lab = lab("l");
    let owner = lab.wait_owner(VIP);
    let changes = total(&lab, "ferrolb_ownership_changes_total");
    // Inside each node namespace: drop 5 % of incoming membership packets.
    let port = MEMBERSHIP_PORT.to_string();
    for n in NODES {
        for cmd in [
            &["nft", "add", "table", "inet", "flbloss"][..],
            &[
                "nft",
                "add",
                "chain",
                "inet",
                "flbloss",
                "input",
                "{ type filter hook input priority 0; }",
            ],
            &[
                "nft", "add", "rule", "inet", "flbloss", "input", "udp", "dport", &port, "numgen",
                "random", "mod", "100", "lt", "5", "counter", "drop",
            ],
        ] {
            let out = lab.exec(n, cmd);
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let started = Instant::now();
    let period = Duration::from_secs(
        std::env::var("FERROLB_LOSS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    while started.elapsed() < period {
        std::thread::sleep(Duration::from_secs(5));
        for i in 0..NODES.len() {
            let text = lab.metrics(i).expect("metrics");
            assert_eq!(
                metric(&text, "ferrolb_members_alive"),
                3.0,
                "node {i}:\n{text}"
            );
        }
    }
    // The rule did drop packets: the test could have failed.
    let dropped: u64 = (0..NODES.len())
        .map(|i| dropped_by(&lab, i, "flbloss"))
        .sum();
    let received = total(&lab, "ferrolb_membership_packets_received_total");
    eprintln!("loss test: {dropped} membership packets dropped, {received} received");
    assert!(
        dropped as f64 > 0.03 * (received + dropped as f64),
        "the rule dropped only {dropped}"
    );
    assert_eq!(
        total(&lab, "ferrolb_ownership_changes_total"),
        changes,
        "an owner changed"
    );
    let macs = lab.arp_answers(VIP, Duration::from_millis(300));
    assert!(
        macs.iter().all(|m| *m == mac(owner)) && !macs.is_empty(),
        "{macs:?}"
    );
}

const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The membership timeout the lab's speakers run with (the default): the
/// oldest request a speaker may answer.
const MAX_AGE: Duration = Duration::from_millis(150);

/// SIGSTOP the owner's speaker for 1 s while the client asks every 10 ms,
/// then SIGCONT it and keep asking. With `exclude`, the owner's Node gets
/// the exclude label 0.4 s into the pause. Asserts that the paused node
/// answers no request sent while it was stopped, that no reply anywhere is
/// older than the freshness limit, that no request is answered by two
/// nodes, and that the answering node changes only at the handovers
/// (owner -> successor, and back after resume unless excluded).
fn paused_owner(tag: &str, exclude: bool) {
    use std::time::SystemTime;
    let _l = lock();
    let lab = lab(tag);
    let (owner, next, watch) = watch_owner(&lab);
    let answered_since = |who: usize, since: SystemTime| watch.answered_since(who, since);

    let speaker = lab.speakers[owner].as_ref().unwrap();
    let pid = speaker.child.id();
    speaker.signal(nix::sys::signal::Signal::SIGSTOP);
    eventually(
        "the owner's speaker stopped",
        Duration::from_secs(5),
        || all_threads_stopped(pid).then_some(()),
    );
    // From here on, nothing the client sends can be answered by the owner
    // before SIGCONT.
    let paused = SystemTime::now();
    let at = |d: Duration| {
        if let Ok(left) = (paused + d).duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
    };
    if exclude {
        at(Duration::from_millis(400));
        let client = lab.cp.client.clone();
        let node = NODES[owner];
        lab.cp.block_on(async move {
            kube::Api::<k8s_openapi::api::core::v1::Node>::all(client)
                .patch(
                    node,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(
                        serde_json::json!({"metadata": {"labels": {EXCLUDE_LABEL: ""}}}),
                    ),
                )
                .await
                .expect("label the node");
        });
    }
    at(Duration::from_secs(1));
    // The client's entry points at the successor, as after using it during
    // the pause; the old owner, once back, must claim the address again.
    lab.set_client_neighbour("192.0.2.50", &node_mac(next));
    let resumed = SystemTime::now();
    speaker.signal(nix::sys::signal::Signal::SIGCONT);

    eventually(
        "the paused node seeing its peers again",
        Duration::from_secs(15),
        || {
            let text = lab.metrics(owner)?;
            (metric(&text, "ferrolb_members_alive") == 3.0).then_some(())
        },
    );
    if exclude {
        eventually(
            "the successor answering after the resume",
            Duration::from_secs(15),
            || answered_since(next, resumed + Duration::from_millis(500)).then_some(()),
        );
    } else {
        eventually(
            "the old owner answering again",
            Duration::from_secs(15),
            || answered_since(owner, resumed).then_some(()),
        );
        eventually(
            "the client's entry moving back to the old owner (gratuitous ARP)",
            Duration::from_secs(10),
            || {
                lab.client_neighbour("192.0.2.50")
                    .contains(&node_mac(owner))
                    .then_some(())
            },
        );
    }
    // Keep watching for a while after the handovers settled.
    std::thread::sleep(Duration::from_secs(1));
    let log = watch.finish();
    let text = lab.metrics(owner).expect("the paused node's metrics");
    for l in text.lines().filter(|l| {
        l.starts_with("ferrolb_requests_dropped_total")
            || l.starts_with("ferrolb_membership_stalls_total")
    }) {
        eprintln!("paused node: {l}");
    }
    check_paused_owner_replies(&log, owner, next, paused, resumed, exclude);
    // At least the pause; a loaded machine may add a hiccup of its own.
    let stalls = metric(&text, "ferrolb_membership_stalls_total");
    assert!(stalls >= 1.0, "the paused node counted {stalls} stalls");
}

fn check_paused_owner_replies(
    log: &TaggedLog,
    owner: usize,
    next: usize,
    paused: std::time::SystemTime,
    resumed: std::time::SystemTime,
    exclude: bool,
) {
    let sent = |r: &TaggedReply| log.sent[r.seq as usize];
    let age = |r: &TaggedReply| r.received.duration_since(sent(r)).unwrap_or_default();
    let during_pause: Vec<String> = log
        .replies
        .iter()
        .filter(|r| r.mac == mac(owner) && sent(r) >= paused && sent(r) <= resumed)
        .map(|r| format!("#{} {:?} old", r.seq, age(r)))
        .collect();
    assert!(
        during_pause.is_empty(),
        "the paused node answered {} requests sent while it was stopped: {during_pause:?}",
        during_pause.len()
    );
    // The reply's age: from the client's send to its kernel receiving the
    // reply. A speaker answers only requests younger than MAX_AGE; the way
    // back takes microseconds, 20 ms is slack for a loaded machine.
    let old: Vec<String> = log
        .replies
        .iter()
        .filter(|r| age(r) > MAX_AGE + Duration::from_millis(20))
        .map(|r| format!("#{} from {} {:?} old", r.seq, r.mac, age(r)))
        .collect();
    assert!(old.is_empty(), "replies older than the limit: {old:?}");
    if exclude {
        let after: Vec<u32> = log
            .replies
            .iter()
            .filter(|r| r.mac == mac(owner) && sent(r) >= paused)
            .map(|r| r.seq)
            .collect();
        assert!(
            after.is_empty(),
            "the node excluded during its pause answered requests {after:?}"
        );
    }
    // One answer per request at most: never two nodes answering the same.
    assert_eq!(
        doubled(log),
        Vec::<u32>::new(),
        "requests answered by two nodes"
    );
    // Who answers changes only at the handovers, in request order and in
    // arrival order alike: owner, successor, and owner again after the
    // resume unless it was excluded.
    let mut expected = vec![mac(owner), mac(next)];
    if !exclude {
        expected.push(mac(owner));
    }
    let by_request = answering_runs(log.replies.clone(), |r| (std::time::UNIX_EPOCH, r.seq));
    let by_arrival = answering_runs(log.replies.clone(), |r| (r.received, r.seq));
    for (order, got) in [("request", by_request), ("arrival", by_arrival)] {
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            expected.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "answering nodes in {order} order"
        );
    }
    let from_owner = log.replies.iter().filter(|r| r.mac == mac(owner)).count();
    eprintln!(
        "paused owner: {} requests, {} replies ({from_owner} from the paused node), none stale, none doubled",
        log.sent.len(),
        log.replies.len()
    );
}

/// The answering MACs in the order given by `key`, consecutive repeats
/// merged: [a, b, a] means a answered, then b, then a again.
fn answering_runs(
    mut replies: Vec<TaggedReply>,
    key: fn(&TaggedReply) -> (std::time::SystemTime, u32),
) -> Vec<MacAddr> {
    replies.sort_by_key(key);
    let mut runs: Vec<MacAddr> = vec![];
    for r in replies {
        if runs.last() != Some(&r.mac) {
            runs.push(r.mac);
        }
    }
    runs
}

#[test]
fn a_paused_owner_answers_no_stale_request_and_never_alongside_its_successor() {
    paused_owner("p", false);
}

#[test]
fn a_paused_owner_made_ineligible_meanwhile_answers_nothing_after_resume() {
    paused_owner("x", true);
}

/// Cuts node `node`'s membership traffic (UDP to the membership port) with
/// the nodes `from`, inside `node`'s namespace: packets from them are
/// dropped, and with `both_ways` packets to them too. The client and the
/// API server still reach every node: the worst case, in which a node on
/// the wrong side of a partition still hears clients.
fn cut(lab: &Lab, node: usize, from: &[usize], both_ways: bool) {
    let peers: Vec<String> = from.iter().map(|i| node_ip(*i)).collect();
    let set = format!("{{ {} }}", peers.join(", "));
    let mut script = format!(
        "add table inet flbcut; \
         add chain inet flbcut input {{ type filter hook input priority 0; }}; \
         add chain inet flbcut output {{ type filter hook output priority 0; }}; \
         add rule inet flbcut input ip saddr {set} udp dport {MEMBERSHIP_PORT} counter drop"
    );
    if both_ways {
        script.push_str(&format!(
            "; add rule inet flbcut output ip daddr {set} udp dport {MEMBERSHIP_PORT} counter drop"
        ));
    }
    let out = lab.exec(NODES[node], &["nft", &script]);
    assert!(
        out.status.success(),
        "nft {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The packets the counters of nftables table `inet <table>` in node
/// `node`'s namespace counted.
fn dropped_by(lab: &Lab, node: usize, table: &str) -> u64 {
    let out = lab.exec(NODES[node], &["nft", "list", "table", "inet", table]);
    String::from_utf8_lossy(&out.stdout)
        .split("packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Undoes [`cut`]; returns the packets its rules dropped.
fn uncut(lab: &Lab, node: usize) -> u64 {
    let dropped = dropped_by(lab, node, "flbcut");
    let out = lab.exec(NODES[node], &["nft", "delete", "table", "inet", "flbcut"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dropped
}

/// A tagged prober of [`VIP`] every 10 ms (see `probe_tagged_in_background`).
struct Watch {
    log: Arc<Mutex<TaggedLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(lab: &Lab) -> Watch {
        let log = Arc::new(Mutex::new(TaggedLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = Some(probe_tagged_in_background(
            lab,
            VIP,
            Duration::from_millis(10),
            stop.clone(),
            log.clone(),
        ));
        Watch { log, stop, thread }
    }

    /// Whether `node` answered a request sent at or after `since`.
    fn answered_since(&self, node: usize, since: std::time::SystemTime) -> bool {
        let log = self.log.lock().unwrap();
        log.replies
            .iter()
            .any(|r| r.mac == mac(node) && log.sent[r.seq as usize] >= since)
    }

    fn finish(mut self) -> TaggedLog {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("prober");
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// Waits for the owner of [`VIP`] and for it to answer a [`Watch`] started
/// on it; returns the owner, its successor and the watch.
fn watch_owner(lab: &Lab) -> (usize, usize, Watch) {
    let owner = lab.wait_owner(VIP);
    let next = expected_rank("192.0.2.50")[1];
    let watch = Watch::start(lab);
    let start = std::time::SystemTime::now();
    eventually(
        "the owner answering the prober",
        Duration::from_secs(10),
        || watch.answered_since(owner, start).then_some(()),
    );
    (owner, next, watch)
}

/// Requests answered by more than one node (by request).
fn doubled(log: &TaggedLog) -> Vec<u32> {
    let mut by_seq: BTreeMap<u32, BTreeSet<MacAddr>> = BTreeMap::new();
    for r in &log.replies {
        by_seq.entry(r.seq).or_default().insert(r.mac);
    }
    by_seq
        .into_iter()
        .filter(|(_, m)| m.len() > 1)
        .map(|(s, _)| s)
        .collect()
}

/// The answering nodes in request order, consecutive repeats merged.
fn runs_by_request(log: &TaggedLog) -> Vec<usize> {
    answering_runs(log.replies.clone(), |r| (std::time::UNIX_EPOCH, r.seq))
        .into_iter()
        .map(|m| {
            (0..NODES.len())
                .find(|i| mac(*i) == m)
                .expect("a node's MAC")
        })
        .collect()
}

/// The time from `at` to the first reply of `node` received after it.
fn first_reply_after(log: &TaggedLog, node: usize, at: std::time::SystemTime) -> Option<Duration> {
    log.replies
        .iter()
        .filter(|r| r.mac == mac(node))
        .filter_map(|r| r.received.duration_since(at).ok())
        .min()
}

/// The last reply of `node` received after `at`, as time since `at`.
fn last_reply_after(log: &TaggedLog, node: usize, at: std::time::SystemTime) -> Option<Duration> {
    log.replies
        .iter()
        .filter(|r| r.mac == mac(node))
        .filter_map(|r| r.received.duration_since(at).ok())
        .max()
}

/// The owner is cut off from both peers while clients still reach it: it
/// must fence itself (it cannot tell it is not the minority), its successor
/// must take over, no request may be answered by both, and when the cut
/// heals the address moves back once, after the returning node's hold-down.
#[test]
fn a_node_cut_off_from_its_peers_fences_itself_and_its_successor_takes_over() {
    let _l = lock();
    let lab = lab("c");
    let (owner, next, watch) = watch_owner(&lab);
    let others: Vec<usize> = (0..NODES.len()).filter(|i| *i != owner).collect();
    let cut_at = std::time::SystemTime::now();
    cut(&lab, owner, &others, true);
    eventually(
        "the cut-off owner fenced and its successor answering",
        Duration::from_secs(15),
        || {
            let fenced = metric(&lab.metrics(owner)?, "ferrolb_fenced");
            (fenced == 1.0 && watch.answered_since(next, cut_at)).then_some(())
        },
    );
    // The majority agrees it is gone.
    for i in &others {
        eventually(
            "the majority without the owner",
            Duration::from_secs(15),
            || (metric(&lab.metrics(*i)?, "ferrolb_members_alive") == 2.0).then_some(()),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let healed_at = std::time::SystemTime::now();
    let dropped = uncut(&lab, owner);
    assert!(dropped > 0, "the cut dropped nothing");
    eventually(
        "the owner back in the membership",
        Duration::from_secs(15),
        || {
            (0..NODES.len())
                .all(|i| {
                    lab.metrics(i)
                        .is_some_and(|m| metric(&m, "ferrolb_members_alive") == 3.0)
                })
                .then_some(())
        },
    );
    eventually(
        "the owner answering again after its hold-down",
        Duration::from_secs(30),
        || watch.answered_since(owner, healed_at).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = watch.finish();
    let runs = runs_by_request(&log);
    let stopped = last_reply_after(&log, owner, cut_at)
        .filter(|d| *d < healed_at.duration_since(cut_at).unwrap())
        .map(|d| format!("{d:?}"));
    let took_over = first_reply_after(&log, next, cut_at);
    eprintln!(
        "cut-off owner: {} requests; runs {runs:?}; owner's last reply during the cut {stopped:?} after it, successor's first {took_over:?}; back {:?} after the heal; {dropped} packets dropped",
        log.sent.len(),
        first_reply_after(&log, owner, healed_at)
    );
    assert_eq!(
        doubled(&log),
        Vec::<u32>::new(),
        "requests answered by two nodes"
    );
    assert_eq!(
        runs,
        vec![owner, next, owner],
        "the answering node moved otherwise"
    );
}

/// One-way fault: the owner stops hearing one peer, which still hears it.
/// One report never removes a node and one silent subject of two does not
/// fence: nothing changes.
#[test]
fn a_one_way_fault_moves_nothing() {
    let _l = lock();
    let lab = lab("o");
    let owner = lab.wait_owner(VIP);
    let peer = (owner + 1) % NODES.len();
    let changes = total(&lab, "ferrolb_ownership_changes_total");
    let watch = Watch::start(&lab);
    cut(&lab, owner, &[peer], false);
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..NODES.len() {
        let text = lab.metrics(i).expect("metrics");
        assert_eq!(
            metric(&text, "ferrolb_members_alive"),
            3.0,
            "node {i}:\n{text}"
        );
        assert_eq!(metric(&text, "ferrolb_fenced"), 0.0, "node {i}:\n{text}");
    }
    let dropped = uncut(&lab, owner);
    std::thread::sleep(Duration::from_millis(500));
    let log = watch.finish();
    eprintln!(
        "one-way fault: {dropped} packets dropped, {} requests, {} replies",
        log.sent.len(),
        log.replies.len()
    );
    assert!(dropped > 0, "the rule dropped nothing");
    assert_eq!(runs_by_request(&log), vec![owner]);
    assert_eq!(doubled(&log), Vec::<u32>::new());
    assert_eq!(total(&lab, "ferrolb_ownership_changes_total"), changes);
}

/// The owner's membership link flaps: down and up every 300 ms for 3 s.
/// Each down period is longer than the failure timeout, so the owner is
/// removed at the first; it re-joins held down after each, so the address
/// moves once (to the successor) during the episode and never to two
/// answerers.
#[test]
fn a_flapping_link_moves_the_address_at_most_once() {
    let _l = lock();
    let lab = lab("k");
    let (owner, next, watch) = watch_owner(&lab);
    let others: Vec<usize> = (0..NODES.len()).filter(|i| *i != owner).collect();
    let began = Instant::now();
    let mut dropped = 0;
    for flap in 0..5u32 {
        cut(&lab, owner, &others, true);
        let up_at = began + Duration::from_millis(600 * u64::from(flap) + 300);
        std::thread::sleep(up_at.saturating_duration_since(Instant::now()));
        dropped += uncut(&lab, owner);
        let down_at = began + Duration::from_millis(600 * u64::from(flap + 1));
        std::thread::sleep(down_at.saturating_duration_since(Instant::now()));
    }
    // Two more seconds after the episode: still inside the hold-down.
    std::thread::sleep(Duration::from_secs(2));
    let log = watch.finish();
    let runs = runs_by_request(&log);
    eprintln!(
        "flapping link: {} requests, runs {runs:?}, {dropped} packets dropped",
        log.sent.len()
    );
    assert!(dropped > 0, "the cuts dropped nothing");
    assert_eq!(
        doubled(&log),
        Vec::<u32>::new(),
        "requests answered by two nodes"
    );
    assert!(
        runs == vec![owner] || runs == vec![owner, next],
        "ownership moved more than once: {runs:?}"
    );
}

/// Heartbeats of the owner recorded on the wire and replayed after it was
/// killed must not keep it alive: the peers refuse them (sequence window)
/// and remove it as if nothing were sent.
#[test]
fn replayed_heartbeats_do_not_keep_a_killed_owner_alive() {
    let _l = lock();
    let lab = lab("r");
    let owner = lab.wait_owner(VIP);
    let next = expected_rank("192.0.2.50")[1];
    let owner_ip: Ipv4Addr = node_ip(owner).parse().unwrap();
    // Record, inside the successor's namespace, membership frames from the
    // owner for 300 ms.
    let recorded: Vec<Vec<u8>> = lab.with_netns(NODES[next], move || {
        let index = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let socket = ferrolb_speaker::sockets::packet_socket(0x0800, index).expect("packet socket");
        let mut buf = [0u8; 2048];
        let mut frames = Vec::new();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            while let Ok((n, _)) = ferrolb_speaker::sockets::recv_stamped(&socket, &mut buf) {
                let f = &buf[..n];
                let ihl = usize::from(f.get(14).copied().unwrap_or(0) & 0x0f) * 4;
                let udp = 14 + ihl;
                if f.len() > udp + 8
                    && f[23] == 17
                    && f[26..30] == owner_ip.octets()
                    && u16::from_be_bytes([f[udp + 2], f[udp + 3]]) == MEMBERSHIP_PORT
                {
                    // The sender's checksum may be left to offload (veth
                    // passes it on unfinished); zero means "none" in IPv4.
                    let mut f = f.to_vec();
                    f[udp + 6..udp + 8].fill(0);
                    frames.push(f);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        frames
    });
    assert!(
        recorded.len() >= 5,
        "recorded only {} frames",
        recorded.len()
    );
    let replayed_before = metric(
        &lab.metrics(next).unwrap(),
        "ferrolb_membership_auth_failures_total{reason=\"replayed\"}",
    );

    lab.speakers[owner]
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    // Replay them from the client's port every 5 ms for 2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let replayer = {
        let stop = stop.clone();
        let frames = recorded.clone();
        lab.spawn_in("cli", move || {
            let index = nix::net::if_::if_nametoindex("eth0").expect("eth0");
            let socket =
                ferrolb_speaker::sockets::packet_socket(0x0800, index).expect("packet socket");
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for f in &frames {
                    if socket.send(f).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    let killed = Instant::now();
    eventually(
        "the successor answering despite the replays",
        Duration::from_secs(10),
        || {
            lab.arp_answers(VIP, Duration::from_millis(100))
                .contains(&mac(next))
                .then_some(())
        },
    );
    let moved_after = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let sent = replayer.join().expect("replayer");
    let text = lab.metrics(next).unwrap();
    let replayed = metric(
        &text,
        "ferrolb_membership_auth_failures_total{reason=\"replayed\"}",
    ) - replayed_before;
    eprintln!(
        "replay: {} frames recorded, {sent} replayed, {replayed} refused as replays by the successor; moved after {moved_after:?}",
        recorded.len()
    );
    assert!(replayed > 0.0, "no replay was refused:\n{text}");
    assert_eq!(metric(&text, "ferrolb_members_alive"), 2.0, "{text}");
}

/// Every speaker restarted in turn (SIGTERM, start again, wait until all
/// three are members): the address moves away when its owner leaves and
/// back when it returns (a graceful leave has no hold-down), never for the
/// other nodes' restarts and never to two answerers.
#[test]
fn a_rolling_restart_moves_the_address_away_and_back_once() {
    let _l = lock();
    let mut lab = lab("g");
    let (owner, next, watch) = watch_owner(&lab);
    for i in 0..NODES.len() {
        lab.speakers[i]
            .as_ref()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGTERM);
        eventually("the speaker to exit", Duration::from_secs(10), || {
            (!lab.speakers[i].as_mut().unwrap().is_running()).then_some(())
        });
        lab.start_speaker(i, &[]);
        eventually("all three members again", Duration::from_secs(30), || {
            (0..NODES.len())
                .all(|j| {
                    lab.metrics(j)
                        .is_some_and(|m| metric(&m, "ferrolb_members_alive") == 3.0)
                })
                .then_some(())
        });
    }
    let done = std::time::SystemTime::now();
    eventually(
        "the owner answering at the end",
        Duration::from_secs(10),
        || watch.answered_since(owner, done).then_some(()),
    );
    let log = watch.finish();
    let runs = runs_by_request(&log);
    // Unanswered requests in a row: the longest gap the client saw.
    let mut answered: BTreeSet<u32> = log.replies.iter().map(|r| r.seq).collect();
    let first = answered.first().copied().unwrap_or(0);
    let mut longest = 0u32;
    let mut current = 0u32;
    for seq in first..log.sent.len() as u32 {
        if answered.remove(&seq) {
            current = 0;
        } else {
            current += 1;
            longest = longest.max(current);
        }
    }
    eprintln!(
        "rolling restart: {} requests, runs {runs:?}, longest run of unanswered requests {longest} (10 ms apart)",
        log.sent.len()
    );
    assert_eq!(
        doubled(&log),
        Vec::<u32>::new(),
        "requests answered by two nodes"
    );
    assert_eq!(
        runs,
        vec![owner, next, owner],
        "the address moved otherwise"
    );
}
