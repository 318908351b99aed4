//! The ConfigMap format (docs/architecture.md, section 3): MetalLB v0.12's legacy layer-2
//! format plus ferrolb's `namespaces`, `node-selectors` and `interfaces`.
//!
//! Parsing is strict, as MetalLB's is: an unknown or repeated key is an error.
//! Validation follows MetalLB v0.12's order for each pool (name, addresses,
//! each address, protocol, duplicate name, overlaps), but unlike MetalLB it does
//! not stop at the first problem: every problem is reported, each naming the
//! pool and the entry it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::addr::{AddrRange, parse_entry};
use crate::selector::{LabelSelector, Labels, is_dns_label};
use crate::service::ServiceSpec;

/// A validated configuration: the address pools, in config order, and the
/// rule that orders them for a Service. Both config sources produce it: the
/// ConfigMap ([`parse`]) and MetalLB's `metallb.io/v1beta1` objects
/// ([`crate::crd::parse`]); see docs/architecture.md, section 3.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub pools: Vec<AddressPool>,
    pub order: PoolOrder,
}

/// How the allocator orders the auto-assign pools a Service may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum PoolOrder {
    /// MetalLB's rule: first the pools whose service allocation selects the
    /// Service, lowest `priority` first (a pool without a priority after
    /// those with one), then the pools without a service allocation. Ties
    /// keep config order (MetalLB's order there is unspecified).
    #[default]
    Priority,
    /// Every pool the Service may use, in config order. A ConfigMap gets it
    /// when one of its unrestricted pools comes before a `namespaces` pool:
    /// the README promises config order there, which [`PoolOrder::Priority`]
    /// would change. Any other ConfigMap gets `Priority`, which then gives
    /// the same order.
    ConfigOrder,
}

/// One address pool. `protocol` is always layer 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPool {
    pub name: String,
    /// The `addresses` entries, in config order, each as a range.
    pub ranges: Vec<AddrRange>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    /// Which Services may take addresses from the pool: an IPAddressPool's
    /// `serviceAllocation`, or a ConfigMap pool's `namespaces`. `None`: every
    /// Service.
    pub service_allocation: Option<ServiceAllocation>,
    /// Where the pool's addresses are announced: one entry for each
    /// L2Advertisement that selects the pool (a ConfigMap pool has exactly
    /// one, from its `node-selectors` and `interfaces`). Empty: the pool's
    /// addresses are assigned but no node announces them.
    pub advertisements: Vec<Advertisement>,
}

/// MetalLB's `serviceAllocation`: which Services may use a pool, and how much
/// a Service prefers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAllocation {
    /// Lower first; `None` (MetalLB's 0, or unset) after every pool with one.
    pub priority: Option<i32>,
    /// Services in these namespaces (or in one [`Self::namespace_selectors`]
    /// matches) may use the pool. Both empty: every namespace.
    pub namespaces: BTreeSet<String>,
    /// Selectors over the labels of a Service's namespace.
    pub namespace_selectors: Vec<LabelSelector>,
    /// Selectors over a Service's labels; empty: every Service.
    pub service_selectors: Vec<LabelSelector>,
}

/// Why a pool's service allocation refuses a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The namespace is not listed and no namespace selector matches it.
    Namespace,
    /// Only a namespace selector could admit the namespace, and its labels
    /// are not known.
    NamespaceLabelsUnknown,
    /// No service selector matches the Service's labels.
    ServiceLabels,
}

impl ServiceAllocation {
    /// Whether a Service in `namespace` (labelled `namespace_labels`, when
    /// known) with `service_labels` may use the pool.
    pub fn admits(
        &self,
        namespace: &str,
        namespace_labels: Option<&Labels>,
        service_labels: &Labels,
    ) -> Result<(), Refusal> {
        if !self.service_selectors.is_empty()
            && !self
                .service_selectors
                .iter()
                .any(|s| s.matches(service_labels))
        {
            return Err(Refusal::ServiceLabels);
        }
        if self.namespaces.is_empty() && self.namespace_selectors.is_empty()
            || self.namespaces.contains(namespace)
        {
            return Ok(());
        }
        if self.namespace_selectors.is_empty() {
            return Err(Refusal::Namespace);
        }
        // An empty selector matches every namespace, whatever its labels.
        match namespace_labels {
            Some(l) if self.namespace_selectors.iter().any(|s| s.matches(l)) => Ok(()),
            Some(_) => Err(Refusal::Namespace),
            None if self
                .namespace_selectors
                .iter()
                .any(|s| s.match_labels.is_empty() && s.match_expressions.is_empty()) =>
            {
                Ok(())
            }
            None => Err(Refusal::NamespaceLabelsUnknown),
        }
    }

    /// Whether it names any Service at all: MetalLB assigns automatically
    /// from a pool with a service allocation only to the Services its
    /// namespaces, namespace selectors or service selectors pick, so one with
    /// none of them (a `priority` alone) is used only on request.
    pub fn selects_any(&self) -> bool {
        !(self.namespaces.is_empty()
            && self.namespace_selectors.is_empty()
            && self.service_selectors.is_empty())
    }
}

/// One L2Advertisement as it applies to a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertisement {
    /// Nodes matching one of these announce; empty: every node.
    pub node_selectors: Vec<LabelSelector>,
    /// Announce on these interfaces; empty: the speaker's default choice.
    pub interfaces: Vec<String>,
    /// Announce only for Services matching one of these; empty: every Service.
    pub service_selectors: Vec<LabelSelector>,
}

impl Advertisement {
    pub fn selects_node(&self, labels: &Labels) -> bool {
        self.node_selectors.is_empty() || self.node_selectors.iter().any(|s| s.matches(labels))
    }
}

impl AddressPool {
    /// The namespaces listed in the pool's service allocation, if it lists any
    /// (a ConfigMap pool's `namespaces`).
    pub fn namespaces(&self) -> Option<&BTreeSet<String>> {
        self.service_allocation
            .as_ref()
            .map(|a| &a.namespaces)
            .filter(|n| !n.is_empty())
    }

    /// Whether Services in `namespace` may hold addresses of the pool, as far
    /// as the namespace's name tells: a pool that also admits namespaces by
    /// label selectors may admit any namespace, so this is true there. Used
    /// where a held address is checked and only the holder's key is known.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.service_allocation.as_ref().is_none_or(|a| {
            a.namespaces.is_empty()
                || a.namespaces.contains(namespace)
                || !a.namespace_selectors.is_empty()
        })
    }

    /// Whether the pool's service allocation admits the Service (see
    /// [`ServiceAllocation::admits`]); a pool without one admits every Service.
    pub fn admits(&self, spec: &ServiceSpec) -> Result<(), Refusal> {
        match &self.service_allocation {
            None => Ok(()),
            Some(a) => a.admits(
                &spec.key.namespace,
                spec.namespace_labels.as_ref(),
                &spec.labels,
            ),
        }
    }

    /// How many addresses the pool can hand out: all of its ranges, less the
    /// .0/.255 ones it avoids (saturating for huge IPv6 pools).
    pub fn usable_addresses(&self) -> u128 {
        self.usable_addresses_of(crate::addr::Family::V4)
            .saturating_add(self.usable_addresses_of(crate::addr::Family::V6))
    }

    /// [`AddressPool::usable_addresses`] of one family.
    pub fn usable_addresses_of(&self, family: crate::addr::Family) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.family() == family)
            .map(|r| {
                r.len()
                    - if self.avoid_buggy_ips {
                        r.buggy_count()
                    } else {
                        0
                    }
            })
            .fold(0u128, u128::saturating_add)
    }

    /// Whether a node with these labels may announce this pool's addresses:
    /// one of the pool's advertisements selects it. The advertisements'
    /// service selectors are not looked at (callers that know the Service use
    /// [`AddressPool::announces`]).
    pub fn selects_node(&self, labels: &Labels) -> bool {
        self.advertisements.iter().any(|a| a.selects_node(labels))
    }

    /// Whether a node with `node_labels` announces this pool's addresses for
    /// a Service with `service_labels`: one advertisement selects both, as
    /// MetalLB combines several L2Advertisements of one pool.
    pub fn announces(&self, node_labels: &Labels, service_labels: &Labels) -> bool {
        self.advertisements.iter().any(|a| {
            a.selects_node(node_labels)
                && (a.service_selectors.is_empty()
                    || a.service_selectors
                        .iter()
                        .any(|s| s.matches(service_labels)))
        })
    }

    /// The interfaces to announce the pool's addresses on, from the
    /// advertisements that select the node (all of them when `node_labels` is
    /// `None`): their union, in order; empty means the speaker's default
    /// choice, which is also the answer when one of those advertisements
    /// names no interface (MetalLB: an advertisement without interfaces
    /// announces on all of them). Advertisements' service selectors are not
    /// looked at ([`AddressPool::interfaces_for`] does).
    pub fn interfaces_on(&self, node_labels: Option<&Labels>) -> Vec<String> {
        self.interfaces_for(node_labels, None)
    }

    /// As [`AddressPool::interfaces_on`], counting only the advertisements
    /// that also select one of `holders` (the labels of the Services holding
    /// the address), when given.
    pub fn interfaces_for(
        &self,
        node_labels: Option<&Labels>,
        holders: Option<&[&Labels]>,
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self.advertisements.iter().filter(|a| {
            node_labels.is_none_or(|l| a.selects_node(l))
                && (a.service_selectors.is_empty()
                    || holders.is_none_or(|h| {
                        h.iter()
                            .any(|l| a.service_selectors.iter().any(|s| s.matches(l)))
                    }))
        }) {
            if a.interfaces.is_empty() {
                return vec![];
            }
            for i in &a.interfaces {
                if !out.contains(i) {
                    out.push(i.clone());
                }
            }
        }
        out
    }
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&AddressPool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The pool and entry that contain `ip` (pools never overlap).
    pub fn locate(&self, ip: std::net::IpAddr) -> Option<(usize, usize)> {
        self.pools.iter().enumerate().find_map(|(pi, p)| {
            p.ranges
                .iter()
                .position(|r| r.contains(ip))
                .map(|ei| (pi, ei))
        })
    }

    /// The auto-assign pools `spec` may take an address from, as groups tried
    /// one after the other, each in order (see [`PoolOrder`]): MetalLB tries
    /// every family choice in the pools a Service's service allocation picks
    /// before it falls back to the pools without one.
    pub fn auto_assign_candidates(&self, spec: &ServiceSpec) -> Vec<Vec<usize>> {
        let usable = |p: &AddressPool| p.auto_assign && p.admits(spec).is_ok();
        match self.order {
            PoolOrder::ConfigOrder => vec![
                self.pools
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| usable(p))
                    .map(|(i, _)| i)
                    .collect(),
            ],
            PoolOrder::Priority => {
                let mut pinned: Vec<(usize, Option<i32>)> = self
                    .pools
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        let a = p.service_allocation.as_ref()?;
                        (usable(p) && a.selects_any()).then_some((i, a.priority))
                    })
                    .collect();
                // Stable: equal priorities keep config order.
                pinned.sort_by_key(|(_, prio)| (prio.is_none(), prio.unwrap_or(0)));
                let rest = self
                    .pools
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.auto_assign && p.service_allocation.is_none())
                    .map(|(i, _)| i)
                    .collect();
                vec![pinned.into_iter().map(|(i, _)| i).collect(), rest]
            }
        }
    }
}

/// One problem in a config. `pool` is the pool's name, or `address-pools[i]`
/// when it has none; `entry` is the address entry or key concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub pool: Option<String>,
    pub entry: Option<String>,
    pub message: String,
}

impl ConfigError {
    fn new(pool: Option<&str>, entry: Option<&str>, message: impl Into<String>) -> Self {
        ConfigError {
            pool: pool.map(str::to_owned),
            entry: entry.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pool, &self.entry) {
            (Some(p), Some(e)) => write!(f, "pool {p:?}, entry {e:?}: {}", self.message),
            (Some(p), None) => write!(f, "pool {p:?}: {}", self.message),
            (None, Some(e)) => write!(f, "{e}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// === the raw document, as written ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    address_pools: Option<Vec<Option<RawPool>>>,
    peers: Option<Vec<IgnoredAny>>,
    bgp_communities: Option<BTreeMap<String, IgnoredAny>>,
    bfd_profiles: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPool {
    name: Option<String>,
    protocol: Option<String>,
    addresses: Option<Vec<String>>,
    #[serde(default, deserialize_with = "unquoted_bool")]
    auto_assign: Option<bool>,
    #[serde(default, deserialize_with = "unquoted_bool")]
    avoid_buggy_ips: Option<bool>,
    bgp_advertisements: Option<Vec<IgnoredAny>>,
    namespaces: Option<Vec<String>>,
    node_selectors: Option<Vec<RawSelector>>,
    interfaces: Option<Vec<String>>,
}

/// A boolean as MetalLB's YAML 1.1 parser reads it: `true`/`false` (and
/// `yes`/`no`/`on`/`off`) unquoted; a quoted `"false"` is a string, which
/// MetalLB refuses as a type error, and so does ferrolb (serde's own bool
/// would read the quoted text as a boolean).
fn unquoted_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a boolean: true or false, unquoted")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(rename = "matchLabels", alias = "match-labels")]
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "matchExpressions", alias = "match-expressions")]
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

/// Where each pool item starts in the document, to name the pool in a decode
/// error. Parsed leniently (any value), so it succeeds where the strict parse fails.
#[derive(Deserialize)]
struct PoolLocator {
    #[serde(rename = "address-pools")]
    address_pools: Option<Vec<serde_saphyr::Spanned<PoolName>>>,
}

/// A pool item as [`PoolLocator`] reads it: its `name` when that is a string.
/// Any value is accepted, and everything but the name is skipped unbuilt, so
/// that naming the pool of an error costs next to no memory.
struct PoolName(Option<String>);

impl<'de> Deserialize<'de> for PoolName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PoolName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<PoolName, A::Error> {
                let mut name = None;
                while let Some(key) = m.next_key::<serde_json::Value>()? {
                    if key.as_str() == Some("name") {
                        name = m
                            .next_value::<serde_json::Value>()?
                            .as_str()
                            .map(str::to_owned);
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(PoolName(name))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<PoolName, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PoolName(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
            fn visit_unit<E>(self) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
            fn visit_none<E>(self) -> Result<PoolName, E> {
                Ok(PoolName(None))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The largest `config` document accepted, in bytes (256 KiB). A longer one
/// is refused before any YAML work, so that a bad edit to the ConfigMap cannot
/// run the controller or the speakers out of memory: each parses the same
/// document, and their memory limit is 128 MiB. Real configs are a few KiB; a
/// config at this limit holds about 14,000 address entries.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// The longest pool name accepted, in characters: a Kubernetes label value's
/// length. The pool's name is written as an annotation on every Service that
/// takes an address from it.
pub const MAX_POOL_NAME: usize = 63;

/// The most YAML nodes (mappings, sequences, scalars) a config may hold,
/// counting an alias each time it is used: several times what a config of
/// [`MAX_CONFIG_BYTES`] of address entries needs.
pub const MAX_YAML_NODES: usize = 64 * 1024;

/// The YAML budget for a config: with it, parsing any document of at most
/// [`MAX_CONFIG_BYTES`] raises memory use by a few MiB at most (measured by
/// `core/tests/config_rss.rs`; BENCHMARKS.md has the figures). The defaults
/// of serde-saphyr allow 250,000 nodes and a million recorded alias events,
/// which an alias bomb turns into well over 100 MiB.
pub(crate) fn budget() -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    b.max_reader_input_bytes = Some(MAX_CONFIG_BYTES);
    b.max_events = 3 * MAX_YAML_NODES;
    b.max_nodes = MAX_YAML_NODES;
    b.max_aliases = 1024;
    b.max_anchors = 1024;
    b.max_recorded_anchor_events = 4096;
    b.max_recorded_anchor_bytes = MAX_CONFIG_BYTES;
    // A config nests 8 levels at most (pools, a pool, node-selectors, a
    // selector, matchExpressions, a requirement, values, a value).
    b.max_depth = 16;
    b.flow_nesting_limit = 16;
    b.max_documents = 2;
    b.max_total_scalar_bytes = 2 * MAX_CONFIG_BYTES;
    b.max_merge_keys = 256;
    b
}

pub(crate) fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget());
    o.alias_limits.max_total_replayed_events = 2 * MAX_YAML_NODES;
    o.alias_limits.max_replay_stack_depth = 16;
    o
}

/// Refuses a `config` longer than [`MAX_CONFIG_BYTES`], before any YAML work.
fn check_size(text: &str) -> Result<(), ConfigError> {
    if text.len() <= MAX_CONFIG_BYTES {
        return Ok(());
    }
    Err(ConfigError::new(
        None,
        None,
        format!(
            "the config is {} bytes ({}), more than the {MAX_CONFIG_BYTES} bytes (256 KiB) ferrolb accepts; it was not parsed",
            text.len(),
            human_size(text.len())
        ),
    ))
}

fn human_size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Parses and validates the YAML document stored under the ConfigMap key
/// `config`. An empty document is a valid, empty config. A document longer
/// than [`MAX_CONFIG_BYTES`] is refused unread, and the YAML is parsed within
/// a budget (nodes, depth, aliases) that bounds the memory it can take.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    check_size(text).map_err(|e| vec![e])?;
    let raw: Option<RawConfig> = serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| vec![decode_error(text, &e)])?;
    let raw = raw.unwrap_or(RawConfig {
        address_pools: None,
        peers: None,
        bgp_communities: None,
        bfd_profiles: None,
    });
    validate(raw)
}

/// What tripped the YAML budget, in the config's terms.
pub(crate) fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let what = match breach {
        B::Nodes { .. } | B::Events { .. } => {
            format!(
                "it has more than {MAX_YAML_NODES} YAML nodes (an alias counts each time it is used)"
            )
        }
        B::Depth { .. } => "it nests deeper than 16 levels".to_owned(),
        B::Aliases { .. }
        | B::Anchors { .. }
        | B::AliasAnchorRatio { .. }
        | B::RecordedAnchorEvents { .. }
        | B::RecordedAnchorBytes { .. } => {
            "it uses more aliases or anchors than a config needs".to_owned()
        }
        B::ScalarBytes { .. } => format!(
            "its values add up to more than {} bytes (an alias counts each time it is used)",
            2 * MAX_CONFIG_BYTES
        ),
        other => format!("{other:?}"),
    };
    format!(
        "the YAML is over ferrolb's limits: {what} (the limits keep a config from exhausting memory)"
    )
}

fn decode_error(text: &str, err: &serde_saphyr::Error) -> ConfigError {
    // A breached budget or alias limit: say which, without parsing the
    // document again (that would only breach it again).
    let mut inner = err;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    match inner {
        serde_saphyr::Error::Budget { breach, .. } => {
            return ConfigError::new(None, None, budget_message(breach));
        }
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. }
        | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. } => {
            return ConfigError::new(
                None,
                None,
                "the YAML is over ferrolb's limits: its aliases expand to more than a config needs (the limits keep a config from exhausting memory)",
            );
        }
        _ => {}
    }
    // Name the pool whose item starts last before the error, if any.
    let line = err.location().map(|l| l.line());
    let pool = line.and_then(|line| {
        let mut lenient = options();
        lenient.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
        let loc: PoolLocator = serde_saphyr::from_str_with_options(text, lenient).ok()?;
        let pools = loc.address_pools?;
        let (i, item) = pools
            .iter()
            .enumerate()
            .rfind(|(_, p)| p.referenced.line() <= line)?;
        Some(match &item.value.0 {
            Some(name) if !name.is_empty() && !name_too_long(name) => name.clone(),
            _ => format!("address-pools[{i}]"),
        })
    });
    let message = err.to_string();
    // The first line carries "line L column C: reason"; the snippet follows.
    let first = message.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Advice meant for programmers using the YAML library, not for users.
    let first = first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first);
    // `bgp-advertisements` is read only to refuse it: not a key to suggest.
    let first = first.replace(", bgp-advertisements", "");
    let first = first.as_str();
    // The parser's words for a value of the wrong shape, in the config's terms.
    let hint = if first.contains("expected sequence start") {
        " (a list is expected here: `[a, b]`, or one `- item` per line)"
    } else if first.contains("expected mapping start") {
        " (a mapping of keys is expected here, e.g. `name: x`)"
    } else if first.contains("recursion limit exceeded") {
        " (lists or mappings nested more than 16 deep; a config needs 8 at most)"
    } else {
        ""
    };
    ConfigError {
        pool,
        entry: None,
        message: format!(
            "could not parse config: {first}{hint}; a YAML error stops the check, so other problems show once it is fixed"
        ),
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();

    // BGP parts: ferrolb is layer 2 only. Empty sections are harmless.
    let mut bgp = Vec::new();
    if let Some(n) = raw.peers.as_ref().map(Vec::len).filter(|n| *n > 0) {
        bgp.push(format!("peers ({n})"));
    }
    if raw.bgp_communities.as_ref().is_some_and(|c| !c.is_empty()) {
        bgp.push("bgp-communities".to_owned());
    }
    if raw.bfd_profiles.as_ref().is_some_and(|b| !b.is_empty()) {
        bgp.push("bfd-profiles".to_owned());
    }
    let raw_pools = raw.address_pools.unwrap_or_default();
    if !bgp.is_empty() {
        errors.push(ConfigError::new(
            None,
            None,
            format!(
                "BGP mode is not supported: ferrolb announces addresses in layer 2 only; remove {}",
                bgp.join(", ")
            ),
        ));
    }

    let mut pools = Vec::new();
    let mut names = BTreeSet::new();
    let empty = RawPool::default();
    // Every range accepted so far, with its pool and entry, for the overlap check.
    // (Borrowed, not copied: a config at the size limit has thousands of entries.)
    let mut seen: Vec<(AddrRange, Rc<str>, &str)> = Vec::new();

    for (i, raw_pool) in raw_pools.iter().enumerate() {
        let p = raw_pool.as_ref().unwrap_or(&empty);
        let name = p.name.clone().filter(|n| !n.is_empty());
        // An overlong name is not repeated in every message about the pool.
        let label_rc: Rc<str> = name
            .clone()
            .filter(|n| !name_too_long(n))
            .unwrap_or(format!("address-pools[{i}]"))
            .into();
        let label = &*label_rc;
        let before = errors.len();
        let mut err = |entry: Option<&str>, msg: String| {
            errors.push(ConfigError::new(Some(label), entry, msg))
        };

        // 1. name
        match &name {
            None => err(None, "missing pool name".to_owned()),
            Some(n) if name_too_long(n) => {
                let start: String = n.chars().take(20).collect();
                err(
                    Some("name"),
                    format!(
                        "the pool name ({start:?}...) is {} characters long; at most {MAX_POOL_NAME} are allowed, as it is written in an annotation on each Service of the pool",
                        n.chars().count()
                    ),
                )
            }
            Some(_) => {}
        }
        // 2. addresses
        let addresses = p.addresses.as_deref().unwrap_or_default();
        if addresses.is_empty() {
            err(Some("addresses"), "pool has no prefixes defined".to_owned());
        }
        // 3. each address
        let mut ranges = Vec::new();
        for a in addresses {
            match parse_entry(a) {
                Ok(r) => ranges.push((r, a.as_str())),
                Err(e) => err(Some(a), e),
            }
        }
        // 4. protocol
        let bgp_ads = p.bgp_advertisements.as_ref().is_some_and(|a| !a.is_empty());
        match p.protocol.as_deref() {
            None | Some("") => err(
                Some("protocol"),
                "missing the protocol field (ferrolb supports \"layer2\")".to_owned(),
            ),
            Some("layer2") if bgp_ads => err(
                Some("bgp-advertisements"),
                "bgp-advertisements is not allowed in a layer2 pool".to_owned(),
            ),
            Some("layer2") => {}
            Some("bgp") => err(
                Some("protocol"),
                "BGP mode is not supported: ferrolb announces addresses in layer 2 only; remove this pool or make it protocol: layer2".to_owned(),
            ),
            Some(other) => err(
                Some("protocol"),
                format!("unknown protocol {other:?} (ferrolb supports \"layer2\")"),
            ),
        }
        // 5. duplicate name
        if let Some(n) = &name
            && !names.insert(n.clone())
        {
            err(Some("name"), format!("duplicate definition of pool {n:?}"));
        }
        // 6. overlaps with every range accepted so far (a BGP pool, refused
        // above, takes part in no overlap: its problem is said once)
        let is_bgp = p.protocol.as_deref() == Some("bgp");
        for (r, entry) in ranges.iter().filter(|_| !is_bgp) {
            if let Some((_, other_pool, other_entry)) = seen.iter().find(|(o, _, _)| o.overlaps(r))
            {
                let whose = if &**other_pool == label {
                    format!("entry {other_entry:?} of the same pool")
                } else {
                    format!("entry {other_entry:?} of pool {other_pool:?}")
                };
                err(Some(entry), format!("overlaps with {whose}"));
            }
            seen.push((*r, label_rc.clone(), entry));
        }

        // ferrolb extensions
        let namespaces = match &p.namespaces {
            None => None,
            Some(list) if list.is_empty() => {
                err(
                    Some("namespaces"),
                    "namespaces is empty, so no Service could use this pool; omit the key to allow every namespace".to_owned(),
                );
                None
            }
            Some(list) => {
                for ns in list.iter().filter(|ns| !is_dns_label(ns)) {
                    err(
                        Some("namespaces"),
                        format!("{ns:?} is not a valid namespace name"),
                    );
                }
                Some(list.iter().cloned().collect())
            }
        };
        let mut node_selectors = Vec::new();
        for s in p.node_selectors.iter().flatten() {
            let exprs = s
                .match_expressions
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.key.clone(),
                        r.operator.clone(),
                        r.values.clone().unwrap_or_default(),
                    )
                })
                .collect();
            match LabelSelector::new(s.match_labels.clone().unwrap_or_default(), exprs) {
                Ok(sel) => node_selectors.push(sel),
                Err(e) => err(Some("node-selectors"), e),
            }
        }
        let interfaces = p.interfaces.clone().unwrap_or_default();
        if p.interfaces.as_ref().is_some_and(Vec::is_empty) {
            err(
                Some("interfaces"),
                "interfaces is empty, so no interface would announce; omit the key for the default choice".to_owned(),
            );
        }
        for ifname in interfaces.iter().filter(|n| !valid_interface_name(n)) {
            err(
                Some("interfaces"),
                format!(
                    "{ifname:?} is not a valid interface name (1-15 characters, no '/', ':' or white space)"
                ),
            );
        }

        if errors.len() == before && p.protocol.as_deref() == Some("layer2") {
            pools.push(AddressPool {
                name: name.expect("checked above"),
                ranges: ranges.into_iter().map(|(r, _)| r).collect(),
                auto_assign: p.auto_assign.unwrap_or(true),
                avoid_buggy_ips: p.avoid_buggy_ips.unwrap_or(false),
                service_allocation: namespaces.map(|namespaces| ServiceAllocation {
                    namespaces,
                    ..ServiceAllocation::default()
                }),
                // A ConfigMap pool is announced by one advertisement: its own.
                advertisements: vec![Advertisement {
                    node_selectors,
                    interfaces,
                    service_selectors: vec![],
                }],
            });
        }
    }

    if errors.is_empty() {
        let order = configmap_order(&pools);
        Ok(Config { pools, order })
    } else {
        Err(errors)
    }
}

/// The order that keeps a ConfigMap's promise (auto-assign pools in config
/// order, `namespaces` only restricting): [`PoolOrder::Priority`] when it
/// gives the same order for every Service, which is when no unrestricted
/// auto-assign pool comes before a restricted one; else config order.
fn configmap_order(pools: &[AddressPool]) -> PoolOrder {
    let restricted: Vec<bool> = pools
        .iter()
        .filter(|p| p.auto_assign)
        .map(|p| p.service_allocation.is_some())
        .collect();
    let first_unrestricted = restricted.iter().position(|r| !r);
    let last_restricted = restricted.iter().rposition(|r| *r);
    match (first_unrestricted, last_restricted) {
        (Some(u), Some(r)) if u < r => PoolOrder::ConfigOrder,
        _ => PoolOrder::Priority,
    }
}

pub(crate) fn name_too_long(n: &str) -> bool {
    n.chars().count() > MAX_POOL_NAME
}

pub(crate) fn valid_interface_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Where the embedded `config` document starts in a ConfigMap manifest, when
/// it is a block scalar (`config: |`), whose lines are the file's lines:
/// `(line, indent)`, with `line` the 0-based file line of the document's
/// first line. A position (L, C) in the document is then (line + L, indent + C)
/// in the file. `None` for a bare document or a quoted string.
pub fn embedded_position(file: &str, doc: &str) -> Option<(usize, usize)> {
    if file == doc {
        return None;
    }
    let lines: Vec<&str> = file.lines().collect();
    let first = doc.lines().next()?;
    lines.iter().enumerate().find_map(|(i, l)| {
        let t = l.trim();
        let is_block = t.starts_with("config:")
            && matches!(
                t.trim_start_matches("config:").trim(),
                "|" | "|-" | "|+" | "|2" | "|2-" | "|2+" | "|4" | "|4-"
            );
        if !is_block {
            return None;
        }
        let next = lines.get(i + 1)?;
        let indent = next.len() - next.trim_start().len();
        (next.get(indent..) == Some(first)).then_some((i + 1, indent))
    })
}

/// What `check-config` was given: a ConfigMap manifest (the config is its
/// `data.config`), or the bare config document itself.
pub fn extract_config_document(text: &str) -> Result<String, ConfigError> {
    // The same bounds as the config itself, except that the document may hold
    // a ConfigMap (up to 1 MiB of data, as the API server allows): a larger
    // `data.config` is then refused by `parse` with its own message.
    let mut opts = options();
    if let Some(b) = opts.budget.as_mut() {
        b.max_reader_input_bytes = None;
        b.max_total_scalar_bytes = 2 << 20;
        b.max_documents = 64;
    }
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple_with_options(text, opts) {
        Ok(d) => d,
        // Not even generic YAML: let the config parser report it.
        Err(_) => return Ok(text.to_owned()),
    };
    let is_configmap =
        |d: &serde_json::Value| d.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap");
    let Some(cm) = docs.iter().find(|d| is_configmap(d)) else {
        if docs.iter().filter(|d| !d.is_null()).count() > 1 {
            return Err(ConfigError::new(
                None,
                None,
                "the file holds several YAML documents and none is a ConfigMap",
            ));
        }
        return Ok(text.to_owned());
    };
    let name = cm
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>");
    match cm.pointer("/data/config") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ConfigError::new(
            None,
            Some("data.config"),
            format!("ConfigMap {name:?}: data.config must be a string (use `config: |`)"),
        )),
        None => Err(ConfigError::new(
            None,
            Some("data.config"),
            format!("ConfigMap {name:?} has no key \"config\" under data"),
        )),
    }
}
