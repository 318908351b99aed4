//! The engine fed with Services and ConfigMaps built in memory.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort,
    ServiceSpec as K8sSpec, ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

const POOLS: &str =
    "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1-192.0.2.2]\n";

fn cm(text: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("config".into()),
            namespace: Some("ferrolb-system".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("config".to_owned(), text.to_owned())])),
        ..Default::default()
    }
}

/// `lb("ns", "name")` is a LoadBalancer Service with one TCP port.
fn lb(ns: &str, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(K8sSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ip_families: Some(vec!["IPv4".into()]),
            ip_family_policy: Some("SingleStack".into()),
            ..Default::default()
        }),
        status: None,
    }
}

trait Build {
    fn with_status(self, ips: &[&str]) -> Self;
    fn annotated(self, k: &str, v: &str) -> Self;
    fn of_type(self, t: &str) -> Self;
    fn class(self, c: &str) -> Self;
}

impl Build for Service {
    fn with_status(mut self, ips: &[&str]) -> Self {
        self.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        self
    }
    fn annotated(mut self, k: &str, v: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }
    fn of_type(mut self, t: &str) -> Self {
        self.spec.as_mut().unwrap().type_ = Some(t.into());
        self
    }
    fn class(mut self, c: &str) -> Self {
        self.spec.as_mut().unwrap().load_balancer_class = Some(c.into());
        self
    }
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name)
}

fn ips(e: &Engine, ns: &str, name: &str) -> Vec<String> {
    e.desired(&key(ns, name))
        .map(|d| d.ips.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

fn reasons(e: &mut Engine) -> Vec<&'static str> {
    e.take_notices()
        .into_iter()
        .map(|n| match n {
            Notice::Service { reason, .. }
            | Notice::Config { reason, .. }
            | Notice::Object { reason, .. } => reason,
        })
        .collect()
}

fn started(pools: &str, services: Vec<Service>) -> Engine {
    let mut e = Engine::new(Classes::default(), Source::ConfigMap);
    e.config_changed(Some(&cm(pools)));
    e.services_listed(services);
    assert!(e.is_synced());
    e
}

#[test]
fn nothing_is_assigned_before_a_config_is_loaded() {
    let mut e = Engine::new(Classes::default(), Source::ConfigMap);
    e.services_listed(vec![lb("ns", "a")]);
    assert!(!e.is_synced());
    assert_eq!(e.desired(&key("ns", "a")), None);
    e.config_changed(Some(&cm("address-pools: [\n")));
    assert_eq!(
        e.desired(&key("ns", "a")),
        None,
        "an invalid first config assigns nothing"
    );
    assert!(e.config_status().stale && !e.config_status().loaded);
    e.config_changed(Some(&cm(POOLS)));
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.1"]);
}

#[test]
fn restart_learns_every_status_before_assigning() {
    // "b" (listed first) is pending; "z" already holds .1. A naive pass would give .1 to "b".
    let e = started(
        POOLS,
        vec![lb("ns", "b"), lb("ns", "z").with_status(&["192.0.2.1"])],
    );
    assert_eq!(ips(&e, "ns", "z"), ["192.0.2.1"]);
    assert_eq!(ips(&e, "ns", "b"), ["192.0.2.2"]);
}

#[test]
fn events_say_which_address_from_which_pool() {
    let mut e = started(POOLS, vec![]);
    reasons(&mut e);
    e.service_applied(lb("ns", "a"));
    let notices = e.take_notices();
    assert_eq!(
        notices,
        [Notice::Service {
            key: key("ns", "a"),
            severity: Severity::Normal,
            reason: "IPAllocated",
            message: "assigned 192.0.2.1 from pool \"default\"".into(),
            cause: None,
        }]
    );
    assert_eq!(
        e.desired(&key("ns", "a")).unwrap().pool.as_deref(),
        Some("default")
    );
}

#[test]
fn exhausted_pool_is_a_warning_once_and_retried_when_freed() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b"), lb("ns", "c")]);
    assert_eq!(ips(&e, "ns", "c"), Vec::<String>::new());
    assert!(reasons(&mut e).contains(&"AllocationFailed"));
    // A resync of the same Service does not repeat the warning.
    e.service_applied(lb("ns", "c").annotated("x", "y"));
    assert!(!reasons(&mut e).contains(&"AllocationFailed"));
    // Deleting a holder frees an address: the pending Service gets it at once.
    e.service_deleted(&key("ns", "a"));
    assert_eq!(ips(&e, "ns", "c"), ["192.0.2.1"]);
}

#[test]
fn type_change_releases_clears_status_and_serves_pending() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b"), lb("ns", "c")]);
    let a = lb("ns", "a")
        .with_status(&["192.0.2.1"])
        .annotated("ferrolb.io/ip-allocated-from-pool", "default");
    e.service_applied(a.clone());
    e.service_applied(a.of_type("ClusterIP"));
    assert_eq!(e.desired(&key("ns", "a")), Some(Desired::cleared()));
    assert_eq!(ips(&e, "ns", "c"), ["192.0.2.1"]);
    assert!(reasons(&mut e).contains(&"IPReleased"));
}

#[test]
fn services_of_other_classes_or_types_are_never_touched() {
    let e = started(
        POOLS,
        vec![
            lb("ns", "other")
                .class("example.com/other")
                .with_status(&["203.0.113.9"]),
            lb("ns", "np").of_type("NodePort"),
        ],
    );
    assert_eq!(e.desired(&key("ns", "other")), None);
    assert_eq!(e.desired(&key("ns", "np")), None);
    // A controller given a class handles only that class.
    let mut c = Engine::new(
        Classes {
            names: ["ferrolb.io/lb".to_owned()].into(),
            without_class: false,
        },
        Source::ConfigMap,
    );
    c.config_changed(Some(&cm(POOLS)));
    c.services_listed(vec![
        lb("ns", "mine").class("ferrolb.io/lb"),
        lb("ns", "plain"),
    ]);
    assert_eq!(ips(&c, "ns", "mine"), ["192.0.2.1"]);
    assert_eq!(c.desired(&key("ns", "plain")), None);
}

#[test]
fn stale_config_is_refused_then_accepted_once_the_holder_is_gone() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b")]);
    reasons(&mut e);
    let shrunk =
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n";
    e.config_changed(Some(&cm(shrunk)));
    let notices = e.take_notices();
    let Notice::Config {
        reason, message, ..
    } = &notices[0]
    else {
        panic!("{notices:?}")
    };
    assert_eq!(*reason, "StaleConfig");
    assert!(message.contains("192.0.2.2 (held by ns/b)"), "{message}");
    assert!(e.config_status().stale);
    assert_eq!(
        ips(&e, "ns", "b"),
        ["192.0.2.2"],
        "nothing loses its address"
    );
    e.service_deleted(&key("ns", "b"));
    assert!(
        !e.config_status().stale,
        "accepted once no held address is orphaned"
    );
    assert_eq!(e.allocator().config().unwrap().pools[0].ranges.len(), 1);
}

#[test]
fn invalid_config_keeps_the_last_good_one() {
    let mut e = started(POOLS, vec![lb("ns", "a")]);
    e.config_changed(Some(&cm("address-pools:\n- name: x\n  protocol: bgp\n")));
    assert!(e.config_status().stale);
    assert!(reasons(&mut e).contains(&"InvalidConfig"));
    e.service_applied(lb("ns", "b"));
    assert_eq!(ips(&e, "ns", "b"), ["192.0.2.2"], "old pools still serve");
}

#[test]
fn deleted_configmap_keeps_the_config_and_says_so() {
    let mut e = started(POOLS, vec![lb("ns", "a")]);
    reasons(&mut e);
    e.config_changed(None);
    assert!(e.config_status().stale);
    let notices = e.take_notices();
    assert!(
        matches!(
            &notices[0],
            Notice::Config {
                reason: "ConfigMissing",
                on_object: false,
                ..
            }
        ),
        "{notices:?}"
    );
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.1"]);
}

#[test]
fn bad_annotations_are_a_warning_and_keep_the_address() {
    let mut e = started(POOLS, vec![lb("ns", "a")]);
    reasons(&mut e);
    e.service_applied(
        lb("ns", "a")
            .with_status(&["192.0.2.1"])
            .annotated("ferrolb.io/address-pool", "x")
            .annotated("metallb.universe.tf/address-pool", "y"),
    );
    let notices = e.take_notices();
    let Notice::Service {
        reason, message, ..
    } = &notices[0]
    else {
        panic!()
    };
    // It keeps its address: MetalLB's reason for that case.
    assert_eq!(*reason, "LoadBalancerFailed");
    assert!(
        message.contains("disagree") && message.contains("keeping 192.0.2.1"),
        "{message}"
    );
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.1"]);
}

#[test]
fn relist_after_a_lost_watch_releases_deleted_services() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b"), lb("ns", "c")]);
    e.services_listed(vec![lb("ns", "b"), lb("ns", "c")]);
    assert_eq!(ips(&e, "ns", "c"), ["192.0.2.1"]);
    assert_eq!(ips(&e, "ns", "b"), ["192.0.2.2"]);
}

fn config_notices(e: &mut Engine) -> Vec<(&'static str, String)> {
    e.take_notices()
        .into_iter()
        .filter_map(|n| match n {
            Notice::Config {
                reason, message, ..
            } => Some((reason, message)),
            Notice::Service { .. } | Notice::Object { .. } => None,
        })
        .collect()
}

const BAD: &str = "address-pools:\n- name: x\n  protocol: bgp\n";

/// Every transition is heard: good to bad, bad to good (even back to the
/// config in force), the same bad config again after a fix, and a good
/// change that keeps the number of pools.
#[test]
fn every_config_transition_has_its_notice() {
    let mut e = started(POOLS, vec![]);
    let first = config_notices(&mut e);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "ConfigLoaded");
    assert!(first[0].1.contains("added pool \"default\""), "{first:?}");

    for round in 0..5 {
        e.config_changed(Some(&cm(BAD)));
        let n = config_notices(&mut e);
        assert_eq!(n.len(), 1, "round {round}: good to bad: {n:?}");
        assert_eq!(n[0].0, "InvalidConfig");
        assert!(e.config_status().stale);

        e.config_changed(Some(&cm(POOLS)));
        let n = config_notices(&mut e);
        assert_eq!(n.len(), 1, "round {round}: bad to the same good: {n:?}");
        assert_eq!(n[0].0, "ConfigLoaded");
        assert!(n[0].1.contains("unchanged"), "{n:?}");
        assert!(!e.config_status().stale);
    }

    // A good change with the same number of pools says what changed.
    let bigger =
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1-192.0.2.4]\n";
    e.config_changed(Some(&cm(bigger)));
    let n = config_notices(&mut e);
    assert_eq!(
        n,
        vec![(
            "ConfigLoaded",
            "config loaded: 1 address pool: pool \"default\" resized from 2 to 4 addresses"
                .to_owned()
        )]
    );

    // The same content again (a resync) and the same config in another text
    // (a comment added) stay silent.
    e.config_changed(Some(&cm(bigger)));
    e.config_changed(Some(&cm(&format!("# a comment\n{bigger}"))));
    assert_eq!(config_notices(&mut e), vec![]);

    // Missing, then back: both heard.
    e.config_changed(None);
    assert_eq!(config_notices(&mut e)[0].0, "ConfigMissing");
    e.config_changed(None);
    assert_eq!(config_notices(&mut e), vec![], "still missing: no news");
    e.config_changed(Some(&cm(bigger)));
    assert_eq!(config_notices(&mut e)[0].0, "ConfigLoaded");
}

/// A refused config is retried whenever addresses are freed; the retry
/// repeats its Event only when the refusal changed, but applying the same
/// refused config again after a fix is heard again.
#[test]
fn a_refused_config_is_heard_on_each_apply_but_not_on_each_retry() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b"), lb("ns", "c")]);
    config_notices(&mut e);
    let shrunk =
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n";
    e.config_changed(Some(&cm(shrunk)));
    assert_eq!(config_notices(&mut e)[0].0, "StaleConfig");
    // c was pending: deleting it frees nothing, and a retry with the same
    // orphans is not repeated.
    e.service_deleted(&key("ns", "c"));
    e.service_applied(lb("ns", "d"));
    assert_eq!(config_notices(&mut e), vec![]);
    // Back to the good config, then the same refused one: heard both times.
    e.config_changed(Some(&cm(POOLS)));
    assert_eq!(config_notices(&mut e)[0].0, "ConfigLoaded");
    e.config_changed(Some(&cm(shrunk)));
    assert_eq!(config_notices(&mut e)[0].0, "StaleConfig");
}

/// A status write that lands after the Service stopped being a LoadBalancer
/// (it was in flight), or a type change made while no controller ran: the
/// address is cleared although no pool annotation or memory says it is ours.
#[test]
fn a_former_load_balancer_showing_our_address_is_cleared() {
    let mut e = started(POOLS, vec![lb("ns", "a")]);
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.1"]);
    // The type changes before the status write lands: nothing to clear yet.
    e.service_applied(lb("ns", "a").of_type("ClusterIP"));
    e.observed_clean(&key("ns", "a"));
    // Then the in-flight write lands.
    e.service_applied(
        lb("ns", "a")
            .of_type("ClusterIP")
            .with_status(&["192.0.2.1"]),
    );
    assert_eq!(e.desired(&key("ns", "a")), Some(Desired::cleared()));

    // A controller that starts with such a Service clears it too; one showing
    // an address outside every pool is someone else's and left alone.
    let e = started(
        POOLS,
        vec![
            lb("ns", "b")
                .of_type("NodePort")
                .with_status(&["192.0.2.2"]),
            lb("ns", "c")
                .of_type("NodePort")
                .with_status(&["203.0.113.9"]),
        ],
    );
    assert_eq!(e.desired(&key("ns", "b")), Some(Desired::cleared()));
    assert_eq!(e.desired(&key("ns", "c")), None);
}

/// A LoadBalancer Service of another class is never touched, even when it
/// carries a pool annotation and an address from one of our pools: another
/// ferrolb instance (another class) wrote them. Found on a real cluster,
/// where every test's controller sees every test's Services.
#[test]
fn another_class_with_a_pool_annotation_is_left_alone() {
    let e = started(
        POOLS,
        vec![
            lb("ns", "theirs")
                .class("ferrolb.io/other")
                .annotated("ferrolb.io/ip-allocated-from-pool", "default")
                .with_status(&["192.0.2.1"]),
        ],
    );
    assert_eq!(e.desired(&key("ns", "theirs")), None);
}

fn deleting(mut svc: Service) -> Service {
    svc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    svc
}

fn finalized(mut svc: Service) -> Service {
    svc.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(crate::service::FINALIZER.to_owned());
    svc
}

#[test]
fn the_finalizer_comes_with_the_address_and_goes_with_it() {
    let mut e = started(
        POOLS,
        vec![lb("ns", "a"), lb("ns", "np").of_type("NodePort")],
    );
    let a = e.desired(&key("ns", "a")).unwrap();
    assert!(a.finalizer, "a Service with an address gets the finalizer");
    assert_eq!(e.desired(&key("ns", "np")), None, "nor any other Service");
    // A type change releases the address and removes the finalizer.
    e.service_applied(
        finalized(lb("ns", "a").with_status(&["192.0.2.1"]))
            .annotated(ferrolb_core::service::ALLOCATED_FROM_POOL, "default")
            .of_type("ClusterIP"),
    );
    assert_eq!(e.desired(&key("ns", "a")), Some(Desired::cleared()));
}

#[test]
fn a_deleted_service_holds_its_address_until_its_finalizer_is_gone() {
    let held = finalized(lb("ns", "a").with_status(&["192.0.2.1"]))
        .annotated(ferrolb_core::service::ALLOCATED_FROM_POOL, "default");
    let mut e = started(
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n",
        vec![held.clone()],
    );
    e.service_applied(lb("ns", "b"));
    assert_eq!(ips(&e, "ns", "b"), Vec::<String>::new());
    e.service_applied(deleting(held.clone()));
    let want = Desired {
        ips: vec!["192.0.2.1".parse().unwrap()],
        ports: vec![vec![]],
        pool: Some("default".into()),
        finalizer: false,
        assigned: None,
    };
    assert_eq!(
        e.desired(&key("ns", "a")),
        Some(want),
        "only the finalizer goes"
    );
    assert_eq!(
        ips(&e, "ns", "b"),
        Vec::<String>::new(),
        "not reused while the deleted Service exists"
    );
    e.service_deleted(&key("ns", "a"));
    assert_eq!(ips(&e, "ns", "b"), ["192.0.2.1"]);
}

#[test]
fn a_service_deleted_while_no_controller_ran_is_learned_then_released() {
    let held = deleting(finalized(lb("ns", "a").with_status(&["192.0.2.1"])));
    let e = started(
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1/32]\n",
        vec![held, lb("ns", "b")],
    );
    assert!(!e.desired(&key("ns", "a")).unwrap().finalizer);
    assert_eq!(
        ips(&e, "ns", "b"),
        Vec::<String>::new(),
        "its address is learned, not handed out"
    );
}

#[test]
fn several_classes_and_services_without_one() {
    let classes = |without_class| Classes {
        names: ["a.example/lb".to_owned(), "b.example/lb".to_owned()].into(),
        without_class,
    };
    let services = vec![
        lb("ns", "a").class("a.example/lb"),
        lb("ns", "b").class("b.example/lb"),
        lb("ns", "none"),
        lb("ns", "other").class("c.example/lb"),
    ];
    let pools =
        "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.1-192.0.2.9]\n";
    for without_class in [true, false] {
        let mut e = Engine::new(classes(without_class), Source::ConfigMap);
        e.config_changed(Some(&cm(pools)));
        e.services_listed(services.clone());
        assert_eq!(ips(&e, "ns", "a").len(), 1);
        assert_eq!(ips(&e, "ns", "b").len(), 1);
        assert_eq!(e.desired(&key("ns", "other")), None);
        assert_eq!(
            e.desired(&key("ns", "none")).is_some(),
            without_class,
            "a Service without a class is handled unless told otherwise"
        );
    }
}

#[test]
fn service_proxy_name_is_warned_about_once_and_still_assigned() {
    let mut labelled = lb("ns", "a");
    labelled.metadata.labels = Some(BTreeMap::from([(
        crate::service::SERVICE_PROXY_NAME.to_owned(),
        "my-proxy".to_owned(),
    )]));
    let mut e = started(POOLS, vec![labelled.clone()]);
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.1"]);
    let r = reasons(&mut e);
    assert_eq!(
        r.iter().filter(|r| **r == "NoKubeProxy").count(),
        1,
        "{r:?}"
    );
    // A resync, and the status written: no second warning.
    e.services_listed(vec![labelled.clone()]);
    e.service_applied(labelled.with_status(&["192.0.2.1"]));
    assert!(!reasons(&mut e).contains(&"NoKubeProxy"));
}

fn condition(e: &Engine, ns: &str, name: &str) -> Condition {
    e.desired(&key(ns, name))
        .and_then(|d| d.assigned)
        .expect("a handled Service has the condition")
}

fn service_messages(e: &mut Engine) -> Vec<(&'static str, String)> {
    e.take_notices()
        .into_iter()
        .filter_map(|n| match n {
            Notice::Service {
                reason, message, ..
            } => Some((reason, message)),
            Notice::Config { .. } | Notice::Object { .. } => None,
        })
        .collect()
}

/// Sets the status the watch would show after the engine's write.
fn as_written(e: &Engine, mut svc: Service) -> Service {
    let d = e.desired(&key_of(&svc)).unwrap();
    let shown: Vec<String> = d.ips.iter().map(ToString::to_string).collect();
    let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
    svc = svc.with_status(&shown);
    let c = d.assigned.unwrap();
    svc.status.as_mut().unwrap().conditions = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: ASSIGNED.into(),
            status: if c.status { "True" } else { "False" }.into(),
            reason: c.reason,
            message: c.message,
            observed_generation: Some(c.generation),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-30T10:00:00Z".parse().unwrap(),
            ),
        },
    ]);
    svc
}

#[test]
fn the_assigned_condition_says_what_was_assigned_with_the_ports() {
    let mut svc = lb("ns", "a");
    svc.metadata.generation = Some(3);
    let e = started(POOLS, vec![svc]);
    let c = condition(&e, "ns", "a");
    assert!(c.status);
    assert_eq!(c.reason, "IPAllocated");
    assert_eq!(c.message, "assigned 192.0.2.1 from pool \"default\"");
    assert_eq!(c.generation, 3);
    assert_eq!(c.since, None, "a new condition is stamped when written");
    let d = e.desired(&key("ns", "a")).unwrap();
    assert_eq!(
        d.ports,
        vec![vec![PortStatus {
            port: 80,
            protocol: "TCP".into(),
            error: None
        }]]
    );
}

#[test]
fn a_pending_service_shows_the_same_reason_and_message_as_its_event() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b")]);
    e.take_notices();
    e.service_applied(lb("ns", "c"));
    let (reason, message) = service_messages(&mut e).pop().unwrap();
    assert_eq!(reason, "AllocationFailed");
    let c = condition(&e, "ns", "c");
    assert!(!c.status);
    assert_eq!((c.reason.as_str(), &c.message), (reason, &message));
    assert!(message.contains("no free"), "{message}");
    assert_eq!(
        e.desired(&key("ns", "c")).unwrap().ips,
        Vec::<IpAddr>::new()
    );
}

#[test]
fn a_pending_service_is_told_when_the_config_is_not_in_force() {
    let mut e = started(POOLS, vec![lb("ns", "a"), lb("ns", "b"), lb("ns", "c")]);
    e.config_changed(Some(&cm("address-pools: [\n")));
    let c = condition(&e, "ns", "c");
    assert!(!c.status);
    assert!(
        c.message
            .contains("the ConfigMap's current content is not in force: config refused"),
        "{}",
        c.message
    );
    // Assigned ones are unaffected.
    assert_eq!(condition(&e, "ns", "a").reason, "IPAllocated");
}

#[test]
fn a_service_that_keeps_its_address_after_a_refused_change_says_so() {
    let mut e = started(POOLS, vec![lb("ns", "a")]);
    e.take_notices();
    e.service_applied(
        lb("ns", "a").annotated("metallb.universe.tf/loadBalancerIPs", "203.0.113.1"),
    );
    let (reason, message) = service_messages(&mut e).pop().unwrap();
    assert_eq!(reason, "LoadBalancerFailed");
    let c = condition(&e, "ns", "a");
    assert!(c.status, "the address is still assigned");
    assert_eq!((c.reason.as_str(), &c.message), (reason, &message));
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.1"]);
}

#[test]
fn the_transition_time_shown_is_kept_while_the_status_stays() {
    let mut e = started(POOLS, vec![lb("ns", "a")]);
    let shown = as_written(&e, lb("ns", "a"));
    e.service_applied(shown.clone());
    let d = e.desired(&key("ns", "a")).unwrap();
    assert_eq!(
        d.assigned.as_ref().unwrap().since.as_deref(),
        Some("2026-11-30T10:00:00Z")
    );
    assert_eq!(
        e.observed(&key("ns", "a")).unwrap().assigned,
        d.assigned,
        "nothing to write"
    );
    // The generation changes (a spec edit): the time stays, the generation follows.
    let mut edited = shown;
    edited.metadata.generation = Some(2);
    e.service_applied(edited);
    let c = condition(&e, "ns", "a");
    assert_eq!(
        (c.generation, c.since.as_deref()),
        (2, Some("2026-11-30T10:00:00Z"))
    );
}

#[test]
fn a_port_that_clashes_on_a_kept_shared_address_carries_an_error() {
    let shared = |name: &str, ports: &[i32]| {
        let mut s = lb("ns", name)
            .annotated("metallb.universe.tf/allow-shared-ip", "k")
            .annotated("metallb.universe.tf/loadBalancerIPs", "192.0.2.1");
        s.spec.as_mut().unwrap().ports = Some(
            ports
                .iter()
                .map(|p| ServicePort {
                    port: *p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        );
        s
    };
    let mut e = started(POOLS, vec![shared("a", &[80]), shared("b", &[81])]);
    assert_eq!(ips(&e, "ns", "b"), ["192.0.2.1"]);
    let b = as_written(&e, shared("b", &[81]));
    e.service_applied(b.clone());
    let mut changed = shared("b", &[80, 81]);
    changed.status = b.status;
    e.service_applied(changed);
    let d = e.desired(&key("ns", "b")).unwrap();
    assert_eq!(d.ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    let errors: Vec<(i32, Option<&str>)> = d.ports[0]
        .iter()
        .map(|p| (p.port, p.error.as_deref()))
        .collect();
    assert_eq!(errors, [(80, Some(PORT_CONFLICT)), (81, None)]);
    assert_eq!(d.assigned.unwrap().reason, "LoadBalancerFailed");
}

// === MetalLB's objects as the config source ===

const OBJECTS: &str = "apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: staging, namespace: metallb-system}
spec:
  addresses: [192.0.2.10/32]
  serviceAllocation:
    namespaceSelectors:
    - matchLabels: {env: staging}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: rest, namespace: metallb-system}
spec:
  addresses: [192.0.2.20/32]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: all, namespace: metallb-system}
";

fn ns_labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn object_notices(e: &mut Engine) -> Vec<(String, &'static str, String)> {
    e.take_notices()
        .into_iter()
        .filter_map(|n| match n {
            Notice::Object {
                target,
                reason,
                message,
                ..
            } => Some((format!("{} {}", target.kind, target.name), reason, message)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_objects_source_waits_for_the_objects_and_selects_namespaces_by_label() {
    let mut e = Engine::new(Classes::default(), Source::Crds);
    e.namespaces_listed(BTreeMap::from([(
        "qa".to_owned(),
        ns_labels(&[("env", "staging")]),
    )]));
    e.services_listed(vec![lb("qa", "a")]);
    assert!(!e.is_synced(), "nothing before the objects are listed");
    e.config_changed(Some(&cm(POOLS)));
    assert!(!e.is_synced(), "the ConfigMap is not a source here");
    e.objects_changed(Ok(OBJECTS.into()));
    assert!(e.is_synced());
    assert_eq!(ips(&e, "qa", "a"), ["192.0.2.10"]);
}

#[test]
fn a_relabelled_namespace_gets_the_pool_its_labels_select() {
    let mut e = Engine::new(Classes::default(), Source::Crds);
    e.namespaces_listed(BTreeMap::from([("dev".to_owned(), ns_labels(&[]))]));
    e.objects_changed(Ok(OBJECTS.into()));
    e.services_listed(vec![lb("dev", "a"), lb("dev", "b")]);
    // "rest" has one address; "staging" does not admit dev yet.
    let mut got: Vec<Vec<String>> = vec![ips(&e, "dev", "a"), ips(&e, "dev", "b")];
    got.sort();
    assert_eq!(got, [vec![], vec!["192.0.2.20".to_owned()]]);
    e.namespace_changed("dev", Some(ns_labels(&[("env", "staging")])));
    let mut got: Vec<String> = [ips(&e, "dev", "a"), ips(&e, "dev", "b")].concat();
    got.sort();
    assert_eq!(got, ["192.0.2.10", "192.0.2.20"]);
}

#[test]
fn an_invalid_object_gets_a_warning_on_itself_and_the_last_good_config_stays() {
    let mut e = Engine::new(Classes::default(), Source::Crds);
    e.namespaces_listed(BTreeMap::new());
    e.objects_changed(Ok(OBJECTS.into()));
    e.services_listed(vec![lb("ns", "a")]);
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.20"]);
    e.take_notices();
    let broken = format!(
        "{OBJECTS}---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: broken, namespace: metallb-system}}\nspec:\n  addresses: [192.0.2.20/32]\n"
    );
    e.objects_changed(Ok(broken));
    let notices: Vec<_> = object_notices(&mut e)
        .into_iter()
        .filter(|n| n.1 == "InvalidConfig")
        .collect();
    // The overlap is said on both pools: the field's owner first.
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert_eq!(notices[0].0, "IPAddressPool broken");
    assert!(notices[0].2.starts_with("spec.addresses[0]: \"192.0.2.20/32\" overlaps with entry \"192.0.2.20/32\" of IPAddressPool metallb-system/rest"), "{notices:?}");
    assert_eq!(notices[1].0, "IPAddressPool rest");
    assert!(
        notices[1]
            .2
            .starts_with("IPAddressPool metallb-system/broken, spec.addresses[0]: "),
        "{notices:?}"
    );
    assert!(e.config_status().stale);
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.20"], "nothing is lost");
    // The kinds disappear (CRDs deleted): the last good config stays too.
    e.objects_changed(Err("the IPAddressPool kind is not served".into()));
    assert_eq!(ips(&e, "ns", "a"), ["192.0.2.20"]);
}

#[test]
fn a_pool_nothing_announces_is_a_warning_on_the_pool() {
    let mut e = Engine::new(Classes::default(), Source::Crds);
    e.namespaces_listed(BTreeMap::new());
    let text = OBJECTS.replace("kind: L2Advertisement\nmetadata: {name: all, namespace: metallb-system}\n", "kind: L2Advertisement\nmetadata: {name: all, namespace: metallb-system}\nspec:\n  ipAddressPools: [rest]\n");
    e.objects_changed(Ok(text));
    let notices = object_notices(&mut e);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].0, "IPAddressPool staging");
    assert_eq!(notices[0].1, "ConfigWarning");
    assert!(notices[0].2.contains("not announced"), "{notices:?}");
}

#[test]
fn both_sources_merge_the_configmap_and_the_objects() {
    let mut e = Engine::new(Classes::default(), Source::Both);
    e.namespaces_listed(BTreeMap::new());
    e.config_changed(Some(&cm(POOLS)));
    e.services_listed(vec![lb("qa", "a")]);
    assert!(!e.is_synced(), "waits for the objects too");
    e.objects_changed(Ok(OBJECTS.into()));
    assert!(e.is_synced());
    let names: Vec<String> = e
        .allocator()
        .pool_stats()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["default", "staging", "rest"]);
}

/// `check-config --to-crds`: the objects it writes give the same
/// assignments as the ConfigMap they come from.
#[test]
fn converted_objects_assign_as_the_configmap_does() {
    let cm_text = "address-pools:
- name: team-a
  protocol: layer2
  namespaces: [team-a]
  addresses: [198.51.100.0/30]
- name: default
  protocol: layer2
  addresses: [192.0.2.64/30, \"2001:db8::/126\"]
  avoid-buggy-ips: true
- name: reserved
  protocol: layer2
  auto-assign: false
  addresses: [203.0.113.0/24]
";
    let config = ferrolb_core::config::parse(cm_text).unwrap();
    let objects = ferrolb_core::crd::to_crds(&config, "metallb-system").unwrap();
    assert!(objects.warnings.is_empty(), "{:?}", objects.warnings);
    let services = || {
        let mut list = Vec::new();
        for ns in ["team-a", "team-b", "default"] {
            for i in 0..4 {
                list.push(lb(ns, &format!("s{i}")));
            }
        }
        let mut asks = lb("default", "asks");
        asks.metadata.annotations = Some(BTreeMap::from([(
            "metallb.io/address-pool".to_owned(),
            "reserved".to_owned(),
        )]));
        list.push(asks);
        list
    };
    let mut from_cm = Engine::new(Classes::default(), Source::ConfigMap);
    from_cm.config_changed(Some(&cm(cm_text)));
    from_cm.services_listed(services());
    let mut from_objects = Engine::new(Classes::default(), Source::Crds);
    from_objects.namespaces_listed(BTreeMap::new());
    from_objects.objects_changed(Ok(objects.yaml));
    from_objects.services_listed(services());
    let mut assigned = 0;
    for s in services() {
        let k = key_of(&s);
        let (a, b) = (
            ips(&from_cm, &k.namespace, &k.name),
            ips(&from_objects, &k.namespace, &k.name),
        );
        assert_eq!(a, b, "{k}");
        assigned += usize::from(!a.is_empty());
    }
    // team-a's 4 addresses to team-a, default's 4 to 4 of the 8 others,
    // and the reserved pool to the Service that asks for it.
    assert_eq!(assigned, 9);
}

#[test]
fn nothing_is_assigned_before_the_namespaces_are_listed() {
    // Else a Service of a namespace a pool selects by label would take an
    // address from another pool, for good.
    let mut e = Engine::new(Classes::default(), Source::Crds);
    e.objects_changed(Ok(OBJECTS.into()));
    e.services_listed(vec![lb("qa", "a")]);
    assert!(!e.is_synced());
    assert_eq!(e.desired(&key("qa", "a")), None);
    e.namespaces_listed(BTreeMap::from([(
        "qa".to_owned(),
        ns_labels(&[("env", "staging")]),
    )]));
    assert!(e.is_synced());
    assert_eq!(ips(&e, "qa", "a"), ["192.0.2.10"]);
}
