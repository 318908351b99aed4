//! The announcer: answers ARP and NDP for the addresses this node owns, on
//! the interfaces it announces on, and tells the segment when it takes an
//! address over (docs/architecture.md, section 6).
//!
//! It is driven by one idempotent call, [`Announcer::set`], with the whole
//! table of owned addresses per interface. Setting the same table again
//! changes nothing and sends nothing; an address that leaves the table is
//! no longer answered from that moment on.
//!
//! A request for an owned address is answered only if it is fresh (its
//! kernel receive timestamp younger than the freshness limit) and while
//! the membership's liveness epoch is current; see [`crate::liveness`].
//! Gratuitous announcements obey the same epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ferrolb_core::pacing::{PaceSettings, Pacer};
use ferrolb_core::packet::arp::ETHERTYPE_ARP;
use ferrolb_core::packet::ndp::ALL_NODES;
use ferrolb_core::packet::{
    ArpFrame, ArpOperation, ArpRequest, NdpFrame, NdpMessage, NeighborAdvertisement,
    solicited_node_multicast,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::interfaces::Interface;
use crate::liveness::{self, Liveness, Refusal};
use crate::{clock, sockets};

/// The freshness limit when none is configured: the default membership
/// timeout.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(130);

/// What the responders check before answering (see [`crate::liveness`]).
#[derive(Clone, Debug)]
pub struct Guard {
    /// Requests older than this (kernel receive timestamp) are dropped.
    pub max_age: Duration,
    /// The membership's liveness epoch; `None` without membership.
    pub liveness: Option<Arc<Liveness>>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_age: DEFAULT_MAX_AGE,
            liveness: None,
        }
    }
}

impl Guard {
    /// May a request the kernel received at `received` be answered now?
    pub fn check(&self, received: Option<SystemTime>) -> Result<(), Refusal> {
        // A clock stepped back between receive and now reads as age zero.
        let age = received.map(|r| SystemTime::now().duration_since(r).unwrap_or_default());
        match &self.liveness {
            Some(l) => liveness::may_answer(
                age,
                self.max_age,
                Some(l.epoch()),
                l.stall_after(),
                clock::boottime(),
            ),
            None => liveness::may_answer(age, self.max_age, None, Duration::ZERO, Duration::ZERO),
        }
    }

    /// May gratuitous announcements go out now?
    pub fn may_announce(&self) -> bool {
        match &self.liveness {
            Some(l) => liveness::may_announce(Some(l.epoch()), l.stall_after(), clock::boottime()),
            None => true,
        }
    }
}

/// How the segment is told about a takeover: bursts per claimed address,
/// their spacing, and the frame rate per interface that paces them
/// (docs/architecture.md, "Gratuitous announcements"). With 3 bursts 600 ms
/// apart the last leaves 1.2 s after the first, past Linux's 1 s
/// `locktime`, inside which a client may ignore an update.
pub type GratuitousSchedule = PaceSettings;

/// A request's address and protocol (`arp` or `ndp`), as metric labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub address: String,
    pub protocol: String,
}

/// Why a request was dropped (`stale`, `not_current`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: String,
}

/// The protocol alone, for counts over every address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

/// An address as MetalLB labels it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpLabel {
    pub ip: String,
}

/// The per-address counts under MetalLB's names (`metallb_layer2_*{ip}`).
/// MetalLB's are counters without the `_total` suffix that this library
/// appends to counters, so they are gauges that only grow.
#[derive(Debug, Default)]
pub struct MetalLbStats {
    pub requests_received: Family<IpLabel, Gauge>,
    pub responses_sent: Family<IpLabel, Gauge>,
    pub gratuitous_sent: Family<IpLabel, Gauge>,
}

impl MetalLbStats {
    fn inc(family: &Family<IpLabel, Gauge>, address: IpAddr) {
        family
            .get_or_create(&IpLabel {
                ip: address.to_string(),
            })
            .inc();
    }
}

/// Counters for the metrics of docs/architecture.md, section 7. Per-address counters only
/// count addresses this node announces, so that a scan of the segment
/// cannot grow the label set.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests_received: Family<RequestLabel, Counter>,
    pub requests_answered: Family<RequestLabel, Counter>,
    pub requests_seen: Family<ProtocolLabel, Counter>,
    pub gratuitous_sent: Counter,
    pub malformed_packets: Counter,
    /// Requests for an owned address not answered, by [`Refusal`].
    pub requests_dropped: Family<DropLabel, Counter>,
    /// The same per-address counts under MetalLB's names, when turned on.
    pub metallb: Option<MetalLbStats>,
}

impl Stats {
    fn seen(&self, protocol: &str) {
        self.requests_seen
            .get_or_create(&ProtocolLabel {
                protocol: protocol.to_owned(),
            })
            .inc();
    }

    fn dropped(&self, refusal: Refusal) {
        self.requests_dropped
            .get_or_create(&DropLabel {
                reason: refusal.label().to_owned(),
            })
            .inc();
    }

    fn request(&self, family: &Family<RequestLabel, Counter>, address: IpAddr, protocol: &str) {
        family
            .get_or_create(&RequestLabel {
                address: address.to_string(),
                protocol: protocol.to_owned(),
            })
            .inc();
    }
}

/// The addresses to announce on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub interface: Interface,
    pub addresses: BTreeSet<IpAddr>,
}

/// Answers for owned addresses on every interface it was given.
pub struct Announcer {
    schedule: GratuitousSchedule,
    stats: Arc<Stats>,
    guard: Guard,
    interfaces: BTreeMap<String, InterfaceAnnouncer>,
}

impl Announcer {
    pub fn new(schedule: GratuitousSchedule) -> Announcer {
        Announcer::with_stats(schedule, Arc::default())
    }

    /// An announcer counting into `stats` (shared with the metrics).
    pub fn with_stats(schedule: GratuitousSchedule, stats: Arc<Stats>) -> Announcer {
        Announcer {
            schedule,
            stats,
            guard: Guard::default(),
            interfaces: BTreeMap::new(),
        }
    }

    /// Answers only what `guard` allows. Set before the first [`set`](Self::set).
    pub fn with_guard(mut self, guard: Guard) -> Announcer {
        self.guard = guard;
        self
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// What is announced now, per interface name.
    pub fn announced(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        self.interfaces
            .iter()
            .map(|(name, ia)| (name.clone(), ia.owned()))
            .collect()
    }

    /// Sends the gratuitous bursts again for every announced address
    /// (`--gratuitous-refresh`: for switches that forget MACs before routers
    /// forget ARP entries). Must be called inside a tokio runtime.
    pub fn refresh(&mut self) {
        for ia in self.interfaces.values_mut() {
            let owned: Vec<IpAddr> = ia.owned().into_iter().collect();
            ia.claim(&owned);
        }
    }

    /// Sends the gratuitous bursts again for those of `addresses` that are
    /// announced (after a re-join: another node may have claimed them
    /// meanwhile). Must be called inside a tokio runtime.
    pub fn reannounce(&mut self, addresses: &BTreeSet<IpAddr>) {
        for ia in self.interfaces.values_mut() {
            let owned: Vec<IpAddr> = ia.owned().intersection(addresses).copied().collect();
            ia.claim(&owned);
        }
    }

    /// Makes the announced table equal `desired`. Interfaces not in it stop
    /// announcing; an interface whose sockets cannot be opened is reported
    /// in the result and skipped, never blocking the others. Must be called
    /// inside a tokio runtime.
    pub fn set(&mut self, desired: &[Desired]) -> Vec<(String, io::Error)> {
        let wanted: BTreeSet<&str> = desired.iter().map(|d| d.interface.name.as_str()).collect();
        self.interfaces.retain(|name, _| {
            let keep = wanted.contains(name.as_str());
            if !keep {
                info!(interface = %name, "closed the responders on interface");
            }
            keep
        });
        let mut errors = Vec::new();
        for d in desired {
            let name = &d.interface.name;
            // An interface recreated under the same name, or with a new MAC,
            // needs new sockets.
            if self
                .interfaces
                .get(name)
                .is_some_and(|ia| ia.interface != d.interface)
            {
                self.interfaces.remove(name);
            }
            if !self.interfaces.contains_key(name) {
                match InterfaceAnnouncer::open(
                    d.interface.clone(),
                    self.stats.clone(),
                    self.guard.clone(),
                    self.schedule,
                ) {
                    Ok(ia) => {
                        self.interfaces.insert(name.clone(), ia);
                    }
                    Err(e) => {
                        warn!(interface = %name, error = %e, "cannot announce on interface");
                        errors.push((name.clone(), e));
                        continue;
                    }
                }
            }
            if let Some(ia) = self.interfaces.get_mut(name) {
                ia.set(&d.addresses);
            }
        }
        errors
    }
}

/// The responders and state of one interface. Dropping it stops them and
/// closes its sockets, which also leaves its multicast groups.
struct InterfaceAnnouncer {
    interface: Interface,
    owned: Arc<RwLock<BTreeSet<IpAddr>>>,
    ndp: Option<Arc<AsyncFd<Socket>>>,
    /// Solicited-node groups joined on `ndp`, with how many owned addresses
    /// need each: two addresses can share a group, and the kernel refuses a
    /// second join of the same group on one socket.
    groups: BTreeMap<Ipv6Addr, usize>,
    /// The gratuitous bursts still to send, paced; its task sends them.
    pacer: Arc<Mutex<Pacer<IpAddr>>>,
    wake: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for InterfaceAnnouncer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl InterfaceAnnouncer {
    fn open(
        interface: Interface,
        stats: Arc<Stats>,
        guard: Guard,
        schedule: GratuitousSchedule,
    ) -> io::Result<InterfaceAnnouncer> {
        let arp = Arc::new(sockets::async_socket(sockets::packet_socket(
            ETHERTYPE_ARP,
            interface.index,
        )?)?);
        // An interface without IPv6 still gets ARP. The ICMPv6 socket
        // receives nothing (its type filter blocks all): it sends and holds
        // the solicited-node group memberships; solicitations arrive on the
        // filtered packet socket.
        let ndp = match sockets::icmpv6_socket(&interface.name, &[])
            .and_then(sockets::async_socket)
            .and_then(|tx| {
                let rx = sockets::async_socket(sockets::ndp_socket(interface.index)?)?;
                Ok((Arc::new(tx), Arc::new(rx)))
            }) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(interface = %interface.name, error = %e, "no NDP responder on interface");
                None
            }
        };
        let (ndp, ndp_rx) = match ndp {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let owned = Arc::new(RwLock::new(BTreeSet::new()));
        let mut tasks = vec![tokio::spawn(answer_arp(
            arp.clone(),
            interface.clone(),
            owned.clone(),
            stats.clone(),
            guard.clone(),
        ))];
        if let (Some(ndp), Some(rx)) = (&ndp, ndp_rx) {
            tasks.push(tokio::spawn(answer_ndp(
                rx,
                ndp.clone(),
                interface.clone(),
                owned.clone(),
                stats.clone(),
                guard.clone(),
            )));
        }
        let pacer = Arc::new(Mutex::new(Pacer::new(schedule)));
        let wake = Arc::new(Notify::new());
        tasks.push(tokio::spawn(gratuitous_paced(
            Claim {
                interface: interface.clone(),
                arp: arp.clone(),
                ndp: ndp.clone(),
                owned: owned.clone(),
                stats,
                guard,
            },
            pacer.clone(),
            wake.clone(),
        )));
        info!(interface = %interface.name, mac = %interface.mac, "opened the responders on interface");
        Ok(InterfaceAnnouncer {
            interface,
            owned,
            ndp,
            groups: BTreeMap::new(),
            pacer,
            wake,
            tasks,
        })
    }

    fn owned(&self) -> BTreeSet<IpAddr> {
        self.owned.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&mut self, addresses: &BTreeSet<IpAddr>) {
        let current = self.owned();
        let removed: Vec<IpAddr> = current.difference(addresses).copied().collect();
        let added: Vec<IpAddr> = addresses.difference(&current).copied().collect();
        if removed.is_empty() && added.is_empty() {
            return;
        }
        // Stop answering first, then leave groups.
        {
            let mut owned = self.owned.write().unwrap_or_else(|e| e.into_inner());
            for a in &removed {
                owned.remove(a);
            }
        }
        {
            let mut pacer = self.pacer.lock().unwrap_or_else(|e| e.into_inner());
            for a in &removed {
                pacer.release(a);
            }
        }
        for a in &removed {
            debug!(interface = %self.interface.name, address = %a, "stopped announcing address");
            if let IpAddr::V6(v6) = a {
                self.leave(solicited_node_multicast(*v6));
            }
        }
        // Answer and tell the segment first, then join the solicited-node
        // groups: a takeover of hundreds of IPv6 addresses spends
        // milliseconds in the joins, and neither ARP answers nor unsolicited
        // NAs need them (a solicitation sent before its group is joined is
        // missed as it was before the takeover, and asked again).
        {
            let mut owned = self.owned.write().unwrap_or_else(|e| e.into_inner());
            owned.extend(added.iter().copied());
        }
        self.claim(&added);
        for a in &added {
            debug!(interface = %self.interface.name, address = %a, "announcing address");
            if let IpAddr::V6(v6) = a {
                self.join(solicited_node_multicast(*v6));
            }
        }
        // One line per change, not per address: a takeover of 1,000
        // addresses would write 1,000 lines when speed matters most.
        if !added.is_empty() || !removed.is_empty() {
            let sample = |v: &[IpAddr]| {
                v.iter()
                    .take(5)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            info!(
                interface = %self.interface.name,
                started = added.len(),
                stopped = removed.len(),
                started_sample = %sample(&added),
                stopped_sample = %sample(&removed),
                "announced addresses changed"
            );
        }
    }

    /// Queues the gratuitous bursts of `addresses` (each starts over).
    fn claim(&mut self, addresses: &[IpAddr]) {
        if addresses.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        {
            let mut pacer = self.pacer.lock().unwrap_or_else(|e| e.into_inner());
            for a in addresses {
                // ARP: a request and a reply; NDP: one unsolicited NA.
                let frames = if a.is_ipv4() { 2 } else { 1 };
                pacer.claim(*a, frames, now);
            }
        }
        self.wake.notify_one();
    }

    fn join(&mut self, group: Ipv6Addr) {
        let Some(ndp) = &self.ndp else { return };
        let count = self.groups.entry(group).or_insert(0);
        if *count == 0
            && let Err(e) = ndp
                .get_ref()
                .join_multicast_v6(&group, self.interface.index)
        {
            warn!(interface = %self.interface.name, %group, error = %e, "cannot join solicited-node group");
            self.groups.remove(&group);
            return;
        }
        *count += 1;
    }

    fn leave(&mut self, group: Ipv6Addr) {
        let Some(ndp) = &self.ndp else { return };
        let Some(count) = self.groups.get_mut(&group) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.groups.remove(&group);
            if let Err(e) = ndp
                .get_ref()
                .leave_multicast_v6(&group, self.interface.index)
            {
                warn!(interface = %self.interface.name, %group, error = %e, "cannot leave solicited-node group");
            }
        }
    }
}

fn owns(owned: &RwLock<BTreeSet<IpAddr>>, address: IpAddr) -> bool {
    owned
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&address)
}

async fn answer_arp(
    socket: Arc<AsyncFd<Socket>>,
    interface: Interface,
    owned: Arc<RwLock<BTreeSet<IpAddr>>>,
    stats: Arc<Stats>,
    guard: Guard,
) {
    let mut buf = [0u8; 1514];
    loop {
        let (n, received) = match socket
            .readable()
            .await
            .map(|mut ready| ready.try_io(|s| sockets::recv_stamped(s.get_ref(), &mut buf)))
        {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => {
                warn!(interface = %interface.name, error = %e, "ARP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Err(_would_block)) => continue,
            Err(e) => {
                warn!(interface = %interface.name, error = %e, "ARP socket failed; responder stops");
                return;
            }
        };
        let request = match ArpRequest::parse(&buf[..n]) {
            Ok(r) => r,
            // Replies and other ARP traffic are normal on a segment.
            Err(_) => continue,
        };
        stats.seen("arp");
        let target = IpAddr::V4(request.target_ip());
        if !request.is_addressed_to(interface.mac)
            || request.is_gratuitous()
            || !owns(&owned, target)
        {
            continue;
        }
        stats.request(&stats.requests_received, target, "arp");
        if let Some(ml) = &stats.metallb {
            MetalLbStats::inc(&ml.requests_received, target);
        }
        if let Err(refusal) = guard.check(received) {
            stats.dropped(refusal);
            debug!(interface = %interface.name, address = %target, reason = refusal.label(), "dropped ARP request");
            continue;
        }
        let reply = request.reply(interface.mac).to_bytes();
        match socket.get_ref().send(&reply) {
            Ok(_) => {
                stats.request(&stats.requests_answered, target, "arp");
                if let Some(ml) = &stats.metallb {
                    MetalLbStats::inc(&ml.responses_sent, target);
                }
                debug!(interface = %interface.name, address = %request.target_ip(), to = %request.sender_mac(), "answered ARP");
            }
            Err(e) => warn!(interface = %interface.name, error = %e, "ARP reply failed"),
        }
    }
}

/// Answers neighbour solicitations received on a packet socket whose
/// kernel filter passes only ICMPv6 type 135 (see [`sockets::ndp_socket`]). A
/// packet socket sees a unicast solicitation for an address the node does
/// not hold (a router's reachability probe, without a source link-layer
/// option), which the kernel drops before any ICMPv6 socket. Answers leave
/// through the ICMPv6 socket `tx`, so that the kernel builds the IPv6
/// header and resolves the destination.
async fn answer_ndp(
    rx: Arc<AsyncFd<Socket>>,
    tx: Arc<AsyncFd<Socket>>,
    interface: Interface,
    owned: Arc<RwLock<BTreeSet<IpAddr>>>,
    stats: Arc<Stats>,
    guard: Guard,
) {
    let mut buf = [0u8; 1514];
    let mut out = [0u8; 64];
    loop {
        let (n, received) = match rx
            .readable()
            .await
            .map(|mut ready| ready.try_io(|s| sockets::recv_stamped(s.get_ref(), &mut buf)))
        {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => {
                warn!(interface = %interface.name, error = %e, "NDP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Err(_would_block)) => continue,
            Err(e) => {
                warn!(interface = %interface.name, error = %e, "NDP socket failed; responder stops");
                return;
            }
        };
        let frame = match NdpFrame::parse(&buf[..n]) {
            Ok(f) => f,
            Err(e) => {
                stats.malformed_packets.inc();
                debug!(interface = %interface.name, reason = e.reason(), "dropped NDP frame");
                continue;
            }
        };
        let NdpMessage::Solicitation(ns) = frame.message else {
            continue;
        };
        // In promiscuous mode the socket also sees frames for other hosts.
        if frame.eth_destination != interface.mac && !frame.eth_destination.is_multicast() {
            continue;
        }
        stats.seen("ndp");
        let target = IpAddr::V6(ns.target);
        if !owns(&owned, target) {
            continue;
        }
        stats.request(&stats.requests_received, target, "ndp");
        if let Some(ml) = &stats.metallb {
            MetalLbStats::inc(&ml.requests_received, target);
        }
        if let Err(refusal) = guard.check(received) {
            stats.dropped(refusal);
            debug!(interface = %interface.name, address = %target, reason = refusal.label(), "dropped neighbour solicitation");
            continue;
        }
        let (destination, na) = match ns.answer(frame.source, interface.mac) {
            Ok(a) => a,
            Err(e) => {
                stats.malformed_packets.inc();
                debug!(interface = %interface.name, reason = e.reason(), "dropped NDP message");
                continue;
            }
        };
        if send_na(&tx, &interface, destination, &na, &mut out) {
            stats.request(&stats.requests_answered, target, "ndp");
            if let Some(ml) = &stats.metallb {
                MetalLbStats::inc(&ml.responses_sent, target);
            }
            debug!(interface = %interface.name, address = %ns.target, to = %destination, "answered NS");
        }
    }
}

fn send_na(
    socket: &AsyncFd<Socket>,
    interface: &Interface,
    destination: Ipv6Addr,
    na: &NeighborAdvertisement,
    out: &mut [u8],
) -> bool {
    let Ok(len) = na.emit(out) else {
        return false;
    };
    // The scope matters for link-local and multicast destinations.
    let to = SocketAddrV6::new(destination, 0, 0, interface.index);
    match sockets::send_icmpv6_from(
        socket.get_ref(),
        &out[..len],
        na.target,
        to,
        interface.index,
    ) {
        Ok(_) => true,
        Err(e) => {
            warn!(interface = %interface.name, %destination, error = %e, "NA send failed");
            false
        }
    }
}

/// What a gratuitous burst task needs from its interface's announcer.
struct Claim {
    interface: Interface,
    arp: Arc<AsyncFd<Socket>>,
    ndp: Option<Arc<AsyncFd<Socket>>>,
    owned: Arc<RwLock<BTreeSet<IpAddr>>>,
    stats: Arc<Stats>,
    guard: Guard,
}

/// Sends the bursts the interface's pacer hands out, when it says.
async fn gratuitous_paced(claim: Claim, pacer: Arc<Mutex<Pacer<IpAddr>>>, wake: Arc<Notify>) {
    let Claim {
        interface,
        arp,
        ndp,
        owned,
        stats,
        guard,
    } = claim;
    let mut out = [0u8; 64];
    loop {
        let (due, next) = pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll(std::time::Instant::now());
        for d in due {
            let address = d.address;
            // Lost the address meanwhile: say nothing more about it.
            if !owns(&owned, address) {
                continue;
            }
            // The ownership view is not current (a stall, a re-join):
            // claiming the address now could take it from its real owner.
            // This burst is skipped; a re-join that keeps the address
            // announces it anew.
            if !guard.may_announce() {
                debug!(interface = %interface.name, %address, "gratuitous burst skipped: ownership view not current");
                continue;
            }
            match address {
                IpAddr::V4(v4) => {
                    for op in [ArpOperation::Request, ArpOperation::Reply] {
                        send_garp(&arp, &interface, v4, op, &stats);
                    }
                }
                IpAddr::V6(v6) => {
                    if let Some(ndp) = &ndp {
                        let na = NeighborAdvertisement::unsolicited(v6, interface.mac);
                        if send_na(ndp, &interface, ALL_NODES, &na, &mut out) {
                            stats.gratuitous_sent.inc();
                            if let Some(ml) = &stats.metallb {
                                MetalLbStats::inc(&ml.gratuitous_sent, address);
                            }
                        }
                    }
                }
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

fn send_garp(
    socket: &AsyncFd<Socket>,
    interface: &Interface,
    address: Ipv4Addr,
    op: ArpOperation,
    stats: &Stats,
) {
    let frame = ArpFrame::gratuitous(op, address, interface.mac).to_bytes();
    match socket.get_ref().send(&frame) {
        Ok(_) => {
            stats.gratuitous_sent.inc();
            if let Some(ml) = &stats.metallb {
                MetalLbStats::inc(&ml.gratuitous_sent, IpAddr::V4(address));
            }
        }
        Err(e) => warn!(interface = %interface.name, %address, error = %e, "gratuitous ARP failed"),
    }
}
