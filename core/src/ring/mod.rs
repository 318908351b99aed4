//! Ring membership among speakers (docs/membership.md): who is a live
//! member, agreed by all, at a cost per node that does not grow with the
//! cluster.
//!
//! Each node is watched by at most `K` observers, its successors on `K`
//! pseudo-random rings over the members ([`topology`]). A node sends
//! heartbeats only to its observers. An observer that hears nothing from
//! a subject for the edge timeout reports it down to every member, and
//! reports it up again when it hears it. A node is removed when enough of
//! its observers agree: at least three quarters of them, counting an
//! observer that is itself reported as an implicit report (a partition
//! silences both). One lossy link is one report and never removes anyone.
//!
//! Removals wait until reports have been quiet for a short settle time, so
//! that everything one fault causes is removed at once, and only a side
//! holding a majority of the current members removes anyone: a node that
//! sees reports against half or more of the members, or has lost most of
//! its own subjects for reasons no removal explains, is *fenced*: it keeps
//! its view and stops announcing. Views spread by the same reports; any
//! remaining difference is repaired by pulling a neighbour's member table
//! when the view ids on heartbeats keep differing.
//!
//! This is sans-I/O: the speaker and the simulator ([`sim`]) feed messages
//! and instants into a [`Member`] and carry out its [`Output`]s.

mod cut;
pub mod sim;
pub mod topology;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::membership::Reject;
pub use topology::Topology;
use wire::{Alert, Body, MAX_DATAGRAM, Message, SyncEntry};

/// Timing and size of the protocol. The defaults are what the speaker
/// uses; docs/membership.md explains each.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Observers per node (rings).
    pub k: usize,
    /// Time between heartbeats to each observer.
    pub interval: Duration,
    /// An observer reports a subject down after hearing nothing for this.
    pub edge_timeout: Duration,
    /// Removals wait until no report has changed for this long...
    pub settle: Duration,
    /// ...or until they have waited this long.
    pub settle_max: Duration,
    /// A report is sent again this long after its first copy.
    pub report_resend: Duration,
    /// A down report still in force is repeated this often.
    pub report_refresh: Duration,
    /// A down report goes first only to the subject's other observers; it
    /// goes to every member once another observer reports the subject too,
    /// this node has a second subject down, or it has been in force this
    /// long. One lossy edge then costs a few packets, not one per member.
    pub confirm_within: Duration,
    /// `Join` is repeated this often to candidates that have not answered.
    pub join_resend: Duration,
    /// After this long a joining node counts as joined even if some
    /// candidates never answered (they are not running).
    pub join_grace: Duration,
    /// A neighbour whose view id differs for this long is asked for its
    /// member table.
    pub sync_after: Duration,
    /// At most one table request to one neighbour per this long.
    pub sync_gap: Duration,
    /// A gap this long in the caller's clock (a stall) makes the node
    /// re-join.
    pub stall_after: Duration,
    /// `Leave` is repeated this often to peers that have not acknowledged.
    pub leave_resend: Duration,
    /// A leave gives up waiting for acknowledgements after this.
    pub leave_timeout: Duration,
    /// Removed members are remembered this long, so that an old table
    /// cannot bring them back.
    pub tombstone_ttl: Duration,
    /// A node removed as failed (or re-joining after a stall or a
    /// removal) may not own addresses for this long after, unless no
    /// other member can: its addresses do not flip back at once.
    pub hold_down: Duration,
    /// A joined member sends a `Join` to two candidates outside its view
    /// this often (in turn): a node that counted itself joined before
    /// anyone answered, or that its peers removed while it heard none of
    /// them, finds its way back (an answer admits it, or tells it it was
    /// removed and must re-join). Costs nothing while every candidate is a
    /// member.
    pub probe_outside: Duration,
}

impl Settings {
    /// How long a down report stays in force at other nodes without being
    /// repeated, and how long a packet from a member counts as recent
    /// (three refresh periods).
    pub fn report_lifetime(&self) -> Duration {
        self.report_refresh * 3
    }

    /// A node with two or more subjects that has heard no packet at all
    /// for this long (half the edge timeout) is *deaf*: it sends none of
    /// its down reports (they would name every subject and say more about
    /// this node than about them). Once deaf for an edge timeout more it
    /// also stops its heartbeats, so that its observers remove it and its
    /// addresses move to a node that hears (docs/membership.md, "A node
    /// that hears nothing").
    pub fn deaf_after(&self) -> Duration {
        self.edge_timeout / 2
    }
}

impl Default for Settings {
    fn default() -> Settings {
        let ms = Duration::from_millis;
        Settings {
            k: 8,
            interval: ms(20),
            edge_timeout: ms(100),
            settle: ms(30),
            settle_max: ms(60),
            report_resend: ms(10),
            report_refresh: ms(500),
            confirm_within: ms(40),
            join_resend: ms(200),
            join_grace: ms(1000),
            sync_after: ms(100),
            sync_gap: ms(500),
            stall_after: ms(100),
            leave_resend: ms(5),
            leave_timeout: ms(500),
            tombstone_ttl: Duration::from_secs(600),
            hold_down: Duration::from_secs(10),
            probe_outside: ms(1000),
        }
    }
}

/// Why a member left the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Its observers agreed it is unreachable.
    Failed,
    /// It said it leaves.
    Left,
    /// A neighbour's table said it was removed.
    Synced,
}

/// What the caller must do or know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to `to` (a node name; the caller knows its address).
    Send {
        to: String,
        msg: Message,
    },
    /// `view()` changed (members, joined or fenced).
    ViewChanged,
    Added(String),
    Removed(String, Removal),
    /// `node` (at `incarnation`) left; call `acknowledge_leave` once the
    /// change is applied.
    PeerLeft {
        node: String,
        incarnation: u64,
    },
    /// This node started again under a new incarnation.
    Rejoined {
        incarnation: u64,
        why: Rejoin,
    },
    /// A leave finished.
    Left(LeaveOutcome),
}

/// Why this node re-joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// The caller's clock jumped (the process was stopped or starved).
    Stall,
    /// The other members removed this node.
    Removed,
    /// The caller asked.
    Asked,
}

/// How a leave ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveOutcome {
    pub took: Duration,
    pub acknowledged: BTreeSet<String>,
    pub missing: BTreeSet<String>,
}

/// The current membership as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Counts changes of `members`.
    pub generation: u64,
    /// A digest of the members and their incarnations.
    pub id: u64,
    /// Live members (this node included) and since when each is one here.
    pub members: BTreeMap<String, Instant>,
    /// Every candidate answered this incarnation's join, or the grace
    /// passed.
    pub joined: bool,
    /// This node cannot tell that it is on the majority side: it must not
    /// announce.
    pub fenced: bool,
    /// This node hears no packet at all (see `Settings::deaf_after`): it
    /// withholds its reports and, soon after, its heartbeats.
    pub deaf: bool,
    pub incarnation: u64,
    /// Members in hold-down, and until when.
    pub held: BTreeMap<String, Instant>,
}

impl View {
    /// The members that may own addresses at `now`: those not in
    /// hold-down, or all of them if every member is.
    pub fn electable(&self, now: Instant) -> BTreeSet<String> {
        let free: BTreeSet<String> = self
            .members
            .keys()
            .filter(|m| self.held.get(*m).is_none_or(|until| *until <= now))
            .cloned()
            .collect();
        if free.is_empty() {
            self.members.keys().cloned().collect()
        } else {
            free
        }
    }

    /// Whether this node may announce addresses.
    pub fn may_announce(&self) -> bool {
        self.joined && !self.fenced
    }
}

#[derive(Clone, Debug)]
struct Row {
    incarnation: u64,
    alive: bool,
    /// Alive: since when a member here. Removed: when removed.
    since: Instant,
    /// When a packet of this incarnation last reached this node.
    heard: Option<Instant>,
}

/// One subject this node watches.
#[derive(Clone, Debug)]
struct Edge {
    last_heard: Instant,
    down: bool,
}

/// A report of this node's that is still being sent.
#[derive(Clone, Debug)]
struct Report {
    incarnation: u64,
    down: bool,
    /// The next copy is due then.
    next: Instant,
    /// Quick copies still to send; after them a down report is repeated
    /// every `report_refresh`, an up report is done.
    quick: u8,
    /// Sent to every member (else only to the subject's other observers;
    /// an up report goes where its down report went).
    wide: bool,
    /// When the down report started.
    since: Instant,
}

/// Replay protection for one sender: a 64-packet window, as IPsec's, so
/// that packets the network reorders are still accepted once.
#[derive(Clone, Copy, Debug)]
struct Window {
    incarnation: u64,
    top: u64,
    seen: u64,
}

impl Window {
    fn accept(
        w: Option<&mut Window>,
        incarnation: u64,
        seq: u64,
    ) -> Result<Option<Window>, Reject> {
        let fresh = Window {
            incarnation,
            top: seq,
            seen: 1,
        };
        let Some(w) = w else { return Ok(Some(fresh)) };
        if incarnation < w.incarnation {
            return Err(Reject::Replayed);
        }
        if incarnation > w.incarnation {
            *w = fresh;
            return Ok(None);
        }
        if seq > w.top {
            let shift = seq - w.top;
            w.seen = if shift >= 64 { 0 } else { w.seen << shift } | 1;
            w.top = seq;
            return Ok(None);
        }
        let back = w.top - seq;
        if back >= 64 || w.seen & (1 << back) != 0 {
            return Err(Reject::Replayed);
        }
        w.seen |= 1 << back;
        Ok(None)
    }
}

#[derive(Clone, Debug)]
struct Leaving {
    started: Instant,
    next: Instant,
    waiting: BTreeSet<String>,
    acknowledged: BTreeSet<String>,
}

/// One node's protocol state.
#[derive(Debug)]
pub struct Member {
    s: Settings,
    me: String,
    incarnation: u64,
    seq: u64,
    started: Instant,
    last_input: Instant,
    /// Every node known: members and removed ones.
    table: BTreeMap<Arc<str>, Row>,
    topology: Topology,
    view_id: u64,
    generation: u64,
    /// Who may be a member (from the Kubernetes API): joins go to them.
    candidates: BTreeSet<String>,
    /// Per sender: the replay window.
    accepted: HashMap<String, Window>,
    /// This node's observers (its heartbeats go to them).
    observers: Vec<String>,
    /// Subjects this node watches.
    watching: BTreeMap<String, Edge>,
    /// Down reports in force and the cut they make.
    reports: cut::Reports,
    /// This node's own reports still being sent.
    mine: BTreeMap<String, Report>,
    reports_changed: Instant,
    cut_since: Option<Instant>,
    /// When this node last accepted a packet from anyone.
    last_heard_any: Instant,
    /// `deaf` as last published in the view.
    hears_nothing: bool,
    next_heartbeat: Instant,
    welcomed: BTreeSet<String>,
    /// Candidates that have not answered this incarnation's join.
    unanswered: BTreeSet<String>,
    next_join: Option<Instant>,
    /// When to probe candidates outside the view next, and where in their
    /// list.
    next_probe: Instant,
    /// When to drop others' reports that were not repeated next.
    next_expiry: Instant,
    probe_cursor: usize,
    joined: bool,
    fenced: bool,
    /// Neighbours whose view id differs from this node's, since when.
    mismatch: HashMap<String, Instant>,
    sync_requested: HashMap<String, Instant>,
    removed_notified: HashMap<String, Instant>,
    leaving: Option<Leaving>,
    left: bool,
    /// Hold-downs: name -> until.
    held: BTreeMap<String, Instant>,
    /// Nodes removed as failed whose re-admission starts a hold-down.
    failed: BTreeSet<String>,
    out: VecDeque<Output>,
}

/// The view id of one member: the set's id is the xor of its members'.
fn row_id(name: &str, incarnation: u64) -> u64 {
    topology::splitmix(topology::position(name, u32::MAX) ^ incarnation)
}

impl Member {
    /// A node named `me` starting at `now` under `incarnation`, which must
    /// be larger than any earlier incarnation of this node (the speaker
    /// uses the wall clock in nanoseconds). It joins at once.
    pub fn new(
        me: impl Into<String>,
        incarnation: u64,
        settings: Settings,
        now: Instant,
    ) -> Member {
        let me = me.into();
        let k = settings.k;
        let mut m = Member {
            s: settings,
            me: me.clone(),
            incarnation,
            seq: 0,
            started: now,
            last_input: now,
            table: BTreeMap::new(),
            topology: Topology::empty(k),
            view_id: 0,
            generation: 0,
            candidates: BTreeSet::new(),
            accepted: HashMap::new(),
            observers: Vec::new(),
            watching: BTreeMap::new(),
            reports: cut::Reports::new(&me),
            mine: BTreeMap::new(),
            reports_changed: now,
            cut_since: None,
            last_heard_any: now,
            hears_nothing: false,
            next_heartbeat: now,
            welcomed: BTreeSet::new(),
            unanswered: BTreeSet::new(),
            next_join: Some(now),
            next_probe: now,
            next_expiry: now,
            probe_cursor: 0,
            joined: false,
            fenced: false,
            mismatch: HashMap::new(),
            sync_requested: HashMap::new(),
            removed_notified: HashMap::new(),
            leaving: None,
            left: false,
            held: BTreeMap::new(),
            failed: BTreeSet::new(),
            out: VecDeque::new(),
        };
        m.set_row(
            &me,
            Row {
                incarnation,
                alive: true,
                since: now,
                heard: None,
            },
        );
        m.view_changed(now);
        m
    }

    /// A node of a cluster that formed earlier: `members` (with their
    /// incarnations) are its view and it counts as joined. The simulator
    /// starts large clusters this way; a real speaker always joins.
    pub fn formed(
        me: impl Into<String>,
        incarnation: u64,
        settings: Settings,
        now: Instant,
        members: &[(Arc<str>, u64)],
    ) -> Member {
        let mut m = Member::new(me, incarnation, settings, now);
        for (name, inc) in members {
            if **name != *m.me {
                // Shares the caller's name.
                m.set_row_key(
                    name.clone(),
                    Row {
                        incarnation: *inc,
                        alive: true,
                        since: now,
                        heard: None,
                    },
                );
            }
        }
        m.candidates = members.iter().map(|(n, _)| n.to_string()).collect();
        m.unanswered.clear();
        m.joined = true;
        m.next_join = None;
        m.out.clear();
        m.view_changed(now);
        m.out.clear();
        m
    }

    pub fn name(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The nodes that may be members (the speaker Pods the API lists).
    /// New ones are sent a `Join` at once.
    pub fn set_candidates(&mut self, candidates: BTreeSet<String>, now: Instant) {
        let new: Vec<String> = candidates
            .difference(&self.candidates)
            .filter(|c| **c != self.me && !self.is_member(c))
            .cloned()
            .collect();
        self.candidates = candidates;
        self.unanswered = self
            .candidates
            .iter()
            .filter(|c| **c != self.me && !self.welcomed.contains(*c))
            .cloned()
            .collect();
        if !self.left && self.leaving.is_none() {
            for c in new {
                self.send(&c, Body::Join);
            }
        }
        self.evaluate(now);
    }

    pub fn is_member(&self, name: &str) -> bool {
        self.table.get(name).is_some_and(|r| r.alive)
    }

    /// The current view.
    pub fn view(&self) -> View {
        View {
            generation: self.generation,
            id: self.view_id,
            members: self
                .table
                .iter()
                .filter(|(_, r)| r.alive)
                .map(|(n, r)| (n.to_string(), r.since))
                .collect(),
            joined: self.joined,
            fenced: self.fenced,
            deaf: self.hears_nothing,
            incarnation: self.incarnation,
            held: self.held.clone(),
        }
    }

    /// The live members, this node included, sorted by name.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.topology.members()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn may_announce(&self) -> bool {
        self.joined && !self.fenced && !self.left
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `tick` must run next at the latest.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.next_heartbeat;
        let mut at = |x: Instant| t = t.min(x);
        for e in self.watching.values().filter(|e| !e.down) {
            at(e.last_heard + self.s.edge_timeout);
        }
        if let Some(since) = self.cut_since {
            at((self.reports_changed + self.s.settle).min(since + self.s.settle_max));
        }
        for r in self.mine.values() {
            at(r.next);
            if r.down && !r.wide {
                at(r.since + self.s.confirm_within);
            }
        }
        if let Some(x) = self.next_join {
            at(x);
        }
        if !self.joined {
            at(self.started + self.s.join_grace);
        }
        if let Some(l) = &self.leaving {
            at(l.next);
        }
        if let Some(until) = self.held.values().min() {
            at(*until);
        }
        for (n, since) in &self.mismatch {
            let allowed = self.sync_requested.get(n).map(|t| *t + self.s.sync_gap);
            at((*since + self.s.sync_after).max(allowed.unwrap_or(*since)));
        }
        t
    }

    /// Timers: heartbeats, edge timeouts, removals, resends.
    pub fn tick(&mut self, now: Instant) {
        if self.check_stall(now) {
            return;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.s.interval;
            if self.leaving.is_none() && !self.left && !self.silent(now) {
                for i in 0..self.observers.len() {
                    let o = std::mem::take(&mut self.observers[i]);
                    self.send(&o, Body::Heartbeat);
                    self.observers[i] = o;
                }
            }
        }
        if let Some(at) = self.next_join
            && now >= at
        {
            self.send_joins(now);
        }
        if self.joined && !self.left && self.leaving.is_none() && now >= self.next_probe {
            self.next_probe = now + self.s.probe_outside;
            self.probe_outside();
        }
        self.resend_leave(now);
        if now >= self.next_expiry {
            // Observers repeat a down report every `report_refresh` while it
            // is in force; one not heard for three of those has ended (its
            // up report was lost) or its observer is gone.
            self.next_expiry = now + self.s.report_refresh;
            if self.reports.expire(now, self.s.report_lifetime()) {
                self.reports_changed = now;
            }
        }
        let before = self.held.len();
        self.held.retain(|_, until| *until > now);
        if self.held.len() != before {
            self.out.push_back(Output::ViewChanged);
        }
        self.evaluate(now);
    }

    /// A message from the network, already authenticated by `wire::decode`.
    /// `Err` says why it was dropped (the caller counts it).
    pub fn handle(&mut self, msg: Message, now: Instant) -> Result<(), Reject> {
        if self.check_stall(now) {
            return Err(Reject::Replayed);
        }
        let r = self.accept(msg, now);
        self.evaluate(now);
        r
    }

    /// Starts a graceful leave: every member is told, and `Output::Left`
    /// follows once all acknowledged or the leave timeout passed.
    pub fn leave(&mut self, now: Instant) {
        if self.leaving.is_some() || self.left {
            return;
        }
        let waiting: BTreeSet<String> = self.peers().into_iter().collect();
        for p in &waiting {
            self.send(p, Body::Leave);
        }
        self.leaving = Some(Leaving {
            started: now,
            next: now + self.s.leave_resend,
            waiting,
            acknowledged: BTreeSet::new(),
        });
        self.resend_leave(now);
    }

    /// Tells `node` that its leave (of `incarnation`) has been applied.
    pub fn acknowledge_leave(&mut self, node: &str, incarnation: u64) {
        self.send_to_inc(node, incarnation, Body::LeaveAck);
    }

    /// Starts again under a new incarnation (the caller found a stall).
    pub fn rejoin(&mut self, now: Instant) {
        self.restart(now, Rejoin::Asked);
    }

    /// Holds this node back from owning addresses as its peers do after
    /// removing it as failed: for the hold-down from `now`, plus two
    /// intervals so that the old owner stops first. After a stall, and for a
    /// fresh member whose peers' welcome says they removed it as failed (a
    /// restarted process, or one back from a cut link whose leave reached
    /// no one): they hold it down from re-admitting it, and without this it
    /// would own its addresses at once while they give them to others.
    fn hold_self(&mut self, now: Instant) {
        let me = self.me.clone();
        self.held
            .insert(me, now + self.s.hold_down + self.s.interval * 2);
    }

    // ----- inputs -----

    /// A gap in the caller's clock longer than `stall_after`: peers have
    /// probably removed this node, so it re-joins before anything else.
    fn check_stall(&mut self, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last_input);
        self.last_input = now;
        if gap >= self.s.stall_after && !self.left {
            self.restart(now, Rejoin::Stall);
            return true;
        }
        false
    }

    /// How long a node with two or more subjects has heard no packet.
    fn unheard_for(&self, now: Instant) -> Duration {
        if self.watching.len() < 2 {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.last_heard_any)
    }

    /// See `Settings::deaf_after`.
    fn deaf(&self, now: Instant) -> bool {
        self.unheard_for(now) >= self.s.deaf_after()
    }

    /// Deaf for an edge timeout: no heartbeats.
    fn silent(&self, now: Instant) -> bool {
        self.unheard_for(now) >= self.s.deaf_after() + self.s.edge_timeout
    }

    fn accept(&mut self, msg: Message, now: Instant) -> Result<(), Reject> {
        if msg.from == self.me {
            return Err(Reject::FromSelf);
        }
        // Everything but a join is addressed to this incarnation.
        if msg.body != Body::Join && msg.to_inc != self.incarnation {
            return Err(Reject::Replayed);
        }
        if let Some(w) = Window::accept(self.accepted.get_mut(&msg.from), msg.from_inc, msg.seq)? {
            self.accepted.insert(msg.from.clone(), w);
        }
        if self.deaf(now) {
            // It hears again. The down reports held back since are sent
            // after one more interval, in which the heartbeats of subjects
            // that are alive come in (and withdraw them); the confirmation
            // wait starts again.
            for r in self.mine.values_mut().filter(|r| r.down && r.next <= now) {
                r.next = now + self.s.interval;
                r.since = now;
            }
        }
        self.last_heard_any = now;
        let known = self.table.get(msg.from.as_str()).cloned();
        let removed = known
            .as_ref()
            .is_some_and(|r| !r.alive && r.incarnation >= msg.from_inc);
        if removed {
            // A removed incarnation: it must re-join under a new one.
            match msg.body {
                Body::Removed { .. } | Body::Sync { .. } | Body::LeaveAck | Body::Leave => {}
                _ => {
                    self.notify_removed(&msg.from, msg.from_inc, now);
                    return Ok(());
                }
            }
        }
        let fresh = msg.body != Body::Join;
        let newer = known.as_ref().is_none_or(|r| r.incarnation < msg.from_inc);
        if fresh
            && newer
            && !matches!(
                msg.body,
                Body::Leave | Body::Removed { .. } | Body::Sync { .. }
            )
        {
            // Addressed to this incarnation, from a newer one of the
            // sender: proof that it runs now.
            self.admit(&msg.from, msg.from_inc, now);
        }
        let from_member = match self.table.get_mut(msg.from.as_str()) {
            Some(r) if r.alive && r.incarnation == msg.from_inc => {
                r.heard = Some(now);
                true
            }
            _ => false,
        };
        match msg.body {
            Body::Heartbeat => {
                if let Some(e) = self.watching.get_mut(&msg.from)
                    && from_member
                {
                    e.last_heard = now;
                    if e.down {
                        e.down = false;
                        self.report(&msg.from, false, now);
                    }
                }
                if from_member {
                    if msg.view_id != self.view_id {
                        self.mismatch.entry(msg.from.clone()).or_insert(now);
                    } else {
                        self.mismatch.remove(&msg.from);
                    }
                }
            }
            Body::Join => {
                if self.leaving.is_none() && !self.left {
                    // Removed as failed (or re-admitted and held since):
                    // the joiner must hold itself down as this node will.
                    let held = self.failed.contains(&msg.from)
                        || self.held.get(&msg.from).is_some_and(|until| *until > now);
                    self.send_to_inc(&msg.from, msg.from_inc, Body::Welcome { held });
                }
            }
            Body::Welcome { held } => {
                if held && !self.held.contains_key(&self.me) {
                    self.hold_self(now);
                    self.out.push_back(Output::ViewChanged);
                }
                self.unanswered.remove(&msg.from);
                if self.welcomed.insert(msg.from.clone())
                    && self.welcomed.len() <= 2
                    && !self.joined
                {
                    // The first answers also bring their member table.
                    self.send(&msg.from, Body::SyncRequest);
                }
                self.send(&msg.from, Body::Hello);
            }
            Body::Hello => {}
            Body::Alerts(alerts) => {
                if from_member {
                    for a in alerts {
                        self.take_report(&msg.from, a, now);
                    }
                }
            }
            Body::Leave => {
                if known.as_ref().is_none_or(|r| r.incarnation <= msg.from_inc) {
                    if self.is_member(&msg.from) {
                        self.remove(&msg.from, msg.from_inc, Removal::Left, now);
                        self.view_changed(now);
                    } else {
                        self.tombstone(&msg.from, msg.from_inc, now);
                    }
                    self.out.push_back(Output::PeerLeft {
                        node: msg.from.clone(),
                        incarnation: msg.from_inc,
                    });
                }
            }
            Body::LeaveAck => {
                if let Some(l) = &mut self.leaving
                    && l.waiting.remove(&msg.from)
                {
                    l.acknowledged.insert(msg.from.clone());
                }
            }
            Body::Removed { incarnation } => {
                if incarnation == self.incarnation && self.leaving.is_none() && !self.left {
                    self.restart(now, Rejoin::Removed);
                }
            }
            Body::SyncRequest => {
                if from_member {
                    self.send_table(&msg.from, now);
                }
            }
            Body::Sync { entries, .. } => self.merge(entries, now),
        }
        Ok(())
    }

    fn take_report(&mut self, observer: &str, a: Alert, now: Instant) {
        let current = self
            .table
            .get(a.subject.as_str())
            .is_some_and(|r| r.alive && r.incarnation == a.incarnation);
        if !current {
            return;
        }
        let changed = self.reports.set(
            &self.topology,
            &a.subject,
            observer,
            a.incarnation,
            a.down,
            now,
        );
        if changed {
            self.reports_changed = now;
        }
    }

    /// Adopts what a neighbour's table knows better: a larger incarnation,
    /// or the removal of the same one.
    fn merge(&mut self, entries: Vec<SyncEntry>, now: Instant) {
        let mut changed = false;
        for e in entries {
            if e.name == self.me {
                if !e.alive
                    && e.incarnation >= self.incarnation
                    && self.leaving.is_none()
                    && !self.left
                {
                    self.restart(now, Rejoin::Removed);
                    return;
                }
                continue;
            }
            let mine = self.table.get(e.name.as_str());
            let better = match mine {
                None => true,
                Some(r) => {
                    r.incarnation < e.incarnation
                        || (r.incarnation == e.incarnation && r.alive && !e.alive)
                }
            };
            if !better {
                continue;
            }
            if e.alive {
                self.insert_alive(&e.name, e.incarnation, now);
                changed = true;
            } else if mine.is_some_and(|r| r.alive) {
                self.remove(&e.name, e.incarnation, Removal::Synced, now);
                changed = true;
            } else {
                self.tombstone(&e.name, e.incarnation, now);
            }
        }
        if changed {
            self.view_changed(now);
        }
    }

    // ----- view changes -----

    fn admit(&mut self, name: &str, incarnation: u64, now: Instant) {
        self.insert_alive(name, incarnation, now);
        self.view_changed(now);
    }

    fn insert_alive(&mut self, name: &str, incarnation: u64, now: Instant) {
        let was = self.table.get(name).cloned();
        self.set_row(
            name,
            Row {
                incarnation,
                alive: true,
                since: now,
                heard: None,
            },
        );
        self.reports.forget_subject(name);
        if self.failed.remove(name) {
            self.held.insert(name.to_owned(), now + self.s.hold_down);
        }
        if was.is_none_or(|r| !r.alive) {
            self.out.push_back(Output::Added(name.to_owned()));
        }
    }

    fn remove(&mut self, name: &str, incarnation: u64, why: Removal, now: Instant) {
        self.tombstone(name, incarnation, now);
        if why != Removal::Left {
            // Held from its re-admission on (below), the moment every
            // member sees at about the same time as the node itself.
            self.failed.insert(name.to_owned());
        }
        self.out.push_back(Output::Removed(name.to_owned(), why));
    }

    fn tombstone(&mut self, name: &str, incarnation: u64, now: Instant) {
        self.set_row(
            name,
            Row {
                incarnation,
                alive: false,
                since: now,
                heard: None,
            },
        );
        self.reports.forget(name);
        self.mismatch.remove(name);
    }

    /// Recomputes what follows from the member set.
    fn view_changed(&mut self, now: Instant) {
        self.generation += 1;
        self.observers = self
            .topology
            .observers(&self.me)
            .into_iter()
            .map(String::from)
            .collect();
        let subjects: BTreeSet<String> = self
            .topology
            .subjects(&self.me)
            .into_iter()
            .map(String::from)
            .collect();
        let dropped: Vec<String> = self
            .watching
            .keys()
            .filter(|s| !subjects.contains(*s))
            .cloned()
            .collect();
        for s in dropped {
            let edge = self.watching.remove(&s);
            if edge.is_some_and(|e| e.down) && self.is_member(&s) {
                self.report(&s, false, now);
            } else {
                self.mine.remove(&s);
            }
        }
        for s in subjects {
            self.watching.entry(s).or_insert(Edge {
                last_heard: now,
                down: false,
            });
        }
        self.cut_since = None;
        self.out.push_back(Output::ViewChanged);
    }

    /// Sets `name`'s row, keeping the rings and the view id in step.
    fn set_row(&mut self, name: &str, row: Row) {
        let key = self
            .table
            .get_key_value(name)
            .map_or_else(|| Arc::from(name), |(k, _)| k.clone());
        self.set_row_key(key, row);
    }

    fn set_row_key(&mut self, key: Arc<str>, row: Row) {
        let old = self.table.insert(key.clone(), row.clone());
        if let Some(o) = old.filter(|o| o.alive) {
            self.view_id ^= row_id(&key, o.incarnation);
            self.topology.remove(&key);
            self.reports.members_changed();
        }
        if row.alive {
            self.view_id ^= row_id(&key, row.incarnation);
            self.topology.insert(&key);
            self.reports.members_changed();
        }
    }

    fn restart(&mut self, now: Instant, why: Rejoin) {
        self.incarnation += 1;
        self.started = now;
        self.last_input = now;
        self.last_heard_any = now;
        self.joined = false;
        self.welcomed.clear();
        self.unanswered = self
            .candidates
            .iter()
            .filter(|c| **c != self.me)
            .cloned()
            .collect();
        self.reports.clear();
        self.mine.clear();
        self.mismatch.clear();
        self.cut_since = None;
        let me = self.me.clone();
        self.set_row(
            &me,
            Row {
                incarnation: self.incarnation,
                alive: true,
                since: now,
                heard: None,
            },
        );
        for e in self.watching.values_mut() {
            e.last_heard = now;
            e.down = false;
        }
        // Peers removed this node (or will): it holds back at least as
        // long as they do, counted from now, which is no earlier than their
        // removal.
        self.hold_self(now);
        self.out.push_back(Output::Rejoined {
            incarnation: self.incarnation,
            why,
        });
        self.view_changed(now);
        self.send_joins(now);
    }

    // ----- decisions -----

    /// Edge timeouts, the cut, fencing, joined.
    fn evaluate(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let expired: Vec<String> = self
            .watching
            .iter()
            .filter(|(_, e)| {
                !e.down && now.saturating_duration_since(e.last_heard) >= self.s.edge_timeout
            })
            .map(|(s, _)| s.clone())
            .collect();
        for s in expired {
            if let Some(e) = self.watching.get_mut(&s) {
                e.down = true;
            }
            self.report(&s, true, now);
        }
        self.confirm_reports(now);
        self.flush_reports(now);
        self.check_sync(now);
        let members = self.topology.len();
        let (reported, stable, unwatched) = self.reports.cut(&self.topology);
        // An unwatched member (no observer of it is on this side) that
        // still sent this node a packet within the report lifetime (its
        // reports of its own subjects) is on this side: its observers are
        // all across. It is neither counted nor removed.
        let ttl = self.s.report_lifetime();
        let excused: BTreeSet<&str> = unwatched
            .iter()
            .map(|n| &**n)
            .filter(|n| {
                self.table
                    .get(*n)
                    .and_then(|r| r.heard)
                    .is_some_and(|h| now.saturating_duration_since(h) < ttl)
            })
            .collect();
        let agreed = |n: &str| stable.contains(n) && !excused.contains(n);
        let excused_agreed = excused.iter().filter(|n| stable.contains(**n)).count();
        let minority = members >= 3 && {
            let lowest = self.topology.lowest();
            let r = reported.len() - excused.len();
            2 * r > members
                || (2 * r == members
                    && lowest.is_some_and(|l| reported.contains(l) && !excused.contains(l)))
        };
        let subjects = self.watching.len();
        let lost = self
            .watching
            .iter()
            .filter(|(s, e)| e.down && !agreed(s.as_str()))
            .count();
        let cut_off = members >= 3 && subjects > 0 && 2 * lost > subjects;
        let condemned = agreed(self.me.as_str());
        let fenced = minority || cut_off || condemned;
        if !fenced && stable.len() > excused_agreed {
            let since = *self.cut_since.get_or_insert(now);
            if now >= self.reports_changed + self.s.settle || now >= since + self.s.settle_max {
                let gone: Vec<(String, u64)> = stable
                    .iter()
                    .filter(|n| !excused.contains(&***n))
                    .filter_map(|n| self.table.get(&**n).map(|r| (n.to_string(), r.incarnation)))
                    .collect();
                for (n, inc) in gone {
                    self.remove(&n, inc, Removal::Failed, now);
                }
                self.view_changed(now);
                return self.evaluate(now);
            }
        } else {
            self.cut_since = None;
        }
        let joined =
            self.joined || now >= self.started + self.s.join_grace || self.unanswered.is_empty();
        if joined && !self.joined {
            // Peers admit this node when its Hello reaches them, and stop
            // announcing what it will own; it waits two intervals more, so
            // that the addresses pass from them to it with a short gap and
            // never with two nodes answering.
            let until = now + self.s.interval * 2;
            let me = self.me.clone();
            let held = self.held.entry(me).or_insert(until);
            *held = (*held).max(until);
        }
        if joined && self.next_join.is_some() && self.joined != joined {
            self.next_join = None;
        }
        let deaf = self.deaf(now);
        if joined != self.joined || fenced != self.fenced || deaf != self.hears_nothing {
            self.joined = joined;
            self.fenced = fenced;
            self.hears_nothing = deaf;
            self.out.push_back(Output::ViewChanged);
        }
    }

    // ----- sending -----

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The live members other than this node.
    fn peers(&self) -> Vec<String> {
        self.table
            .iter()
            .filter(|(n, r)| r.alive && ***n != *self.me)
            .map(|(n, _)| n.to_string())
            .collect()
    }

    fn send_to_inc(&mut self, to: &str, to_inc: u64, body: Body) {
        let msg = Message {
            from: self.me.clone(),
            from_inc: self.incarnation,
            seq: self.next_seq(),
            to_inc,
            view_id: self.view_id,
            body,
        };
        self.out.push_back(Output::Send {
            to: to.to_owned(),
            msg,
        });
    }

    fn send(&mut self, to: &str, body: Body) {
        let inc = self.table.get(to).map_or(0, |r| r.incarnation);
        self.send_to_inc(to, inc, body);
    }

    fn send_joins(&mut self, now: Instant) {
        let targets: BTreeSet<String> = self
            .candidates
            .iter()
            .map(String::as_str)
            .chain(
                self.table
                    .iter()
                    .filter(|(_, r)| r.alive)
                    .map(|(n, _)| &**n),
            )
            .filter(|n| *n != self.me && !self.welcomed.contains(*n))
            .map(String::from)
            .collect();
        for t in targets {
            self.send(&t, Body::Join);
        }
        self.next_join = (!self.joined).then_some(now + self.s.join_resend);
    }

    /// A `Join` to the next two candidates that are not members (see
    /// [`Settings::probe_outside`]). A node its peers removed because it
    /// heard nothing is one of theirs: once it hears again, their probe
    /// reaches it, it sends heartbeats again and is told it was removed.
    fn probe_outside(&mut self) {
        let outside: Vec<String> = self
            .candidates
            .iter()
            .filter(|c| **c != self.me && !self.is_member(c))
            .cloned()
            .collect();
        if outside.is_empty() {
            return;
        }
        for i in 0..outside.len().min(2) {
            let to = &outside[(self.probe_cursor + i) % outside.len()];
            self.send(to, Body::Join);
        }
        self.probe_cursor = self.probe_cursor.wrapping_add(2);
    }

    fn notify_removed(&mut self, to: &str, incarnation: u64, now: Instant) {
        let due = self
            .removed_notified
            .get(to)
            .is_none_or(|t| now >= *t + self.s.interval * 5);
        if due {
            self.removed_notified.insert(to.to_owned(), now);
            self.send_to_inc(to, incarnation, Body::Removed { incarnation });
        }
    }

    /// Records this node's own report and queues it for everyone.
    fn report(&mut self, subject: &str, down: bool, now: Instant) {
        let Some(inc) = self
            .table
            .get(subject)
            .filter(|r| r.alive)
            .map(|r| r.incarnation)
        else {
            return;
        };
        let me = self.me.clone();
        self.take_report(
            &me,
            Alert {
                subject: subject.to_owned(),
                incarnation: inc,
                down,
            },
            now,
        );
        let (wide, since) = match self.mine.get(subject) {
            Some(r) if !down => (r.wide, r.since),
            _ => (false, now),
        };
        self.mine.insert(
            subject.to_owned(),
            Report {
                incarnation: inc,
                down,
                // Sent now by `flush_reports`.
                next: now,
                quick: 2,
                wide,
                since,
            },
        );
    }

    /// Widens this node's local down reports that are confirmed (see
    /// `Settings::confirm_within`): they are sent to every member now.
    fn confirm_reports(&mut self, now: Instant) {
        let downs = self.watching.values().filter(|e| e.down).count();
        for (subject, r) in self.mine.iter_mut() {
            if r.down
                && !r.wide
                && (downs >= 2
                    || now >= r.since + self.s.confirm_within
                    || self.reports.reported_by_another(
                        subject,
                        now.checked_sub(self.s.confirm_within).unwrap_or(now),
                    ))
            {
                r.wide = true;
                r.quick = 2;
                r.next = now;
            }
        }
    }

    /// Sends the reports that are due: the wide ones in one message per
    /// member, each local one to the subject's other observers.
    fn flush_reports(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut local = Vec::new();
        let mut finished = Vec::new();
        let deaf = self.deaf(now);
        for (subject, r) in self.mine.iter_mut() {
            if r.next > now || (deaf && r.down) {
                continue;
            }
            let a = Alert {
                subject: subject.clone(),
                incarnation: r.incarnation,
                down: r.down,
            };
            if r.wide {
                due.push(a);
            } else {
                local.push(a);
            }
            r.quick = r.quick.saturating_sub(1);
            if r.quick > 0 {
                r.next = now + self.s.report_resend;
            } else if r.down {
                r.next = now + self.s.report_refresh;
            } else {
                finished.push(subject.clone());
            }
        }
        for s in finished {
            self.mine.remove(&s);
        }
        if self.leaving.is_some() {
            return;
        }
        for a in local {
            let to: Vec<String> = self
                .topology
                .observers(&a.subject)
                .into_iter()
                .filter(|o| *o != self.me)
                .map(String::from)
                .collect();
            for o in to {
                self.send(&o, Body::Alerts(vec![a.clone()]));
            }
        }
        if due.is_empty() {
            return;
        }
        let peers = self.peers();
        let room = MAX_DATAGRAM - wire::overhead(&self.me);
        let mut chunks: Vec<Vec<Alert>> = vec![Vec::new()];
        let mut used = 0;
        for a in due {
            let len = wire::entry_len(&a.subject);
            let last = chunks.last_mut().expect("one chunk");
            if used + len > room || last.len() == usize::from(u8::MAX) {
                chunks.push(Vec::new());
                used = 0;
            }
            used += len;
            chunks.last_mut().expect("one chunk").push(a);
        }
        for p in peers {
            for c in &chunks {
                self.send(&p, Body::Alerts(c.clone()));
            }
        }
    }

    /// Asks a neighbour whose view id has differed for a while for its
    /// table.
    fn check_sync(&mut self, now: Instant) {
        let due: Vec<String> = self
            .mismatch
            .iter()
            .filter(|(n, since)| {
                now >= **since + self.s.sync_after
                    && self
                        .sync_requested
                        .get(*n)
                        .is_none_or(|t| now >= *t + self.s.sync_gap)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in due {
            self.sync_requested.insert(n.clone(), now);
            self.mismatch.insert(n.clone(), now);
            self.send(&n, Body::SyncRequest);
        }
    }

    fn send_table(&mut self, to: &str, now: Instant) {
        let ttl = self.s.tombstone_ttl;
        self.table
            .retain(|_, r| r.alive || now.saturating_duration_since(r.since) < ttl);
        let room = MAX_DATAGRAM - wire::overhead(&self.me);
        let mut chunks: Vec<Vec<SyncEntry>> = vec![Vec::new()];
        let mut used = 0;
        for (name, r) in &self.table {
            let len = wire::entry_len(name);
            if used + len > room {
                chunks.push(Vec::new());
                used = 0;
            }
            used += len;
            chunks.last_mut().expect("one chunk").push(SyncEntry {
                name: name.to_string(),
                incarnation: r.incarnation,
                alive: r.alive,
            });
        }
        let n = chunks.len();
        for (i, entries) in chunks.into_iter().enumerate() {
            self.send(
                to,
                Body::Sync {
                    entries,
                    last: i + 1 == n,
                },
            );
        }
    }

    fn resend_leave(&mut self, now: Instant) {
        let Some(l) = &mut self.leaving else { return };
        if l.waiting.is_empty() || now >= l.started + self.s.leave_timeout {
            let l = self.leaving.take().expect("leaving");
            self.left = true;
            self.joined = false;
            self.out.push_back(Output::ViewChanged);
            self.out.push_back(Output::Left(LeaveOutcome {
                took: now.saturating_duration_since(l.started),
                acknowledged: l.acknowledged,
                missing: l.waiting,
            }));
            return;
        }
        if now < l.next {
            return;
        }
        l.next = now + self.s.leave_resend;
        let waiting: Vec<String> = l.waiting.iter().cloned().collect();
        for p in waiting {
            self.send(&p, Body::Leave);
        }
    }
}

#[cfg(test)]
mod tests;
