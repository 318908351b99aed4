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

/// `IMAGE=DIR[@ENTRYPOINT]`: Pods with the image `IMAGE` (any tag or digest)
/// run binaries from `DIR`. `ENTRYPOINT` stands for the image's own
/// entrypoint (`/speaker` for MetalLB's speaker image): the command of a
/// container that sets none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMapping {
    pub image: String,
    pub dir: PathBuf,
    pub entrypoint: Option<String>,
}

impl std::str::FromStr for ImageMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || format!("{s:?}: expected IMAGE=DIR or IMAGE=DIR@ENTRYPOINT");
        let (image, rest) = s.split_once('=').ok_or_else(expected)?;
        let (dir, entrypoint) = match rest.split_once('@') {
            Some((dir, e)) if e.starts_with('/') && e.len() > 1 => (dir, Some(e.to_owned())),
            Some(_) => return Err(expected()),
            None => (rest, None),
        };
        if image.is_empty() || dir.is_empty() {
            return Err(expected());
        }
        Ok(ImageMapping {
            image: image_name(image).to_owned(),
            dir: PathBuf::from(dir),
            entrypoint,
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

/// The kinds of object whose keys a volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyed {
    Secret,
    ConfigMap,
}

impl Keyed {
    pub fn kind(self) -> &'static str {
        match self {
            Keyed::Secret => "secret",
            Keyed::ConfigMap => "configMap",
        }
    }
}

/// Where a volume's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// A Secret or ConfigMap of the Pod's namespace, every key a file.
    Object {
        keyed: Keyed,
        name: String,
        optional: bool,
    },
    /// An empty directory that lives as long as the Pod.
    EmptyDir,
    /// A projected volume (the ServiceAccount admission plugin's
    /// `kube-api-access-*`): each file from its source.
    Projected { files: Vec<(String, ProjectedFile)> },
}

/// One file of a projected volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectedFile {
    /// The Pod's ServiceAccount token (the one the agent requested for it).
    Token,
    /// A key of a Secret or ConfigMap of the Pod's namespace.
    Key {
        keyed: Keyed,
        name: String,
        key: String,
        optional: bool,
    },
    /// A downward-API field's value, resolved when planned.
    Text(String),
}

/// A volume of the Pod, written by the agent into a directory of its own
/// (`<volumes dir>/<volume name>`) before the containers start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePlan {
    pub name: String,
    pub source: VolumeSource,
    /// The directory the agent writes it to.
    pub dir: PathBuf,
}

/// A Pod as processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPlan {
    pub host_network: bool,
    /// The Pod's volumes that a container mounts.
    pub volumes: Vec<VolumePlan>,
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
pub fn refusal(pod: &Pod, images: &[ImageMapping]) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Some("the ferrolb lab node agent runs no init containers".into());
    }
    for v in spec.volumes.iter().flatten() {
        if let Err(why) = volume_source(v, pod) {
            return Some(why);
        }
    }
    for c in &spec.containers {
        for m in c.volume_mounts.iter().flatten() {
            if !spec.volumes.iter().flatten().any(|v| v.name == m.name) {
                return Some(format!(
                    "container {}: volume mount {} names no volume of the Pod",
                    c.name, m.name
                ));
            }
            if m.sub_path.as_ref().is_some_and(|p| !p.is_empty())
                || m.sub_path_expr.as_ref().is_some_and(|p| !p.is_empty())
            {
                return Some(format!(
                    "container {}: volume mount {}: subPath is not supported by the lab node agent",
                    c.name, m.name
                ));
            }
        }
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
        let Some(cmd) = command(c, images).and_then(|c| c.first().cloned()) else {
            return Some(format!(
                "container {name}: no command, and the lab node agent knows no entrypoint for its image"
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

/// The container's command: its own, else its image's entrypoint (with
/// the container's `args` after it, as a container runtime does).
fn command(c: &Container, images: &[ImageMapping]) -> Option<Vec<String>> {
    match &c.command {
        Some(cmd) if !cmd.is_empty() => Some(cmd.clone()),
        _ => {
            let m = mapping_for(images, c.image.as_deref()?)?;
            Some(vec![m.entrypoint.clone()?])
        }
    }
}

/// The files of a projected volume (`pod` resolves downward-API fields; its
/// IPs are not known here, so status fields are refused).
fn projected(
    v: &k8s_openapi::api::core::v1::Volume,
    pod: &Pod,
) -> Result<Vec<(String, ProjectedFile)>, String> {
    let p = v.projected.as_ref().ok_or("not projected")?;
    let mut files = Vec::new();
    let bad = |what: &str| {
        format!(
            "volume {}: {what} is not supported in a projected volume by the lab node agent",
            v.name
        )
    };
    for src in p.sources.iter().flatten() {
        if let Some(t) = &src.service_account_token {
            files.push((t.path.clone(), ProjectedFile::Token));
        } else if let Some((keyed, name, items, optional)) = src
            .config_map
            .as_ref()
            .map(|c| (Keyed::ConfigMap, &c.name, &c.items, c.optional))
            .or_else(|| {
                src.secret
                    .as_ref()
                    .map(|c| (Keyed::Secret, &c.name, &c.items, c.optional))
            })
        {
            let items = items
                .as_ref()
                .ok_or_else(|| bad(&format!("a {} without items", keyed.kind())))?;
            for i in items {
                files.push((
                    i.path.clone(),
                    ProjectedFile::Key {
                        keyed,
                        name: name.clone(),
                        key: i.key.clone(),
                        optional: optional == Some(true),
                    },
                ));
            }
        } else if let Some(d) = &src.downward_api {
            for i in d.items.iter().flatten() {
                let f = i
                    .field_ref
                    .as_ref()
                    .ok_or_else(|| bad("a resourceFieldRef"))?;
                if f.field_path.starts_with("status.") || !field_supported(&f.field_path) {
                    return Err(bad(&format!("the field {}", f.field_path)));
                }
                files.push((
                    i.path.clone(),
                    ProjectedFile::Text(field_value(pod, &f.field_path, &[], &[])),
                ));
            }
        } else {
            return Err(bad(
                "a source other than serviceAccountToken, configMap, secret or downwardAPI",
            ));
        }
    }
    for (path, _) in &files {
        if path.is_empty()
            || path.starts_with('/')
            || path.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(format!(
                "volume {}: path {path:?} is not a relative file path",
                v.name
            ));
        }
    }
    Ok(files)
}

/// What the agent writes for a volume, or why it cannot (pure).
fn volume_source(
    v: &k8s_openapi::api::core::v1::Volume,
    pod: &Pod,
) -> Result<VolumeSource, String> {
    if v.projected.is_some() {
        return Ok(VolumeSource::Projected {
            files: projected(v, pod)?,
        });
    }
    let keyed = match (&v.secret, &v.config_map) {
        (Some(s), _) => Some((
            Keyed::Secret,
            s.secret_name
                .clone()
                .ok_or_else(|| format!("volume {}: a secret volume without secretName", v.name))?,
            &s.items,
            s.optional,
        )),
        (None, Some(c)) => Some((Keyed::ConfigMap, c.name.clone(), &c.items, c.optional)),
        (None, None) => None,
    };
    if let Some((keyed, name, items, optional)) = keyed {
        if items.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(format!(
                "volume {}: {} items are not supported by the lab node agent",
                v.name,
                keyed.kind()
            ));
        }
        return Ok(VolumeSource::Object {
            keyed,
            name,
            optional: optional == Some(true),
        });
    }
    if v.empty_dir.is_some() {
        return Ok(VolumeSource::EmptyDir);
    }
    Err(format!(
        "volume {}: only secret, configMap, projected and emptyDir volumes are supported by the lab node agent",
        v.name
    ))
}

/// `value` with a leading mount path replaced by the directory the agent
/// wrote the volume to: the lab's stand-in for mounting it (the processes
/// share the node's file system). A path under no mount is left alone.
fn rewrite_mounted(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, dir) in mounts {
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            continue;
        }
        // Whole words only: `--x=/etc/a/b` for a mount at /etc/a, not /etc/ab.
        let mut out = String::new();
        let mut rest = value;
        let mut changed = false;
        while let Some(i) = rest.find(path) {
            let before_ok = i == 0 || rest[..i].ends_with(['=', ':', ',', ' ']);
            let after = &rest[i + path.len()..];
            let after_ok = after.is_empty() || after.starts_with(['/', ',', ':', ' ']);
            out.push_str(&rest[..i]);
            if before_ok && after_ok {
                out.push_str(&dir.to_string_lossy());
                changed = true;
            } else {
                out.push_str(path);
            }
            rest = after;
        }
        out.push_str(rest);
        if changed {
            return out;
        }
    }
    value.to_owned()
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
///
/// Volumes go to `volumes_dir/<volume name>`; an `env` value or argument
/// that starts with a container's mount path is rewritten to that directory.
pub fn plan(
    pod: &Pod,
    images: &[ImageMapping],
    pod_ips: &[IpAddr],
    host_ips: &[IpAddr],
    volumes_dir: &std::path::Path,
) -> Result<ExecPlan, String> {
    if let Some(why) = refusal(pod, images) {
        return Err(why);
    }
    let spec = pod.spec.as_ref().ok_or("the Pod has no spec")?;
    let pod_sc = spec.security_context.as_ref();
    let mut volumes = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let mounted = spec
            .containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .any(|m| m.name == v.name);
        if mounted {
            volumes.push(VolumePlan {
                name: v.name.clone(),
                source: volume_source(v, pod)?,
                dir: volumes_dir.join(&v.name),
            });
        }
    }
    let mut containers = Vec::new();
    for c in &spec.containers {
        let image = c.image.as_deref().unwrap_or("");
        let mapping = mapping_for(images, image)
            .ok_or_else(|| format!("container {}: image {image} is not mapped", c.name))?;
        let command = command(c, images).ok_or("no command")?;
        // Longest mount path first, so a nested mount wins.
        let mut mounts: Vec<(String, PathBuf)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.clone(), volumes_dir.join(&m.name)))
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut vars: HashMap<String, String> = HashMap::new();
        let mut env = Vec::new();
        for e in c.env.iter().flatten() {
            let value = match &e.value_from {
                Some(from) => {
                    let f = from.field_ref.as_ref().ok_or("unsupported env source")?;
                    field_value(pod, &f.field_path, pod_ips, host_ips)
                }
                None => rewrite_mounted(&expand(e.value.as_deref().unwrap_or(""), &vars), &mounts),
            };
            vars.insert(e.name.clone(), value.clone());
            env.push((e.name.clone(), value));
        }
        let file = command[0].rsplit('/').next().unwrap_or_default();
        let args: Vec<String> = command[1..]
            .iter()
            .chain(c.args.iter().flatten())
            .map(|a| rewrite_mounted(&expand(a, &vars), &mounts))
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
        volumes,
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
    use std::path::Path;

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
        assert_eq!(m.entrypoint, None);
        let m: ImageMapping = "quay.io/metallb/speaker:v0.15.2=/d@/speaker"
            .parse()
            .unwrap();
        assert_eq!(m.image, "quay.io/metallb/speaker");
        assert_eq!(m.dir, PathBuf::from("/d"));
        assert_eq!(m.entrypoint.as_deref(), Some("/speaker"));
        assert!("a=/d@speaker".parse::<ImageMapping>().is_err());
        assert!("a=/d@".parse::<ImageMapping>().is_err());
    }

    /// MetalLB's speaker as its manifest deploys it: no command (the
    /// image's entrypoint), a Secret and a ConfigMap volume.
    fn metallb_speaker() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "speaker-abcde", "namespace": "metallb-system", "uid": "u1"},
            "spec": {"nodeName": "node-1", "hostNetwork": true, "serviceAccountName": "speaker",
                     "containers": [{"name": "speaker", "image": "quay.io/metallb/speaker:v0.15.2",
                        "args": ["--port=7472", "--log-level=info"],
                        "env": [
                            {"name": "METALLB_ML_SECRET_KEY_PATH", "value": "/etc/ml_secret_key"},
                            {"name": "OTHER", "value": "/etc/ml_secret_keys/x"},
                            {"name": "NESTED", "value": "/etc/ml_secret_key/secretkey"},
                        ],
                        "volumeMounts": [
                            {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access-x", "readOnly": true},
                            {"mountPath": "/etc/ml_secret_key", "name": "memberlist", "readOnly": true},
                            {"mountPath": "/etc/metallb", "name": "metallb-excludel2", "readOnly": true},
                        ]}],
                     "volumes": [
                        {"name": "kube-api-access-x", "projected": {"sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                        ]}},
                        {"name": "memberlist", "secret": {"secretName": "memberlist", "defaultMode": 420}},
                        {"name": "metallb-excludel2", "configMap": {"name": "metallb-excludel2", "defaultMode": 256}},
                        {"name": "unused", "hostPath": {"path": "/x"}},
                     ]}
        }))
        .unwrap()
    }

    #[test]
    fn image_entrypoints_and_volumes() {
        let images: Vec<ImageMapping> =
            vec!["quay.io/metallb/speaker=/peers@/speaker".parse().unwrap()];
        let mut pod = metallb_speaker();
        // An unsupported volume type is refused even when nothing mounts it.
        assert!(refusal(&pod, &images).unwrap().contains("volume unused"));
        pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().pop();
        let p = plan(&pod, &images, &[], &[], Path::new("/state/v")).unwrap();
        let c = &p.containers[0];
        assert_eq!(c.program, PathBuf::from("/peers/speaker"));
        assert_eq!(c.args, ["--port=7472", "--log-level=info"]);
        let env: HashMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["METALLB_ML_SECRET_KEY_PATH"], "/state/v/memberlist");
        assert_eq!(
            env["OTHER"], "/etc/ml_secret_keys/x",
            "a longer name is no mount"
        );
        assert_eq!(env["NESTED"], "/state/v/memberlist/secretkey");
        assert_eq!(
            p.volumes[0].source,
            VolumeSource::Projected {
                files: vec![
                    ("token".into(), ProjectedFile::Token),
                    (
                        "ca.crt".into(),
                        ProjectedFile::Key {
                            keyed: Keyed::ConfigMap,
                            name: "kube-root-ca.crt".into(),
                            key: "ca.crt".into(),
                            optional: false
                        }
                    ),
                    (
                        "namespace".into(),
                        ProjectedFile::Text("metallb-system".into())
                    ),
                ]
            }
        );
        assert_eq!(
            p.volumes[1..],
            [
                VolumePlan {
                    name: "memberlist".into(),
                    source: VolumeSource::Object {
                        keyed: Keyed::Secret,
                        name: "memberlist".into(),
                        optional: false
                    },
                    dir: PathBuf::from("/state/v/memberlist"),
                },
                VolumePlan {
                    name: "metallb-excludel2".into(),
                    source: VolumeSource::Object {
                        keyed: Keyed::ConfigMap,
                        name: "metallb-excludel2".into(),
                        optional: false
                    },
                    dir: PathBuf::from("/state/v/metallb-excludel2"),
                },
            ]
        );
        // Without the entrypoint the image cannot run.
        let bare: Vec<ImageMapping> = vec!["quay.io/metallb/speaker=/peers".parse().unwrap()];
        assert!(refusal(&pod, &bare).unwrap().contains("no command"));
        // A mount of a volume the Pod does not have, and subPath, are refused.
        let mut sub = pod.clone();
        sub.spec.as_mut().unwrap().containers[0]
            .volume_mounts
            .as_mut()
            .unwrap()[0]
            .sub_path = Some("k".into());
        assert!(refusal(&sub, &images).unwrap().contains("subPath"));
        let mut status_field = pod.clone();
        let v = &mut status_field
            .spec
            .as_mut()
            .unwrap()
            .volumes
            .as_mut()
            .unwrap()[0];
        v.projected.as_mut().unwrap().sources.as_mut().unwrap()[2] = serde_json::from_value(
            json!({"downwardAPI": {"items": [{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}),
        )
        .unwrap();
        assert!(
            refusal(&status_field, &images)
                .unwrap()
                .contains("status.podIP")
        );
        let mut missing = pod;
        missing.spec.as_mut().unwrap().volumes = None;
        assert!(
            refusal(&missing, &images)
                .unwrap()
                .contains("names no volume")
        );
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
        let p = plan(&speaker(), &images(), &host, &host, Path::new("/v")).unwrap();
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
        let p = plan(&pod, &images(), &[], &[], Path::new("/v")).unwrap();
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
            refusal(&secret, &images())
                .unwrap()
                .contains("only value and fieldRef")
        );

        let mut no_cmd = pod.clone();
        no_cmd.spec.as_mut().unwrap().containers[0].command = None;
        assert!(refusal(&no_cmd, &images()).unwrap().contains("no command"));

        let mut bad_port = pod.clone();
        bad_port.spec.as_mut().unwrap().containers[0].readiness_probe = Some(
            serde_json::from_value(json!({"httpGet": {"path": "/", "port": "nope"}})).unwrap(),
        );
        assert!(
            refusal(&bad_port, &images())
                .unwrap()
                .contains("not a port")
        );

        let mut exec = pod.clone();
        exec.spec.as_mut().unwrap().containers[0].readiness_probe =
            Some(serde_json::from_value(json!({"exec": {"command": ["true"]}})).unwrap());
        assert!(refusal(&exec, &images()).unwrap().contains("httpGet"));

        let mut deleting = pod;
        deleting.metadata.deletion_grace_period_seconds = Some(2);
        assert_eq!(
            plan(&deleting, &images(), &[], &[], Path::new("/v"))
                .unwrap()
                .grace,
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
