//! The object store: pure state and the API semantics on it, no I/O.
//!
//! Objects are JSON values in the form of their storage view, keyed by storage, namespace and
//! name. One global `resourceVersion` counts every change; each storage keeps a bounded history of
//! its changes so that watches can resume from a version, and answers `410 Expired` for versions
//! older than what it keeps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::convert;
use super::patch::{self, PatchType};
use super::resources::{self, RESOURCES, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::services::ServiceAllocator;
use super::status::{ApiError, Cause};

pub type Obj = Arc<Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object, as kept in the history.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: EventType,
    pub namespace: String,
    /// The object after the change (for a delete: its last state, with the delete's version).
    pub object: Obj,
    /// The object before the change, for selector transitions (a watch with a selector sees an
    /// object that stops matching as DELETED and one that starts matching as ADDED).
    pub old: Option<Obj>,
    /// `object` serialized once, shared by every watch that sends it unconverted.
    pub json: Bytes,
}

#[derive(Debug, Default)]
struct Collection {
    objects: BTreeMap<(String, String), Obj>,
    history: VecDeque<Arc<Change>>,
    /// Every change with a version above this one is in `history`.
    floor: u64,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

#[derive(Debug)]
pub struct ListResult {
    pub resource_version: u64,
    pub items: Vec<Obj>,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug)]
pub enum DeleteOutcome {
    /// Removed; the last state of the object.
    Deleted(Obj),
    /// Has finalizers: marked with `deletionTimestamp` and kept until they are removed.
    Pending(Obj),
}

/// Result of polling the history for a watch.
#[derive(Debug)]
pub enum Poll {
    /// Changes after the polled version (possibly none), and the version to poll after next.
    Changes(Vec<Arc<Change>>, u64),
    /// The polled version is older than what this storage keeps.
    Expired { requested: u64, oldest: u64 },
}

pub struct Store {
    rv: u64,
    collections: HashMap<&'static str, Collection>,
    history_limit: usize,
    services: ServiceAllocator,
    rng: u64,
}

pub const DEFAULT_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .expect("current time is representable")
        .to_string()
}

fn meta(v: &Value) -> Option<&Map<String, Value>> {
    v.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    meta(v).and_then(|m| m.get(k)).and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns1123_label)
}

fn valid_name(r: &ResourceInfo, name: &str) -> Result<(), &'static str> {
    match r.plural {
        "services" => {
            if dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase() {
                Ok(())
            } else {
                Err(
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
                )
            }
        }
        "namespaces" => {
            if dns1123_label(name) {
                Ok(())
            } else {
                Err(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                )
            }
        }
        _ => {
            if dns1123_subdomain(name) {
                Ok(())
            } else {
                Err(
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                )
            }
        }
    }
}

/// Everything but metadata and status: what `generation` counts changes of.
fn same_spec(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(a) == strip(b)
}

pub(crate) fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Store {
    /// A store holding the namespaces every cluster has, keeping at most `history_limit` changes
    /// per storage for resuming watches.
    pub fn new(history_limit: usize) -> Self {
        Self::starting_at(history_limit, 0)
    }

    /// An empty store whose versions continue after `rv` and which cannot resume watches from
    /// `rv` or older (a restart that dropped the contents: clients must relist).
    pub fn starting_at(history_limit: usize, rv: u64) -> Self {
        let mut collections = HashMap::new();
        for r in RESOURCES {
            collections.entry(r.storage).or_insert_with(|| Collection {
                floor: rv + 1,
                ..Collection::default()
            });
        }
        let mut store = Store {
            rv: rv + 1,
            collections,
            history_limit: history_limit.max(1),
            services: ServiceAllocator::default(),
            rng: uuid::Uuid::new_v4().as_u128() as u64 | 1,
        };
        let ns = resources::namespaces();
        for name in DEFAULT_NAMESPACES {
            store
                .create(ns, "", json!({"metadata": {"name": name}}))
                .expect("default namespaces are valid");
        }
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// A copy of the objects and allocations without the watch history, for `dryRun=All`: a
    /// write to the copy validates, defaults and allocates as a real one would, and is dropped.
    pub fn dry_run_copy(&self) -> Store {
        Store {
            rv: self.rv,
            collections: self
                .collections
                .iter()
                .map(|(k, c)| {
                    (
                        *k,
                        Collection {
                            objects: c.objects.clone(),
                            history: VecDeque::new(),
                            floor: self.rv,
                        },
                    )
                })
                .collect(),
            history_limit: 1,
            services: self.services.clone(),
            rng: self.rng,
        }
    }

    /// Number of stored objects of every kind.
    pub fn object_count(&self) -> usize {
        self.collections.values().map(|c| c.objects.len()).sum()
    }

    /// Forgets all history: watches from any version before now get `410 Expired`.
    pub fn compact(&mut self) {
        for c in self.collections.values_mut() {
            c.history.clear();
            c.floor = self.rv;
        }
    }

    fn col(&self, r: &ResourceInfo) -> &Collection {
        self.collections
            .get(r.storage)
            .expect("every storage has a collection")
    }

    fn col_mut(&mut self, r: &ResourceInfo) -> &mut Collection {
        self.collections
            .get_mut(r.storage)
            .expect("every storage has a collection")
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut s = String::new();
        for _ in 0..5 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            s.push(ALPHABET[(self.rng % ALPHABET.len() as u64) as usize] as char);
        }
        s
    }

    fn record(
        &mut self,
        r: &ResourceInfo,
        kind: EventType,
        ns: &str,
        object: Obj,
        old: Option<Obj>,
    ) {
        let rv = self.rv;
        let limit = self.history_limit;
        let json = Bytes::from(serde_json::to_vec(&*object).expect("JSON values serialize"));
        let col = self.col_mut(r);
        col.history.push_back(Arc::new(Change {
            rv,
            kind,
            namespace: ns.to_string(),
            object,
            old,
            json,
        }));
        while col.history.len() > limit {
            if let Some(dropped) = col.history.pop_front() {
                col.floor = dropped.rv;
            }
        }
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.col(resources::namespaces())
            .objects
            .contains_key(&(String::new(), ns.to_string()))
    }

    pub fn get(&self, r: &ResourceInfo, ns: &str, name: &str) -> Result<Obj, ApiError> {
        self.col(r)
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    /// Lists objects of `r`, in all namespaces when `ns` is `None`.
    pub fn list(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let col = self.col(r);
        let mut rv = self.rv;
        let mut start: Bound<(String, String)> = match ns {
            Some(ns) => Bound::Included((ns.to_string(), String::new())),
            None => Bound::Unbounded,
        };
        if let Some(token) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
            let mut parts = token.splitn(3, '.');
            let token_rv: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let k_ns = parts.next().and_then(unhex).ok_or_else(bad)?;
            let k_name = parts.next().and_then(unhex).ok_or_else(bad)?;
            if token_rv < col.floor {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                ));
            }
            rv = token_rv;
            start = Bound::Excluded((k_ns, k_name));
        }
        let mut items: Vec<Obj> = Vec::new();
        let mut continue_token = None;
        let limit = opts.limit.filter(|l| *l > 0);
        let in_ns = |k: &(String, String)| ns.is_none_or(|n| k.0 == n);
        for (key, obj) in col.objects.range((start, Bound::Unbounded)) {
            if !in_ns(key) {
                break;
            }
            if let Some(name) = opts.fields.pinned_name()
                && key.1 != name
            {
                continue;
            }
            if !opts.labels.matches(obj) || !opts.fields.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() == l) {
                let (last_ns, last_name) = meta_ns_name(items.last().expect("limit > 0"));
                continue_token = Some(format!("{rv}.{}.{}", hex(&last_ns), hex(&last_name)));
                break;
            }
            items.push(obj.clone());
        }
        Ok(ListResult {
            resource_version: rv,
            items,
            continue_token,
        })
    }

    /// The current objects of `r` (in `ns`, or everywhere), for the initial events of a watch.
    pub fn snapshot(&self, r: &ResourceInfo, ns: Option<&str>) -> (Vec<Obj>, u64) {
        let col = self.col(r);
        let items = col
            .objects
            .iter()
            .filter(|(k, _)| ns.is_none_or(|n| k.0 == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, self.rv)
    }

    /// Changes of `r` after version `after`, at most `max` of them.
    pub fn poll(&self, r: &ResourceInfo, after: u64, max: usize) -> Poll {
        let col = self.col(r);
        if after < col.floor {
            return Poll::Expired {
                requested: after,
                oldest: col.floor,
            };
        }
        let start = col.history.partition_point(|c| c.rv <= after);
        let changes: Vec<Arc<Change>> = col.history.range(start..).take(max).cloned().collect();
        let next = if start + changes.len() < col.history.len() {
            changes.last().map_or(after, |c| c.rv)
        } else {
            self.rv.max(after)
        };
        Poll::Changes(changes, next)
    }

    fn check_type_meta(r: &ResourceInfo, body: &Value) -> Result<(), ApiError> {
        let kind = body.get("kind").and_then(Value::as_str);
        let api_version = body.get("apiVersion").and_then(Value::as_str);
        if kind.is_some_and(|k| k != r.kind) || api_version.is_some_and(|a| a != r.api_version()) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                format_args!("{}, Kind={}", api_version.unwrap_or(""), kind.unwrap_or("")),
                format_args!("{}, Kind={}", r.api_version(), r.kind),
            )));
        }
        Ok(())
    }

    fn check_namespace(r: &ResourceInfo, ns: &str, body: &mut Value) -> Result<(), ApiError> {
        let body_ns = meta_str(body, "namespace").unwrap_or("").to_string();
        if r.namespaced {
            if body_ns.is_empty() {
                meta_mut(body).insert("namespace".into(), json!(ns));
            } else if body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        } else {
            meta_mut(body).remove("namespace");
        }
        Ok(())
    }

    /// Creates an object from `body` (in the form of view `r`).
    pub fn create(&mut self, r: &ResourceInfo, ns: &str, body: Value) -> Result<Obj, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        Self::check_type_meta(r, &body)?;
        let mut body = body;
        Self::check_namespace(r, ns, &mut body)?;
        if r.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::namespace_not_found(ns));
        }
        let mut name = meta_str(&body, "name").unwrap_or("").to_string();
        if name.is_empty() {
            let Some(prefix) = meta_str(&body, "generateName")
                .filter(|g| !g.is_empty())
                .map(String::from)
            else {
                return Err(ApiError::invalid(
                    r,
                    "",
                    vec![Cause::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            };
            for _ in 0..16 {
                name = format!("{prefix}{}", self.random_suffix());
                if !self
                    .col(r)
                    .objects
                    .contains_key(&(ns_key(r, ns), name.clone()))
                {
                    break;
                }
            }
        }
        if let Err(why) = valid_name(r, &name) {
            return Err(ApiError::invalid(
                r,
                &name,
                vec![Cause::invalid("metadata.name", format!("\"{name}\""), why)],
            ));
        }
        let key = (ns_key(r, ns), name.clone());
        if self.col(r).objects.contains_key(&key) {
            return Err(ApiError::already_exists(r, &name));
        }
        let mut obj = convert::to_storage(r, body);
        let view = resources::storage_view(r.storage);
        obj["kind"] = json!(view.kind);
        obj["apiVersion"] = json!(view.api_version());
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
        if r.has_generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        self.prepare_create(r, &mut obj)?;
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        self.col_mut(r).objects.insert(key, obj.clone());
        self.record(r, EventType::Added, &ns_key(r, ns), obj.clone(), None);
        Ok(obj)
    }

    /// Kind-specific defaulting and validation on create.
    fn prepare_create(&mut self, r: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        validate_sizes(r, &name, obj)?;
        match r.storage {
            "namespaces" => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
            "services" => {
                self.services
                    .admit(obj, None)
                    .map_err(|causes| ApiError::invalid(r, &name, causes))?;
            }
            "pods" => {
                if !obj.get("spec").is_some_and(Value::is_object) {
                    return Err(ApiError::invalid(
                        r,
                        &name,
                        vec![Cause::required("spec.containers", "")],
                    ));
                }
                let spec = obj["spec"].as_object_mut().expect("object");
                for (k, v) in [
                    ("restartPolicy", json!("Always")),
                    ("dnsPolicy", json!("ClusterFirst")),
                    ("schedulerName", json!("default-scheduler")),
                    ("terminationGracePeriodSeconds", json!(30)),
                ] {
                    spec.entry(k).or_insert(v);
                }
                obj["status"] = json!({"phase": "Pending"});
            }
            "secrets" => normalize_secret(obj),
            "endpointslices" => validate_endpoint_slice(r, &name, obj)?,
            _ => {}
        }
        Ok(())
    }

    /// Replaces an object (PUT), or only its status with `Subresource::Status`.
    pub fn update(
        &mut self,
        r: &ResourceInfo,
        ns: &str,
        name: &str,
        body: Value,
        sub: Subresource,
    ) -> Result<Obj, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        Self::check_type_meta(r, &body)?;
        let mut body = body;
        Self::check_namespace(r, ns, &mut body)?;
        let body_name = meta_str(&body, "name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let key = (ns_key(r, ns), name.to_string());
        let Some(current) = self.col(r).objects.get(&key).cloned() else {
            if r.create_on_update && sub == Subresource::Main {
                return self.create(r, ns, body);
            }
            return Err(ApiError::not_found(r, name));
        };
        if let Some(want) = meta_str(&body, "resourceVersion").filter(|v| !v.is_empty())
            && Some(want) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::stale(r, name));
        }
        // As the real server: an update naming a uid is a precondition on it.
        if let Some(want) = meta_str(&body, "uid").filter(|v| !v.is_empty()) {
            let have = meta_str(&current, "uid").unwrap_or("");
            if want != have {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        let body = convert::to_storage(r, body);
        let mut new = match sub {
            Subresource::Status => {
                let mut n = (*current).clone();
                match body.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(o) = n.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                n
            }
            Subresource::Main => {
                let mut n = body;
                if r.has_status {
                    match current.get("status") {
                        Some(s) => n["status"] = s.clone(),
                        None => {
                            if let Some(o) = n.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                n
            }
        };
        let view = resources::storage_view(r.storage);
        new["kind"] = json!(view.kind);
        new["apiVersion"] = json!(view.api_version());
        // System metadata is the server's; labels, annotations, finalizers, owners are the user's.
        let cur_meta = meta(&current).cloned().unwrap_or_default();
        let m = meta_mut(&mut new);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "generateName",
        ] {
            match cur_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        m.remove("managedFields");
        m.remove("selfLink");
        if sub == Subresource::Status {
            for k in ["labels", "annotations", "finalizers", "ownerReferences"] {
                match cur_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
        if cur_meta.contains_key("deletionTimestamp") {
            let old_f = cur_meta
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let new_f = m
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if new_f.iter().any(|f| !old_f.contains(f)) {
                return Err(ApiError::invalid(
                    r,
                    name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        self.prepare_update(r, name, &current, &mut new)?;
        if new == *current {
            return Ok(current);
        }
        if r.has_generation && !same_spec(&new, &current) {
            let g = cur_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        let finalized = meta(&new).is_some_and(|m| {
            m.contains_key("deletionTimestamp")
                && m.get("finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
        });
        if finalized {
            let new = Arc::new(new);
            self.col_mut(r).objects.insert(key, new.clone());
            return self.remove(r, ns, name, current).map(|(o, _)| o);
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let new = Arc::new(new);
        self.col_mut(r).objects.insert(key, new.clone());
        self.record(
            r,
            EventType::Modified,
            &ns_key(r, ns),
            new.clone(),
            Some(current),
        );
        Ok(new)
    }

    /// Kind-specific defaulting and validation on update.
    fn prepare_update(
        &mut self,
        r: &ResourceInfo,
        name: &str,
        current: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        validate_sizes(r, name, new)?;
        match r.storage {
            "namespaces" => {
                if let Some(spec) = current.get("spec") {
                    new["spec"] = spec.clone();
                }
            }
            "services" => {
                let spec_changed = new.get("spec") != current.get("spec");
                if spec_changed {
                    self.services
                        .admit(new, Some(current))
                        .map_err(|causes| ApiError::invalid(r, name, causes))?;
                }
            }
            "secrets" => normalize_secret(new),
            "endpointslices" => validate_endpoint_slice(r, name, new)?,
            _ => {}
        }
        Ok(())
    }

    /// Patches an object (or its status): the patch applies to the object as view `r` shows it,
    /// and the result is written as an update would be.
    pub fn patch(
        &mut self,
        r: &ResourceInfo,
        ns: &str,
        name: &str,
        patch_type: PatchType,
        body: &[u8],
        sub: Subresource,
    ) -> Result<Obj, ApiError> {
        let current = self.get(r, ns, name)?;
        let mut target = convert::to_view(r, &current);
        patch::apply(r.kind, &mut target, patch_type, body)?;
        // A patch is a precondition on resourceVersion only when it sets one itself.
        let requested_rv = meta_str(&target, "resourceVersion").map(String::from);
        if requested_rv.as_deref() != meta_str(&current, "resourceVersion") {
            if requested_rv.is_some() && requested_rv.as_deref() != Some("") {
                return Err(ApiError::stale(r, name));
            }
            if let Some(v) = current.pointer("/metadata/resourceVersion") {
                meta_mut(&mut target).insert("resourceVersion".into(), v.clone());
            }
        }
        if meta_str(&target, "name") != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name may not be changed by a patch",
            ));
        }
        // A patch that sets another uid would change an immutable field: the
        // real server refuses it as invalid (422), which makes a uid in a
        // patch a precondition that binds it to one object.
        let have = meta_str(&current, "uid").unwrap_or("");
        if let Some(want) = meta_str(&target, "uid")
            && want != have
        {
            return Err(ApiError::invalid(
                r,
                name,
                vec![Cause::invalid(
                    "metadata.uid",
                    format!("{want:?}"),
                    "field is immutable",
                )],
            ));
        }
        self.update(r, ns, name, target, sub)
    }

    /// Deletes an object; one with finalizers is only marked for deletion.
    pub fn delete(
        &mut self,
        r: &ResourceInfo,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<DeleteOutcome, ApiError> {
        let current = self.get(r, ns, name)?;
        if let Some(uid) = &pre.uid {
            let have = meta_str(&current, "uid").unwrap_or("");
            if have != uid {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = &pre.resource_version {
            let have = meta_str(&current, "resourceVersion").unwrap_or("");
            if have != rv {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if meta(&current).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Ok(DeleteOutcome::Pending(current));
            }
            let mut new = (*current).clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                m.insert("generation".into(), json!(g + 1));
            }
            self.rv += 1;
            meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
            let new = Arc::new(new);
            self.col_mut(r)
                .objects
                .insert((ns_key(r, ns), name.to_string()), new.clone());
            self.record(
                r,
                EventType::Modified,
                &ns_key(r, ns),
                new.clone(),
                Some(current),
            );
            return Ok(DeleteOutcome::Pending(new));
        }
        if r.storage == "namespaces" {
            self.delete_namespace_contents(name);
        }
        let (obj, _) = self.remove(r, ns, name, current)?;
        Ok(DeleteOutcome::Deleted(obj))
    }

    /// Deletes every object of `r` in `ns` (or everywhere) that the options select.
    pub fn delete_collection(
        &mut self,
        r: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Vec<Obj>, ApiError> {
        let list = self.list(
            r,
            ns,
            &ListOptions {
                limit: None,
                continue_token: None,
                ..opts.clone()
            },
        )?;
        let mut out = Vec::new();
        for obj in list.items {
            let (o_ns, o_name) = meta_ns_name(&obj);
            match self.delete(r, &o_ns, &o_name, &Preconditions::default())? {
                DeleteOutcome::Deleted(o) | DeleteOutcome::Pending(o) => out.push(o),
            }
        }
        Ok(out)
    }

    /// Namespaces are removed at once with everything in them (the real server first shows them
    /// `Terminating` while its namespace controller empties them).
    fn delete_namespace_contents(&mut self, ns: &str) {
        for r in RESOURCES
            .iter()
            .filter(|r| r.namespaced && !r.is_converted())
        {
            let keys: Vec<(String, String)> = self
                .col(r)
                .objects
                .range((ns.to_string(), String::new())..)
                .take_while(|(k, _)| k.0 == ns)
                .map(|(k, _)| k.clone())
                .collect();
            for (k_ns, k_name) in keys {
                if let Ok(cur) = self.get(r, &k_ns, &k_name) {
                    let _ = self.remove(r, &k_ns, &k_name, cur);
                }
            }
        }
    }

    fn remove(
        &mut self,
        r: &ResourceInfo,
        ns: &str,
        name: &str,
        current: Obj,
    ) -> Result<(Obj, u64), ApiError> {
        let key = (ns_key(r, ns), name.to_string());
        let Some(last) = self.col_mut(r).objects.remove(&key) else {
            return Err(ApiError::not_found(r, name));
        };
        if r.storage == "services" {
            self.services.release(&last);
        }
        self.rv += 1;
        let mut gone = (*last).clone();
        meta_mut(&mut gone).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let gone = Arc::new(gone);
        self.record(
            r,
            EventType::Deleted,
            &ns_key(r, ns),
            gone.clone(),
            Some(current),
        );
        Ok((gone, self.rv))
    }
}

fn ns_key(r: &ResourceInfo, ns: &str) -> String {
    if r.namespaced {
        ns.to_string()
    } else {
        String::new()
    }
}

fn meta_ns_name(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "namespace").unwrap_or("").to_string(),
        meta_str(obj, "name").unwrap_or("").to_string(),
    )
}

/// Secrets: `stringData` is written into `data` (base64), `type` defaults to `Opaque`.
fn normalize_secret(obj: &mut Value) {
    if obj.get("type").is_none_or(Value::is_null) {
        obj["type"] = json!("Opaque");
    }
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        for (k, v) in sd {
            obj["data"][k] = json!(base64(v.as_str().unwrap_or("").as_bytes()));
        }
    }
}

/// The real API server's limit on all of an object's annotations together
/// (keys and values, in bytes): `TotalAnnotationSizeLimitB`.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// The real API server's limit on a ConfigMap's data (keys and values of
/// `data` and `binaryData`, in bytes): `MaxSecretSize`, as for Secrets.
pub const MAX_CONFIGMAP_BYTES: usize = 1024 * 1024;

/// The size limits the real server checks on every create and update (a patch
/// is checked as the update it becomes): 422 Invalid, with its messages.
fn validate_sizes(r: &ResourceInfo, name: &str, obj: &Value) -> Result<(), ApiError> {
    let entries = |v: Option<&Value>, decode: bool| -> usize {
        v.and_then(Value::as_object).map_or(0, |m| {
            m.iter()
                .map(|(k, v)| {
                    let len = v.as_str().map_or(0, str::len);
                    // binaryData is base64 on the wire; its decoded size counts.
                    let len = if decode {
                        (len / 4 * 3)
                            .saturating_sub(v.as_str().map_or(0, |s| s.matches('=').count()))
                    } else {
                        len
                    };
                    k.len() + len
                })
                .sum()
        })
    };
    let annotations = entries(meta(obj).and_then(|m| m.get("annotations")), false);
    if annotations > MAX_ANNOTATIONS_BYTES {
        return Err(ApiError::invalid(
            r,
            name,
            vec![Cause::too_long(
                "metadata.annotations",
                MAX_ANNOTATIONS_BYTES,
            )],
        ));
    }
    if r.storage == "configmaps" {
        let data = entries(obj.get("data"), false) + entries(obj.get("binaryData"), true);
        if data > MAX_CONFIGMAP_BYTES {
            return Err(ApiError::invalid(
                r,
                name,
                vec![Cause::too_long("[]", MAX_CONFIGMAP_BYTES)],
            ));
        }
    }
    Ok(())
}

fn validate_endpoint_slice(r: &ResourceInfo, name: &str, obj: &Value) -> Result<(), ApiError> {
    let at = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    if !["IPv4", "IPv6", "FQDN"].contains(&at) {
        return Err(ApiError::invalid(
            r,
            name,
            vec![Cause::unsupported(
                "addressType",
                at,
                &["IPv4", "IPv6", "FQDN"],
            )],
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    fn cm() -> &'static ResourceInfo {
        find("", "v1", "configmaps").unwrap()
    }

    fn rv_of(o: &Value) -> u64 {
        meta_str(o, "resourceVersion").unwrap().parse().unwrap()
    }

    #[test]
    fn create_sets_system_metadata_and_refuses_duplicates() {
        let mut s = Store::new(100);
        let o = s
            .create(
                cm(),
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
            )
            .unwrap();
        assert_eq!(o["kind"], "ConfigMap");
        assert!(meta_str(&o, "uid").unwrap().len() == 36);
        assert!(meta_str(&o, "creationTimestamp").unwrap().ends_with('Z'));
        assert_eq!(rv_of(&o), s.resource_version());
        let e = s
            .create(cm(), "default", json!({"metadata": {"name": "a"}}))
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = s
            .create(cm(), "nope", json!({"metadata": {"name": "a"}}))
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );
    }

    /// A patch or update naming a uid binds it to that object: after a
    /// delete and re-create under the same name, it is refused, as the real
    /// server refuses a changed uid (patch: 422, update: 409).
    #[test]
    fn a_uid_in_a_patch_or_update_binds_it_to_one_object() {
        let mut s = Store::new(100);
        let old = s
            .create(cm(), "default", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let old_uid = meta_str(&old, "uid").unwrap().to_owned();
        let body = json!({"metadata": {"uid": old_uid, "labels": {"x": "1"}}});
        s.patch(
            cm(),
            "default",
            "a",
            PatchType::Merge,
            body.to_string().as_bytes(),
            Subresource::Main,
        )
        .expect("the same object: applied");
        s.delete(cm(), "default", "a", &Preconditions::default())
            .unwrap();
        s.create(cm(), "default", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let e = s
            .patch(
                cm(),
                "default",
                "a",
                PatchType::Merge,
                body.to_string().as_bytes(),
                Subresource::Main,
            )
            .unwrap_err();
        assert_eq!(e.code, 422, "{}", e.message);
        assert!(e.message.contains("metadata.uid"), "{}", e.message);
        let e = s
            .update(
                cm(),
                "default",
                "a",
                json!({"metadata": {"name": "a", "uid": old_uid}}),
                Subresource::Main,
            )
            .unwrap_err();
        assert_eq!(e.code, 409, "{}", e.message);
        let now = s.get(cm(), "default", "a").unwrap();
        assert!(now.pointer("/metadata/labels").is_none(), "{now}");
    }

    #[test]
    fn generate_name_makes_unique_names() {
        let mut s = Store::new(100);
        let a = s
            .create(cm(), "default", json!({"metadata": {"generateName": "x-"}}))
            .unwrap();
        let b = s
            .create(cm(), "default", json!({"metadata": {"generateName": "x-"}}))
            .unwrap();
        let (na, nb) = (meta_str(&a, "name").unwrap(), meta_str(&b, "name").unwrap());
        assert!(na.starts_with("x-") && na.len() == 7);
        assert_ne!(na, nb);
    }

    #[test]
    fn stale_update_conflicts_and_noop_update_keeps_version() {
        let mut s = Store::new(100);
        let o = s
            .create(
                cm(),
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "1"}}),
            )
            .unwrap();
        let mut v = (*o).clone();
        v["data"]["k"] = json!("2");
        let o2 = s
            .update(cm(), "default", "a", v.clone(), Subresource::Main)
            .unwrap();
        assert!(rv_of(&o2) > rv_of(&o));
        let e = s
            .update(cm(), "default", "a", v, Subresource::Main)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let same = s
            .update(cm(), "default", "a", (*o2).clone(), Subresource::Main)
            .unwrap();
        assert_eq!(rv_of(&same), rv_of(&o2));
    }

    #[test]
    fn status_subresource_separates_spec_and_status() {
        let mut s = Store::new(100);
        let svcs = find("", "v1", "services").unwrap();
        let o = s
            .create(svcs, "default", json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
            .unwrap();
        assert_eq!(o.pointer("/metadata/generation"), Some(&json!(1)));
        let mut v = (*o).clone();
        v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        let same = s
            .update(svcs, "default", "a", v.clone(), Subresource::Main)
            .unwrap();
        assert_eq!(same["status"], json!({"loadBalancer": {}}));
        v["spec"]["ports"][0]["port"] = json!(81);
        let st = s
            .update(svcs, "default", "a", v, Subresource::Status)
            .unwrap();
        assert_eq!(
            st["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.1"
        );
        assert_eq!(st["spec"]["ports"][0]["port"], 80);
        assert_eq!(st.pointer("/metadata/generation"), Some(&json!(1)));
    }

    #[test]
    fn watch_history_expires_old_versions() {
        let mut s = Store::new(3);
        let start = s.resource_version();
        for i in 0..5 {
            s.create(
                cm(),
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .unwrap();
        }
        assert!(matches!(s.poll(cm(), start, 100), Poll::Expired { .. }));
        match s.poll(cm(), s.resource_version() - 2, 100) {
            Poll::Changes(c, next) => {
                assert_eq!(c.len(), 2);
                assert_eq!(next, s.resource_version());
            }
            Poll::Expired { .. } => panic!("recent versions are kept"),
        }
    }

    #[test]
    fn finalizers_delay_deletion_until_removed() {
        let mut s = Store::new(100);
        s.create(
            cm(),
            "default",
            json!({"metadata": {"name": "a", "finalizers": ["x/y"]}}),
        )
        .unwrap();
        let DeleteOutcome::Pending(o) = s
            .delete(cm(), "default", "a", &Preconditions::default())
            .unwrap()
        else {
            panic!("finalizers keep the object")
        };
        assert!(meta(&o).unwrap().contains_key("deletionTimestamp"));
        let mut v = (*o).clone();
        v["metadata"]["finalizers"] = json!([]);
        s.update(cm(), "default", "a", v, Subresource::Main)
            .unwrap();
        assert_eq!(s.get(cm(), "default", "a").unwrap_err().code, 404);
    }

    #[test]
    fn list_pages_with_limit_and_continue() {
        let mut s = Store::new(100);
        for i in 0..5 {
            s.create(
                cm(),
                "default",
                json!({"metadata": {"name": format!("c{i}"), "labels": {"n": i.to_string()}}}),
            )
            .unwrap();
        }
        let mut opts = ListOptions {
            limit: Some(2),
            ..Default::default()
        };
        let mut names = Vec::new();
        loop {
            let page = s.list(cm(), Some("default"), &opts).unwrap();
            names.extend(
                page.items
                    .iter()
                    .map(|o| meta_str(o, "name").unwrap().to_string()),
            );
            match page.continue_token {
                Some(t) => opts.continue_token = Some(t),
                None => break,
            }
        }
        assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);
        let sel = ListOptions {
            labels: LabelSelector::parse("n in (1,3)").unwrap(),
            ..Default::default()
        };
        assert_eq!(s.list(cm(), None, &sel).unwrap().items.len(), 2);
    }

    #[test]
    fn secret_string_data_is_encoded() {
        let mut s = Store::new(100);
        let secrets = find("", "v1", "secrets").unwrap();
        let o = s
            .create(
                secrets,
                "default",
                json!({"metadata": {"name": "a"}, "stringData": {"k": "hello"}}),
            )
            .unwrap();
        assert_eq!(o["data"]["k"], "aGVsbG8=");
        assert_eq!(o["type"], "Opaque");
    }
}
