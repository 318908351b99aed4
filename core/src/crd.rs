//! MetalLB's `metallb.io/v1beta1` objects as a second config source
//! (docs/architecture.md, section 3): IPAddressPool and L2Advertisement, read
//! from multi-document YAML into the same [`Config`] as the ConfigMap.
//!
//! Validation is as careful as the ConfigMap's: every problem is reported,
//! each naming the object (`kind namespace/name`) and the field
//! (`spec.addresses[1]`), and the config is refused only for errors. Warnings
//! and notices say what MetalLB would do silently: an L2Advertisement naming a
//! pool that does not exist (MetalLB ignores the name), a pool no
//! L2Advertisement selects (its addresses are assigned but not announced), and
//! BGP objects (not supported; ignored, never an error for the layer-2 config).
//!
//! The semantics follow MetalLB's: `autoAssign` defaults to true,
//! `avoidBuggyIPs` to false; an L2Advertisement with neither `ipAddressPools`
//! nor `ipAddressPoolSelectors` selects every pool; several advertisements of
//! one pool combine (a node announces if one of them selects it; their
//! interfaces add up, and one without interfaces means every interface); a
//! pool with a `serviceAllocation` is preferred by the Services it selects,
//! lowest `priority` first (0 or unset last), over pools without one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::addr::{AddrRange, parse_entry};
use crate::config::{
    self, AddressPool, Advertisement, Config, MAX_CONFIG_BYTES, MAX_POOL_NAME, PoolOrder,
    ServiceAllocation,
};
use crate::selector::{LabelSelector, Labels, Operator, is_dns_label, is_dns_subdomain};

/// The API group and version ferrolb reads.
pub const API_VERSION: &str = "metallb.io/v1beta1";

/// MetalLB's BGP kinds: recognised, not supported, ignored.
const BGP_KINDS: [&str; 4] = ["BGPPeer", "BGPAdvertisement", "BFDProfile", "Community"];

/// Objects MetalLB writes to report its state, not configuration.
const STATUS_KINDS: [&str; 3] = ["ServiceL2Status", "ServiceBGPStatus", "ConfigurationState"];

/// How much a [`Problem`] matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The objects are refused.
    Error,
    /// Accepted, but probably not what was meant.
    Warning,
    /// Accepted; said once so that nothing is ignored silently.
    Notice,
}

/// One problem or notice about the objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// `IPAddressPool metallb-system/default`; `document 3` for an object
    /// without a kind or name.
    pub object: String,
    /// The field concerned, as a path: `spec.addresses[1]`.
    pub field: Option<String>,
    pub message: String,
    /// The objects concerned, where they have a kind and a name (an Event
    /// goes on each); empty for the file as a whole.
    #[serde(skip)]
    pub targets: Vec<ObjectRef>,
}

/// Which object a [`Problem`] concerns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `metallb.io/v1beta1`.
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}, {field}: {}", self.object, self.message),
            None => write!(f, "{}: {}", self.object, self.message),
        }
    }
}

/// What [`parse`] found: the config, unless there is an error, and every
/// problem and notice, errors first, each kind in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
}

impl Parsed {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
    /// Warnings and notices.
    pub fn notices(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity != Severity::Error)
    }
}

/// The YAML budget for a file of objects: the ConfigMap's, with room for many
/// documents.
fn options() -> serde_saphyr::Options {
    let mut o = config::options();
    if let Some(b) = o.budget.as_mut() {
        b.max_documents = 4096;
    }
    o
}

fn documents(text: &str) -> Result<Vec<Value>, String> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "the file is {} bytes, more than the {MAX_CONFIG_BYTES} bytes (256 KiB) ferrolb accepts; it was not parsed",
            text.len()
        ));
    }
    serde_saphyr::from_multiple_with_options::<Value>(text, options()).map_err(|e| {
        let mut inner = &e;
        while let serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } = inner
        {
            inner = error;
        }
        if let serde_saphyr::Error::Budget { breach, .. } = inner {
            return config::budget_message(breach);
        }
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        format!(
            "could not parse the YAML: {}",
            first.strip_prefix("error: ").unwrap_or(first)
        )
    })
}

/// Whether `text` holds MetalLB objects rather than a ConfigMap or a bare
/// `config` document: one of its documents (or of a `List`'s items) has a
/// `metallb.io/` apiVersion, and none is a ConfigMap.
pub fn looks_like_crds(text: &str) -> bool {
    let Ok(docs) = documents(text) else {
        return false;
    };
    let objects: Vec<&Value> = docs.iter().flat_map(flatten).map(|(_, v)| v).collect();
    let kind = |v: &Value| v.get("kind").and_then(Value::as_str).map(str::to_owned);
    !objects
        .iter()
        .any(|v| kind(v).as_deref() == Some("ConfigMap"))
        && objects.iter().any(|v| {
            v.get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("metallb.io/"))
        })
}

/// The objects of one document: itself, or a `List`'s items, each with the
/// name a problem uses for it when it has no kind or name.
fn flatten(doc: &Value) -> Vec<(String, &Value)> {
    let is_list = doc.get("kind").and_then(Value::as_str) == Some("List")
        || doc
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List") && doc.get("items").is_some());
    match doc.get("items").and_then(Value::as_array) {
        Some(items) if is_list => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("items[{i}]"), v))
            .collect(),
        _ => vec![(String::new(), doc)],
    }
}

/// Problems of one object.
struct Sink<'a> {
    object: String,
    target: Option<ObjectRef>,
    problems: &'a mut Vec<Problem>,
    errors: usize,
}

impl Sink<'_> {
    fn push(&mut self, severity: Severity, field: Option<&str>, message: impl Into<String>) {
        if severity == Severity::Error {
            self.errors += 1;
        }
        self.problems.push(Problem {
            severity,
            object: self.object.clone(),
            field: field.map(str::to_owned),
            message: message.into(),
            targets: self.target.iter().cloned().collect(),
        });
    }
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, Some(field), message);
    }
    fn warn(&mut self, field: Option<&str>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A mapping's keys that are not in `known` are errors (the API server would
/// drop or refuse them, so the object would not say what it seems to).
fn check_keys(sink: &mut Sink, map: &serde_json::Map<String, Value>, known: &[&str], path: &str) {
    for k in map.keys().filter(|k| !known.contains(&k.as_str())) {
        let field = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        sink.err(
            &field,
            format!(
                "unknown field {k:?} (expected one of: {})",
                known.join(", ")
            ),
        );
    }
}

/// `map[key]` as a mapping; `None` when absent or null (an error when
/// something else).
fn mapping<'v>(
    sink: &mut Sink,
    map: &'v serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Option<&'v serde_json::Map<String, Value>> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            sink.err(
                path,
                format!("expected a mapping, found {}", type_name(other)),
            );
            None
        }
    }
}

fn boolean(sink: &mut Sink, v: Option<&Value>, path: &str) -> Option<bool> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            sink.err(
                path,
                format!(
                    "expected true or false (unquoted), found {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}

/// A list of strings; each bad element is an error at its index.
fn strings(sink: &mut Sink, v: Option<&Value>, path: &str) -> Option<Vec<(String, String)>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = format!("{path}[{i}]");
                    match item {
                        Value::String(s) => Some((p, s.clone())),
                        other => {
                            sink.err(&p, format!("expected a string, found {}", type_name(other)));
                            None
                        }
                    }
                })
                .collect(),
        ),
        Some(other) => {
            sink.err(path, format!("expected a list, found {}", type_name(other)));
            None
        }
    }
}

/// A string-to-string mapping (labels, `matchLabels`).
fn string_map(sink: &mut Sink, v: Option<&Value>, path: &str) -> Labels {
    let mut out = Labels::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    other => sink.err(
                        &format!("{path}.{k}"),
                        format!(
                            "expected a string, found {} (quote values such as \"true\")",
                            type_name(other)
                        ),
                    ),
                }
            }
        }
        Some(other) => sink.err(
            path,
            format!("expected a mapping, found {}", type_name(other)),
        ),
    }
    out
}

/// A list of label selectors. MetalLB refuses a list that holds the same
/// selector twice, and so does ferrolb.
fn selectors(sink: &mut Sink, v: Option<&Value>, path: &str) -> Vec<LabelSelector> {
    let items = match v {
        None | Some(Value::Null) => return vec![],
        Some(Value::Array(items)) => items,
        Some(other) => {
            sink.err(path, format!("expected a list, found {}", type_name(other)));
            return vec![];
        }
    };
    let mut out: Vec<LabelSelector> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Value::Object(m) = item else {
            sink.err(
                &p,
                format!(
                    "expected a label selector (matchLabels, matchExpressions), found {}",
                    type_name(item)
                ),
            );
            continue;
        };
        check_keys(sink, m, &["matchLabels", "matchExpressions"], &p);
        let labels = string_map(sink, m.get("matchLabels"), &format!("{p}.matchLabels"));
        let mut exprs = Vec::new();
        match m.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(reqs)) => {
                for (j, r) in reqs.iter().enumerate() {
                    let rp = format!("{p}.matchExpressions[{j}]");
                    let Value::Object(rm) = r else {
                        sink.err(
                            &rp,
                            format!(
                                "expected a mapping (key, operator, values), found {}",
                                type_name(r)
                            ),
                        );
                        continue;
                    };
                    check_keys(sink, rm, &["key", "operator", "values"], &rp);
                    let key = rm.get("key").and_then(Value::as_str);
                    let op = rm.get("operator").and_then(Value::as_str);
                    let values = strings(sink, rm.get("values"), &format!("{rp}.values"))
                        .unwrap_or_default();
                    match (key, op) {
                        (Some(k), Some(o)) => exprs.push((
                            k.to_owned(),
                            o.to_owned(),
                            values.into_iter().map(|(_, v)| v).collect(),
                        )),
                        _ => sink.err(&rp, "key and operator are required strings"),
                    }
                }
            }
            Some(other) => sink.err(
                &format!("{p}.matchExpressions"),
                format!("expected a list, found {}", type_name(other)),
            ),
        }
        match LabelSelector::new(labels, exprs) {
            Ok(s) if out.contains(&s) => sink.err(
                &p,
                "the same selector is listed twice (MetalLB refuses duplicate selectors)",
            ),
            Ok(s) => out.push(s),
            Err(e) => sink.err(&p, e),
        }
    }
    out
}

fn interfaces(sink: &mut Sink, v: Option<&Value>, path: &str) -> Vec<String> {
    let list = strings(sink, v, path).unwrap_or_default();
    let mut out = Vec::new();
    for (p, name) in list {
        if !config::valid_interface_name(&name) {
            sink.err(
                &p,
                format!(
                    "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or white space)"
                ),
            );
        } else {
            out.push(name);
        }
    }
    out
}

/// An IPAddressPool as read, before the cross-object checks.
struct RawPool {
    object: String,
    target: Option<ObjectRef>,
    name: String,
    labels: Labels,
    /// Each address entry with its field path and text.
    entries: Vec<(String, String, AddrRange)>,
    pool: AddressPool,
    ok: bool,
}

/// An L2Advertisement as read.
struct RawAdvertisement {
    object: String,
    target: Option<ObjectRef>,
    /// Named pools with their field paths.
    pools: Vec<(String, String)>,
    pool_selectors: Vec<LabelSelector>,
    advertisement: Advertisement,
    ok: bool,
}

/// Parses and validates a file of MetalLB objects (multi-document YAML, or a
/// `List` as `kubectl get -o yaml` prints it).
pub fn parse(text: &str) -> Parsed {
    let mut problems = Vec::new();
    let docs = match documents(text) {
        Ok(d) => d,
        Err(message) => {
            return Parsed {
                config: None,
                problems: vec![Problem {
                    severity: Severity::Error,
                    object: "the file".to_owned(),
                    field: None,
                    message,
                    targets: vec![],
                }],
            };
        }
    };
    let mut pools: Vec<RawPool> = Vec::new();
    let mut ads: Vec<RawAdvertisement> = Vec::new();
    let mut bgp: Vec<String> = Vec::new();
    let mut bgp_targets: Vec<ObjectRef> = Vec::new();
    let mut seen_ads: BTreeSet<(String, String)> = BTreeSet::new();
    // The namespaces of the layer-2 objects: MetalLB reads one.
    let mut namespaces: BTreeSet<String> = BTreeSet::new();

    for (d, doc) in docs.iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        for (item, obj) in flatten(doc) {
            let place = if item.is_empty() {
                format!("document {}", d + 1)
            } else {
                format!("document {}, {item}", d + 1)
            };
            let str_at = |p: &str| obj.pointer(p).and_then(Value::as_str);
            let kind = str_at("/kind");
            let api = str_at("/apiVersion");
            let name = str_at("/metadata/name");
            let namespace = str_at("/metadata/namespace");
            let object = match (kind, name) {
                (Some(k), Some(n)) => match namespace {
                    Some(ns) => format!("{k} {ns}/{n}"),
                    None => format!("{k} {n}"),
                },
                (Some(k), None) => format!("{k} in {place}"),
                (None, _) => place.clone(),
            };
            let target = match (api, kind, name) {
                (Some(a), Some(k), Some(n)) => Some(ObjectRef {
                    api_version: a.to_owned(),
                    kind: k.to_owned(),
                    namespace: namespace.map(str::to_owned),
                    name: n.to_owned(),
                }),
                _ => None,
            };
            let mut sink = Sink {
                object,
                target,
                problems: &mut problems,
                errors: 0,
            };
            let Value::Object(map) = obj else {
                sink.push(
                    Severity::Error,
                    None,
                    format!(
                        "expected a Kubernetes object (a mapping), found {}",
                        type_name(obj)
                    ),
                );
                continue;
            };
            let metallb = api.is_some_and(|a| a.starts_with("metallb.io/"));
            match (kind, metallb) {
                (Some(k), true) if BGP_KINDS.contains(&k) => {
                    bgp.push(sink.object.clone());
                    bgp_targets.extend(sink.target.clone());
                    continue;
                }
                (Some(k), true) if STATUS_KINDS.contains(&k) => {
                    sink.push(
                        Severity::Notice,
                        None,
                        "a status object MetalLB writes, not configuration: ignored",
                    );
                    continue;
                }
                (Some("AddressPool"), true) => {
                    sink.push(
                        Severity::Error,
                        Some("kind"),
                        "AddressPool is MetalLB's deprecated kind (removed in v0.14): write it as an IPAddressPool and an L2Advertisement (`ferrolb-controller check-config --to-crds` converts a ConfigMap)",
                    );
                    continue;
                }
                (Some("IPAddressPool" | "L2Advertisement"), true) if api != Some(API_VERSION) => {
                    sink.push(
                        Severity::Error,
                        Some("apiVersion"),
                        format!(
                            "apiVersion {:?} is not read: ferrolb reads {API_VERSION}",
                            api.unwrap_or_default()
                        ),
                    );
                    continue;
                }
                (Some("IPAddressPool" | "L2Advertisement"), true) => {}
                _ => {
                    sink.push(
                        Severity::Error,
                        None,
                        format!(
                            "not a MetalLB layer-2 object (apiVersion {:?}, kind {:?}): the file may hold {API_VERSION} IPAddressPool and L2Advertisement objects (BGP kinds are ignored)",
                            api.unwrap_or("<none>"),
                            kind.unwrap_or("<none>")
                        ),
                    );
                    continue;
                }
            }
            check_keys(
                &mut sink,
                map,
                &["apiVersion", "kind", "metadata", "spec", "status"],
                "",
            );
            let metadata = mapping(&mut sink, map, "metadata", "metadata");
            let name = match name {
                None if obj.pointer("/metadata/name").is_some_and(|n| !n.is_null()) => {
                    let n = obj.pointer("/metadata/name").expect("checked");
                    sink.err(
                        "metadata.name",
                        format!(
                            "expected a string, found {} (quote it: YAML reads `yes`, `y`, `on` and numbers as other types)",
                            type_name(n)
                        ),
                    );
                    None
                }
                None => {
                    sink.err("metadata.name", "missing: every object needs a name");
                    None
                }
                Some(n) if !is_dns_subdomain(n) => {
                    sink.err(
                        "metadata.name",
                        format!("{n:?} is not a valid object name (lower-case letters, digits, '-' and '.')"),
                    );
                    None
                }
                Some(n) => Some(n.to_owned()),
            };
            if let Some(ns) = namespace
                && !is_dns_label(ns)
            {
                sink.err(
                    "metadata.namespace",
                    format!("{ns:?} is not a valid namespace name"),
                );
            }
            let labels = string_map(
                &mut sink,
                metadata.and_then(|m| m.get("labels")),
                "metadata.labels",
            );
            if let Some(ns) = namespace {
                namespaces.insert(ns.to_owned());
            }
            let spec = mapping(&mut sink, map, "spec", "spec");
            if kind == Some("IPAddressPool") {
                let pool = read_pool(&mut sink, name, labels, spec);
                pools.push(pool);
            } else {
                if let Some(n) = &name
                    && !seen_ads.insert((namespace.unwrap_or_default().to_owned(), n.clone()))
                {
                    sink.err(
                        "metadata.name",
                        format!("duplicate definition of L2Advertisement {n:?}"),
                    );
                }
                let mut ad = read_advertisement(&mut sink, spec);
                ad.ok = sink.errors == 0;
                ads.push(ad);
            }
        }
    }

    // Pools: duplicate names, then overlaps, each against every pool before.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: Vec<(AddrRange, String, String, Option<ObjectRef>)> = Vec::new();
    for p in &mut pools {
        let mut sink = Sink {
            object: p.object.clone(),
            target: p.target.clone(),
            problems: &mut problems,
            errors: 0,
        };
        if !p.name.is_empty() {
            if let Some(first) = names.get(&p.name) {
                sink.err(
                    "metadata.name",
                    format!("duplicate definition of pool {:?} (also {first})", p.name),
                );
            } else {
                names.insert(p.name.clone(), p.object.clone());
            }
        }
        for (path, text, r) in &p.entries {
            if let Some((_, other, other_text, other_target)) =
                seen.iter().find(|(o, _, _, _)| o.overlaps(r))
            {
                let whose = if *other == p.object {
                    format!("entry {other_text:?} of the same pool")
                } else {
                    format!("entry {other_text:?} of {other}")
                };
                sink.err(path, format!("{text:?} overlaps with {whose}"));
                // Both objects hear of it: either may be the one to fix.
                if let (Some(t), Some(last)) = (other_target, sink.problems.last_mut())
                    && !last.targets.contains(t)
                {
                    last.targets.push(t.clone());
                }
            }
            seen.push((*r, p.object.clone(), text.clone(), p.target.clone()));
        }
        p.ok &= sink.errors == 0;
    }

    // Advertisements onto pools, in file order.
    for ad in &ads {
        let mut sink = Sink {
            object: ad.object.clone(),
            target: ad.target.clone(),
            problems: &mut problems,
            errors: 0,
        };
        for (path, name) in &ad.pools {
            if !pools.iter().any(|p| &p.name == name) {
                sink.warn(
                    Some(path),
                    format!(
                        "no IPAddressPool is named {name:?}: the name is ignored (as MetalLB ignores it)"
                    ),
                );
            }
        }
        for (i, s) in ad.pool_selectors.iter().enumerate() {
            if !pools.iter().any(|p| s.matches(&p.labels)) {
                sink.warn(
                    Some(&format!("spec.ipAddressPoolSelectors[{i}]")),
                    "selects no IPAddressPool (by its labels)",
                );
            }
        }
        if !ad.ok {
            continue;
        }
        let all = ad.pools.is_empty() && ad.pool_selectors.is_empty();
        for p in pools.iter_mut() {
            let selected = all
                || ad.pools.iter().any(|(_, n)| *n == p.name)
                || ad.pool_selectors.iter().any(|s| s.matches(&p.labels));
            // Two advertisements that say the same thing count once (MetalLB).
            if selected && !p.pool.advertisements.contains(&ad.advertisement) {
                p.pool.advertisements.push(ad.advertisement.clone());
            }
        }
    }

    for p in pools.iter().filter(|p| p.ok) {
        let mut sink = Sink {
            object: p.object.clone(),
            target: p.target.clone(),
            problems: &mut problems,
            errors: 0,
        };
        if p.pool.advertisements.is_empty() {
            sink.warn(
                None,
                "no L2Advertisement selects this pool: its addresses are assigned to Services but not announced (no node answers ARP/NDP for them; MetalLB says nothing here). An L2Advertisement with `spec: {}` announces every pool from every node",
            );
        }
        if p.pool
            .service_allocation
            .as_ref()
            .is_some_and(|a| !a.selects_any())
        {
            sink.warn(
                Some("spec.serviceAllocation"),
                "names no namespaces, namespaceSelectors or serviceSelectors: as in MetalLB, no address of this pool is assigned automatically, only to Services that ask for the pool or one of its addresses",
            );
        }
    }

    if namespaces.len() > 1 {
        problems.push(Problem {
            severity: Severity::Warning,
            object: "the file".to_owned(),
            field: None,
            targets: vec![],
            message: format!(
                "the objects are in several namespaces ({}): MetalLB reads only those of its own namespace (metallb-system by default), so it would not see some of them; this check reads them all",
                namespaces.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    if !bgp.is_empty() {
        problems.push(Problem {
            severity: Severity::Notice,
            object: bgp.join(", "),
            field: None,
            targets: bgp_targets,
            message: "BGP is not supported (ferrolb announces in layer 2 only): these objects are ignored; the layer-2 config is read without them".to_owned(),
        });
    }

    // Errors first, then warnings, then notices; file order within each.
    problems.sort_by_key(|p| p.severity);
    let config = (!problems.iter().any(|p| p.severity == Severity::Error)).then(|| Config {
        pools: pools.into_iter().map(|p| p.pool).collect(),
        order: PoolOrder::Priority,
    });
    Parsed { config, problems }
}

fn read_pool(
    sink: &mut Sink,
    name: Option<String>,
    labels: Labels,
    spec: Option<&serde_json::Map<String, Value>>,
) -> RawPool {
    let before = sink.errors;
    if let Some(n) = &name
        && config::name_too_long(n)
    {
        sink.err(
            "metadata.name",
            format!(
                "the pool name is {} characters long; at most {MAX_POOL_NAME} are allowed, as it is written in an annotation on each Service of the pool",
                n.chars().count()
            ),
        );
    }
    let empty = serde_json::Map::new();
    let spec = match spec {
        Some(s) => s,
        None => {
            sink.err("spec", "missing: an IPAddressPool needs spec.addresses");
            &empty
        }
    };
    check_keys(
        sink,
        spec,
        &[
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
        ],
        "spec",
    );
    let mut entries = Vec::new();
    let listed = spec
        .get("addresses")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    match strings(sink, spec.get("addresses"), "spec.addresses") {
        None if spec.get("addresses").is_none_or(Value::is_null) => {
            sink.err("spec.addresses", "pool has no prefixes defined")
        }
        None => {}
        Some(_) if !listed => sink.err("spec.addresses", "pool has no prefixes defined"),
        Some(list) => {
            for (path, text) in list {
                match parse_entry(&text) {
                    Ok(r) => entries.push((path, text, r)),
                    Err(e) => sink.err(&path, e),
                }
            }
        }
    }
    let auto_assign = boolean(sink, spec.get("autoAssign"), "spec.autoAssign").unwrap_or(true);
    let avoid_buggy_ips =
        boolean(sink, spec.get("avoidBuggyIPs"), "spec.avoidBuggyIPs").unwrap_or(false);
    let service_allocation = mapping(sink, spec, "serviceAllocation", "spec.serviceAllocation")
        .map(|a| read_allocation(sink, a));
    RawPool {
        object: sink.object.clone(),
        target: sink.target.clone(),
        name: name.clone().unwrap_or_default(),
        labels,
        pool: AddressPool {
            name: name.unwrap_or_default(),
            ranges: entries.iter().map(|(_, _, r)| *r).collect(),
            auto_assign,
            avoid_buggy_ips,
            service_allocation,
            advertisements: vec![],
        },
        entries,
        ok: sink.errors == before,
    }
}

fn read_allocation(sink: &mut Sink, a: &serde_json::Map<String, Value>) -> ServiceAllocation {
    const P: &str = "spec.serviceAllocation";
    check_keys(
        sink,
        a,
        &[
            "priority",
            "namespaces",
            "namespaceSelectors",
            "serviceSelectors",
        ],
        P,
    );
    let priority = match a.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(0) => None,
            Some(n) => {
                if n < 0 {
                    sink.warn(
                        Some(&format!("{P}.priority")),
                        "a negative priority: MetalLB's order for it is undefined; ferrolb puts it before every positive one (lower first)",
                    );
                }
                Some(n)
            }
            None => {
                sink.err(
                    &format!("{P}.priority"),
                    format!("{n} is not a whole number in the 32-bit range"),
                );
                None
            }
        },
        Some(other) => {
            sink.err(
                &format!("{P}.priority"),
                format!("expected a whole number, found {}", type_name(other)),
            );
            None
        }
    };
    let mut namespaces = BTreeSet::new();
    for (path, ns) in
        strings(sink, a.get("namespaces"), &format!("{P}.namespaces")).unwrap_or_default()
    {
        if !is_dns_label(&ns) {
            sink.err(&path, format!("{ns:?} is not a valid namespace name"));
        } else if !namespaces.insert(ns.clone()) {
            sink.err(
                &path,
                format!("{ns:?} is listed twice (MetalLB refuses duplicate namespaces)"),
            );
        }
    }
    ServiceAllocation {
        priority,
        namespaces,
        namespace_selectors: selectors(
            sink,
            a.get("namespaceSelectors"),
            &format!("{P}.namespaceSelectors"),
        ),
        service_selectors: selectors(
            sink,
            a.get("serviceSelectors"),
            &format!("{P}.serviceSelectors"),
        ),
    }
}

fn read_advertisement(
    sink: &mut Sink,
    spec: Option<&serde_json::Map<String, Value>>,
) -> RawAdvertisement {
    let empty = serde_json::Map::new();
    let spec = spec.unwrap_or(&empty);
    check_keys(
        sink,
        spec,
        &[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
            "serviceSelectors",
        ],
        "spec",
    );
    let mut pools: Vec<(String, String)> = Vec::new();
    for (path, name) in
        strings(sink, spec.get("ipAddressPools"), "spec.ipAddressPools").unwrap_or_default()
    {
        if pools.iter().any(|(_, n)| *n == name) {
            sink.err(
                &path,
                format!("{name:?} is listed twice (MetalLB refuses duplicate pool names)"),
            );
        } else {
            pools.push((path, name));
        }
    }
    let pool_selectors = selectors(
        sink,
        spec.get("ipAddressPoolSelectors"),
        "spec.ipAddressPoolSelectors",
    );
    let advertisement = Advertisement {
        node_selectors: selectors(sink, spec.get("nodeSelectors"), "spec.nodeSelectors"),
        interfaces: interfaces(sink, spec.get("interfaces"), "spec.interfaces"),
        service_selectors: selectors(sink, spec.get("serviceSelectors"), "spec.serviceSelectors"),
    };
    RawAdvertisement {
        object: sink.object.clone(),
        target: sink.target.clone(),
        pools,
        pool_selectors,
        advertisement,
        ok: true,
    }
}

// === the converter: a ConfigMap's config as MetalLB objects ===

#[derive(Serialize)]
struct Object<S> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: S,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    namespace: String,
}

#[derive(Serialize)]
struct PoolSpec {
    addresses: Vec<String>,
    #[serde(rename = "autoAssign", skip_serializing_if = "is_true")]
    auto_assign: bool,
    #[serde(rename = "avoidBuggyIPs", skip_serializing_if = "is_false")]
    avoid_buggy_ips: bool,
    #[serde(rename = "serviceAllocation", skip_serializing_if = "Option::is_none")]
    service_allocation: Option<AllocationSpec>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllocationSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespace_selectors: Vec<SelectorSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_selectors: Vec<SelectorSpec>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdvertisementSpec {
    ip_address_pools: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    node_selectors: Vec<SelectorSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_selectors: Vec<SelectorSpec>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SelectorSpec {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    match_expressions: Vec<RequirementSpec>,
}

#[derive(Serialize)]
struct RequirementSpec {
    key: String,
    operator: Operator,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    values: Vec<String>,
}

fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

fn selector_spec(s: &[LabelSelector]) -> Vec<SelectorSpec> {
    s.iter()
        .map(|s| SelectorSpec {
            match_labels: s.match_labels.clone(),
            match_expressions: s
                .match_expressions
                .iter()
                .map(|r| RequirementSpec {
                    key: r.key.clone(),
                    operator: r.operator,
                    values: r.values.clone(),
                })
                .collect(),
        })
        .collect()
}

/// An address entry as MetalLB writes it: a CIDR when the range is one, else
/// `first-last`.
pub(crate) fn entry_text(r: &AddrRange) -> String {
    match r.cidrs().as_slice() {
        [one] => one.to_string(),
        _ => r.to_string(),
    }
}

/// The objects [`to_crds`] wrote, and what the user should know about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// Multi-document YAML: an IPAddressPool for each pool, then an
    /// L2Advertisement for each of a pool's advertisements (named after it).
    pub yaml: String,
    /// Where the objects would not give the same assignments as the config.
    pub warnings: Vec<String>,
}

/// Writes `config` (from a ConfigMap) as MetalLB `metallb.io/v1beta1`
/// objects in `namespace`, which [`parse`] reads back into an equal config
/// (and MetalLB reads as the same pools). Fails, naming them, if pool names
/// are not valid object names.
pub fn to_crds(config: &Config, namespace: &str) -> Result<Conversion, Vec<String>> {
    let bad: Vec<String> = config
        .pools
        .iter()
        .filter(|p| !is_dns_subdomain(&p.name))
        .map(|p| {
            format!(
                "pool {:?}: not a valid object name (lower-case letters, digits, '-' and '.'); rename the pool first (Services asking for it by name must follow)",
                p.name
            )
        })
        .collect();
    if !is_dns_label(namespace) {
        return Err(vec![format!("{namespace:?} is not a valid namespace name")]);
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    let meta = |name: &str| Metadata {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    };
    let mut docs = Vec::new();
    for p in &config.pools {
        docs.push(yaml(&Object {
            api_version: API_VERSION,
            kind: "IPAddressPool",
            metadata: meta(&p.name),
            spec: PoolSpec {
                addresses: p.ranges.iter().map(entry_text).collect(),
                auto_assign: p.auto_assign,
                avoid_buggy_ips: p.avoid_buggy_ips,
                service_allocation: p.service_allocation.as_ref().map(|a| AllocationSpec {
                    priority: a.priority,
                    namespaces: a.namespaces.iter().cloned().collect(),
                    namespace_selectors: selector_spec(&a.namespace_selectors),
                    service_selectors: selector_spec(&a.service_selectors),
                }),
            },
        }));
    }
    for p in &config.pools {
        for (i, a) in p.advertisements.iter().enumerate() {
            let name = if i == 0 {
                p.name.clone()
            } else {
                format!("{}-{}", p.name, i + 1)
            };
            docs.push(yaml(&Object {
                api_version: API_VERSION,
                kind: "L2Advertisement",
                metadata: meta(&name),
                spec: AdvertisementSpec {
                    ip_address_pools: vec![p.name.clone()],
                    node_selectors: selector_spec(&a.node_selectors),
                    interfaces: a.interfaces.clone(),
                    service_selectors: selector_spec(&a.service_selectors),
                },
            }));
        }
    }
    let mut warnings = Vec::new();
    if config.order == PoolOrder::ConfigOrder {
        let auto: Vec<&AddressPool> = config.pools.iter().filter(|p| p.auto_assign).collect();
        let first_open = auto.iter().find(|p| p.service_allocation.is_none());
        let later_restricted: Vec<&str> = auto
            .iter()
            .skip_while(|p| p.service_allocation.is_some())
            .filter(|p| p.service_allocation.is_some())
            .map(|p| p.name.as_str())
            .collect();
        if let Some(open) = first_open {
            warnings.push(format!(
                "pool {:?} (every namespace) comes before {} with `namespaces`: as IPAddressPools, pools with a serviceAllocation are tried first (MetalLB's rule), so Services of those namespaces would get addresses from {} where the ConfigMap gives them {:?}'s. To keep the ConfigMap's choice, move those pools before {:?} in the ConfigMap and convert again",
                open.name,
                quote_list(&later_restricted),
                quote_list(&later_restricted),
                open.name,
                open.name
            ));
        }
    }
    let mut yaml = String::from(
        "# MetalLB metallb.io/v1beta1 objects converted from a ConfigMap by\n# `ferrolb-controller check-config --to-crds`.\n",
    );
    for d in docs {
        yaml.push_str("---\n");
        yaml.push_str(&d);
    }
    Ok(Conversion { yaml, warnings })
}

fn quote_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn yaml<T: Serialize>(v: &T) -> String {
    serde_saphyr::to_string(v).expect("plain objects always serialise")
}

#[cfg(test)]
mod tests;
