//! The lab on a real control plane, end to end: ferrolb deployed from
//! `manifests/` (the node agent runs its Pods as processes with ServiceAccount
//! tokens), the README's quickstart, failover through real kube-proxy, and
//! the manifests' RBAC checked by the real authorizer (its audit log).
//!
//! Needs root (network namespaces) and the binaries of scripts/build-kube.sh:
//! ```text
//! FERROLB_KUBE_BIN=$(scripts/build-kube.sh | tail -n1) cargo test -p ferrolb-tests --test lab_real
//! ```
//! Only namespaces the test creates are touched, with addresses from
//! 192.0.2.0/24, 203.0.113.0/24 (Pods) and 2001:db8::/32.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrolb_tests::apiserver::rbac::{Rbac, replay_audit_log};
use ferrolb_tests::kube::{KUBE_BIN_ENV, KubeBinaries};
use ferrolb_tests::kubeproxy::ProxyMode;
use ferrolb_tests::lab::{DUAL_STACK_POOLS, Lab, LabOptions, RealOptions, System, eventually};

const LIMIT: Duration = Duration::from_secs(90);
const CONTROLLER: &str = "system:serviceaccount:ferrolb-system:ferrolb-controller";
const SPEAKER: &str = "system:serviceaccount:ferrolb-system:ferrolb-speaker";

fn manifests() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"))
}

fn lab(nodes: usize) -> Option<Lab> {
    let Some(bins) = KubeBinaries::from_env() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{KUBE_BIN_ENV} must be set in CI (scripts/test.sh sets it)"
        );
        eprintln!(
            "lab_real skipped: {KUBE_BIN_ENV} is unset (scripts/test.sh sets it). Run it as root with the real Kubernetes binaries:\n  \
             {KUBE_BIN_ENV}=$(scripts/build-kube.sh | tail -n1) cargo test -p ferrolb-tests --test lab_real"
        );
        return None;
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"));
    let bin_dir = exe.parent().unwrap().to_path_buf();
    if let Err(e) = Lab::check_binaries(&bin_dir) {
        panic!("{e:#} (`cargo test --workspace` builds every binary)");
    }
    let config = std::env::temp_dir().join(format!("ferrolb-lab-real-{}.yaml", std::process::id()));
    std::fs::write(&config, DUAL_STACK_POOLS).unwrap();
    let lab = Lab::up(&LabOptions {
        nodes,
        bin_dir,
        kubeconfig: None,
        config,
        rbac_manifests: None,
        real: Some(RealOptions {
            kube: bins.expect("the Kubernetes binaries"),
            proxy_mode: ProxyMode::Nftables,
            manifests: manifests(),
            system: System::Ferrolb,
        }),
    })
    .expect("the lab comes up on the real control plane");
    Some(lab)
}

/// Sets the Service's `externalTrafficPolicy`.
fn set_policy(lab: &Lab, name: &str, policy: &str) {
    lab.kubectl(&[
        "patch",
        "svc",
        name,
        "-p",
        &format!(r#"{{"spec":{{"externalTrafficPolicy":"{policy}"}}}}"#),
    ])
    .unwrap();
}

/// `count` requests from the client, 10 ms apart: each answer, or `None`.
fn asks(lab: &Lab, target: SocketAddr, count: u64) -> Vec<Option<String>> {
    lab.client_requests(target, count)
}

/// The Pod names that answered.
fn pods_answering(lab: &Lab, target: SocketAddr, count: u64) -> BTreeSet<String> {
    asks(lab, target, count)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            // `pod=NAME node=NODE`
            let first = a.split_whitespace().next()?;
            first.strip_prefix("pod=").map(str::to_owned)
        })
        .collect()
}

fn ready_pods(lab: &Lab, selector: &str) -> BTreeSet<String> {
    lab.kubectl(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ])
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.strip_suffix(" True").map(str::to_owned))
    .collect()
}

/// The Service `default/NAME` as the API server has it.
fn service(lab: &Lab, name: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&lab.kubectl(&["get", "svc", name, "-o", "json"]).ok()?).ok()
}

/// (status, reason, message) of the Service's condition of type `kind`.
fn condition(lab: &Lab, name: &str, kind: &str) -> Option<(String, String, String)> {
    let svc = service(lab, name)?;
    let c = svc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?
        .clone();
    let field = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
    Some((field("status"), field("reason"), field("message")))
}

/// The message of the newest Event of `reason` on the Service `default/NAME`.
fn event_message(lab: &Lab, name: &str, reason: &str) -> Option<String> {
    lab.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name},reason={reason}"),
        "-o",
        "jsonpath={.items[-1:].message}",
    ])
    .ok()
    .filter(|m| !m.trim().is_empty())
}

fn events_count(lab: &Lab, name: &str, reason: &str) -> usize {
    lab.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name},reason={reason}"),
        "-o",
        "name",
    ])
    .unwrap_or_default()
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count()
}

/// Replays the API server's audit log through the manifests' RBAC rules:
/// the requests the real authorizer denied, and the permissions no request used.
fn rbac_report(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let mut docs = Vec::new();
    for f in ["controller-rbac.yaml", "speaker-rbac.yaml"] {
        let text = std::fs::read_to_string(manifests().join(f)).unwrap();
        docs.extend(serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap());
    }
    let rbac = Rbac::from_documents(&docs).unwrap();
    let log = lab.control_plane.as_ref().unwrap().audit_log();
    let denied = replay_audit_log(&rbac, &log);
    let mut unused = rbac.unused(CONTROLLER);
    unused.extend(rbac.unused(SPEAKER));
    (denied, unused)
}

/// One lab for the whole story (a real control plane takes about 15 s to start).
#[test]
fn quickstart_failover_and_rbac_on_a_real_control_plane() {
    let Some(lab) = lab(3) else { return };

    // The README's quickstart, verbatim but for the image.
    let (ip, target) = lab.quickstart_web().unwrap();
    assert!(
        ip.starts_with("192.0.2.24") || ip.starts_with("192.0.2.25"),
        "{ip}"
    );
    let replicas = eventually("3 ready replicas", LIMIT, || {
        let r = ready_pods(&lab, "app=web");
        (r.len() == 3).then_some(r)
    })
    .unwrap();

    // The status as `kubectl describe` shows it: the address with ipMode and
    // ports, the controller's condition and the owner's.
    let first = lab.owner(&ip).expect("a node answers ARP for the address");
    let svc = service(&lab, "web").unwrap();
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"],
        serde_json::json!([{"ip": ip, "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]}]),
        "{svc:#}"
    );
    let assigned = eventually("web's AddressAssigned condition", LIMIT, || {
        condition(&lab, "web", "ferrolb.io/AddressAssigned")
    })
    .unwrap();
    assert_eq!(
        (assigned.0.as_str(), assigned.1.as_str()),
        ("True", "IPAllocated"),
        "{assigned:?}"
    );
    assert!(
        assigned.2.starts_with(&format!("assigned {ip} from pool")),
        "{assigned:?}"
    );
    eventually(
        &format!("web's AnnouncedIPv4 naming {first}"),
        LIMIT,
        || {
            condition(&lab, "web", "ferrolb.io/AnnouncedIPv4").filter(|c| {
                c.0 == "True"
                    && c.2
                        .starts_with(&format!("{ip} is announced by node {first} on "))
            })
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {:?}",
            condition(&lab, "web", "ferrolb.io/AnnouncedIPv4")
        )
    });
    // kube-proxy spreads connections at random: every replica answers.
    let mut seen = BTreeSet::new();
    eventually("an answer from every replica", LIMIT, || {
        seen.extend(pods_answering(&lab, target, 20));
        (seen == replicas).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: answered {seen:?} of {replicas:?}; logs in {}",
            lab.dir.display()
        )
    });

    // A dual-stack Service: both families through kube-proxy's ip and ip6 tables.
    lab.apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web2", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ipFamilyPolicy": "RequireDualStack",
                 "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    let ips = eventually("two EXTERNAL-IPs for web2", LIMIT, || {
        let ips = lab.external_ips("web2");
        (ips.len() == 2).then_some(ips)
    })
    .unwrap();
    for ip in &ips {
        let t: SocketAddr = if ip.contains(':') {
            format!("[{ip}]:80")
        } else {
            format!("{ip}:80")
        }
        .parse()
        .unwrap();
        eventually(&format!("an answer on {t}"), LIMIT, || {
            (!pods_answering(&lab, t, 5).is_empty()).then_some(())
        })
        .unwrap();
    }
    for kind in ["ferrolb.io/AnnouncedIPv4", "ferrolb.io/AnnouncedIPv6"] {
        eventually(&format!("web2's {kind}"), LIMIT, || {
            condition(&lab, "web2", kind).filter(|c| c.0 == "True" && c.1 == "Announced")
        })
        .unwrap();
    }

    // Failover: with externalTrafficPolicy Local a node forwards only to its
    // own Pods, so the owner's cut link is all that stops the traffic.
    set_policy(&lab, "web", "Local");
    eventually("20 answers in a row with Local", LIMIT, || {
        lab.answered(target, 20).then_some(())
    })
    .unwrap();
    let before = lab.owner(&ip).expect("a node answers ARP for the address");
    lab.unplug(&before).unwrap();
    let deadline = Instant::now() + LIMIT;
    let after = loop {
        let ok = lab.answered(target, 3);
        match lab.owner(&ip) {
            Some(n) if ok && n != before => break n,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no other node took {ip} over from {before}; logs in {}",
            lab.dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The unplugged node saw its announcing interface lose carrier and
    // stepped out of the membership (ferrolb_carrier 0); plugged back, it
    // is back once carrier has held for 2 s.
    let carrier = |lab: &Lab, node: &str| {
        lab.speaker_metrics(lab.node(node).unwrap())
            .filter(|m| m.contains("\nferrolb_carrier "))
            .map(|m| ferrolb_tests::lab::metric(&m, "ferrolb_carrier"))
    };
    eventually(&format!("{before} reporting no carrier"), LIMIT, || {
        (carrier(&lab, &before) == Some(0.0)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", carrier(&lab, &before)));
    lab.plug(&before).unwrap();
    eprintln!("{ip}: {before} unplugged, {after} took over");
    eventually(&format!("{before} reporting carrier again"), LIMIT, || {
        (carrier(&lab, &before) == Some(1.0)).then_some(())
    })
    .unwrap();
    // The new owner says so in the condition (written after the takeover).
    eventually(
        &format!("web's AnnouncedIPv4 naming {after}"),
        LIMIT,
        || {
            condition(&lab, "web", "ferrolb.io/AnnouncedIPv4")
                .filter(|c| c.0 == "True" && c.2.contains(&format!(" by node {after} on ")))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {:?}",
            condition(&lab, "web", "ferrolb.io/AnnouncedIPv4")
        )
    });

    // A stall of the new owner's speaker (SIGSTOP): it re-joins and reads
    // its own Node before it answers again; the address is served meanwhile.
    let node = lab.node(&after).unwrap().clone();
    let witness = lab.nodes.iter().find(|n| n.name != after).unwrap().clone();
    let pid = eventually("the speaker's process", LIMIT, || {
        lab.pids_in(&node.ns, "ferrolb-speaker").first().copied()
    })
    .unwrap();
    lab.stall_speaker(pid, &node, &witness).unwrap();
    eventually("answers after the stall", LIMIT, || {
        lab.answered(target, 5).then_some(())
    })
    .unwrap();

    // The controller's other writes: a failed allocation, an invalid config
    // (and the last good one kept), a release.
    lab.apply(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "outside", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "loadBalancerIP": "198.51.100.200",
                 "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    let failed = eventually("the AllocationFailed Event", LIMIT, || {
        event_message(&lab, "outside", "AllocationFailed")
    })
    .unwrap();
    // The condition says the same.
    eventually("outside's AddressAssigned condition", LIMIT, || {
        condition(&lab, "outside", "ferrolb.io/AddressAssigned").filter(|c| {
            (c.0.as_str(), c.1.as_str(), &c.2) == ("False", "AllocationFailed", &failed)
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {:?} vs the Event's {failed:?}",
            condition(&lab, "outside", "ferrolb.io/AddressAssigned")
        )
    });
    lab.kubectl(&[
        "-n",
        "ferrolb-system",
        "patch",
        "configmap",
        "config",
        "-p",
        r#"{"data":{"config":"address-pools: [\n"}}"#,
    ])
    .unwrap();
    eventually("the InvalidConfig Event", LIMIT, || {
        lab.kubectl(&[
            "-n",
            "ferrolb-system",
            "get",
            "events",
            "--field-selector",
            "reason=InvalidConfig",
            "-o",
            "name",
        ])
        .ok()
        .filter(|o| !o.trim().is_empty())
    })
    .unwrap();
    lab.kubectl(&[
        "patch",
        "svc",
        "web2",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .unwrap();
    eventually("web2's addresses released", LIMIT, || {
        lab.external_ips("web2").is_empty().then_some(())
    })
    .unwrap();
    assert_eq!(
        lab.external_ips("web"),
        vec![ip.clone()],
        "web kept its address"
    );
    // A changed request that cannot be met on a Service that has an
    // address: MetalLB's LoadBalancerFailed, and the address stays.
    lab.kubectl(&[
        "annotate",
        "svc",
        "web",
        "metallb.universe.tf/loadBalancerIPs=198.51.100.201",
    ])
    .unwrap();
    eventually("the LoadBalancerFailed Event", LIMIT, || {
        lab.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web,reason=LoadBalancerFailed",
            "-o",
            "name",
        ])
        .ok()
        .filter(|o| !o.trim().is_empty())
    })
    .unwrap();
    assert_eq!(
        lab.external_ips("web"),
        vec![ip.clone()],
        "web kept its address"
    );

    // The leading controller's metrics, also under MetalLB's names.
    let metrics = eventually("the leading controller's metrics", LIMIT, || {
        lab.leader_metrics()
    })
    .unwrap();
    let in_use = ferrolb_tests::lab::metric(&metrics, "ferrolb_addresses_in_use");
    assert!(in_use >= 1.0, "{metrics}");
    assert_eq!(
        ferrolb_tests::lab::metric(&metrics, "metallb_allocator_addresses_in_use_total"),
        in_use
    );
    assert_eq!(
        ferrolb_tests::lab::metric(&metrics, "metallb_allocator_addresses_total"),
        28.0,
        "192.0.2.240-250 and 2001:db8::240-250 (hexadecimal: 17 addresses)"
    );
    assert_eq!(
        ferrolb_tests::lab::metric(&metrics, "metallb_k8s_client_config_loaded_bool"),
        1.0
    );

    // The owner's speaker, under MetalLB's names too (it sent gratuitous
    // ARP when it took the address; the client may have asked it nothing).
    let owner_now = lab.owner(&ip).expect("an owner");
    let node = lab.node(&owner_now).unwrap().clone();
    let speaker = eventually("the owner's metallb_speaker_announced", LIMIT, || {
        lab.speaker_metrics(&node).filter(|m| {
            m.lines().any(|l| {
                l.starts_with("metallb_speaker_announced{")
                    && l.contains("service=\"default/web\"")
                    && l.contains(&format!("ip=\"{ip}\""))
                    && l.contains(&format!("node=\"{owner_now}\""))
                    && l.ends_with(" 1")
            })
        })
    })
    .unwrap();
    assert!(
        ferrolb_tests::lab::metric(&speaker, "metallb_layer2_gratuitous_sent") >= 1.0,
        "{speaker}"
    );

    // Every call of the controller and the speakers was allowed by the real
    // RBAC authorizer under the manifests' rules, and every permission the
    // manifests grant was used.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (denied, unused) = rbac_report(&lab);
        assert!(denied.is_empty(), "the API server denied: {denied:#?}");
        if unused.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "granted by the manifests but never used: {unused:#?} (audit log {})",
            lab.control_plane.as_ref().unwrap().audit_log().display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What Kubernetes itself does to ferrolb's Pods: a DaemonSet rollout of the
/// speakers, a speaker process killed (restarted by its "kubelet"), the
/// leading controller's Pod deleted; Services stay reachable throughout.
#[test]
fn rollouts_and_killed_processes_keep_services_reachable_on_a_real_control_plane() {
    let Some(lab) = lab(3) else { return };
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=ferrolb.io/lab-echo",
        "--replicas=3",
    ])
    .unwrap();
    // Two Services sharing one address (MetalLB's annotations): one MAC answers.
    for (name, port) in [("web", "80"), ("web-alt", "81")] {
        lab.kubectl(&[
            "expose",
            "deployment",
            "web",
            "--name",
            name,
            "--type=LoadBalancer",
            "--port",
            port,
            "--target-port=80",
        ])
        .unwrap();
        lab.kubectl(&[
            "annotate",
            "svc",
            name,
            "metallb.universe.tf/allow-shared-ip=web",
            "metallb.universe.tf/loadBalancerIPs=192.0.2.245",
        ])
        .unwrap();
    }
    for name in ["web", "web-alt"] {
        eventually(&format!("the shared address on {name}"), LIMIT, || {
            (lab.external_ips(name) == ["192.0.2.245"]).then_some(())
        })
        .unwrap();
    }
    let target: SocketAddr = "192.0.2.245:80".parse().unwrap();
    eventually("answers on both ports", LIMIT, || {
        let alt: SocketAddr = "192.0.2.245:81".parse().unwrap();
        (lab.answered(target, 5) && asks(&lab, alt, 5).iter().all(Option::is_some)).then_some(())
    })
    .unwrap();
    let macs = lab.arp_answerers("192.0.2.245", 5);
    assert_eq!(
        macs.len(),
        1,
        "one MAC answers for a shared address: {macs:?}"
    );

    // A rollout of the speaker DaemonSet (one node at a time, each speaker
    // handing over on SIGTERM) while the client connects every 10 ms.
    let prober = lab.start_prober(target).unwrap();
    let rollout = Instant::now();
    let before: BTreeSet<String> = lab
        .kubectl(&[
            "-n",
            "ferrolb-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=speaker",
            "-o",
            "name",
        ])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lab.kubectl(&[
        "-n",
        "ferrolb-system",
        "rollout",
        "restart",
        "daemonset/ferrolb-speaker",
    ])
    .unwrap();
    lab.kubectl(&[
        "-n",
        "ferrolb-system",
        "rollout",
        "status",
        "daemonset/ferrolb-speaker",
        "--timeout=180s",
    ])
    .unwrap();
    // Every speaker replaced and answering again.
    eventually("traffic after the rollout", LIMIT, || {
        asks(&lab, "192.0.2.245:81".parse().unwrap(), 3)
            .iter()
            .all(Option::is_some)
            .then_some(())
    })
    .unwrap();
    prober.wait_answer_after(rollout, LIMIT).unwrap();
    let (answers, longest) = prober.stop();
    let after: BTreeSet<String> = lab
        .kubectl(&[
            "-n",
            "ferrolb-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=speaker",
            "-o",
            "name",
        ])
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        before.is_disjoint(&after),
        "every speaker Pod replaced: {before:?} {after:?}"
    );
    assert!(answers > 100, "the prober got {answers} answers");
    eprintln!("speaker DaemonSet rollout: {answers} answers, longest gap {longest} ms");
    assert!(
        longest < 5_000,
        "traffic stopped for {longest} ms during the rollout"
    );

    // The owner's speaker killed (SIGKILL, no hand-over): another node takes
    // over, and the agent starts the process again.
    let owner = lab.owner("192.0.2.245").expect("an owner");
    let node = lab.node(&owner).unwrap().clone();
    let pids = lab.pids_in(&node.ns, "ferrolb-speaker");
    assert_eq!(pids.len(), 1, "one speaker on {owner}: {pids:?}");
    ferrolb_tests::lab::run("kill", &["-KILL", &pids[0].to_string()]).unwrap();
    eventually(
        "answers after the owner's speaker was killed",
        LIMIT,
        || lab.answered(target, 3).then_some(()),
    )
    .unwrap();
    eventually("the killed speaker started again", LIMIT, || {
        let now = lab.pids_in(&node.ns, "ferrolb-speaker");
        (now.len() == 1 && now[0] != pids[0]).then_some(())
    })
    .unwrap();

    // The leading controller's Pod deleted: the other replica takes the Lease
    // and serves a new Service; no address changes.
    let leader = eventually("the controller Lease's holder", LIMIT, || {
        lab.kubectl(&[
            "-n",
            "ferrolb-system",
            "get",
            "lease",
            "ferrolb-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .ok()
        .filter(|h| !h.trim().is_empty())
    })
    .unwrap();
    lab.kubectl(&[
        "-n",
        "ferrolb-system",
        "delete",
        "pod",
        leader.trim(),
        "--wait=false",
    ])
    .unwrap();
    lab.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--name",
        "web-new",
        "--type=LoadBalancer",
        "--port=80",
    ])
    .unwrap();
    let ip = eventually(
        "an address for a Service created after the leader left",
        LIMIT,
        || lab.external_ips("web-new").into_iter().next(),
    )
    .unwrap();
    assert_ne!(ip, "192.0.2.245");
    assert_eq!(lab.external_ips("web"), ["192.0.2.245"]);
    assert_eq!(lab.external_ips("web-alt"), ["192.0.2.245"]);
}

/// Starts the client probing `target` every 10 ms (for at most 10 minutes).
/// A node being taken out (the exclusion label, the cluster autoscaler's
/// taint) loses its addresses to another node while it still runs; a label
/// whose value is false keeps it eligible.
#[test]
fn an_excluded_or_departing_node_hands_its_addresses_over_on_a_real_control_plane() {
    let Some(lab) = lab(3) else { return };
    let (ip, target) = lab.quickstart_web().unwrap();
    let label = "node.kubernetes.io/exclude-from-external-load-balancers";

    // "false" keeps the owner.
    let first = lab.owner(&ip).expect("an owner");
    lab.kubectl(&["label", "node", &first, &format!("{label}=false")])
        .unwrap();
    eventually("20 answers in a row", LIMIT, || {
        lab.answered(target, 20).then_some(())
    })
    .unwrap();
    assert_eq!(
        lab.owner(&ip).as_deref(),
        Some(first.as_str()),
        "a false label keeps the node"
    );

    let mut moved = vec![first.clone()];
    for step in ["label", "taint"] {
        let from = lab.owner(&ip).expect("an owner");
        let prober = lab.start_prober(target).unwrap();
        let event = Instant::now();
        match step {
            "label" => lab.kubectl(&[
                "label",
                "node",
                &from,
                &format!("{label}=true"),
                "--overwrite",
            ]),
            _ => lab.kubectl(&[
                "taint",
                "node",
                &from,
                "ToBeDeletedByClusterAutoscaler=1700000000:NoSchedule",
            ]),
        }
        .unwrap();
        let to = eventually(&format!("{ip} moved off {from} ({step})"), LIMIT, || {
            let ok = lab.answered(target, 3);
            lab.owner(&ip).filter(|n| ok && *n != from)
        })
        .unwrap();
        prober.wait_answer_after(event, LIMIT).unwrap();
        let (answers, gap) = prober.stop();
        eprintln!(
            "{step}: {ip} moved from {from} to {to}; longest gap {gap} ms over {answers} answers"
        );
        assert!(!moved.contains(&to), "{to} was already taken out");
        assert!(answers > 10, "the prober got {answers} answers");
        assert!(
            gap < 5_000,
            "traffic stopped for {gap} ms when {from} was taken out ({step})"
        );
        moved.push(to);
    }

    // Ownership flapping (MetalLB users saw millions of repeated Events):
    // with two nodes eligible again, the preferred one is excluded and let
    // back in 4 times, 8 moves. Each node already published its Announcing
    // Event for web: the repeats are dropped (and counted), not published.
    lab.kubectl(&[
        "taint",
        "node",
        &moved[1],
        "ToBeDeletedByClusterAutoscaler-",
    ])
    .unwrap();
    let preferred = eventually("web served from the preferred of two nodes", LIMIT, || {
        let n = lab.owner(&ip)?;
        let ok = lab.answered(target, 3);
        (ok && n == moved[1]).then_some(n)
    })
    .unwrap_or_else(|e| panic!("{e:#}: owner {:?}", lab.owner(&ip)));
    let other = moved[2].clone();
    let announcing_before = events_count(&lab, "web", "Announcing");
    let suppressed = |lab: &Lab| -> f64 {
        lab.nodes
            .iter()
            .filter_map(|n| lab.speaker_metrics(n))
            .map(|m| {
                ferrolb_tests::lab::metric(&m, "ferrolb_events_suppressed_total{reason=\"repeat\"}")
            })
            .sum()
    };
    let suppressed_before = suppressed(&lab);
    for round in 0..4 {
        for (value, want) in [("true", &other), ("false", &preferred)] {
            lab.kubectl(&[
                "label",
                "node",
                &preferred,
                &format!("{label}={value}"),
                "--overwrite",
            ])
            .unwrap();
            eventually(&format!("round {round}: {ip} on {want}"), LIMIT, || {
                let ok = lab.answered(target, 2);
                lab.owner(&ip).filter(|n| ok && n == want)
            })
            .unwrap();
        }
    }
    // Every gain after the first of each node was a repeat.
    eventually("the repeats counted by the speakers", LIMIT, || {
        (suppressed(&lab) >= suppressed_before + 6.0).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {} before, {} now",
            suppressed_before,
            suppressed(&lab)
        )
    });
    let announcing_after = events_count(&lab, "web", "Announcing");
    eprintln!(
        "8 moves of {ip} between {preferred} and {other}: Announcing Events on web {announcing_before} -> {announcing_after}, repeats suppressed {}",
        suppressed(&lab) - suppressed_before
    );
    assert!(
        announcing_after <= announcing_before + 2,
        "{announcing_before} Announcing Events before 8 moves, {announcing_after} after"
    );
    // The condition follows the last move.
    eventually(
        &format!("web's AnnouncedIPv4 naming {preferred}"),
        LIMIT,
        || {
            condition(&lab, "web", "ferrolb.io/AnnouncedIPv4")
                .filter(|c| c.0 == "True" && c.2.contains(&format!(" by node {preferred} on ")))
        },
    )
    .unwrap();
}

/// kube-proxy killed on the owner: its speaker leaves the membership once
/// the health check has failed for the threshold (500 ms), the next node
/// takes over first; a kube-proxy paused for less than the threshold moves
/// nothing.
#[test]
fn a_dead_kube_proxy_takes_its_node_out_on_a_real_control_plane() {
    let Some(mut lab) = lab(3) else { return };
    let (ip, target) = lab.quickstart_web().unwrap();
    set_policy(&lab, "web", "Local");
    // web's healthCheckNodePort on its owner stops answering (dropped by
    // nftables in the owner's namespace, while the EndpointSlices still show
    // a ready Pod there): the owner withdraws from web (its Pod's
    // annotation) and a node with a ready Pod takes over; unblocked, the
    // withdrawal ends.
    let hc_owner = eventually("web's owner", LIMIT, || {
        lab.answered(target, 3).then(|| lab.owner(&ip)).flatten()
    })
    .unwrap();
    let port = service(&lab, "web").unwrap()["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a Local Service has a healthCheckNodePort");
    let hc_ns = lab.node(&hc_owner).unwrap().ns.clone();
    let nft = |args: &str| lab.nft(&hc_ns, args).unwrap();
    let withdrawn_on = |node: &str| -> Option<String> {
        let pods: serde_json::Value = serde_json::from_str(
            &lab.kubectl(&[
                "-n",
                "ferrolb-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=speaker",
                "-o",
                "json",
            ])
            .ok()?,
        )
        .ok()?;
        pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .find_map(|p| {
                p["metadata"]["annotations"]["ferrolb.io/withdrawn-services"]
                    .as_str()
                    .map(str::to_owned)
            })
    };
    nft("add table inet flbtest");
    nft("add chain inet flbtest input { type filter hook input priority -10 ; }");
    nft(&format!(
        "add rule inet flbtest input tcp dport {port} drop"
    ));
    let hc_to = eventually(
        &format!("{ip} moved off {hc_owner} (healthCheckNodePort)"),
        LIMIT,
        || {
            let ok = lab.answered(target, 3);
            lab.owner(&ip).filter(|n| ok && *n != hc_owner)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; logs in {}", lab.dir.display()));
    assert_eq!(withdrawn_on(&hc_owner).as_deref(), Some("default/web"));
    eprintln!("{ip}: healthCheckNodePort {port} blocked on {hc_owner}, {hc_to} took over");
    nft("delete table inet flbtest");
    eventually(&format!("{hc_owner} no longer withdrawn"), LIMIT, || {
        withdrawn_on(&hc_owner).is_none().then_some(())
    })
    .unwrap();
    eventually("answers after the withdrawal ended", LIMIT, || {
        lab.answered(target, 5).then_some(())
    })
    .unwrap();
    set_policy(&lab, "web", "Cluster");
    eventually("answers with Cluster again", LIMIT, || {
        lab.answered(target, 5).then_some(())
    })
    .unwrap();
    let first = lab.owner(&ip).expect("an owner");
    let healthy = |lab: &Lab, node: &str| {
        let h = lab.node(node).unwrap();
        lab.speaker_metrics(h)
            .map(|m| ferrolb_tests::lab::metric(&m, "ferrolb_data_path_healthy"))
    };
    eventually("the owner's data-path check passing", LIMIT, || {
        (healthy(&lab, &first) == Some(1.0)).then_some(())
    })
    .unwrap();

    // A pause shorter than the threshold: nothing moves.
    let pid = lab.pid(&format!("kube-proxy-{first}")).unwrap();
    let prober = lab.start_prober(target).unwrap();
    let stopped = Instant::now();
    ferrolb_tests::lab::run("kill", &["-STOP", &pid.to_string()]).unwrap();
    // The fault's length (not a wait for a condition): well under 500 ms.
    std::thread::sleep(Duration::from_millis(200));
    ferrolb_tests::lab::run("kill", &["-CONT", &pid.to_string()]).unwrap();
    eventually("answers after the pause", LIMIT, || {
        lab.answered(target, 5).then_some(())
    })
    .unwrap();
    prober.wait_answer_after(stopped, LIMIT).unwrap();
    let (_, gap) = prober.stop();
    assert_eq!(
        lab.owner(&ip).as_deref(),
        Some(first.as_str()),
        "a 200 ms pause moved the address"
    );
    assert_eq!(healthy(&lab, &first), Some(1.0));
    eprintln!("kube-proxy paused 200 ms: {ip} stayed on {first}; longest gap {gap} ms");

    // Killed: the address moves within the threshold and a few probes.
    let prober = lab.start_prober(target).unwrap();
    let killed = Instant::now();
    lab.signal(&format!("kube-proxy-{first}"), "KILL").unwrap();
    let to = eventually(&format!("{ip} moved off {first}"), LIMIT, || {
        lab.owner(&ip).filter(|n| *n != first)
    })
    .unwrap();
    let moved_after = killed.elapsed();
    eventually("answers from the new owner", LIMIT, || {
        lab.answered(target, 5).then_some(())
    })
    .unwrap();
    prober.wait_answer_after(killed, LIMIT).unwrap();
    let (answers, gap) = prober.stop();
    eprintln!(
        "kube-proxy killed on {first}: {ip} moved to {to} {} ms after the kill; longest gap {gap} ms over {answers} answers",
        moved_after.as_millis()
    );
    assert_eq!(
        healthy(&lab, &first),
        Some(0.0),
        "the check says the data path is down"
    );
    assert!(gap < 5_000, "traffic stopped for {gap} ms");

    // kube-proxy back: the node passes the check again and re-joins.
    lab.start_kube_proxy(&first).unwrap();
    eventually("the data-path check passing again", LIMIT, || {
        (healthy(&lab, &first) == Some(1.0)).then_some(())
    })
    .unwrap();
    eventually("answers after kube-proxy came back", LIMIT, || {
        lab.answered(target, 5).then_some(())
    })
    .unwrap();
}
