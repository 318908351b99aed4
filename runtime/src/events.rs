//! Publishing Kubernetes Events (events.k8s.io/v1), in the background, a few
//! at a time (controller and speaker alike).
//!
//! Not kube-runtime's `Recorder`: it keeps every Event it sent for six minutes
//! to aggregate repeats, which for 10,000 new Services is tens of megabytes.
//! Repeats and floods are dropped before the queue by
//! [`ferrolb_core::events::Limiter`] (a fingerprint per recent Event, a token
//! bucket per object and one for the process); a bounded queue keeps memory
//! flat when thousands come at once.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferrolb_core::events::{Limiter, Limits, Verdict};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;
use tracing::warn;

/// One Event to publish.
pub struct Pending {
    pub regarding: ObjectReference,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    pub action: &'static str,
}

/// Called with a short label (`create_event`, `event_dropped`) for each
/// failure, so that the binary can count it in its metrics.
pub type OnError = Arc<dyn Fn(&'static str) + Send + Sync>;

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Pending>,
    on_error: OnError,
    limiter: Arc<Mutex<Limiter>>,
    started: Instant,
    /// Called with `repeat` or `rate_limited` for each Event not published.
    on_suppressed: OnError,
}

/// What the sink counts in the binary's metrics.
pub trait Counters: Send + Sync + 'static {
    /// A failed API call or a full queue (`create_event`, `event_dropped`).
    fn api_error(&self, what: &str);
    /// An Event the limiter dropped (`repeat`, `rate_limited`).
    fn event_suppressed(&self, why: &str);
}

/// How the sink publishes.
pub struct Options {
    /// `reportingController` of every Event, e.g. `ferrolb.io/controller`.
    pub reporter: &'static str,
    /// `reportingInstance`: the pod or node.
    pub instance: String,
    /// Events waiting beyond this many are dropped (and counted): the log line stays.
    pub queue: usize,
    /// Events created at once.
    pub workers: usize,
}

impl EventSink {
    /// Starts the sink, counting into `counters`.
    pub fn start_counted<C: Counters>(
        client: kube::Client,
        opts: Options,
        counters: Arc<C>,
    ) -> EventSink {
        let errors = counters.clone();
        EventSink::start(
            client,
            opts,
            Arc::new(move |what| errors.api_error(what)),
            Arc::new(move |why| counters.event_suppressed(why)),
        )
    }

    /// `on_suppressed` counts the Events the limiter dropped (their log
    /// lines were written by the caller).
    pub fn start(
        client: kube::Client,
        opts: Options,
        on_error: OnError,
        on_suppressed: OnError,
    ) -> EventSink {
        let (tx, rx) = mpsc::channel::<Pending>(opts.queue.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let reporter = opts.reporter;
        for _ in 0..opts.workers.max(1) {
            let (client, instance, rx, on_error) = (
                client.clone(),
                opts.instance.clone(),
                rx.clone(),
                on_error.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Some(p) = rx.lock().await.recv().await else {
                        return;
                    };
                    if let Err(e) = create(&client, reporter, &instance, p).await {
                        on_error("create_event");
                        warn!(error = %e, "could not publish an Event");
                    }
                }
            });
        }
        EventSink {
            tx,
            on_error,
            limiter: Arc::new(Mutex::new(Limiter::new(Limits::default()))),
            started: Instant::now(),
            on_suppressed,
        }
    }

    pub fn publish(&self, p: Pending) {
        let object = object_key(&p.regarding);
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(self.started.elapsed(), &object, p.reason, &p.note);
        match verdict {
            Verdict::Publish => {}
            Verdict::Repeat => return (self.on_suppressed)("repeat"),
            Verdict::RateLimited => return (self.on_suppressed)("rate_limited"),
        }
        if self.tx.try_send(p).is_err() {
            (self.on_error)("event_dropped");
        }
    }
}

/// The object an Event is about: its uid, or kind/namespace/name.
fn object_key(r: &ObjectReference) -> String {
    match &r.uid {
        Some(uid) if !uid.is_empty() => uid.clone(),
        _ => format!(
            "{}/{}/{}",
            r.kind.as_deref().unwrap_or(""),
            r.namespace.as_deref().unwrap_or(""),
            r.name.as_deref().unwrap_or("")
        ),
    }
}

async fn create(
    client: &kube::Client,
    reporter: &str,
    instance: &str,
    p: Pending,
) -> Result<(), kube::Error> {
    let ns = p
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let now = Timestamp::now();
    let name = format!(
        "{}.{:x}",
        p.regarding.name.as_deref().unwrap_or("object"),
        now.as_nanosecond() as u128 ^ u128::from(rand_suffix())
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(p.action.into()),
        reason: Some(p.reason.into()),
        note: Some(p.note),
        type_: Some(if p.warning { "Warning" } else { "Normal" }.into()),
        regarding: Some(p.regarding),
        reporting_controller: Some(reporter.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}

/// A few bits that differ between Events created in the same nanosecond.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(2_654_435_761)
}
