//! A deterministic simulator for the ring membership (docs/membership.md,
//! "Simulator"): thousands of [`Member`]s, the real protocol code, in
//! virtual time over a seeded network with loss, delay, partitions,
//! one-way faults, kills, pauses and restarts. Tests and the membership
//! benchmark drive it and read what it recorded.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::wire::{self, Message};
use super::{Member, Output, Removal, Settings};

/// A small seeded generator (xorshift64*): the simulator must not depend
/// on anything but its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(super::topology::splitmix(seed) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The network between the simulated nodes.
#[derive(Clone, Debug)]
pub struct Network {
    /// Probability that any one packet is lost.
    pub loss: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            loss: 0.0,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_micros(400),
        }
    }
}

/// Something a node did, with the virtual time in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Removed {
        at: u64,
        by: u32,
        node: u32,
        why: Removal,
    },
    Added {
        at: u64,
        by: u32,
        node: u32,
    },
    Fenced {
        at: u64,
        node: u32,
        fenced: bool,
    },
    Rejoined {
        at: u64,
        node: u32,
    },
}

enum Event {
    Deliver { to: u32, msg: Message },
    Wake { node: u32 },
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // A min-heap on (time, order of scheduling).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Node {
    member: Member,
    up: bool,
    paused_until: u64,
    wake: Option<u64>,
    fenced: bool,
    sent: u64,
    sent_bytes: u64,
    received: u64,
    received_bytes: u64,
}

/// Traffic of one node over a span of virtual time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
}

/// The simulated cluster.
pub struct Sim {
    base: Instant,
    now: u64,
    seq: u64,
    nodes: Vec<Node>,
    names: Vec<String>,
    index: HashMap<String, u32>,
    queue: BinaryHeap<Queued>,
    rng: Rng,
    pub net: Network,
    /// Partition group of each node; packets between groups are lost.
    groups: Option<Vec<u32>>,
    /// Directed links that lose everything.
    blocked: HashSet<(u32, u32)>,
    settings: Settings,
    pub records: Vec<Record>,
    /// Packets sent, by kind byte.
    sent_by_kind: [u64; 16],
}

pub fn name(i: usize) -> String {
    format!("node-{i:05}")
}

impl Sim {
    /// `n` nodes started within the first 10 ms, all candidates of each
    /// other: the cold start of a whole cluster.
    pub fn new(n: usize, seed: u64, settings: Settings, net: Network) -> Sim {
        Sim::build(n, seed, settings, net, false)
    }

    /// `n` nodes of a cluster that formed earlier: every node already has
    /// all members in its view (for steady-state and fault figures at
    /// sizes where simulating the cold start's n² handshakes is slow).
    pub fn formed(n: usize, seed: u64, settings: Settings, net: Network) -> Sim {
        Sim::build(n, seed, settings, net, true)
    }

    fn build(n: usize, seed: u64, settings: Settings, net: Network, formed: bool) -> Sim {
        let base = Instant::now();
        let names: Vec<String> = (0..n).map(name).collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let mut sim = Sim {
            base,
            now: 0,
            seq: 0,
            nodes: Vec::with_capacity(n),
            names,
            index,
            queue: BinaryHeap::new(),
            rng: Rng::new(seed),
            net,
            groups: None,
            blocked: HashSet::new(),
            settings: settings.clone(),
            records: Vec::new(),
            sent_by_kind: [0; 16],
        };
        for i in 0..n {
            let m = Member::new(sim.names[i].clone(), 1, settings.clone(), base);
            sim.nodes.push(Node {
                member: m,
                up: false,
                paused_until: 0,
                wake: None,
                fenced: false,
                sent: 0,
                sent_bytes: 0,
                received: 0,
                received_bytes: 0,
            });
        }
        if formed {
            let members: Vec<(std::sync::Arc<str>, u64)> = sim
                .names
                .iter()
                .map(|n| (std::sync::Arc::from(n.as_str()), 1))
                .collect();
            for i in 0..n {
                let at = sim.rng.below(20_000_000);
                let now = base + Duration::from_nanos(at);
                sim.nodes[i].member =
                    Member::formed(sim.names[i].clone(), 1, settings.clone(), now, &members);
                sim.nodes[i].up = true;
                sim.schedule_wake(i as u32, at);
            }
            return sim;
        }
        for i in 0..n {
            let at = sim.rng.below(10_000_000);
            sim.start_at(i as u32, at, 1);
        }
        sim
    }

    fn start_at(&mut self, i: u32, at: u64, incarnation: u64) {
        let now = self.base + Duration::from_nanos(at);
        let mut m = Member::new(
            self.names[i as usize].clone(),
            incarnation,
            self.settings.clone(),
            now,
        );
        let node = &mut self.nodes[i as usize];
        node.up = true;
        node.fenced = false;
        node.paused_until = 0;
        node.wake = None;
        m.set_candidates(self.names.iter().cloned().collect(), now);
        node.member = m;
        self.schedule_wake(i, at);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time, nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn member(&self, i: u32) -> &Member {
        &self.nodes[i as usize].member
    }

    pub fn is_up(&self, i: u32) -> bool {
        self.nodes[i as usize].up
    }

    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn traffic(&self, i: u32) -> Traffic {
        let n = &self.nodes[i as usize];
        Traffic {
            sent: n.sent,
            sent_bytes: n.sent_bytes,
            received: n.received,
            received_bytes: n.received_bytes,
        }
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn schedule_wake(&mut self, i: u32, at: u64) {
        let node = &mut self.nodes[i as usize];
        if node.wake.is_none_or(|w| at < w) {
            node.wake = Some(at);
            self.push(at, Event::Wake { node: i });
        }
    }

    fn instant(&self, at: u64) -> Instant {
        self.base + Duration::from_nanos(at)
    }

    /// Runs every event up to virtual time `until` (nanoseconds).
    pub fn run_until(&mut self, until: u64) {
        while let Some(q) = self.queue.peek() {
            if q.at > until {
                break;
            }
            let q = self.queue.pop().expect("peeked");
            self.now = q.at;
            match q.ev {
                Event::Wake { node } => {
                    let n = &mut self.nodes[node as usize];
                    if !n.up || n.wake != Some(q.at) {
                        continue;
                    }
                    n.wake = None;
                    if n.paused_until > q.at {
                        let at = n.paused_until;
                        self.schedule_wake(node, at);
                        continue;
                    }
                    let now = self.instant(q.at);
                    self.nodes[node as usize].member.tick(now);
                    self.drain(node);
                }
                Event::Deliver { to, msg } => {
                    let n = &mut self.nodes[to as usize];
                    if !n.up {
                        continue;
                    }
                    if n.paused_until > q.at {
                        // Waits in the socket until the process runs.
                        let at = n.paused_until;
                        self.push(at, Event::Deliver { to, msg });
                        continue;
                    }
                    n.received += 1;
                    n.received_bytes += wire::wire_len(&msg) as u64;
                    let now = self.instant(q.at);
                    let _ = self.nodes[to as usize].member.handle(msg, now);
                    self.drain(to);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d.as_nanos() as u64;
        self.run_until(until);
    }

    fn lost(&mut self, from: u32, to: u32) -> bool {
        if let Some(g) = &self.groups
            && g[from as usize] != g[to as usize]
        {
            return true;
        }
        if self.blocked.contains(&(from, to)) {
            return true;
        }
        self.net.loss > 0.0 && self.rng.unit() < self.net.loss
    }

    fn drain(&mut self, i: u32) {
        let now = self.now;
        while let Some(out) = self.nodes[i as usize].member.poll() {
            match out {
                Output::Send { to, msg } => {
                    let Some(&j) = self.index.get(&to) else {
                        continue;
                    };
                    let node = &mut self.nodes[i as usize];
                    node.sent += 1;
                    node.sent_bytes += wire::wire_len(&msg) as u64;
                    self.sent_by_kind[usize::from(msg.body.kind())] += 1;
                    if self.lost(i, j) {
                        continue;
                    }
                    let (lo, hi) = (
                        self.net.delay_min.as_nanos() as u64,
                        self.net.delay_max.as_nanos() as u64,
                    );
                    let d = lo + self.rng.below(hi.saturating_sub(lo) + 1);
                    self.push(now + d, Event::Deliver { to: j, msg });
                }
                Output::ViewChanged => {
                    let node = &mut self.nodes[i as usize];
                    let fenced = !node.member.may_announce();
                    if fenced != node.fenced {
                        node.fenced = fenced;
                        self.records.push(Record::Fenced {
                            at: now,
                            node: i,
                            fenced,
                        });
                    }
                }
                Output::Added(n) => {
                    if let Some(&j) = self.index.get(&n) {
                        self.records.push(Record::Added {
                            at: now,
                            by: i,
                            node: j,
                        });
                    }
                }
                Output::Removed(n, why) => {
                    if let Some(&j) = self.index.get(&n) {
                        self.records.push(Record::Removed {
                            at: now,
                            by: i,
                            node: j,
                            why,
                        });
                    }
                }
                Output::PeerLeft { node, incarnation } => {
                    self.nodes[i as usize]
                        .member
                        .acknowledge_leave(&node, incarnation);
                }
                Output::Rejoined { .. } => self.records.push(Record::Rejoined { at: now, node: i }),
                Output::Left(_) => {
                    self.nodes[i as usize].up = false;
                }
            }
        }
        let at = self.nodes[i as usize].member.next_deadline();
        let at = (at.saturating_duration_since(self.base).as_nanos() as u64).max(now + 1_000);
        if self.nodes[i as usize].up {
            self.schedule_wake(i, at);
        }
    }

    // ----- faults -----

    /// The node's process dies: it sends and receives nothing.
    pub fn kill(&mut self, i: u32) {
        self.nodes[i as usize].up = false;
    }

    /// The node starts again as a new process (a larger incarnation).
    pub fn restart(&mut self, i: u32) {
        let inc = self.nodes[i as usize].member.incarnation() + 1_000_000;
        let now = self.now;
        self.start_at(i, now, inc);
    }

    /// The process is stopped for `d` (SIGSTOP, a VM freeze): what arrives
    /// meanwhile waits in its socket.
    pub fn pause(&mut self, i: u32, d: Duration) {
        self.nodes[i as usize].paused_until = self.now + d.as_nanos() as u64;
    }

    /// Starts a graceful leave.
    pub fn leave(&mut self, i: u32) {
        let now = self.instant(self.now);
        self.nodes[i as usize].member.leave(now);
        self.drain(i);
    }

    /// Splits the nodes: `group[i]` is node i's side.
    pub fn partition(&mut self, group: Vec<u32>) {
        assert_eq!(group.len(), self.nodes.len());
        self.groups = Some(group);
    }

    pub fn heal(&mut self) {
        self.groups = None;
        self.blocked.clear();
    }

    /// Everything from `from` to `to` is lost (one direction only).
    pub fn block(&mut self, from: u32, to: u32) {
        self.blocked.insert((from, to));
    }

    pub fn unblock(&mut self, from: u32, to: u32) {
        self.blocked.remove(&(from, to));
    }

    // ----- questions -----

    /// Whether every running node has the same members, exactly `expect`.
    pub fn agree_on(&self, expect: &[u32]) -> bool {
        let mut want: Vec<&str> = expect
            .iter()
            .map(|&i| self.names[i as usize].as_str())
            .collect();
        want.sort_unstable();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.up && expect.contains(&(*i as u32)))
            .all(|(_, n)| {
                let got: Vec<&str> = n.member.members().collect();
                got == want
            })
    }

    /// Packets sent so far by kind, for the kinds sent at all.
    pub fn sent_by_kind(&self) -> Vec<(&'static str, u64)> {
        use super::wire::Body;
        let kinds = [
            Body::Heartbeat,
            Body::Join,
            Body::Welcome { held: false },
            Body::Welcome { held: true },
            Body::Hello,
            Body::Alerts(Vec::new()),
            Body::Leave,
            Body::LeaveAck,
            Body::Removed { incarnation: 0 },
            Body::SyncRequest,
            Body::Sync {
                entries: Vec::new(),
                last: true,
            },
        ];
        kinds
            .iter()
            .map(|b| (b.label(), self.sent_by_kind[usize::from(b.kind())]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The virtual time as an `Instant` (what the members were given).
    pub fn now_instant(&self) -> Instant {
        self.instant(self.now)
    }

    /// Whether the node's process is stopped now.
    pub fn is_paused(&self, i: u32) -> bool {
        self.nodes[i as usize].paused_until > self.now
    }

    pub fn fenced(&self, i: u32) -> bool {
        self.nodes[i as usize].fenced
    }

    /// Removals of nodes that were running and reachable, by reason
    /// `Failed`, since `from` (nanoseconds): a false declaration each.
    pub fn removals_since(&self, from: u64) -> Vec<(u64, u32, u32)> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Removed { at, by, node, why } if *at >= from && *why != Removal::Left => {
                    Some((*at, *by, *node))
                }
                _ => None,
            })
            .collect()
    }
}
