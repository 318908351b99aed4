//! End-to-end tests on the lighter lab: real controller and speakers, the
//! test API server, one DNAT rule per node in place of kube-proxy, in network
//! namespaces (needs root, as CI runs). Each test builds its own lab (unique
//! namespace names) and tears it down.
//!
//! The same stories on a real control plane, with kube-proxy and ferrolb
//! deployed from the manifests, are in `lab_real.rs` (quickstart, dual-stack,
//! a shared address, link cut, speaker kill, a DaemonSet rollout, the leader's
//! Pod deleted, a stall, invalid config, the manifests' RBAC under the real
//! authorizer). What stays here only: the API server stopped and restarted
//! under the speakers (the test API server's fault injection), a controller
//! restarted mid-churn and a stale config observed on the wire (both need
//! the controller and speakers started directly), and the lab's own checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrolb_tests::lab::{DUAL_STACK_POOLS, Lab, LabOptions, eventually};

const LIMIT: Duration = Duration::from_secs(60);

fn lab(nodes: usize) -> Lab {
    lab_with(nodes, None)
}

fn lab_with(nodes: usize, rbac_manifests: Option<PathBuf>) -> Lab {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"));
    let bin_dir = exe.parent().unwrap().to_path_buf();
    if let Err(e) = Lab::check_binaries(&bin_dir) {
        panic!("{e:#} (`cargo test --workspace` builds every binary)");
    }
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let config = std::env::temp_dir().join(format!(
        "ferrolb-lab-config-{}-{n}.yaml",
        std::process::id()
    ));
    std::fs::write(&config, DUAL_STACK_POOLS).unwrap();
    Lab::up(&LabOptions {
        nodes,
        bin_dir,
        kubeconfig: None,
        config,
        rbac_manifests,
        real: None,
    })
    .expect("the lab comes up")
}

/// Asks the Service from the client; the node whose backend answered.
fn ask(lab: &Lab, ip: &str) -> Option<String> {
    let target: SocketAddr = if ip.contains(':') {
        format!("[{ip}]:80")
    } else {
        format!("{ip}:80")
    }
    .parse()
    .unwrap();
    let out = lab
        .exec(
            &lab.client.ns,
            &[
                env!("CARGO_BIN_EXE_ferrolb-lab"),
                "probe",
                "--target",
                &target.to_string(),
                "--duration-ms",
                "1",
                "--timeout-ms",
                "300",
            ],
        )
        .ok()?;
    out.lines()
        .find_map(|l| l.split_once(" ok ").map(|(_, n)| n.to_owned()))
}

fn wait_ips(lab: &Lab, svc: &str, count: usize) -> Vec<String> {
    eventually(&format!("{count} addresses for {svc}"), LIMIT, || {
        let ips = lab.external_ips(svc);
        (ips.len() == count).then_some(ips)
    })
    .unwrap()
}

#[test]
fn ipv4_ipv6_and_dual_stack_services_are_reachable_through_their_owner() {
    let lab = lab(3);
    lab.create_service("v4", serde_json::json!({})).unwrap();
    lab.create_service(
        "v6",
        serde_json::json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}),
    )
    .unwrap();
    lab.create_service(
        "ds",
        serde_json::json!({"ipFamilyPolicy": "RequireDualStack"}),
    )
    .unwrap();
    let v4 = wait_ips(&lab, "v4", 1);
    let v6 = wait_ips(&lab, "v6", 1);
    let ds = wait_ips(&lab, "ds", 2);
    assert!(
        ds[0].contains('.') && ds[1].contains(':'),
        "IPv4 first: {ds:?}"
    );
    for ip in v4.iter().chain(&v6).chain(&ds) {
        lab.forward(ip, 80).unwrap();
    }
    for ip in v4.iter().chain(&v6).chain(&ds) {
        let served = eventually(&format!("an answer from {ip}"), LIMIT, || ask(&lab, ip)).unwrap();
        // The traffic entered the node whose MAC the client resolved: the owner.
        let mac = lab
            .client_neighbour(ip)
            .expect("the client resolved the address");
        let owner = lab.node_by_mac(&mac).expect("a node's MAC").name.clone();
        assert_eq!(
            served, owner,
            "{ip} was served by the node that answered ARP/NDP"
        );
    }
    // Both families of the dual-stack Service are on one node.
    assert_eq!(lab.client_neighbour(&ds[0]), lab.client_neighbour(&ds[1]));
}

#[test]
fn services_sharing_an_address_are_answered_by_exactly_one_mac() {
    let lab = lab(3);
    for (name, port) in [("a", 80), ("b", 81), ("c", 82)] {
        lab.create_service(
            name,
            serde_json::json!({"ports": [{"name": "p", "port": port, "targetPort": 8080, "protocol": "TCP"}]}),
        )
        .unwrap();
        lab.kubectl(&[
            "annotate",
            "svc",
            name,
            "ferrolb.io/allow-shared-ip=k",
            "ferrolb.io/loadBalancerIPs=192.0.2.245",
        ])
        .unwrap();
    }
    for name in ["a", "b", "c"] {
        eventually("the shared address", LIMIT, || {
            (lab.external_ips(name) == ["192.0.2.245"]).then_some(())
        })
        .unwrap();
    }
    let macs = eventually("an ARP answer", LIMIT, || {
        let m = lab.arp_answerers("192.0.2.245", 5);
        (!m.is_empty()).then_some(m)
    })
    .unwrap();
    assert_eq!(
        macs.len(),
        1,
        "one MAC answers for a shared address: {macs:?}"
    );
    // Still one after more probes.
    assert_eq!(lab.arp_answerers("192.0.2.245", 10), macs);
}

#[test]
fn owner_link_cut_and_speaker_kill_move_traffic_by_gratuitous_arp() {
    // Four nodes: after two failures the survivors still see each other. (With
    // three, the last one could reach no peer while peers are expected, and
    // fences itself, as docs/architecture.md, section 5, says it must.)
    let mut lab = lab(4);
    lab.create_service("web", serde_json::json!({})).unwrap();
    let ip = wait_ips(&lab, "web", 1).remove(0);
    lab.forward(&ip, 80).unwrap();
    let first = eventually("an answer", LIMIT, || ask(&lab, &ip)).unwrap();

    // The owner's speaker is SIGKILLed: another node takes the address and
    // tells the client by gratuitous ARP; the client's entry changes without
    // it asking (its entry was fresh, well within the reachable time).
    lab.signal(&format!("speaker-{first}"), "KILL").unwrap();
    let second = eventually("a new owner in the client's neighbour table", LIMIT, || {
        let mac = lab.client_neighbour(&ip)?;
        let n = lab.node_by_mac(&mac)?.name.clone();
        (n != first).then_some(n)
    })
    .unwrap();
    assert_eq!(
        eventually("an answer", LIMIT, || ask(&lab, &ip)).unwrap(),
        second
    );

    // Now the new owner's link is cut: the third node takes over.
    lab.cut_link(&second).unwrap();
    let third = eventually("another owner", LIMIT, || {
        let mac = lab.client_neighbour(&ip)?;
        let n = lab.node_by_mac(&mac)?.name.clone();
        (n != first && n != second).then_some(n)
    })
    .unwrap();
    assert_eq!(
        eventually("an answer after the cut", LIMIT, || ask(&lab, &ip)).unwrap(),
        third
    );
}

/// The node that answers ARP for `ip`, once exactly one does.
fn arp_owner(lab: &Lab, ip: &str) -> Option<String> {
    match lab.arp_answerers(ip, 2).as_slice() {
        [mac] => lab.node_by_mac(mac).map(|n| n.name.clone()),
        _ => None,
    }
}

#[test]
fn local_policy_owner_follows_the_endpoint() {
    let lab = lab(3);
    lab.create_service(
        "local",
        serde_json::json!({"externalTrafficPolicy": "Local"}),
    )
    .unwrap();
    lab.set_endpoints("local", &["node-2"]).unwrap();
    let ip = wait_ips(&lab, "local", 1).remove(0);
    eventually("node-2 to own the address", LIMIT, || {
        (arp_owner(&lab, &ip)? == "node-2").then_some(())
    })
    .unwrap();
    lab.set_endpoints("local", &["node-3"]).unwrap();
    eventually("node-3 to own the address", LIMIT, || {
        (arp_owner(&lab, &ip)? == "node-3").then_some(())
    })
    .unwrap();
    // No serving endpoint anywhere: nobody answers.
    lab.set_endpoints("local", &[]).unwrap();
    eventually("silence", LIMIT, || {
        lab.arp_answerers(&ip, 2).is_empty().then_some(())
    })
    .unwrap();
}

#[test]
fn controller_restart_during_churn_changes_no_address() {
    let mut lab = lab(2);
    for i in 0..6 {
        lab.create_service(&format!("s{i}"), serde_json::json!({}))
            .unwrap();
    }
    let before: Vec<Vec<String>> = (0..6)
        .map(|i| wait_ips(&lab, &format!("s{i}"), 1))
        .collect();
    lab.signal("controller", "KILL").unwrap();
    lab.wait_exit("controller", LIMIT).unwrap();
    for i in 6..9 {
        lab.create_service(&format!("s{i}"), serde_json::json!({}))
            .unwrap();
    }
    lab.start_controller().unwrap();
    let after: Vec<Vec<String>> = (0..9)
        .map(|i| wait_ips(&lab, &format!("s{i}"), 1))
        .collect();
    assert_eq!(
        &after[..6],
        &before[..],
        "no address moved across the restart"
    );
    let mut all: Vec<&String> = after.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "no address is duplicated: {after:?}");
}

#[test]
fn announced_addresses_keep_answering_while_the_api_server_is_down() {
    let lab = lab(2);
    lab.create_service("web", serde_json::json!({})).unwrap();
    let ip = wait_ips(&lab, "web", 1).remove(0);
    lab.forward(&ip, 80).unwrap();
    let owner = eventually("an answer", LIMIT, || ask(&lab, &ip)).unwrap();
    // The test API server goes away for 60 s and comes back with its contents.
    let body = lab.dir.join("empty.json");
    std::fs::write(&body, "{}").unwrap();
    lab.kubectl(&[
        "create",
        "--raw",
        "/admin/restart?contents=keep&downMs=60000",
        "-f",
        &body.to_string_lossy(),
    ])
    .unwrap();
    eventually("the API server to go down", LIMIT, || {
        lab.kubectl(&["get", "ns"]).is_err().then_some(())
    })
    .unwrap();
    let down_since = std::time::Instant::now();
    while down_since.elapsed() < Duration::from_secs(50) {
        assert_eq!(
            ask(&lab, &ip).as_deref(),
            Some(owner.as_str()),
            "{ip} stopped answering {:?} into the outage",
            down_since.elapsed()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eventually("the API server to return", Duration::from_secs(90), || {
        lab.kubectl(&["get", "ns"]).is_ok().then_some(())
    })
    .unwrap();
    lab.create_service("after", serde_json::json!({})).unwrap();
    let after = wait_ips(&lab, "after", 1);
    assert_ne!(after[0], ip);
}

#[test]
fn invalid_then_stale_config_changes_nothing_on_the_wire() {
    let lab = lab(2);
    lab.create_service("web", serde_json::json!({})).unwrap();
    let ip = wait_ips(&lab, "web", 1).remove(0);
    let owner = eventually("one owner", LIMIT, || arp_owner(&lab, &ip)).unwrap();
    let events = || {
        lab.kubectl(&[
            "get",
            "events",
            "-n",
            "ferrolb-system",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap_or_default()
    };

    lab.kubectl(&[
        "patch",
        "configmap",
        "config",
        "-n",
        "ferrolb-system",
        "--type=merge",
        "-p",
        r#"{"data":{"config":"address-pools: [\n"}}"#,
    ])
    .unwrap();
    eventually("an InvalidConfig Event", LIMIT, || {
        events().contains("InvalidConfig").then_some(())
    })
    .unwrap();
    assert_eq!(lab.external_ips("web"), vec![ip.clone()]);
    assert_eq!(arp_owner(&lab, &ip).as_deref(), Some(owner.as_str()));

    // Valid, but without the held address: refused as stale.
    let stale = "address-pools:\n- name: lab\n  protocol: layer2\n  addresses: [192.0.2.249/32]\n";
    let patch = serde_json::json!({"data": {"config": stale}}).to_string();
    lab.kubectl(&[
        "patch",
        "configmap",
        "config",
        "-n",
        "ferrolb-system",
        "--type=merge",
        "-p",
        &patch,
    ])
    .unwrap();
    eventually("a StaleConfig Event", LIMIT, || {
        events().contains("StaleConfig").then_some(())
    })
    .unwrap();
    assert_eq!(lab.external_ips("web"), vec![ip.clone()]);
    // Give the speakers time to (wrongly) act on it, then check the wire again.
    for _ in 0..3 {
        assert_eq!(
            arp_owner(&lab, &ip).as_deref(),
            Some(owner.as_str()),
            "the owner still answers for {ip}"
        );
    }
    // Once the Service is gone, the refused config takes effect everywhere:
    // a new Service gets the one address it allows, and it is announced.
    lab.kubectl(&["delete", "svc", "web"]).unwrap();
    lab.create_service("next", serde_json::json!({})).unwrap();
    assert_eq!(wait_ips(&lab, "next", 1), ["192.0.2.249"]);
    eventually("192.0.2.249 announced", LIMIT, || {
        arp_owner(&lab, "192.0.2.249")
    })
    .unwrap();
}

#[test]
fn rolling_restart_of_every_speaker_keeps_services_reachable() {
    let mut lab = lab(3);
    lab.create_service("web", serde_json::json!({})).unwrap();
    let ip = wait_ips(&lab, "web", 1).remove(0);
    lab.forward(&ip, 80).unwrap();
    eventually("an answer", LIMIT, || ask(&lab, &ip)).unwrap();
    let prober = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.ns,
            env!("CARGO_BIN_EXE_ferrolb-lab"),
            "probe",
        ])
        .args([
            "--target",
            &format!("{ip}:80"),
            "--interval-ms",
            "10",
            "--duration-ms",
            "20000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for n in lab.nodes.clone() {
        let what = format!("speaker-{}", n.name);
        lab.signal(&what, "TERM").unwrap();
        lab.wait_exit(&what, LIMIT).unwrap();
        lab.start_speaker(&n).unwrap();
        // Pacing, as a DaemonSet rollout waits for readiness: not an assertion.
        std::thread::sleep(Duration::from_secs(4));
    }
    let out = prober.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout);
    let ok: Vec<u64> = lines
        .lines()
        .filter(|l| l.contains(" ok "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(ok.len() > 100, "the prober got {} answers", ok.len());
    let longest = ok.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!("rolling restart of 3 speakers: longest gap between answers {longest} ms");
    assert!(
        longest < 5_000,
        "traffic stopped for {longest} ms during the rolling restart"
    );
    assert!(
        lines.lines().last().is_some_and(|l| l.contains(" ok ")),
        "answering at the end"
    );
}

#[test]
fn the_manifests_grant_exactly_what_the_controller_and_speakers_use() {
    let manifests = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"));
    let mut lab = lab_with(2, Some(manifests));
    lab.create_service("web", serde_json::json!({})).unwrap();
    let ip = wait_ips(&lab, "web", 1).remove(0);
    let owner = eventually("an owner", LIMIT, || arp_owner(&lab, &ip)).unwrap();
    // A graceful stop and a restart: the speaker's leave and join paths.
    let what = format!("speaker-{owner}");
    lab.signal(&what, "TERM").unwrap();
    lab.wait_exit(&what, LIMIT).unwrap();
    let node = lab.node(&owner).unwrap().clone();
    lab.start_speaker(&node).unwrap();
    // A stall (SIGSTOP until its peer counts it out): the speaker reads its
    // own Node before it answers again.
    let witness = lab.nodes.iter().find(|n| n.name != owner).unwrap().clone();
    eventually("the restarted speaker's metrics", LIMIT, || {
        lab.speaker_metrics(&node)
    })
    .unwrap();
    lab.stall_speaker(lab.pid(&what).unwrap(), &node, &witness)
        .unwrap();
    let report = || -> serde_json::Value {
        serde_json::from_str(&lab.kubectl(&["get", "--raw", "/admin/rbac"]).unwrap()).unwrap()
    };
    // Every granted permission is used within a while (events, lease renewals...).
    let r = eventually("every permission to be used", LIMIT, || {
        let r = report();
        r["unused"]
            .as_object()?
            .values()
            .all(|v| v.as_array().is_some_and(Vec::is_empty))
            .then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", report()));
    assert_eq!(
        r["denied"],
        serde_json::json!([]),
        "calls the manifests do not allow"
    );
}

#[test]
fn a_pool_overlapping_the_labs_own_addresses_is_refused() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-lab"));
    let config = std::env::temp_dir().join(format!(
        "ferrolb-lab-bad-config-{}.yaml",
        std::process::id()
    ));
    std::fs::write(
        &config,
        DUAL_STACK_POOLS.replace("192.0.2.240-192.0.2.250", "192.0.2.0/28"),
    )
    .unwrap();
    let err = Lab::up(&LabOptions {
        nodes: 1,
        bin_dir: exe.parent().unwrap().to_path_buf(),
        kubeconfig: None,
        config,
        rbac_manifests: None,
        real: None,
    })
    .err()
    .expect("a pool containing the lab's own addresses is refused");
    assert!(
        err.to_string().contains("which the lab itself uses"),
        "{err}"
    );
}
