//! End-to-end harness: a cluster (the test API server, or a real one through
//! `FERROLB_E2E_KUBECONFIG`), a namespace of its own, the config ConfigMap, and
//! controller processes.
//!
//! Against a real cluster each test uses its own namespace and its own
//! `loadBalancerClass`, so tests neither see nor touch each other's Services.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferrolb_tests::e2e::TestCluster;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Harness {
    pub cluster: TestCluster,
    pub ns: String,
    /// Set against a real cluster: the class every test Service carries.
    pub class: Option<String>,
    /// Controllers are started with `--ignore-services-without-class`: set
    /// against a real cluster, where tests run side by side.
    pub ignore_unclassed: bool,
    controllers: Vec<Child>,
    /// Namespaces this harness created, deleted on drop against a real
    /// cluster (their Services hold node ports and addresses there).
    created: std::sync::Mutex<Vec<String>>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Harness {
    /// A cluster with a fresh namespace holding the ConfigMap `config` with `pools`.
    pub async fn new(pools: &str) -> Harness {
        let ns = format!(
            "e2e-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        Harness::in_namespace(&ns, pools).await
    }

    /// The same with the config in namespace `ns` (which may already exist).
    pub async fn in_namespace(ns: &str, pools: &str) -> Harness {
        let cluster = TestCluster::start().await.expect("a cluster");
        let real = cluster.server().is_none();
        let ns = ns.to_owned();
        let h = Harness {
            class: real.then(|| format!("ferrolb.io/{ns}")),
            ignore_unclassed: real,
            cluster,
            ns,
            controllers: vec![],
            created: Default::default(),
        };
        h.create_namespace(&h.ns).await;
        h.set_config(pools).await;
        h
    }

    pub fn client(&self) -> kube::Client {
        self.cluster.client.clone()
    }

    pub async fn create_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => self.created.lock().unwrap().push(name.to_owned()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {name}: {e}"),
        }
    }

    pub async fn set_config(&self, pools: &str) {
        let api: Api<ConfigMap> = Api::namespaced(self.client(), &self.ns);
        let cm = json!({"metadata": {"name": "config"}, "data": {"config": pools}});
        match api.get_opt("config").await.unwrap() {
            None => {
                api.create(&PostParams::default(), &serde_json::from_value(cm).unwrap())
                    .await
                    .unwrap();
            }
            Some(_) => {
                api.patch(
                    "config",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"data": {"config": pools}})),
                )
                .await
                .unwrap();
            }
        }
    }

    pub async fn delete_config(&self) {
        let api: Api<ConfigMap> = Api::namespaced(self.client(), &self.ns);
        api.delete("config", &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Starts a controller process watching this harness's config.
    pub fn start_controller(&mut self, extra: &[&str]) -> usize {
        self.start_controller_with_env(extra, &[])
    }

    pub fn start_controller_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"));
        cmd.envs(env.iter().copied());
        cmd.env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env_remove("POD_NAME")
            .args([
                "--config-namespace",
                &self.ns,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-level", "info"]);
        if !extra.contains(&"--lease-duration") {
            cmd.args(["--lease-duration", "2s", "--lease-renew-interval", "200ms"]);
        }
        cmd.stdout(Stdio::null())
            .stderr(if std::env::var_os("FERROLB_E2E_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        cmd.args([
            "--identity",
            &format!("controller-{}", self.controllers.len()),
        ]);
        if let Some(class) = &self.class {
            cmd.args(["--load-balancer-class", class]);
        }
        if self.ignore_unclassed {
            cmd.arg("--ignore-services-without-class");
        }
        cmd.args(extra);
        self.controllers
            .push(cmd.spawn().expect("the controller binary starts"));
        self.controllers.len() - 1
    }

    /// SIGKILLs controller `i`.
    pub fn kill_controller(&mut self, i: usize) {
        let _ = self.controllers[i].kill();
        let _ = self.controllers[i].wait();
    }

    /// Whether controller `i` is still running.
    pub fn controller_running(&mut self, i: usize) -> bool {
        matches!(self.controllers[i].try_wait(), Ok(None))
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client(), &self.ns)
    }

    /// A LoadBalancer Service `name` with TCP port 80, plus `extra` merged into it.
    pub async fn create_service(&self, name: &str, extra: Value) -> Service {
        self.create_service_in(&self.ns.clone(), name, extra).await
    }

    pub async fn create_service_in(&self, ns: &str, name: &str, extra: Value) -> Service {
        let mut svc = json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}}
        });
        if let Some(class) = &self.class {
            svc["spec"]["loadBalancerClass"] = json!(class);
        }
        merge(&mut svc, extra);
        let api: Api<Service> = Api::namespaced(self.client(), ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("creating Service {ns}/{name}: {e}"))
    }

    /// Creates a plain LoadBalancer Service; false if the API refused (an injected fault).
    pub async fn try_create_service(&self, name: &str) -> bool {
        let mut svc = json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
        });
        if let Some(class) = &self.class {
            svc["spec"]["loadBalancerClass"] = json!(class);
        }
        match self
            .services()
            .create(
                &PostParams::default(),
                &serde_json::from_value(svc).unwrap(),
            )
            .await
        {
            Ok(_) => true,
            // An earlier attempt that got through although its answer was lost.
            Err(kube::Error::Api(s)) if s.code == 409 => true,
            Err(_) => false,
        }
    }

    pub async fn patch_service(&self, name: &str, patch: Value) {
        self.services()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patching Service {name}: {e}"));
    }

    pub async fn delete_service(&self, name: &str) {
        self.services()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// The addresses in the Service's status.
    pub async fn ips(&self, name: &str) -> Vec<String> {
        self.ips_in(&self.ns.clone(), name).await
    }

    pub async fn ips_in(&self, ns: &str, name: &str) -> Vec<String> {
        let api: Api<Service> = Api::namespaced(self.client(), ns);
        match api.get_opt(name).await {
            Ok(Some(svc)) => status_ips(&svc),
            _ => vec![],
        }
    }

    /// Polls until the Service's status shows exactly `want`.
    pub async fn expect_ips(&self, name: &str, want: &[&str]) {
        let ns = self.ns.clone();
        self.expect_ips_in(&ns, name, want).await
    }

    pub async fn expect_ips_in(&self, ns: &str, name: &str, want: &[&str]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.ips_in(ns, name).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/{name}: status is {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Service's `metadata.finalizers` (`None`: the Service does not exist).
    pub async fn finalizers(&self, name: &str) -> Option<Vec<String>> {
        let svc = self.services().get_opt(name).await.unwrap()?;
        Some(svc.metadata.finalizers.unwrap_or_default())
    }

    /// Polls until the Service's finalizers are `want`, in any order (`None`:
    /// until it is gone).
    pub async fn expect_finalizers(&self, name: &str, want: Option<&[&str]>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.finalizers(name).await.map(|mut f| {
                f.sort();
                f
            });
            let mut expected = want.map(<[&str]>::to_vec);
            if let Some(e) = expected.as_mut() {
                e.sort();
            }
            if got
                .as_deref()
                .map(|f| f.iter().map(String::as_str).collect::<Vec<_>>())
                == expected
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}/{name}: finalizers are {got:?}, expected {want:?}",
                self.ns
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the Service has an Event with `reason` whose message contains `needle`.
    pub async fn expect_event(&self, object: &str, reason: &str, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.events_about(object).await;
            if let Some((_, msg)) = events
                .iter()
                .find(|(r, m)| r == reason && m.contains(needle))
            {
                return msg.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} event about {object} containing {needle:?}; events: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (reason, message) of every Event in the namespace about `object`.
    pub async fn events_about(&self, object: &str) -> Vec<(String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client(), &self.ns);
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Every Service in the namespace with its status addresses.
    pub async fn all_ips(&self) -> BTreeMap<String, Vec<String>> {
        let deadline = Instant::now() + DEADLINE;
        // Retried: under fault injection the test's own requests fail too.
        let list = loop {
            match self.services().list(&ListParams::default()).await {
                Ok(list) => break list,
                Err(e) => assert!(Instant::now() < deadline, "listing Services: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        list.items
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), status_ips(s)))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for c in &mut self.controllers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Against a real cluster, delete what the test made: a long-lived
        // control plane would otherwise run out of node ports. A thread with
        // its own runtime and client, since drop cannot await.
        let created = std::mem::take(&mut *self.created.lock().unwrap());
        if self.cluster.server().is_none() && !created.is_empty() {
            let path = self.cluster.kubeconfig_path().to_path_buf();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let Ok(cluster) = TestCluster::from_kubeconfig(&path).await else {
                        return;
                    };
                    // The controllers are gone: their finalizers would keep
                    // the Services, and so the namespaces, forever.
                    for ns in &created {
                        let _ = run_cli(&path, &["remove-finalizers", "--namespace", ns]);
                    }
                    let api: Api<Namespace> = Api::all(cluster.client.clone());
                    for ns in created {
                        let _ = api.delete(&ns, &DeleteParams::default()).await;
                    }
                });
            })
            .join();
        }
    }
}

/// Runs the controller binary with `args` (a subcommand) against the cluster
/// of `kubeconfig`; returns its exit status and standard output. Off the
/// test's thread: the test API server may run on it.
pub async fn run_cli_async(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let path = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&path, &args)
    })
    .await
    .unwrap()
}

/// The same, blocking.
pub fn run_cli(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("the controller binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// POSTs to the test API server's admin endpoint (fault injection).
pub async fn admin_post(base_url: &str, action: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("the test API server listens");
    let req = format!(
        "POST /admin/{action} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "admin {action}: {answer}"
    );
}

pub fn status_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

/// Asserts that no address is held by two Services that do not share a key.
pub fn assert_unique(all: &BTreeMap<String, Vec<String>>) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (svc, ips) in all {
        for ip in ips {
            assert!(
                ip.parse::<IpAddr>().is_ok(),
                "{svc}: {ip} is not an address"
            );
            if let Some(other) = seen.insert(ip, svc) {
                panic!("{ip} is held by both {other} and {svc}");
            }
        }
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}
