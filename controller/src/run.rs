//! The controller process: watches in, engine decisions, status writes and
//! Events out. One task owns the engine, so allocation is strictly sequential;
//! status writes run concurrently, at most one in flight per Service.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrolb_core::ServiceKey;
use ferrolb_core::sources::Source;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Service};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info, warn};

use ferrolb_runtime::events::{self, EventSink};
use ferrolb_runtime::metallb;

use crate::engine::{Engine, Notice, Severity};
use crate::metrics::{Metrics, ReasonLabel};
use crate::status::Writer;

#[derive(Clone, Debug)]
pub struct Settings {
    pub config_namespace: String,
    /// Namespace of MetalLB's objects, when they are read.
    pub crds_namespace: String,
    pub config_name: String,
    pub classes: crate::service::Classes,
    pub identity: String,
    pub write_concurrency: usize,
    /// The ConfigMap, MetalLB's objects, or both.
    pub source: Source,
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
    let mut config_events = if settings.source.reads_configmap() {
        watcher(
            configmaps,
            watcher::Config::default().fields(&format!("metadata.name={}", settings.config_name)),
        )
        .default_backoff()
        .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    // MetalLB's objects, and the Namespaces their pools may select by label.
    let (mut objects, mut object_events) = if settings.source.reads_crds() {
        let (o, s) = metallb::watch(client.clone(), &settings.crds_namespace);
        (Some(o), s)
    } else {
        (None, futures::stream::pending().boxed())
    };
    let mut namespace_events = if settings.source.reads_crds() {
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let mut namespace_listing: Option<Vec<Namespace>> = None;
    let pool_status = settings.source.reads_crds().then(|| {
        crate::pool_status::PoolStatusWriter::start(
            client.clone(),
            &settings.crds_namespace,
            metrics.clone(),
        )
    });

    let events = EventSink::start_counted(
        client.clone(),
        events::Options {
            reporter: "ferrolb.io/controller",
            instance: settings.identity.clone(),
            queue: 2048,
            workers: 4,
        },
        metrics.clone(),
    );
    let mut engine = Engine::new(settings.classes.clone(), settings.source);
    // MetalLB's BGP objects, said once each, in the background: a slow API
    // server never holds up allocation.
    let bgp_task = settings.source.reads_crds().then(|| {
        let (client, namespace, events) = (
            client.clone(),
            settings.crds_namespace.clone(),
            events.clone(),
        );
        tokio::spawn(async move {
            let mut seen: BTreeSet<String> = BTreeSet::new();
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                check_bgp(&client, &namespace, &events, &mut seen).await;
            }
        })
    });
    let mut writer = Writer::new(client.clone(), settings.write_concurrency);
    let mut listing: Option<Vec<Service>> = None;
    let mut config_listing: Option<Option<ConfigMap>> = None;
    let mut configmap: Option<ConfigMap> = None;
    tokio::pin!(stop);
    info!(
        config = %format!("{}/{}", settings.config_namespace, settings.config_name),
        source = %settings.source,
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
            Some(u) = object_events.next() => {
                let o = objects.as_mut().expect("only watched with the objects");
                match o.note(u) {
                    Ok(Some(news)) => warn!("{news}"),
                    Ok(None) => {}
                    Err(e) => {
                        metrics.api_error("watch_metallb");
                        warn!(error = %e, "a MetalLB object watch failed; it restarts with backoff");
                    }
                }
                if let Some(text) = o.input() {
                    engine.objects_changed(text);
                }
            }
            Some(ev) = namespace_events.next() => match ev {
                Ok(Event::Init) => namespace_listing = Some(Vec::new()),
                Ok(Event::InitApply(ns)) => namespace_listing.get_or_insert_with(Vec::new).push(ns),
                Ok(Event::InitDone) => engine.namespaces_listed(
                    namespace_listing
                        .take()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|ns| {
                            (
                                ns.metadata.name.unwrap_or_default(),
                                ns.metadata.labels.unwrap_or_default(),
                            )
                        })
                        .collect(),
                ),
                Ok(Event::Apply(ns)) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    engine.namespace_changed(&name, Some(ns.metadata.labels.unwrap_or_default()));
                }
                Ok(Event::Delete(ns)) => {
                    engine.namespace_changed(ns.metadata.name.as_deref().unwrap_or_default(), None);
                }
                Err(e) => {
                    metrics.api_error("watch_namespaces");
                    warn!(error = %e, "the Namespace watch failed; it restarts with backoff");
                }
            },
            Some(done) = writer.done.recv() => writer.completed(done, &engine, &metrics),
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(far_future).into()), if retry_at.is_some() => {}
        }

        for notice in engine.take_notices() {
            publish(
                &events,
                &engine,
                configmap.as_ref(),
                objects.as_ref(),
                &settings,
                &metrics,
                notice,
            );
        }
        // Keys whose object changed are re-checked: a status someone else
        // changed must be written again even if we wrote the same before.
        for key in &touched {
            writer.changed_elsewhere(key);
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
        let stats = engine.allocator().pool_stats();
        if let (Some(w), Some(o)) = (&pool_status, &objects) {
            let shown: std::collections::BTreeMap<String, Option<serde_json::Value>> = o
                .pools()
                .iter()
                .filter_map(|p| Some((p.metadata.name.clone()?, p.data.get("status").cloned())))
                .collect();
            w.set(
                stats
                    .iter()
                    .filter_map(|p| {
                        let now = shown.get(&p.name)?.clone();
                        Some((p.name.clone(), (crate::pool_status::status_of(p), now)))
                    })
                    .collect(),
            );
        }
        metrics.set_pools(&stats);
        metrics.pending_services.set(engine.pending().len() as i64);
        metrics.ready.store(engine.is_synced(), Ordering::Relaxed);
    }
    if let Some(t) = bgp_task {
        t.abort();
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
    objects: Option<&metallb::Objects>,
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
            Notice::Object {
                target,
                severity,
                reason,
                message,
            } => {
                let object = format!(
                    "{} {}/{}",
                    target.kind,
                    target
                        .namespace
                        .as_deref()
                        .unwrap_or(&settings.crds_namespace),
                    target.name
                );
                match severity {
                    Severity::Normal => info!(%object, reason, "{message}"),
                    Severity::Warning => warn!(%object, reason, "{message}"),
                }
                let reference = objects
                    .and_then(|o| o.get(&target.kind, &target.name))
                    .map(|o| object_reference(&target.kind, &o));
                (reference, severity, reason, message, "LoadConfig")
            }
        };
    if let Some(regarding) = regarding {
        events.publish(events::Pending {
            regarding,
            warning: severity == Severity::Warning,
            reason,
            note: crate::engine::truncate(message, 1000),
            action,
        });
    }
}

/// A reference to a MetalLB object, for an Event on it.
fn object_reference(kind: &str, o: &kube::api::DynamicObject) -> ObjectReference {
    ObjectReference {
        api_version: Some(
            o.types
                .as_ref()
                .map(|t| t.api_version.clone())
                .unwrap_or_else(|| format!("{}/{}", metallb::GROUP, metallb::VERSION)),
        ),
        kind: Some(kind.to_owned()),
        name: o.metadata.name.clone(),
        namespace: o.metadata.namespace.clone(),
        uid: o.metadata.uid.clone(),
        resource_version: o.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// Says once, in the log and an Event on each, that MetalLB's BGP objects
/// in the namespace are ignored (`seen`: those already reported).
async fn check_bgp(
    client: &kube::Client,
    namespace: &str,
    events: &EventSink,
    seen: &mut BTreeSet<String>,
) {
    let found = match metallb::bgp_objects(client, namespace).await {
        Ok(f) => f,
        Err(e) => {
            debug!(error = %e, "listing MetalLB's BGP objects failed");
            return;
        }
    };
    for (kind, o) in found {
        let name = o.metadata.name.clone().unwrap_or_default();
        if !seen.insert(format!("{kind}/{name}")) {
            continue;
        }
        let message = format!(
            "{kind} {namespace}/{name}: BGP is not supported (ferrolb announces in layer 2 only); the object is ignored and the layer-2 config is read without it"
        );
        warn!(object = %format!("{kind} {namespace}/{name}"), reason = "BGPNotSupported", "{message}");
        events.publish(events::Pending {
            regarding: object_reference(&kind, &o),
            warning: true,
            reason: "BGPNotSupported",
            note: message,
            action: "LoadConfig",
        });
    }
}
