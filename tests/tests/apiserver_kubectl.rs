//! `kubectl` against the test API server, as a person would use it.
//!
//! These tests need `kubectl` on PATH (or its path in `FERROLB_KUBECTL`). Without it they fail
//! with a message saying so: CI installs it, and a silently skipped test proves nothing. They pass
//! with Debian 12's kubectl 1.20 (which validates against `/openapi/v2` before every create and
//! apply), kubectl 1.32 and the v1.36.3 built by `scripts/build-kube.sh`; `scripts/test.sh` runs
//! them with the kubectl on PATH and again with the built one.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use ferrolb_tests::TestApiServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

struct Kubectl {
    bin: String,
    kubeconfig: PathBuf,
    /// kubectl keeps its discovery cache under $HOME; each test gets its own.
    home: tempfile::TempDir,
    server: TestApiServer,
}

impl Kubectl {
    async fn start() -> Self {
        let bin = std::env::var("FERROLB_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let found = Command::new(&bin)
            .args(["version", "--client"])
            .output()
            .await;
        if !found.as_ref().is_ok_and(|o| o.status.success()) {
            panic!(
                "kubectl is required by these tests and `{bin} version --client` failed ({found:?}). \
                 Install kubectl (1.20 or later) or set FERROLB_KUBECTL to its path."
            );
        }
        let server = TestApiServer::start().await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl {
            bin,
            kubeconfig,
            home,
            server,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self.command(args).spawn().expect("kubectl starts");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap()
    }

    /// Runs kubectl, requires success, returns stdout.
    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None).await).unwrap()
    }
}

const CONFIGMAP: &str = "
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data:
  mode: one
";

const LB_SERVICE: &str = "
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_a_namespace_and_applies_a_configmap_twice() {
    let k = Kubectl::start().await;
    let out = k.ok(&["create", "namespace", "demo"], None).await;
    assert!(out.contains("namespace/demo created"), "{out}");
    assert!(k.ok(&["get", "namespaces"], None).await.contains("demo"));

    let out = k.ok(&["apply", "-f", "-"], Some(CONFIGMAP)).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let changed = CONFIGMAP.replace("mode: one", "mode: two\n  extra: \"yes\"");
    let out = k.ok(&["apply", "-f", "-"], Some(&changed)).await;
    assert!(out.contains("configmap/settings configured"), "{out}");
    let cm = k
        .json(&["get", "configmap", "settings", "-n", "demo"])
        .await;
    assert_eq!(
        cm["data"],
        serde_json::json!({"mode": "two", "extra": "yes"})
    );
    // Applying the same manifest again changes nothing.
    let out = k.ok(&["apply", "-f", "-"], Some(&changed)).await;
    assert!(out.contains("configmap/settings unchanged"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_and_applies_a_load_balancer_service_with_defaults() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "demo"], None).await;
    let out = k.ok(&["create", "-f", "-"], Some(LB_SERVICE)).await;
    assert!(out.contains("service/web created"), "{out}");
    let svc = k.json(&["get", "svc", "web", "-n", "demo"]).await;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.96."), "defaulted clusterIP: {ip}");
    assert_eq!(svc["spec"]["clusterIPs"][0], ip);
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!(
        (30000..=32767).contains(&node_port),
        "defaulted nodePort: {node_port}"
    );
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");

    // apply over a created Service: add a port; the first keeps its node port, the new one gets one.
    let more = format!("{LB_SERVICE}  - name: dns\n    port: 53\n    protocol: UDP\n");
    let out = k.ok(&["apply", "-f", "-"], Some(&more)).await;
    assert!(out.contains("service/web configured"), "{out}");
    let svc = k.json(&["get", "svc", "web", "-n", "demo"]).await;
    assert_eq!(svc["spec"]["clusterIP"], ip, "clusterIP kept");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0]["nodePort"].as_u64(), Some(node_port));
    assert!(
        ports[1]["nodePort"]
            .as_u64()
            .is_some_and(|p| p != node_port)
    );

    // kubectl's typed create (protobuf body) works too.
    let out = k
        .ok(
            &[
                "create",
                "service",
                "loadbalancer",
                "api",
                "--tcp=443:8443",
                "-n",
                "demo",
            ],
            None,
        )
        .await;
    assert!(out.contains("service/api created"), "{out}");
    let api = k.json(&["get", "svc", "api", "-n", "demo"]).await;
    assert_eq!(api["spec"]["type"], "LoadBalancer");
    assert!(api["spec"]["ports"][0]["nodePort"].as_u64().is_some());
    let described = k.ok(&["describe", "svc", "web", "-n", "demo"], None).await;
    assert!(
        described.contains("LoadBalancer") && described.contains(ip),
        "{described}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_status_patch_is_seen_by_get_watch_and_delete_removes() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "demo"], None).await;
    k.ok(&["create", "-f", "-"], Some(LB_SERVICE)).await;

    let mut watch = k
        .command(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-w",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}{\"\\n\"}",
        ])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });

    // `kubectl get -w NAME` prints a GET, then watches from resourceVersion 0 and skips that
    // watch's first (synthetic ADDED) event. A patch landing between the two would be folded into
    // the skipped event and never printed, on a real API server too; so patch only once the
    // watch is open.
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("kubectl get -w prints the current object")
        .expect("kubectl get -w keeps running");
    assert_eq!(first.trim(), "", "no status yet");
    let deadline = Instant::now() + Duration::from_secs(60);
    while k.server.open_watches() == 0 {
        assert!(
            Instant::now() < deadline,
            "kubectl get -w never opened a watch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let patch = r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10","ipMode":"VIP"}]}}}"#;
    let args = [
        "patch",
        "svc",
        "web",
        "-n",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    ];
    let out = k.run(&args, None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unknown flag: --subresource") {
        // kubectl before 1.24 cannot write a subresource: the controller's way, through kube-rs.
        let services: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(k.server.client().unwrap(), "demo");
        let patch: Value = serde_json::from_str(patch).unwrap();
        services
            .patch_status(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    } else {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl patch failed: {stderr}\n{stdout}"
        );
        assert!(stdout.contains("service/web patched"), "{stdout}");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("kubectl get -w prints the patched status")
            .expect("kubectl get -w keeps running");
        if line.trim() == "192.0.2.10" {
            break;
        }
    }
    watch.kill().await.unwrap();

    let svc = k.json(&["get", "svc", "web", "-n", "demo"]).await;
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.10"
    );
    let out = k.ok(&["delete", "svc", "web", "-n", "demo"], None).await;
    assert!(out.contains("service \"web\" deleted"), "{out}");
    let gone = k.run(&["get", "svc", "web", "-n", "demo"], None).await;
    assert!(!gone.status.success());
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        err.contains("NotFound") && err.contains("services \"web\" not found"),
        "{err}"
    );
    let out = k.ok(&["delete", "namespace", "demo"], None).await;
    assert!(out.contains("namespace \"demo\" deleted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_fails_loudly() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "demo"], None).await;
    let out = k
        .run(&["apply", "--server-side", "-f", "-"], Some(CONFIGMAP))
        .await;
    assert!(
        !out.status.success(),
        "server-side apply must not succeed silently"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server-side apply"), "{err}");
    assert!(
        !k.run(&["get", "cm", "settings", "-n", "demo"], None)
            .await
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_validates_manifests_and_explains_kinds() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "demo"], None).await;
    // Validation is on by default: kubectl before 1.25 checks the manifests against
    // /openapi/v2, later ones ask the server to (fieldValidation).
    let out = k
        .ok(&["apply", "--validate=true", "-f", "-"], Some(LB_SERVICE))
        .await;
    assert!(out.contains("service/web created"), "{out}");
    let out = k.ok(&["create", "-f", "-"], Some(CONFIGMAP)).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: demo, labels: {a: b}}\nstringData: {k: v}\n";
    let out = k.ok(&["apply", "-f", "-"], Some(secret)).await;
    assert!(out.contains("secret/s created"), "{out}");

    let out = k.ok(&["explain", "service.spec.ports"], None).await;
    assert!(
        out.contains("KIND:") && out.contains("Service") && out.contains("nodePort"),
        "{out}"
    );
    let out = k.ok(&["explain", "endpointslices"], None).await;
    assert!(out.contains("EndpointSlice"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_dry_run_changes_nothing() {
    let k = Kubectl::start().await;
    k.ok(&["create", "namespace", "demo"], None).await;
    let before = k.server.resource_version();
    let out = k
        .ok(
            &["create", "--dry-run=server", "-f", "-", "-o", "json"],
            Some(LB_SERVICE),
        )
        .await;
    let svc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(svc["metadata"]["name"], "web");
    assert!(svc["metadata"].get("resourceVersion").is_none(), "{svc}");
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.96.")),
        "a dry run defaults and allocates: {svc}"
    );
    assert!(
        !k.run(&["get", "svc", "web", "-n", "demo"], None)
            .await
            .status
            .success(),
        "a dry-run create stores nothing"
    );
    assert_eq!(k.server.resource_version(), before);

    k.ok(&["create", "-f", "-"], Some(CONFIGMAP)).await;
    let created = k.server.resource_version();
    let changed = CONFIGMAP.replace("mode: one", "mode: two");
    let out = k
        .ok(
            &["apply", "--dry-run=server", "-f", "-", "-o", "json"],
            Some(&changed),
        )
        .await;
    let cm: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cm["data"]["mode"], "two");
    let out = k
        .ok(
            &["delete", "--dry-run=server", "cm", "settings", "-n", "demo"],
            None,
        )
        .await;
    assert!(out.contains("server dry run"), "{out}");
    let cm = k.json(&["get", "cm", "settings", "-n", "demo"]).await;
    assert_eq!(cm["data"]["mode"], "one");
    assert_eq!(k.server.resource_version(), created);
    assert_eq!(
        cm["metadata"]["resourceVersion"].as_str(),
        Some(created.to_string().as_str())
    );
}
