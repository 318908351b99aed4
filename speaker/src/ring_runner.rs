//! The membership runner for the ring protocol (docs/membership.md): the
//! UDP socket, the clock and the peer list around `ferrolb_core::ring`.
//! It publishes the same [`View`] as the all-to-all runner in
//! [`crate::membership`], so the daemon does not know which one runs.
//!
//! As there, it runs on its own thread and runtime, keeps the liveness
//! epoch, and treats a gap in its own clock as a stall: what queued up in
//! the socket is discarded and the node re-joins under a new incarnation
//! before it announces again. `View::alive` holds the members that may own
//! addresses: a member in hold-down (removed as failed a short while ago,
//! or this node after a stall) is left out unless no member is free.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrolb_core::ring::wire::{self, Message};
use ferrolb_core::ring::{Member, Output, Rejoin, Settings as RingSettings};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::liveness::Liveness;
use crate::membership::{
    Handle, LeaveOutcome, Settings, Stalled, View, detect_stall, peer_socket_addr,
};
use crate::metrics::Metrics;

/// The ring protocol's settings from the speaker's: the removal time
/// (`timeout`) is the edge timeout plus the settle time.
pub fn ring_settings(s: &Settings) -> RingSettings {
    let d = RingSettings::default();
    let edge = s.timeout.saturating_sub(d.settle).max(s.interval * 3);
    RingSettings {
        interval: s.interval,
        edge_timeout: edge,
        stall_after: edge,
        join_grace: s.join_grace,
        hold_down: s.hold_down,
        ..d
    }
}

pub(crate) fn start(
    settings: Settings,
    leave_timeout: Duration,
    metrics: Arc<Metrics>,
    socket: std::net::UdpSocket,
    liveness: Arc<Liveness>,
) -> io::Result<Handle> {
    let (view_tx, view_rx) = watch::channel(View::default());
    let (peers_tx, peers_rx) = watch::channel(None);
    let (key_tx, key_rx) = watch::channel(None);
    let (applied_tx, applied_rx) = watch::channel(0);
    let (leave_tx, leave_rx) = mpsc::channel(1);
    let (pause_tx, pause_rx) = watch::channel(false);
    let runner_live = liveness.clone();
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
                let mut ring = ring_settings(&settings);
                ring.leave_timeout = leave_timeout;
                Runner {
                    ring,
                    settings,
                    socket,
                    metrics,
                    member: None,
                    core_view: None,
                    view: view_tx,
                    peers: peers_rx,
                    key: key_rx,
                    applied: applied_rx,
                    leave_rx,
                    pending_acks: Vec::new(),
                    leave_reply: None,
                    left: false,
                    pause: pause_rx,
                    paused: false,
                    last_run: crate::clock::boottime(),
                    rejoining: None,
                    deaf: false,
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
        liveness,
        leave: leave_tx,
        pause: crate::datapath::Pause::new(pause_tx),
    })
}

struct Runner {
    ring: RingSettings,
    settings: Settings,
    socket: UdpSocket,
    metrics: Arc<Metrics>,
    /// Started once the key and the peer list are known.
    member: Option<Member>,
    /// What the published view needs from the member's, as last read:
    /// rebuilt (a walk over the member table) only when the member says
    /// its view changed, never per packet.
    core_view: Option<Snapshot>,
    view: watch::Sender<View>,
    peers: watch::Receiver<Option<BTreeMap<String, IpAddr>>>,
    key: watch::Receiver<Option<Vec<u8>>>,
    applied: watch::Receiver<u64>,
    leave_rx: mpsc::Receiver<oneshot::Sender<LeaveOutcome>>,
    /// Leaves to acknowledge: (node, incarnation, generation that no
    /// longer counts it; `None` until published).
    pending_acks: Vec<(String, u64, Option<u64>)>,
    leave_reply: Option<oneshot::Sender<LeaveOutcome>>,
    left: bool,
    /// Whether the daemon asked to stay out (the data path is down).
    pause: watch::Receiver<bool>,
    /// Out because of a pause (a leave of its own, not the daemon's
    /// SIGTERM leave): joins again when the pause ends.
    paused: bool,
    last_run: Duration,
    /// Re-joining after a stall (or a removal) since then (boot-based
    /// clock): until joined again and at least one membership timeout
    /// later, so that requests queued during the stall have aged out and
    /// the daemon sees the re-join.
    rejoining: Option<Duration>,
    /// The core said this node hears nothing (logged when it changes).
    deaf: bool,
    liveness: Arc<Liveness>,
}

/// The parts of `ferrolb_core::ring::View` the published [`View`] is made of.
struct Snapshot {
    joined: bool,
    fenced: bool,
    deaf: bool,
    members: usize,
    /// The members that may own addresses (hold-downs applied). A
    /// hold-down's end is a view change of its own, so this stays right
    /// until the next one.
    electable: BTreeSet<String>,
}

enum Wake {
    Timer,
    Received(usize, SocketAddr),
    ReceiveFailed(io::Error),
    Applied(bool),
    Peers(bool),
    Key(bool),
    Leave(oneshot::Sender<LeaveOutcome>),
    Pause(bool),
}

fn incarnation_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

impl Runner {
    async fn run(mut self) {
        info!(bind = %self.settings.bind, interval = ?self.ring.interval, edge_timeout = ?self.ring.edge_timeout, k = self.ring.k, "membership (ring) started");
        let mut buf = [0u8; 2048];
        self.liveness.renew(self.last_run, false);
        loop {
            let now = Instant::now();
            // At least every interval, so that the liveness stamp stays
            // young even without a member.
            let next = self
                .member
                .as_ref()
                .map_or(now + self.ring.interval, |m| m.next_deadline())
                .min(now + self.ring.interval);
            let woke = tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => Wake::Timer,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => Wake::Received(n, from),
                    Err(e) => Wake::ReceiveFailed(e),
                },
                r = self.applied.changed() => Wake::Applied(r.is_ok()),
                r = self.peers.changed() => Wake::Peers(r.is_ok()),
                r = self.key.changed() => Wake::Key(r.is_ok()),
                Some(reply) = self.leave_rx.recv() => Wake::Leave(reply),
                r = self.pause.changed() => Wake::Pause(r.is_ok()),
            };
            let stalled = self.check_stall();
            let now = Instant::now();
            match woke {
                Wake::Timer => {
                    if let Some(m) = &mut self.member {
                        m.tick(now);
                    }
                }
                Wake::Received(n, from) => {
                    if !stalled {
                        self.receive(&buf[..n], from, now);
                    }
                }
                Wake::ReceiveFailed(e) => {
                    warn!(error = %e, "membership receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Wake::Applied(ok) | Wake::Key(ok) => {
                    if !ok {
                        return;
                    }
                }
                Wake::Peers(ok) => {
                    if !ok {
                        return;
                    }
                    let names = self.candidates();
                    if let Some(m) = &mut self.member {
                        m.set_candidates(names, now);
                    }
                }
                Wake::Pause(ok) => {
                    if ok {
                        self.apply_pause(now);
                    }
                }
                Wake::Leave(reply) => match &mut self.member {
                    Some(m) if !self.left => {
                        info!(peers = m.members().count() - 1, "leaving: telling peers");
                        m.leave(now);
                        self.leave_reply = Some(reply);
                    }
                    _ => {
                        let _ = reply.send(LeaveOutcome {
                            acknowledged: BTreeSet::new(),
                            missing: BTreeSet::new(),
                            took: Duration::ZERO,
                        });
                    }
                },
            }
            self.start_member(now);
            self.drain();
            self.publish(now);
            self.send_due_acks();
        }
    }

    fn candidates(&self) -> BTreeSet<String> {
        self.peers
            .borrow()
            .iter()
            .flatten()
            .map(|(n, _)| n.clone())
            .chain([self.settings.node.clone()])
            .collect()
    }

    /// Leaves gracefully when the daemon asks to stay out (the data path
    /// is down; peers take over before this node stops answering), and
    /// joins again, under a new incarnation, once it no longer does.
    fn apply_pause(&mut self, now: Instant) {
        let want = *self.pause.borrow_and_update();
        if want && !self.paused {
            self.paused = true;
            match &mut self.member {
                Some(m) if !self.left && self.leave_reply.is_none() => {
                    warn!(
                        peers = m.members().count() - 1,
                        "the data path is down: leaving the membership, peers take over"
                    );
                    m.leave(now);
                }
                _ => {}
            }
        } else if !want && self.paused {
            self.paused = false;
            if self.leave_reply.is_some() {
                return; // the daemon's own leave (SIGTERM) is under way
            }
            info!("the data path is back: joining the membership again");
            // A fresh member: a new incarnation, joined as at start. Until
            // the old one's leave finished, peers see it leave first.
            self.member = None;
            self.left = false;
            self.core_view = None;
            // Peers that removed it as failed (its leave did not reach
            // them) say so in their welcome, and it holds itself down as
            // they do (core::ring, `Welcome { held }`).
            self.start_member(now);
        }
    }

    /// The protocol starts (and joins) once the key and the peer list
    /// are known: before that nothing could be sent or expected. Not while
    /// paused.
    fn start_member(&mut self, now: Instant) {
        if self.member.is_some()
            || self.paused
            || self.key.borrow().is_none()
            || self.peers.borrow().is_none()
        {
            return;
        }
        let mut m = Member::new(
            self.settings.node.clone(),
            incarnation_now(),
            self.ring.clone(),
            now,
        );
        m.set_candidates(self.candidates(), now);
        self.member = Some(m);
        self.core_view = None;
    }

    /// A gap in the loop's clock longer than the stall threshold: re-join
    /// (see `crate::membership` for the same rule in the other runner).
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
            "the membership loop did not run for longer than peers wait: re-joining before announcing or answering"
        );
        if let Some(m) = &mut self.member
            && !self.left
        {
            m.rejoin(Instant::now());
            self.rejoining = Some(now);
        }
        true
    }

    fn receive(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        self.metrics.membership_packets_received.inc();
        let Some(key) = self.key.borrow().clone() else {
            return self.reject(ferrolb_core::membership::Reject::Unauthenticated, from);
        };
        let msg = match wire::decode(bytes, &key) {
            Ok(m) => m,
            Err(r) => return self.reject(r, from),
        };
        let Some(m) = &mut self.member else { return };
        if let Err(r) = m.handle(msg, now) {
            self.reject(r, from);
        }
    }

    fn reject(&self, reason: ferrolb_core::membership::Reject, from: SocketAddr) {
        debug!(%from, %reason, "dropped membership packet");
        self.metrics.membership_rejected(reason.label());
    }

    fn send(&self, to: &str, msg: &Message, key: &[u8]) {
        let port = self.settings.bind.port();
        let Some(ip) = self
            .peers
            .borrow()
            .as_ref()
            .and_then(|p| p.get(to).copied())
        else {
            return;
        };
        let Some(bytes) = wire::encode(msg, key) else {
            return;
        };
        let to = peer_socket_addr(ip, port);
        match self.socket.try_send_to(&bytes, to) {
            Ok(_) => {
                self.metrics.membership_packets_sent.inc();
            }
            Err(e) => debug!(%to, error = %e, "membership send failed"),
        }
    }

    fn drain(&mut self) {
        let Some(mut m) = self.member.take() else {
            return;
        };
        let key = self.key.borrow().clone();
        while let Some(out) = m.poll() {
            match out {
                Output::Send { to, msg } => {
                    if let Some(k) = &key {
                        self.send(&to, &msg, k);
                    }
                }
                Output::ViewChanged => self.core_view = None,
                Output::Added(n) => debug!(node = %n, "member added"),
                Output::Removed(n, why) => info!(node = %n, ?why, "member removed"),
                Output::PeerLeft { node, incarnation } => {
                    info!(%node, "peer leaves");
                    self.pending_acks.push((node, incarnation, None));
                }
                Output::Rejoined { incarnation, why } => {
                    match why {
                        Rejoin::Removed => {
                            warn!(incarnation, "peers removed this node: re-joining")
                        }
                        _ => info!(incarnation, ?why, "re-joining"),
                    }
                    self.rejoining.get_or_insert(crate::clock::boottime());
                }
                Output::Left(outcome) => {
                    self.left = true;
                    if let Some(reply) = self.leave_reply.take() {
                        let _ = reply.send(LeaveOutcome {
                            acknowledged: outcome.acknowledged,
                            missing: outcome.missing,
                            took: outcome.took,
                        });
                    }
                }
            }
        }
        self.member = Some(m);
    }

    fn publish(&mut self, now: Instant) {
        // As in the other runner: look at the clock again before the
        // stamp is renewed as current.
        self.check_stall();
        let Some(m) = &self.member else {
            self.liveness.renew(self.last_run, false);
            return;
        };
        let fresh = self.core_view.is_none();
        let v = self.core_view.get_or_insert_with(|| {
            let v = m.view();
            Snapshot {
                joined: v.joined,
                fenced: v.fenced,
                deaf: v.deaf,
                members: v.members.len(),
                electable: v.electable(now),
            }
        });
        let joined = v.joined && !self.left;
        if let Some(since) = self.rejoining
            && joined
            && crate::clock::boottime().saturating_sub(since) >= self.settings.timeout
        {
            info!("re-joined");
            self.rejoining = None;
        }
        self.metrics.members_alive.set(v.members as i64);
        let rejoining = self.rejoining.is_some();
        self.liveness
            .renew(self.last_run, joined && !rejoining && !v.fenced);
        if self.deaf != v.deaf {
            self.deaf = v.deaf;
            if v.deaf {
                warn!(
                    port = self.settings.bind.port(),
                    "no membership packet from any peer: this node withholds its reports, stops announcing and soon its heartbeats, so that its peers take over its addresses (is inbound UDP to this port filtered on this node?)"
                );
            } else {
                info!("membership packets from peers again");
            }
        }
        self.view.send_if_modified(|view| {
            let mut changed = false;
            if fresh && view.alive != v.electable {
                if view.joined {
                    let gone: Vec<_> = view.alive.difference(&v.electable).collect();
                    let new: Vec<_> = v.electable.difference(&view.alive).collect();
                    info!(?gone, ?new, "members that may own addresses changed");
                }
                view.alive = v.electable.clone();
                view.generation += 1;
                changed = true;
            }
            if view.rejoining != rejoining {
                view.rejoining = rejoining;
                changed = true;
            }
            if view.joined != joined || view.fenced != v.fenced {
                if v.fenced && !view.fenced {
                    warn!("this node cannot tell it is on the majority side: stopping announcements (fenced)");
                } else if view.fenced && !v.fenced {
                    info!("no longer fenced");
                }
                view.joined = joined;
                view.fenced = v.fenced;
                changed = true;
            }
            changed
        });
        let generation = self.view.borrow().generation;
        for p in &mut self.pending_acks {
            p.2.get_or_insert(generation);
        }
    }

    fn send_due_acks(&mut self) {
        if self.pending_acks.is_empty() {
            return;
        }
        let applied = *self.applied.borrow();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_acks)
            .into_iter()
            .partition(|(_, _, g)| g.is_some_and(|g| g <= applied));
        self.pending_acks = wait;
        if let Some(m) = &mut self.member {
            for (node, inc, _) in due {
                debug!(%node, "acknowledging leave");
                m.acknowledge_leave(&node, inc);
            }
        }
        self.drain();
    }
}
