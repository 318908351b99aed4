//! The lab's node agent: the stand-in for kubelet and a container runtime on
//! one lab node (docs/lab-agent.md).
//!
//! It runs inside the node's network namespace (`ip netns exec NS
//! ferrolb-node-agent run ...`) and
//! - registers its Node (labels, InternalIP and Hostname addresses, Ready,
//!   capacity) and removes the `node.kubernetes.io/not-ready` taint that
//!   admission puts on a created Node, then renews the Node's Lease and Ready
//!   heartbeat every 10 s;
//! - runs the Pods bound to it whose containers all use the lab image
//!   `ferrolb.io/lab-echo` (any tag): a Pod IP from its range as an extra
//!   address on `eth0`, an HTTP echo process (answering with the Pod and node
//!   names) on the Pod's container ports, and the status kubelet would write;
//! - refuses every other Pod with a clear Pending status (never pretends it
//!   runs), and removes a Pod marked for deletion at once (grace period 0).
//!
//! The decisions (what to do with a Pod, which IP it gets, the status to
//! write) are pure functions with unit tests; the rest is I/O.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::podexec::{self, ImageMapping};

/// The only image the agent runs (with any tag or digest).
pub const LAB_IMAGE: &str = "ferrolb.io/lab-echo";

/// The reason the agent writes on Pods it will not run.
pub const REFUSED_REASON: &str = "LabImageOnly";

/// The port the echo server listens on when a Pod declares none: 80, as a
/// web server image would, so that `kubectl create deployment web
/// --image=ferrolb.io/lab-echo` and `kubectl expose deployment web --port=80`
/// work without a target port.
pub const DEFAULT_PORT: u16 = 80;

/// How often a process Pod whose start failed is tried again.
pub const RETRY: Duration = Duration::from_secs(5);

/// How often the Lease and the Ready heartbeat are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Whether `image` is the lab image: `ferrolb.io/lab-echo`, `...:tag` or `...@digest`.
pub fn is_lab_image(image: &str) -> bool {
    match image.strip_prefix(LAB_IMAGE) {
        Some(rest) => rest.is_empty() || rest.starts_with(':') || rest.starts_with('@'),
        None => false,
    }
}

/// An address range for Pod IPs (`192.0.2.128/29`, `2001:db8::100/120`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRange {
    pub base: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for PodRange {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<PodRange> {
        let (ip, prefix) = s
            .split_once('/')
            .with_context(|| format!("{s:?}: expected ADDRESS/PREFIX"))?;
        let ip: IpAddr = ip.parse().with_context(|| format!("{s:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .with_context(|| format!("{s:?}: bad prefix"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            bail!("{s:?}: prefix over {max}");
        }
        // The range's first address, whatever host bits were given.
        let base = match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(PodRange { base, prefix })
    }
}

impl std::fmt::Display for PodRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl PodRange {
    /// The addresses of the range, in order (at most 65536 of them).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let bits = match self.base {
            IpAddr::V4(_) => 32 - u32::from(self.prefix),
            IpAddr::V6(_) => 128 - u32::from(self.prefix),
        };
        let count: u128 = 1 << bits.min(16);
        (0..count).map(move |i| match self.base {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + i as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + i)),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b)
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b)
            }
            _ => false,
        }
    }
}

/// A Pod IP from `range`: `preferred` (the IP the Pod had, after an agent
/// restart) if it is in the range and free, else the first free address.
/// `used` holds the addresses taken (other Pods', the node's own).
pub fn allocate(range: &PodRange, used: &HashSet<IpAddr>, preferred: &[IpAddr]) -> Option<IpAddr> {
    preferred
        .iter()
        .copied()
        .find(|ip| range.contains(*ip) && !used.contains(ip))
        .or_else(|| range.addresses().find(|ip| !used.contains(ip)))
}

/// What the agent does with a Pod bound to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodAction {
    /// Marked for deletion: stop it, free its IP, delete it with grace 0.
    Remove,
    /// Every container is the lab image: run the echo server on these TCP ports.
    Run { ports: Vec<u16> },
    /// Every container uses a mapped image (ferrolb's own): run the
    /// containers' commands as processes ([`crate::podexec`]).
    Exec { host_network: bool },
    /// Not runnable here: the reason and message written to its status.
    Refuse { message: String },
}

/// The decision for a Pod (pure); `images` are the images run as processes.
pub fn decide(pod: &Pod, images: &[ImageMapping]) -> PodAction {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodAction::Remove;
    }
    let Some(spec) = &pod.spec else {
        return PodAction::Refuse {
            message: "the Pod has no spec".into(),
        };
    };
    if podexec::is_exec_pod(pod, images) {
        return match podexec::refusal(pod, images) {
            Some(message) => PodAction::Refuse { message },
            None => PodAction::Exec {
                host_network: spec.host_network == Some(true),
            },
        };
    }
    if spec.host_network == Some(true) {
        return PodAction::Refuse {
            message: "the ferrolb lab node agent does not run hostNetwork Pods".into(),
        };
    }
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return PodAction::Refuse {
            message: "the ferrolb lab node agent runs no init containers".into(),
        };
    }
    let others: Vec<String> = spec
        .containers
        .iter()
        .filter(|c| !c.image.as_deref().is_some_and(is_lab_image))
        .map(|c| format!("{} ({})", c.name, c.image.as_deref().unwrap_or("no image")))
        .collect();
    if !others.is_empty() || spec.containers.is_empty() {
        return PodAction::Refuse {
            message: format!(
                "the ferrolb lab node agent runs only the image {LAB_IMAGE}, not: {}",
                others.join(", ")
            ),
        };
    }
    let mut ports: Vec<u16> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        ports.push(DEFAULT_PORT);
    }
    PodAction::Run { ports }
}

fn ip_list(ips: &[IpAddr]) -> Value {
    Value::Array(ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect())
}

/// The fake but stable container ID of a Pod's container.
pub fn container_id(pod_uid: &str, container: &str) -> String {
    format!("ferrolb-lab://{pod_uid}-{container}")
}

/// The status of a running lab Pod (a merge patch of `status`), as kubelet
/// writes it once every container is started, with every container ready or
/// none (pure).
pub fn running_status(
    pod: &Pod,
    pod_ips: &[IpAddr],
    host_ips: &[IpAddr],
    now: &str,
    ready: bool,
) -> Value {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| now.to_owned());
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": format!("{}@lab", podexec::image_name(&image)),
                "containerID": container_id(uid, &c.name),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": start}},
            })
        })
        .collect();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let ready_cond = |t: &str| {
        if ready {
            cond(t)
        } else {
            json!({"type": t, "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now})
        }
    };
    json!({"status": {
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), ready_cond("ContainersReady"), ready_cond("Ready"), cond("PodScheduled")],
        "podIP": pod_ips.first().map(ToString::to_string),
        "podIPs": ip_list(pod_ips),
        "hostIP": host_ips.first().map(ToString::to_string),
        "hostIPs": ip_list(host_ips),
        "startTime": start,
        "containerStatuses": containers,
    }})
}

/// The reason written on a process Pod whose start failed (retried).
pub const START_FAILED_REASON: &str = "StartFailed";

/// The status of a Pod the agent will not run (pure): Pending, scheduled,
/// never ready, each container waiting with the reason [`REFUSED_REASON`].
pub fn refused_status(pod: &Pod, message: &str, host_ips: &[IpAddr], now: &str) -> Value {
    pending_status(pod, REFUSED_REASON, message, host_ips, now)
}

/// A Pending status whose containers wait with `reason` and `message` (pure).
pub fn pending_status(
    pod: &Pod,
    reason: &str,
    message: &str,
    host_ips: &[IpAddr],
    now: &str,
) -> Value {
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            })
        })
        .collect();
    let not = |t: &str| json!({"type": t, "status": "False", "reason": reason, "message": message, "lastTransitionTime": now});
    json!({"status": {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            not("ContainersReady"),
            not("Ready"),
        ],
        "hostIP": host_ips.first().map(ToString::to_string),
        "hostIPs": ip_list(host_ips),
        "containerStatuses": containers,
    }})
}

/// Whether the Pod's Ready condition already says `reason` and `message`
/// (so that the same status is not written again: each write is a watch
/// event, which would reconcile the Pod again at once).
pub fn has_pending_status(pod: &Pod, reason: &str, message: &str) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.conditions.iter().flatten().any(|c| {
            c.type_ == "Ready"
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message)
        })
    })
}

/// Whether the Pod's status already is the refusal (so that it is not written again).
pub fn is_refused(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Pending")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.reason.as_deref() == Some(REFUSED_REASON))
    })
}

/// The Pod's IPs in its status.
pub fn status_ips(pod: &Pod) -> Vec<IpAddr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default()
}

/// The Node object and its status (pure): labels, addresses, capacity.
pub fn node_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name)},
    })
}

pub fn node_labels(name: &str) -> Value {
    json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": go_arch(),
    })
}

/// The architecture as Kubernetes names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The Node's status (a merge patch), with `now` as the Ready heartbeat and
/// `since` as its transition time (pure).
pub fn node_status(
    name: &str,
    internal_ips: &[IpAddr],
    cpus: usize,
    memory_kib: u64,
    now: &str,
    since: &str,
) -> Value {
    let mut addresses: Vec<Value> = internal_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": name}));
    let resources =
        json!({"cpu": cpus.to_string(), "memory": format!("{memory_kib}Ki"), "pods": "110"});
    let ok = |t: &str, reason: &str| json!({"type": t, "status": "False", "reason": reason, "lastHeartbeatTime": now, "lastTransitionTime": since});
    json!({"status": {
        "addresses": addresses,
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            ok("MemoryPressure", "KubeletHasSufficientMemory"),
            ok("DiskPressure", "KubeletHasNoDiskPressure"),
            ok("PIDPressure", "KubeletHasSufficientPID"),
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "the ferrolb lab node agent is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": since},
        ],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": "", "osImage": "ferrolb lab",
            "containerRuntimeVersion": "ferrolb-lab://0.1.0",
            "kubeletVersion": "v1.36.3-ferrolb-lab-agent", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": go_arch(),
        },
    }})
}

/// The taints to keep: all but `node.kubernetes.io/not-ready` (pure).
/// `None` when there is nothing to remove.
pub fn without_not_ready(taints: &[Value]) -> Option<Vec<Value>> {
    let keep: Vec<Value> = taints
        .iter()
        .filter(|t| t["key"] != "node.kubernetes.io/not-ready")
        .cloned()
        .collect();
    (keep.len() != taints.len()).then_some(keep)
}

/// `now` as the API's Time (seconds) and MicroTime (microseconds).
pub fn now_time() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

pub fn now_micro() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

// ---------------------------------------------------------------------------
// I/O: the agent itself.

/// The agent's settings (the `run` subcommand's flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub kubeconfig: std::path::PathBuf,
    pub internal_ips: Vec<IpAddr>,
    pub pod_ranges: Vec<PodRange>,
    /// The interface the Pod IPs are added to.
    pub interface: String,
    /// Images whose Pods run as processes (ferrolb's own).
    pub images: Vec<ImageMapping>,
    /// Prefix of the network namespaces of non-hostNetwork process Pods
    /// (without it such Pods are refused).
    pub pod_netns_prefix: Option<String>,
    /// Where process Pods' logs and credentials go.
    pub state_dir: std::path::PathBuf,
}

struct RunningPod {
    name: String,
    ips: Vec<IpAddr>,
    what: Running,
}

enum Running {
    /// The echo process of a lab-echo Pod.
    Echo(tokio::process::Child),
    /// The processes of a Pod of mapped images.
    Exec(ExecPod),
}

struct ExecPod {
    /// Set to true to stop the containers (SIGTERM, then SIGKILL after the grace period).
    stop: tokio::sync::watch::Sender<bool>,
    supervisors: Vec<tokio::task::JoinHandle<()>>,
    probe: Option<tokio::task::JoinHandle<()>>,
    /// Its own network namespace and the host end of its veth, if not hostNetwork.
    netns: Option<(String, String)>,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dir: std::path::PathBuf,
}

/// Runs `ip` with `args` (the agent is already in the node's namespace).
async fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

async fn add_address(interface: &str, ip: IpAddr) -> anyhow::Result<()> {
    let cidr = host_cidr(ip);
    let mut args = vec!["addr", "replace", &cidr, "dev", interface];
    if ip.is_ipv6() {
        args.push("nodad");
    }
    run_ip(&args).await
}

async fn del_address(interface: &str, ip: IpAddr) {
    let cidr = host_cidr(ip);
    if let Err(e) = run_ip(&["addr", "del", &cidr, "dev", interface]).await {
        tracing::warn!("removing {cidr}: {e:#}");
    }
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(4 << 20)
}

async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Creates the Node (or updates its labels), writes its status and removes
/// the not-ready taint.
async fn register(cfg: &AgentConfig, client: &kube::Client, since: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let nodes: Api<Node> = Api::all(client.clone());
    let obj: Node = serde_json::from_value(node_object(&cfg.node))?;
    match nodes.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            nodes
                .patch(
                    &cfg.node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": node_labels(&cfg.node)}})),
                )
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    heartbeat(cfg, client, since).await
}

/// The Ready heartbeat, the taint check and the Lease renewal.
async fn heartbeat(cfg: &AgentConfig, client: &kube::Client, since: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let nodes: Api<Node> = Api::all(client.clone());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let status = node_status(
        &cfg.node,
        &cfg.internal_ips,
        cpus,
        memory_kib(),
        &now_time(),
        since,
    );
    nodes
        .patch_status(&cfg.node, &PatchParams::default(), &Patch::Merge(status))
        .await
        .context("writing the Node status")?;
    // The admission plugin TaintNodesByCondition taints every created Node
    // not-ready:NoSchedule; the node-lifecycle controller (not run by the
    // test control plane) would remove it once Ready.
    let node = nodes.get(&cfg.node).await?;
    let taints: Vec<Value> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect()
        })
        .unwrap_or_default();
    if let Some(keep) = without_not_ready(&taints) {
        nodes
            .patch(
                &cfg.node,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"resourceVersion": node.metadata.resource_version},
                    "spec": {"taints": keep},
                })),
            )
            .await
            .context("removing the not-ready taint")?;
        tracing::info!("removed the node.kubernetes.io/not-ready taint");
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = json!({"spec": {"holderIdentity": cfg.node, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
    match leases
        .patch(&cfg.node, &PatchParams::default(), &Patch::Merge(&renew))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let mut lease = renew.clone();
            lease["metadata"] = json!({
                "name": cfg.node, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.node,
                                      "uid": node.metadata.uid}],
            });
            let lease: Lease = serde_json::from_value(lease)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .context("creating the node Lease")?;
        }
        Err(e) => return Err(e).context("renewing the node Lease"),
    }
    Ok(())
}

/// Runs the agent until it is killed.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use kube::runtime::watcher;
    let client = client(&cfg.kubeconfig).await?;
    let since = now_time();
    // The API server may still be starting: retry the registration.
    let mut tries = 0;
    while let Err(e) = register(&cfg, &client, &since).await {
        tries += 1;
        if tries > 120 {
            return Err(e.context("registering the Node"));
        }
        tracing::warn!("registering the Node: {e:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::info!("node {} registered", cfg.node);
    {
        let (cfg, client, since) = (cfg.clone(), client.clone(), since.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = heartbeat(&cfg, &client, &since).await {
                    tracing::warn!("heartbeat: {e:#}");
                }
            }
        });
    }

    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node));
    let mut stream = watcher(pods.clone(), wc).boxed();
    let mut agent = Agent {
        cfg,
        pods,
        running: HashMap::new(),
        seen: HashSet::new(),
        failed: HashMap::new(),
    };
    let mut retry = tokio::time::interval(RETRY);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = retry.tick() => {
                let again: Vec<Pod> = agent.failed.values().cloned().collect();
                for pod in again {
                    agent.reconcile(&pod).await;
                }
                continue;
            }
        };
        match ev {
            Ok(watcher::Event::Init) => agent.seen.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                agent
                    .seen
                    .insert(pod.metadata.uid.clone().unwrap_or_default());
                agent.reconcile(&pod).await;
            }
            Ok(watcher::Event::Apply(pod)) => agent.reconcile(&pod).await,
            Ok(watcher::Event::InitDone) => {
                let gone: Vec<String> = agent
                    .running
                    .keys()
                    .filter(|u| !agent.seen.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    agent.stop(&uid).await;
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                agent.failed.remove(uid);
                agent.stop(uid).await;
            }
            Err(e) => {
                tracing::warn!("watching Pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

struct Agent {
    cfg: AgentConfig,
    pods: kube::Api<Pod>,
    running: HashMap<String, RunningPod>,
    seen: HashSet<String>,
    /// Process Pods whose start failed, by uid, as last seen: retried.
    failed: HashMap<String, Pod>,
}

impl Agent {
    fn used(&self) -> HashSet<IpAddr> {
        self.running
            .values()
            .flat_map(|p| p.ips.iter().copied())
            .chain(self.cfg.internal_ips.iter().copied())
            .collect()
    }

    async fn reconcile(&mut self, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if let Err(e) = self.reconcile_inner(pod).await {
            tracing::warn!("pod {ns}/{name}: {e:#}");
        }
    }

    async fn reconcile_inner(&mut self, pod: &Pod) -> anyhow::Result<()> {
        use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.pods.clone().into_client(), &ns);
        match decide(pod, &self.cfg.images) {
            PodAction::Remove => {
                self.failed.remove(&uid);
                self.stop(&uid).await;
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => tracing::info!("pod {ns}/{name}: stopped and deleted"),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            PodAction::Refuse { message } => {
                if !is_refused(pod) {
                    let st = refused_status(pod, &message, &self.cfg.internal_ips, &now_time());
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
                        .await?;
                    tracing::info!("pod {ns}/{name}: refused: {message}");
                }
            }
            PodAction::Run { ports } => {
                if !self.running.contains_key(&uid) {
                    self.start(pod, &uid, &name, &ports).await?;
                }
                self.write_running(&api, pod, &uid).await?;
            }
            PodAction::Exec { host_network } => {
                if !self.running.contains_key(&uid)
                    && let Err(e) = self.start_exec(pod, &uid, &name, host_network).await
                {
                    // Retried every RETRY until it starts (a transient API
                    // error, a token request before the ServiceAccount exists).
                    self.failed.insert(uid.clone(), pod.clone());
                    let message = format!("{e:#}");
                    if !has_pending_status(pod, START_FAILED_REASON, &message) {
                        let st = pending_status(
                            pod,
                            START_FAILED_REASON,
                            &message,
                            &self.cfg.internal_ips,
                            &now_time(),
                        );
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
                            .await?;
                    }
                    return Err(e);
                }
                self.failed.remove(&uid);
                self.write_running(&api, pod, &uid).await?;
            }
        }
        Ok(())
    }

    /// Writes the running status unless the Pod already has it.
    async fn write_running(
        &self,
        api: &kube::Api<Pod>,
        pod: &Pod,
        uid: &str,
    ) -> anyhow::Result<()> {
        use kube::api::{Patch, PatchParams};
        let r = &self.running[uid];
        let ready = match &r.what {
            Running::Echo(_) => true,
            Running::Exec(e) => e.ready.load(std::sync::atomic::Ordering::SeqCst),
        };
        if has_running_status(pod, &r.ips, ready) {
            return Ok(());
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let st = running_status(pod, &r.ips, &self.cfg.internal_ips, &now_time(), ready);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
            .await?;
        tracing::info!("pod {name}: running on {:?}, ready {ready}", r.ips);
        Ok(())
    }

    /// Gives the Pod its IPs and starts its echo process; returns when it listens.
    async fn start(
        &mut self,
        pod: &Pod,
        uid: &str,
        name: &str,
        ports: &[u16],
    ) -> anyhow::Result<()> {
        let preferred = status_ips(pod);
        let mut used = self.used();
        let mut ips = Vec::new();
        for range in &self.cfg.pod_ranges {
            let ip = allocate(range, &used, &preferred)
                .with_context(|| format!("no free address in {range}"))?;
            used.insert(ip);
            ips.push(ip);
        }
        if ips.is_empty() {
            bail!("no Pod address range");
        }
        for ip in &ips {
            add_address(&self.cfg.interface, *ip).await?;
        }
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("echo")
            .args(["--pod", name, "--node", &self.cfg.node]);
        for ip in &ips {
            for port in ports {
                cmd.args(["--listen", &SocketAddr::new(*ip, *port).to_string()]);
            }
        }
        cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
        // SAFETY: prctl is async-signal-safe. The echo process dies with the
        // agent (the agent's runtime is single-threaded: the spawning thread
        // lives as long as the agent).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the echo process")?;
        // Ready only once it listens on every address.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for ip in &ips {
            for port in ports {
                let addr = SocketAddr::new(*ip, *port);
                while tokio::net::TcpStream::connect(addr).await.is_err() {
                    if let Some(status) = child.try_wait()? {
                        for ip in &ips {
                            del_address(&self.cfg.interface, *ip).await;
                        }
                        bail!("the echo process exited ({status})");
                    }
                    if tokio::time::Instant::now() > deadline {
                        let _ = child.kill().await;
                        for ip in &ips {
                            del_address(&self.cfg.interface, *ip).await;
                        }
                        bail!("the echo process does not listen on {addr}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.running.insert(
            uid.to_owned(),
            RunningPod {
                name: name.to_owned(),
                ips,
                what: Running::Echo(child),
            },
        );
        Ok(())
    }

    /// Runs a Pod of mapped images: its IPs (the node's for hostNetwork, else
    /// its own network namespace with an IPv4 address), a token of its
    /// ServiceAccount, one supervised process per container, and its
    /// readiness probe.
    async fn start_exec(
        &mut self,
        pod: &Pod,
        uid: &str,
        name: &str,
        host_network: bool,
    ) -> anyhow::Result<()> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (ips, netns) = if host_network {
            (self.cfg.internal_ips.clone(), None)
        } else {
            let prefix = self.cfg.pod_netns_prefix.as_deref().context(
                "this agent runs no non-hostNetwork process Pods (no --pod-netns-prefix)",
            )?;
            let range = self
                .cfg
                .pod_ranges
                .iter()
                .find(|r| r.addresses().next().is_some_and(|a| a.is_ipv4()))
                .context("no IPv4 Pod range")?;
            let ip = allocate(range, &self.used(), &status_ips(pod))
                .with_context(|| format!("no free address in {range}"))?;
            let (netns, veth) = podexec::pod_netns_names(prefix, uid);
            pod_netns_up(&netns, &veth, &self.cfg.interface, ip).await?;
            (vec![ip], Some((netns, veth)))
        };
        let result = self
            .spawn_exec(pod, uid, name, &ns, &ips, netns.clone())
            .await;
        if result.is_err()
            && let Some((n, _)) = &netns
        {
            pod_netns_down(n).await;
        }
        result
    }

    async fn spawn_exec(
        &mut self,
        pod: &Pod,
        uid: &str,
        name: &str,
        ns: &str,
        ips: &[IpAddr],
        netns: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        let dir = self.cfg.state_dir.join(format!("{ns}_{name}"));
        let plan = podexec::plan(
            pod,
            &self.cfg.images,
            ips,
            &self.cfg.internal_ips,
            &dir.join("volumes"),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        std::fs::create_dir_all(&dir)?;
        // The volumes, written before any container starts (a missing
        // Secret or ConfigMap keeps the Pod from starting, as with kubelet).
        let owner = plan.containers.iter().find_map(|c| c.user);
        let token = self.token(ns, &plan.service_account, name, uid).await?;
        for v in &plan.volumes {
            self.write_volume(ns, v, owner, &token).await?;
        }
        // The ServiceAccount token, bound to the Pod, in a kubeconfig: the
        // lab's stand-in for the projected token volume.
        let kubeconfig = dir.join("kubeconfig");
        write_pod_kubeconfig(
            &self.cfg.kubeconfig,
            &kubeconfig,
            &token,
            &plan.service_account,
        )?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut supervisors = Vec::new();
        let mut probe = None;
        for c in &plan.containers {
            let user = c.user;
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
                std::os::unix::fs::chown(&kubeconfig, Some(uid), Some(gid))?;
            }
            let log = self
                .cfg
                .state_dir
                .join(format!("{ns}_{name}_{}.log", c.name));
            supervisors.push(tokio::spawn(supervise(
                c.clone(),
                name.to_owned(),
                netns.as_ref().map(|(n, _)| n.clone()),
                kubeconfig.clone(),
                log,
                plan.grace,
                stop_rx.clone(),
            )));
        }
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            plan.containers.iter().all(|c| c.readiness.is_none()),
        ));
        let probes: Vec<podexec::HttpProbe> = plan
            .containers
            .iter()
            .filter_map(|c| c.readiness.clone())
            .collect();
        if !probes.is_empty() {
            let api: kube::Api<Pod> = kube::Api::namespaced(self.pods.clone().into_client(), ns);
            probe = Some(tokio::spawn(readiness(
                api,
                pod.clone(),
                ips.to_vec(),
                self.cfg.internal_ips.clone(),
                probes,
                ready.clone(),
            )));
        }
        tracing::info!(
            "pod {ns}/{name}: started {} as processes{}",
            plan.containers
                .iter()
                .map(|c| c.program.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if plan.host_network {
                " (host network)"
            } else {
                ""
            }
        );
        self.running.insert(
            uid.to_owned(),
            RunningPod {
                name: name.to_owned(),
                ips: ips.to_vec(),
                what: Running::Exec(ExecPod {
                    stop,
                    supervisors,
                    probe,
                    netns,
                    ready,
                    dir,
                }),
            },
        );
        Ok(())
    }

    /// Writes a volume's files into its directory: each key of the Secret or
    /// ConfigMap a file, read once at start (kubelet would refresh them).
    async fn write_volume(
        &self,
        ns: &str,
        v: &podexec::VolumePlan,
        owner: Option<(u32, u32)>,
        token: &str,
    ) -> anyhow::Result<()> {
        use podexec::{ProjectedFile, VolumeSource};
        let files: Vec<(String, Vec<u8>)> = match &v.source {
            VolumeSource::EmptyDir => vec![],
            VolumeSource::Projected { files } => {
                let mut out = vec![];
                for (path, f) in files {
                    let data = match f {
                        ProjectedFile::Token => Some(token.as_bytes().to_vec()),
                        ProjectedFile::Text(t) => Some(t.as_bytes().to_vec()),
                        ProjectedFile::Key {
                            keyed,
                            name,
                            key,
                            optional,
                        } => {
                            let got = self
                                .keys_of(ns, *keyed, name)
                                .await?
                                .and_then(|mut k| k.remove(key));
                            if got.is_none() && !optional {
                                anyhow::bail!(
                                    "volume {}: {} {ns}/{name} has no key {key}",
                                    v.name,
                                    keyed.kind()
                                );
                            }
                            got
                        }
                    };
                    if let Some(data) = data {
                        out.push((path.clone(), data));
                    }
                }
                out
            }
            VolumeSource::Object {
                keyed,
                name,
                optional,
            } => match self.keys_of(ns, *keyed, name).await? {
                Some(keys) => keys.into_iter().collect(),
                None if *optional => vec![],
                None => anyhow::bail!("volume {}: {} {ns}/{name} not found", v.name, keyed.kind()),
            },
        };
        let _ = std::fs::remove_dir_all(&v.dir);
        std::fs::create_dir_all(&v.dir)?;
        for (key, data) in files {
            if key.starts_with(['/', '.']) || key.split('/').any(|c| c == ".." || c.is_empty()) {
                anyhow::bail!("volume {}: key {key:?} is not a file name", v.name);
            }
            let path = v.dir.join(&key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, data)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&v.dir, Some(uid), Some(gid))?;
            if let Some(parent) = v.dir.parent() {
                std::os::unix::fs::chown(parent, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    /// The keys of a Secret or ConfigMap and their bytes; `None` if there
    /// is no such object.
    async fn keys_of(
        &self,
        ns: &str,
        keyed: podexec::Keyed,
        name: &str,
    ) -> anyhow::Result<Option<std::collections::BTreeMap<String, Vec<u8>>>> {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        let client = self.pods.clone().into_client();
        Ok(match keyed {
            podexec::Keyed::Secret => kube::Api::<Secret>::namespaced(client, ns)
                .get_opt(name)
                .await?
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                }),
            podexec::Keyed::ConfigMap => kube::Api::<ConfigMap>::namespaced(client, ns)
                .get_opt(name)
                .await?
                .map(|c| {
                    c.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .chain(
                            c.binary_data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0)),
                        )
                        .collect()
                }),
        })
    }

    /// A token of `sa` bound to the Pod (TokenRequest), valid for a day.
    async fn token(&self, ns: &str, sa: &str, pod: &str, uid: &str) -> anyhow::Result<String> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.pods.clone().into_client(), ns);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(86400),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.to_owned()),
                    uid: Some(uid.to_owned()),
                }),
            },
            ..TokenRequest::default()
        };
        let got = api
            .create_token_request(sa, &kube::api::PostParams::default(), &req)
            .await
            .with_context(|| format!("requesting a token of ServiceAccount {ns}/{sa}"))?;
        got.status
            .map(|s| s.token)
            .context("the TokenRequest has no token")
    }

    /// Stops the Pod's process and removes its addresses (if it runs here).
    async fn stop(&mut self, uid: &str) {
        let Some(p) = self.running.remove(uid) else {
            return;
        };
        match p.what {
            Running::Echo(mut child) => {
                let _ = child.kill().await;
                for ip in &p.ips {
                    del_address(&self.cfg.interface, *ip).await;
                }
            }
            Running::Exec(e) => {
                let _ = e.stop.send(true);
                for s in e.supervisors {
                    let _ = s.await;
                }
                if let Some(probe) = e.probe {
                    probe.abort();
                }
                if let Some((ns, _)) = &e.netns {
                    pod_netns_down(ns).await;
                }
                let _ = std::fs::remove_file(e.dir.join("kubeconfig"));
            }
        }
        tracing::info!("pod {}: stopped, {:?} freed", p.name, p.ips);
    }
}

/// Whether the Pod's status already says Running with these IPs and this readiness (pure).
pub fn has_running_status(pod: &Pod, ips: &[IpAddr], ready: bool) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && (c.status == "True") == ready)
    }) && status_ips(pod) == ips
}

/// A kubeconfig for a Pod's process: the agent's API server and CA, the Pod's token.
fn write_pod_kubeconfig(
    agent_kubeconfig: &Path,
    out: &Path,
    token: &str,
    user: &str,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    let kc = kube::config::Kubeconfig::read_from(agent_kubeconfig)?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the agent's kubeconfig has no cluster")?;
    let server = cluster
        .server
        .context("the agent's kubeconfig has no server")?;
    let ca = match cluster.certificate_authority_data {
        Some(d) => base64::engine::general_purpose::STANDARD.decode(d.trim())?,
        None => std::fs::read(
            cluster
                .certificate_authority
                .context("the agent's kubeconfig has no certificate authority")?,
        )?,
    };
    std::fs::write(out, crate::kube::kubeconfig_text(&server, &ca, token, user))?;
    Ok(())
}

async fn run_in(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run_ip(&full).await
}

/// A Pod's own network namespace: a veth to the node, the Pod's IPv4 address,
/// a default route via the node (169.254.1.1, an address of the node's end
/// of the veth), a host route to the Pod on the node, and proxy ARP on the
/// node's `interface` so that the segment reaches the Pod through the node.
async fn pod_netns_up(netns: &str, veth: &str, interface: &str, ip: IpAddr) -> anyhow::Result<()> {
    let _ = run_ip(&["netns", "del", netns]).await;
    run_ip(&["netns", "add", netns]).await?;
    let steps = async {
        run_ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])
        .await?;
        // The Pod's gateway: an address of the node's end (the same on every
        // Pod's veth, as each is its own link).
        run_ip(&[
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            veth,
            "scope",
            "link",
        ])
        .await?;
        run_ip(&["link", "set", veth, "up"]).await?;
        run_in(netns, &["link", "set", "lo", "up"]).await?;
        run_in(netns, &["addr", "add", &host_cidr(ip), "dev", "eth0"]).await?;
        run_in(netns, &["link", "set", "eth0", "up"]).await?;
        run_in(
            netns,
            &[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        )
        .await?;
        run_in(
            netns,
            &[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ],
        )
        .await?;
        run_ip(&["route", "replace", &host_cidr(ip), "dev", veth]).await?;
        // The node answers ARP on the segment for addresses it routes out of
        // another interface: its Pods' (it has no default route). Unlike
        // per-address proxy entries, this survives the link going down and up.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{interface}/proxy_arp"),
            "1",
        )
        .context("enabling proxy ARP on the node's interface")
    };
    if let Err(e) = steps.await {
        let _ = run_ip(&["netns", "del", netns]).await;
        return Err(e.context(format!("setting up the Pod's network namespace {netns}")));
    }
    Ok(())
}

async fn pod_netns_down(netns: &str) {
    // Deleting the namespace deletes the veth pair and with it the host route.
    if let Err(e) = run_ip(&["netns", "del", netns]).await {
        tracing::warn!("deleting {netns}: {e:#}");
    }
}

/// Runs one container's process until stopped; restarts it when it exits
/// (restartPolicy Always), after 1, 2, 4 ... up to 30 s.
async fn supervise(
    c: podexec::ContainerPlan,
    pod: String,
    netns: Option<String>,
    kubeconfig: std::path::PathBuf,
    log: std::path::PathBuf,
    grace: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut child = match spawn_container(&c, &pod, netns.as_deref(), &kubeconfig, &log) {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!("pod {pod}: container {}: {e:#}", c.name);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        tokio::select! {
            status = child.wait() => {
                tracing::warn!("pod {pod}: container {} exited ({status:?}); restarting in {backoff:?}", c.name);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = stop.changed() => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill with a pid of our own running child.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    tracing::warn!("pod {pod}: container {} still running after {grace:?}: killed", c.name);
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}

fn spawn_container(
    c: &podexec::ContainerPlan,
    pod: &str,
    netns: Option<&str>,
    kubeconfig: &Path,
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(Into::into));
    }
    if let Some((uid, gid)) = c.user {
        argv.push("setpriv".into());
        argv.push(format!("--reuid={uid}").into());
        argv.push(format!("--regid={gid}").into());
        argv.push("--clear-groups".into());
        // A change of user clears the parent-death signal: set it again.
        argv.push("--pdeathsig=KILL".into());
        argv.push("--".into());
    }
    argv.push(c.program.clone().into());
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).args(&c.args);
    // A container's environment: its own variables, the hostname, a PATH,
    // and the kubeconfig holding its ServiceAccount token.
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOSTNAME", pod)
        .env("KUBECONFIG", kubeconfig)
        .envs(c.env.iter().map(|(k, v)| (k, v)));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the process dies with the agent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", c.program.display()))
}

/// The readiness probes of a process Pod: every probe's GET must answer 2xx
/// or 3xx; the Pod's Ready condition is written when that changes.
async fn readiness(
    api: kube::Api<Pod>,
    pod: Pod,
    ips: Vec<IpAddr>,
    host_ips: Vec<IpAddr>,
    probes: Vec<podexec::HttpProbe>,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use kube::api::{Patch, PatchParams};
    let name = pod.metadata.name.clone().unwrap_or_default();
    let period = probes
        .iter()
        .map(|p| p.period)
        .min()
        .unwrap_or(Duration::from_secs(10));
    let Some(ip) = ips.first().copied() else {
        return;
    };
    let mut written: Option<bool> = None;
    loop {
        let mut ok = true;
        for p in &probes {
            ok &= http_ok(SocketAddr::new(ip, p.port), &p.path).await;
        }
        ready.store(ok, std::sync::atomic::Ordering::SeqCst);
        if written != Some(ok) {
            let st = running_status(&pod, &ips, &host_ips, &now_time(), ok);
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
                .await
            {
                Ok(_) => {
                    tracing::info!("pod {name}: ready {ok}");
                    written = Some(ok);
                }
                Err(e) => tracing::warn!("pod {name}: writing readiness: {e}"),
            }
        }
        // Until first ready, probe often: a lab should not wait 10 s for a start.
        let wait = if written == Some(true) || ok {
            period
        } else {
            Duration::from_millis(500).min(period)
        };
        tokio::time::sleep(wait).await;
    }
}

/// One HTTP/1.0 GET with a 1 s timeout: whether the status is 2xx or 3xx.
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 16];
        let n = s.read(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head[..n]).ok()?;
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The echo server: every request on every address gets `pod=NAME node=NODE`.
pub async fn echo(listen: &[SocketAddr], pod: &str, node: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = format!("pod={pod} node={node}\n");
    let mut tasks = Vec::new();
    for addr in listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    // Read the request head (up to 16 KiB), then answer and close.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        }));
    }
    futures::future::join_all(tasks).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn lab_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "echo-1", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "echo", "image": "ferrolb.io/lab-echo:1", "ports": [{"containerPort": 8080}, {"containerPort": 9090, "protocol": "UDP"}]},
                {"name": "side", "image": "ferrolb.io/lab-echo", "ports": [{"containerPort": 8081, "protocol": "TCP"}, {"containerPort": 8080}]},
            ]},
        }))
    }

    #[test]
    fn lab_images() {
        assert!(is_lab_image("ferrolb.io/lab-echo"));
        assert!(is_lab_image("ferrolb.io/lab-echo:v2"));
        assert!(is_lab_image("ferrolb.io/lab-echo@sha256:00"));
        assert!(!is_lab_image("ferrolb.io/lab-echoes"));
        assert!(!is_lab_image("nginx"));
        assert!(!is_lab_image("docker.io/ferrolb.io/lab-echo"));
    }

    #[test]
    fn ranges_and_allocation() {
        let r: PodRange = "192.0.2.130/29".parse().unwrap();
        assert_eq!(r.to_string(), "192.0.2.128/29");
        assert_eq!(r.addresses().count(), 8);
        assert!(r.contains("192.0.2.135".parse().unwrap()));
        assert!(!r.contains("192.0.2.136".parse().unwrap()));
        assert!(!r.contains("2001:db8::1".parse().unwrap()));
        let mut used = HashSet::new();
        let a = allocate(&r, &used, &[]).unwrap();
        assert_eq!(a, "192.0.2.128".parse::<IpAddr>().unwrap());
        used.insert(a);
        assert_eq!(
            allocate(&r, &used, &[]).unwrap(),
            "192.0.2.129".parse::<IpAddr>().unwrap()
        );
        // The Pod's earlier IP when free and in range; never one taken or outside.
        let pref: Vec<IpAddr> = vec![
            "192.0.2.128".parse().unwrap(),
            "192.0.2.133".parse().unwrap(),
        ];
        assert_eq!(
            allocate(&r, &used, &pref).unwrap(),
            "192.0.2.133".parse::<IpAddr>().unwrap()
        );
        let out: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(
            allocate(&r, &used, &out).unwrap(),
            "192.0.2.129".parse::<IpAddr>().unwrap()
        );
        let full: HashSet<IpAddr> = r.addresses().collect();
        assert_eq!(allocate(&r, &full, &[]), None);
        let r6: PodRange = "2001:db8::100/120".parse().unwrap();
        assert_eq!(r6.addresses().count(), 256);
        let big: PodRange = "2001:db8::/64".parse().unwrap();
        assert_eq!(big.addresses().count(), 1 << 16);
        assert!("192.0.2.0/33".parse::<PodRange>().is_err());
        assert!("192.0.2.0".parse::<PodRange>().is_err());
    }

    #[test]
    fn decisions() {
        assert_eq!(
            decide(&lab_pod(), &[]),
            PodAction::Run {
                ports: vec![8080, 8081]
            }
        );
        let mut p = lab_pod();
        p.spec.as_mut().unwrap().containers[1].image = Some("nginx:1".into());
        match decide(&p, &[]) {
            PodAction::Refuse { message } => {
                assert!(message.contains("side (nginx:1)"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let mut p = lab_pod();
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert!(matches!(decide(&p, &[]), PodAction::Refuse { .. }));
        let mut p = lab_pod();
        p.spec
            .as_mut()
            .unwrap()
            .containers
            .iter_mut()
            .for_each(|c| c.ports = None);
        assert_eq!(
            decide(&p, &[]),
            PodAction::Run {
                ports: vec![DEFAULT_PORT]
            }
        );
        let mut p = lab_pod();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
        assert_eq!(decide(&p, &[]), PodAction::Remove);
    }

    #[test]
    fn statuses() {
        let p = lab_pod();
        let ips: Vec<IpAddr> = vec!["192.0.2.128".parse().unwrap()];
        let host: Vec<IpAddr> = vec!["192.0.2.11".parse().unwrap()];
        let st = running_status(&p, &ips, &host, "2026-01-01T00:00:00Z", true);
        let s = &st["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "192.0.2.128");
        assert_eq!(s["podIPs"], json!([{"ip": "192.0.2.128"}]));
        assert_eq!(s["hostIPs"], json!([{"ip": "192.0.2.11"}]));
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(
                s["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True"),
                "{t}"
            );
        }
        let cs = s["containerStatuses"].as_array().unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["containerID"], "ferrolb-lab://u1-echo");
        assert_eq!(cs[0]["imageID"], "ferrolb.io/lab-echo@lab");
        assert_eq!(cs[0]["ready"], true);
        assert!(cs[0]["state"]["running"]["startedAt"].is_string());
        // It parses as a PodStatus.
        let _: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(s.clone()).unwrap();

        let st = refused_status(&p, "no", &host, "2026-01-01T00:00:00Z");
        let mut refused = p.clone();
        refused.status = Some(serde_json::from_value(st["status"].clone()).unwrap());
        assert!(is_refused(&refused));
        assert!(!is_refused(&p));
        assert!(has_pending_status(&refused, REFUSED_REASON, "no"));
        assert!(!has_pending_status(&refused, REFUSED_REASON, "other"));
        let mut failed = p.clone();
        failed.status = serde_json::from_value(
            pending_status(
                &p,
                START_FAILED_REASON,
                "token",
                &host,
                "2026-01-01T00:00:00Z",
            )["status"]
                .clone(),
        )
        .unwrap();
        assert!(has_pending_status(&failed, START_FAILED_REASON, "token"));
        assert!(!is_refused(&failed));
        assert_eq!(st["status"]["phase"], "Pending");
        assert_eq!(
            st["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
            REFUSED_REASON
        );
    }

    #[test]
    fn node_status_and_taints() {
        let st = node_status(
            "node-1",
            &["192.0.2.11".parse().unwrap()],
            2,
            1024,
            "2026-01-01T00:00:10Z",
            "2026-01-01T00:00:00Z",
        );
        let s = &st["status"];
        assert_eq!(
            s["addresses"][0],
            json!({"type": "InternalIP", "address": "192.0.2.11"})
        );
        assert_eq!(
            s["addresses"][1],
            json!({"type": "Hostname", "address": "node-1"})
        );
        assert_eq!(s["allocatable"]["pods"], "110");
        let _: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(s.clone()).unwrap();
        let taints = vec![
            json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}),
            json!({"key": "x", "effect": "NoSchedule"}),
        ];
        assert_eq!(without_not_ready(&taints), Some(vec![taints[1].clone()]));
        assert_eq!(without_not_ready(&taints[1..]), None);
        assert!(now_micro().ends_with('Z'));
        assert_eq!(now_micro().split('.').nth(1).unwrap().len(), 7);
        assert!(!now_time().contains('.'));
    }
}
