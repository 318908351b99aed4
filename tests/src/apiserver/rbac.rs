//! RBAC for impersonated service accounts, so that a test can prove the
//! manifests' rules cover every call a binary makes, and that every rule is
//! used.
//!
//! Only requests that carry `Impersonate-User: system:serviceaccount:NS:NAME`
//! are checked (kube-rs sends it from a kubeconfig's `as:` or from
//! `KUBE_RS_DEBUG_IMPERSONATE_USER`); the test's own requests are not. The rules
//! come from Role, ClusterRole, RoleBinding and ClusterRoleBinding documents
//! (the YAML in `manifests/`), evaluated as the real authorizer does: a request
//! is allowed when a rule of a role bound to the user matches its verb, API
//! group, resource (with `/subresource`), namespace and, if the rule lists
//! resourceNames, name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::Value;

/// One rule of a role, as granted to a user in a namespace (or cluster-wide).
#[derive(Clone, Debug)]
struct Grant {
    /// `None`: cluster-wide (ClusterRole through a ClusterRoleBinding).
    namespace: Option<String>,
    /// `Kind/name rule N`, for reports.
    source: String,
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
}

/// A request as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub user: String,
    pub verb: String,
    pub api_group: String,
    /// `services` or `services/status`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default)]
pub struct Rbac {
    grants: BTreeMap<String, Vec<Grant>>,
    /// (user, source, resource, verb) that allowed at least one request.
    used: Mutex<BTreeSet<(String, String, String, String)>>,
    denied: Mutex<Vec<String>>,
}

impl Rbac {
    /// Builds the policy from Kubernetes objects (parsed YAML/JSON documents);
    /// other kinds are ignored.
    pub fn from_documents(docs: &[Value]) -> anyhow::Result<Rbac> {
        let kind = |d: &Value| {
            d.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let name = |d: &Value| {
            d.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let ns = |d: &Value| {
            d.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut roles: BTreeMap<(String, Option<String>, String), Vec<Value>> = BTreeMap::new();
        for d in docs {
            let k = kind(d);
            if k == "Role" || k == "ClusterRole" {
                let scope = if k == "Role" { ns(d) } else { None };
                let rules = d
                    .get("rules")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                roles.insert((k, scope, name(d)), rules);
            }
        }
        let mut rbac = Rbac::default();
        for d in docs {
            let k = kind(d);
            if k != "RoleBinding" && k != "ClusterRoleBinding" {
                continue;
            }
            let role_kind = d
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let role_name = d
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let binding_ns = if k == "RoleBinding" { ns(d) } else { None };
            let role_scope = if role_kind == "Role" {
                binding_ns.clone()
            } else {
                None
            };
            let rules = roles
                .get(&(role_kind.clone(), role_scope, role_name.clone()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{k} {} refers to a missing {role_kind} {role_name}",
                        name(d)
                    )
                })?;
            for subject in d
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if subject.get("kind").and_then(Value::as_str) != Some("ServiceAccount") {
                    continue;
                }
                let user = format!(
                    "system:serviceaccount:{}:{}",
                    subject
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    subject
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                );
                for (i, rule) in rules.iter().enumerate() {
                    let list = |key: &str| -> Vec<String> {
                        rule.get(key)
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_owned)
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    rbac.grants.entry(user.clone()).or_default().push(Grant {
                        namespace: binding_ns.clone(),
                        source: format!("{role_kind}/{role_name} rule {i}"),
                        api_groups: list("apiGroups"),
                        resources: list("resources"),
                        verbs: list("verbs"),
                        resource_names: list("resourceNames"),
                    });
                }
            }
        }
        Ok(rbac)
    }

    /// Allows or denies a request; remembers which grant allowed it, or the denial.
    pub fn check(&self, a: &Attributes) -> Result<(), String> {
        let grants = self.grants.get(&a.user).map(Vec::as_slice).unwrap_or(&[]);
        let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
        for g in grants {
            let ns_ok = match (&g.namespace, &a.namespace) {
                (None, _) => true,
                (Some(gns), Some(ns)) => gns == ns,
                (Some(_), None) => false,
            };
            let name_ok = g.resource_names.is_empty()
                || a.name
                    .as_ref()
                    .is_some_and(|n| g.resource_names.contains(n));
            if ns_ok
                && name_ok
                && any(&g.api_groups, &a.api_group)
                && any(&g.resources, &a.resource)
                && any(&g.verbs, &a.verb)
            {
                crate::apiserver::lock(&self.used).insert((
                    a.user.clone(),
                    g.source.clone(),
                    a.resource.clone(),
                    a.verb.clone(),
                ));
                return Ok(());
            }
        }
        let group = if a.api_group.is_empty() {
            "\"\"".to_owned()
        } else {
            format!("\"{}\"", a.api_group)
        };
        let scope = match &a.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let msg = format!(
            "{} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group {group} {scope}",
            a.name
                .as_deref()
                .map_or_else(|| a.resource.clone(), |n| format!("{} \"{n}\"", a.resource)),
            a.user,
            a.verb,
            a.resource
        );
        crate::apiserver::lock(&self.denied).push(msg.clone());
        Err(msg)
    }

    /// Every request denied so far, as the API server's message.
    pub fn denied(&self) -> Vec<String> {
        crate::apiserver::lock(&self.denied).clone()
    }

    /// The (rule, resource, verb) combinations granted to `user` that no request used:
    /// each is a permission the manifests give without the code needing it.
    pub fn unused(&self, user: &str) -> Vec<String> {
        let used = crate::apiserver::lock(&self.used);
        let mut out = Vec::new();
        for g in self.grants.get(user).into_iter().flatten() {
            for r in &g.resources {
                for v in &g.verbs {
                    if !used.contains(&(user.to_owned(), g.source.clone(), r.clone(), v.clone())) {
                        out.push(format!("{}: {v} {r}", g.source));
                    }
                }
            }
        }
        out
    }
}

impl Rbac {
    /// What was denied, and for each user the permissions no request used.
    pub fn report(&self) -> Value {
        let unused: serde_json::Map<String, Value> = self
            .grants
            .keys()
            .map(|u| (u.clone(), Value::from(self.unused(u))))
            .collect();
        serde_json::json!({"denied": self.denied(), "unused": unused})
    }
}

/// The Kubernetes verb of a request.
pub fn verb(method: &str, has_name: bool, watch: bool) -> &'static str {
    match (method, has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy() -> Rbac {
        Rbac::from_documents(&[
            json!({"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": [
                {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "c"}, "roleRef": {"kind": "ClusterRole", "name": "c"},
                   "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "sys"}]}),
            json!({"kind": "Role", "metadata": {"name": "r", "namespace": "sys"}, "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["key"], "verbs": ["get"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "sys"}, "roleRef": {"kind": "Role", "name": "r"},
                   "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "sys"}]}),
        ])
        .unwrap()
    }

    fn req(verb: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Attributes {
        Attributes {
            user: "system:serviceaccount:sys:sa".into(),
            verb: verb.into(),
            api_group: String::new(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn cluster_roles_apply_everywhere_roles_only_in_their_namespace() {
        let p = policy();
        assert!(p.check(&req("list", "services", None, None)).is_ok());
        assert!(
            p.check(&req("patch", "services/status", Some("web"), Some("a")))
                .is_ok()
        );
        assert!(
            p.check(&req("patch", "services", Some("web"), Some("a")))
                .is_err()
        );
        assert!(
            p.check(&req("get", "secrets", Some("sys"), Some("key")))
                .is_ok()
        );
        assert!(
            p.check(&req("get", "secrets", Some("sys"), Some("other")))
                .is_err()
        );
        assert!(
            p.check(&req("get", "secrets", Some("web"), Some("key")))
                .is_err()
        );
        let denied = p.denied();
        assert_eq!(denied.len(), 3);
        assert!(
            denied[0].contains("cannot patch resource \"services\""),
            "{}",
            denied[0]
        );
        assert_eq!(
            p.unused("system:serviceaccount:sys:sa"),
            ["ClusterRole/c rule 0: watch services"]
        );
    }

    #[test]
    fn other_users_get_nothing() {
        let p = policy();
        let mut a = req("list", "services", None, None);
        a.user = "system:serviceaccount:sys:other".into();
        assert!(p.check(&a).is_err());
    }
}

/// Replays a real API server's audit log through `rbac`: the requests the
/// real authorizer denied (as `user verb resource (namespace)`), while each
/// allowed one is recorded against the grant that allows it (for
/// [`Rbac::unused`]).
pub fn replay_audit_log(rbac: &Rbac, log: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut denied = Vec::new();
    for (a, code) in text.lines().filter_map(audit_request) {
        if code == 403 {
            denied.push(format!(
                "{} {} {} ({:?})",
                a.user, a.verb, a.resource, a.namespace
            ));
        } else if (200..300).contains(&code) || code == 404 || code == 409 {
            let _ = rbac.check(&a);
        }
    }
    denied
}

/// A request of a real API server's audit log (one JSON event, `--audit-log-format=json`)
/// as the authorizer's attributes, with the response code; `None` for other lines.
pub fn audit_request(line: &str) -> Option<(Attributes, u16)> {
    let ev: Value = serde_json::from_str(line).ok()?;
    if ev.get("kind")?.as_str()? != "Event" {
        return None;
    }
    let obj = ev.get("objectRef")?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let mut resource = text(obj.get("resource"))?;
    if let Some(sub) = text(obj.get("subresource")) {
        resource = format!("{resource}/{sub}");
    }
    let code = ev
        .pointer("/responseStatus/code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(0);
    Some((
        Attributes {
            user: text(ev.pointer("/user/username"))?,
            verb: text(ev.get("verb"))?,
            api_group: text(obj.get("apiGroup")).unwrap_or_default(),
            resource,
            namespace: text(obj.get("namespace")),
            name: text(obj.get("name")),
        },
        code,
    ))
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    #[test]
    fn audit_events_become_attributes() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","verb":"patch","user":{"username":"system:serviceaccount:ferrolb-system:ferrolb-controller"},"objectRef":{"resource":"services","namespace":"default","name":"web","apiVersion":"v1","subresource":"status"},"responseStatus":{"code":200}}"#;
        let (a, code) = audit_request(line).unwrap();
        assert_eq!(code, 200);
        assert_eq!(a.resource, "services/status");
        assert_eq!(a.api_group, "");
        assert_eq!(a.verb, "patch");
        assert_eq!(a.namespace.as_deref(), Some("default"));
        let lease = r#"{"kind":"Event","verb":"update","user":{"username":"u"},"objectRef":{"resource":"leases","apiGroup":"coordination.k8s.io"},"responseStatus":{"code":403}}"#;
        let (a, code) = audit_request(lease).unwrap();
        assert_eq!((a.api_group.as_str(), code), ("coordination.k8s.io", 403));
        assert!(audit_request("not json").is_none());
        assert!(
            audit_request(r#"{"kind":"Event","verb":"get","user":{"username":"u"}}"#).is_none()
        );
    }
}
