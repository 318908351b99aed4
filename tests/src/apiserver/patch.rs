//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes strategic merge patch.
//!
//! The strategic merge patch covers what `kubectl apply` and `kubectl patch` send for the served
//! kinds: lists with a merge key are merged element by element (Service `ports` by port and
//! protocol, as the real server does), `metadata.finalizers` is merged as a set, other lists are
//! replaced; the directives `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` are honoured.

use serde_json::{Map, Value};

use super::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    /// From the request's `Content-Type`; server-side apply and unknown types are refused with 415.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Err(ApiError::unsupported_media_type(
                    "server-side apply (application/apply-patch+yaml) is not supported by the ferrolb test API server; \
                 use client-side apply, a merge patch or a strategic merge patch",
                ))
            }
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json \
                 (got \"{other}\")"
            ))),
        }
    }
}

/// A list merge strategy: merge key fields (with the default a missing field means), or a set of
/// primitives.
enum ListStrategy {
    Keys(&'static [(&'static str, Option<&'static str>)]),
    PrimitiveSet,
}

/// Merge strategies of the lists of the served kinds, by kind and dotted path (list elements do
/// not add a path segment).
fn list_strategy(kind: &str, path: &str) -> Option<ListStrategy> {
    use ListStrategy::*;
    Some(match (kind, path) {
        (_, "metadata.finalizers") => PrimitiveSet,
        (_, "metadata.ownerReferences") => Keys(&[("uid", None)]),
        ("Service", "spec.ports") => Keys(&[("port", None), ("protocol", Some("TCP"))]),
        (_, "status.conditions") => Keys(&[("type", None)]),
        ("Node", "status.addresses") => Keys(&[("type", None)]),
        ("Pod", "spec.containers" | "spec.initContainers" | "spec.ephemeralContainers") => {
            Keys(&[("name", None)])
        }
        ("Pod", "spec.volumes" | "spec.imagePullSecrets") => Keys(&[("name", None)]),
        ("Pod", "spec.containers.ports" | "spec.initContainers.ports") => {
            Keys(&[("containerPort", None), ("protocol", Some("TCP"))])
        }
        ("Pod", "spec.containers.env" | "spec.initContainers.env") => Keys(&[("name", None)]),
        ("Pod", "spec.containers.volumeMounts" | "spec.initContainers.volumeMounts") => {
            Keys(&[("mountPath", None)])
        }
        _ => return None,
    })
}

pub fn apply(
    kind: &str,
    target: &mut Value,
    patch_type: PatchType,
    body: &[u8],
) -> Result<(), ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    match patch_type {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, &patch);
            Ok(())
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })
        }
        PatchType::Strategic => {
            let Value::Object(p) = &patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Value::Object(t) = target else {
                unreachable!()
            };
            merge_map(kind, "", t, p)
        }
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A copy of `v` with every `$`-directive removed (what a patch inserts where nothing was).
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(
    kind: &str,
    path: &str,
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let Value::Object(m) = strip_directives(&Value::Object(patch.clone())) else {
                unreachable!()
            };
            *target = m;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
    }
    let mut orders = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (target.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            target.remove(k);
            continue;
        }
        let cp = child_path(path, k);
        match (target.get_mut(k), v) {
            (Some(Value::Object(t)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(k);
                } else {
                    merge_map(kind, &cp, t, p)?;
                }
            }
            (Some(Value::Array(t)), Value::Array(p)) => merge_list(kind, &cp, t, p)?,
            _ => {
                target.insert(k.clone(), strip_directives(v));
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        target.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    for (field, order) in orders {
        let cp = child_path(path, &field);
        if let (Some(Value::Array(list)), Value::Array(order)) = (target.get_mut(&field), order) {
            reorder(kind, &cp, list, order);
        }
    }
    Ok(())
}

fn key_matches(keys: &[(&str, Option<&str>)], a: &Value, b: &Value) -> bool {
    keys.iter().all(|(k, default)| {
        let get = |v: &Value| match v.get(*k) {
            Some(Value::Null) | None => default.map(|d| Value::String(d.to_string())),
            Some(x) => Some(x.clone()),
        };
        get(a) == get(b)
    })
}

fn merge_list(
    kind: &str,
    path: &str,
    target: &mut Vec<Value>,
    patch: &[Value],
) -> Result<(), ApiError> {
    match list_strategy(kind, path) {
        None => {
            *target = patch.iter().map(strip_directives).collect();
        }
        Some(ListStrategy::PrimitiveSet) => {
            for v in patch {
                if !target.contains(v) {
                    target.push(v.clone());
                }
            }
        }
        Some(ListStrategy::Keys(keys)) => {
            if patch
                .iter()
                .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                *target = patch
                    .iter()
                    .filter(|e| e.get("$patch").is_none())
                    .map(strip_directives)
                    .collect();
                return Ok(());
            }
            for item in patch {
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                let pos = target.iter().position(|t| key_matches(keys, t, item));
                match (pos, item) {
                    (Some(i), _) if delete => {
                        target.remove(i);
                    }
                    (None, _) if delete => {}
                    (Some(i), Value::Object(p)) => {
                        if let Value::Object(t) = &mut target[i] {
                            merge_map(kind, path, t, p)?;
                        }
                    }
                    _ => target.push(strip_directives(item)),
                }
            }
        }
    }
    Ok(())
}

/// `$setElementOrder`: elements named in `order` first, in that order, then the others.
fn reorder(kind: &str, path: &str, list: &mut Vec<Value>, order: &[Value]) {
    type Same = Box<dyn Fn(&Value, &Value) -> bool>;
    let matches: Same = match list_strategy(kind, path) {
        Some(ListStrategy::Keys(keys)) => Box::new(move |a, b| key_matches(keys, a, b)),
        _ => Box::new(|a, b| a == b),
    };
    let mut rest = std::mem::take(list);
    for o in order {
        if let Some(i) = rest.iter().position(|e| matches(e, o)) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, mut target: Value, patch: Value) -> Value {
        apply(
            kind,
            &mut target,
            PatchType::Strategic,
            patch.to_string().as_bytes(),
        )
        .unwrap();
        target
    }

    #[test]
    fn service_ports_merge_by_port_and_protocol() {
        let svc = json!({"spec": {"ports": [
            {"port": 53, "protocol": "TCP", "nodePort": 30001},
            {"port": 53, "protocol": "UDP", "nodePort": 30002}]}});
        let out = smp(
            "Service",
            svc,
            json!({"spec": {"ports": [{"port": 53, "protocol": "UDP", "name": "dns"}]}}),
        );
        assert_eq!(out["spec"]["ports"][0]["nodePort"], 30001);
        assert_eq!(
            out["spec"]["ports"][1],
            json!({"port": 53, "protocol": "UDP", "nodePort": 30002, "name": "dns"})
        );
    }

    #[test]
    fn missing_protocol_means_tcp_and_delete_directive_removes() {
        let svc = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 443, "protocol": "TCP"}]}});
        let out = smp(
            "Service",
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "$patch": "delete"}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "nodePort": 30080, "targetPort": 8080}])
        );
    }

    #[test]
    fn lists_without_merge_key_are_replaced_and_null_deletes() {
        let cm = json!({"data": {"a": "1", "b": "2"}, "x": [1, 2]});
        let out = smp(
            "ConfigMap",
            cm,
            json!({"data": {"a": null, "c": "3"}, "x": [3]}),
        );
        assert_eq!(out, json!({"data": {"b": "2", "c": "3"}, "x": [3]}));
    }

    #[test]
    fn set_element_order_and_finalizers() {
        let svc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"ports": [{"port": 1}, {"port": 2}]}});
        let out = smp(
            "Service",
            svc,
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"$setElementOrder/ports": [{"port": 2}, {"port": 1}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["spec"]["ports"], json!([{"port": 2}, {"port": 1}]));
    }

    #[test]
    fn server_side_apply_is_refused_with_415() {
        let e = PatchType::from_content_type("application/apply-patch+yaml").unwrap_err();
        assert_eq!(e.code, 415);
    }
}
