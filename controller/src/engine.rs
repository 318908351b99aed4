//! The controller's decisions, without I/O: watch events go in; desired
//! Service statuses and notices (Events and log lines) come out.
//!
//! Start-up follows docs/architecture.md, section 4: nothing is assigned until the Services
//! have been listed and a config has been loaded; then every address already in
//! a Service's status is learned, all of them, before any new one is given out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use ferrolb_core::config_gate::{ConfigGate, Outcome};
use ferrolb_core::crd::{self, ObjectRef, Problem};
use ferrolb_core::selector::Labels;
use ferrolb_core::sources::{Input, Source};
use ferrolb_core::{Allocator, Change, PortKey, Protocol, ServiceKey};
use k8s_openapi::api::core::v1::{ConfigMap, Service};

use crate::service::{
    Classes, ClassesExt, has_finalizer, key_of, pool_annotation, service_proxy_name, spec_of,
    status_ips,
};
pub use crate::status::{ASSIGNED, Condition, PORT_CONFLICT, PortStatus};
use crate::status::{status_condition, status_ingress};

/// What a Service's status, pool annotation and finalizer should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// IPv4 first; empty means the status is cleared.
    pub ips: Vec<IpAddr>,
    /// `ports[]` of each ingress entry, in the order of `ips`.
    pub ports: Vec<Vec<PortStatus>>,
    pub pool: Option<String>,
    /// ferrolb's finalizer (`service.kubernetes.io/load-balancer-cleanup`):
    /// on every Service that holds an address, removed once it is released.
    pub finalizer: bool,
    /// The `ferrolb.io/AddressAssigned` condition; `None`: not shown.
    pub assigned: Option<Condition>,
}

impl Desired {
    pub fn cleared() -> Desired {
        Desired {
            ips: vec![],
            ports: vec![],
            pool: None,
            finalizer: false,
            assigned: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// Something a user should hear about: an Event on the object and a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Service {
        key: ServiceKey,
        severity: Severity,
        reason: &'static str,
        message: String,
        /// For failures: the allocator's reason label, for metrics.
        cause: Option<&'static str>,
    },
    /// About the config; `on_object` is false when the ConfigMap does not exist.
    Config {
        severity: Severity,
        reason: &'static str,
        message: String,
        on_object: bool,
    },
    /// About one MetalLB object (an invalid field, a pool nothing announces).
    Object {
        target: ObjectRef,
        severity: Severity,
        reason: &'static str,
        message: String,
    },
}

/// The config as the controller sees it, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigStatus {
    /// A config has been loaded at least once.
    pub loaded: bool,
    /// The ConfigMap's current content is not in force (invalid, missing, or refused).
    pub stale: bool,
}

pub struct Engine {
    classes: Classes,
    allocator: Allocator,
    services: BTreeMap<ServiceKey, Service>,
    listed: bool,
    synced: bool,
    /// Parsing, refusing and keeping configs (shared with the speakers).
    gate: ConfigGate,
    /// Which sources are read, and what each holds (`None`: not known yet).
    source: Source,
    configmap_text: Option<Result<String, String>>,
    objects_text: Option<Result<String, String>>,
    /// Namespace labels, when the config source may select namespaces by
    /// label (`None`: not watched).
    namespace_labels: Option<BTreeMap<String, Labels>>,
    /// The Namespaces have been listed (or are not watched): until then a
    /// pool selecting namespaces by label would refuse every namespace, and
    /// a Service could get an address from another pool for good.
    namespaces_listed: bool,
    /// The last config warning while the config is stale (for the
    /// condition of Services waiting for an address).
    config_problem: Option<String>,
    /// Handled Services without an address.
    pending: BTreeSet<ServiceKey>,
    /// The last failure reported per Service, so that a resync does not repeat it.
    last_failure: BTreeMap<ServiceKey, String>,
    /// Services no longer handled whose status ferrolb must clear.
    to_clear: BTreeSet<ServiceKey>,
    /// Services told that kube-proxy skips them (the service-proxy-name label).
    proxy_warned: BTreeSet<ServiceKey>,
    dirty: BTreeSet<ServiceKey>,
    notices: Vec<Notice>,
}

impl Engine {
    /// `classes`: the `loadBalancerClass` values to handle.
    pub fn new(classes: Classes, source: Source) -> Engine {
        Engine {
            source,
            configmap_text: None,
            objects_text: None,
            namespace_labels: source.reads_crds().then(BTreeMap::new),
            namespaces_listed: !source.reads_crds(),
            classes,
            allocator: Allocator::new(),
            services: BTreeMap::new(),
            listed: false,
            synced: false,
            gate: ConfigGate::new("nothing is assigned until a valid config is loaded"),
            config_problem: None,
            pending: BTreeSet::new(),
            last_failure: BTreeMap::new(),
            to_clear: BTreeSet::new(),
            proxy_warned: BTreeSet::new(),
            dirty: BTreeSet::new(),
            notices: Vec::new(),
        }
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }
    pub fn config_status(&self) -> ConfigStatus {
        ConfigStatus {
            loaded: self.gate.loaded(),
            stale: self.gate.stale(),
        }
    }
    /// The first full pass (learn every status, then assign) is done.
    pub fn is_synced(&self) -> bool {
        self.synced
    }
    pub fn pending(&self) -> &BTreeSet<ServiceKey> {
        &self.pending
    }
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }
    /// Services whose desired status may differ from what they show.
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceKey> {
        std::mem::take(&mut self.dirty)
    }

    /// The complete list of Services (the initial list, or a relist after a
    /// watch restarted): replaces what was known.
    pub fn services_listed(&mut self, list: Vec<Service>) {
        let fresh: BTreeMap<ServiceKey, Service> =
            list.into_iter().map(|s| (key_of(&s), s)).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        let changed: Vec<ServiceKey> = fresh
            .iter()
            .filter(|(k, s)| self.services.get(*k) != Some(*s))
            .map(|(k, _)| k.clone())
            .collect();
        self.services = fresh;
        self.listed = true;
        if self.synced {
            self.run(gone.into_iter().chain(changed));
        } else {
            self.try_sync();
        }
    }

    pub fn service_applied(&mut self, svc: Service) {
        let key = key_of(&svc);
        if self.services.get(&key) == Some(&svc) {
            return;
        }
        self.services.insert(key.clone(), svc);
        if self.synced {
            self.run([key]);
        }
    }

    pub fn service_deleted(&mut self, key: &ServiceKey) {
        if self.services.remove(key).is_some() && self.synced {
            self.run([key.clone()]);
        }
        self.to_clear.remove(key);
        self.proxy_warned.remove(key);
    }

    /// The ConfigMap changed (`None`: it does not exist).
    pub fn config_changed(&mut self, cm: Option<&ConfigMap>) {
        let text: Result<String, String> = match cm {
            None => Err("the ConfigMap does not exist".to_owned()),
            Some(cm) => ferrolb_runtime::service::config_text(cm),
        };
        self.configmap_text = Some(text);
        self.offer_config(cm.is_some());
    }

    /// The MetalLB objects changed: their text, or why they cannot be read.
    pub fn objects_changed(&mut self, text: Result<String, String>) {
        self.objects_text = Some(text);
        let on_configmap = matches!(self.configmap_text, Some(Ok(_)));
        self.offer_config(on_configmap);
    }

    /// Offers the sources' content to the gate once every source read is known.
    fn offer_config(&mut self, on_object: bool) {
        let input = Input {
            configmap: match (self.source.reads_configmap(), &self.configmap_text) {
                (false, _) => None,
                (true, None) => return,
                (true, Some(t)) => Some(t.clone()),
            },
            crds: match (self.source.reads_crds(), &self.objects_text) {
                (false, _) => None,
                (true, None) => return,
                (true, Some(t)) => Some(t.clone()),
            },
        };
        let allocator = &self.allocator;
        let outcome = self.gate.offer_input(input, |c| allocator.check_config(c));
        self.apply_config(outcome, on_object);
    }

    /// A Namespace's labels changed (`None`: deleted): Services there may
    /// now match other pools' namespace selectors.
    pub fn namespace_changed(&mut self, name: &str, labels: Option<Labels>) {
        let Some(known) = self.namespace_labels.as_mut() else {
            return;
        };
        let changed = match labels {
            Some(l) => known.insert(name.to_owned(), l.clone()) != Some(l),
            None => known.remove(name).is_some(),
        };
        if changed && self.synced {
            let keys: Vec<ServiceKey> = self
                .services
                .keys()
                .filter(|k| k.namespace == name)
                .cloned()
                .collect();
            self.run(keys);
        }
    }

    /// Every Namespace and its labels (the watch's first listing, or a
    /// relisting): replaces what was known; then the first pass may start.
    pub fn namespaces_listed(&mut self, list: BTreeMap<String, Labels>) {
        let Some(known) = self.namespace_labels.as_mut() else {
            return;
        };
        let changed: BTreeSet<String> = list
            .iter()
            .filter(|(n, l)| known.get(*n) != Some(*l))
            .map(|(n, _)| n.clone())
            .chain(known.keys().filter(|n| !list.contains_key(*n)).cloned())
            .collect();
        *known = list;
        self.namespaces_listed = true;
        if self.synced {
            let keys: Vec<ServiceKey> = self
                .services
                .keys()
                .filter(|k| changed.contains(&k.namespace))
                .cloned()
                .collect();
            self.run(keys);
        } else {
            self.try_sync();
        }
    }

    /// The labels of a Service's namespace, when known.
    fn labels_of_namespace(&self, namespace: &str) -> Option<&Labels> {
        self.namespace_labels.as_ref()?.get(namespace)
    }

    /// Carries out what the gate decided: the notice, and a new config
    /// handed to the allocator and every Service reconsidered.
    fn apply_config(&mut self, outcome: Outcome, on_object: bool) {
        let reason = outcome.reason();
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Missing { message } => {
                self.config_notice(Severity::Warning, "ConfigMissing", message, on_object)
            }
            Outcome::Invalid { message, problems } => {
                self.object_notices(problems);
                self.config_notice(Severity::Warning, "InvalidConfig", message, on_object)
            }
            Outcome::Refused { message, .. } => {
                if let Some(reason) = reason {
                    self.config_notice(Severity::Warning, reason, message, on_object);
                }
            }
            Outcome::Loaded {
                message,
                changed,
                notices,
                ..
            } => {
                self.object_notices(notices);
                self.config_notice(Severity::Normal, "ConfigLoaded", message, on_object);
                if changed {
                    let config = self.gate.in_force().cloned().expect("just loaded");
                    self.allocator
                        .set_config(config)
                        .expect("the gate checked that no held address is orphaned");
                    if self.synced {
                        let all: Vec<ServiceKey> = self.services.keys().cloned().collect();
                        self.run(all);
                    } else {
                        self.try_sync();
                    }
                }
            }
        }
    }

    /// What the Service's status should be; `None`: leave it alone.
    pub fn desired(&self, key: &ServiceKey) -> Option<Desired> {
        if !self.synced {
            return None;
        }
        let svc = self.services.get(key)?;
        if self.classes.held_by_finalizer(svc) {
            // Being deleted: the status stays as it is, the finalizer goes
            // (the address is released once the watch shows it gone).
            Some(Desired {
                finalizer: false,
                ..self.observed(key)?
            })
        } else if self.classes.handles(svc) {
            let shown = status_condition(svc, ASSIGNED);
            Some(match self.allocator.allocation(key) {
                Some(a) => {
                    let condition = match self.last_failure.get(key) {
                        Some(why) => (true, "LoadBalancerFailed", why.clone()),
                        None => (
                            true,
                            "IPAllocated",
                            format!("assigned {} from pool {:?}", list(&a.ips), a.pool),
                        ),
                    };
                    Desired {
                        finalizer: !a.ips.is_empty(),
                        ports: a
                            .ips
                            .iter()
                            .map(|ip| self.port_statuses(key, svc, *ip))
                            .collect(),
                        ips: a.ips,
                        pool: Some(a.pool),
                        assigned: Some(condition_for(svc, shown, condition)),
                    }
                }
                None => {
                    let mut why = self
                        .last_failure
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| "no address is assigned yet".to_owned());
                    if let (true, Some(problem)) = (self.gate.stale(), &self.config_problem) {
                        why.push_str(&format!(
                            "; the ConfigMap's current content is not in force: {problem}"
                        ));
                    }
                    Desired {
                        assigned: Some(condition_for(svc, shown, (false, "AllocationFailed", why))),
                        ..Desired::cleared()
                    }
                }
            })
        } else if self.to_clear.contains(key) || self.left_over_from_a_type_change(svc) {
            Some(Desired::cleared())
        } else {
            None
        }
    }

    /// A Service that is no longer of type LoadBalancer but still carries
    /// ferrolb's pool annotation or shows an address of one of its pools: a
    /// status write that landed after the type changed, or a type change made
    /// while no controller ran. Only a LoadBalancer Service may carry these,
    /// so they are cleared even when nothing else says this controller wrote
    /// them. A LoadBalancer Service of another class is never touched, pool
    /// annotation or not: it may belong to another ferrolb instance.
    fn left_over_from_a_type_change(&self, svc: &Service) -> bool {
        let not_lb = svc
            .spec
            .as_ref()
            .is_none_or(|s| s.type_.as_deref() != Some("LoadBalancer"));
        if !not_lb {
            return false;
        }
        pool_annotation(svc).is_some()
            || self.allocator.config().is_some_and(|config| {
                status_ips(svc)
                    .iter()
                    .any(|ip| config.locate(*ip).is_some())
            })
    }

    /// What the Service shows now, as far as the last watch event says.
    pub fn observed(&self, key: &ServiceKey) -> Option<Desired> {
        let svc = self.services.get(key)?;
        let ingress = status_ingress(svc);
        Some(Desired {
            ips: ingress.iter().map(|(ip, _)| *ip).collect(),
            ports: ingress.into_iter().map(|(_, p)| p).collect(),
            pool: pool_annotation(svc).map(str::to_owned),
            finalizer: has_finalizer(svc),
            assigned: status_condition(svc, ASSIGNED),
        })
    }

    /// The status write for `key` landed and the watch shows it: nothing left to clear.
    pub fn observed_clean(&mut self, key: &ServiceKey) {
        if self.observed(key) == Some(Desired::cleared()) {
            self.to_clear.remove(key);
        }
    }

    // === internals ===

    fn config_notice(
        &mut self,
        severity: Severity,
        reason: &'static str,
        message: String,
        on_object: bool,
    ) {
        match severity {
            Severity::Warning => self.config_problem = Some(message.clone()),
            Severity::Normal => self.config_problem = None,
        }
        self.notices.push(Notice::Config {
            severity,
            reason,
            message,
            on_object,
        });
    }

    /// An Event on each MetalLB object a problem names.
    fn object_notices(&mut self, problems: Vec<Problem>) {
        for p in problems {
            let (severity, reason) = match p.severity {
                crd::Severity::Error => (Severity::Warning, "InvalidConfig"),
                crd::Severity::Warning => (Severity::Warning, "ConfigWarning"),
                crd::Severity::Notice => (Severity::Normal, "ConfigNotice"),
            };
            // The first object is the one the field belongs to; another
            // (the other side of an overlap) hears the whole problem.
            let own = match &p.field {
                Some(f) => format!("{f}: {}", p.message),
                None => p.message.clone(),
            };
            let whole = p.to_string();
            for (i, target) in p.targets.into_iter().enumerate() {
                self.notices.push(Notice::Object {
                    target,
                    severity,
                    reason,
                    message: if i == 0 { own.clone() } else { whole.clone() },
                });
            }
        }
    }

    /// The first full pass, once the Services are listed and a config is loaded.
    fn try_sync(&mut self) {
        if self.synced
            || !self.listed
            || !self.namespaces_listed
            || self.allocator.config().is_none()
        {
            return;
        }
        // Learn every address already in a status, before any new one is given out.
        let handled: Vec<(ServiceKey, Service)> = self
            .services
            .iter()
            .filter(|(_, s)| self.classes.handles(s) || self.classes.held_by_finalizer(s))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (_, svc) in &handled {
            let ips = status_ips(svc);
            let ns_labels = self.labels_of_namespace(&key_of(svc).namespace).cloned();
            if let (false, Ok(spec)) = (ips.is_empty(), spec_of(svc, ns_labels)) {
                // A status that cannot be learned is replaced by the pass below.
                let _ = self.allocator.learn(&spec, &ips);
            }
        }
        self.synced = true;
        let all: Vec<ServiceKey> = self.services.keys().cloned().collect();
        self.run(all);
    }

    /// Reconciles `keys`, then every pending Service whenever addresses were freed.
    fn run(&mut self, keys: impl IntoIterator<Item = ServiceKey>) {
        let mut queue: VecDeque<ServiceKey> = keys.into_iter().collect();
        let mut budget = 4 * (self.services.len() + queue.len()) + 16;
        while let Some(key) = queue.pop_front() {
            if self.reconcile(&key) {
                if self.gate.has_refused() {
                    let allocator = &self.allocator;
                    let outcome = self.gate.retry(|c| allocator.check_config(c));
                    self.apply_config(outcome, true);
                }
                queue.extend(self.pending.iter().filter(|k| **k != key).cloned());
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
    }

    /// Brings one Service in line; returns whether addresses were freed.
    fn reconcile(&mut self, key: &ServiceKey) -> bool {
        self.dirty.insert(key.clone());
        let Some(svc) = self.services.get(key) else {
            self.pending.remove(key);
            self.last_failure.remove(key);
            self.proxy_warned.remove(key);
            return self.allocator.release(key).is_some();
        };
        if self.classes.held_by_finalizer(svc) {
            // Deleted, but its address is held until the finalizer is gone:
            // no other Service gets it while this one still exists.
            self.pending.remove(key);
            self.last_failure.remove(key);
            return false;
        }
        if !self.classes.handles(svc) {
            let why = if svc.metadata.deletion_timestamp.is_some() {
                "being deleted"
            } else {
                "no longer handled by ferrolb"
            };
            self.pending.remove(key);
            self.last_failure.remove(key);
            self.proxy_warned.remove(key);
            if let Some(ips) = self.allocator.release(key) {
                self.to_clear.insert(key.clone());
                self.notice(
                    key,
                    Severity::Normal,
                    "IPReleased",
                    format!("released {} (the Service is {why})", list(&ips)),
                );
                return true;
            }
            return false;
        }
        match service_proxy_name(svc).map(str::to_owned) {
            Some(proxy) if !self.proxy_warned.contains(key) => {
                // Fields, not `self.notice`: `svc` is still borrowed.
                self.proxy_warned.insert(key.clone());
                self.notices.push(Notice::Service {
                    key: key.clone(),
                    severity: Severity::Warning,
                    reason: "NoKubeProxy",
                    message: format!(
                        "the Service is labelled service.kubernetes.io/service-proxy-name={proxy:?}, so kube-proxy skips it: its load-balancer address will not carry traffic through kube-proxy (the address is still assigned; the proxy named must serve it)"
                    ),
                    cause: None,
                });
            }
            Some(_) => {}
            None => {
                self.proxy_warned.remove(key);
            }
        }
        let spec = match spec_of(svc, self.labels_of_namespace(&key.namespace).cloned()) {
            Ok(spec) => spec,
            Err(why) => {
                if self.allocator.allocation(key).is_none() {
                    self.pending.insert(key.clone());
                }
                self.fail(
                    key,
                    "invalid_request",
                    format!("{why}{}", self.keeping(key)),
                );
                return false;
            }
        };
        let status = status_ips(svc);
        match self.allocator.ensure(&spec, &status) {
            Ok(done) => {
                self.pending.remove(key);
                self.last_failure.remove(key);
                let a = &done.allocation;
                match done.change {
                    Change::None => false,
                    Change::New => {
                        self.notice(
                            key,
                            Severity::Normal,
                            "IPAllocated",
                            format!("assigned {} from pool {:?}", list(&a.ips), a.pool),
                        );
                        false
                    }
                    Change::Added => {
                        self.notice(
                            key,
                            Severity::Normal,
                            "IPAllocated",
                            format!(
                                "assigned additional address: now {} from pool {:?}",
                                list(&a.ips),
                                a.pool
                            ),
                        );
                        false
                    }
                    Change::Replaced { previous, reason } => {
                        self.notice(
                            key,
                            Severity::Normal,
                            "IPAllocated",
                            format!(
                                "assigned {} from pool {:?} instead of {}: {reason}",
                                list(&a.ips),
                                a.pool,
                                list(&previous)
                            ),
                        );
                        previous.iter().any(|ip| !a.ips.contains(ip))
                    }
                }
            }
            Err(e) => {
                if e.kept.is_none() {
                    self.pending.insert(key.clone());
                }
                let kept = e
                    .kept
                    .map(|k| format!("; keeping {} from pool {:?}", list(&k.ips), k.pool))
                    .unwrap_or_default();
                self.fail(key, e.error.reason(), format!("{}{kept}", e.error));
                false
            }
        }
    }

    /// `ports[]` for one of the Service's addresses: every Service port, with
    /// an error on those another holder of the address also uses.
    fn port_statuses(&self, key: &ServiceKey, svc: &Service, ip: IpAddr) -> Vec<PortStatus> {
        let ports: Vec<(i32, String)> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
            .collect();
        let keys: Vec<PortKey> = ports
            .iter()
            .filter_map(|(port, proto)| {
                Some(PortKey {
                    protocol: proto.parse::<Protocol>().ok()?,
                    port: u16::try_from(*port).ok()?,
                })
            })
            .collect();
        let clashing = self.allocator.clashing_ports(key, ip, &keys);
        ports
            .into_iter()
            .map(|(port, protocol)| {
                let clash = clashing.iter().any(|k| {
                    i32::from(k.port) == port
                        && protocol.parse::<Protocol>().ok() == Some(k.protocol)
                });
                PortStatus {
                    port,
                    protocol,
                    error: clash.then(|| PORT_CONFLICT.to_owned()),
                }
            })
            .collect()
    }

    fn keeping(&self, key: &ServiceKey) -> String {
        self.allocator
            .allocation(key)
            .map(|a| format!("; keeping {}", list(&a.ips)))
            .unwrap_or_default()
    }

    /// A Warning for a Service whose request cannot be met: `AllocationFailed`
    /// when it has no address, `LoadBalancerFailed` (MetalLB's reason for an
    /// invalid request on a Service that has one) when it keeps its address.
    fn fail(&mut self, key: &ServiceKey, cause: &'static str, message: String) {
        if self.last_failure.get(key) == Some(&message) {
            return;
        }
        self.last_failure.insert(key.clone(), message.clone());
        let reason = if self.allocator.allocation(key).is_some() {
            "LoadBalancerFailed"
        } else {
            "AllocationFailed"
        };
        self.notices.push(Notice::Service {
            key: key.clone(),
            severity: Severity::Warning,
            reason,
            message,
            cause: Some(cause),
        });
    }

    fn notice(
        &mut self,
        key: &ServiceKey,
        severity: Severity,
        reason: &'static str,
        message: String,
    ) {
        self.notices.push(Notice::Service {
            key: key.clone(),
            severity,
            reason,
            message,
            cause: None,
        });
    }

    /// The `metadata.uid` of the Service object now known under `key`.
    pub fn uid(&self, key: &ServiceKey) -> Option<String> {
        self.services.get(key)?.metadata.uid.clone()
    }

    /// The Service as last seen, for Event references.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }
}

/// A condition for `svc` from (status, reason, message): the transition
/// time shown is kept while the status stays the same.
fn condition_for(
    svc: &Service,
    shown: Option<Condition>,
    (status, reason, message): (bool, &str, String),
) -> Condition {
    Condition {
        status,
        reason: reason.to_owned(),
        message: truncate(message, 32_000),
        generation: svc.metadata.generation.unwrap_or(0),
        since: shown.filter(|c| c.status == status).and_then(|c| c.since),
    }
}

/// `s` cut to at most `max` bytes, with `...` when it was cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
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

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
