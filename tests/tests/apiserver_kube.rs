//! kube-rs clients against the test API server: every verb on every resource, watches,
//! conflicts, the status subresource, Service defaulting.

use std::fmt::Debug;
use std::time::Duration;

use ferrolb_tests::TestApiServer;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventsV1;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

fn api_status<T: Debug>(r: Result<T, kube::Error>) -> Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

fn from_json<K: DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).expect("test object deserializes")
}

/// create, get, list, replace, merge patch, JSON patch, delete, and a 404 after.
async fn crud<K>(api: Api<K>, obj: K)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    let name = created.name_any();
    assert!(created.meta().uid.is_some(), "{kind}: uid set");
    assert!(
        created.meta().creation_timestamp.is_some(),
        "{kind}: creationTimestamp set"
    );
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();

    let got = api.get(&name).await.unwrap();
    assert_eq!(got.meta().uid, created.meta().uid, "{kind}: get");
    let list = api.list(&ListParams::default()).await.unwrap();
    assert!(
        list.items.iter().any(|o| o.name_any() == name),
        "{kind}: list"
    );

    let mut changed = got.clone();
    changed.labels_mut().insert("step".into(), "replace".into());
    let replaced = api
        .replace(&name, &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.labels()["step"], "replace", "{kind}: replace");
    let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "{kind}: resourceVersion grows");

    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"step": "merge"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels()["step"], "merge", "{kind}: merge patch");
    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::<()>::Json(from_json(
                json!([{"op": "replace", "path": "/metadata/labels/step", "value": "json"}]),
            )),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels()["step"], "json", "{kind}: JSON patch");

    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let s = api_status(api.get(&name).await);
    assert_eq!(
        (s.code, s.reason.as_str()),
        (404, "NotFound"),
        "{kind}: gone after delete"
    );
}

#[tokio::test]
async fn every_resource_supports_every_verb() {
    let server = TestApiServer::start().await.unwrap();
    let c = server.client().unwrap();
    crud(
        Api::<Namespace>::all(c.clone()),
        from_json(json!({"metadata": {"name": "crud-ns"}})),
    )
    .await;
    crud(
        Api::<Service>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})),
    )
    .await;
    crud(
        Api::<ConfigMap>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "cm"}, "data": {"a": "b"}})),
    )
    .await;
    crud(
        Api::<Secret>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "sec"}, "data": {"k": "dg=="}})),
    )
    .await;
    crud(
        Api::<Node>::all(c.clone()),
        from_json(json!({"metadata": {"name": "node-a"}})),
    )
    .await;
    crud(
        Api::<Pod>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "pod"}, "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}})),
    )
    .await;
    crud(
        Api::<EndpointSlice>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "eps", "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]})),
    )
    .await;
    crud(
        Api::<Lease>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "lease"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})),
    )
    .await;
    crud(
        Api::<Event>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "ev1"}, "involvedObject": {"kind": "Service", "name": "svc"}, "reason": "R", "message": "m"})),
    )
    .await;
    crud(
        Api::<EventsV1>::default_namespaced(c.clone()),
        from_json(json!({"metadata": {"name": "ev2"}, "eventTime": "2025-01-01T00:00:00.000000Z", "reportingController": "ferrolb.io/controller",
            "reportingInstance": "x", "action": "Allocate", "reason": "IPAllocated", "type": "Normal", "regarding": {"kind": "Service", "name": "svc"}, "note": "n"})),
    )
    .await;
}

#[tokio::test]
async fn events_written_through_events_k8s_io_are_read_through_core_v1() {
    let server = TestApiServer::start().await.unwrap();
    let c = server.client().unwrap();
    let ev: EventsV1 = from_json(
        json!({"metadata": {"name": "e"}, "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "ferrolb.io/controller", "reportingInstance": "x", "action": "Allocate", "reason": "IPAllocated",
        "type": "Normal", "regarding": {"kind": "Service", "name": "web", "namespace": "default"}, "note": "assigned 192.0.2.1"}),
    );
    Api::<EventsV1>::default_namespaced(c.clone())
        .create(&PostParams::default(), &ev)
        .await
        .unwrap();
    let core = Api::<Event>::default_namespaced(c.clone());
    let list = core
        .list(&ListParams::default().fields("involvedObject.name=web,involvedObject.kind=Service"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].message.as_deref(), Some("assigned 192.0.2.1"));
    assert_eq!(
        list.items[0].reporting_component.as_deref(),
        Some("ferrolb.io/controller")
    );
}

#[tokio::test]
async fn stale_update_gets_409_conflict_and_duplicate_create_409_already_exists() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let cm: ConfigMap = from_json(json!({"metadata": {"name": "c"}, "data": {"v": "1"}}));
    let first = api.create(&PostParams::default(), &cm).await.unwrap();
    let s = api_status(api.create(&PostParams::default(), &cm).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "configmaps \"c\" already exists");

    let mut a = first.clone();
    a.data = Some([("v".to_string(), "2".to_string())].into());
    api.replace("c", &PostParams::default(), &a).await.unwrap();
    let mut b = first.clone();
    b.data = Some([("v".to_string(), "3".to_string())].into());
    let s = api_status(api.replace("c", &PostParams::default(), &b).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );
    // A patch naming a stale resourceVersion is a precondition too.
    let stale = first.resource_version().unwrap();
    let s = api_status(
        api.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": stale}, "data": {"v": "4"}})),
        )
        .await,
    );
    assert_eq!(s.code, 409);
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["v"], "2");
}

#[tokio::test]
async fn missing_objects_and_namespaces_are_404_status() {
    let server = TestApiServer::start().await.unwrap();
    let c = server.client().unwrap();
    let s = api_status(
        Api::<Service>::default_namespaced(c.clone())
            .get("nope")
            .await,
    );
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", "services \"nope\" not found")
    );
    let s = api_status(
        Api::<Lease>::default_namespaced(c.clone())
            .delete("nope", &DeleteParams::default())
            .await,
    );
    assert_eq!(s.message, "leases.coordination.k8s.io \"nope\" not found");
    let cm: ConfigMap = from_json(json!({"metadata": {"name": "x"}}));
    let s = api_status(
        Api::<ConfigMap>::namespaced(c.clone(), "missing")
            .create(&PostParams::default(), &cm)
            .await,
    );
    assert_eq!(
        (s.code, s.message.as_str()),
        (404, "namespaces \"missing\" not found")
    );
}

#[tokio::test]
async fn generate_name_creates_distinct_objects() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let cm: ConfigMap = from_json(json!({"metadata": {"generateName": "gen-"}}));
    let a = api.create(&PostParams::default(), &cm).await.unwrap();
    let b = api.create(&PostParams::default(), &cm).await.unwrap();
    assert!(
        a.name_any().starts_with("gen-") && a.name_any().len() == 9,
        "{}",
        a.name_any()
    );
    assert_ne!(a.name_any(), b.name_any());
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors_and_pages() {
    let server = TestApiServer::start().await.unwrap();
    let c = server.client().unwrap();
    let pods = Api::<Pod>::default_namespaced(c.clone());
    for i in 0..7 {
        let p: Pod = from_json(
            json!({"metadata": {"name": format!("p{i}"), "labels": {"app": if i % 2 == 0 { "even" } else { "odd" }}},
            "spec": {"nodeName": format!("node-{}", i % 3), "containers": [{"name": "c", "image": "x"}]}}),
        );
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app=even"))
                .await
                .unwrap()
        ),
        ["p0", "p2", "p4", "p6"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app in (odd),app!=even"))
                .await
                .unwrap()
        ),
        ["p1", "p3", "p5"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("spec.nodeName=node-1"))
                .await
                .unwrap()
        ),
        ["p1", "p4"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=p3"))
                .await
                .unwrap()
        ),
        ["p3"]
    );
    let all = Api::<Pod>::all(c.clone());
    assert_eq!(
        all.list(&ListParams::default().fields("metadata.namespace=default"))
            .await
            .unwrap()
            .items
            .len(),
        7
    );
    let s = api_status(
        Api::<ConfigMap>::default_namespaced(c.clone())
            .list(&ListParams::default().fields("spec.nodeName=x"))
            .await,
    );
    assert_eq!(s.code, 400);

    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = pods.list(&lp).await.unwrap();
        assert!(page.items.len() <= 3);
        let next = page.metadata.continue_.clone();
        seen.extend(names(page));
        match next {
            Some(t) if !t.is_empty() => lp = lp.continue_token(&t),
            _ => break,
        }
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);
}

#[tokio::test]
async fn watch_from_a_version_sees_changes_in_order_and_selectors_apply() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(
            &WatchParams::default().labels("watched=yes").timeout(60),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let mk = |name: &str, watched: &str| -> ConfigMap {
        from_json(json!({"metadata": {"name": name, "labels": {"watched": watched}}}))
    };
    api.create(&PostParams::default(), &mk("a", "yes"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &mk("b", "no"))
        .await
        .unwrap();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "yes"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "no"}}})),
    )
    .await
    .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
            .await
            .expect("watch events arrive")
            .unwrap()
            .expect("watch stays open");
        got.push(match ev {
            WatchEvent::Added(o) => format!("ADDED {}", o.name_any()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.name_any()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.name_any()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        });
    }
    // b starts matching (ADDED), a stops matching (DELETED), as the real server reports them.
    assert_eq!(
        got,
        ["ADDED a", "ADDED b", "MODIFIED a", "DELETED a", "DELETED b"]
    );
}

#[tokio::test]
async fn watch_from_a_compacted_version_gets_410_expired() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let old = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "x"}})),
    )
    .await
    .unwrap();
    server.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 Expired error event, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_bookmarks_carry_the_current_version() {
    let server = TestApiServer::start_with(ferrolb_tests::ServerOptions {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    Api::<ConfigMap>::default_namespaced(server.client().unwrap())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "other"}})),
        )
        .await
        .unwrap();
    let mut stream = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            },
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Bookmark(b) = ev else {
        panic!("expected a bookmark, got {ev:?}")
    };
    assert!(b.metadata.resource_version.parse::<u64>().unwrap() > rv.parse::<u64>().unwrap());
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_endpoint() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let svc: Service = from_json(
        json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}}}),
    );
    let created = api.create(&PostParams::default(), &svc).await.unwrap();
    assert_eq!(
        created.status.unwrap().load_balancer.unwrap().ingress,
        None,
        "create resets status"
    );
    let ingress =
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}});
    // The main endpoint ignores status.
    let main = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(ingress.clone()),
        )
        .await
        .unwrap();
    assert_eq!(main.status.unwrap().load_balancer.unwrap().ingress, None);
    // /status changes only status, and does not bump generation.
    let mut with_spec = ingress.clone();
    with_spec["spec"] = json!({"ports": [{"port": 81}]});
    let st = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(with_spec))
        .await
        .unwrap();
    assert_eq!(
        st.status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(
        st.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        80
    );
    assert_eq!(st.metadata.generation, Some(1));
    // A spec change bumps generation.
    let g = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 82}]}})),
        )
        .await
        .unwrap();
    assert_eq!(g.metadata.generation, Some(2));
    let got = api.get_status("web").await.unwrap();
    assert_eq!(
        got.status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()
            .len(),
        1
    );
    // replace_status too.
    let mut cur = api.get("web").await.unwrap();
    cur.status = Some(from_json(json!({"loadBalancer": {}})));
    let r = api
        .replace_status("web", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().load_balancer.unwrap().ingress, None);
}

#[tokio::test]
async fn services_are_defaulted_like_the_real_server() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let lb: Service = from_json(
        json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
        "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
    );
    let lb = api.create(&PostParams::default(), &lb).await.unwrap();
    let spec = lb.spec.unwrap();
    assert_eq!(spec.ip_families.unwrap(), ["IPv4", "IPv6"]);
    let ips = spec.cluster_ips.unwrap();
    assert_eq!(ips.len(), 2);
    assert_eq!(spec.cluster_ip.as_ref(), Some(&ips[0]));
    assert!(
        ips[0].starts_with("10.96.") && ips[1].starts_with("fd00:10:96::"),
        "{ips:?}"
    );
    let ports = spec.ports.unwrap();
    assert!(
        ports
            .iter()
            .all(|p| (30000..=32767).contains(&p.node_port.unwrap()))
    );
    assert_ne!(ports[0].node_port, ports[1].node_port);
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(true));

    let no_np: Service = from_json(
        json!({"metadata": {"name": "nonp"}, "spec": {"type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": false, "loadBalancerClass": "ferrolb.io/lb", "ports": [{"port": 80}]}}),
    );
    let no_np = api.create(&PostParams::default(), &no_np).await.unwrap();
    assert_eq!(
        no_np.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
        None
    );
    let s = api_status(
        api.patch(
            "nonp",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"loadBalancerClass": "other"}})),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.contains("spec.loadBalancerClass"),
        "{}",
        s.message
    );

    let bad: Service = from_json(
        json!({"metadata": {"name": "bad"}, "spec": {"type": "Magic", "ports": [{"port": 80}]}}),
    );
    let s = api_status(api.create(&PostParams::default(), &bad).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let bad: Service =
        from_json(json!({"metadata": {"name": "bad"}, "spec": {"ports": [{"port": 0}]}}));
    assert_eq!(
        api_status(api.create(&PostParams::default(), &bad).await).code,
        422
    );
}

#[tokio::test]
async fn strategic_merge_patch_merges_service_ports_by_port_and_protocol() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<Service>::default_namespaced(server.client().unwrap());
    let svc: Service = from_json(
        json!({"metadata": {"name": "dns"}, "spec": {"type": "NodePort",
        "ports": [{"name": "tcp", "port": 53, "protocol": "TCP"}, {"name": "udp", "port": 53, "protocol": "UDP"}]}}),
    );
    let before = api.create(&PostParams::default(), &svc).await.unwrap();
    let after = api
        .patch(
            "dns",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"ports": [{"port": 53, "protocol": "UDP", "targetPort": 5353}]}}),
            ),
        )
        .await
        .unwrap();
    let (b, a) = (
        before.spec.unwrap().ports.unwrap(),
        after.spec.unwrap().ports.unwrap(),
    );
    assert_eq!(a.len(), 2);
    assert_eq!(a[0], b[0]);
    assert_eq!(a[1].node_port, b[1].node_port, "the node port survives");
    assert_eq!(
        a[1].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5353))
    );
}

#[tokio::test]
async fn server_side_apply_is_refused_not_ignored() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let s = api_status(
        api.patch(
            "x",
            &PatchParams::apply("test"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
            ),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (415, "UnsupportedMediaType"));
    assert!(s.message.contains("server-side apply"), "{}", s.message);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    let cm: ConfigMap =
        from_json(json!({"metadata": {"name": "f", "finalizers": ["ferrolb.io/test"]}}));
    api.create(&PostParams::default(), &cm).await.unwrap();
    let pending = api.delete("f", &DeleteParams::default()).await.unwrap();
    let obj = pending
        .left()
        .expect("an object with finalizers is returned, not deleted");
    assert!(obj.metadata.deletion_timestamp.is_some());
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_status(api.get("f").await).code, 404);
    // Without finalizers a ConfigMap delete answers with a Success Status.
    api.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "g"}})),
    )
    .await
    .unwrap();
    let done = api.delete("g", &DeleteParams::default()).await.unwrap();
    assert!(done.is_right());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let server = TestApiServer::start().await.unwrap();
    let c = server.client().unwrap();
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "team"}})),
        )
        .await
        .unwrap();
    let cms = Api::<ConfigMap>::namespaced(c.clone(), "team");
    cms.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "a"}})),
    )
    .await
    .unwrap();
    Api::<Namespace>::all(c.clone())
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_status(cms.get("a").await).code, 404);
}

#[tokio::test]
async fn watcher_with_streaming_lists_gets_initial_events_then_changes() {
    use kube::runtime::{WatchStreamExt as _, watcher};
    let server = TestApiServer::start().await.unwrap();
    let api = Api::<ConfigMap>::default_namespaced(server.client().unwrap());
    api.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "before"}})),
    )
    .await
    .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(60), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.name_any(), "before");
    api.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "after"}})),
    )
    .await
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(60), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.name_any(), "after");
}

#[tokio::test]
async fn oversized_configmap_data_and_annotations_are_422_on_create_update_and_patch() {
    let server = TestApiServer::start().await.unwrap();
    let c = server.client().unwrap();
    let cms = Api::<ConfigMap>::default_namespaced(c.clone());
    let pp = PostParams::default();
    // The real server's limits: 1 MiB of ConfigMap data (keys and values),
    // 256 KiB of annotations (keys and values), on any object.
    let at_limit = "x".repeat(1024 * 1024 - 1);
    let over = "x".repeat(1024 * 1024);
    let cm = |name: &str, value: &str| -> ConfigMap {
        from_json(json!({"metadata": {"name": name}, "data": {"k": value}}))
    };
    let too_big = |s: Status| {
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert_eq!(
            s.message,
            "ConfigMap \"c\" is invalid: []: Too long: must have at most 1048576 bytes"
        );
    };
    cms.create(&pp, &cm("at-limit", &at_limit)).await.unwrap();
    too_big(api_status(cms.create(&pp, &cm("c", &over)).await));
    let small = cms.create(&pp, &cm("c", "1")).await.unwrap();
    let mut replaced = small.clone();
    replaced.data = Some([("k".to_string(), over.clone())].into());
    too_big(api_status(cms.replace("c", &pp, &replaced).await));
    too_big(api_status(
        cms.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k2": at_limit}})),
        )
        .await,
    ));
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["k"], "1");

    // Annotations: a Service, as the controller annotates them with the pool.
    let svcs = Api::<Service>::default_namespaced(c.clone());
    let annotated = |name: &str, value: &str| -> Service {
        from_json(json!({
            "metadata": {"name": name, "annotations": {"a": value}},
            "spec": {"ports": [{"port": 80}]}
        }))
    };
    let ann_at_limit = "y".repeat(256 * 1024 - 1);
    let ann_over = "y".repeat(256 * 1024);
    let annotations_too_big = |s: Status, name: &str| {
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        assert_eq!(
            s.message,
            format!(
                "Service \"{name}\" is invalid: metadata.annotations: Too long: must have at most 262144 bytes"
            )
        );
    };
    svcs.create(&pp, &annotated("at-limit", &ann_at_limit))
        .await
        .unwrap();
    annotations_too_big(
        api_status(svcs.create(&pp, &annotated("s", &ann_over)).await),
        "s",
    );
    let s = svcs.create(&pp, &annotated("s", "1")).await.unwrap();
    let mut replaced = s.clone();
    replaced
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("a".into(), ann_over.clone());
    annotations_too_big(api_status(svcs.replace("s", &pp, &replaced).await), "s");
    // Two annotations that are each fine but too big together.
    annotations_too_big(
        api_status(
            svcs.patch(
                "s",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"b": "z".repeat(200 * 1024), "c": "z".repeat(100 * 1024)}}})),
            )
            .await,
        ),
        "s",
    );
    // And on a ConfigMap too.
    let s = api_status(
        cms.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": ann_over}}})),
        )
        .await,
    );
    assert_eq!(s.code, 422);
    assert!(
        s.message.contains("metadata.annotations: Too long"),
        "{}",
        s.message
    );
    assert_eq!(
        svcs.get("s")
            .await
            .unwrap()
            .annotations()
            .get("a")
            .map(String::as_str),
        Some("1")
    );
}
