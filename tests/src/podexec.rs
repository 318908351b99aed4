//! How the lab's node agent runs ferrolb's own Pods (the controller
//! Deployment and the speaker DaemonSet of `manifests/`) as processes: the
//! pure part (docs/lab-agent.md, "ferrolb's own Pods").
//!
//! A Pod whose every container uses a mapped image (`--run-image
//! ghcr.io/ferrolb/ferrolb=DIR`) runs each container's `command[0]` as
//! `DIR/<its file name>`, with the container's `args` and `env` as Kubernetes
//! resolves them (`value`, `fieldRef`, `$(VAR)` references), as the user of
//! its `securityContext`, and readiness from its `readinessProbe.httpGet`.
//! Whatever the agent cannot reproduce faithfully (`envFrom`, Secret or
//! ConfigMap references, exec probes, init containers) refuses the Pod with
//! a message rather than running something else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `IMAGE=DIR`: Pods with the image `IMAGE` (any tag or digest) run binaries from `DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMapping {
    pub image: String,
    pub dir: PathBuf,
}

impl std::str::FromStr for ImageMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (image, dir) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected IMAGE=DIR"))?;
        if image.is_empty() || dir.is_empty() {
            return Err(format!("{s:?}: expected IMAGE=DIR"));
        }
        Ok(ImageMapping {
            image: image_name(image).to_owned(),
            dir: PathBuf::from(dir),
        })
    }
}

/// The image reference without its tag or digest (`host:5000/a/b:1` → `host:5000/a/b`).
pub fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(i) => &image[..last_slash + i],
        None => image,
    }
}

/// The mapping whose image `image` is, if any.
pub fn mapping_for<'a>(images: &'a [ImageMapping], image: &str) -> Option<&'a ImageMapping> {
    let name = image_name(image);
    images.iter().find(|m| m.image == name)
}

/// An HTTP readiness probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub port: u16,
    pub path: String,
    pub period: Duration,
}

/// One container as a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The container's environment, resolved, in its order.
    pub env: Vec<(String, String)>,
    /// (uid, gid) from the security context; `None`: root.
    pub user: Option<(u32, u32)>,
    pub readiness: Option<HttpProbe>,
}

/// A Pod as processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPlan {
    pub host_network: bool,
    pub service_account: String,
    /// How long a stopping container gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub containers: Vec<ContainerPlan>,
}

/// Whether every container of the Pod uses a mapped image (then the agent
/// runs it or says why not).
pub fn is_exec_pod(pod: &Pod, images: &[ImageMapping]) -> bool {
    let Some(spec) = &pod.spec else { return false };
    !spec.containers.is_empty()
        && spec.containers.iter().all(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| mapping_for(images, i).is_some())
        })
}

/// Why the agent cannot run this Pod of mapped images ([`is_exec_pod`]), or
/// `None` if it can (pure).
pub fn refusal(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Some("the ferrolb lab node agent runs no init containers".into());
    }
    for c in &spec.containers {
        let name = &c.name;
        if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Some(format!(
                "container {name}: envFrom is not supported by the lab node agent"
            ));
        }
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                match &from.field_ref {
                    Some(f) if field_supported(&f.field_path) => {}
                    Some(f) => {
                        return Some(format!(
                            "container {name}: env {}: fieldRef {} is not supported by the lab node agent",
                            e.name, f.field_path
                        ));
                    }
                    None => {
                        return Some(format!(
                            "container {name}: env {}: only value and fieldRef are supported by the lab node agent",
                            e.name
                        ));
                    }
                }
            }
        }
        let Some(cmd) = c.command.as_ref().and_then(|c| c.first()) else {
            return Some(format!(
                "container {name}: no command (the lab node agent has no image entrypoints)"
            ));
        };
        if cmd.rsplit('/').next().is_none_or(str::is_empty) {
            return Some(format!("container {name}: command {cmd:?} names no file"));
        }
        if let Some(p) = &c.readiness_probe {
            if p.exec.is_some() || p.grpc.is_some() || p.tcp_socket.is_some() {
                return Some(format!(
                    "container {name}: only httpGet readiness probes are supported by the lab node agent"
                ));
            }
            if let Some(h) = &p.http_get
                && probe_port(c, &h.port).is_none()
            {
                return Some(format!(
                    "container {name}: readiness probe port {:?} is not a port of the container",
                    h.port
                ));
            }
        }
    }
    None
}

fn field_supported(path: &str) -> bool {
    matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.hostIP"
            | "status.hostIPs"
            | "status.podIP"
            | "status.podIPs"
    ) || label_key(path, "metadata.labels").is_some()
        || label_key(path, "metadata.annotations").is_some()
}

/// `metadata.labels['k']` → `k`.
fn label_key<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

fn probe_port(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A `fieldRef`'s value (pure).
fn field_value(pod: &Pod, path: &str, pod_ips: &[IpAddr], host_ips: &[IpAddr]) -> String {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let first = |ips: &[IpAddr]| ips.first().map(ToString::to_string).unwrap_or_default();
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" => first(host_ips),
        "status.hostIPs" => join_ips(host_ips),
        "status.podIP" => first(pod_ips),
        "status.podIPs" => join_ips(pod_ips),
        _ => {
            if let Some(k) = label_key(path, "metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = label_key(path, "metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        }
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a
/// literal `$`, anything else stays as written (pure).
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The processes for a Pod that [`refusal`] accepts, with its IPs known (pure).
pub fn plan(
    pod: &Pod,
    images: &[ImageMapping],
    pod_ips: &[IpAddr],
    host_ips: &[IpAddr],
) -> Result<ExecPlan, String> {
    if let Some(why) = refusal(pod) {
        return Err(why);
    }
    let spec = pod.spec.as_ref().ok_or("the Pod has no spec")?;
    let pod_sc = spec.security_context.as_ref();
    let mut containers = Vec::new();
    for c in &spec.containers {
        let image = c.image.as_deref().unwrap_or("");
        let mapping = mapping_for(images, image)
            .ok_or_else(|| format!("container {}: image {image} is not mapped", c.name))?;
        let command = c.command.clone().unwrap_or_default();
        let mut vars: HashMap<String, String> = HashMap::new();
        let mut env = Vec::new();
        for e in c.env.iter().flatten() {
            let value = match &e.value_from {
                Some(from) => {
                    let f = from.field_ref.as_ref().ok_or("unsupported env source")?;
                    field_value(pod, &f.field_path, pod_ips, host_ips)
                }
                None => expand(e.value.as_deref().unwrap_or(""), &vars),
            };
            vars.insert(e.name.clone(), value.clone());
            env.push((e.name.clone(), value));
        }
        let file = command[0].rsplit('/').next().unwrap_or_default();
        let args: Vec<String> = command[1..]
            .iter()
            .chain(c.args.iter().flatten())
            .map(|a| expand(a, &vars))
            .collect();
        let sc = c.security_context.as_ref();
        let uid = sc
            .and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user));
        let gid = sc
            .and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group));
        let user = match uid {
            None | Some(0) if gid.unwrap_or(0) == 0 => None,
            _ => Some((
                u32::try_from(uid.unwrap_or(0)).map_err(|_| "runAsUser out of range")?,
                u32::try_from(gid.unwrap_or(0)).map_err(|_| "runAsGroup out of range")?,
            )),
        };
        let readiness = match c.readiness_probe.as_ref().and_then(|p| {
            p.http_get
                .as_ref()
                .map(|h| (h, p.period_seconds.unwrap_or(10)))
        }) {
            Some((h, period)) => Some(HttpProbe {
                port: probe_port(c, &h.port).ok_or("readiness probe port")?,
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                period: Duration::from_secs(u64::try_from(period.max(1)).unwrap_or(10)),
            }),
            None => None,
        };
        containers.push(ContainerPlan {
            name: c.name.clone(),
            program: mapping.dir.join(file),
            args,
            env,
            user,
            readiness,
        });
    }
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or(spec.termination_grace_period_seconds)
        .unwrap_or(30);
    Ok(ExecPlan {
        host_network: spec.host_network == Some(true),
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        grace: Duration::from_secs(u64::try_from(grace.max(0)).unwrap_or(30)),
        containers,
    })
}

/// The name of a Pod's own network namespace and of the host end of its veth
/// (at most 15 characters), from the Pod's uid (pure).
pub fn pod_netns_names(prefix: &str, uid: &str) -> (String, String) {
    let short: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(10)
        .collect();
    (format!("{prefix}-{short}"), format!("fp{short}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn images() -> Vec<ImageMapping> {
        vec!["ghcr.io/ferrolb/ferrolb=/opt/bin".parse().unwrap()]
    }

    fn speaker() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "ferrolb-speaker-x1", "namespace": "ferrolb-system", "uid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                         "labels": {"app": "s"}},
            "spec": {"nodeName": "node-1", "hostNetwork": true, "serviceAccountName": "ferrolb-speaker",
                     "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "speaker", "image": "ghcr.io/ferrolb/ferrolb:0.1.0",
                        "command": ["/usr/local/bin/ferrolb-speaker"],
                        "args": ["--log-format=json", "--node=$(NODE_NAME)", "--literal=$$(NODE_NAME)", "--x=$(UNSET)"],
                        "env": [
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                            {"name": "GREETING", "value": "on $(NODE_NAME)"},
                        ],
                        "ports": [{"name": "monitoring", "containerPort": 7473}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "monitoring"}, "periodSeconds": 5},
                        "securityContext": {"runAsUser": 0}}]}
        }))
        .unwrap()
    }

    #[test]
    fn image_names() {
        assert_eq!(
            image_name("ghcr.io/ferrolb/ferrolb:0.1.0"),
            "ghcr.io/ferrolb/ferrolb"
        );
        assert_eq!(image_name("ferrolb"), "ferrolb");
        assert_eq!(image_name("host:5000/a/b:1"), "host:5000/a/b");
        assert_eq!(image_name("host:5000/a/b"), "host:5000/a/b");
        assert_eq!(image_name("a/b@sha256:00"), "a/b");
        assert!("noequals".parse::<ImageMapping>().is_err());
        assert!("=x".parse::<ImageMapping>().is_err());
        let m: ImageMapping = "ferrolb:1=/d".parse().unwrap();
        assert_eq!(m.image, "ferrolb");
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars: HashMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$A $", &vars), "$A $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn a_speaker_pod_becomes_its_command_line() {
        let host: Vec<IpAddr> = vec![
            "192.0.2.11".parse().unwrap(),
            "2001:db8::b".parse().unwrap(),
        ];
        let p = plan(&speaker(), &images(), &host, &host).unwrap();
        assert!(p.host_network);
        assert_eq!(p.service_account, "ferrolb-speaker");
        assert_eq!(p.grace, Duration::from_secs(5));
        let c = &p.containers[0];
        assert_eq!(c.program, PathBuf::from("/opt/bin/ferrolb-speaker"));
        assert_eq!(
            c.args,
            [
                "--log-format=json",
                "--node=node-1",
                "--literal=$(NODE_NAME)",
                "--x=$(UNSET)"
            ]
        );
        let env: HashMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["NODE_NAME"], "node-1");
        assert_eq!(env["HOST_IP"], "192.0.2.11");
        assert_eq!(env["APP"], "s");
        assert_eq!(env["GREETING"], "on node-1");
        assert_eq!(c.user, None);
        assert_eq!(
            c.readiness,
            Some(HttpProbe {
                port: 7473,
                path: "/readyz".into(),
                period: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn users_and_refusals() {
        let mut pod = speaker();
        let spec = pod.spec.as_mut().unwrap();
        spec.security_context =
            Some(serde_json::from_value(json!({"runAsUser": 65532, "runAsGroup": 65532})).unwrap());
        spec.containers[0].security_context = None;
        let p = plan(&pod, &images(), &[], &[]).unwrap();
        assert_eq!(p.containers[0].user, Some((65532, 65532)));

        assert!(is_exec_pod(&pod, &images()));
        let mut other = pod.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("nginx".into());
        assert!(!is_exec_pod(&other, &images()));

        let mut secret = pod.clone();
        secret.spec.as_mut().unwrap().containers[0].env = Some(vec![
            serde_json::from_value(json!(
                {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ))
            .unwrap(),
        ]);
        assert!(
            refusal(&secret)
                .unwrap()
                .contains("only value and fieldRef")
        );

        let mut no_cmd = pod.clone();
        no_cmd.spec.as_mut().unwrap().containers[0].command = None;
        assert!(refusal(&no_cmd).unwrap().contains("no command"));

        let mut bad_port = pod.clone();
        bad_port.spec.as_mut().unwrap().containers[0].readiness_probe = Some(
            serde_json::from_value(json!({"httpGet": {"path": "/", "port": "nope"}})).unwrap(),
        );
        assert!(refusal(&bad_port).unwrap().contains("not a port"));

        let mut exec = pod.clone();
        exec.spec.as_mut().unwrap().containers[0].readiness_probe =
            Some(serde_json::from_value(json!({"exec": {"command": ["true"]}})).unwrap());
        assert!(refusal(&exec).unwrap().contains("httpGet"));

        let mut deleting = pod;
        deleting.metadata.deletion_grace_period_seconds = Some(2);
        assert_eq!(
            plan(&deleting, &images(), &[], &[]).unwrap().grace,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn netns_names_fit_interface_names() {
        let (ns, veth) = pod_netns_names("flblab1x0-pod", "0a1b2c3d-4e5f-6789");
        assert_eq!(ns, "flblab1x0-pod-0a1b2c3d4e");
        assert_eq!(veth, "fp0a1b2c3d4e");
        assert!(veth.len() <= 15);
    }
}
