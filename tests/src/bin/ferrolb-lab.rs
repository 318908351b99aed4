//! ferrolb-lab: the whole system on simulated nodes in network namespaces.
//!
//! `ferrolb-lab` (needs root) brings up a control plane (test API server,
//! controller), N nodes (speaker, backend, kube-proxy-style DNAT) and a client on
//! one layer-2 segment; creates a LoadBalancer Service; shows the client
//! reaching it and which node answered ARP; cuts the owner node's link and
//! measures how long the client's traffic stopped; tears everything down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ferrolb_tests::lab::{Lab, LabOptions, eventually};

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
    /// rules, enforced by the test API server (`kubectl get --raw /admin/rbac` reports).
    #[arg(long)]
    rbac: bool,
}

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
        }) => probe(
            target,
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
            Duration::from_millis(duration_ms),
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

/// One line per attempt: `<ms since start> ok <node>` or `<ms> fail`.
fn probe(
    target: SocketAddr,
    interval: Duration,
    timeout: Duration,
    duration: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let stdout = std::io::stdout();
    while start.elapsed() < duration {
        let t = start.elapsed();
        let answer = ask(target, timeout);
        let mut out = stdout.lock();
        match answer {
            Some(node) => writeln!(out, "{} ok {node}", t.as_millis())?,
            None => writeln!(out, "{} fail", t.as_millis())?,
        }
        out.flush()?;
        let next = t + interval;
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
    let bin_dir = match args.bin_dir {
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
    step(
        "bringing up the lab: a bridge, a control plane, {} nodes and a client, in network namespaces",
        &[&args.nodes],
    );
    let lab = Lab::up(&LabOptions {
        nodes: args.nodes,
        bin_dir,
        kubeconfig: args.kubeconfig.clone(),
        config: config.clone(),
        rbac_manifests: args
            .rbac
            .then(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"))),
    })?;
    println!("    logs and kubeconfig: {}", lab.dir.display());
    println!(
        "    nodes: {}",
        lab.nodes
            .iter()
            .map(|n| format!("{} ({}, {})", n.name, n.ip4, n.mac))
            .collect::<Vec<_>>()
            .join(", ")
    );

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
    let mac = lab.client_neighbour(&ip).unwrap_or_default();
    let owner = lab
        .node_by_mac(&mac)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| format!("unknown MAC {mac}"));
    println!("    answered by the backend on {served}; ARP for {ip} answered by {owner} ({mac})");

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
    lab.cut_link(&owner)?;
    let out = prober.wait_with_output()?;
    let report = outage(&String::from_utf8_lossy(&out.stdout));
    let new_mac = lab.client_neighbour(&ip).unwrap_or_default();
    let new_owner = lab
        .node_by_mac(&new_mac)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| format!("unknown MAC {new_mac}"));
    println!("    the client's neighbour entry for {ip} now points to {new_owner} ({new_mac})");
    match report {
        Some((gap, before, after)) => println!(
            "    FAILOVER: traffic stopped for {gap} ms (served by {before} before, {after} after)"
        ),
        None => println!(
            "    the client's traffic never recovered within the probe window; see the logs in {}",
            lab.dir.display()
        ),
    }
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
        let _ = eventually(
            "Ctrl-C",
            Duration::from_secs(365 * 24 * 3600),
            || None::<()>,
        );
    }
    step("tearing down", &[]);
    let dir = lab.dir.clone();
    drop(lab);
    let _ = std::fs::remove_file(&default_config);
    if args.keep_logs {
        println!("    logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn client_ask(lab: &Lab, target: SocketAddr) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let out = lab
        .exec(
            &lab.client.ns,
            &[
                exe.to_str()?,
                "probe",
                "--target",
                &target.to_string(),
                "--duration-ms",
                "1",
            ],
        )
        .ok()?;
    out.lines()
        .find_map(|l| l.split_once(" ok ").map(|(_, n)| n.to_owned()))
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
