//! The speaker process: watches and membership in, ownership decided by
//! `ferrolb_core::election`, the announcer's table and Events out.
//!
//! One task owns all state and recomputes the whole ownership table after
//! every batch of changes (a watch event, a membership change, an interface
//! rescan). The election is a pure function of its inputs, so recomputing
//! everything keeps the logic free of incremental bookkeeping; a batch
//! drains every event already waiting, so a relist costs one recompute.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrolb_core::config_gate::{ConfigGate, Outcome};
use ferrolb_core::election::ClusterState;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use tracing::{info, warn};

use crate::announcer::{Announcer, Desired, GratuitousSchedule, Guard};
use crate::interfaces;
use crate::membership;
use crate::metrics::Metrics;
use crate::plan;
use ferrolb_runtime::events::{self, EventSink, Pending};

/// Everything the daemon is told by its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    pub config_namespace: String,
    pub config_name: String,
    pub config_source: ferrolb_core::sources::Source,
    /// Namespace of MetalLB's objects, when they are read.
    pub crds_namespace: String,
    /// This speaker's Pod (POD_NAME): owns its ServiceL2Status objects.
    pub pod_name: Option<String>,
    /// Write MetalLB's ServiceL2Status objects.
    pub service_l2_status: bool,
    /// Namespace of the speaker Pods and the membership Secret.
    pub namespace: String,
    /// Label selector of the speaker Pods (peer discovery).
    pub speaker_selector: String,
    pub secret_name: String,
    pub secret_key: String,
    pub classes: crate::kube_inputs::ServiceClasses,
    pub excludes: Vec<String>,
    pub gratuitous: GratuitousSchedule,
    pub gratuitous_refresh: Option<Duration>,
    /// `None`: membership off; every Node is a candidate.
    pub membership: Option<membership::Settings>,
    /// The data-path check (kube-proxy's health); `None`: off.
    pub data_path: Option<crate::datapath::Check>,
    /// The `healthCheckNodePort` check of owned `Local` Services; `None`: off.
    pub service_health: Option<crate::servicehealth::Settings>,
    pub leave_timeout: Duration,
    pub rescan_interval: Duration,
    /// Requests that waited longer than this in the socket (kernel
    /// timestamp) are not answered: the membership timeout.
    pub max_request_age: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Services,
    Slices,
    Nodes,
    Config,
    Pods,
    Secret,
}

type Change = (Source, Result<bool, watcher::Error>);

fn watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    source: Source,
) -> (Store<K>, futures::stream::BoxStream<'static, Change>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer): (Store<K>, Writer<K>) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, cfg)
            .default_backoff()
            .modify(|o| o.meta_mut().managed_fields = None),
    )
    .map(move |e| (source, e.map(|e| matches!(e, Event::InitDone))))
    .boxed();
    (reader, stream)
}

struct State {
    settings: Settings,
    metrics: Arc<Metrics>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    configmaps: Store<ConfigMap>,
    /// MetalLB's objects, when they are a config source.
    objects: Option<ferrolb_runtime::metallb::Objects>,
    pods: Store<Pod>,
    secrets: Option<Store<Secret>>,
    synced: BTreeSet<Source>,
    sources: usize,
    /// The config in force, behind the gate the controller uses too: a
    /// refused config is tried again whenever Services change.
    gate: ConfigGate,
    membership: Option<membership::Handle>,
    announcer: Announcer,
    interfaces: Vec<interfaces::Interface>,
    assigned: Vec<interfaces::Assigned>,
    /// The announcer could not open some interface's sockets last time; the
    /// next rescan tries again even if the interfaces did not change.
    interfaces_failed: bool,
    /// Address -> interfaces it is announced on now.
    owned: BTreeMap<IpAddr, Vec<String>>,
    /// False from a stall until the first recompute after the re-join.
    rejoined: bool,
    /// After a stall: answers are held until this node's Node object in the
    /// watch store is at least as new as a fresh read from the API server
    /// (the resourceVersion read, once it arrived), or until `hold_until`.
    fresh_node_rv: Option<String>,
    hold_until: Option<tokio::time::Instant>,
    fresh_tx: tokio::sync::mpsc::UnboundedSender<Option<String>>,
    client: kube::Client,
    events: EventSink,
    conditions: crate::conditions::ConditionWriter,
    /// MetalLB's ServiceL2Status objects of this node.
    l2status: Option<crate::l2status::L2StatusWriter>,
    /// Carrier of the interfaces that would announce (`core::datapath::carrier_gate`).
    carrier: ferrolb_core::datapath::HealthGate,
    /// The Services whose `healthCheckNodePort` is probed (`None`: off).
    service_health: Option<tokio::sync::watch::Sender<crate::servicehealth::Targets>>,
}

/// Runs until SIGTERM or SIGINT, then leaves gracefully.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let mut signals = ferrolb_runtime::Shutdown::install()?;
    let (services, s1) = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        Source::Services,
    );
    let (slices, s2) = watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        Source::Slices,
    );
    let (nodes, s3) = watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        Source::Nodes,
    );
    let (configmaps, s4) = watch(
        Api::<ConfigMap>::namespaced(client.clone(), &settings.config_namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.config_name)),
        Source::Config,
    );
    let (pods, s5) = watch(
        Api::<Pod>::namespaced(client.clone(), &settings.namespace),
        watcher::Config::default().labels(&settings.speaker_selector),
        Source::Pods,
    );
    let mut streams = vec![s1, s2, s3, s5];
    if settings.config_source.reads_configmap() {
        streams.push(s4);
    }
    let (objects, mut object_events) = if settings.config_source.reads_crds() {
        let (o, s) = ferrolb_runtime::metallb::watch(client.clone(), &settings.crds_namespace);
        (Some(o), s)
    } else {
        (None, futures::stream::pending().boxed())
    };
    let (secrets, membership) = match &settings.membership {
        Some(m) => {
            let (secrets, s6) = watch(
                Api::<Secret>::namespaced(client.clone(), &settings.namespace),
                watcher::Config::default()
                    .fields(&format!("metadata.name={}", settings.secret_name)),
                Source::Secret,
            );
            streams.push(s6);
            let handle = membership::start(m.clone(), settings.leave_timeout, metrics.clone())
                .with_context(|| format!("cannot open the membership socket {}", m.bind))?;
            match &settings.data_path {
                Some(check) if m.protocol == membership::Protocol::Ring => {
                    tokio::spawn(crate::datapath::run(
                        check.clone(),
                        handle.pause.clone(),
                        metrics.clone(),
                    ));
                }
                Some(_) => warn!("the data-path check needs --membership-protocol ring: it is off"),
                None => {}
            }
            (Some(secrets), Some(handle))
        }
        None => {
            if settings.data_path.is_some() {
                warn!("the data-path check needs the membership (--membership true): it is off");
            }
            (None, None)
        }
    };
    let sources = streams.len();
    let mut changes = futures::stream::select_all(streams);
    let mut view = membership.as_ref().map(|m| m.view.clone());
    let (fresh_tx, mut fresh_rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let mut state = State {
        conditions: crate::conditions::ConditionWriter::start(client.clone(), metrics.clone()),
        l2status: settings.service_l2_status.then(|| {
            crate::l2status::L2StatusWriter::start(
                client.clone(),
                settings.namespace.clone(),
                settings.node.clone(),
                metrics.clone(),
            )
        }),
        carrier: ferrolb_core::datapath::carrier_gate(),
        service_health: settings
            .service_health
            .clone()
            .map(|h| crate::servicehealth::start(client.clone(), h, metrics.clone())),
        events: EventSink::start_counted(
            client.clone(),
            events::Options {
                reporter: "ferrolb.io/speaker",
                instance: settings.node.clone(),
                queue: 1024,
                workers: 2,
            },
            metrics.clone(),
        ),
        announcer: Announcer::with_stats(settings.gratuitous, metrics.announcer.clone())
            .with_guard(Guard {
                max_age: settings.max_request_age,
                liveness: membership.as_ref().map(|m| m.liveness.clone()),
            }),
        settings,
        metrics,
        services,
        slices,
        nodes,
        configmaps,
        objects,
        pods,
        secrets,
        synced: BTreeSet::new(),
        sources,
        gate: ConfigGate::new("nothing is announced until a valid config is loaded"),
        membership,
        interfaces: Vec::new(),
        assigned: Vec::new(),
        interfaces_failed: false,
        owned: BTreeMap::new(),
        rejoined: true,
        fresh_node_rv: None,
        hold_until: None,
        fresh_tx,
        client: client.clone(),
    };
    state.rescan();
    let mut rescan = tokio::time::interval(state.settings.rescan_interval);
    let refresh_every = state
        .settings
        .gratuitous_refresh
        .unwrap_or(Duration::from_secs(3600));
    let mut refresh =
        tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    info!(node = %state.settings.node, membership = state.membership.is_some(), "speaker started");
    loop {
        // Whether the inputs of the decision may have changed. A rescan that
        // found the same interfaces does not recompute: with 1,000 Services
        // that would cost a full election every second for nothing.
        let dirty = tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { anyhow::bail!("the watches ended") };
                state.note(change);
                // Take every change already waiting: one recompute per batch.
                while let Some(Some(change)) = changes.next().now_or_never() {
                    state.note(change);
                }
                true
            }
            Some(u) = object_events.next() => {
                state.note_objects(u);
                true
            }
            r = async { view.as_mut().expect("guarded").changed().await }, if view.is_some() => {
                if r.is_err() { anyhow::bail!("membership stopped") }
                true
            }
            Some(rv) = fresh_rx.recv() => {
                state.fresh_node_rv = rv;
                true
            }
            _ = rescan.tick() => state.rescan() || state.interfaces_failed || state.hold_until.is_some(),
            _ = refresh.tick(), if state.settings.gratuitous_refresh.is_some() => {
                state.announcer.refresh();
                false
            }
            which = signals.recv() => { info!("{which}: leaving"); break }
        };
        if dirty {
            state.recompute();
        }
    }
    state.leave().await;
    Ok(())
}

impl State {
    fn note(&mut self, (source, result): Change) {
        match result {
            Ok(init_done) => {
                if init_done && self.synced.insert(source) {
                    info!(?source, "watch synced");
                }
                match source {
                    Source::Config => self.read_config(),
                    Source::Services if self.gate.has_refused() => {
                        let held = self.held_addresses();
                        let outcome = self.gate.retry(|c| {
                            ferrolb_core::allocator::orphaned_addresses(c, held.clone())
                        });
                        self.config_outcome(outcome);
                    }
                    Source::Pods => {
                        if let Some(m) = &self.membership {
                            let peers =
                                crate::kube_inputs::peers(self.pods.state().iter().map(|p| &**p));
                            if !self.synced.contains(&Source::Pods) {
                                return;
                            }
                            m.peers.send_if_modified(|old| {
                                let changed = old.as_ref() != Some(&peers);
                                *old = Some(peers);
                                changed
                            });
                        }
                    }
                    Source::Secret => self.read_secret(),
                    _ => {}
                }
            }
            Err(e) => {
                self.metrics
                    .api_error(&format!("watch_{source:?}").to_lowercase());
                warn!(?source, error = %e, "a watch failed; it restarts with backoff");
            }
        }
    }

    /// Takes in an update of MetalLB's objects and reads the config again.
    fn note_objects(&mut self, u: ferrolb_runtime::metallb::Update) {
        let Some(o) = self.objects.as_mut() else {
            return;
        };
        match o.note(u) {
            Ok(Some(news)) => warn!("{news}"),
            Ok(None) => {}
            Err(e) => {
                self.metrics.api_error("watch_metallb");
                warn!(error = %e, "a MetalLB object watch failed; it restarts with backoff");
            }
        }
        self.read_config();
    }

    /// Offers the config sources' content to the gate, once each source
    /// read has been listed.
    fn read_config(&mut self) {
        let source = self.settings.config_source;
        let configmap = if source.reads_configmap() {
            if !self.synced.contains(&Source::Config) {
                return;
            }
            let cm = self.configmaps.state().into_iter().next();
            Some(match &cm {
                None => Err(format!(
                    "the ConfigMap {}/{} does not exist",
                    self.settings.config_namespace, self.settings.config_name
                )),
                Some(cm) => ferrolb_runtime::service::config_text(cm),
            })
        } else {
            None
        };
        let crds = match &self.objects {
            Some(o) => match o.input() {
                None => return,
                some => some,
            },
            None => None,
        };
        let held = self.held_addresses();
        let outcome = self
            .gate
            .offer_input(ferrolb_core::sources::Input { configmap, crds }, |c| {
                ferrolb_core::allocator::orphaned_addresses(c, held.clone())
            });
        self.config_outcome(outcome);
    }

    /// Logs what the config gate decided (the controller publishes the
    /// Events; a speaker only logs and counts).
    fn config_outcome(&mut self, outcome: Outcome) {
        self.metrics.config_stale.set(i64::from(self.gate.stale()));
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Missing { message } | Outcome::Invalid { message, .. } => warn!("{message}"),
            Outcome::Refused {
                message,
                repeated: false,
            } => warn!("{message}"),
            Outcome::Refused { repeated: true, .. } => {}
            Outcome::Loaded { pools, message, .. } => {
                info!(pools, "config accepted: {message}")
            }
        }
    }

    /// Every address in the status of a handled Service, with its holders.
    fn held_addresses(&self) -> Vec<(IpAddr, Vec<ferrolb_core::ServiceKey>)> {
        let mut held: BTreeMap<IpAddr, Vec<ferrolb_core::ServiceKey>> = BTreeMap::new();
        let services = self.services.state();
        let endpoints = BTreeMap::new();
        for info in crate::kube_inputs::service_infos(
            services.iter().map(|s| &**s),
            &endpoints,
            &self.settings.classes,
        ) {
            for ip in info.addresses {
                held.entry(ip).or_default().push(info.key.clone());
            }
        }
        held.into_iter().collect()
    }

    fn read_secret(&mut self) {
        let (Some(m), Some(secrets)) = (&self.membership, &self.secrets) else {
            return;
        };
        let key = secrets.state().into_iter().next().and_then(|s| {
            s.data
                .as_ref()?
                .get(&self.settings.secret_key)
                .map(|b| b.0.clone())
                .filter(|k| !k.is_empty())
        });
        if key.is_none() && self.synced.contains(&Source::Secret) {
            warn!(secret = %self.settings.secret_name, key = %self.settings.secret_key, "the membership key is missing: membership cannot authenticate, nothing is announced");
        }
        m.key.send_if_modified(|old| {
            let changed = *old != key;
            *old = key;
            changed
        });
    }

    /// Lists the interfaces and their addresses again; true if anything changed.
    fn rescan(&mut self) -> bool {
        match (interfaces::list(), interfaces::assigned()) {
            (Ok(list), Ok(assigned)) => {
                let changed = list != self.interfaces || assigned != self.assigned;
                self.interfaces = list;
                self.assigned = assigned;
                self.check_carrier();
                changed
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot list interfaces");
                false
            }
        }
    }

    /// An interface that would announce lost carrier (or was set down), and
    /// no other can announce: the node leaves the membership (graceful: the
    /// next node takes over first) until carrier has held for 2 s.
    fn check_carrier(&mut self) {
        let (Some(config), Some(m)) = (self.gate.in_force(), &self.membership) else {
            return;
        };
        let pool_addresses: Vec<IpAddr> = config
            .pools
            .iter()
            .flat_map(|p| p.ranges.iter().map(|r| r.first()))
            .collect();
        let named: Vec<String> = config
            .pools
            .iter()
            .flat_map(|p| p.advertisements.iter().flat_map(|a| a.interfaces.clone()))
            .collect();
        let Some(ok) = interfaces::carrier(
            &self.interfaces,
            &self.assigned,
            &self.settings.excludes,
            &pool_addresses,
            &named,
        ) else {
            return;
        };
        match self.carrier.observe(crate::clock::boottime(), ok) {
            Some(false) => {
                warn!(
                    "no interface that would announce has carrier: this node stops owning addresses until one has carrier for 2 s"
                );
                self.metrics.carrier.set(0);
                m.pause.set("carrier", true);
            }
            Some(true) => {
                info!("carrier is back: this node may own addresses");
                self.metrics.carrier.set(1);
                m.pause.set("carrier", false);
            }
            None => {}
        }
    }

    /// Decides what this node announces and makes the announcer do it.
    fn recompute(&mut self) {
        let synced = self.synced.len() == self.sources;
        let view = self.membership.as_ref().map(|m| m.view.borrow().clone());
        let joined = view.as_ref().is_none_or(|v| v.joined);
        let fenced = view.as_ref().is_some_and(|v| v.fenced);
        self.metrics.fenced.set(i64::from(fenced));
        self.metrics
            .ready
            .store(synced && joined, Ordering::Relaxed);
        // After a stall the membership re-joins: peers may have given this
        // node's addresses to others meanwhile. Until then the table stays
        // as it was and nothing is decided from a view known to be stale:
        // the responders answer nothing and gratuitous bursts are skipped
        // (the liveness epoch says "not current"), and no generation is
        // acknowledged.
        let rejoining = view.as_ref().is_some_and(|v| v.rejoining);
        if rejoining {
            self.conditions.cancel_all();
            if self.rejoined {
                self.start_hold();
            }
            self.rejoined = false;
            return;
        }

        let mut mine: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        // The announcement conditions this node writes; `None`: it decides nothing now.
        let mut conditions = None;
        // What this node's ServiceL2Status objects should say; `None`: leave them.
        let mut l2 = None;
        // (Service, address) for each owned address, for MetalLB's metric.
        let mut announced: Vec<(String, IpAddr)> = Vec::new();
        if let (true, true, false, Some(config)) = (synced, joined, fenced, self.gate.in_force()) {
            let nodes: Vec<Arc<Node>> = self.nodes.state();
            let slices = self.slices.state();
            let services = self.services.state();
            let endpoints = crate::kube_inputs::endpoints_by_service(slices.iter().map(|s| &**s));
            let mut withdrawn =
                crate::servicehealth::withdrawn_by_node(self.pods.state().iter().map(|p| &**p));
            let state = ClusterState {
                nodes: nodes
                    .iter()
                    .map(|n| {
                        let mut info = crate::kube_inputs::node_info(n);
                        info.withdrawn = withdrawn.remove(&info.name).unwrap_or_default();
                        info
                    })
                    .collect(),
                members: view.as_ref().map(|v| v.alive.clone()),
                services: crate::kube_inputs::service_infos(
                    services.iter().map(|s| &**s),
                    &endpoints,
                    &self.settings.classes,
                ),
            };
            // Never a node's own address, even if a Service's status names
            // one inside a pool.
            let mut forbidden = crate::kube_inputs::node_addresses(nodes.iter().map(|n| &**n));
            forbidden.extend(self.assigned.iter().map(|a| a.address));
            let node_labels = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(self.settings.node.as_str()))
                .and_then(|n| n.metadata.labels.as_ref());
            let plan::Plan {
                ownership,
                mine: owned,
                listed,
                announced: on,
            } = plan::plan(&plan::Inputs {
                node: &self.settings.node,
                node_labels,
                state: &state,
                config,
                forbidden: &forbidden,
                interfaces: &self.interfaces,
                assigned: &self.assigned,
                excludes: &self.settings.excludes,
            });
            mine = owned;
            announced = on;
            // Only with --service-l2-status: a full pass over the Services.
            if self.l2status.is_some() {
                l2 = Some((
                    ferrolb_core::announced::l2_statuses(&mine, &listed, &state.services),
                    ferrolb_core::announced::announcers(&ownership, &state.services),
                ));
            }
            if let Some(tx) = &self.service_health {
                let targets = health_targets(&self.settings.node, &nodes, &state, &mine, &services);
                tx.send_if_modified(|t| {
                    let changed = *t != targets;
                    *t = targets;
                    changed
                });
            }
            let designated = ferrolb_core::announced::is_designated(
                &self.settings.node,
                view.as_ref().map(|v| &v.alive),
            );
            conditions = Some((
                ferrolb_core::announced::announcements(
                    &self.settings.node,
                    &ownership,
                    &mine,
                    &state.services,
                    designated,
                ),
                services,
            ));
        }

        self.metrics.set_announced(&self.settings.node, &announced);

        let desired: Vec<Desired> =
            plan::per_interface(&self.interfaces, &self.settings.excludes, synced, &mine)
                .into_iter()
                .filter_map(|(name, addresses)| {
                    let interface = self.interfaces.iter().find(|i| i.name == name)?.clone();
                    Some(Desired {
                        interface,
                        addresses,
                    })
                })
                .collect();
        let failed = self.announcer.set(&desired);
        self.interfaces_failed = !failed.is_empty();
        // After the table is set: the condition writes never delay an answer.
        match conditions {
            Some((wanted, services)) => self
                .conditions
                .sync(&wanted.into_iter().collect(), &services),
            // Fenced, not joined or not synced: this node says nothing, and
            // what it queued while it decided is not sent.
            None => self.conditions.cancel_all(),
        }
        // Fenced: this node announces nothing, and says so. Not synced, no
        // config yet or still joining: it has not decided, and its objects
        // (kept from before a restart) stay until it has.
        if l2.is_none() && fenced {
            l2 = Some((BTreeMap::new(), BTreeMap::new()));
        }
        if let (Some((services, announcers)), Some(writer)) = (l2, &self.l2status) {
            let owner = self.settings.pod_name.as_ref().and_then(|name| {
                self.pods
                    .state()
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name))
                    .and_then(|p| Some((name.clone(), p.metadata.uid.clone()?)))
            });
            writer.set(crate::l2status::Wanted {
                services: Some(services),
                announcers,
                owner,
            });
        }
        for (name, e) in failed {
            warn!(interface = %name, error = %e, "skipped interface, tried again at the next rescan");
        }
        // Back from a stall: answers stay held until the Kubernetes view is
        // fresh (see `start_hold`); then another node may have claimed what
        // this one kept meanwhile, so it is claimed back (newly gained
        // addresses got their bursts from `set`).
        if !self.rejoined && !self.release_hold_if_fresh() {
            self.report(mine);
            return;
        }
        if !self.rejoined {
            self.rejoined = true;
            let kept: BTreeSet<IpAddr> = mine
                .iter()
                .filter(|(a, on)| {
                    !on.is_empty() && self.owned.get(a).is_some_and(|o| !o.is_empty())
                })
                .map(|(a, _)| *a)
                .collect();
            if !kept.is_empty() {
                info!(
                    addresses = kept.len(),
                    "re-joined: announcing the addresses kept through the stall again"
                );
            }
            self.announcer.reannounce(&kept);
        }
        self.report(mine);
        if let (Some(m), Some(v)) = (&self.membership, &view) {
            m.applied.send_if_modified(|g| {
                let changed = *g != v.generation;
                *g = v.generation;
                changed
            });
        }
    }

    /// A stall was seen: hold every answer until this node's own Node object
    /// in the watch store has caught up with a fresh read (the watch events
    /// queued during the stall, such as an exclude label, are applied first),
    /// or for at most 2 s when the API server does not answer.
    fn start_hold(&mut self) {
        let Some(l) = self.membership.as_ref().map(|m| m.liveness.clone()) else {
            return;
        };
        l.hold(true);
        self.fresh_node_rv = None;
        self.hold_until = Some(tokio::time::Instant::now() + Duration::from_secs(2));
        let (client, node, tx) = (
            self.client.clone(),
            self.settings.node.clone(),
            self.fresh_tx.clone(),
        );
        tokio::spawn(async move {
            let nodes: Api<Node> = Api::all(client);
            let rv = match nodes.get_opt(&node).await {
                Ok(Some(n)) => n.metadata.resource_version,
                _ => None,
            };
            let _ = tx.send(rv);
        });
    }

    /// Whether the hold after a stall is over (released now if it is).
    fn release_hold_if_fresh(&mut self) -> bool {
        let Some(l) = self.membership.as_ref().map(|m| m.liveness.clone()) else {
            return true;
        };
        if !l.is_held() {
            return true;
        }
        let stored = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.settings.node.as_str()))
            .and_then(|n| n.metadata.resource_version.clone());
        let caught_up = match (&self.fresh_node_rv, &stored) {
            (Some(fresh), Some(have)) => match (fresh.parse::<u64>(), have.parse::<u64>()) {
                (Ok(f), Ok(h)) => h >= f,
                _ => fresh == have,
            },
            _ => false,
        };
        let timed_out = self
            .hold_until
            .is_some_and(|t| tokio::time::Instant::now() >= t);
        if caught_up || timed_out {
            if timed_out && !caught_up {
                warn!(
                    "after a stall the Node could not be read fresh within 2 s; answering from the watch's view"
                );
            }
            l.hold(false);
            self.hold_until = None;
            return true;
        }
        false
    }

    /// Logs, counts and publishes Events for what changed hands.
    fn report(&mut self, mine: BTreeMap<IpAddr, Vec<String>>) {
        let gained: Vec<IpAddr> = mine
            .iter()
            .filter(|(a, on)| !on.is_empty() && self.owned.get(a).is_none_or(|o| o.is_empty()))
            .map(|(a, _)| *a)
            .collect();
        let lost: Vec<IpAddr> = self
            .owned
            .iter()
            .filter(|(a, on)| !on.is_empty() && mine.get(a).is_none_or(|o| o.is_empty()))
            .map(|(a, _)| *a)
            .collect();
        for a in &lost {
            info!(address = %a, "ownership lost: no longer announcing");
        }
        if !gained.is_empty() {
            let services = self.services.state();
            for a in &gained {
                let on = mine[a].join(",");
                info!(address = %a, interfaces = %on, "ownership gained: announcing");
                for svc in services.iter().filter(|s| {
                    crate::kube_inputs::is_handled(s, &self.settings.classes)
                        && s.status
                            .as_ref()
                            .and_then(|st| st.load_balancer.as_ref())
                            .and_then(|lb| lb.ingress.as_ref())
                            .is_some_and(|i| {
                                i.iter().any(|i| i.ip.as_deref() == Some(&a.to_string()))
                            })
                }) {
                    self.events.publish(Pending {
                        regarding: svc.object_ref(&()),
                        warning: false,
                        reason: "Announcing",
                        note: format!(
                            "node {} announces {a} on interface {on}",
                            self.settings.node
                        ),
                        action: "Announce",
                    });
                }
            }
        }
        self.metrics.ownership_change("gained", gained.len());
        self.metrics.ownership_change("lost", lost.len());
        self.metrics
            .announced_addresses
            .set(mine.values().filter(|on| !on.is_empty()).count() as i64);
        self.owned = mine;
    }

    /// Graceful stop: this node stops answering first, then tells its peers,
    /// which take over (their acknowledgement says they applied the leave).
    /// Break before make: a short gap (the leave's delivery, a few ms) and
    /// never two nodes answering one request; a client that took a reply
    /// from the leaving node could ignore the successor's gratuitous ARP
    /// for Linux's 1 s `locktime`.
    async fn leave(mut self) {
        let started = Instant::now();
        self.announcer.set(&[]);
        self.metrics.announced_addresses.set(0);
        info!("stopped announcing; leaving the membership");
        if let Some(m) = &self.membership {
            match m.leave(self.settings.leave_timeout).await {
                Some(o) if o.missing.is_empty() => {
                    info!(acknowledged = ?o.acknowledged, took = ?o.took, "peers took over")
                }
                Some(o) => {
                    warn!(acknowledged = ?o.acknowledged, missing = ?o.missing, took = ?o.took, "not every peer acknowledged the leave in time")
                }
                None => warn!("membership did not answer the leave"),
            }
        }
        info!(took = ?started.elapsed(), "left; exiting");
    }
}

/// The `Local` Services whose `healthCheckNodePort` this node probes: those
/// holding an address it owns, and those it withdrew from (to see them
/// recover), each with its port.
fn health_targets(
    node: &str,
    nodes: &[Arc<Node>],
    state: &ClusterState,
    mine: &BTreeMap<IpAddr, Vec<String>>,
    services: &[Arc<Service>],
) -> crate::servicehealth::Targets {
    let withdrawn = state
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.withdrawn.clone())
        .unwrap_or_default();
    // kube-proxy listens on its node-port addresses: the node's primary IPs
    // by default, every address with `--nodeport-addresses` unset in
    // iptables mode. The first InternalIP serves both.
    let internal: Vec<IpAddr> = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
        .and_then(|n| n.status.as_ref()?.addresses.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let Some(ip) = internal
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| internal.first())
        .copied()
    else {
        return Default::default();
    };
    let wanted: BTreeSet<&ferrolb_core::ServiceKey> = state
        .services
        .iter()
        .filter(|s| s.traffic_policy == ferrolb_core::TrafficPolicy::Local)
        .filter(|s| withdrawn.contains(&s.key) || s.addresses.iter().any(|a| mine.contains_key(a)))
        .map(|s| &s.key)
        .collect();
    services
        .iter()
        .filter_map(|svc| {
            let key = ferrolb_core::ServiceKey::new(
                svc.metadata.namespace.as_deref()?,
                svc.metadata.name.as_deref()?,
            );
            let port = svc.spec.as_ref()?.health_check_node_port?;
            let port = u16::try_from(port).ok()?;
            (wanted.contains(&key)).then_some((key, std::net::SocketAddr::new(ip, port)))
        })
        .collect()
}
