//! ferrolb-lab: the whole system on simulated nodes in network namespaces.
//!
//! `ferrolb-lab` (needs root) brings up, by default, a real Kubernetes control
//! plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), N
//! nodes (the lab's node agent in place of kubelet, and a real kube-proxy)
//! and a client on one layer-2 segment; deploys ferrolb from `manifests/`;
//! creates a Deployment and a LoadBalancer Service; shows the client reaching
//! every replica and which node answered ARP; cuts the owner node's link and
//! measures how long the client's traffic stopped; tears everything down.
//! `--control-plane test` runs the older lab on the test API server (the
//! controller and speakers started directly, a DNAT rule per node in place
//! of kube-proxy).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ferrolb_tests::kube::KubeBinaries;
use ferrolb_tests::kubeproxy::ProxyMode;
use ferrolb_tests::lab::{Lab, LabOptions, RealOptions, System, eventually};

#[derive(Parser)]
#[command(
    name = "ferrolb-lab",
    about = "ferrolb on simulated nodes in network namespaces (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(clap::Args, Clone)]
struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Use this API server (reachable from the node namespaces) instead of starting the test one.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The config ConfigMap to apply (default: config-examples/single-ipv4.yaml,
    /// built into this binary).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep the directory of logs and kubeconfig after a clean exit (it is
    /// always kept when the demo fails).
    #[arg(long)]
    keep_logs: bool,
    /// Where the ferrolb binaries are (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// After the demo, keep the lab up until Ctrl-C (try kubectl: the KUBECONFIG is printed).
    #[arg(long)]
    keep: bool,
    /// Run the controller and speakers as their service accounts under manifests/'s RBAC
    /// rules, enforced by the test API server (`kubectl get --raw /admin/rbac` reports;
    /// only with `--control-plane test`: the real control plane always runs RBAC).
    #[arg(long)]
    rbac: bool,
    /// `real`: Kubernetes components built by scripts/build-kube.sh, kube-proxy on
    /// every node, ferrolb deployed from the manifests. `test`: the test API server.
    #[arg(long, value_enum, default_value = "real")]
    control_plane: ControlPlaneKind,
    /// Where the Kubernetes binaries are (the last line of scripts/build-kube.sh).
    #[arg(long, env = "FERROLB_KUBE_BIN")]
    kube_bin: Option<PathBuf>,
    /// kube-proxy's mode on the real control plane.
    #[arg(long, value_enum, default_value = "nftables")]
    proxy_mode: ProxyModeArg,
    /// Deploy ferrolb from this kustomization (default: the manifests/ built
    /// into this binary, written to the lab's directory).
    #[arg(long)]
    manifests: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ControlPlaneKind {
    Real,
    Test,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ProxyModeArg {
    Nftables,
    Iptables,
}

/// manifests/, built in: the lab deploys what a user would.
const MANIFESTS: [(&str, &str); 7] = [
    (
        "kustomization.yaml",
        include_str!("../../../manifests/kustomization.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../../manifests/namespace.yaml"),
    ),
    (
        "controller-rbac.yaml",
        include_str!("../../../manifests/controller-rbac.yaml"),
    ),
    (
        "speaker-rbac.yaml",
        include_str!("../../../manifests/speaker-rbac.yaml"),
    ),
    (
        "controller.yaml",
        include_str!("../../../manifests/controller.yaml"),
    ),
    (
        "speaker.yaml",
        include_str!("../../../manifests/speaker.yaml"),
    ),
    (
        "config.yaml",
        include_str!("../../../manifests/config.yaml"),
    ),
];

#[derive(Subcommand)]
enum Cmd {
    /// (inside a node) A tiny HTTP backend that answers with its name.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// (inside the client) Connects to TARGET every INTERVAL and prints each outcome.
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        #[arg(long, default_value_t = 100)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        /// Start each request on time in its own thread, without waiting for
        /// the one before: an outage is then measured to about one interval
        /// (lines may come out of order).
        #[arg(long)]
        parallel: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Backend { listen, name }) => backend(listen, &name),
        Some(Cmd::Probe {
            target,
            interval_ms,
            timeout_ms,
            duration_ms,
            parallel,
        }) => probe(
            target,
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
            Duration::from_millis(duration_ms),
            parallel,
        ),
        None => demo(cli.demo),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrolb-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn backend(listen: SocketAddr, name: &str) -> anyhow::Result<()> {
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let body = format!("{name}\n");
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

/// One line per attempt: `<ms since start> ok <node>` or `<ms> fail`, the
/// time being when the attempt started.
fn probe(
    target: SocketAddr,
    interval: Duration,
    timeout: Duration,
    duration: Duration,
    parallel: bool,
) -> anyhow::Result<()> {
    fn attempt(target: SocketAddr, timeout: Duration, t: Duration) -> std::io::Result<()> {
        let answer = ask(target, timeout);
        let mut out = std::io::stdout().lock();
        match answer {
            Some(node) => writeln!(out, "{} ok {node}", t.as_millis())?,
            None => writeln!(out, "{} fail", t.as_millis())?,
        }
        out.flush()
    }
    let start = Instant::now();
    let mut next = Duration::ZERO;
    while start.elapsed() < duration {
        let t = start.elapsed();
        if parallel {
            std::thread::spawn(move || attempt(target, timeout, t));
        } else {
            attempt(target, timeout, t)?;
        }
        next = (next + interval).max(t);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

fn ask(target: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply
        .lines()
        .last()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if unsafe_geteuid_is_not_root() {
        bail!("the lab creates network namespaces: run it as root (sudo)");
    }
    ctrlc::set_handler(ferrolb_tests::lab::interrupt).context("installing the Ctrl-C handler")?;
    let bin_dir = match args.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    Lab::check_binaries(&bin_dir)?;
    Lab::clean_stale();
    // The default config is built in: the binary needs no source tree.
    let default_config = std::env::temp_dir().join(format!(
        "ferrolb-lab-{}-single-ipv4.yaml",
        std::process::id()
    ));
    let config = match &args.config {
        Some(c) => c.clone(),
        None => {
            std::fs::write(
                &default_config,
                include_str!("../../../config-examples/single-ipv4.yaml"),
            )?;
            default_config.clone()
        }
    };
    let manifests = match &args.manifests {
        Some(d) => d.clone(),
        None => {
            let d =
                std::env::temp_dir().join(format!("ferrolb-lab-{}-manifests", std::process::id()));
            std::fs::create_dir_all(&d)?;
            for (name, text) in MANIFESTS {
                std::fs::write(d.join(name), text)?;
            }
            d
        }
    };
    let real = match args.control_plane {
        ControlPlaneKind::Test => None,
        ControlPlaneKind::Real => {
            let dir = args.kube_bin.clone().context(
                "the real control plane needs the Kubernetes binaries: run scripts/build-kube.sh and pass the directory it prints last with --kube-bin (or FERROLB_KUBE_BIN), or use --control-plane test",
            )?;
            Some(RealOptions {
                kube: KubeBinaries::at(&dir)?,
                proxy_mode: match args.proxy_mode {
                    ProxyModeArg::Nftables => ProxyMode::Nftables,
                    ProxyModeArg::Iptables => ProxyMode::Iptables,
                },
                manifests: manifests.clone(),
                system: System::Ferrolb,
            })
        }
    };
    let result = match real {
        Some(real) => real_demo(&args, real, &bin_dir, &config),
        None => test_demo(&args, &bin_dir, &config, &manifests),
    };
    let _ = std::fs::remove_file(&default_config);
    if args.manifests.is_none() {
        let _ = std::fs::remove_dir_all(&manifests);
    }
    result
}

fn test_demo(
    args: &DemoArgs,
    bin_dir: &Path,
    config: &Path,
    manifests: &Path,
) -> anyhow::Result<()> {
    step(
        "bringing up the lab: a bridge, the test API server, {} nodes and a client, in network namespaces",
        &[&args.nodes],
    );
    let lab = Lab::up(&LabOptions {
        nodes: args.nodes,
        bin_dir: bin_dir.to_path_buf(),
        kubeconfig: args.kubeconfig.clone(),
        config: config.to_path_buf(),
        rbac_manifests: args.rbac.then(|| manifests.to_path_buf()),
        real: None,
    })?;
    println!("    logs and kubeconfig: {}", lab.dir.display());
    print_nodes(&lab);

    step(
        "creating Service default/web (type LoadBalancer, port 80) with a backend on every node",
        &[],
    );
    lab.create_service("web", serde_json::json!({}))?;
    let ip = eventually("an EXTERNAL-IP for web", Duration::from_secs(30), || {
        lab.external_ips("web").into_iter().next()
    })?;
    println!("    EXTERNAL-IP {ip}");
    println!(
        "    {}",
        lab.kubectl(&["describe", "svc", "web"])?
            .lines()
            .filter(|l| l.contains("IPAllocated") || l.contains("Announcing"))
            .collect::<Vec<_>>()
            .join("\n    ")
    );
    lab.forward(&ip, 80)?;

    step("the client connects to {}:80", &[&ip]);
    let target: SocketAddr = format!("{ip}:80").parse()?;
    let served = eventually(
        "an answer from the Service",
        Duration::from_secs(30),
        || client_ask(&lab, target),
    )?;
    let owner = owner_of(&lab, &ip);
    println!("    answered by the backend on {served}; ARP for {ip} answered by {owner}");
    failover(&lab, &ip, target, false)?;
    if args.keep {
        step("the lab stays up; Ctrl-C tears it down", &[]);
        let kubectl = format!(
            "ip netns exec {} kubectl --kubeconfig {}",
            lab.cp.ns,
            lab.kubeconfig.display()
        );
        println!("    {kubectl} describe svc web");
        println!("    {kubectl} get svc web -o jsonpath='{{.status.loadBalancer.ingress}}'");
        println!(
            "    (the test API server prints no table columns: `get svc` shows only NAME and AGE; use describe or -o jsonpath)"
        );
        wait_for_interrupt();
    }
    teardown(lab, args.keep_logs);
    Ok(())
}

fn real_demo(
    args: &DemoArgs,
    real: RealOptions,
    bin_dir: &Path,
    config: &Path,
) -> anyhow::Result<()> {
    let mode = real.proxy_mode.flag();
    step(
        "bringing up the lab: a bridge; a Kubernetes v1.36 control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler); {} nodes, each with the lab's node agent (in place of kubelet) and kube-proxy in {} mode; a client",
        &[&args.nodes, &mode],
    );
    step(
        "then ferrolb as the README installs it: kubectl apply -k manifests/, the membership Secret, the config",
        &[],
    );
    let lab = Lab::up(&LabOptions {
        nodes: args.nodes,
        bin_dir: bin_dir.to_path_buf(),
        kubeconfig: None,
        config: config.to_path_buf(),
        rbac_manifests: None,
        real: Some(real),
    })?;
    println!("    logs: {}", lab.dir.display());
    print_nodes(&lab);
    println!(
        "    {}",
        lab.kubectl(&["get", "pods", "-n", "ferrolb-system", "-o", "wide"])?
            .trim_end()
            .replace('\n', "\n    ")
    );

    let replicas = 3.to_string();
    step(
        "kubectl create deployment demo --image=ferrolb.io/lab-echo --replicas={}; kubectl expose deployment demo --type=LoadBalancer --port=80",
        &[&replicas],
    );
    lab.kubectl(&[
        "create",
        "deployment",
        "demo",
        "--image=ferrolb.io/lab-echo",
        &format!("--replicas={replicas}"),
    ])?;
    lab.kubectl(&[
        "expose",
        "deployment",
        "demo",
        "--type=LoadBalancer",
        "--port=80",
    ])?;
    let ip = eventually("an EXTERNAL-IP for demo", Duration::from_secs(60), || {
        lab.external_ips("demo").into_iter().next()
    })?;
    println!(
        "    {}",
        lab.kubectl(&["get", "svc", "demo"])?
            .trim_end()
            .replace('\n', "\n    ")
    );
    let target: SocketAddr = format!("{ip}:80").parse()?;
    step(
        "the client sends requests to {}:80 until every replica has answered",
        &[&ip],
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut sent = 0;
    eventually(
        "an answer from every replica",
        Duration::from_secs(90),
        || {
            for answer in lab.client_requests(target, 20) {
                sent += 1;
                if let Some(a) = answer {
                    seen.insert(a);
                }
            }
            (seen.len() >= 3).then_some(())
        },
    )?;
    for who in &seen {
        println!("    {who}");
    }
    println!(
        "    ({} replicas answered within {sent} requests; ARP for {ip} answered by {})",
        seen.len(),
        owner_of(&lab, &ip)
    );

    step(
        "externalTrafficPolicy: Local, so that a node forwards only to its own Pods: with Cluster, the cut node's Pod stays an endpoint (and gets a third of the connections) until Kubernetes marks the node NotReady, 50 s later (kube-controller-manager's node-monitor grace period)",
        &[],
    );
    lab.kubectl(&[
        "patch",
        "svc",
        "demo",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ])?;
    // Settled: 20 answers in a row.
    eventually(
        "the Service answering with Local",
        Duration::from_secs(60),
        || {
            lab.client_requests(target, 20)
                .iter()
                .all(Option::is_some)
                .then_some(())
        },
    )?;
    let unplugged = failover(&lab, &ip, target, true)?;
    if let Some(node) = &unplugged {
        lab.plug(node)?;
        println!("    {node}'s cable is plugged back in");
    }
    if args.keep {
        step(
            "the lab stays up; Ctrl-C tears it down. Try the README's quickstart (paste into a root shell):",
            &[],
        );
        let kubectl = format!(
            "ip netns exec {} {} --kubeconfig {}",
            lab.cp.ns,
            lab.kubectl_bin,
            lab.kubeconfig.display()
        );
        println!("    alias kubectl='{kubectl}'");
        println!("    kubectl create deployment web --image=ferrolb.io/lab-echo --replicas=3");
        println!("    kubectl expose deployment web --type=LoadBalancer --port=80");
        println!("    kubectl get svc web");
        println!(
            "    for i in $(seq 6); do ip netns exec {} curl -s http://$(kubectl get svc web -o jsonpath='{{.status.loadBalancer.ingress[0].ip}}')/; done",
            lab.client.ns
        );
        println!(
            "    (the demo left behind: Deployment and Service demo, with externalTrafficPolicy Local)"
        );
        println!(
            "    logs: {} (ferrolb's Pods: pods-<node>/ferrolb-system_<pod>_<container>.log)",
            lab.dir.display()
        );
        wait_for_interrupt();
    }
    teardown(lab, args.keep_logs);
    Ok(())
}

fn print_nodes(lab: &Lab) {
    println!(
        "    nodes: {}",
        lab.nodes
            .iter()
            .map(|n| format!("{} ({}, {})", n.name, n.ip4, n.mac))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn owner_of(lab: &Lab, ip: &str) -> String {
    let mac = lab.client_neighbour(ip).unwrap_or_default();
    match lab.node_by_mac(&mac) {
        Some(n) => format!("{} ({mac})", n.name),
        None => format!("unknown MAC {mac}"),
    }
}

/// Cuts the owner's link while the client probes; prints the outage. With
/// `unplug`, the switch port goes down (the cable; returns the node to plug
/// back in), else the node's `eth0`.
fn failover(
    lab: &Lab,
    ip: &str,
    target: SocketAddr,
    unplug: bool,
) -> anyhow::Result<Option<String>> {
    let mac = lab.client_neighbour(ip).unwrap_or_default();
    let Some(owner) = lab.node_by_mac(&mac).map(|n| n.name.clone()) else {
        println!(
            "    the client's neighbour entry for {ip} names no node ({mac}); no failover measured"
        );
        return Ok(None);
    };
    step(
        "cutting {}'s link while the client probes every 10 ms",
        &[&owner],
    );
    let prober = Command::new("ip")
        .args(["netns", "exec", &lab.client.ns])
        .arg(std::env::current_exe()?)
        .args([
            "probe",
            "--target",
            &target.to_string(),
            "--timeout-ms",
            "30",
            "--interval-ms",
            "10",
            "--duration-ms",
            "4000",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    if unplug {
        lab.unplug(&owner)?;
    } else {
        lab.cut_link(&owner)?;
    }
    let out = prober.wait_with_output()?;
    let report = outage(&String::from_utf8_lossy(&out.stdout));
    println!(
        "    the client's neighbour entry for {ip} now points to {}",
        owner_of(lab, ip)
    );
    match report {
        Some((gap, before, after)) => println!(
            "    FAILOVER: traffic stopped for {gap} ms (served by {before} before, {after} after)"
        ),
        None => println!(
            "    the client's traffic never recovered within the probe window; see the logs in {}",
            lab.dir.display()
        ),
    }
    Ok(unplug.then_some(owner))
}

fn wait_for_interrupt() {
    let _ = eventually(
        "Ctrl-C",
        Duration::from_secs(365 * 24 * 3600),
        || None::<()>,
    );
}

fn teardown(lab: Lab, keep_logs: bool) {
    step("tearing down", &[]);
    let dir = lab.dir.clone();
    drop(lab);
    if keep_logs {
        println!("    logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// One request from the client: the answer, if any.
fn client_ask(lab: &Lab, target: SocketAddr) -> Option<String> {
    lab.client_requests(target, 1).into_iter().next().flatten()
}

/// The longest gap between two answered probes, with who answered before and after.
fn outage(lines: &str) -> Option<(u64, String, String)> {
    let ok: Vec<(u64, String)> = lines
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let t: u64 = w.next()?.parse().ok()?;
            (w.next()? == "ok").then(|| (t, w.next().unwrap_or("").to_owned()))
        })
        .collect();
    let failed_after_last_ok = lines.lines().last().is_some_and(|l| l.contains("fail"));
    if ok.is_empty() || failed_after_last_ok {
        return None;
    }
    ok.windows(2)
        .max_by_key(|w| w[1].0 - w[0].0)
        .map(|w| (w[1].0 - w[0].0, w[0].1.clone(), w[1].1.clone()))
}

fn step(msg: &str, args: &[&dyn std::fmt::Display]) {
    let mut text = msg.to_owned();
    for a in args {
        text = text.replacen("{}", &a.to_string(), 1);
    }
    println!("==> {text}");
}

fn unsafe_geteuid_is_not_root() -> bool {
    // /proc/self/status holds the effective uid in the second column of "Uid:".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u != "0"))
        })
        .unwrap_or(true)
}
