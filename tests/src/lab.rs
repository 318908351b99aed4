//! The lab: a simulated cluster in network namespaces on one machine
//! (docs/architecture.md, section 8; docs/lab-agent.md).
//!
//! ```text
//!             switch namespace: bridge br0 (the layer-2 segment)
//!   ┌──────────────┬──────────────┬──────────────┬──────────────┐
//!   cp             node-1 .. node-N                              client
//!   192.0.2.2      192.0.2.11 ..                                 192.0.2.100
//! real ([`RealOptions`]):
//!   etcd, kube-apiserver,   node agent (kubelet's stand-in) running
//!   kube-controller-manager ferrolb's Pods and lab-echo Pods
//!   kube-scheduler          (Pod IPs 203.0.113.0/24), kube-proxy
//! test:
//!   test API server,        speaker, backend :8080, nftables DNAT
//!   controller              (kube-proxy emulation)
//! ```
//!
//! Every node's interface is `eth0`, as on a real node, so the speaker's default
//! interface rules apply unchanged. Addresses come only from the documentation
//! ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), and
//! nothing is added to the machine's own namespace: everything lives in
//! namespaces the lab creates and deletes.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

mod network;

pub use network::{Host, Network, in_netns, spawn_in_netns};

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub nodes: usize,
    /// Where ferrolb-controller, ferrolb-speaker, ferrolb-test-apiserver and ferrolb-lab are.
    pub bin_dir: PathBuf,
    /// An API server reachable from the node namespaces, instead of starting the test one.
    pub kubeconfig: Option<PathBuf>,
    /// The ConfigMap manifest to apply (namespace ferrolb-system, name config).
    pub config: PathBuf,
    /// Run the controller and speakers as their service accounts, under the RBAC
    /// rules of `<dir>/controller-rbac.yaml` and `<dir>/speaker-rbac.yaml`, which
    /// the test API server enforces (`GET /admin/rbac` reports).
    pub rbac_manifests: Option<PathBuf>,
    /// Run on a real control plane ([`RealOptions`]) instead of the test API server.
    pub real: Option<RealOptions>,
}

/// The lab on a real control plane: etcd, kube-apiserver,
/// kube-controller-manager and kube-scheduler in the `cp` namespace; on every
/// node the node agent (the stand-in for kubelet, docs/lab-agent.md) and a
/// real kube-proxy; ferrolb deployed from a kustomization as a user would.
#[derive(Clone, Debug)]
pub struct RealOptions {
    pub kube: crate::kube::KubeBinaries,
    pub proxy_mode: crate::kubeproxy::ProxyMode,
    /// The kustomization to deploy ferrolb from (`manifests/`); its images
    /// run as processes from `bin_dir`.
    pub manifests: PathBuf,
    /// The load balancer the lab deploys (ferrolb, or a peer it is measured against).
    pub system: System,
}

/// The layer-2 load balancer a real-control-plane lab runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum System {
    /// ferrolb from [`RealOptions::manifests`]; the lab's config is its ConfigMap
    /// (or MetalLB objects, with the CRD components in the kustomization).
    Ferrolb,
    /// MetalLB from its own `metallb-native.yaml` in `bin` (built by
    /// `scripts/build-peers.sh`, with its `controller` and `speaker`); the lab's
    /// config is an IPAddressPool and an L2Advertisement (docs/peers.md).
    Metallb { bin: PathBuf },
}

/// MetalLB's images, mapped to the binaries `scripts/build-peers.sh` builds
/// and the images' entrypoints.
pub const METALLB_IMAGES: [(&str, &str); 2] = [
    ("quay.io/metallb/controller", "/controller"),
    ("quay.io/metallb/speaker", "/speaker"),
];

/// The lab's changes to MetalLB's manifest, as a kustomization beside a copy
/// of it (docs/peers.md says why each is needed): no validating webhook (the
/// API server in the lab cannot reach a Service), and the namespace from the
/// downward API (there is no service-account volume to read it from).
pub const METALLB_KUSTOMIZATION: &str = r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- metallb-native.yaml
patches:
- target:
    kind: ValidatingWebhookConfiguration
  patch: |
    $patch: delete
    apiVersion: admissionregistration.k8s.io/v1
    kind: ValidatingWebhookConfiguration
    metadata:
      name: metallb-webhook-configuration
- target:
    kind: Deployment
    name: controller
  patch: |
    - op: add
      path: /spec/template/spec/containers/0/args/-
      value: --webhook-mode=disabled
    - op: add
      path: /spec/template/spec/containers/0/env/-
      value: {name: METALLB_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
- target:
    kind: DaemonSet
    name: speaker
  patch: |
    - op: add
      path: /spec/template/spec/containers/0/env/-
      value: {name: METALLB_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
"#;

/// A dual-stack pool on the lab's segment (the tests' usual config).
pub const DUAL_STACK_POOLS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: config
  namespace: ferrolb-system
data:
  config: |
    address-pools:
    - name: lab
      protocol: layer2
      addresses:
      - 192.0.2.240-192.0.2.250
      - 2001:db8::240-2001:db8::250
"#;

/// The lab's Pod network: one block per node, reached on the segment through
/// the node (every host routes it on `eth0`, the node answers ARP for its Pods).
pub const POD_NETWORK_V4: &str = "203.0.113.0/24";

struct Proc {
    what: String,
    child: Child,
}

/// A running lab. Dropping it stops every process and deletes every namespace.
pub struct Lab {
    pub dir: PathBuf,
    pub cp: Host,
    pub client: Host,
    pub nodes: Vec<Host>,
    pub kubeconfig: PathBuf,
    bin_dir: PathBuf,
    impersonate: bool,
    procs: Vec<Proc>,
    /// The real control plane, if the lab runs on one.
    pub control_plane: Option<crate::kube::ControlPlane>,
    /// The kubectl the lab runs (the built one on a real control plane).
    pub kubectl_bin: String,
    prefix: String,
    /// Each node's kube-proxy: node, program, arguments.
    proxies: Vec<(String, String, Vec<String>)>,
    /// The segment: `cp`, `client` and the nodes, in that order. Last, so
    /// that its namespaces are deleted after everything in them stopped.
    network: Network,
}

/// Runs a command, failing with its output when it fails.
/// A running `ferrolb-lab probe` (see [`Lab::start_prober`]).
pub struct Prober {
    child: std::process::Child,
    /// Its output so far, read as it comes (a long run would fill the pipe).
    out: std::sync::Arc<std::sync::Mutex<String>>,
    /// When it was started (its own clock starts a little later).
    started: Instant,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Waits until a request the prober started after `event` was answered:
    /// only then has it seen the end of any outage that `event` caused
    /// (stopped earlier, a request still waiting for its timeout would hide
    /// the outage from [`Prober::stop`]).
    pub fn wait_answer_after(&self, event: Instant, limit: Duration) -> anyhow::Result<()> {
        let after = event.saturating_duration_since(self.started).as_millis() as u64;
        eventually("the prober answered after the event", limit, || {
            let out = self.out.lock().ok()?;
            out.lines()
                .rev()
                .filter(|l| l.contains(" ok "))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .any(|t| t > after)
                .then_some(())
        })
    }

    /// Stops it: the number of answers and the longest gap between two (ms).
    pub fn stop(mut self) -> (usize, u64) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
        let mut ok: Vec<u64> = out
            .lines()
            .filter(|l| l.contains(" ok "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        // A parallel prober prints each attempt when it ends.
        ok.sort_unstable();
        let longest = ok.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        (ok.len(), longest)
    }
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_input(program, args, None)
}

/// [`run`] with `input` (if any) on its standard input.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot run {program} (is it installed? scripts/install-deps.sh installs it)")
        })?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every wait of the lab fail at once (Ctrl-C), so that it is torn down.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    eventually_every(what, limit, Duration::from_millis(50), f)
}

/// Polls `f` every `every` until it returns `Some`, for at most `limit`.
pub fn eventually_every<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

impl Lab {
    /// Fails, saying how to build them, unless the binaries the lab runs are in `bin_dir`.
    pub fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
        for b in [
            "ferrolb-controller",
            "ferrolb-speaker",
            "ferrolb-test-apiserver",
            "ferrolb-lab",
            "ferrolb-node-agent",
        ] {
            if !bin_dir.join(b).exists() {
                bail!(
                    "{} is missing: build the binaries (`cargo build --release --bins`) or pass --bin-dir",
                    bin_dir.join(b).display()
                );
            }
        }
        Ok(())
    }

    /// Deletes namespaces left by labs whose process is gone (a run that was killed).
    pub fn clean_stale() {
        Network::clean_stale("flblab");
    }

    /// Builds the network, starts the control plane and a speaker, a backend
    /// and kube-proxy emulation on every node, and registers the nodes.
    pub fn up(opts: &LabOptions) -> anyhow::Result<Lab> {
        if opts.nodes == 0 || opts.nodes > 50 {
            bail!("--nodes must be between 1 and 50");
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = format!("flblab{}x{seq}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let host = |name: &str, i: u8| Host {
            name: name.to_owned(),
            ns: format!("{prefix}-{name}"),
            ip4: Ipv4Addr::new(192, 0, 2, i),
            ip6: format!("2001:db8::{i:x}").parse().expect("valid"),
            mac: format!("02:00:00:00:00:{i:02x}"),
        };
        let cp = host("cp", 2);
        let client = host("client", 100);
        let nodes: Vec<Host> = (1..=opts.nodes)
            .map(|i| host(&format!("node-{i}"), 10 + i as u8))
            .collect();
        let network = Network::new(
            &format!("{prefix}-switch"),
            [cp.clone(), client.clone()]
                .into_iter()
                .chain(nodes.clone())
                .collect(),
        )?;
        // One kernel holds every lab host, and its IPv4 neighbour table is
        // shared by all namespaces (at most gc_thresh3, 1024 entries,
        // machine-wide). At 50 nodes the speakers' contacts with each other
        // (n² entries) fill it: a node that cannot resolve the control plane
        // cannot reach the API, and membership packets wait on failed
        // resolutions. Fixed entries between the control plane and every
        // node and between every two nodes (fixed entries do not count
        // against the limit) keep the table for what the lab tests: the
        // client resolving service addresses. On real machines each node
        // has a table of its own.
        let pinned: Vec<&str> = std::iter::once(cp.name.as_str())
            .chain(nodes.iter().map(|n| n.name.as_str()))
            .collect();
        network.pin_neighbours(&pinned)?;
        let mut lab = Lab {
            cp,
            client,
            nodes,
            kubeconfig: opts
                .kubeconfig
                .clone()
                .unwrap_or_else(|| dir.join("kubeconfig")),
            bin_dir: opts.bin_dir.clone(),
            impersonate: opts.rbac_manifests.is_some(),
            dir,
            procs: vec![],
            control_plane: None,
            kubectl_bin: match &opts.real {
                Some(r) => r.kube.path("kubectl").to_string_lossy().into_owned(),
                None => "kubectl".to_owned(),
            },
            prefix: prefix.clone(),
            proxies: vec![],
            network,
        };
        if let Some(real) = &opts.real {
            if opts.kubeconfig.is_some() || opts.rbac_manifests.is_some() {
                bail!("a lab on a real control plane starts its own (no --kubeconfig, no --rbac)");
            }
            lab.check_pools(&opts.config)?;
            lab.real_cluster(real, &opts.config)?;
            return Ok(lab);
        }
        if opts.kubeconfig.is_none() {
            lab.start_api_server(opts.rbac_manifests.as_deref())?;
        } else if opts.rbac_manifests.is_some() {
            bail!("RBAC enforcement needs the lab's own test API server (no --kubeconfig)");
        }
        lab.check_pools(&opts.config)?;
        lab.register_cluster(&opts.config)?;
        lab.start_controller()?;
        for n in lab.nodes.clone() {
            lab.start_speaker(&n)?;
            let backend = lab.bin("ferrolb-lab");
            for (family, listen) in [
                ("4", format!("{}:8080", n.ip4)),
                ("6", format!("[{}]:8080", n.ip6)),
            ] {
                let what = format!("backend{family}-{}", n.name);
                lab.spawn(
                    &n.ns,
                    &what,
                    &[],
                    &backend,
                    &["backend", "--listen", &listen, "--name", &n.name],
                )?;
            }
        }
        Ok(lab)
    }

    /// The real control plane, a node agent and kube-proxy on every node,
    /// then ferrolb from the kustomization: `kubectl apply -k`, the
    /// membership Secret and the lab's config, as the README's install does.
    fn real_cluster(&mut self, real: &RealOptions, config: &Path) -> anyhow::Result<()> {
        use crate::kube::{ControlPlane, ControlPlaneOptions, DOC_SERVICE_CIDRS};
        use crate::nodenet::sysctl;
        let hosts: Vec<Host> = [self.cp.clone(), self.client.clone()]
            .into_iter()
            .chain(self.nodes.clone())
            .collect();
        for h in &hosts {
            run(
                "ip",
                &["-n", &h.ns, "route", "add", POD_NETWORK_V4, "dev", "eth0"],
            )?;
        }
        for n in &self.nodes {
            // Inside the node namespaces only: forward to Pods (on other
            // nodes, in the Pods' own namespaces), and no ICMP redirects to
            // the client (the DNAT target is on the same segment).
            for (k, v) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
            ] {
                sysctl(&n.ns, k, v)?;
            }
        }
        let mut cp = ControlPlane::start_with(
            real.kube.clone(),
            &self.dir,
            ControlPlaneOptions {
                netns: Some(self.cp.ns.clone()),
                address: Some(std::net::IpAddr::V4(self.cp.ip4)),
                service_cidrs: Some(DOC_SERVICE_CIDRS.to_owned()),
                audit: true,
            },
        )?;
        cp.keep_dir();
        self.kubeconfig = cp.kubeconfig.clone();
        let proxy_kubeconfig = cp.proxy_kubeconfig.clone();
        self.control_plane = Some(cp);

        // The images of the rendered manifests run as processes from bin_dir
        // (or MetalLB's from the peers' directory).
        let (manifests, images) = match &real.system {
            System::Ferrolb => {
                let manifests = real.manifests.to_string_lossy().into_owned();
                let rendered = run(&self.kubectl_bin, &["kustomize", &manifests])
                    .with_context(|| format!("rendering {manifests}"))?;
                let mut images: Vec<String> = rendered
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("image: "))
                    .map(|i| crate::podexec::image_name(i.trim_matches('"')).to_owned())
                    .collect();
                images.sort();
                images.dedup();
                let bin_dir = self.bin_dir.to_string_lossy().into_owned();
                let images: Vec<String> = images.iter().map(|i| format!("{i}={bin_dir}")).collect();
                (manifests, images)
            }
            System::Metallb { bin } => {
                let dir = self.dir.join("metallb");
                std::fs::create_dir_all(&dir)?;
                std::fs::copy(
                    bin.join("metallb-native.yaml"),
                    dir.join("metallb-native.yaml"),
                )
                .with_context(|| {
                    format!(
                        "no metallb-native.yaml in {} (scripts/build-peers.sh)",
                        bin.display()
                    )
                })?;
                std::fs::write(dir.join("kustomization.yaml"), METALLB_KUSTOMIZATION)?;
                let images = METALLB_IMAGES
                    .iter()
                    .map(|(image, entry)| format!("{image}={}@{entry}", bin.display()))
                    .collect();
                (dir.to_string_lossy().into_owned(), images)
            }
        };
        let agent = self.bin("ferrolb-node-agent");
        let blocks = pod_blocks(self.nodes.len());
        for (i, n) in self.nodes.clone().iter().enumerate() {
            let state = self.dir.join(format!("pods-{}", n.name));
            std::fs::create_dir_all(&state)?;
            let v6 = format!("2001:db8::1:{:x}:0/112", i + 1);
            let mut args: Vec<String> = [
                "run",
                "--node",
                &n.name,
                "--kubeconfig",
                &self.kubeconfig.to_string_lossy(),
                "--internal-ip",
                &n.ip4.to_string(),
                "--internal-ip",
                &n.ip6.to_string(),
                "--pod-range",
                &blocks[i],
                "--pod-range",
                &v6,
                "--pod-netns-prefix",
                &format!("{}-pod", self.prefix),
                "--state-dir",
                &state.to_string_lossy(),
            ]
            .map(str::to_owned)
            .to_vec();
            for image in &images {
                args.push("--run-image".into());
                args.push(image.clone());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.spawn(
                &n.ns,
                &format!("agent-{}", n.name),
                &[("RUST_LOG", "info")],
                &agent,
                &args,
            )?;
        }
        let nodes = self.nodes.len();
        eventually(
            "every Node registered and Ready",
            Duration::from_secs(60),
            || {
                let out = self
                .kubectl(&["get", "nodes", "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"])
                .ok()?;
                (out.lines().filter(|l| *l == "True").count() == nodes).then_some(())
            },
        )?;
        for n in self.nodes.clone() {
            let proxy = crate::kubeproxy::KubeProxy {
                node: n.name.clone(),
                address: std::net::IpAddr::V4(n.ip4),
                kubeconfig: proxy_kubeconfig.clone(),
                mode: real.proxy_mode,
            };
            let program = proxy.program(&real.kube.dir)?;
            self.proxies.push((
                n.name.clone(),
                program.to_string_lossy().into_owned(),
                proxy.args(),
            ));
            self.start_kube_proxy(&n.name)?;
        }

        // The system, as its install guide deploys it.
        let (namespace, selector) = match real.system {
            System::Ferrolb => {
                // ferrolb, as the README installs it.
                self.kubectl(&["apply", "-k", &manifests])?;
                let mut key = [0u8; 32];
                std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)
                    .context("reading /dev/urandom")?;
                use base64::Engine as _;
                self.kubectl(&[
                    "-n",
                    "ferrolb-system",
                    "create",
                    "secret",
                    "generic",
                    "ferrolb-memberlist",
                    &format!(
                        "--from-literal=secretkey={}",
                        base64::engine::general_purpose::STANDARD.encode(key)
                    ),
                ])?;
                ("ferrolb-system", "app.kubernetes.io/component")
            }
            System::Metallb { .. } => {
                // The manifest holds the CRDs and objects of those kinds:
                // applied again until every kind is served. Server-side, as
                // MetalLB's CRDs are too large for the last-applied annotation.
                eventually(
                    "MetalLB's manifest applied",
                    Duration::from_secs(60),
                    || {
                        self.kubectl(&["apply", "--server-side", "-k", &manifests])
                            .ok()
                    },
                )?;
                ("metallb-system", "app=metallb,component")
            }
        };
        // The config may be objects of kinds the kustomization just defined
        // (MetalLB's CRDs): applied once they are served.
        eventually("the lab's config applied", Duration::from_secs(60), || {
            self.kubectl(&["apply", "-f", &config.to_string_lossy()])
                .ok()
        })?;
        eventually(
            &format!("a ready speaker on every node and a ready controller in {namespace}"),
            Duration::from_secs(180),
            || {
                let ready = |component: &str| -> Option<usize> {
                    let out = self
                        .kubectl(&[
                            "get", "pods", "-n", namespace, "-l",
                            &format!("{selector}={component}"),
                            "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                        ])
                        .ok()?;
                    Some(out.lines().filter(|l| *l == "True").count())
                };
                (ready("speaker")? == nodes && ready("controller")? >= 1).then_some(())
            },
        )?;
        Ok(())
    }

    fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).to_string_lossy().into_owned()
    }

    fn start_api_server(&mut self, rbac: Option<&Path>) -> anyhow::Result<()> {
        let listen = format!("{}:6443", self.cp.ip4);
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&self.kubeconfig);
        let cp_ns = self.cp.ns.clone();
        let program = self.bin("ferrolb-test-apiserver");
        let mut args = vec![
            "--listen".to_owned(),
            listen,
            "--kubeconfig-out".to_owned(),
            kubeconfig,
        ];
        if let Some(dir) = rbac {
            for f in ["controller-rbac.yaml", "speaker-rbac.yaml"] {
                args.push("--enforce-rbac".to_owned());
                args.push(dir.join(f).to_string_lossy().into_owned());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(&cp_ns, "apiserver", &[], &program, &args)?;
        eventually("the test API server", Duration::from_secs(20), || {
            (self.kubeconfig.exists() && self.kubectl(&["get", "namespaces"]).is_ok()).then_some(())
        })
    }

    /// Nodes, speaker Pods, the membership Secret and the config, as a real
    /// cluster would have them.
    /// Refuses a config whose pools contain the segment's own addresses (the
    /// network address, the control plane, the nodes, the client): the lab
    /// would hand them out and break itself.
    fn check_pools(&self, config: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        // A ConfigMap, or MetalLB's objects (the `crds` config source).
        let parsed = if ferrolb_core::crd::looks_like_crds(&text) {
            let p = ferrolb_core::crd::parse(&text);
            let list: Vec<String> = p.errors().map(ToString::to_string).collect();
            p.config.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is not a valid config: {}",
                    config.display(),
                    list.join("; ")
                )
            })?
        } else {
            let doc = ferrolb_core::config::extract_config_document(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            ferrolb_core::config::parse(&doc).map_err(|errors| {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::anyhow!(
                    "{} is not a valid config: {}",
                    config.display(),
                    list.join("; ")
                )
            })?
        };
        let taken = [self.cp.clone(), self.client.clone()]
            .into_iter()
            .chain(self.nodes.clone())
            .flat_map(|h| [std::net::IpAddr::V4(h.ip4), std::net::IpAddr::V6(h.ip6)])
            .chain([
                std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)),
                "2001:db8::".parse().expect("valid"),
            ]);
        for ip in taken {
            if let Some((pi, _)) = parsed.locate(ip) {
                bail!(
                    "pool {:?} of {} contains {ip}, which the lab itself uses (192.0.2.0-127 and 2001:db8::-7f are the lab's hosts); use addresses from 192.0.2.200-254 or 2001:db8::200-2ff",
                    parsed.pools[pi].name,
                    config.display()
                );
            }
        }
        Ok(())
    }

    fn register_cluster(&self, config: &Path) -> anyhow::Result<()> {
        self.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ferrolb-system"}}))?;
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)
            .context("reading /dev/urandom")?;
        use base64::Engine as _;
        self.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "ferrolb-memberlist", "namespace": "ferrolb-system"},
            "data": {"secretkey": base64::engine::general_purpose::STANDARD.encode(key)}
        }))?;
        for n in &self.nodes {
            self.apply(&serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux"}}
            }))?;
            self.kubectl(&["patch", "node", &n.name, "--subresource=status", "--type=merge", "-p",
                &serde_json::json!({"status": {
                    "addresses": [{"type": "InternalIP", "address": n.ip4.to_string()}, {"type": "InternalIP", "address": n.ip6.to_string()}, {"type": "Hostname", "address": n.name}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "lab node"}]
                }}).to_string()])?;
            let pod = format!("ferrolb-speaker-{}", n.name);
            self.apply(&serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "ferrolb-system",
                             "labels": {"app.kubernetes.io/name": "ferrolb", "app.kubernetes.io/component": "speaker"}},
                "spec": {"nodeName": n.name, "hostNetwork": true, "containers": [{"name": "speaker", "image": "ferrolb"}]}
            }))?;
            self.kubectl(&["patch", "pod", &pod, "-n", "ferrolb-system", "--subresource=status", "--type=merge", "-p",
                &serde_json::json!({"status": {"phase": "Running", "hostIP": n.ip4.to_string(), "podIP": n.ip4.to_string(),
                    "podIPs": [{"ip": n.ip4.to_string()}, {"ip": n.ip6.to_string()}]}}).to_string()])?;
        }
        self.kubectl(&["apply", "-f", &config.to_string_lossy()])?;
        Ok(())
    }

    /// Starts (or starts again) the controller in the control-plane namespace.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let cp_ns = self.cp.ns.clone();
        let metrics = format!("{}:7472", self.cp.ip4);
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let program = self.bin("ferrolb-controller");
        // A short lease: a restarted controller need not wait 15 s for its predecessor's.
        let mut env = vec![("KUBECONFIG", kubeconfig.as_str())];
        if self.impersonate {
            env.push((
                "KUBE_RS_DEBUG_IMPERSONATE_USER",
                "system:serviceaccount:ferrolb-system:ferrolb-controller",
            ));
        }
        self.spawn(
            &cp_ns,
            "controller",
            &env,
            &program,
            &[
                "--config-namespace",
                "ferrolb-system",
                "--metrics-addr",
                &metrics,
                "--lease-duration",
                "3s",
                "--lease-renew-interval",
                "500ms",
            ],
        )
    }

    /// Replaces the Service's lab EndpointSlice: one ready endpoint on each of `nodes`.
    pub fn set_endpoints(&self, service: &str, nodes: &[&str]) -> anyhow::Result<()> {
        let endpoints: Vec<serde_json::Value> = nodes
            .iter()
            .map(|name| {
                let n = self.node(name).with_context(|| format!("no node {name}"))?;
                Ok(serde_json::json!({"addresses": [n.ip4.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": n.name}))
            })
            .collect::<anyhow::Result<_>>()?;
        self.apply(&serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-lab"), "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))?;
        Ok(())
    }

    pub fn start_speaker(&mut self, n: &Host) -> anyhow::Result<()> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let program = self.bin("ferrolb-speaker");
        // The speaker Pod `setup` registered for this node.
        let pod = format!("ferrolb-speaker-{}", n.name);
        let mut env = vec![
            ("KUBECONFIG", kubeconfig.as_str()),
            ("NODE_NAME", n.name.as_str()),
            ("POD_NAME", pod.as_str()),
            // No kube-proxy in this lab (a DNAT rule instead): no data-path check.
            ("FERROLB_KUBE_PROXY_HEALTH_URL", ""),
        ];
        if self.impersonate {
            env.push((
                "KUBE_RS_DEBUG_IMPERSONATE_USER",
                "system:serviceaccount:ferrolb-system:ferrolb-speaker",
            ));
        }
        self.spawn(
            &n.ns,
            &format!("speaker-{}", n.name),
            &env,
            &program,
            &[
                "--config-namespace",
                "ferrolb-system",
                "--metrics-addr",
                &format!("{}:7473", n.ip4),
            ],
        )
    }

    /// A speaker's /metrics text, read from inside its node; `None` if it
    /// does not answer (yet).
    /// The metrics of the leading controller (real control plane: the
    /// controller Pods, read from the client), if one leads.
    pub fn leader_metrics(&self) -> Option<String> {
        let ips = self
            .kubectl(&[
                "-n",
                "ferrolb-system",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=controller",
                "-o",
                "jsonpath={.items[*].status.podIP}",
            ])
            .ok()?;
        ips.split_whitespace().find_map(|pod_ip| {
            let text = self.exec_output(
                &self.client.ns,
                &[
                    "curl",
                    "-sf",
                    "--max-time",
                    "2",
                    &format!("http://{pod_ip}:7472/metrics"),
                ],
            );
            (metric(&text, "ferrolb_is_leader") == 1.0).then_some(text)
        })
    }

    pub fn speaker_metrics(&self, n: &Host) -> Option<String> {
        let text = self.exec_output(
            &n.ns,
            &[
                "curl",
                "-sf",
                "--max-time",
                "2",
                &format!("http://{}:7473/metrics", n.ip4),
            ],
        );
        (!text.is_empty()).then_some(text)
    }

    /// Starts a process inside a namespace; its output goes to `<dir>/<what>.log`.
    pub fn spawn(
        &mut self,
        ns: &str,
        what: &str,
        env: &[(&str, &str)],
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{what}.log")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .envs(env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A process started again under the same name replaces the old one.
        if let Some(i) = self.procs.iter().position(|p| p.what == what) {
            let mut old = self.procs.remove(i);
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        self.procs.push(Proc {
            what: what.to_owned(),
            child,
        });
        Ok(())
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the process started as `what`.
    pub fn signal(&mut self, what: &str, signal: &str) -> anyhow::Result<()> {
        let p = self
            .procs
            .iter()
            .find(|p| p.what == what)
            .with_context(|| format!("no process {what}"))?;
        run("kill", &[&format!("-{signal}"), &p.child.id().to_string()])?;
        Ok(())
    }

    /// The process ID of the process started as `what`, if it was started.
    pub fn pid(&self, what: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.what == what)
            .map(|p| p.child.id())
    }

    /// Waits for the process started as `what` to exit.
    pub fn wait_exit(&mut self, what: &str, limit: Duration) -> anyhow::Result<()> {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.what == what)
            .with_context(|| format!("no process {what}"))?;
        let deadline = Instant::now() + limit;
        while p.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{what} did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// `kubectl` against the lab's API server, from the control-plane namespace.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut full = vec![
            "netns",
            "exec",
            &self.cp.ns,
            &self.kubectl_bin,
            "--kubeconfig",
            &kubeconfig,
        ];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn apply(&self, obj: &serde_json::Value) -> anyhow::Result<String> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        run_with_input(
            "ip",
            &[
                "netns",
                "exec",
                &self.cp.ns,
                &self.kubectl_bin,
                "--kubeconfig",
                &kubeconfig,
                "apply",
                "-f",
                "-",
            ],
            Some(&obj.to_string()),
        )
    }

    /// A command inside a lab host's namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A LoadBalancer Service `name` in `default` with TCP port 80 → 8080, and an
    /// EndpointSlice with a ready endpoint on every node (each node's backend).
    pub fn create_service(&self, name: &str, extra_spec: serde_json::Value) -> anyhow::Result<()> {
        let mut svc = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        });
        if let serde_json::Value::Object(extra) = extra_spec {
            for (k, v) in extra {
                svc["spec"][k] = v;
            }
        }
        self.apply(&svc)?;
        let all: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        self.set_endpoints(name, &all)?;
        Ok(())
    }

    /// The Service's status addresses.
    pub fn external_ips(&self, name: &str) -> Vec<String> {
        self.kubectl(&[
            "get",
            "svc",
            name,
            "-n",
            "default",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ])
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
    }

    /// kube-proxy emulation: on every node, DNAT `address:port` to the node's own
    /// backend. Each call adds a rule; earlier ones stay.
    pub fn forward(&self, address: &str, port: u16) -> anyhow::Result<()> {
        self.forward_to(address, port, 8080)
    }

    /// kube-proxy emulation: on every node, DNAT `address:port` to `target_port`
    /// on the node's own address. Each call adds a rule; earlier ones stay.
    pub fn forward_to(&self, address: &str, port: u16, target_port: u16) -> anyhow::Result<()> {
        for n in &self.nodes {
            let (family, backend) = if address.contains(':') {
                ("ip6", format!("[{}]:{target_port}", n.ip6))
            } else {
                ("ip", format!("{}:{target_port}", n.ip4))
            };
            // `add` of an existing table or chain is a no-op, so this is idempotent.
            let rules = format!(
                "add table {family} ferrolb_lab\n\
                 add chain {family} ferrolb_lab prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
                 add rule {family} ferrolb_lab prerouting {family} daddr {address} tcp dport {port} dnat to {backend}\n"
            );
            run_with_input(
                "ip",
                &["netns", "exec", &n.ns, "nft", "-f", "-"],
                Some(&rules),
            )?;
        }
        Ok(())
    }

    /// A command inside a lab host's namespace; its output whatever its exit status.
    pub fn exec_output(&self, ns: &str, args: &[&str]) -> String {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The node whose MAC the client's neighbour table holds for `address`:
    /// the node that answered ARP/NDP for it last.
    pub fn owner(&self, address: &str) -> Option<String> {
        let mac = self.client_neighbour(address)?;
        self.node_by_mac(&mac).map(|n| n.name.clone())
    }

    /// Whether `count` requests from the client, 10 ms apart, were all answered.
    pub fn answered(&self, target: std::net::SocketAddr, count: u64) -> bool {
        self.client_requests(target, count)
            .iter()
            .all(Option::is_some)
    }

    /// The README's quickstart on the real control plane: Deployment `web`
    /// (3 lab-echo replicas) exposed as a LoadBalancer Service `web` on port
    /// 80, once it answers 20 requests in a row: its address and target.
    pub fn quickstart_web(&self) -> anyhow::Result<(String, std::net::SocketAddr)> {
        self.kubectl(&[
            "create",
            "deployment",
            "web",
            "--image=ferrolb.io/lab-echo",
            "--replicas=3",
        ])?;
        self.kubectl(&[
            "expose",
            "deployment",
            "web",
            "--type=LoadBalancer",
            "--port=80",
        ])?;
        let limit = Duration::from_secs(90);
        let ip = eventually("an EXTERNAL-IP for web", limit, || {
            self.external_ips("web").into_iter().next()
        })?;
        let target: std::net::SocketAddr = format!("{ip}:80").parse()?;
        eventually("20 answers in a row from web", limit, || {
            self.answered(target, 20).then_some(())
        })?;
        Ok((ip, target))
    }

    /// Runs `nft ARGS` (split on whitespace) in the namespace `ns`.
    pub fn nft(&self, ns: &str, args: &str) -> anyhow::Result<()> {
        let mut full = vec!["netns", "exec", ns, "nft"];
        full.extend(args.split_whitespace());
        run("ip", &full).map(drop)
    }

    /// The MAC the client's neighbour table holds for `address`, if any.
    pub fn client_neighbour(&self, address: &str) -> Option<String> {
        let out = self
            .exec(&self.client.ns, &["ip", "neigh", "show", address])
            .ok()?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_owned);
            }
        }
        None
    }

    pub fn node_by_mac(&self, mac: &str) -> Option<&Host> {
        self.nodes.iter().find(|n| n.mac.eq_ignore_ascii_case(mac))
    }

    pub fn node(&self, name: &str) -> Option<&Host> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// `count` HTTP requests from the client to `target`, 10 ms apart
    /// (`ferrolb-lab probe`, 500 ms timeout): each answer's body, or `None`.
    pub fn client_requests(&self, target: std::net::SocketAddr, count: u64) -> Vec<Option<String>> {
        let out = self.exec_output(
            &self.client.ns,
            &[
                &self.bin("ferrolb-lab"),
                "probe",
                "--target",
                &target.to_string(),
                "--timeout-ms",
                "500",
                "--interval-ms",
                "10",
                "--duration-ms",
                &(count * 10).to_string(),
            ],
        );
        out.lines()
            .map(|l| l.split_once(" ok ").map(|(_, n)| n.to_owned()))
            .collect()
    }

    /// A prober in the client: an HTTP request to `target` every 10 ms (100 ms
    /// timeout) until [`Prober::stop`]; returns once it has had an answer.
    pub fn start_prober(&self, target: std::net::SocketAddr) -> anyhow::Result<Prober> {
        self.start_prober_timeout(target, Duration::from_millis(100))
    }

    /// A prober that starts a request every `every` without waiting for
    /// the one before (each times out after `timeout`): a gap is measured
    /// to about `every`.
    pub fn start_prober_parallel(
        &self,
        target: std::net::SocketAddr,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Prober> {
        self.start_prober_args(target, every, timeout, true)
    }

    /// [`Lab::start_prober`] with another timeout per request. The requests
    /// are sequential, so a gap is measured to about the timeout plus the
    /// interval: a short timeout measures an outage more finely.
    pub fn start_prober_timeout(
        &self,
        target: std::net::SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Prober> {
        self.start_prober_args(target, Duration::from_millis(10), timeout, false)
    }

    fn start_prober_args(
        &self,
        target: std::net::SocketAddr,
        every: Duration,
        timeout: Duration,
        parallel: bool,
    ) -> anyhow::Result<Prober> {
        let timeout_ms = timeout.as_millis().to_string();
        let every_ms = every.as_millis().to_string();
        let started = Instant::now();
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client.ns,
                &self.bin("ferrolb-lab"),
                "probe",
            ])
            .args([
                "--target",
                &target.to_string(),
                "--interval-ms",
                &every_ms,
                "--timeout-ms",
                &timeout_ms,
                "--duration-ms",
                "600000",
            ])
            .args(parallel.then_some("--parallel"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the prober")?;
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stdout = child.stdout.take().context("the prober's stdout")?;
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut o) = sink.lock() {
                    o.push_str(&line);
                    o.push('\n');
                }
            }
        });
        let prober = Prober {
            child,
            out,
            reader: Some(reader),
            started,
        };
        // Its own first answer: an event after this is inside what it saw.
        eventually("the prober's first answer", Duration::from_secs(60), || {
            prober
                .out
                .lock()
                .ok()
                .filter(|o| o.contains(" ok "))
                .map(drop)
        })?;
        Ok(prober)
    }

    /// The MACs that answer `arping` for `ip` from the client (`count`
    /// probes), sorted, each once.
    pub fn arp_answerers(&self, ip: &str, count: u32) -> Vec<String> {
        // arping exits 1 when fewer replies than -c came before -w: read its output anyway.
        let deadline = (count + 2).to_string();
        let out = self.exec_output(
            &self.client.ns,
            &[
                "arping",
                "-c",
                &count.to_string(),
                "-w",
                &deadline,
                "-I",
                "eth0",
                ip,
            ],
        );
        let mut macs: Vec<String> = out
            .lines()
            .filter_map(|l| {
                l.split('[')
                    .nth(1)
                    .and_then(|r| r.split(']').next())
                    .map(|m| m.to_ascii_lowercase())
            })
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }

    /// The processes in a lab namespace whose command name is `comm`
    /// (e.g. the speaker the node agent started).
    pub fn pids_in(&self, ns: &str, comm: &str) -> Vec<u32> {
        run("ip", &["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() == comm)
            })
            .collect()
    }

    /// Waits until `witness` counts every node alive, stops a speaker
    /// (SIGSTOP) until the witness counts it out (`ferrolb_members_alive`),
    /// then lets it run again: a stall
    /// longer than the membership timeout. Waits until the stalled speaker
    /// has counted the stall (`ferrolb_membership_stalls_total`).
    pub fn stall_speaker(&self, pid: u32, node: &Host, witness: &Host) -> anyhow::Result<()> {
        let alive = |h: &Host| {
            self.speaker_metrics(h)
                .map(|m| metric(&m, "ferrolb_members_alive"))
        };
        // Every node counted first (a restarted or re-admitted speaker may
        // not be yet: joining, hold-down).
        let all = self.nodes.len() as f64;
        let before = eventually(
            "every node counted by the witness",
            Duration::from_secs(60),
            || alive(witness).filter(|a| *a == all),
        )?;
        let stalls = |h: &Host| {
            self.speaker_metrics(h)
                .map(|m| metric(&m, "ferrolb_membership_stalls_total"))
        };
        let stalls_before =
            eventually("the speaker's stall count", Duration::from_secs(30), || {
                stalls(node)
            })?;
        run("kill", &["-STOP", &pid.to_string()])?;
        let counted_out = eventually(
            "the stopped speaker counted out",
            Duration::from_secs(30),
            || alive(witness).filter(|a| *a < before).map(|_| ()),
        );
        run("kill", &["-CONT", &pid.to_string()])?;
        counted_out?;
        eventually(
            "the speaker noticing its stall",
            Duration::from_secs(30),
            || stalls(node).filter(|s| *s > stalls_before).map(|_| ()),
        )
    }

    /// Starts (again) the node's kube-proxy, started as `kube-proxy-<node>`
    /// (a lab on a real control plane only).
    pub fn start_kube_proxy(&mut self, node: &str) -> anyhow::Result<()> {
        let (_, program, args) = self
            .proxies
            .iter()
            .find(|p| p.0 == node)
            .cloned()
            .with_context(|| format!("no kube-proxy for {node}"))?;
        let ns = self.node(node).context("no such node")?.ns.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(&ns, &format!("kube-proxy-{node}"), &[], &program, &args)
    }

    /// Pulls the node's cable: its port on the switch goes down (the node's
    /// `eth0` loses its carrier but keeps its addresses and routes).
    pub fn unplug(&self, node: &str) -> anyhow::Result<()> {
        self.set_port(node, false)
    }

    /// Plugs the node's cable back in ([`Lab::unplug`]).
    pub fn plug(&self, node: &str) -> anyhow::Result<()> {
        self.set_port(node, true)
    }

    fn set_port(&self, node: &str, up: bool) -> anyhow::Result<()> {
        self.node(node).with_context(|| format!("no node {node}"))?;
        self.network.set_port(node, up)
    }

    /// Takes `eth0` of a node down: its link is cut.
    pub fn cut_link(&self, node: &str) -> anyhow::Result<()> {
        let n = self.node(node).with_context(|| format!("no node {node}"))?;
        self.exec(&n.ns, &["ip", "link", "set", "eth0", "down"])?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(mut cp) = self.control_plane.take() {
            cp.keep_dir();
            cp.stop();
        }
        // The Pods' own namespaces, made by the node agents.
        if let Ok(list) = run("ip", &["netns", "list"]) {
            let pods = format!("{}-pod-", self.prefix);
            for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if name.starts_with(&pods) {
                    // Their processes die with their agent; this is for any
                    // that did not (a namespace outlives no process in it).
                    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                        for pid in pids.split_whitespace() {
                            let _ = run("kill", &["-KILL", pid]);
                        }
                    }
                    let _ = run("ip", &["netns", "del", name]);
                }
            }
        }
        // The lab's own namespaces go when `network` is dropped, after this.
    }
}

/// Each node's IPv4 Pod block in [`POD_NETWORK_V4`]: the /24 split into the
/// largest equal power-of-two blocks, at most 32 addresses each (pure).
pub fn pod_blocks(nodes: usize) -> Vec<String> {
    let per = (256 / nodes.max(1)).clamp(1, 32);
    let size = 1usize << (usize::BITS - 1 - per.leading_zeros());
    let prefix = 32 - size.trailing_zeros();
    (0..nodes)
        .map(|i| format!("203.0.113.{}/{prefix}", i * size))
        .collect()
}

/// The median, the 99th percentile (nearest rank) and the largest of `v`
/// (zeros when it is empty): the benchmarks' summary of trials.
pub fn stats(v: &[u64]) -> (u64, u64, u64) {
    let mut v = v.to_vec();
    v.sort_unstable();
    let Some(&max) = v.last() else {
        return (0, 0, 0);
    };
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), max)
}

/// The sum of a metric's samples in Prometheus text (lines `name value` or
/// `name{...} value`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
