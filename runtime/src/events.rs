//! Publishing Kubernetes Events (events.k8s.io/v1), in the background, a few
//! at a time (controller and speaker alike).
//!
//! Not kube-runtime's `Recorder`: it keeps every Event it sent for six minutes
//! to aggregate repeats, which for 10,000 new Services is tens of megabytes.
//! The engine already reports each failure once, so there is little to
//! aggregate; a bounded queue keeps memory flat when thousands come at once.

use std::sync::Arc;

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
    pub fn start(client: kube::Client, opts: Options, on_error: OnError) -> EventSink {
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
        EventSink { tx, on_error }
    }

    pub fn publish(&self, p: Pending) {
        if self.tx.try_send(p).is_err() {
            (self.on_error)("event_dropped");
        }
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
