//! A MetalLB user's layer-2 objects, unchanged, on a real control plane:
//! ferrolb deployed from a user's kustomization with the components
//! `metallb-crds` (the CRDs) and `config-from-crds` (read IPAddressPool and
//! L2Advertisement objects from metallb-system). One set of objects covers
//! the realistic cases: a dual-stack pool for every node, a per-namespace
//! pool with a serviceAllocation priority, a pool for namespaces selected by
//! label, a pool announced only from one labelled node on one interface, a
//! pool no L2Advertisement selects, and a shared address through
//! `metallb.io/` annotations. Checks the assignments, the announcing node,
//! the ServiceL2Status objects and IPAddressPool status MetalLB would write,
//! Events on the objects, and that an invalid object loses nothing.
//!
//! Needs root (network namespaces) and the Kubernetes binaries
//! (`FERROLB_KUBE_BIN`, set by scripts/test.sh).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrolb_tests::apiserver::rbac::{Rbac, replay_audit_log};
use ferrolb_tests::kube::{KUBE_BIN_ENV, KubeBinaries};
use ferrolb_tests::kubeproxy::ProxyMode;
use ferrolb_tests::lab::{Lab, LabOptions, RealOptions, System, eventually};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);
const CONTROLLER: &str = "system:serviceaccount:ferrolb-system:ferrolb-controller";
const SPEAKER: &str = "system:serviceaccount:ferrolb-system:ferrolb-speaker";

/// MetalLB's BGPPeer kind (as its CRD serves it, storage version v1beta2),
/// so that a user's BGP object can be present.
const BGP_PEER_CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
 "metadata": {"name": "bgppeers.metallb.io"},
 "spec": {"group": "metallb.io", "scope": "Namespaced",
  "names": {"kind": "BGPPeer", "listKind": "BGPPeerList", "plural": "bgppeers", "singular": "bgppeer"},
  "versions": [{"name": "v1beta2", "served": true, "storage": true,
   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#;

/// The user's objects, as MetalLB reads them (the lab's segment addresses).
/// `edge` is announced only from the node labelled `kubernetes.io/hostname:
/// NODE1`; `dark` has no L2Advertisement.
const OBJECTS: &str = r#"apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: default, namespace: metallb-system}
spec:
  addresses: [192.0.2.240-192.0.2.244, "2001:db8::240-2001:db8::244"]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: team-a, namespace: metallb-system}
spec:
  addresses: [192.0.2.245/32]
  serviceAllocation:
    priority: 10
    namespaces: [team-a]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: staging, namespace: metallb-system}
spec:
  addresses: [192.0.2.246/32]
  serviceAllocation:
    namespaceSelectors:
    - matchLabels: {env: staging}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: edge, namespace: metallb-system, labels: {exposure: public}}
spec:
  addresses: [192.0.2.248/31]
  autoAssign: false
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: dark, namespace: metallb-system}
spec:
  addresses: [192.0.2.250/32]
  autoAssign: false
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: everywhere, namespace: metallb-system}
spec:
  ipAddressPools: [default, team-a, staging]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: edge, namespace: metallb-system}
spec:
  ipAddressPoolSelectors:
  - matchLabels: {exposure: public}
  nodeSelectors:
  - matchLabels: {kubernetes.io/hostname: NODE1}
  interfaces: [eth0]
"#;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn lab(dir: &Path) -> Option<Lab> {
    let Some(bins) = KubeBinaries::from_env() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{KUBE_BIN_ENV} must be set in CI (scripts/test.sh sets it)"
        );
        eprintln!("migration_real skipped: {KUBE_BIN_ENV} is unset (scripts/test.sh sets it)");
        return None;
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"));
    let bin_dir = exe.parent().unwrap().to_path_buf();
    Lab::check_binaries(&bin_dir).expect("`cargo test --workspace` builds every binary");
    // The user's kustomization: ferrolb and the two components, as the
    // README's migration section writes it.
    let k = dir.join("kustomization");
    std::fs::create_dir_all(&k).unwrap();
    let rel = |p: &str| {
        ferrolb_tests::relative_path(&k, &root().join(p))
            .display()
            .to_string()
    };
    // A cluster that never had MetalLB: its namespace first (README).
    std::fs::write(
        k.join("metallb-system.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: metallb-system\n",
    )
    .unwrap();
    std::fs::write(
        k.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- metallb-system.yaml\n- {}\ncomponents:\n- {}\n- {}\n",
            rel("manifests"),
            rel("manifests/components/metallb-crds"),
            rel("manifests/components/config-from-crds"),
        ),
    )
    .unwrap();
    let config = dir.join("objects.yaml");
    std::fs::write(&config, OBJECTS.replace("NODE1", "node-1")).unwrap();
    Some(
        Lab::up(&LabOptions {
            nodes: 3,
            bin_dir,
            kubeconfig: None,
            config,
            rbac_manifests: None,
            real: Some(RealOptions {
                kube: bins.expect("the Kubernetes binaries"),
                proxy_mode: ProxyMode::Nftables,
                manifests: k,
                system: System::Ferrolb,
            }),
        })
        .expect("the lab comes up with the CRD components"),
    )
}

fn get_json(lab: &Lab, args: &[&str]) -> Option<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&lab.kubectl(&full).ok()?).ok()
}

/// A Deployment of lab-echo and a LoadBalancer Service for it in `ns`, port
/// 80, with `annotations`; returns once it has `want` addresses.
fn service(lab: &Lab, ns: &str, name: &str, annotations: Value, extra: Value) -> Vec<String> {
    lab.kubectl(&[
        "create",
        "deployment",
        name,
        "-n",
        ns,
        "--image=ferrolb.io/lab-echo",
        "--replicas=1",
    ])
    .unwrap();
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": name},
                 "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}]}
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            svc["spec"][k] = v;
        }
    }
    lab.apply(&svc).unwrap();
    eventually(&format!("an address for {ns}/{name}"), LIMIT, || {
        let s = get_json(lab, &["svc", name, "-n", ns])?;
        let ips: Vec<String> = s["status"]["loadBalancer"]["ingress"]
            .as_array()?
            .iter()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect();
        (!ips.is_empty()).then_some(ips)
    })
    .unwrap()
}

/// The newest Event of `reason` on the MetalLB object `kind/name`.
fn object_event(lab: &Lab, kind: &str, name: &str, reason: &str) -> Option<String> {
    let list = get_json(lab, &["events", "-n", "metallb-system"])?;
    list["items"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| {
            e["involvedObject"]["kind"] == kind
                && e["involvedObject"]["name"] == name
                && e["reason"] == reason
        })
        .and_then(|e| e["message"].as_str().map(str::to_owned))
}

/// The ServiceL2Status objects naming `ns/name`: (node, interfaces).
fn l2_statuses(lab: &Lab, ns: &str, name: &str) -> Vec<(String, Vec<String>)> {
    let Some(list) = get_json(lab, &["servicel2statuses", "-A"]) else {
        return vec![];
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["status"]["serviceName"] == name
                && o["status"]["serviceNamespace"] == ns
                && o["metadata"]["labels"]["metallb.io/service-name"] == name
                && o["metadata"]["labels"]["metallb.io/node"] == o["status"]["node"]
        })
        .map(|o| {
            let ifaces = o["status"]["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect();
            (
                o["status"]["node"].as_str().unwrap_or_default().to_owned(),
                ifaces,
            )
        })
        .collect()
}

fn answers(lab: &Lab, ip: &str) {
    let target: SocketAddr = format!("{ip}:80").parse().unwrap();
    eventually(&format!("10 answers in a row from {ip}"), LIMIT, || {
        lab.answered(target, 10).then_some(())
    })
    .unwrap();
}

#[test]
fn metallb_objects_unchanged_assign_and_announce_on_a_real_control_plane() {
    let dir = std::env::temp_dir().join(format!("ferrolb-migration-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(lab) = lab(&dir) else { return };

    // The README's quickstart: an address from "default", announced, and
    // the ServiceL2Status MetalLB would write, from the announcing node.
    let (ip, _) = lab.quickstart_web().unwrap();
    assert!(ip.starts_with("192.0.2.24"), "{ip}");
    let owner = lab.owner(&ip).expect("a node answers ARP for web");
    eventually(
        "web's ServiceL2Status from its announcing node",
        LIMIT,
        || {
            let s = l2_statuses(&lab, "default", "web");
            (s.len() == 1 && s[0].0 == owner && s[0].1.is_empty()).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", l2_statuses(&lab, "default", "web")));

    // The owner excluded from load balancers (the label Kubernetes
    // defines): another node takes over, and the ServiceL2Status follows,
    // the old owner deleting its own.
    let label = "node.kubernetes.io/exclude-from-external-load-balancers";
    lab.kubectl(&["label", "node", &owner, &format!("{label}=")])
        .unwrap();
    let next = eventually("another node answering for web", LIMIT, || {
        lab.owner(&ip).filter(|n| *n != owner)
    })
    .unwrap();
    eventually(
        "web's ServiceL2Status from the new owner only",
        LIMIT,
        || {
            let s = l2_statuses(&lab, "default", "web");
            (s.len() == 1 && s[0].0 == next).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", l2_statuses(&lab, "default", "web")));
    lab.kubectl(&["label", "node", &owner, &format!("{label}-")])
        .unwrap();

    // Dual-stack from the same pool.
    let dual = service(
        &lab,
        "default",
        "dual",
        json!({}),
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    );
    assert_eq!(dual.len(), 2, "{dual:?}");
    assert!(dual[1].starts_with("2001:db8::24"), "{dual:?}");

    // Per-namespace pool (serviceAllocation, priority over "default").
    lab.kubectl(&["create", "namespace", "team-a"]).unwrap();
    let a = service(&lab, "team-a", "api", json!({}), json!({}));
    assert_eq!(a, ["192.0.2.245"]);
    answers(&lab, &a[0]);

    // A namespace selected by its labels.
    lab.kubectl(&["create", "namespace", "qa"]).unwrap();
    lab.kubectl(&["label", "namespace", "qa", "env=staging"])
        .unwrap();
    let q = service(&lab, "qa", "app", json!({}), json!({}));
    assert_eq!(q, ["192.0.2.246"]);

    // Asked for by pool name (MetalLB's annotation): announced only from
    // node-1, on eth0, which its ServiceL2Status lists.
    let e = service(
        &lab,
        "default",
        "edge",
        json!({"metallb.io/address-pool": "edge"}),
        json!({}),
    );
    assert!(e[0] == "192.0.2.248" || e[0] == "192.0.2.249", "{e:?}");
    answers(&lab, &e[0]);
    assert_eq!(lab.owner(&e[0]).as_deref(), Some("node-1"));
    eventually("edge's ServiceL2Status from node-1 on eth0", LIMIT, || {
        (l2_statuses(&lab, "default", "edge") == [("node-1".to_owned(), vec!["eth0".to_owned()])])
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", l2_statuses(&lab, "default", "edge")));

    // A shared address: MetalLB's sharing key and requested address.
    let shared =
        json!({"metallb.io/allow-shared-ip": "k", "metallb.io/loadBalancerIPs": "192.0.2.244"});
    let s1 = service(&lab, "default", "one", shared.clone(), json!({}));
    let s2 = service(
        &lab,
        "default",
        "two",
        shared,
        json!({"ports": [{"port": 81, "targetPort": 80, "protocol": "TCP"}]}),
    );
    assert_eq!(
        (s1.as_slice(), s2.as_slice()),
        (
            &["192.0.2.244".to_owned()][..],
            &["192.0.2.244".to_owned()][..]
        )
    );

    // A pool no L2Advertisement selects: assigned, never announced, and a
    // Warning on the pool says so (MetalLB says nothing).
    let d = service(
        &lab,
        "default",
        "dark",
        json!({"metallb.io/address-pool": "dark"}),
        json!({}),
    );
    assert_eq!(d, ["192.0.2.250"]);
    let warning = eventually("a ConfigWarning on IPAddressPool dark", LIMIT, || {
        object_event(&lab, "IPAddressPool", "dark", "ConfigWarning")
    })
    .unwrap();
    assert!(
        warning.contains("no L2Advertisement selects this pool"),
        "{warning}"
    );

    // The pools' status, as MetalLB v0.15+ writes it.
    eventually("IPAddressPool default's status", LIMIT, || {
        let p = get_json(&lab, &["ipaddresspool", "default", "-n", "metallb-system"])?;
        let st = &p["status"];
        // web, dual and the shared address; dual's IPv6 address.
        (st["assignedIPv4"] == 3
            && st["assignedIPv6"] == 1
            && st["availableIPv4"] == 2
            && st["availableIPv6"] == 4)
            .then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {:?}",
            get_json(&lab, &["ipaddresspool", "default", "-n", "metallb-system"])
                .map(|p| p["status"].clone())
        )
    });

    // An invalid object: a Warning on it naming the field; the last good
    // config stays, so every address stays and new Services still get one.
    lab.apply(&json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "broken", "namespace": "metallb-system"},
        "spec": {"addresses": ["192.0.2.240/32"]}
    }))
    .unwrap();
    let refused = eventually(
        "an InvalidConfig Event on IPAddressPool broken",
        LIMIT,
        || object_event(&lab, "IPAddressPool", "broken", "InvalidConfig"),
    )
    .unwrap();
    // Said on both pools of the overlap (here "broken" sorts first, so the
    // field is default's and broken hears the whole problem).
    assert!(refused.contains("spec.addresses[0]: "), "{refused}");
    assert!(
        refused.contains("overlaps with entry \"192.0.2.240/32\""),
        "{refused}"
    );
    assert!(
        object_event(&lab, "IPAddressPool", "default", "InvalidConfig").is_some(),
        "default hears of the overlap too"
    );
    assert_eq!(lab.external_ips("web"), std::slice::from_ref(&ip));
    answers(&lab, &ip);
    let later = service(&lab, "default", "later", json!({}), json!({}));
    assert!(later[0].starts_with("192.0.2.24"), "{later:?}");

    // Fixed: the objects are in force again, and the Service the broken
    // pool would have clashed with keeps its address.
    let stale = || {
        lab.leader_metrics()
            .map(|m| ferrolb_tests::lab::metric(&m, "ferrolb_config_stale"))
    };
    assert_eq!(stale(), Some(1.0), "the broken objects are not in force");
    lab.kubectl(&["delete", "ipaddresspool", "broken", "-n", "metallb-system"])
        .unwrap();
    eventually("the objects in force again", LIMIT, || {
        (stale() == Some(0.0)).then_some(())
    })
    .unwrap();
    assert_eq!(lab.external_ips("web"), std::slice::from_ref(&ip));

    // A BGP object: said once, on the object; the layer-2 config stands.
    lab.apply(&serde_json::from_str(BGP_PEER_CRD).unwrap())
        .unwrap();
    eventually("the BGPPeer kind served", LIMIT, || {
        lab.apply(&json!({
            "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "router", "namespace": "metallb-system"},
            "spec": {"myASN": 64500, "peerASN": 64501, "peerAddress": "192.0.2.1"}
        }))
        .ok()
    })
    .unwrap();
    let said = eventually("a BGPNotSupported Event on BGPPeer router", LIMIT, || {
        object_event(&lab, "BGPPeer", "router", "BGPNotSupported")
    })
    .unwrap();
    assert!(said.contains("BGP is not supported"), "{said}");
    answers(&lab, &ip);

    // The owner's cable pulled: it can reach nobody, so the new owner
    // deletes its ServiceL2Status for web (as MetalLB's new announcer does).
    let owner = lab.owner(&ip).expect("a node answers for web");
    lab.unplug(&owner).unwrap();
    eventually(
        "web's ServiceL2Status from the new owner only, the cut node's deleted",
        LIMIT,
        || {
            let s = l2_statuses(&lab, "default", "web");
            (s.len() == 1 && s[0].0 != owner).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", l2_statuses(&lab, "default", "web")));
    answers(&lab, &ip);
    lab.plug(&owner).unwrap();

    // Every call was allowed by the real authorizer, and every permission
    // the config-from-crds component grants was used.
    let text =
        std::fs::read_to_string(root().join("manifests/components/config-from-crds/rbac.yaml"))
            .unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("Role") || k.starts_with("ClusterRole"))
        })
        .collect();
    let rbac = Rbac::from_documents(&docs).unwrap();
    let log = lab.control_plane.as_ref().unwrap().audit_log();
    eventually("every permission of the component used", LIMIT, || {
        let denied = replay_audit_log(&rbac, &log);
        assert!(denied.is_empty(), "the API server denied: {denied:#?}");
        let mut unused = rbac.unused(CONTROLLER);
        unused.extend(rbac.unused(SPEAKER));
        if unused.is_empty() {
            Some(())
        } else {
            eprintln!("not used yet: {unused:?}");
            None
        }
    })
    .unwrap();
}
