//! MetalLB's `ServiceL2Status` objects (`metallb.io/v1beta1`), written as
//! MetalLB v0.14.4+ writes them, so that `kubectl get servicel2status -A`
//! answers "which node announces what": one object per Service this node
//! announces, in the speaker's namespace, labelled `metallb.io/node`,
//! `metallb.io/service-name` and `metallb.io/service-namespace`, owned by the
//! speaker's Pod, with `status.node`, `serviceName`, `serviceNamespace` and
//! `interfaces[].name` (empty when the advertisement names no interface).
//! Deleted when the node stops announcing the Service.
//!
//! In the background, after the fact: the takeover answers first. What is
//! wanted is read once it has held for [`SETTLE`] and then made true with
//! one list and only the writes that differ (at most [`CONCURRENCY`] at
//! once), so a steady state writes nothing and a flapping owner writes once
//! it settles. As MetalLB does, the new announcer of a Service also deletes
//! the other nodes' objects for it (a dead node cannot delete its own), and
//! an object owned by an earlier Pod of this speaker is replaced. Every
//! [`RESYNC`] the objects are listed again, so one deleted by hand comes back. When the kind is not served (its CRD is not installed) or the
//! speaker may not list it, it says so once and looks again, backing off to
//! every [`RECHECK`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_core::ServiceKey;
use ferrolb_runtime::metallb;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// How long what is wanted must hold before it is written.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Writes in flight at once.
const CONCURRENCY: usize = 8;
/// How often, at most, a kind that is not served (or not permitted) is
/// looked for again.
const RECHECK: Duration = Duration::from_secs(300);
/// After a failed round, the next one.
const RETRY: Duration = Duration::from_secs(5);
/// After a good round, the next check even if nothing changed.
const RESYNC: Duration = Duration::from_secs(300);

pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";

/// What the objects should say, and the speaker Pod that owns them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Service -> interfaces to list. `None`: nothing decided yet (nothing
    /// is written or deleted before the first decision).
    pub services: Option<BTreeMap<ServiceKey, Vec<String>>>,
    /// Per Service, the nodes announcing one of its addresses now: another
    /// node's object for a Service this node announces is deleted only if
    /// that node is not one of them (a dual-stack Service may have two).
    pub announcers: BTreeMap<ServiceKey, std::collections::BTreeSet<String>>,
    /// The speaker Pod's name and uid, for the owner reference.
    pub owner: Option<(String, String)>,
}

/// Hands the wanted objects to the background writer.
pub struct L2StatusWriter {
    tx: watch::Sender<Wanted>,
}

impl L2StatusWriter {
    /// `namespace`: the speaker's, where the objects live.
    pub fn start(
        client: kube::Client,
        namespace: String,
        node: String,
        metrics: Arc<Metrics>,
    ) -> L2StatusWriter {
        let (tx, rx) = watch::channel(Wanted::default());
        tokio::spawn(worker(client, namespace, node, metrics, rx));
        L2StatusWriter { tx }
    }

    pub fn set(&self, wanted: Wanted) {
        self.tx.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }
}

async fn worker(
    client: kube::Client,
    namespace: String,
    node: String,
    metrics: Arc<Metrics>,
    mut rx: watch::Receiver<Wanted>,
) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &namespace, &metallb::resource("ServiceL2Status"));
    let mut served = true;
    let mut again: Option<Duration> = None;
    // Not served or forbidden: looked for again after 5 s, doubling up to
    // RECHECK (RBAC just applied may take a moment to reach the authorizer).
    let mut recheck = RETRY;
    loop {
        match again {
            None => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            Some(after) => {
                // A change or the timer, whichever comes first.
                if let Ok(Err(_)) = tokio::time::timeout(after, rx.changed()).await {
                    return;
                }
            }
        }
        // Let it settle: a flapping owner writes once it stops.
        tokio::time::sleep(SETTLE).await;
        let wanted = rx.borrow_and_update().clone();
        let Some(services) = wanted.services else {
            again = None;
            continue;
        };
        match round(
            &api,
            &node,
            &namespace,
            &services,
            &wanted.announcers,
            wanted.owner.as_ref(),
        )
        .await
        {
            Ok(writes) => {
                if !served {
                    info!("ServiceL2Status objects are served again: written");
                    served = true;
                }
                if writes > 0 {
                    debug!(writes, "ServiceL2Status objects updated");
                }
                again = Some(RESYNC);
                recheck = RETRY;
            }
            Err(Failure::NotServed) => {
                if served {
                    info!(
                        "the ServiceL2Status kind (metallb.io/v1beta1) is not served: its CRD is not installed, so no ServiceL2Status object is written (the component manifests/components/metallb-crds installs it)"
                    );
                    served = false;
                }
                again = Some(recheck);
                recheck = (recheck * 2).min(RECHECK);
            }
            Err(Failure::Forbidden) => {
                if served {
                    info!(
                        "the speaker may not list ServiceL2Status objects, so it writes none (the manifests/components/config-from-crds component grants it)"
                    );
                    served = false;
                }
                again = Some(recheck);
                recheck = (recheck * 2).min(RECHECK);
            }
            Err(Failure::Api(e)) => {
                metrics.api_error("write_servicel2status");
                warn!(error = %e, "writing ServiceL2Status objects failed; tried again in 5 s");
                again = Some(RETRY);
            }
        }
    }
}

/// One object's key: the Service its labels name.
fn service_of(o: &DynamicObject) -> Option<ServiceKey> {
    let labels = o.metadata.labels.as_ref()?;
    Some(ServiceKey::new(
        labels.get(LABEL_SERVICE_NAMESPACE)?,
        labels.get(LABEL_SERVICE_NAME)?,
    ))
}

fn status_body(node: &str, key: &ServiceKey, interfaces: &[String]) -> serde_json::Value {
    let mut status = json!({
        "node": node,
        "serviceName": key.name,
        "serviceNamespace": key.namespace,
    });
    if !interfaces.is_empty() {
        status["interfaces"] = json!(
            interfaces
                .iter()
                .map(|i| json!({"name": i}))
                .collect::<Vec<_>>()
        );
    }
    status
}

/// The merge patch that makes an object's status `status`: a list of
/// interfaces no longer wanted is removed (null), not left as it was.
fn status_patch(status: &serde_json::Value) -> serde_json::Value {
    let mut status = status.clone();
    if status.get("interfaces").is_none() {
        status["interfaces"] = serde_json::Value::Null;
    }
    json!({ "status": status })
}

/// Whether the object is owned by the speaker Pod `owner` (name, uid); an
/// object kept from an earlier Pod is not.
fn owned_by(o: &DynamicObject, owner: Option<&(String, String)>) -> bool {
    let Some((_, uid)) = owner else {
        return true;
    };
    o.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == *uid)
}

enum Failure {
    /// The kind is not served: its CRD is not installed.
    NotServed,
    /// The speaker may not list them (RBAC).
    Forbidden,
    Api(kube::Error),
}

/// Lists this node's objects and writes what differs; returns the writes.
async fn round(
    api: &Api<DynamicObject>,
    node: &str,
    namespace: &str,
    wanted: &BTreeMap<ServiceKey, Vec<String>>,
    announcers: &BTreeMap<ServiceKey, std::collections::BTreeSet<String>>,
    owner: Option<&(String, String)>,
) -> Result<usize, Failure> {
    // Every node's objects: this node's to reconcile, the others' for the
    // Services this node now announces to delete.
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(Failure::NotServed),
        Err(kube::Error::Api(s)) if s.code == 403 => return Err(Failure::Forbidden),
        Err(e) => return Err(Failure::Api(e)),
    };
    let mut kept: BTreeMap<ServiceKey, DynamicObject> = BTreeMap::new();
    let mut delete: Vec<String> = Vec::new();
    for o in list.items {
        let name = o.metadata.name.clone().unwrap_or_default();
        let of_node = o
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_NODE))
            .cloned()
            .unwrap_or_default();
        let service = service_of(&o);
        if of_node != node {
            // Another node's: deleted once this node announces the Service
            // and that node announces none of its addresses.
            if service.is_some_and(|k| {
                wanted.contains_key(&k) && !announcers.get(&k).is_some_and(|a| a.contains(&of_node))
            }) {
                delete.push(name);
            }
            continue;
        }
        match service {
            Some(k) if wanted.contains_key(&k) && !kept.contains_key(&k) && owned_by(&o, owner) => {
                kept.insert(k, o);
            }
            _ => delete.push(name),
        }
    }
    enum Write {
        Create(ServiceKey, serde_json::Value),
        Status(String, serde_json::Value),
        Delete(String),
    }
    let mut writes: Vec<Write> = delete.into_iter().map(Write::Delete).collect();
    for (key, interfaces) in wanted {
        let status = status_body(node, key, interfaces);
        match kept.get(key) {
            Some(o) => {
                if o.data.get("status") != Some(&status) {
                    writes.push(Write::Status(
                        o.metadata.name.clone().unwrap_or_default(),
                        status,
                    ));
                }
            }
            None => writes.push(Write::Create(key.clone(), status)),
        }
    }
    let count = writes.len();
    let owner_refs = owner.map(|(name, uid)| {
        json!([{
            "apiVersion": "v1",
            "kind": "Pod",
            "name": name,
            "uid": uid,
        }])
    });
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(writes)
        .map(|w| {
            let owner_refs = owner_refs.clone();
            async move {
                match w {
                    Write::Delete(name) => {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => Ok(()),
                            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                    Write::Status(name, status) => api
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(status_patch(&status)),
                        )
                        .await
                        .map(|_| ()),
                    Write::Create(key, status) => {
                        let mut metadata = json!({
                            "generateName": "l2-",
                            "namespace": namespace,
                            "labels": {
                                LABEL_NODE: node,
                                LABEL_SERVICE_NAME: key.name,
                                LABEL_SERVICE_NAMESPACE: key.namespace,
                            },
                        });
                        if let Some(refs) = owner_refs {
                            metadata["ownerReferences"] = refs;
                        }
                        let obj: DynamicObject = serde_json::from_value(json!({
                            "apiVersion": format!("{}/{}", metallb::GROUP, metallb::VERSION),
                            "kind": "ServiceL2Status",
                            "metadata": metadata,
                            "spec": {},
                        }))
                        .expect("a well-formed object");
                        let created = api.create(&PostParams::default(), &obj).await?;
                        let name = created.metadata.name.unwrap_or_default();
                        api.patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(status_patch(&status)),
                        )
                        .await
                        .map(|_| ())
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r.map_err(Failure::Api)?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_interface_list_is_removed_by_the_patch() {
        let key = ServiceKey::new("default", "web");
        let all = status_body("node-1", &key, &[]);
        assert!(all.get("interfaces").is_none(), "as MetalLB writes it");
        assert_eq!(
            status_patch(&all)["status"]["interfaces"],
            serde_json::Value::Null
        );
        let named = status_body("node-1", &key, &["eth0".to_owned()]);
        assert_eq!(
            status_patch(&named)["status"]["interfaces"],
            json!([{"name": "eth0"}])
        );
    }
}
