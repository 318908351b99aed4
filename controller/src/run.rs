//! The controller process: watches in, engine decisions, status writes and
//! Events out. One task owns the engine, so allocation is strictly sequential;
//! status writes run concurrently, at most one in flight per Service.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrolb_core::ServiceKey;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info, warn};

use ferrolb_runtime::events::{self, EventSink};

use crate::engine::{Engine, Notice, Severity};
use crate::metrics::{Metrics, ReasonLabel};
use crate::status::Writer;

#[derive(Clone, Debug)]
pub struct Settings {
    pub config_namespace: String,
    pub config_name: String,
    pub classes: crate::service::Classes,
    pub identity: String,
    pub write_concurrency: usize,
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
            note: crate::engine::truncate(message, 1000),
            action,
        });
    }
}
