//! Writes the `ferrolb.io/AnnouncedIPv4` / `ferrolb.io/AnnouncedIPv6` Service
//! conditions decided by [`ferrolb_core::announced`], in the background: a
//! takeover never waits for the API server. A condition is written only when
//! what the Service shows differs from what this node knows, so a steady
//! state writes nothing and a failover writes once per Service and family,
//! from the new owner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_core::announced::{Announcement, condition_type};
use ferrolb_core::{Family, ServiceKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::metrics::Metrics;

type Key = (ServiceKey, Family);

struct Write {
    key: Key,
    uid: String,
    body: serde_json::Value,
}

/// Hands condition writes to a background task, at most 4 at a time.
pub struct ConditionWriter {
    tx: mpsc::UnboundedSender<Write>,
    /// What was sent and not yet seen in the watch: not sent again. A failed
    /// write is removed, so the next recompute sends it again.
    sent: Arc<Mutex<HashMap<Key, Announcement>>>,
}

impl ConditionWriter {
    pub fn start(client: kube::Client, metrics: Arc<Metrics>) -> ConditionWriter {
        let (tx, rx) = mpsc::unbounded_channel::<Write>();
        let sent: Arc<Mutex<HashMap<Key, Announcement>>> = Arc::default();
        let forget = sent.clone();
        tokio::spawn(async move {
            tokio_stream_from(rx)
                .for_each_concurrent(4, |w| {
                    let (client, metrics, forget) = (client.clone(), metrics.clone(), forget.clone());
                    async move {
                        let api: Api<Service> = Api::namespaced(client, &w.key.0.namespace);
                        let mut attempt = 0;
                        loop {
                            match api
                                .patch_status(&w.key.0.name, &PatchParams::default(), &Patch::Strategic(&w.body))
                                .await
                            {
                                Ok(_) => {
                                    debug!(service = %w.key.0, uid = %w.uid, "announcement condition written");
                                    return;
                                }
                                // Gone, or another object under the name: nothing to retry.
                                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 || s.code == 409 => {
                                    forget.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.key);
                                    return;
                                }
                                Err(e) if attempt < 3 => {
                                    attempt += 1;
                                    metrics.api_error("write_condition");
                                    debug!(service = %w.key.0, error = %e, "retrying the announcement condition");
                                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                                }
                                Err(e) => {
                                    metrics.api_error("write_condition");
                                    warn!(service = %w.key.0, error = %e, "could not write the announcement condition; tried again at the next change");
                                    forget.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.key);
                                    return;
                                }
                            }
                        }
                    }
                })
                .await;
        });
        ConditionWriter { tx, sent }
    }

    /// Sends what differs between `wanted` and what `services` show.
    pub fn sync(&self, wanted: &HashMap<Key, Announcement>, services: &[Arc<Service>]) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
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
                let generation = svc.metadata.generation.unwrap_or(0);
                let shown = shown(svc, family);
                if shown
                    .as_ref()
                    .is_some_and(|(a, g, _)| a == want && *g == generation)
                {
                    sent.remove(&key);
                    continue;
                }
                if sent.get(&key) == Some(want) {
                    continue;
                }
                // The transition time stays while the status does.
                let since = shown
                    .filter(|(a, _, _)| a.status == want.status)
                    .map(|(_, _, t)| t)
                    .unwrap_or_else(|| {
                        Timestamp::from_second(Timestamp::now().as_second())
                            .expect("now is a valid time")
                            .to_string()
                    });
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
                sent.insert(key.clone(), want.clone());
                let _ = self.tx.send(Write {
                    key,
                    uid: uid.to_owned(),
                    body,
                });
            }
        }
    }
}

/// The condition of `family` the Service shows, its observed generation and
/// its transition time.
fn shown(svc: &Service, family: Family) -> Option<(Announcement, i64, String)> {
    let kind = condition_type(family);
    let c = svc
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)?;
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

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
