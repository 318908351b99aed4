//! The allocator: which Service holds which address (docs/architecture.md, section 4).
//!
//! Pools are kept as ranges. Each pool entry keeps the set of its free
//! addresses as a map of disjoint intervals, so the lowest free address is found
//! in logarithmic time however full the pool is. Addresses are taken lowest
//! first, walking a pool's entries in config order; pools are tried in the
//! config's [`crate::config::PoolOrder`] (MetalLB's priorities, or config
//! order). Everything is ordered (B-trees), so the same sequence of calls always
//! gives the same assignments.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::addr::{AddrRange, Family, from_u128, is_buggy, to_u128};
use crate::config::{AddressPool, Config, Refusal};
use crate::service::{FamilyPolicy, PortKey, ServiceKey, ServiceSpec, Sharing};

/// The addresses a Service holds (IPv4 first) and the pool of the first one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub ips: Vec<IpAddr>,
    pub pool: String,
}

/// What [`Allocator::ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The Service keeps what it held.
    None,
    /// The Service had nothing and got `allocation`.
    New,
    /// The Service's addresses changed because its request changed.
    Replaced {
        previous: Vec<IpAddr>,
        reason: String,
    },
    /// A `PreferDualStack` Service got the address of its second family.
    Added,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    pub allocation: Allocation,
    pub change: Change,
}

/// Why [`Allocator::ensure`] failed, and what the Service still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnsureError {
    pub error: AllocError,
    /// The Service keeps this allocation: its new request could not be met.
    pub kept: Option<Allocation>,
}

/// Why two Services cannot share an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SharingConflict {
    /// The other Service has no sharing key, or this one has none.
    NoKey {
        ours: Option<String>,
        theirs: Option<String>,
    },
    KeyMismatch {
        ours: String,
        theirs: String,
    },
    /// `externalTrafficPolicy: Local` needs identical pod selectors on every sharer.
    BackendMismatch,
    PortClash(PortKey),
}

impl fmt::Display for SharingConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharingConflict::NoKey { theirs: None, .. } => f.write_str(
                "it has no sharing key (annotation ferrolb.io/allow-shared-ip), so the address is its alone",
            ),
            SharingConflict::NoKey { theirs: Some(k), .. } => write!(
                f,
                "this Service has no sharing key; set annotation ferrolb.io/allow-shared-ip: {k:?} to share"
            ),
            SharingConflict::KeyMismatch { ours, theirs } => {
                write!(f, "its sharing key is {theirs:?}, this Service's is {ours:?}")
            }
            SharingConflict::BackendMismatch => f.write_str(
                "with externalTrafficPolicy: Local, Services may share an address only if all use Local with the same pod selector",
            ),
            SharingConflict::PortClash(p) => write!(f, "both use port {p}"),
        }
    }
}

/// Why an address could not be given. Each says what a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no configuration has been loaded yet")]
    NoConfig,
    #[error("no pool named {pool:?} is configured")]
    UnknownPool { pool: String },
    #[error(
        "pool {pool:?} may not be used by Services in namespace {namespace:?} (see its namespaces list)"
    )]
    NamespaceNotAllowed { pool: String, namespace: String },
    #[error("pool {pool:?} may not be used by this Service: {reason}")]
    PoolNotAllowed { pool: String, reason: String },
    #[error("no free {families} address left in {}", pool_list(.pools))]
    Exhausted {
        families: String,
        pools: Vec<String>,
    },
    #[error("no pool this Service may use has {families} addresses{}", namespace_note(.namespace))]
    NoPoolForFamily {
        families: String,
        namespace: Option<String>,
    },
    #[error("requested address {ip} is not in any configured pool")]
    NotInAnyPool { ip: IpAddr },
    #[error(
        "requested address {ip} ends in .0 or .255, which pool {pool:?} avoids (avoid-buggy-ips)"
    )]
    BuggyIp { ip: IpAddr, pool: String },
    #[error("address {ip} is held by {holder}, and cannot be shared: {reason}")]
    Shared {
        ip: IpAddr,
        holder: ServiceKey,
        reason: SharingConflict,
    },
    #[error(
        "requested addresses {a} and {b} are in different pools ({pool_a:?} and {pool_b:?}); a Service's addresses come from one pool"
    )]
    DifferentPools {
        a: IpAddr,
        b: IpAddr,
        pool_a: String,
        pool_b: String,
    },
    #[error(
        "requested address {ip} is in pool {actual:?}, but the Service asks for pool {requested:?}"
    )]
    PoolMismatch {
        ip: IpAddr,
        actual: String,
        requested: String,
    },
    #[error("{0}")]
    InvalidRequest(String),
}

fn pool_list(pools: &[String]) -> String {
    match pools {
        [one] => format!("pool {one:?}"),
        many => format!(
            "pools {}",
            many.iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn namespace_note(ns: &Option<String>) -> String {
    ns.as_ref()
        .map(|ns| format!(" (auto-assign pools allowed in namespace {ns:?})"))
        .unwrap_or_default()
}

impl AllocError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::NoConfig => "no_config",
            AllocError::UnknownPool { .. } => "unknown_pool",
            AllocError::NamespaceNotAllowed { .. } => "namespace_not_allowed",
            AllocError::PoolNotAllowed { .. } => "pool_not_allowed",
            AllocError::Exhausted { .. } => "exhausted",
            AllocError::NoPoolForFamily { .. } => "no_pool_for_family",
            AllocError::NotInAnyPool { .. } => "not_in_any_pool",
            AllocError::BuggyIp { .. } => "buggy_ip",
            AllocError::Shared { .. } => "sharing_refused",
            AllocError::DifferentPools { .. } => "different_pools",
            AllocError::PoolMismatch { .. } => "pool_mismatch",
            AllocError::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// A held address a new config would take away, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub ip: IpAddr,
    pub services: Vec<ServiceKey>,
    pub reason: String,
}

impl fmt::Display for Orphan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let holders: Vec<String> = self.services.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{} (held by {}): {}",
            self.ip,
            holders.join(", "),
            self.reason
        )
    }
}

/// Per-pool counts, for metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    pub name: String,
    /// Usable addresses (buggy ones excluded where the pool avoids them).
    pub total: u128,
    /// Distinct addresses held (a shared address counts once).
    pub in_use: u128,
    /// The same two counts per family (MetalLB v0.14's per-family metrics).
    pub total_v4: u128,
    pub total_v6: u128,
    pub in_use_v4: u128,
    pub in_use_v6: u128,
}

/// The Services holding one address, sorted by key. Almost always one, so a
/// vector: a B-tree node per address would cost a kilobyte each.
#[derive(Clone, Debug, Default)]
struct Holders(Vec<(ServiceKey, Sharing)>);

impl Holders {
    fn set(&mut self, key: &ServiceKey, sharing: Sharing) {
        match self.0.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => self.0[i].1 = sharing,
            Err(i) => self.0.insert(i, (key.clone(), sharing)),
        }
    }
    fn remove(&mut self, key: &ServiceKey) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.cmp(key)) {
            self.0.remove(i);
        }
    }
    fn iter(&self) -> impl Iterator<Item = (&ServiceKey, &Sharing)> {
        self.0.iter().map(|(k, s)| (k, s))
    }
    fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.0.iter().map(|(k, _)| k)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    ips: Vec<IpAddr>,
    sharing: Sharing,
}

/// The free addresses of one pool entry, as disjoint inclusive intervals.
#[derive(Clone, Debug)]
struct FreeSet {
    range: AddrRange,
    free: BTreeMap<u128, u128>,
}

impl FreeSet {
    fn full(range: AddrRange) -> FreeSet {
        FreeSet {
            range,
            free: BTreeMap::from([(range.first_raw(), range.last_raw())]),
        }
    }

    /// Marks `x` as not free; false if it was not free.
    fn take(&mut self, x: u128) -> bool {
        let Some((&s, &e)) = self.free.range(..=x).next_back() else {
            return false;
        };
        if e < x {
            return false;
        }
        self.free.remove(&s);
        if s < x {
            self.free.insert(s, x - 1);
        }
        if x < e {
            self.free.insert(x + 1, e);
        }
        true
    }

    /// Marks `x` as free again, merging with its neighbours.
    fn put(&mut self, x: u128) {
        let (mut s, mut e) = (x, x);
        if let Some((&ps, &pe)) = self.free.range(..x).next_back()
            && pe + 1 == x
        {
            s = ps;
            self.free.remove(&ps);
        }
        if x < u128::MAX
            && let Some(ne) = self.free.remove(&(x + 1))
        {
            e = ne;
        }
        self.free.insert(s, e);
    }

    /// The lowest free address, skipping buggy ones when the pool avoids them.
    /// Buggy addresses met on the way are dropped from the set for good: they
    /// can never be held in this pool, so no search has to step over them again.
    fn lowest(&mut self, avoid_buggy: bool) -> Option<u128> {
        loop {
            let (&s, _) = self.free.iter().next()?;
            if !(avoid_buggy && is_buggy(from_u128(self.range.family(), s))) {
                return Some(s);
            }
            self.take(s);
        }
    }
}

#[derive(Clone, Debug)]
struct PoolState {
    entries: Vec<FreeSet>,
    /// Distinct addresses held: IPv4, IPv6.
    in_use: [u128; 2],
}

/// Index of `ip`'s family in [`PoolState::in_use`].
fn fam(ip: &IpAddr) -> usize {
    usize::from(ip.is_ipv6())
}

/// Holds every assignment and hands out addresses. No I/O.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    config: Option<Config>,
    pools: Vec<PoolState>,
    services: BTreeMap<ServiceKey, Held>,
    /// Every held address and its holders with their sharing terms.
    addresses: BTreeMap<IpAddr, Holders>,
    /// Held addresses by the sharing key of their holders.
    by_sharing_key: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// The held addresses that `config` would take away. Empty means the config
    /// is safe to apply: every held address stays in a pool its holders may use.
    pub fn check_config(&self, config: &Config) -> Vec<Orphan> {
        orphaned_addresses(
            config,
            self.addresses
                .iter()
                .map(|(ip, h)| (*ip, h.keys().cloned().collect())),
        )
    }

    /// Applies `config` unless it would take a held address away; then the
    /// current config stays and the orphans are returned.
    pub fn set_config(&mut self, config: Config) -> Result<(), Vec<Orphan>> {
        let orphans = self.check_config(&config);
        if !orphans.is_empty() {
            return Err(orphans);
        }
        let mut pools: Vec<PoolState> = config
            .pools
            .iter()
            .map(|p| PoolState {
                entries: p.ranges.iter().copied().map(FreeSet::full).collect(),
                in_use: [0, 0],
            })
            .collect();
        for ip in self.addresses.keys() {
            let (pi, ei) = config
                .locate(*ip)
                .expect("checked: every held address is in a pool");
            pools[pi].entries[ei].take(to_u128(*ip));
            pools[pi].in_use[fam(ip)] += 1;
        }
        self.pools = pools;
        self.config = Some(config);
        Ok(())
    }

    pub fn allocation(&self, key: &ServiceKey) -> Option<Allocation> {
        self.services.get(key).map(|h| self.describe(&h.ips))
    }

    /// Every Service that holds addresses, with them.
    pub fn allocations(&self) -> impl Iterator<Item = (&ServiceKey, &[IpAddr])> {
        self.services.iter().map(|(k, h)| (k, h.ips.as_slice()))
    }

    /// The Services holding `ip`.
    pub fn holders(&self, ip: IpAddr) -> Vec<ServiceKey> {
        self.addresses
            .get(&ip)
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The ports of `ports` that another holder of `ip` also uses: a Service
    /// that keeps a shared address after its ports changed to clash with a
    /// sharer's (its changed request was refused; the status says which
    /// ports are affected).
    pub fn clashing_ports(&self, key: &ServiceKey, ip: IpAddr, ports: &[PortKey]) -> Vec<PortKey> {
        let Some(holders) = self.addresses.get(&ip) else {
            return vec![];
        };
        ports
            .iter()
            .filter(|p| {
                holders
                    .iter()
                    .any(|(h, theirs)| h != key && theirs.ports.contains(p))
            })
            .copied()
            .collect()
    }

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let Some(config) = &self.config else {
            return vec![];
        };
        config
            .pools
            .iter()
            .zip(&self.pools)
            .map(|(p, s)| {
                let total_v4 = p.usable_addresses_of(Family::V4);
                let total_v6 = p.usable_addresses_of(Family::V6);
                PoolStats {
                    name: p.name.clone(),
                    total: total_v4.saturating_add(total_v6),
                    in_use: s.in_use[0] + s.in_use[1],
                    total_v4,
                    total_v6,
                    in_use_v4: s.in_use[0],
                    in_use_v6: s.in_use[1],
                }
            })
            .collect()
    }

    /// Re-asserts addresses a Service already holds (read from its status after
    /// a restart). Checks that they are in pools it may use and that sharing
    /// rules hold, but not its requests: [`Allocator::ensure`] does that.
    pub fn learn(&mut self, spec: &ServiceSpec, ips: &[IpAddr]) -> Result<Allocation, AllocError> {
        let config = self.config.as_ref().ok_or(AllocError::NoConfig)?;
        let mut ips = ips.to_vec();
        ips.sort();
        ips.dedup();
        if ips.len() == 2 && Family::of(&ips[0]) == Family::of(&ips[1]) || ips.len() > 2 {
            return Err(AllocError::InvalidRequest(format!(
                "status lists {} addresses; a Service holds at most one per family",
                ips.len()
            )));
        }
        if let Some(h) = self.services.get(&spec.key)
            && h.ips == ips
        {
            return Ok(self.describe(&ips));
        }
        for ip in &ips {
            let (pi, _) = config
                .locate(*ip)
                .ok_or(AllocError::NotInAnyPool { ip: *ip })?;
            let pool = &config.pools[pi];
            if pool.avoid_buggy_ips && is_buggy(*ip) {
                return Err(AllocError::BuggyIp {
                    ip: *ip,
                    pool: pool.name.clone(),
                });
            }
            keeps(pool, spec)?;
            self.check_sharing(*ip, &spec.key, &spec.sharing)?;
        }
        self.release(&spec.key);
        self.hold(&spec.key, ips.clone(), spec.sharing.clone());
        Ok(self.describe(&ips))
    }

    /// Makes the Service hold what it asks for: keeps what it holds if that
    /// still satisfies its request, else gives it new addresses; if the new
    /// request cannot be met, it keeps what it had and the error says why.
    /// `status_ips` (from the Service's status) are learned first if the
    /// allocator does not know the Service yet.
    // The error carries what the Service keeps; failures are rare, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub fn ensure(
        &mut self,
        spec: &ServiceSpec,
        status_ips: &[IpAddr],
    ) -> Result<Ensured, EnsureError> {
        let fail = |error, kept| EnsureError { error, kept };
        if self.config.is_none() {
            return Err(fail(AllocError::NoConfig, None));
        }
        let plan = plan(spec).map_err(|e| fail(e, self.allocation(&spec.key)))?;
        if !self.services.contains_key(&spec.key) && !status_ips.is_empty() {
            // A status the allocator cannot accept is replaced below.
            let _ = self.learn(spec, status_ips);
        }
        let Some(held) = self.services.get(&spec.key).cloned() else {
            return self
                .allocate_new(spec, &plan)
                .map(|allocation| Ensured {
                    allocation,
                    change: Change::New,
                })
                .map_err(|e| fail(e, None));
        };
        match self.unsatisfied_by(spec, &plan, &held.ips) {
            None => {
                self.update_sharing(&spec.key, &spec.sharing);
                let wanted: Vec<IpAddr> = held
                    .ips
                    .iter()
                    .copied()
                    .filter(|ip| plan.families().contains(&Family::of(ip)))
                    .collect();
                if wanted.len() < held.ips.len() {
                    // Families dropped from the Service: release their addresses.
                    self.release(&spec.key);
                    self.hold(&spec.key, wanted.clone(), spec.sharing.clone());
                    return Ok(Ensured {
                        allocation: self.describe(&wanted),
                        change: Change::Replaced {
                            previous: held.ips,
                            reason:
                                "the Service no longer has every IP family it held an address for"
                                    .into(),
                        },
                    });
                }
                if let Plan::PreferDual(_) = plan
                    && wanted.len() == 1
                    && spec.requested_ips.is_empty()
                    && let Some(added) = self.add_family(spec, &wanted)
                {
                    return Ok(Ensured {
                        allocation: added,
                        change: Change::Added,
                    });
                }
                Ok(Ensured {
                    allocation: self.describe(&wanted),
                    change: Change::None,
                })
            }
            Some(reason) => {
                let previous = self.describe(&held.ips);
                self.release(&spec.key);
                match self.allocate_new(spec, &plan) {
                    Ok(allocation) => Ok(Ensured {
                        allocation,
                        change: Change::Replaced {
                            previous: held.ips,
                            reason,
                        },
                    }),
                    Err(error) => {
                        // Nothing changed since the release: holding again cannot conflict.
                        self.hold(&spec.key, held.ips, held.sharing);
                        Err(fail(error, Some(previous)))
                    }
                }
            }
        }
    }

    /// Releases everything the Service holds; returns what it held.
    pub fn release(&mut self, key: &ServiceKey) -> Option<Vec<IpAddr>> {
        let held = self.services.remove(key)?;
        for ip in &held.ips {
            let Some(holders) = self.addresses.get_mut(ip) else {
                continue;
            };
            holders.remove(key);
            if holders.is_empty() {
                self.addresses.remove(ip);
                if let Some(k) = &held.sharing.key
                    && let Some(set) = self.by_sharing_key.get_mut(k)
                {
                    set.remove(ip);
                    if set.is_empty() {
                        self.by_sharing_key.remove(k);
                    }
                }
                if let Some((pi, ei)) = self.config.as_ref().and_then(|c| c.locate(*ip)) {
                    self.pools[pi].entries[ei].put(to_u128(*ip));
                    self.pools[pi].in_use[fam(ip)] -= 1;
                }
            }
        }
        Some(held.ips)
    }

    // === internals ===

    fn describe(&self, ips: &[IpAddr]) -> Allocation {
        let pool = ips
            .first()
            .and_then(|ip| {
                let c = self.config.as_ref()?;
                c.locate(*ip).map(|(pi, _)| c.pools[pi].name.clone())
            })
            .unwrap_or_default();
        Allocation {
            ips: ips.to_vec(),
            pool,
        }
    }

    fn hold(&mut self, key: &ServiceKey, mut ips: Vec<IpAddr>, sharing: Sharing) {
        ips.sort();
        for ip in &ips {
            let holders = self.addresses.entry(*ip).or_default();
            if holders.is_empty() {
                if let Some(k) = &sharing.key {
                    self.by_sharing_key
                        .entry(k.clone())
                        .or_default()
                        .insert(*ip);
                }
                if let Some((pi, ei)) = self.config.as_ref().and_then(|c| c.locate(*ip)) {
                    self.pools[pi].entries[ei].take(to_u128(*ip));
                    self.pools[pi].in_use[fam(ip)] += 1;
                }
            }
            holders.set(key, sharing.clone());
        }
        self.services.insert(key.clone(), Held { ips, sharing });
    }

    /// Changes a holder's sharing terms in place (they were checked compatible).
    fn update_sharing(&mut self, key: &ServiceKey, sharing: &Sharing) {
        let Some(held) = self.services.get_mut(key) else {
            return;
        };
        if held.sharing == *sharing {
            return;
        }
        let old_key = std::mem::replace(&mut held.sharing, sharing.clone()).key;
        for ip in held.ips.clone() {
            let holders = self
                .addresses
                .get_mut(&ip)
                .expect("held addresses are indexed");
            holders.set(key, sharing.clone());
            // A sole holder may change its key; the index follows.
            if holders.len() == 1 && old_key != sharing.key {
                if let Some(k) = &old_key
                    && let Some(set) = self.by_sharing_key.get_mut(k)
                {
                    set.remove(&ip);
                    if set.is_empty() {
                        self.by_sharing_key.remove(k);
                    }
                }
                if let Some(k) = &sharing.key {
                    self.by_sharing_key.entry(k.clone()).or_default().insert(ip);
                }
            }
        }
    }

    /// Whether `key` with these terms may hold `ip` beside its current holders.
    fn check_sharing(
        &self,
        ip: IpAddr,
        key: &ServiceKey,
        sharing: &Sharing,
    ) -> Result<(), AllocError> {
        let Some(holders) = self.addresses.get(&ip) else {
            return Ok(());
        };
        for (holder, theirs) in holders.iter().filter(|(h, _)| *h != key) {
            let conflict = match (&sharing.key, &theirs.key) {
                (Some(a), Some(b)) if a != b => Some(SharingConflict::KeyMismatch {
                    ours: a.clone(),
                    theirs: b.clone(),
                }),
                (Some(_), Some(_)) => {
                    if sharing.backend != theirs.backend {
                        Some(SharingConflict::BackendMismatch)
                    } else {
                        sharing
                            .ports
                            .iter()
                            .find(|p| theirs.ports.contains(p))
                            .map(|p| SharingConflict::PortClash(*p))
                    }
                }
                (ours, theirs) => Some(SharingConflict::NoKey {
                    ours: ours.clone(),
                    theirs: theirs.clone(),
                }),
            };
            if let Some(reason) = conflict {
                return Err(AllocError::Shared {
                    ip,
                    holder: holder.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Why the held addresses no longer satisfy the Service, if they do not.
    fn unsatisfied_by(&self, spec: &ServiceSpec, plan: &Plan, held: &[IpAddr]) -> Option<String> {
        let config = self.config.as_ref()?;
        let fams = plan.families();
        if !held.iter().any(|ip| fams.contains(&Family::of(ip))) {
            return Some("the Service's IP families changed".into());
        }
        if let Plan::Dual = plan
            && !(held.iter().any(|ip| ip.is_ipv4()) && held.iter().any(|ip| ip.is_ipv6()))
        {
            return Some("the Service now requires dual-stack".into());
        }
        if !spec.requested_ips.is_empty() {
            let mut want = spec.requested_ips.clone();
            want.sort();
            if want != held {
                return Some("the requested addresses changed".into());
            }
        }
        for ip in held {
            let Some((pi, _)) = config.locate(*ip) else {
                return Some(format!("{ip} is in no pool"));
            };
            let pool = &config.pools[pi];
            if let Some(want) = &spec.pool
                && &pool.name != want
            {
                return Some(format!("the Service now asks for pool {want:?}"));
            }
            match keeps(pool, spec) {
                Ok(()) => {}
                Err(AllocError::NamespaceNotAllowed { .. }) => {
                    return Some(format!(
                        "pool {:?} does not allow the Service's namespace",
                        pool.name
                    ));
                }
                Err(e) => return Some(e.to_string()),
            }
            if let Err(e) = self.check_sharing(*ip, &spec.key, &spec.sharing) {
                return Some(e.to_string());
            }
        }
        None
    }

    fn allocate_new(&mut self, spec: &ServiceSpec, plan: &Plan) -> Result<Allocation, AllocError> {
        let config = self.config.as_ref().ok_or(AllocError::NoConfig)?;
        if !spec.requested_ips.is_empty() {
            return self.assign_requested(spec);
        }
        let groups: Vec<Vec<usize>> = match &spec.pool {
            Some(name) => {
                let pi = config
                    .pools
                    .iter()
                    .position(|p| &p.name == name)
                    .ok_or_else(|| AllocError::UnknownPool { pool: name.clone() })?;
                admits(&config.pools[pi], spec)?;
                vec![vec![pi]]
            }
            None => config.auto_assign_candidates(spec),
        };
        // Each group in turn, every family choice within it (MetalLB tries
        // the pools a service allocation picks before the others).
        for group in &groups {
            for families in plan.attempts() {
                for &pi in group {
                    if let Some(ips) = self.find_in_pool(pi, &families, spec) {
                        self.hold(&spec.key, ips.clone(), spec.sharing.clone());
                        return Ok(self.describe(&ips));
                    }
                }
            }
        }
        let candidates: Vec<usize> = groups.into_iter().flatten().collect();
        let config = self.config.as_ref().expect("checked above");
        let first = plan.attempts().remove(0);
        let families = family_words(&first);
        let has_family =
            |pi: usize, f: Family| config.pools[pi].ranges.iter().any(|r| r.family() == f);
        let some_pool_has_all = candidates
            .iter()
            .any(|&pi| first.iter().all(|f| has_family(pi, *f)));
        if !some_pool_has_all {
            let families = if first.len() == 2 {
                "both IPv4 and IPv6 (in one pool)".to_owned()
            } else {
                families
            };
            return Err(AllocError::NoPoolForFamily {
                families,
                namespace: spec.pool.is_none().then(|| spec.key.namespace.clone()),
            });
        }
        Err(AllocError::Exhausted {
            families,
            pools: candidates
                .iter()
                .filter(|&&pi| first.iter().all(|f| has_family(pi, *f)))
                .map(|&pi| config.pools[pi].name.clone())
                .collect(),
        })
    }

    fn assign_requested(&mut self, spec: &ServiceSpec) -> Result<Allocation, AllocError> {
        let config = self.config.as_ref().ok_or(AllocError::NoConfig)?;
        let mut ips = spec.requested_ips.clone();
        ips.sort();
        let mut first_pool: Option<(IpAddr, usize)> = None;
        for ip in &ips {
            let (pi, _) = config
                .locate(*ip)
                .ok_or(AllocError::NotInAnyPool { ip: *ip })?;
            let pool = &config.pools[pi];
            if let Some((a, pa)) = first_pool
                && pa != pi
            {
                return Err(AllocError::DifferentPools {
                    a,
                    b: *ip,
                    pool_a: config.pools[pa].name.clone(),
                    pool_b: pool.name.clone(),
                });
            }
            first_pool = Some((*ip, pi));
            if let Some(want) = &spec.pool
                && &pool.name != want
            {
                return Err(AllocError::PoolMismatch {
                    ip: *ip,
                    actual: pool.name.clone(),
                    requested: want.clone(),
                });
            }
            admits(pool, spec)?;
            if pool.avoid_buggy_ips && is_buggy(*ip) {
                return Err(AllocError::BuggyIp {
                    ip: *ip,
                    pool: pool.name.clone(),
                });
            }
            self.check_sharing(*ip, &spec.key, &spec.sharing)?;
        }
        self.hold(&spec.key, ips.clone(), spec.sharing.clone());
        Ok(self.describe(&ips))
    }

    /// For a `PreferDualStack` Service holding one family: the other family
    /// from the same pool, if one is free.
    fn add_family(&mut self, spec: &ServiceSpec, held: &[IpAddr]) -> Option<Allocation> {
        let config = self.config.as_ref()?;
        let (pi, _) = config.locate(held[0])?;
        if spec
            .pool
            .as_ref()
            .is_some_and(|p| *p != config.pools[pi].name)
        {
            return None;
        }
        let other = match Family::of(&held[0]) {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        let mut ips = self.find_in_pool(pi, &[other], spec)?;
        ips.extend_from_slice(held);
        ips.sort();
        self.release(&spec.key);
        self.hold(&spec.key, ips.clone(), spec.sharing.clone());
        Some(self.describe(&ips))
    }

    /// One address of each family from pool `pi`, or none if any is missing.
    fn find_in_pool(
        &mut self,
        pi: usize,
        families: &[Family],
        spec: &ServiceSpec,
    ) -> Option<Vec<IpAddr>> {
        let mut out = Vec::with_capacity(families.len());
        for f in families {
            out.push(self.find_one(pi, *f, spec)?);
        }
        out.sort();
        Some(out)
    }

    /// The first address of family `f` in pool `pi`, walking entries in config
    /// order, that is free or already held by Services this one may share with.
    fn find_one(&mut self, pi: usize, f: Family, spec: &ServiceSpec) -> Option<IpAddr> {
        let avoid = self.config.as_ref()?.pools[pi].avoid_buggy_ips;
        for ei in 0..self.pools[pi].entries.len() {
            let range = self.pools[pi].entries[ei].range;
            if range.family() != f {
                continue;
            }
            let shared = spec.sharing.key.as_ref().and_then(|k| {
                self.by_sharing_key
                    .get(k)?
                    .range(range.first()..=range.last())
                    .copied()
                    .find(|ip| self.check_sharing(*ip, &spec.key, &spec.sharing).is_ok())
            });
            let free = self.pools[pi].entries[ei]
                .lowest(avoid)
                .map(|n| from_u128(f, n));
            let pick = match (free, shared) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if pick.is_some() {
                return pick;
            }
        }
        None
    }
}

/// Whether `spec` may take a new address from `pool`: its service allocation
/// must admit the Service.
fn admits(pool: &AddressPool, spec: &ServiceSpec) -> Result<(), AllocError> {
    pool.admits(spec).map_err(|r| refused(pool, spec, r))
}

/// Whether `spec` may keep an address of `pool`: as [`admits`], except that
/// namespace labels the caller does not know take nothing away.
fn keeps(pool: &AddressPool, spec: &ServiceSpec) -> Result<(), AllocError> {
    match pool.admits(spec) {
        Ok(()) | Err(Refusal::NamespaceLabelsUnknown) => Ok(()),
        Err(r) => Err(refused(pool, spec, r)),
    }
}

fn refused(pool: &AddressPool, spec: &ServiceSpec, r: Refusal) -> AllocError {
    match r {
        Refusal::Namespace => AllocError::NamespaceNotAllowed {
            pool: pool.name.clone(),
            namespace: spec.key.namespace.clone(),
        },
        Refusal::NamespaceLabelsUnknown => AllocError::PoolNotAllowed {
            pool: pool.name.clone(),
            reason: format!(
                "it admits namespaces by label (serviceAllocation.namespaceSelectors), and the labels of namespace {:?} are not known",
                spec.key.namespace
            ),
        },
        Refusal::ServiceLabels => AllocError::PoolNotAllowed {
            pool: pool.name.clone(),
            reason: "the Service's labels match none of its serviceAllocation.serviceSelectors"
                .to_owned(),
        },
    }
}

/// The held addresses that `config` would take away, and why: in no pool,
/// avoided by its pool (`avoid-buggy-ips`), or in a pool a holder's namespace
/// may not use. `held` gives each address with the Services holding it. Used
/// by the allocator (what it assigned) and the speaker (what Services' status
/// says), so that both refuse the same configs.
pub fn orphaned_addresses(
    config: &Config,
    held: impl IntoIterator<Item = (IpAddr, Vec<ServiceKey>)>,
) -> Vec<Orphan> {
    let mut orphans = Vec::new();
    for (ip, services) in held {
        let reason = match config.locate(ip) {
            None => Some("no pool contains it any more".to_owned()),
            Some((pi, _)) => {
                let pool = &config.pools[pi];
                if pool.avoid_buggy_ips && is_buggy(ip) {
                    Some(format!(
                        "pool {:?} would avoid it (avoid-buggy-ips)",
                        pool.name
                    ))
                } else {
                    services
                        .iter()
                        .find(|s| !pool.allows_namespace(&s.namespace))
                        .map(|s| {
                            format!(
                                "pool {:?} would not allow namespace {:?}",
                                pool.name, s.namespace
                            )
                        })
                }
            }
        };
        if let Some(reason) = reason {
            orphans.push(Orphan {
                ip,
                services,
                reason,
            });
        }
    }
    orphans
}

/// Which families a Service wants, from `ipFamilies` and `ipFamilyPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    Single(Family),
    /// `RequireDualStack`.
    Dual,
    /// `PreferDualStack` with both families listed; the primary one.
    PreferDual(Family),
}

impl Plan {
    /// The families the Service may hold addresses of.
    fn families(&self) -> Vec<Family> {
        match self {
            Plan::Single(f) => vec![*f],
            Plan::Dual | Plan::PreferDual(_) => vec![Family::V4, Family::V6],
        }
    }

    /// The family sets to try, in order.
    fn attempts(&self) -> Vec<Vec<Family>> {
        match self {
            Plan::Single(f) => vec![vec![*f]],
            Plan::Dual => vec![vec![Family::V4, Family::V6]],
            Plan::PreferDual(primary) => vec![vec![Family::V4, Family::V6], vec![*primary]],
        }
    }
}

/// The Service's plan, after checking that its requested addresses fit it.
fn plan(spec: &ServiceSpec) -> Result<Plan, AllocError> {
    let plan = families_plan(spec)?;
    let allowed = plan.families();
    let requested = &spec.requested_ips;
    if let Some(ip) = requested
        .iter()
        .find(|ip| !allowed.contains(&Family::of(ip)))
    {
        return Err(AllocError::InvalidRequest(format!(
            "requested address {ip} is {}, but the Service's IP families are {}",
            Family::of(ip),
            family_words(&allowed)
        )));
    }
    if requested.len() == 2 && Family::of(&requested[0]) == Family::of(&requested[1])
        || requested.len() > 2
    {
        return Err(AllocError::InvalidRequest(
            "at most one address per IP family may be requested".into(),
        ));
    }
    if plan == Plan::Dual && requested.len() == 1 {
        return Err(AllocError::InvalidRequest(
            "the Service requires dual-stack: request one IPv4 and one IPv6 address (annotation ferrolb.io/loadBalancerIPs)".into(),
        ));
    }
    Ok(plan)
}

fn families_plan(spec: &ServiceSpec) -> Result<Plan, AllocError> {
    let mut families = spec.families.clone();
    families.dedup();
    let primary = spec.primary_family();
    let dual_listed = families.contains(&Family::V4) && families.contains(&Family::V6);
    Ok(match spec.family_policy {
        FamilyPolicy::SingleStack => Plan::Single(primary),
        FamilyPolicy::PreferDualStack if dual_listed => Plan::PreferDual(primary),
        FamilyPolicy::PreferDualStack => Plan::Single(primary),
        FamilyPolicy::RequireDualStack if dual_listed => Plan::Dual,
        FamilyPolicy::RequireDualStack => {
            return Err(AllocError::InvalidRequest(format!(
                "ipFamilyPolicy is RequireDualStack but spec.ipFamilies lists only {primary}; the cluster must be dual-stack"
            )));
        }
    })
}

fn family_words(f: &[Family]) -> String {
    match f {
        [one] => one.to_string(),
        _ => "IPv4 and IPv6".to_owned(),
    }
}
