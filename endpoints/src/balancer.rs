//! The load balancer: sync, next, background sync, shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::select::{self, Endpoint, HintsUsed, PortProblem, SelectOptions};
use crate::snapshot::{EndpointState, Snapshot, Status};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A client-side load balancer over one Service's endpoints.
///
/// Cloning is cheap and every clone shares the endpoints, the rotation and the background
/// sync; the background sync stops at [`shutdown`](Self::shutdown) or when the last clone
/// is dropped.
#[derive(Clone)]
pub struct LoadBalancer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    background: Mutex<Option<Background>>,
}

struct Background {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the background task shares with the readers.
pub(crate) struct Shared {
    client: kube::Client,
    config: Config,
    namespace: String,
    opts: SelectOptions,
    snapshot: ArcSwap<Snapshot>,
    counter: Padded<AtomicUsize>,
    epoch: Instant,
    /// Serialises ejection decisions (the failure path; `next()` never takes it).
    eject_lock: Mutex<()>,
    /// Bumped on every published snapshot.
    changed: watch::Sender<u64>,
    shut_down: AtomicBool,
    stats: Counters,
}

#[repr(align(64))]
struct Padded<T>(T);

#[derive(Default)]
struct Counters {
    lists: AtomicU64,
    watch_errors: AtomicU64,
    restarts: AtomicU64,
}

/// What the load balancer has done so far, for monitoring and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Complete lists of the Service's EndpointSlices (`sync()` calls and the background
    /// sync's initial lists and relists).
    pub lists: u64,
    /// Errors the background sync's watches met (each is retried with a backoff).
    pub watch_errors: u64,
    /// Times the background sync started its watches afresh for the periodic resync.
    pub restarts: u64,
    /// Snapshots published so far.
    pub generation: u64,
}

/// What the usable endpoints are now and how they were chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Sorted by address.
    pub endpoints: Vec<Endpoint>,
    /// No endpoint is ready: these are serving-but-terminating ones.
    pub terminating_fallback: bool,
    /// Which topology hints were followed.
    pub hints: HintsUsed,
    /// How many of them `next()` skips now (passive ejection).
    pub ejected: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoadBalancer {
    /// A load balancer for the Service `config` names. No I/O: call [`sync`](Self::sync)
    /// and/or [`start_background_sync`](Self::start_background_sync) before
    /// [`next`](Self::next). The namespace defaults to the client's (an in-cluster client's
    /// is the Pod's own).
    pub fn new(client: kube::Client, config: Config) -> Self {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let opts = SelectOptions {
            families: config.families,
            zone: config.zone.clone(),
            node: config.node.clone(),
        };
        let (changed, _) = watch::channel(0);
        LoadBalancer {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    client,
                    config,
                    namespace,
                    opts,
                    snapshot: ArcSwap::from_pointee(Snapshot::not_synced()),
                    counter: Padded(AtomicUsize::new(0)),
                    epoch: Instant::now(),
                    eject_lock: Mutex::new(()),
                    changed,
                    shut_down: AtomicBool::new(false),
                    stats: Counters::default(),
                }),
                background: Mutex::new(None),
            }),
        }
    }

    /// The config it was made with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// The Service's namespace (the config's, or the client's default).
    pub fn namespace(&self) -> &str {
        &self.inner.shared.namespace
    }

    /// Reads the Service and its EndpointSlices once (a get and a list) and makes their
    /// usable endpoints the rotation. Fails with [`Error::ServiceNotFound`] when the Service
    /// does not exist, [`Error::NoEndpoints`] when it has no usable endpoint (the rotation
    /// is then empty too), the port errors, or [`Error::Api`].
    pub async fn sync(&self) -> Result<()> {
        let shared = &self.inner.shared;
        shared.check_name()?;
        let name = &shared.config.service;
        let services = Api::<Service>::namespaced(shared.client.clone(), &shared.namespace);
        let service = services.get_opt(name).await?;
        let slices = match &service {
            Some(_) => {
                let api =
                    Api::<EndpointSlice>::namespaced(shared.client.clone(), &shared.namespace);
                api.list(&ListParams::default().labels(&shared.selector()))
                    .await?
                    .items
            }
            None => vec![],
        };
        shared.stats.lists.fetch_add(1, Ordering::Relaxed);
        shared.publish(service.as_ref(), slices.iter());
        match shared.problem(&shared.snapshot.load()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The next endpoint of the rotation (round-robin, or the policy configured), skipping
    /// ejected ones. Never blocks and takes no lock: safe to call from any number of threads
    /// and tasks, also while the background sync replaces the endpoints.
    #[inline]
    pub fn next(&self) -> Result<Endpoint> {
        let shared = &self.inner.shared;
        let snap = shared.snapshot.load();
        match shared.pick(&snap) {
            Some(i) => Ok(snap.entries[i].endpoint.clone()),
            None => Err(shared.problem(&snap).unwrap_or(Error::NotSynced)),
        }
    }

    /// [`next`](Self::next)'s address alone (copies it, shares nothing with other threads
    /// but the rotation counter).
    #[inline]
    pub fn next_addr(&self) -> Result<SocketAddr> {
        let shared = &self.inner.shared;
        let snap = shared.snapshot.load();
        match shared.pick(&snap) {
            Some(i) => Ok(snap.entries[i].endpoint.addr()),
            None => Err(shared.problem(&snap).unwrap_or(Error::NotSynced)),
        }
    }

    /// [`next`](Self::next), counted as a request in flight to that endpoint until the guard
    /// is dropped (what power-of-two-choices compares); the guard reports the outcome.
    pub fn next_tracked(&self) -> Result<Tracked> {
        let shared = &self.inner.shared;
        let snap = shared.snapshot.load();
        match shared.pick(&snap) {
            Some(i) => {
                let entry = &snap.entries[i];
                entry.state.in_flight.0.fetch_add(1, Ordering::Relaxed);
                Ok(Tracked {
                    endpoint: entry.endpoint.clone(),
                    state: entry.state.clone(),
                    shared: shared.clone(),
                })
            }
            None => Err(shared.problem(&snap).unwrap_or(Error::NotSynced)),
        }
    }

    /// Reports a failed request to `endpoint` (passive ejection, see
    /// [`Ejection`](crate::Ejection)). Returns whether the endpoint is now ejected.
    pub fn report_failure(&self, endpoint: &Endpoint) -> bool {
        self.inner.shared.report_failure(endpoint.addr())
    }

    /// Reports a successful request to `endpoint`: its failure count and backoff start over.
    pub fn report_success(&self, endpoint: &Endpoint) {
        let snap = self.inner.shared.snapshot.load();
        if let Some(e) = snap.find(endpoint.addr()) {
            e.state.record_success();
        }
    }

    /// The usable endpoints now (every one, ejected or not) and how they were chosen.
    pub fn state(&self) -> State {
        let shared = &self.inner.shared;
        let snap = shared.snapshot.load();
        State {
            endpoints: snap.entries.iter().map(|e| e.endpoint.clone()).collect(),
            terminating_fallback: snap.terminating_fallback,
            hints: snap.hints,
            ejected: snap.ejected(shared.now()),
        }
    }

    /// The usable endpoints now, sorted by address.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.state().endpoints
    }

    /// What the load balancer has done so far.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.shared.stats;
        Stats {
            lists: s.lists.load(Ordering::Relaxed),
            watch_errors: s.watch_errors.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
            generation: *self.inner.shared.changed.borrow(),
        }
    }

    /// A receiver that sees the generation (a counter) change each time the endpoints are
    /// replaced (by `sync()` or the background sync), for callers that want to wait for it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.changed.subscribe()
    }

    /// Starts keeping the endpoints up to date in the background (a tokio task, so call it
    /// inside a runtime): a watch of the Service and one of its EndpointSlices, resumed after
    /// every disconnection, with a backoff after errors, a fresh list when a watch cannot
    /// resume (`410 Gone`) and every `resync_interval`. Readers never wait for it: they keep
    /// the previous endpoints until a complete new view replaces them. Calling
    /// [`sync`](Self::sync) first is not required, but makes the first `next()` succeed at
    /// once.
    pub fn start_background_sync(&self) -> Result<()> {
        let shared = &self.inner.shared;
        shared.check_name()?;
        if shared.shut_down.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        let mut background = lock(&self.inner.background);
        if background.is_some() {
            return Err(Error::AlreadyStarted);
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run_background(shared.clone(), stopped));
        *background = Some(Background { stop, task });
        Ok(())
    }

    /// Stops the background sync (if it runs) and waits for it to end. The endpoints stay as
    /// they were: `next()` keeps working on them.
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.shut_down.store(true, Ordering::SeqCst);
        let background = lock(&self.inner.background).take();
        if let Some(b) = background {
            let _ = b.stop.send(true);
            let _ = b.task.await;
        }
        // Wakes those waiting on changes (the tower discovery ends).
        shared.changed.send_modify(|g| *g += 1);
    }

    #[cfg_attr(not(any(feature = "tower", test)), allow(dead_code))]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}

impl std::fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.shared;
        f.debug_struct("LoadBalancer")
            .field("namespace", &s.namespace)
            .field("service", &s.config.service)
            .field("endpoints", &s.snapshot.load().entries.len())
            .finish()
    }
}

/// A request in flight to an endpoint, from [`LoadBalancer::next_tracked`]. Dropping it ends
/// the request; [`success`](Self::success) and [`failure`](Self::failure) also report how it
/// went (passive ejection).
#[must_use = "the request counts as in flight until the guard is dropped"]
pub struct Tracked {
    endpoint: Endpoint,
    state: Arc<EndpointState>,
    shared: Arc<Shared>,
}

impl Tracked {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The request succeeded.
    pub fn success(self) {
        self.state.record_success();
    }

    /// The request failed; returns whether the endpoint is now ejected.
    pub fn failure(self) -> bool {
        self.shared.report_failure(self.endpoint.addr())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.in_flight.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Shared {
    fn check_name(&self) -> Result<()> {
        if self.config.service.is_empty() {
            Err(Error::MissingServiceName)
        } else {
            Ok(())
        }
    }

    fn selector(&self) -> String {
        format!("{SERVICE_NAME_LABEL}={}", self.config.service)
    }

    /// Nanoseconds since the load balancer was made, never 0.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    #[inline]
    fn pick(&self, snap: &Snapshot) -> Option<usize> {
        snap.pick(self.config.policy, &self.counter.0, || self.now())
    }

    /// The error `next()` returns for a snapshot without endpoints (`None` when it has some).
    fn problem(&self, snap: &Snapshot) -> Option<Error> {
        let namespace = self.namespace.clone();
        let service = self.config.service.clone();
        Some(match snap.status {
            Status::NotSynced => Error::NotSynced,
            Status::Listed if snap.entries.is_empty() => Error::NoEndpoints { namespace, service },
            Status::Listed => return None,
            Status::ServiceNotFound => Error::ServiceNotFound { namespace, service },
            Status::PortNotFound => Error::PortNotFound {
                namespace,
                service,
                port: self
                    .config
                    .port
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(none: the Service has no port)".into()),
            },
            Status::AmbiguousPort => Error::AmbiguousPort { namespace, service },
        })
    }

    /// Replaces the snapshot with the view of `service` and `slices`.
    pub(crate) fn publish<'a>(
        &self,
        service: Option<&Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) {
        let previous = self.snapshot.load();
        let next = match service {
            None => Snapshot::with_status(Status::ServiceNotFound),
            Some(svc) => match select::resolve_port(svc, self.config.port.as_ref()) {
                Err(PortProblem::NotFound) => Snapshot::with_status(Status::PortNotFound),
                Err(PortProblem::Ambiguous) => Snapshot::with_status(Status::AmbiguousPort),
                Ok(port) => {
                    Snapshot::build(select::select(slices, &port, &self.opts), Some(&previous))
                }
            },
        };
        self.snapshot.store(Arc::new(next));
        self.changed.send_modify(|g| *g += 1);
    }

    fn report_failure(&self, addr: SocketAddr) -> bool {
        let Some(policy) = self.config.ejection else {
            return false;
        };
        let _serialised = lock(&self.eject_lock);
        let snap = self.snapshot.load();
        match snap
            .entries
            .binary_search_by_key(&addr, |e| e.endpoint.addr())
        {
            Ok(i) => snap.record_failure(i, &policy, self.now()),
            Err(_) => false,
        }
    }

    #[cfg_attr(not(any(feature = "tower", test)), allow(dead_code))]
    pub(crate) fn current_endpoints(&self) -> Vec<Endpoint> {
        let snap = self.snapshot.load();
        snap.entries.iter().map(|e| e.endpoint.clone()).collect()
    }

    #[cfg_attr(not(any(feature = "tower", test)), allow(dead_code))]
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    #[cfg_attr(not(any(feature = "tower", test)), allow(dead_code))]
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }
}

/// What the background sync has seen of the Service and its slices.
#[derive(Default)]
struct View {
    /// `None` until the Service's first list; then whether it exists.
    service: Option<Option<Service>>,
    service_buffer: Option<Option<Service>>,
    /// `None` until the slices' first list.
    slices: Option<BTreeMap<String, EndpointSlice>>,
    slices_buffer: Option<BTreeMap<String, EndpointSlice>>,
}

fn slice_key(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

async fn run_background(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let services = Api::<Service>::namespaced(shared.client.clone(), &shared.namespace);
    let slices = Api::<EndpointSlice>::namespaced(shared.client.clone(), &shared.namespace);
    let by_name = format!("metadata.name={}", shared.config.service);
    let selector = shared.selector();
    let mut first = true;
    loop {
        if !first {
            shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        // A fresh pair of watchers lists everything again; until both have listed, readers
        // keep the snapshot they had.
        let mut service_events = watcher(
            services.clone(),
            watcher::Config::default().fields(&by_name),
        )
        .default_backoff()
        .boxed();
        let mut slice_events =
            watcher(slices.clone(), watcher::Config::default().labels(&selector))
                .default_backoff()
                .boxed();
        let resync = async {
            match shared.config.resync_interval {
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(100))).await,
                None => futures::future::pending().await,
            }
        };
        tokio::pin!(resync);
        let mut view = View::default();
        loop {
            let changed = tokio::select! {
                _ = stop.changed() => return,
                _ = &mut resync => break,
                ev = service_events.next() => match ev {
                    Some(Ok(ev)) => view.service_event(ev),
                    Some(Err(e)) => { shared.watch_error("Service", &e); false }
                    None => break,
                },
                ev = slice_events.next() => match ev {
                    Some(Ok(ev)) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            shared.stats.lists.fetch_add(1, Ordering::Relaxed);
                        }
                        view.slice_event(ev)
                    }
                    Some(Err(e)) => { shared.watch_error("EndpointSlice", &e); false }
                    None => break,
                },
            };
            if changed && let (Some(service), Some(slices)) = (&view.service, &view.slices) {
                shared.publish(service.as_ref(), slices.values());
            }
        }
    }
}

impl Shared {
    fn watch_error(&self, what: &str, e: &watcher::Error) {
        self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            namespace = %self.namespace,
            service = %self.config.service,
            "watching the {what}: {e} (retrying)"
        );
    }
}

impl View {
    /// Applies a Service event; returns whether the view changed.
    fn service_event(&mut self, ev: watcher::Event<Service>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.service_buffer = Some(None);
                false
            }
            watcher::Event::InitApply(s) => {
                self.service_buffer = Some(Some(s));
                false
            }
            watcher::Event::InitDone => {
                self.service = Some(self.service_buffer.take().flatten());
                true
            }
            watcher::Event::Apply(s) => {
                self.service = Some(Some(s));
                true
            }
            watcher::Event::Delete(_) => {
                self.service = Some(None);
                true
            }
        }
    }

    /// Applies an EndpointSlice event; returns whether the view changed.
    fn slice_event(&mut self, ev: watcher::Event<EndpointSlice>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.slices_buffer = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(s) => {
                self.slices_buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(slice_key(&s), s);
                false
            }
            watcher::Event::InitDone => {
                self.slices = Some(self.slices_buffer.take().unwrap_or_default());
                true
            }
            watcher::Event::Apply(s) => {
                self.slices
                    .get_or_insert_with(BTreeMap::new)
                    .insert(slice_key(&s), s);
                true
            }
            watcher::Event::Delete(s) => {
                if let Some(m) = &mut self.slices {
                    m.remove(&slice_key(&s));
                }
                true
            }
        }
    }
}
