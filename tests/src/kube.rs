//! A real Kubernetes control plane for the tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from the pinned Go
//! modules in `tests/kube/` by `scripts/build-kube.sh` and run here as child
//! processes on loopback ports (see docs/kube-binaries.md).
//!
//! Nothing here touches the machine's network: every component listens on
//! 127.0.0.1, and the Service ranges are only the API server's own allocation
//! ranges (no address or route is created for them). The processes die with
//! the process that started them (`PR_SET_PDEATHSIG`) and are killed on drop.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The environment variable naming the directory with the built binaries
/// (the last line `scripts/build-kube.sh` prints).
pub const KUBE_BIN_ENV: &str = "FERROLB_KUBE_BIN";

/// The Service ranges of the test control plane (dual-stack). They are only
/// allocation ranges inside the API server: no component that programs the
/// network runs against the test control plane.
pub const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:10:96::/108";

/// Service ranges from the documentation ranges, for a control plane whose
/// Services kube-proxy programs inside test namespaces
/// ([`ControlPlaneOptions::service_cidrs`]).
pub const DOC_SERVICE_CIDRS: &str = "198.51.100.0/24,2001:db8:96::/108";

/// The controllers kube-controller-manager runs: what Deployments, DaemonSets,
/// EndpointSlices, namespaces and ServiceAccounts need, and the node
/// lifecycle (a Node whose heartbeats stop turns NotReady after the
/// node-monitor grace period, 50 s, and its Pods stop being ready
/// endpoints; the lab's node agents send the heartbeats); nothing that needs
/// a cloud.
pub const CONTROLLERS: &str = "endpointslice,endpointslicemirroring,namespace,garbagecollector,replicaset,deployment,daemonset,serviceaccount,serviceaccount-token,root-ca-cert-publisher,podgc,nodelifecycle";

/// The identities the static token file knows (token, user, groups).
const USERS: &[(&str, &str, &str)] = &[
    ("admin", "ferrolb-admin", "system:masters"),
    ("kcm", "system:kube-controller-manager", ""),
    ("scheduler", "system:kube-scheduler", ""),
    ("proxy", "system:kube-proxy", ""),
];

/// Where and how the control plane runs; the default is loopback in the
/// caller's network namespace.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// Run every component in this network namespace (`ip netns exec`),
    /// and kubectl too: etcd stays on that namespace's loopback.
    pub netns: Option<String>,
    /// The API server's bind and advertise address (an address of `netns`);
    /// default 127.0.0.1, advertising 192.0.2.1.
    pub address: Option<std::net::IpAddr>,
    /// The Service ranges; default [`SERVICE_CIDRS`].
    pub service_cidrs: Option<String>,
    /// Audit (at the Metadata level) every request of the ServiceAccounts of
    /// `ferrolb-system` (and of `metallb-system`, for the peer benchmark) to
    /// [`ControlPlane::audit_log`]: who asked for what,
    /// and what the RBAC authorizer answered.
    pub audit: bool,
}

/// The audit policy of [`ControlPlaneOptions::audit`].
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: [\"system:serviceaccounts:ferrolb-system\", \"system:serviceaccounts:metallb-system\"]
- level: None
";

/// The control plane's binaries.
#[derive(Clone, Debug)]
pub struct KubeBinaries {
    pub dir: PathBuf,
}

impl KubeBinaries {
    /// From `FERROLB_KUBE_BIN`; `None` when it is unset or empty.
    pub fn from_env() -> Option<anyhow::Result<KubeBinaries>> {
        let dir = std::env::var_os(KUBE_BIN_ENV).filter(|v| !v.is_empty())?;
        Some(KubeBinaries::at(Path::new(&dir)))
    }

    /// The binaries in `dir`, checked to be there.
    pub fn at(dir: &Path) -> anyhow::Result<KubeBinaries> {
        for name in Self::NAMES {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} is missing: run scripts/build-kube.sh and set {KUBE_BIN_ENV} to the directory it prints",
                    p.display()
                );
            }
        }
        Ok(KubeBinaries {
            dir: dir.to_path_buf(),
        })
    }

    pub const NAMES: [&'static str; 6] = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "kubectl",
    ];

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running control plane. Dropping it stops every process.
pub struct ControlPlane {
    pub bins: KubeBinaries,
    /// Work directory: data, certificates, kubeconfigs and logs.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// An admin kubeconfig (system:masters), for tests and kubectl.
    pub kubeconfig: PathBuf,
    /// The admin bearer token.
    pub token: String,
    /// A kubeconfig for `system:kube-proxy` (bound to system:node-proxier).
    pub proxy_kubeconfig: PathBuf,
    /// Whether `dir` is removed on drop.
    remove_dir: bool,
    opts: ControlPlaneOptions,
    procs: Vec<(&'static str, Child)>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A kubeconfig for `url` with a bearer token, trusting `ca_pem` (the
/// self-signed certificate and CA the API server made for itself).
pub fn kubeconfig_text(url: &str, ca_pem: &[u8], token: &str, user: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrolb-test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: ferrolb-test\n  context:\n    cluster: ferrolb-test\n    user: {user}\ncurrent-context: ferrolb-test\n"
    )
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and
    /// kube-scheduler in a fresh directory under `parent` and waits until the
    /// API server is ready and the `default` ServiceAccount exists.
    pub fn start(bins: KubeBinaries, parent: &Path) -> anyhow::Result<ControlPlane> {
        Self::start_with(bins, parent, ControlPlaneOptions::default())
    }

    /// [`ControlPlane::start`] with options (a network namespace, an address).
    pub fn start_with(
        bins: KubeBinaries,
        parent: &Path,
        opts: ControlPlaneOptions,
    ) -> anyhow::Result<ControlPlane> {
        fs::create_dir_all(parent)?;
        let dir = parent.join(format!(
            "control-plane-{}-{}",
            std::process::id(),
            random_token()
        ));
        fs::create_dir_all(&dir)?;
        let mut cp = ControlPlane {
            bins,
            url: String::new(),
            kubeconfig: dir.join("admin.kubeconfig"),
            proxy_kubeconfig: dir.join("proxy.kubeconfig"),
            token: String::new(),
            remove_dir: true,
            opts,
            procs: Vec::new(),
            dir,
        };
        cp.boot().inspect_err(|_| cp.keep_dir())?;
        Ok(cp)
    }

    /// The audit log ([`ControlPlaneOptions::audit`]): one JSON event per line.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Keeps the work directory (logs) after drop.
    pub fn keep_dir(&mut self) {
        self.remove_dir = false;
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = self.command(&self.bins.path(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child dies with its parent
        // so that no component outlives a killed test run.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bins.path(name).display()))?;
        self.procs.push((name, child));
        Ok(())
    }

    /// `program`, in the control plane's network namespace if it has one.
    fn command(&self, program: &Path) -> Command {
        match &self.opts.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Fails with the component's log tail if one of the processes exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.procs {
            if let Some(status) = child.try_wait()? {
                let log =
                    fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{name} exited ({status}):\n{}", tail.join("\n"));
            }
        }
        Ok(())
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        let d = self.dir.clone();
        let path = |p: &str| d.join(p).display().to_string();

        // The ServiceAccount key: one EC key signs and verifies tokens.
        let sa_key = path("sa.key");
        let out = Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &sa_key,
            ])
            .output()
            .context("running openssl (install it: apt-get install openssl)")?;
        if !out.status.success() {
            bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
        }

        // Static tokens for the admin and the two components.
        let mut tokens = String::new();
        let mut token_of = std::collections::BTreeMap::new();
        for (who, user, groups) in USERS {
            let t = random_token();
            let _ = writeln!(tokens, "{t},{user},{user},\"{groups}\"");
            token_of.insert(*who, t);
        }
        fs::write(d.join("tokens.csv"), tokens)?;
        self.token = token_of["admin"].clone();

        // etcd.
        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        self.spawn(
            "etcd",
            &[
                format!("--data-dir={}", path("etcd")),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync".into(),
            ],
        )?;

        // kube-apiserver.
        let port = free_port()?;
        let (bind, advertise) = match self.opts.address {
            Some(a) => (a.to_string(), a.to_string()),
            None => ("127.0.0.1".to_owned(), "192.0.2.1".to_owned()),
        };
        self.url = match self.opts.address {
            Some(std::net::IpAddr::V6(a)) => format!("https://[{a}]:{port}"),
            _ => format!("https://{bind}:{port}"),
        };
        let service_cidrs = self
            .opts
            .service_cidrs
            .clone()
            .unwrap_or_else(|| SERVICE_CIDRS.to_owned());
        let audit: Vec<String> = if self.opts.audit {
            fs::write(d.join("audit-policy.yaml"), AUDIT_POLICY)?;
            vec![
                format!("--audit-policy-file={}", path("audit-policy.yaml")),
                format!("--audit-log-path={}", self.audit_log().display()),
                "--audit-log-format=json".into(),
                "--audit-log-mode=blocking".into(),
            ]
        } else {
            vec![]
        };
        self.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                format!("--bind-address={bind}"),
                format!("--secure-port={port}"),
                // Published only in the `kubernetes` Service's endpoints, which
                // nothing here reconciles; it must not be a loopback address.
                format!("--advertise-address={advertise}"),
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", path("apiserver-certs")),
                format!("--service-cluster-ip-range={service_cidrs}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={sa_key}"),
                format!("--service-account-signing-key-file={sa_key}"),
                format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
            ]
            .into_iter()
            .chain(audit)
            .collect::<Vec<String>>(),
        )?;
        // The API server writes its self-signed certificate (and CA) first.
        let ca_path = d.join("apiserver-certs/apiserver.crt");
        self.wait_for(
            Duration::from_secs(120),
            "the API server's certificate",
            |_| {
                fs::read_to_string(&ca_path)
                    .is_ok_and(|c| c.matches("END CERTIFICATE").count() >= 2)
            },
        )?;
        let ca = fs::read(&ca_path)?;
        fs::write(
            &self.kubeconfig,
            kubeconfig_text(&self.url, &ca, &self.token, "ferrolb-admin"),
        )?;
        for (who, user) in [
            ("kcm", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
            ("proxy", "system:kube-proxy"),
        ] {
            fs::write(
                d.join(format!("{who}.kubeconfig")),
                kubeconfig_text(&self.url, &ca, &token_of[who], user),
            )?;
        }
        self.wait_ready(Duration::from_secs(120))?;

        self.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", path("kcm.kubeconfig")),
                format!("--authentication-kubeconfig={}", path("kcm.kubeconfig")),
                format!("--authorization-kubeconfig={}", path("kcm.kubeconfig")),
                format!("--controllers={CONTROLLERS}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                format!("--service-account-private-key-file={sa_key}"),
                format!("--root-ca-file={}", path("apiserver-certs/apiserver.crt")),
                "--concurrent-service-endpoint-syncs=10".into(),
                // Each controller as its own ServiceAccount, as in a real
                // cluster: the kcm's user alone may not write ReplicaSets,
                // Pods or EndpointSlices.
                "--use-service-account-credentials".into(),
            ],
        )?;
        self.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={}", path("scheduler.kubeconfig")),
                format!(
                    "--authentication-kubeconfig={}",
                    path("scheduler.kubeconfig")
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    path("scheduler.kubeconfig")
                ),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
            ],
        )?;
        // The ServiceAccount controller makes `default` in each namespace;
        // Pods cannot be created before it has.
        self.wait_for(
            Duration::from_secs(120),
            "the default ServiceAccount",
            |cp| {
                cp.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    "default",
                    "-o",
                    "name",
                ])
                .is_ok()
            },
        )?;
        Ok(())
    }

    fn wait_for(
        &mut self,
        max: Duration,
        what: &str,
        mut ok: impl FnMut(&mut ControlPlane) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + max;
        loop {
            self.check_alive()?;
            if ok(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} not ready after {max:?}; logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_ready(&mut self, max: Duration) -> anyhow::Result<()> {
        self.wait_for(max, "kube-apiserver /readyz", |cp| {
            cp.kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.trim() == "ok")
        })
    }

    /// Runs the built kubectl against this control plane; stdout on success.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(&self.bins.path("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops every process (also done on drop).
    pub fn stop(&mut self) {
        // The reverse of the start order: clients first, etcd last.
        while let Some((_, mut child)) = self.procs.pop() {
            // SIGTERM first: etcd and the API server shut down cleanly. Not
            // to a child already reaped (check_alive): its pid may be reused.
            if matches!(child.try_wait(), Ok(None)) {
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
