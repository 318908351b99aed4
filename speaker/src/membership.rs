//! The membership runners' common types, and the all-to-all ("mesh")
//! runner: the UDP socket, timers and peer list around
//! `ferrolb_core::membership` (heartbeats, authentication, the detector).
//! The ring protocol's runner is `crate::ring_runner`.
//!
//! It runs on its own thread with its own single-threaded runtime, so that
//! a burst of watch events (a relist of thousands of Services) never delays
//! a heartbeat or a timeout by more than the scheduler does.
//!
//! It also keeps the liveness epoch ([`crate::liveness`]): it stamps it at
//! every run, and when it finds a gap in its own clock long enough for
//! peers to have declared this node dead (the process was stopped, the
//! machine suspended, the thread starved) it re-joins: the view says
//! `rejoining`, nothing is announced or answered, membership packets that
//! queued up during the gap are discarded, and it waits at least one
//! membership timeout and until it has heard every expected peer again (or
//! the join grace has passed).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::liveness::{self, Liveness};

use ferrolb_core::membership::{self, Detector, Kind, MAX_PACKET, Packet, Reject};
use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Membership timing and addresses.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    /// The UDP address to listen on; peers are sent to at their Pod IP and
    /// this port.
    pub bind: SocketAddr,
    /// Time between heartbeats to each peer.
    pub interval: Duration,
    /// A peer not heard from for this long is dead.
    pub timeout: Duration,
    /// After this long without hearing from every expected peer, the
    /// speaker counts as joined anyway (the missing ones are dead).
    pub join_grace: Duration,
    pub protocol: Protocol,
    /// Ring protocol: how long a node removed as failed may not own
    /// addresses after it re-joins.
    pub hold_down: Duration,
}

/// Which membership protocol runs (docs/membership.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// K observers per node on pseudo-random rings: constant cost per
    /// node, majority rule for partitions, hold-down after failures.
    #[default]
    Ring,
    /// Every speaker heartbeats every other one: cost per node grows with
    /// the cluster; no partition rule.
    Mesh,
}

/// What the rest of the speaker needs to know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Counts changes of `alive`; the daemon reports back the generation
    /// it has applied, which is what a `LeaveAck` waits for.
    pub generation: u64,
    /// Live members, this node included.
    pub alive: BTreeSet<String>,
    /// The key is known and every expected peer was heard from, or the
    /// join grace has passed.
    pub joined: bool,
    /// Peers are expected (at least two) but none is reachable: this node
    /// is probably cut off and must not announce.
    pub fenced: bool,
    /// The loop found a gap in its own clock (a stall) and has not re-joined
    /// since: its peers may have given this node's addresses to others, so
    /// it must not announce.
    pub rejoining: bool,
}

/// Talks to the runner.
pub struct Handle {
    pub view: watch::Receiver<View>,
    /// Peer speakers: node name and Pod IP; `None` until the Pods are
    /// listed (no one can be "every expected peer" before that).
    pub peers: watch::Sender<Option<BTreeMap<String, IpAddr>>>,
    /// The shared key; `None` until the Secret is read.
    pub key: watch::Sender<Option<Vec<u8>>>,
    /// The latest `View::generation` whose ownership the daemon applied.
    pub applied: watch::Sender<u64>,
    /// The liveness epoch the responders check before answering.
    pub liveness: Arc<Liveness>,
    pub(crate) leave: mpsc::Sender<oneshot::Sender<LeaveOutcome>>,
    /// `true`: stay out of the membership (this node's data path is down):
    /// leave gracefully, and join again once it is `false`. Only the ring
    /// protocol acts on it.
    pub pause: crate::datapath::Pause,
}

/// How a graceful leave ended.
#[derive(Clone, Debug)]
pub struct LeaveOutcome {
    pub acknowledged: BTreeSet<String>,
    pub missing: BTreeSet<String>,
    pub took: Duration,
}

impl Handle {
    /// Tells every peer this node leaves and waits until every live peer
    /// acknowledged having applied it, or `timeout`.
    pub async fn leave(&self, timeout: Duration) -> Option<LeaveOutcome> {
        let (tx, rx) = oneshot::channel();
        self.leave.send(tx).await.ok()?;
        tokio::time::timeout(timeout + Duration::from_millis(100), rx)
            .await
            .ok()?
            .ok()
    }
}

/// Starts the runner thread. `leave_timeout` bounds a graceful leave.
pub fn start(
    settings: Settings,
    leave_timeout: Duration,
    metrics: Arc<Metrics>,
) -> io::Result<Handle> {
    let socket = bind(settings.bind)?;
    let live = Arc::new(Liveness::new(liveness::stall_threshold(
        settings.timeout,
        settings.interval,
    )));
    if settings.protocol == Protocol::Ring {
        return crate::ring_runner::start(settings, leave_timeout, metrics, socket, live);
    }
    let (view_tx, view_rx) = watch::channel(View::default());
    let (peers_tx, peers_rx) = watch::channel(None);
    let (key_tx, key_rx) = watch::channel(None);
    let (applied_tx, applied_rx) = watch::channel(0);
    let (leave_tx, leave_rx) = mpsc::channel(1);
    let runner_live = live.clone();
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let socket = match UdpSocket::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "membership socket failed; membership stops");
                        return;
                    }
                };
                Runner {
                    detector: Detector::new(settings.node.clone(), settings.timeout),
                    settings,
                    leave_timeout,
                    socket,
                    metrics,
                    view: view_tx,
                    peers: peers_rx,
                    key: key_rx,
                    applied: applied_rx,
                    leave_rx,
                    incarnation: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(1),
                    seq: 0,
                    pending_acks: BTreeMap::new(),
                    leaving: None,
                    left: false,
                    heard: BTreeSet::new(),
                    started: Instant::now(),
                    last_run: crate::clock::boottime(),
                    stall: None,
                    liveness: runner_live,
                }
                .run()
                .await
            })
        })?;
    Ok(Handle {
        view: view_rx,
        peers: peers_tx,
        key: key_tx,
        applied: applied_tx,
        liveness: live,
        leave: leave_tx,
        // The mesh runner does not act on it (the daemon says so).
        pause: crate::datapath::Pause::new(watch::channel(false).0),
    })
}

/// Where a peer's packets go: its Pod IP and the membership port, IPv4 as a
/// mapped address (the socket is dual-stack).
pub(crate) fn peer_socket_addr(ip: IpAddr, port: u16) -> SocketAddr {
    match SocketAddr::new(ip, port) {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    }
}

/// A gap found in a membership loop's own clock.
pub(crate) struct Stalled {
    /// The loop's clock now (boot-based monotonic).
    pub now: Duration,
    pub gap: Duration,
    /// Membership packets that queued up meanwhile, discarded.
    pub discarded: usize,
}

/// Compares a membership loop's clock with its previous run (both
/// runners). A gap longer than the stall threshold makes the liveness
/// epoch say "not current" at once (before its stamp moves), is counted,
/// and what queued up in the socket meanwhile is discarded; the caller
/// then re-joins in its protocol's way.
pub(crate) fn detect_stall(
    last_run: &mut Duration,
    liveness: &Liveness,
    metrics: &Metrics,
    socket: &UdpSocket,
) -> Option<Stalled> {
    let now = crate::clock::boottime();
    let (last, gap) = (*last_run, now.saturating_sub(*last_run));
    *last_run = now;
    if !liveness::is_stall(last, now, liveness.stall_after()) {
        return None;
    }
    liveness.renew(now, false);
    metrics.membership_stalls.inc();
    // Straight from the descriptor: tokio's readiness may not have seen the
    // queue yet after a stop, and its try_recv would say "empty".
    let mut scratch = [0u8; 2048];
    let mut discarded = 0usize;
    let raw = socket2::SockRef::from(socket);
    while crate::sockets::recv_from(&raw, &mut scratch).is_ok() {
        discarded += 1;
    }
    Some(Stalled {
        now,
        gap,
        discarded,
    })
}

/// A dual-stack UDP socket (IPv4 peers arrive as mapped addresses).
fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let addr = match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, v4.port(), 0, 0))
        }
        other => other,
    };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

struct Leaving {
    reply: oneshot::Sender<LeaveOutcome>,
    started: Instant,
    waiting: BTreeSet<String>,
    acknowledged: BTreeSet<String>,
}

struct Runner {
    settings: Settings,
    leave_timeout: Duration,
    socket: UdpSocket,
    metrics: Arc<Metrics>,
    detector: Detector,
    view: watch::Sender<View>,
    peers: watch::Receiver<Option<BTreeMap<String, IpAddr>>>,
    key: watch::Receiver<Option<Vec<u8>>>,
    applied: watch::Receiver<u64>,
    leave_rx: mpsc::Receiver<oneshot::Sender<LeaveOutcome>>,
    incarnation: u64,
    seq: u64,
    /// Leaves to acknowledge once the daemon applied this generation: node
    /// -> (generation, where to answer, the incarnation that left).
    pending_acks: BTreeMap<String, (u64, SocketAddr, u64)>,
    leaving: Option<Leaving>,
    left: bool,
    /// Peers heard from at least once (for `joined`).
    heard: BTreeSet<String>,
    started: Instant,
    /// The loop's own clock (boot-based monotonic) at its previous run.
    last_run: Duration,
    /// Set from a stall until re-joined.
    stall: Option<Stall>,
    liveness: Arc<Liveness>,
}

/// A stall being recovered from.
struct Stall {
    /// When it was detected (boot-based monotonic).
    since: Duration,
    /// Peers heard from since then.
    heard: BTreeSet<String>,
}

/// What woke the loop.
enum Wake {
    Tick,
    Resend,
    Received(usize, SocketAddr),
    ReceiveFailed(io::Error),
    Timer,
    Applied(bool),
    Peers(bool),
    Key(bool),
    Leave(oneshot::Sender<LeaveOutcome>),
    Gc,
}

impl Runner {
    async fn run(mut self) {
        info!(bind = %self.settings.bind, interval = ?self.settings.interval, timeout = ?self.settings.timeout, "membership started");
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resend = tokio::time::interval(Duration::from_millis(5));
        let mut gc = tokio::time::interval(Duration::from_secs(60));
        let mut buf = [0u8; 2048];
        self.liveness.renew(self.last_run, false);
        loop {
            let now = Instant::now();
            let expiry = self.detector.next_expiry(now);
            let join_at =
                (!self.view.borrow().joined).then(|| self.started + self.settings.join_grace);
            let wake = [expiry, join_at].into_iter().flatten().min();
            // The tick always runs, also while leaving and after: it is
            // what keeps the liveness stamp young.
            let woke = tokio::select! {
                _ = tick.tick() => Wake::Tick,
                _ = resend.tick(), if self.leaving.is_some() => Wake::Resend,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => Wake::Received(n, from),
                    Err(e) => Wake::ReceiveFailed(e),
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(now + Duration::from_secs(3600)).into()), if wake.is_some() => Wake::Timer,
                r = self.applied.changed() => Wake::Applied(r.is_ok()),
                r = self.peers.changed() => Wake::Peers(r.is_ok()),
                r = self.key.changed() => Wake::Key(r.is_ok()),
                Some(reply) = self.leave_rx.recv() => Wake::Leave(reply),
                _ = gc.tick() => Wake::Gc,
            };
            // Before anything else: did this loop just come back from a
            // stall? Then a packet it was woken for waited out the stall
            // in the socket, and is dropped with the others.
            let stalled = self.check_stall();
            match woke {
                Wake::Tick => {
                    if self.leaving.is_none() && !self.left {
                        self.send_all(Kind::Heartbeat)
                    }
                }
                Wake::Resend => self.resend_leave(),
                Wake::Received(n, from) => {
                    if !stalled {
                        self.receive(&buf[..n], from)
                    }
                }
                Wake::ReceiveFailed(e) => {
                    warn!(error = %e, "membership receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Wake::Timer => {}
                Wake::Applied(ok) | Wake::Peers(ok) | Wake::Key(ok) => {
                    if !ok {
                        return;
                    }
                }
                Wake::Leave(reply) => self.start_leave(reply),
                Wake::Gc => self
                    .detector
                    .forget_older_than(Duration::from_secs(600), Instant::now()),
            }
            self.publish();
            self.send_due_acks();
        }
    }

    /// Compares the loop's clock with its previous run. A gap longer than
    /// the stall threshold starts a re-join: the liveness epoch says "not
    /// current" at once (before its stamp moves), and what queued up in the
    /// socket meanwhile is discarded. True if a stall was just detected.
    fn check_stall(&mut self) -> bool {
        let Some(Stalled {
            now,
            gap,
            discarded,
        }) = detect_stall(
            &mut self.last_run,
            &self.liveness,
            &self.metrics,
            &self.socket,
        )
        else {
            return false;
        };
        warn!(
            gap = ?gap,
            discarded,
            "the membership loop did not run for longer than peers wait: not announcing or answering until re-joined"
        );
        self.stall = Some(Stall {
            since: now,
            heard: BTreeSet::new(),
        });
        true
    }

    fn key(&self) -> Option<Vec<u8>> {
        self.key.borrow().clone()
    }

    fn peer_addrs(&self) -> Vec<(String, SocketAddr)> {
        let port = self.settings.bind.port();
        self.peers
            .borrow()
            .iter()
            .flatten()
            .filter(|(n, _)| **n != self.settings.node)
            .map(|(n, ip)| (n.clone(), SocketAddr::new(*ip, port)))
            .collect()
    }

    fn send(&mut self, kind: Kind, to: SocketAddr, key: &[u8]) {
        self.seq += 1;
        let packet = Packet {
            kind,
            node: self.settings.node.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
        };
        let mut buf = [0u8; MAX_PACKET];
        let Some(n) = membership::encode(&packet, key, &mut buf) else {
            return;
        };
        let to = peer_socket_addr(to.ip(), to.port());
        match self.socket.try_send_to(&buf[..n], to) {
            Ok(_) => {
                self.metrics.membership_packets_sent.inc();
            }
            Err(e) => debug!(%to, error = %e, "membership send failed"),
        };
    }

    fn send_all(&mut self, kind: Kind) {
        let Some(key) = self.key() else { return };
        for (_, addr) in self.peer_addrs() {
            self.send(kind, addr, &key);
        }
    }

    fn receive(&mut self, bytes: &[u8], from: SocketAddr) {
        self.metrics.membership_packets_received.inc();
        let Some(key) = self.key() else {
            self.reject(Reject::Unauthenticated, from);
            return;
        };
        let packet = match membership::decode(bytes, &key) {
            Ok(p) => p,
            Err(r) => return self.reject(r, from),
        };
        if let Kind::LeaveAck { incarnation } = packet.kind {
            // Acks are addressed to one incarnation of this node; a replay
            // from an earlier stop is not an ack now.
            if incarnation != self.incarnation {
                return self.reject(Reject::Replayed, from);
            }
        }
        if let Err(r) = self.detector.accept(&packet, Instant::now()) {
            return self.reject(r, from);
        }
        self.heard.insert(packet.node.clone());
        if let Some(stall) = &mut self.stall {
            stall.heard.insert(packet.node.clone());
        }
        match packet.kind {
            Kind::Heartbeat => {}
            Kind::Leave => {
                info!(node = %packet.node, "peer leaves");
                // Acknowledged once the daemon has applied a generation
                // that no longer counts the peer (see `publish`).
                let view = self.view.borrow();
                let generation = view.generation + u64::from(view.alive.contains(&packet.node));
                drop(view);
                self.pending_acks
                    .insert(packet.node.clone(), (generation, from, packet.incarnation));
            }
            Kind::LeaveAck { .. } => {
                if let Some(l) = &mut self.leaving
                    && l.waiting.remove(&packet.node)
                {
                    l.acknowledged.insert(packet.node.clone());
                }
            }
        }
    }

    fn reject(&self, reason: Reject, from: SocketAddr) {
        debug!(%from, %reason, "dropped membership packet");
        self.metrics.membership_rejected(reason.label());
    }

    /// Publishes a new view when something in it changed.
    fn publish(&mut self) {
        // Again here: the process may have been stopped since the check
        // after the wake-up, and the epoch must not be renewed as current
        // across a gap it has not looked at.
        self.check_stall();
        let now = Instant::now();
        let alive = self.detector.alive(now);
        let expected: BTreeSet<String> = self.peer_addrs().into_iter().map(|(n, _)| n).collect();
        let has_key = self.key.borrow().is_some();
        let peers_known = self.peers.borrow().is_some();
        let joined = has_key
            && peers_known
            && (self.view.borrow().joined
                || expected.is_subset(&self.heard)
                || now >= self.started + self.settings.join_grace);
        if let Some(stall) = &self.stall
            && liveness::rejoined(
                stall.since,
                crate::clock::boottime(),
                self.settings.timeout,
                self.settings.join_grace,
                &expected,
                &stall.heard,
            )
        {
            let missing: Vec<_> = expected.difference(&stall.heard).collect();
            info!(?missing, "re-joined after the stall");
            self.stall = None;
        }
        let rejoining = self.stall.is_some();
        // With one expected peer, its silence cannot be told apart from its
        // death, so the survivor keeps announcing (a cut owner still fences
        // on its own link state). With two or more, hearing none of them
        // means this node is the one cut off. While re-joining, peers are
        // silent only because their packets from the stall were discarded.
        let fenced = joined && !rejoining && expected.len() >= 2 && alive.len() == 1;
        self.metrics.members_alive.set(alive.len() as i64);
        // Renewed after every run, and before the view goes out, so that
        // the daemon acting on a re-join finds the epoch current: the
        // responders answer while this stamp is young and the view current.
        // The stamp is the time of the gap check above, never later: if the
        // process stops right here, the stamp it writes on resuming is
        // already old, and the responders refuse until the next check.
        self.liveness.renew(self.last_run, joined && !rejoining);
        self.view.send_if_modified(|v| {
            let mut changed = false;
            if v.alive != alive {
                if v.joined {
                    let gone: Vec<_> = v.alive.difference(&alive).collect();
                    let new: Vec<_> = alive.difference(&v.alive).collect();
                    info!(?gone, ?new, "members changed");
                }
                v.alive = alive;
                v.generation += 1;
                changed = true;
            }
            if v.rejoining != rejoining {
                v.rejoining = rejoining;
                changed = true;
            }
            if v.joined != joined || v.fenced != fenced {
                if fenced {
                    warn!("no peer reachable while peers are expected: stopping announcements (fenced)");
                } else if v.fenced {
                    info!("peers reachable again: no longer fenced");
                }
                v.joined = joined;
                v.fenced = fenced;
                changed = true;
            }
            changed
        });
    }

    fn send_due_acks(&mut self) {
        if self.pending_acks.is_empty() {
            return;
        }
        let applied = *self.applied.borrow();
        let Some(key) = self.key() else { return };
        let due: Vec<String> = self
            .pending_acks
            .iter()
            .filter(|(_, (g, _, _))| *g <= applied)
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            if let Some((_, to, incarnation)) = self.pending_acks.remove(&node) {
                debug!(%node, "acknowledging leave");
                self.send(Kind::LeaveAck { incarnation }, to, &key);
            }
        }
    }

    fn start_leave(&mut self, reply: oneshot::Sender<LeaveOutcome>) {
        let waiting: BTreeSet<String> = self
            .detector
            .alive(Instant::now())
            .into_iter()
            .filter(|n| *n != self.settings.node)
            .collect();
        info!(peers = ?waiting, "leaving: telling peers");
        self.leaving = Some(Leaving {
            reply,
            started: Instant::now(),
            waiting,
            acknowledged: BTreeSet::new(),
        });
        self.send_all(Kind::Leave);
    }

    /// Repeats the leave to peers that have not acknowledged it, and
    /// reports when all have or time is up.
    fn resend_leave(&mut self) {
        let Some(l) = &self.leaving else { return };
        if l.waiting.is_empty() || l.started.elapsed() >= self.leave_timeout {
            if let Some(l) = self.leaving.take() {
                let _ = l.reply.send(LeaveOutcome {
                    took: l.started.elapsed(),
                    acknowledged: l.acknowledged,
                    missing: l.waiting,
                });
            }
            // Heartbeats do not resume: this incarnation has left.
            self.left = true;
            return;
        }
        let waiting = l.waiting.clone();
        let Some(key) = self.key() else { return };
        for (name, addr) in self.peer_addrs() {
            if waiting.contains(&name) {
                self.send(Kind::Leave, addr, &key);
            }
        }
    }
}
