//! Writes the `ferrolb.io/AnnouncedIPv4` / `ferrolb.io/AnnouncedIPv6` Service
//! conditions decided by [`ferrolb_core::announced`], in the background: a
//! takeover never waits for the API server.
//!
//! API writes stay bounded: a condition is written only when what the
//! Service shows differs from what this node knows, and only once that has
//! held for [`SETTLE`], so a steady state writes nothing, a failover writes
//! once per Service and family (from the new owner, a second later), and an
//! owner flapping faster than that writes nothing until it settles.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_core::announced::{Announcement, condition_type};
use ferrolb_core::{Family, ServiceKey};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How long a wanted condition must stay the same before it is written.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Writes in flight at once.
const CONCURRENCY: usize = 4;

type Key = (ServiceKey, Family);

enum Command {
    /// Write this (replacing any write of the key not yet sent).
    Set(Key, serde_json::Value),
    /// No write for the key is wanted any more.
    Cancel(Key),
}

/// Hands condition writes to a background task.
pub struct ConditionWriter {
    tx: mpsc::UnboundedSender<Command>,
    /// What was queued and not yet seen in the watch: not queued again. A
    /// failed write is removed, so the next recompute queues it again.
    queued: Arc<Mutex<HashMap<Key, Announcement>>>,
}

impl ConditionWriter {
    pub fn start(client: kube::Client, metrics: Arc<Metrics>) -> ConditionWriter {
        let (tx, rx) = mpsc::unbounded_channel::<Command>();
        let queued: Arc<Mutex<HashMap<Key, Announcement>>> = Arc::default();
        tokio::spawn(worker(client, metrics, rx, queued.clone()));
        ConditionWriter { tx, queued }
    }

    /// Drops every write not yet sent: the node decides nothing now.
    pub fn cancel_all(&self) {
        self.sync(&HashMap::new(), &[]);
    }

    /// Queues what differs between `wanted` and what `services` show, and
    /// cancels what is no longer wanted.
    pub fn sync(&self, wanted: &HashMap<Key, Announcement>, services: &[Arc<Service>]) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen: HashSet<Key> = HashSet::new();
        for svc in services {
            let (Some(ns), Some(name), Some(uid)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.metadata.uid.as_deref(),
            ) else {
                continue;
            };
            for family in [Family::V4, Family::V6] {
                let key = (ServiceKey::new(ns, name), family);
                let Some(want) = wanted.get(&key) else {
                    continue;
                };
                seen.insert(key.clone());
                let generation = svc.metadata.generation.unwrap_or(0);
                let shown = shown(svc, family);
                if shown
                    .as_ref()
                    .is_some_and(|(a, g, _)| a == want && *g == generation)
                {
                    if queued.remove(&key).is_some() {
                        let _ = self.tx.send(Command::Cancel(key));
                    }
                    continue;
                }
                if queued.get(&key) == Some(want) {
                    continue;
                }
                // The transition time stays while the status does.
                let since = shown
                    .filter(|(a, _, _)| a.status == want.status)
                    .map(|(_, _, t)| t);
                let body = json!({
                    "metadata": {"uid": uid},
                    "status": {"conditions": [{
                        "type": condition_type(family),
                        "status": if want.status { "True" } else { "False" },
                        "reason": want.reason,
                        "message": want.message,
                        "observedGeneration": generation,
                        "lastTransitionTime": since,
                    }]}
                });
                queued.insert(key.clone(), want.clone());
                let _ = self.tx.send(Command::Set(key, body));
            }
        }
        // No longer this node's to say (it lost the address, or the Service
        // went): what it queued is dropped.
        let gone: Vec<Key> = queued
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            queued.remove(&key);
            let _ = self.tx.send(Command::Cancel(key));
        }
    }
}

async fn worker(
    client: kube::Client,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    queued: Arc<Mutex<HashMap<Key, Announcement>>>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut pending: HashMap<Key, (serde_json::Value, Instant)> = HashMap::new();
    loop {
        let due = pending.values().map(|(_, at)| *at).min();
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Command::Set(key, body)) => {
                    pending.insert(key, (body, Instant::now() + SETTLE));
                }
                Some(Command::Cancel(key)) => {
                    pending.remove(&key);
                }
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if due.is_some() => {
                let now = Instant::now();
                let ready: Vec<Key> = pending
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in ready {
                    let Some((mut body, _)) = pending.remove(&key) else { continue };
                    let Ok(permit) = slots.clone().acquire_owned().await else { return };
                    // Stamped when sent: a new status starts now.
                    let condition = &mut body["status"]["conditions"][0]["lastTransitionTime"];
                    if condition.is_null() {
                        *condition = json!(Timestamp::from_second(Timestamp::now().as_second())
                            .expect("now is a valid time")
                            .to_string());
                    }
                    let (client, metrics, queued) = (client.clone(), metrics.clone(), queued.clone());
                    tokio::spawn(async move {
                        write(client, &metrics, &key, &body, &queued).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

async fn write(
    client: kube::Client,
    metrics: &Metrics,
    key: &Key,
    body: &serde_json::Value,
    queued: &Mutex<HashMap<Key, Announcement>>,
) {
    let api: Api<Service> = Api::namespaced(client, &key.0.namespace);
    let forget = || {
        queued.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    };
    for attempt in 0..4u32 {
        match api
            .patch_status(
                &key.0.name,
                &PatchParams::default(),
                &Patch::Strategic(body),
            )
            .await
        {
            Ok(_) => {
                metrics.condition_writes.inc();
                debug!(service = %key.0, "announcement condition written");
                return;
            }
            // Gone, or another object under the name now: nothing to retry.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => {
                forget();
                return;
            }
            Err(e) => {
                metrics.api_error("write_condition");
                if attempt == 3 {
                    warn!(service = %key.0, error = %e, "could not write the announcement condition; tried again at the next change");
                    forget();
                    return;
                }
                debug!(service = %key.0, error = %e, "retrying the announcement condition");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

/// The condition of `family` the Service shows, its observed generation and
/// its transition time.
fn shown(svc: &Service, family: Family) -> Option<(Announcement, i64, String)> {
    let c = ferrolb_runtime::service::status_condition(svc, condition_type(family))?;
    let reason: &'static str = match c.reason.as_str() {
        "Announced" => "Announced",
        "NoInterface" => "NoInterface",
        "OutsidePools" => "OutsidePools",
        "NoServingEndpoint" => "NoServingEndpoint",
        "NoEligibleNode" => "NoEligibleNode",
        _ => "",
    };
    Some((
        Announcement {
            status: c.status == "True",
            reason,
            message: c.message.clone(),
        },
        c.observed_generation.unwrap_or(0),
        c.last_transition_time.0.to_string(),
    ))
}
