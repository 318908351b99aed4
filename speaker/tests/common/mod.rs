//! The lab shared by the speaker's cluster tests and its failover benchmark:
//! on one segment ([`ferrolb_tests::lab::Network`]: a switch namespace with
//! a bridge), namespaces `node-a`, `node-b`, `node-c` each with an `eth0` on
//! it and running a real `ferrolb-speaker`; `ctl` holding the test API
//! server; `cli` the client.
//!
//! The speakers must reach the API server, and a process in a network
//! namespace cannot reach the root namespace's 127.0.0.1. Rather than add
//! addresses or routes to the root namespace, the API server listens inside
//! `ctl` on the segment (192.0.2.200): the test builds a tokio runtime on a
//! thread that entered `ctl` (its worker threads start there too), and the
//! server and every API call of the test run on it. The speakers are plain
//! `ip netns exec <node> ferrolb-speaker ...` processes with a kubeconfig
//! pointing at 192.0.2.200.
//!
//! Only documentation addresses (192.0.2.0/24, 2001:db8::/32) are used,
//! only inside namespaces the lab creates; they are deleted on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolb_core::packet::{ArpFrame, ArpOperation, MacAddr};
pub use ferrolb_tests::lab::{Host, Network, run};
use ferrolb_tests::lab::{eventually_every, in_netns, spawn_in_netns};
use ferrolb_tests::{ServerOptions, TestApiServer};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
pub const NS: &str = "ferrolb-system";
pub const SECRET: &[u8] = b"lab-membership-key-0123456789abc";
pub const CLIENT_MAC: &str = "02:00:00:00:02:02";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const MEMBERSHIP_PORT: u16 = 7946;
pub const METRICS: &str = "127.0.0.1:7473";

pub fn node_mac(i: usize) -> String {
    format!("02:00:00:00:01:0{}", i + 1)
}

pub fn node_ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

/// [`ferrolb_tests::lab::eventually`], polling every 20 ms (some tests take
/// the time of an event from it), and panicking with `what` after
/// `deadline`.
pub fn eventually<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually_every(what, deadline, Duration::from_millis(20), f)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A host of a lab segment: `name` in namespace `<base>-<short>`.
pub fn host(base: &str, name: &str, short: &str, ip4: Ipv4Addr, ip6: &str, mac: &str) -> Host {
    Host {
        name: name.to_owned(),
        ns: format!("{base}-{short}"),
        ip4,
        ip6: ip6.parse().expect("an IPv6 address"),
        mac: mac.to_owned(),
    }
}

/// A speaker process, killed (by its own PID) on drop.
pub struct Speaker {
    pub child: Child,
}

impl Speaker {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal the speaker");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The runtime inside `ctl` on which the API server and the test's API
/// calls run.
pub struct ControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    pub server: Option<TestApiServer>,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    pub fn block_on<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.runtime.as_ref().expect("runtime");
        rt.block_on(rt.spawn(f))
            .expect("control-plane task panicked")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        if let Some(rt) = self.runtime.take() {
            let server = self.server.take();
            rt.block_on(async move { drop(server) });
            rt.shutdown_background();
        }
    }
}

/// One lab: segment, nodes, client, control plane. Field order is drop
/// order: speakers first, then the control plane, then the namespaces.
pub struct Lab {
    pub speakers: Vec<Option<Speaker>>,
    pub cp: ControlPlane,
    /// `ctl`, `cli` and the nodes, on switch ports `p0`..`p4` in that order.
    pub net: Network,
}

/// A Service as the controller leaves it: LoadBalancer, status addresses.
pub struct LabService {
    pub name: &'static str,
    pub addresses: Vec<&'static str>,
    pub local_on: Option<&'static str>,
}

impl Lab {
    /// The host of `role`: `ctl`, `cli` or a node.
    pub fn host(&self, role: &str) -> &Host {
        self.net
            .host(role)
            .unwrap_or_else(|| panic!("no host {role} in the lab"))
    }

    pub fn ns(&self, role: &str) -> &str {
        &self.host(role).ns
    }

    /// Creates the namespaces, the segment and the control plane.
    pub fn new(tag: &str) -> Lab {
        let base = format!("flb{}{tag}", std::process::id());
        let mut hosts = vec![
            host(
                &base,
                "ctl",
                "ctl",
                Ipv4Addr::new(192, 0, 2, 200),
                "2001:db8::200",
                "02:00:00:00:03:03",
            ),
            host(&base, "cli", "cli", CLIENT_IP, "2001:db8::100", CLIENT_MAC),
        ];
        for (i, n) in NODES.iter().enumerate() {
            hosts.push(host(
                &base,
                n,
                n.trim_start_matches("node-"),
                node_ip(i).parse().unwrap(),
                &format!("2001:db8::{}", i + 1),
                &node_mac(i),
            ));
        }
        let net = Network::new(&format!("{base}-lan"), hosts).expect("the lab's segment");

        let runtime = in_netns(&net.host("ctl").unwrap().ns, || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
        })
        .expect("control-plane thread in ctl");
        let (server, client) = runtime
            .block_on(runtime.spawn(async {
                let server = TestApiServer::start_with(ServerOptions {
                    listen: SocketAddr::from(([192, 0, 2, 200], 0)),
                    ..ServerOptions::default()
                })
                .await
                .expect("test API server in ctl");
                let client = server.client().expect("client");
                (server, client)
            }))
            .expect("join");
        let kubeconfig = std::env::temp_dir().join(format!("{base}-kubeconfig"));
        server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Lab {
            speakers: vec![],
            cp: ControlPlane {
                runtime: Some(runtime),
                server: Some(server),
                client,
                kubeconfig,
            },
            net,
        }
    }

    /// The cluster objects: namespace, config (pool 192.0.2.48/28 and
    /// 2001:db8::48/125), membership Secret, Nodes, speaker Pods, and the
    /// given Services with their status and a serving endpoint.
    pub fn populate(&self, services: Vec<LabService>) {
        self.populate_with(&["192.0.2.48/28", "2001:db8::48/125"], services);
    }

    /// [`populate`](Self::populate) with a pool of these CIDRs.
    pub fn populate_with(&self, pool: &[&str], services: Vec<LabService>) {
        let client = self.cp.client.clone();
        let mut config =
            "address-pools:\n- name: lab\n  protocol: layer2\n  addresses:\n".to_owned();
        for cidr in pool {
            config.push_str(&format!("  - {cidr}\n"));
        }
        self.cp.block_on(async move {
            let pp = PostParams::default();
            let create = |v: serde_json::Value| v;
            Api::<Namespace>::all(client.clone())
                .create(&pp, &serde_json::from_value(create(json!({"metadata": {"name": NS}}))).unwrap())
                .await
                .expect("namespace");
            Api::<ConfigMap>::namespaced(client.clone(), NS)
                .create(&pp, &serde_json::from_value(json!({"metadata": {"name": "config"}, "data": {"config": config}})).unwrap())
                .await
                .expect("configmap");
            let key = k8s_openapi::ByteString(SECRET.to_vec());
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("ferrolb-memberlist".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("secretkey".to_owned(), key)])),
                ..Default::default()
            };
            Api::<Secret>::namespaced(client.clone(), NS)
                .create(&pp, &secret)
                .await
                .expect("secret");
            let nodes = Api::<Node>::all(client.clone());
            let pods = Api::<Pod>::namespaced(client.clone(), NS);
            for (i, n) in NODES.iter().enumerate() {
                nodes
                    .create(&pp, &serde_json::from_value(json!({"metadata": {"name": n}})).unwrap())
                    .await
                    .expect("node");
                nodes
                    .patch_status(n, &PatchParams::default(), &Patch::Merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)}]}})))
                    .await
                    .expect("node status");
                let pod = format!("speaker-{n}");
                pods.create(&pp, &serde_json::from_value(json!({
                    "metadata": {"name": pod, "labels": {"app.kubernetes.io/name": "ferrolb", "app.kubernetes.io/component": "speaker"}},
                    "spec": {"nodeName": n, "containers": [{"name": "speaker", "image": "ferrolb"}]}
                })).unwrap())
                    .await
                    .expect("pod");
                pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(json!({"status": {"podIP": node_ip(i), "phase": "Running"}})))
                    .await
                    .expect("pod status");
            }
            for s in services {
                add_service(&client, s).await;
            }
        });
    }

    /// Starts the speaker of node `i`.
    pub fn start_speaker(&mut self, i: usize, extra: &[&str]) {
        let ns = self.ns(NODES[i]).to_owned();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_ferrolb-speaker"),
            "--node-name",
            NODES[i],
            "--config-namespace",
            NS,
            "--metrics-addr",
            METRICS,
        ])
        .args(extra)
        .env("KUBECONFIG", &self.cp.kubeconfig)
        // No kube-proxy in these namespaces: the data-path check is off.
        .env("FERROLB_KUBE_PROXY_HEALTH_URL", "")
        .env(
            "FERROLB_LOG_LEVEL",
            std::env::var("FERROLB_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("FERROLB_LAB_QUIET").is_some() {
            Stdio::null()
        } else {
            Stdio::inherit()
        });
        let child = cmd.spawn().expect("cannot start ferrolb-speaker");
        while self.speakers.len() <= i {
            self.speakers.push(None);
        }
        self.speakers[i] = Some(Speaker { child });
    }

    pub fn start_all(&mut self, extra: &[&str]) {
        for i in 0..NODES.len() {
            self.start_speaker(i, extra);
        }
    }

    /// `ip netns exec <role> args...`
    pub fn exec(&self, role: &str, args: &[&str]) -> Output {
        self.host(role).output(args).expect("ip netns exec")
    }

    /// The metrics text of node `i`'s speaker.
    pub fn metrics(&self, i: usize) -> Option<String> {
        let out = self.exec(
            NODES[i],
            &[
                "curl",
                "-sf",
                "--max-time",
                "2",
                &format!("http://{METRICS}/metrics"),
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ready(&self, i: usize) -> bool {
        self.exec(
            NODES[i],
            &[
                "curl",
                "-sf",
                "--max-time",
                "2",
                &format!("http://{METRICS}/readyz"),
            ],
        )
        .status
        .success()
    }

    /// The MACs answering an ARP request for `ip` from the client (all
    /// replies within `wait`).
    pub fn arp_answers(&self, ip: Ipv4Addr, wait: Duration) -> Vec<MacAddr> {
        self.with_netns("cli", move || {
            let mut p = Prober::open();
            p.send(ip);
            let until = Instant::now() + wait;
            let mut macs = vec![];
            while Instant::now() < until {
                if let Some((_, mac)) = p.recv(ip) {
                    macs.push(mac);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            macs
        })
    }

    /// The client's neighbour entry for `ip` (`ip neigh show`).
    pub fn client_neighbour(&self, ip: &str) -> String {
        run(
            "ip",
            &["-n", self.ns("cli"), "neigh", "show", ip, "dev", "eth0"],
        )
        .expect("ip neigh show")
        .to_lowercase()
    }

    pub fn set_client_neighbour(&self, ip: &str, mac: &str) {
        run(
            "ip",
            &[
                "-n",
                self.ns("cli"),
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                "eth0",
                "nud",
                "stale",
            ],
        )
        .expect("ip neigh replace");
    }

    /// Runs `f` on a thread inside namespace `role`.
    pub fn with_netns<T: Send>(&self, role: &str, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.ns(role), f).expect("netns thread")
    }

    /// Spawns `f` on a thread inside namespace `role`.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        role: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in_netns(self.ns(role), f).expect("netns thread")
    }

    /// Waits until every running speaker is ready and `ip` is answered by
    /// exactly one MAC; returns the index of the node owning it.
    pub fn wait_owner(&self, ip: Ipv4Addr) -> usize {
        eventually("every speaker ready", Duration::from_secs(60), || {
            (0..NODES.len())
                .filter(|i| self.speakers.get(*i).is_some_and(|s| s.is_some()))
                .all(|i| self.ready(i))
                .then_some(())
        });
        eventually(
            &format!("one owner answering for {ip}"),
            Duration::from_secs(30),
            || {
                let macs = self.arp_answers(ip, Duration::from_millis(300));
                let first = *macs.first()?;
                macs.iter().all(|m| *m == first).then(|| {
                    (0..NODES.len())
                        .find(|i| node_mac(*i).parse::<MacAddr>().ok() == Some(first))
                        .expect("a node's MAC")
                })
            },
        )
    }
}

async fn add_service(client: &kube::Client, s: LabService) {
    let pp = PostParams::default();
    let services = Api::<Service>::namespaced(client.clone(), "default");
    let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
    if s.local_on.is_some() {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    services
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": s.name}, "spec": spec})).unwrap(),
        )
        .await
        .expect("service");
    let ingress: Vec<_> = s
        .addresses
        .iter()
        .map(|a| json!({"ip": a, "ipMode": "VIP"}))
        .collect();
    services
        .patch_status(
            s.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
        )
        .await
        .expect("service status");
    let node = s.local_on.unwrap_or("node-a");
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&pp, &serde_json::from_value(json!({
            "metadata": {"name": format!("{}-1", s.name), "labels": {"kubernetes.io/service-name": s.name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": node, "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]
        })).unwrap())
        .await
        .expect("endpointslice");
}

/// An ARP prober on the client's eth0 (construct on a thread inside the
/// client namespace).
pub struct Prober {
    socket: socket2::Socket,
    mac: MacAddr,
    buf: [u8; 1600],
}

impl Prober {
    pub fn open() -> Prober {
        let index = nix::net::if_::if_nametoindex("eth0").expect("client eth0");
        let socket = ferrolb_speaker::sockets::packet_socket(0x0806, index).expect("packet socket");
        Prober {
            socket,
            mac: CLIENT_MAC.parse().unwrap(),
            buf: [0; 1600],
        }
    }

    pub fn send(&mut self, target: Ipv4Addr) {
        let frame = ArpFrame {
            eth_destination: MacAddr::BROADCAST,
            eth_source: self.mac,
            operation: ArpOperation::Request,
            sender_mac: self.mac,
            sender_ip: CLIENT_IP,
            target_mac: MacAddr::ZERO,
            target_ip: target,
        }
        .to_bytes();
        let _ = self.socket.send(&frame);
    }

    /// A reply for `target` waiting on the socket, if any (non-blocking).
    pub fn recv(&mut self, target: Ipv4Addr) -> Option<(Instant, MacAddr)> {
        loop {
            let n = (&self.socket).read(&mut self.buf).ok()?;
            let now = Instant::now();
            if let Ok(f) = ArpFrame::parse(&self.buf[..n])
                && f.operation == ArpOperation::Reply
                && f.sender_ip == target
                && f.eth_destination == self.mac
            {
                return Some((now, f.sender_mac));
            }
        }
    }
}

impl Prober {
    /// Sends one request for `target` and waits (in poll(2), not spinning) for
    /// its reply: the time from send to the reply's arrival in user space, and
    /// who answered. `None` if nothing answered within `limit`.
    pub fn round_trip(&mut self, target: Ipv4Addr, limit: Duration) -> Option<(Duration, MacAddr)> {
        use std::os::fd::AsRawFd as _;
        while self.recv(target).is_some() {}
        let start = Instant::now();
        self.send(target);
        loop {
            if let Some((at, mac)) = self.recv(target) {
                return Some((at - start, mac));
            }
            let left = limit.checked_sub(start.elapsed())?;
            let mut pfd = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 1000) as i32) };
        }
    }
}

/// Probes `target` every `every` from the client until `stop`, recording
/// every reply (time, MAC).
pub fn probe_in_background(
    lab: &Lab,
    target: Ipv4Addr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, MacAddr)>> {
    let replies = Arc::new(Mutex::new(Vec::new()));
    lab.spawn_in("cli", move || {
        let mut p = Prober::open();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                p.send(target);
                next += every;
            }
            while let Some(r) = p.recv(target) {
                replies.lock().unwrap().push(r);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        std::mem::take(&mut *replies.lock().unwrap())
    })
}

/// The election's answer for the lab's nodes, for cross-checking.
pub fn expected_rank(ip: &str) -> Vec<usize> {
    let ip: IpAddr = ip.parse().unwrap();
    ferrolb_core::election::rank_nodes(NODES, ip)
        .into_iter()
        .map(|n| NODES.iter().position(|m| *m == n).unwrap())
        .collect()
}

/// The first two bytes of a tagged request's sender MAC; the other four are
/// its sequence number.
pub const TAG_PREFIX: [u8; 2] = [0x02, 0x5a];

/// One reply to a tagged request: who answered which request, and when it
/// reached the client (kernel timestamp).
#[derive(Clone, Copy, Debug)]
pub struct TaggedReply {
    pub seq: u32,
    pub mac: MacAddr,
    pub received: std::time::SystemTime,
}

/// What a tagged prober sent (index: sequence number, value: send time) and
/// the replies it received, shared while it runs.
#[derive(Debug, Default)]
pub struct TaggedLog {
    pub sent: Vec<std::time::SystemTime>,
    pub replies: Vec<TaggedReply>,
}

/// Probes `target` from the client every `every` until `stop`, each request
/// with its own sender MAC (02:5a and a 32-bit sequence number). Replies go
/// to that MAC and name it as their target, so each reply says which
/// request it answers; the bridge floods them to the client, whose packet
/// socket sees frames for any destination. Times are CLOCK_REALTIME: the
/// send time just before sending, the kernel's receive timestamp.
pub fn probe_tagged_in_background(
    lab: &Lab,
    target: Ipv4Addr,
    every: Duration,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<TaggedLog>>,
) -> std::thread::JoinHandle<()> {
    probe_tagged_in(lab.ns("cli"), target, every, stop, log)
}

/// [`probe_tagged_in_background`] from the client namespace `netns`
/// (its `eth0` has [`CLIENT_MAC`] and [`CLIENT_IP`]).
pub fn probe_tagged_in(
    netns: &str,
    target: Ipv4Addr,
    every: Duration,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<TaggedLog>>,
) -> std::thread::JoinHandle<()> {
    spawn_in_netns(netns, move || {
        let index = nix::net::if_::if_nametoindex("eth0").expect("client eth0");
        let socket = ferrolb_speaker::sockets::packet_socket(0x0806, index).expect("packet socket");
        let client: MacAddr = CLIENT_MAC.parse().unwrap();
        let mut buf = [0u8; 1600];
        let mut next = Instant::now();
        let mut seq: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let s = seq.to_be_bytes();
                let tag = MacAddr([TAG_PREFIX[0], TAG_PREFIX[1], s[0], s[1], s[2], s[3]]);
                let frame = ArpFrame {
                    eth_destination: MacAddr::BROADCAST,
                    eth_source: client,
                    operation: ArpOperation::Request,
                    sender_mac: tag,
                    sender_ip: CLIENT_IP,
                    target_mac: MacAddr::ZERO,
                    target_ip: target,
                }
                .to_bytes();
                log.lock().unwrap().sent.push(std::time::SystemTime::now());
                let _ = socket.send(&frame);
                seq += 1;
                next += every;
            }
            while let Ok((n, stamp)) = ferrolb_speaker::sockets::recv_stamped(&socket, &mut buf) {
                let Ok(f) = ArpFrame::parse(&buf[..n]) else {
                    continue;
                };
                let t = f.target_mac.0;
                if f.operation == ArpOperation::Reply
                    && f.sender_ip == target
                    && t[..2] == TAG_PREFIX
                {
                    let reply = TaggedReply {
                        seq: u32::from_be_bytes([t[2], t[3], t[4], t[5]]),
                        mac: f.sender_mac,
                        received: stamp.unwrap_or_else(std::time::SystemTime::now),
                    };
                    log.lock().unwrap().replies.push(reply);
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    })
    .expect("the prober's thread in the client")
}

/// Whether every thread of process `pid` is stopped (state T in
/// /proc/PID/task/*/stat).
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return false;
        };
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.trim().chars().next());
        if !matches!(state, Some('T') | Some('t')) {
            return false;
        }
        any = true;
    }
    any
}
