//! The Service status as ferrolb writes it, and the writer that puts it there.
//!
//! What ferrolb owns in a Service (docs/architecture.md, "Service status"):
//! - `status.loadBalancer.ingress[]`: per address `ip`, `ipMode: VIP` and
//!   `ports[]` (each Service port; `error: ferrolb.io/PortConflict` on a
//!   port another Service sharing the address also uses);
//! - the condition `ferrolb.io/AddressAssigned` (True with reason
//!   `IPAllocated` or `LoadBalancerFailed`, False with `AllocationFailed`,
//!   the same reason and message as the Warning Event), with
//!   `observedGeneration`; other conditions (the speakers'
//!   `ferrolb.io/Announced`) are left alone: conditions are merged by type;
//! - the pool annotation and the cleanup finalizer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrolb_core::ServiceKey;
use ferrolb_core::service::ALLOCATED_FROM_POOL;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::engine::{Desired, Engine};
use crate::metrics::Metrics;
use crate::service::FINALIZER;

/// The controller's condition: whether the Service's addresses are assigned.
pub const ASSIGNED: &str = "ferrolb.io/AddressAssigned";
/// `ports[].error` of a port that another Service sharing the address uses too.
pub const PORT_CONFLICT: &str = "ferrolb.io/PortConflict";

/// A `metav1.Condition` as ferrolb compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub generation: i64,
    /// `lastTransitionTime` as shown; `None` in a desired condition whose
    /// status differs from the one shown (the writer puts the time of the write).
    pub since: Option<String>,
}

/// One `ingress[].ports[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    pub port: i32,
    pub protocol: String,
    pub error: Option<String>,
}

/// `status.loadBalancer.ingress[]` entries with an address, and their ports.
pub fn status_ingress(svc: &Service) -> Vec<(IpAddr, Vec<PortStatus>)> {
    ferrolb_runtime::service::status_ingress(svc)
        .map(|(ip, i)| {
            let ports = i
                .ports
                .iter()
                .flatten()
                .map(|p| PortStatus {
                    port: p.port,
                    protocol: p.protocol.clone(),
                    error: p.error.clone(),
                })
                .collect();
            (ip, ports)
        })
        .collect()
}

/// The condition of type `kind` the Service shows.
pub fn status_condition(svc: &Service, kind: &str) -> Option<Condition> {
    let c = ferrolb_runtime::service::status_condition(svc, kind)?;
    Some(Condition {
        status: c.status == "True",
        reason: c.reason.clone(),
        message: c.message.clone(),
        generation: c.observed_generation.unwrap_or(0),
        since: Some(c.last_transition_time.0.to_string()),
    })
}

fn condition_json(c: &Condition) -> serde_json::Value {
    let since = c.since.clone().unwrap_or_else(|| {
        Timestamp::from_second(Timestamp::now().as_second())
            .expect("now is a valid time")
            .to_string()
    });
    json!({
        "type": ASSIGNED,
        "status": if c.status { "True" } else { "False" },
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": c.generation,
        "lastTransitionTime": since,
    })
}

/// Result of one status write.
pub struct Written {
    key: ServiceKey,
    /// The object the write was computed for (`metadata.uid`).
    uid: String,
    desired: Desired,
    result: Result<(), kube::Error>,
}

/// Writes desired statuses, one write in flight per Service, retrying
/// failures with exponential backoff.
///
/// Every write is bound to the Service object it was computed for: both
/// patches carry its `metadata.uid`, which the API server refuses to change,
/// so a write for a Service that was deleted never lands on a new Service
/// created under the same name. A write whose object is gone is dropped and
/// the Service is considered again with what the engine now wants for it.
pub struct Writer {
    client: kube::Client,
    limit: usize,
    /// The uid each write in flight was computed for.
    inflight: HashMap<ServiceKey, String>,
    /// Services whose write finished for an object that is gone, or that
    /// waited on such a write: considered again at once.
    recheck: BTreeSet<ServiceKey>,
    /// Services that wanted a write while one for an older object was in flight.
    recheck_after: BTreeSet<ServiceKey>,
    /// Services to check again once a write slot frees up. Writes are not
    /// spawned to wait for a slot: 10,000 parked tasks cost memory.
    waiting: BTreeSet<ServiceKey>,
    /// What was last written successfully and not yet seen in a watch event.
    written: HashMap<ServiceKey, Desired>,
    retries: BTreeMap<ServiceKey, (Instant, u32)>,
    done_tx: mpsc::UnboundedSender<Written>,
    pub done: mpsc::UnboundedReceiver<Written>,
}

impl Writer {
    pub fn new(client: kube::Client, concurrency: usize) -> Writer {
        let (done_tx, done) = mpsc::unbounded_channel();
        Writer {
            client,
            limit: concurrency.max(1),
            inflight: HashMap::new(),
            recheck: BTreeSet::new(),
            recheck_after: BTreeSet::new(),
            waiting: BTreeSet::new(),
            written: HashMap::new(),
            retries: BTreeMap::new(),
            done_tx,
            done,
        }
    }

    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.values().map(|(at, _)| *at).min()
    }

    pub fn due_retries(&self) -> Vec<ServiceKey> {
        let now = Instant::now();
        self.retries
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The Service changed: a status someone else changed must be written
    /// again even if this writer wrote the same before.
    pub fn changed_elsewhere(&mut self, key: &ServiceKey) {
        self.written.remove(key);
    }

    pub fn forget(&mut self, key: &ServiceKey) {
        self.written.remove(key);
        self.retries.remove(key);
    }

    pub fn consider(&mut self, key: &ServiceKey, engine: &Engine) {
        let Some(desired) = engine.desired(key) else {
            self.retries.remove(key);
            return;
        };
        let Some(observed) = engine.observed(key) else {
            return;
        };
        let Some(uid) = engine.uid(key) else {
            // Only a Service the API server has stored can be written.
            return;
        };
        if observed == desired {
            self.written.remove(key);
            self.retries.remove(key);
            return;
        }
        if self.inflight.contains_key(key) {
            // Decide again once it is done, whether it was for an older
            // object of this name or for this one: what is wanted may have
            // changed since it started, and the watch event that said so
            // may already have been handled (under load it can arrive
            // before the write's own answer).
            self.recheck_after.insert(key.clone());
            return;
        }
        if self.written.get(key) == Some(&desired) {
            return;
        }
        if self
            .retries
            .get(key)
            .is_some_and(|(at, _)| *at > Instant::now())
        {
            return;
        }
        if self.inflight.len() >= self.limit {
            self.waiting.insert(key.clone());
            return;
        }
        self.inflight.insert(key.clone(), uid.clone());
        let (client, tx, key) = (self.client.clone(), self.done_tx.clone(), key.clone());
        tokio::spawn(async move {
            let result = write_status(client, &key, &uid, &observed, &desired).await;
            let _ = tx.send(Written {
                key,
                uid,
                desired,
                result,
            });
        });
    }

    /// Services waiting for a write slot, as many as there are free slots.
    pub fn take_waiting(&mut self) -> Vec<ServiceKey> {
        let free = self.limit.saturating_sub(self.inflight.len());
        let keys: Vec<ServiceKey> = self.waiting.iter().take(free).cloned().collect();
        for k in &keys {
            self.waiting.remove(k);
        }
        keys
    }

    pub fn take_recheck(&mut self) -> Vec<ServiceKey> {
        std::mem::take(&mut self.recheck).into_iter().collect()
    }

    pub fn completed(&mut self, done: Written, engine: &Engine, metrics: &Metrics) {
        self.inflight.remove(&done.key);
        if self.recheck_after.remove(&done.key) {
            self.recheck.insert(done.key.clone());
        }
        if engine.uid(&done.key).as_deref() != Some(done.uid.as_str()) {
            // The object this write was for is gone (deleted, perhaps created
            // again): whatever the answer, it says nothing about the Service
            // now under this name, and the API server refused to let it land
            // there. Drop it and decide afresh.
            debug!(service = %done.key, uid = %done.uid, ok = done.result.is_ok(), "dropped a status write for a Service object that no longer exists");
            metrics.stale_writes.inc();
            self.retries.remove(&done.key);
            self.recheck.insert(done.key);
            return;
        }
        match done.result {
            Ok(()) => {
                debug!(service = %done.key, ips = ?done.desired.ips, "status written");
                self.retries.remove(&done.key);
                self.written.insert(done.key, done.desired);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.retries.remove(&done.key);
            }
            Err(e) => {
                metrics.api_error("write_status");
                let attempts = self.retries.get(&done.key).map_or(0, |(_, n)| *n) + 1;
                let backoff = Duration::from_millis(50 * 2u64.pow(attempts.min(8)))
                    .min(Duration::from_secs(10));
                warn!(service = %done.key, error = %e, retry_in = ?backoff, "could not write the Service status");
                self.retries
                    .insert(done.key, (Instant::now() + backoff, attempts));
            }
        }
    }

    /// Waits a little for writes in flight at shutdown.
    pub async fn drain(&mut self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, self.done.recv()).await {
                Ok(Some(done)) => {
                    self.inflight.remove(&done.key);
                }
                _ => break,
            }
        }
    }
}

/// Every patch names the object's uid: the API server refuses a patch that
/// would change it (422), so none lands on another object of the same name.
///
/// The finalizer, then the pool annotation, are written before an address
/// appears in the status, and removed after it left, so a status that shows
/// an address always comes with its pool, and a Service that shows one is not
/// deleted before ferrolb has released it.
async fn write_status(
    client: kube::Client,
    key: &ServiceKey,
    uid: &str,
    observed: &Desired,
    desired: &Desired,
) -> Result<(), kube::Error> {
    let api: Api<Service> = Api::namespaced(client, &key.namespace);
    if desired.finalizer && !observed.finalizer {
        patch_finalizer(&api, &key.name, uid, true).await?;
    }
    let pool_first = desired.pool.is_some();
    if pool_first && observed.pool != desired.pool {
        patch_pool(&api, key, uid, desired).await?;
    }
    let ingress_changed = observed.ips != desired.ips || observed.ports != desired.ports;
    if ingress_changed || observed.assigned != desired.assigned {
        let mut status = serde_json::Map::new();
        if ingress_changed {
            let ingress = if desired.ips.is_empty() {
                serde_json::Value::Null
            } else {
                desired
                    .ips
                    .iter()
                    .enumerate()
                    .map(|(i, ip)| {
                        let ports: Vec<_> = desired
                            .ports
                            .get(i)
                            .into_iter()
                            .flatten()
                            .map(|p| match &p.error {
                                Some(e) => {
                                    json!({"port": p.port, "protocol": p.protocol, "error": e})
                                }
                                None => json!({"port": p.port, "protocol": p.protocol}),
                            })
                            .collect();
                        if ports.is_empty() {
                            json!({"ip": ip.to_string(), "ipMode": "VIP"})
                        } else {
                            json!({"ip": ip.to_string(), "ipMode": "VIP", "ports": ports})
                        }
                    })
                    .collect()
            };
            status.insert("loadBalancer".into(), json!({ "ingress": ingress }));
        }
        if observed.assigned != desired.assigned {
            let c = match &desired.assigned {
                Some(c) => condition_json(c),
                None => json!({"type": ASSIGNED, "$patch": "delete"}),
            };
            status.insert("conditions".into(), json!([c]));
        }
        // A strategic merge patch: conditions are merged by type, so the
        // speakers' conditions stay; `ingress` is replaced whole.
        let patch = json!({"metadata": {"uid": uid}, "status": status});
        api.patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    }
    if !pool_first && observed.pool != desired.pool {
        patch_pool(&api, key, uid, desired).await?;
    }
    if !desired.finalizer && observed.finalizer {
        patch_finalizer(&api, &key.name, uid, false).await?;
    }
    Ok(())
}

/// Adds or removes ferrolb's finalizer with a strategic merge patch, which
/// treats `metadata.finalizers` as a set: other controllers' finalizers stay,
/// whatever they were changed to meanwhile.
async fn patch_finalizer(
    api: &Api<Service>,
    name: &str,
    uid: &str,
    add: bool,
) -> Result<(), kube::Error> {
    let patch = if add {
        json!({"metadata": {"uid": uid, "finalizers": [FINALIZER]}})
    } else {
        json!({"metadata": {"uid": uid, "$deleteFromPrimitiveList/finalizers": [FINALIZER]}})
    };
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(drop)
}

/// Removes ferrolb's finalizer from every Service, or those of `namespace` (for uninstalling: no
/// Service is left that cannot be deleted). Returns the Services changed.
pub async fn remove_finalizers(
    client: kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let all: Api<Service> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = all
        .list(&Default::default())
        .await
        .context("listing Services")?;
    let mut done = Vec::new();
    for svc in list
        .items
        .iter()
        .filter(|s| crate::service::has_finalizer(s))
    {
        let key = crate::service::key_of(svc);
        let api: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
        let uid = svc.metadata.uid.clone().unwrap_or_default();
        match patch_finalizer(&api, &key.name, &uid, false).await {
            Ok(()) => done.push(key.to_string()),
            // Deleted meanwhile.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("removing the finalizer of {key}")),
        }
    }
    Ok(done)
}

async fn patch_pool(
    api: &Api<Service>,
    key: &ServiceKey,
    uid: &str,
    desired: &Desired,
) -> Result<(), kube::Error> {
    let patch = json!({
        "metadata": {"uid": uid, "annotations": {ALLOCATED_FROM_POOL: desired.pool}}
    });
    api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}
