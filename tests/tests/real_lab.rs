//! The real control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler) with the lab's node agent and the real kube-proxy on two
//! node namespaces: a Deployment of lab-echo Pods behind a LoadBalancer
//! Service answers on the LoadBalancer IP through either node
//! (docs/lab-agent.md).
//!
//! Needs root (network namespaces) and the binaries of scripts/build-kube.sh:
//! ```text
//! FERROLB_KUBE_BIN=$(scripts/build-kube.sh | tail -n1) cargo test -p ferrolb-tests --test real_lab
//! ```
//! Only namespaces the test creates are touched, with addresses from
//! 192.0.2.0/24 and 2001:db8::/32; the Service ranges are 198.51.100.0/24 and
//! 2001:db8:96::/108.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferrolb_tests::kube::{
    ControlPlane, ControlPlaneOptions, DOC_SERVICE_CIDRS, KUBE_BIN_ENV, KubeBinaries,
};
use ferrolb_tests::kubeproxy::{KubeProxy, ProxyMode, nft_rules};
use ferrolb_tests::lab::{in_netns, run};
use ferrolb_tests::nodenet::{Segment, http_get, sysctl};
use serde_json::{Value, json};

const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 240);
const NODES: [(&str, &str, &str); 2] = [
    ("node-1", "192.0.2.128/29", "2001:db8::8:0/120"),
    ("node-2", "192.0.2.136/29", "2001:db8::9:0/120"),
];

/// Polls `f` every 250 ms until it returns `Some`, checking that every
/// process still runs; panics after `limit`.
fn wait<T>(
    seg: &mut Segment,
    what: &str,
    limit: Duration,
    mut f: impl FnMut(&mut Segment) -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Err(e) = seg.check_alive() {
            panic!("waiting for {what}: {e:#}");
        }
        if let Some(v) = f(seg) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; logs in {}",
            seg.dir.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Option<Value> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&cp.kubectl(&full).ok()?).ok()
}

fn ready_endpoints(cp: &ControlPlane, service: &str) -> Vec<String> {
    let label = format!("kubernetes.io/service-name={service}");
    let Some(list) = get_json(cp, &["endpointslices", "-n", "default", "-l", &label]) else {
        return vec![];
    };
    let mut ips = vec![];
    for slice in list["items"].as_array().into_iter().flatten() {
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            if ep["conditions"]["ready"] == true {
                ips.push(ep["addresses"][0].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    ips.sort();
    ips
}

fn echo_pods(cp: &ControlPlane) -> Vec<Value> {
    get_json(cp, &["pods", "-n", "default", "-l", "app=echo"])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
}

/// From the client namespace, GETs the LoadBalancer IP until every name in
/// `want` answered; returns the answers per Pod and the number of requests.
fn reach_all(seg: &Segment, want: &BTreeSet<String>) -> (BTreeSet<String>, usize, Vec<String>) {
    let ns = seg.host("client").ns.clone();
    let want = want.clone();
    in_netns(&ns, move || {
        let mut seen = BTreeSet::new();
        let mut answers = vec![];
        let mut errors = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while n < 300 && Instant::now() < deadline && seen != want {
            n += 1;
            match http_get(
                SocketAddr::new(IpAddr::V4(LB_IP), 80),
                Duration::from_secs(3),
            ) {
                Ok(body) => {
                    let pod = body
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("pod="))
                        .unwrap_or_default()
                        .to_owned();
                    answers.push(body.trim().to_owned());
                    seen.insert(pod);
                }
                Err(_) => {
                    errors += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        answers.push(format!("({errors} failed requests)"));
        (seen, n, answers)
    })
    .expect("a thread in the client namespace")
}

/// Whether kube-proxy's rules send the LoadBalancer IP to the echo-lb
/// Service chain, and that chain to every one of `endpoints` (the ClusterIP
/// Service's chain has the same endpoints but is updated on its own).
fn lb_chain_has(rules: &str, endpoints: &[String]) -> bool {
    let external = rules.contains(&format!("{LB_IP} . tcp . 80 : goto external-"));
    let mut lines = rules.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("chain service-") && line.contains("default/echo-lb/") {
            let body: String = lines.by_ref().take_while(|l| l.trim() != "}").collect();
            return external
                && endpoints
                    .iter()
                    .all(|e| body.contains(&format!("{e} . 8080")));
        }
    }
    false
}

#[test]
fn agents_and_kube_proxy_serve_a_load_balancer_ip() {
    let Some(bins) = KubeBinaries::from_env() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{KUBE_BIN_ENV} must be set in CI (scripts/test.sh sets it)"
        );
        eprintln!(
            "real_lab skipped: {KUBE_BIN_ENV} is unset. Run it as root with the real Kubernetes binaries:\n  \
             {KUBE_BIN_ENV}=$(scripts/build-kube.sh | tail -n1) cargo test -p ferrolb-tests --test real_lab"
        );
        return;
    };
    let bins = bins.expect("the Kubernetes binaries");
    ferrolb_tests::lab::Lab::clean_stale();
    let prefix;
    {
        let mut seg = Segment::new(&[("cp", 2), ("node-1", 11), ("node-2", 12), ("client", 100)])
            .expect("the network");
        prefix = seg.host("cp").ns.trim_end_matches("-cp").to_owned();
        for (node, _, _) in NODES {
            let ns = seg.host(node).ns.clone();
            // Inside the node namespaces only: forward to Pods on the other
            // node, and no ICMP redirects to the client (the DNAT target is
            // on the same segment).
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
            ] {
                sysctl(&ns, k, v).expect("a namespace sysctl");
            }
        }
        let cp_host = seg.host("cp").clone();
        let mut cp = ControlPlane::start_with(
            bins.clone(),
            &seg.dir,
            ControlPlaneOptions {
                netns: Some(cp_host.ns.clone()),
                address: Some(IpAddr::V4(cp_host.ip4)),
                service_cidrs: Some(DOC_SERVICE_CIDRS.to_owned()),
                audit: false,
            },
        )
        .expect("the control plane");
        // Its directory is inside the segment's, which is kept on failure.
        cp.keep_dir();
        assert!(cp.url.starts_with("https://192.0.2.2:"), "{}", cp.url);

        let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferrolb-node-agent"));
        for (node, range4, range6) in NODES {
            let h = seg.host(node).clone();
            let args: Vec<String> = [
                "run",
                "--node",
                node,
                "--kubeconfig",
                &cp.kubeconfig.to_string_lossy(),
                "--internal-ip",
                &h.ip4.to_string(),
                "--internal-ip",
                &h.ip6.to_string(),
                "--pod-range",
                range4,
                "--pod-range",
                range6,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            seg.spawn(&h.ns, &format!("agent-{node}"), &agent, &args)
                .expect("an agent");
        }
        // kube-proxy programs nothing until its Node has an InternalIP.
        for (node, _, _) in NODES {
            wait(
                &mut seg,
                &format!("Node {node}"),
                Duration::from_secs(60),
                |_| {
                    let n = get_json(&cp, &["node", node])?;
                    let addressed = n["status"]["addresses"][0]["type"] == "InternalIP";
                    let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                        t.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready")
                    });
                    let lease = get_json(&cp, &["lease", "-n", "kube-node-lease", node]);
                    (addressed && !tainted && lease.is_some()).then_some(())
                },
            );
        }
        for (node, _, _) in NODES {
            let h = seg.host(node).clone();
            let proxy = KubeProxy {
                node: node.to_owned(),
                address: IpAddr::V4(h.ip4),
                kubeconfig: cp.proxy_kubeconfig.clone(),
                mode: ProxyMode::Nftables,
            };
            let program = proxy.program(&bins.dir).expect("kube-proxy and nft");
            seg.spawn(
                &h.ns,
                &format!("kube-proxy-{node}"),
                &program,
                &proxy.args(),
            )
            .expect("kube-proxy");
        }

        // The workload: 3 lab-echo Pods, a ClusterIP and a LoadBalancer
        // Service, and a Pod with another image.
        let port = json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]);
        let manifests = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "echo", "namespace": "default"},
             "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "echo"}},
                      "template": {"metadata": {"labels": {"app": "echo"}},
                                   "spec": {"containers": [{"name": "echo", "image": "ferrolb.io/lab-echo:test",
                                                            "ports": [{"containerPort": 8080}]}]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
             "spec": {"selector": {"app": "echo"}, "ports": port}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo-lb", "namespace": "default"},
             "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                      "selector": {"app": "echo"}, "ports": port}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "namespace": "default"},
             "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "registry.example/nginx:1"}]}},
        ]});
        let file = seg.dir.join("workload.json");
        std::fs::write(&file, manifests.to_string()).unwrap();
        cp.kubectl(&["apply", "-f", &file.to_string_lossy()])
            .expect("kubectl apply");
        // ferrolb's controller is not part of this test: the address by hand.
        cp.kubectl(&[
            "patch",
            "service",
            "echo-lb",
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            &json!({"status": {"loadBalancer": {"ingress": [{"ip": LB_IP.to_string()}]}}})
                .to_string(),
        ])
        .expect("the LoadBalancer status");

        let endpoints = wait(
            &mut seg,
            "3 ready endpoints",
            Duration::from_secs(120),
            |_| {
                let e = ready_endpoints(&cp, "echo-lb");
                (e.len() == 3).then_some(e)
            },
        );
        eprintln!("ready endpoints: {endpoints:?}");
        let pods = echo_pods(&cp);
        let names: BTreeSet<String> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names.len(), 3);
        for p in &pods {
            let s = &p["status"];
            assert_eq!(s["phase"], "Running", "{p}");
            let ip = s["podIP"].as_str().unwrap();
            let node = p["spec"]["nodeName"].as_str().unwrap();
            let range = NODES.iter().find(|n| n.0 == node).unwrap().1;
            let r: ferrolb_tests::agent::PodRange = range.parse().unwrap();
            assert!(
                r.contains(ip.parse().unwrap()),
                "{ip} not in {range} of {node}"
            );
            assert_eq!(
                s["podIPs"].as_array().unwrap().len(),
                2,
                "dual-stack Pod IPs: {s}"
            );
            eprintln!("pod {} on {node}: {ip}", p["metadata"]["name"]);
        }

        // The other image: Pending, with the reason, never Running.
        let other = wait(
            &mut seg,
            "the refused Pod's status",
            Duration::from_secs(60),
            |_| {
                let p = get_json(&cp, &["pod", "other", "-n", "default"])?;
                let refused = p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["reason"] == "LabImageOnly")
                });
                refused.then_some(p)
            },
        );
        assert_eq!(other["status"]["phase"], "Pending");
        assert!(other["status"]["podIP"].is_null());

        // kube-proxy's rules for the LoadBalancer IP, in both node namespaces.
        for (node, _, _) in NODES {
            let ns = seg.host(node).ns.clone();
            let rules = wait(
                &mut seg,
                "kube-proxy's rules for the LB IP",
                Duration::from_secs(60),
                |_| {
                    nft_rules(&ns, "ip")
                        .ok()
                        .filter(|r| lb_chain_has(r, &endpoints))
                },
            );
            if node == "node-1" {
                eprintln!("nft list table ip kube-proxy on {node}:\n{rules}");
            }
        }

        // Through either node, every Pod answers.
        let client = seg.host("client").ns.clone();
        for (node, _, _) in NODES {
            let via = seg.host(node).ip4.to_string();
            run(
                "ip",
                &[
                    "-n",
                    &client,
                    "route",
                    "replace",
                    &format!("{LB_IP}/32"),
                    "via",
                    &via,
                ],
            )
            .expect("the client's route");
            let (seen, n, answers) = reach_all(&seg, &names);
            eprintln!("via {node}: {n} requests, answers {answers:?}");
            assert_eq!(seen, names, "via {node} after {n} requests: {answers:?}");
        }

        // Scaled down: the agent stops the Pod, frees its IP and deletes it.
        cp.kubectl(&[
            "scale",
            "deployment",
            "echo",
            "-n",
            "default",
            "--replicas=2",
        ])
        .expect("kubectl scale");
        let left = wait(&mut seg, "2 Pods left", Duration::from_secs(60), |_| {
            let pods = echo_pods(&cp);
            (pods.len() == 2).then_some(pods)
        });
        let left_ips: BTreeSet<String> = left
            .iter()
            .map(|p| p["status"]["podIP"].as_str().unwrap_or_default().to_owned())
            .collect();
        let gone: Vec<&String> = endpoints
            .iter()
            .filter(|e| !left_ips.contains(*e))
            .collect();
        assert_eq!(gone.len(), 1, "{endpoints:?} vs {left_ips:?}");
        wait(
            &mut seg,
            "the removed Pod's address gone",
            Duration::from_secs(30),
            |seg| {
                let all: String = NODES
                    .iter()
                    .map(|(n, _, _)| {
                        run("ip", &["-n", &seg.host(n).ns, "-4", "addr"]).unwrap_or_default()
                    })
                    .collect();
                (!all.contains(&format!("{}/32", gone[0]))).then_some(())
            },
        );
        wait(
            &mut seg,
            "2 ready endpoints",
            Duration::from_secs(60),
            |_| (ready_endpoints(&cp, "echo-lb").len() == 2).then_some(()),
        );
    }
    // Every namespace is gone.
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    assert!(!list.contains(&prefix), "namespaces left: {list}");
}
