//! The controller process: watches in, engine decisions, status writes and
//! Events out. One task owns the engine, so allocation is strictly sequential;
//! status writes run concurrently, at most one in flight per Service.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrolb_core::ServiceKey;
use ferrolb_core::service::ALLOCATED_FROM_POOL;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use ferrolb_runtime::events::{self, EventSink};

use crate::engine::{Desired, Engine, Notice, Severity};
use crate::metrics::{Metrics, ReasonLabel};
use crate::service::FINALIZER;

#[derive(Clone, Debug)]
pub struct Settings {
    pub config_namespace: String,
    pub config_name: String,
    pub classes: crate::service::Classes,
    pub identity: String,
    pub write_concurrency: usize,
}

/// Result of one status write.
struct Written {
    key: ServiceKey,
    /// The object the write was computed for (`metadata.uid`).
    uid: String,
    desired: Desired,
    result: Result<(), kube::Error>,
}

/// Runs until `stop` resolves; returns an error only if it cannot go on.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let services: Api<Service> = Api::all(client.clone());
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &settings.config_namespace);
    let mut service_events = watcher(services, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut config_events = watcher(
        configmaps,
        watcher::Config::default().fields(&format!("metadata.name={}", settings.config_name)),
    )
    .default_backoff()
    .boxed();
    let events = EventSink::start(
        client.clone(),
        events::Options {
            reporter: "ferrolb.io/controller",
            instance: settings.identity.clone(),
            queue: 2048,
            workers: 4,
        },
        {
            let metrics = metrics.clone();
            Arc::new(move |what| metrics.api_error(what))
        },
    );
    let mut engine = Engine::new(settings.classes.clone());
    let mut writer = Writer::new(client.clone(), settings.write_concurrency);
    let mut listing: Option<Vec<Service>> = None;
    let mut config_listing: Option<Option<ConfigMap>> = None;
    let mut configmap: Option<ConfigMap> = None;
    tokio::pin!(stop);
    info!(
        config = %format!("{}/{}", settings.config_namespace, settings.config_name),
        classes = ?settings.classes.names,
        without_class = settings.classes.without_class,
        "watching Services and the config"
    );

    loop {
        let retry_at = writer.next_retry();
        let mut touched: BTreeSet<ServiceKey> = BTreeSet::new();
        tokio::select! {
            _ = &mut stop => break,
            ev = service_events.next() => {
                let started = Instant::now();
                match ev {
                    Some(Ok(Event::Init)) => listing = Some(Vec::new()),
                    Some(Ok(Event::InitApply(svc))) => listing.get_or_insert_with(Vec::new).push(trim(svc)),
                    Some(Ok(Event::InitDone)) => {
                        let list = listing.take().unwrap_or_default();
                        touched.extend(list.iter().map(crate::service::key_of));
                        engine.services_listed(list);
                    }
                    Some(Ok(Event::Apply(svc))) => {
                        touched.insert(crate::service::key_of(&svc));
                        engine.service_applied(trim(svc));
                    }
                    Some(Ok(Event::Delete(svc))) => {
                        let key = crate::service::key_of(&svc);
                        writer.forget(&key);
                        engine.service_deleted(&key);
                    }
                    Some(Err(e)) => {
                        metrics.api_error("watch_services");
                        warn!(error = %e, "the Service watch failed; it restarts with backoff");
                    }
                    None => anyhow::bail!("the Service watch ended"),
                }
                metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
            }
            ev = config_events.next() => {
                match ev {
                    Some(Ok(Event::Init)) => config_listing = Some(None),
                    Some(Ok(Event::InitApply(cm))) => config_listing = Some(Some(cm)),
                    Some(Ok(Event::InitDone)) => {
                        configmap = config_listing.take().flatten();
                        engine.config_changed(configmap.as_ref());
                    }
                    Some(Ok(Event::Apply(cm))) => {
                        configmap = Some(cm);
                        engine.config_changed(configmap.as_ref());
                    }
                    Some(Ok(Event::Delete(_))) => {
                        configmap = None;
                        engine.config_changed(None);
                    }
                    Some(Err(e)) => {
                        metrics.api_error("watch_config");
                        warn!(error = %e, "the ConfigMap watch failed; it restarts with backoff");
                    }
                    None => anyhow::bail!("the ConfigMap watch ended"),
                }
            }
            Some(done) = writer.done.recv() => writer.completed(done, &engine, &metrics),
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(far_future).into()), if retry_at.is_some() => {}
        }

        for notice in engine.take_notices() {
            publish(
                &events,
                &engine,
                configmap.as_ref(),
                &settings,
                &metrics,
                notice,
            );
        }
        // Keys whose object changed are re-checked: a status someone else
        // changed must be written again even if we wrote the same before.
        for key in &touched {
            writer.written.remove(key);
            engine.observed_clean(key);
        }
        let mut check: BTreeSet<ServiceKey> = engine.take_dirty();
        check.extend(touched);
        check.extend(writer.due_retries());
        for key in check {
            writer.consider(&key, &engine);
        }
        for key in writer.take_waiting() {
            writer.consider(&key, &engine);
        }
        for key in writer.take_recheck() {
            writer.consider(&key, &engine);
        }

        let status = engine.config_status();
        metrics.set_config(status.loaded, status.stale);
        metrics.set_pools(&engine.allocator().pool_stats());
        metrics.pending_services.set(engine.pending().len() as i64);
        metrics.ready.store(engine.is_synced(), Ordering::Relaxed);
    }
    writer.drain(Duration::from_secs(3)).await;
    Ok(())
}

/// Drops what the controller never reads and a real API server sends with
/// every object (managedFields is often larger than the rest).
fn trim(mut svc: Service) -> Service {
    svc.metadata.managed_fields = None;
    svc
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn watcher<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, cfg).map_err(|e| {
        debug!(error = %e, "watch error");
        e
    })
}

/// Logs a notice and publishes it as an Event (in the background).
fn publish(
    events: &EventSink,
    engine: &Engine,
    configmap: Option<&ConfigMap>,
    settings: &Settings,
    metrics: &Metrics,
    notice: Notice,
) {
    let (regarding, severity, reason, message, action): (Option<ObjectReference>, _, _, _, _) =
        match notice {
            Notice::Service {
                key,
                severity,
                reason,
                message,
                cause,
            } => {
                match severity {
                    Severity::Normal => info!(service = %key, reason, "{message}"),
                    Severity::Warning => warn!(service = %key, reason, "{message}"),
                }
                if reason == "IPAllocated" {
                    metrics.allocations.inc();
                }
                if let Some(cause) = cause {
                    metrics
                        .allocation_failures
                        .get_or_create(&ReasonLabel {
                            reason: cause.to_owned(),
                        })
                        .inc();
                }
                (
                    engine.service(&key).map(|s| s.object_ref(&())),
                    severity,
                    reason,
                    message,
                    "Allocate",
                )
            }
            Notice::Config {
                severity,
                reason,
                message,
                on_object,
            } => {
                let name = format!("{}/{}", settings.config_namespace, settings.config_name);
                match severity {
                    Severity::Normal => info!(config = %name, reason, "{message}"),
                    Severity::Warning => warn!(config = %name, reason, "{message}"),
                }
                let reference = if on_object {
                    configmap.map(|c| c.object_ref(&()))
                } else {
                    None
                };
                (reference, severity, reason, message, "LoadConfig")
            }
        };
    if let Some(regarding) = regarding {
        events.publish(events::Pending {
            regarding,
            warning: severity == Severity::Warning,
            reason,
            note: truncate(message, 1000),
            action,
        });
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Writes desired statuses, one write in flight per Service, retrying
/// failures with exponential backoff.
///
/// Every write is bound to the Service object it was computed for: both
/// patches carry its `metadata.uid`, which the API server refuses to change,
/// so a write for a Service that was deleted never lands on a new Service
/// created under the same name. A write whose object is gone is dropped and
/// the Service is considered again with what the engine now wants for it.
struct Writer {
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
    done: mpsc::UnboundedReceiver<Written>,
}

impl Writer {
    fn new(client: kube::Client, concurrency: usize) -> Writer {
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

    fn next_retry(&self) -> Option<Instant> {
        self.retries.values().map(|(at, _)| *at).min()
    }

    fn due_retries(&self) -> Vec<ServiceKey> {
        let now = Instant::now();
        self.retries
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn forget(&mut self, key: &ServiceKey) {
        self.written.remove(key);
        self.retries.remove(key);
    }

    fn consider(&mut self, key: &ServiceKey, engine: &Engine) {
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
    fn take_waiting(&mut self) -> Vec<ServiceKey> {
        let free = self.limit.saturating_sub(self.inflight.len());
        let keys: Vec<ServiceKey> = self.waiting.iter().take(free).cloned().collect();
        for k in &keys {
            self.waiting.remove(k);
        }
        keys
    }

    fn take_recheck(&mut self) -> Vec<ServiceKey> {
        std::mem::take(&mut self.recheck).into_iter().collect()
    }

    fn completed(&mut self, done: Written, engine: &Engine, metrics: &Metrics) {
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
    async fn drain(&mut self, max: Duration) {
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
    if observed.ips != desired.ips {
        let ingress = if desired.ips.is_empty() {
            serde_json::Value::Null
        } else {
            desired
                .ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect()
        };
        let patch = json!({
            "metadata": {"uid": uid},
            "status": {"loadBalancer": {"ingress": ingress}}
        });
        api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
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

/// The namespace of this pod, if running in one.
pub fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

pub async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")
}
