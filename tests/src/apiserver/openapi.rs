//! `/openapi/v2` and the schemas of `/openapi/v3/<group-version>`: minimal, permissive schemas of
//! the kinds the server serves, for kubectl's client-side validation (kubectl before 1.25 always
//! validates against `/openapi/v2`) and for `kubectl explain`.
//!
//! Every kind lists its top-level fields (kubectl refuses fields a schema does not list) and its
//! `x-kubernetes-group-version-kind`; `metadata` is a full ObjectMeta, and Service `spec` a full
//! ServiceSpec (with the `ports` merge key, so an older kubectl's `apply` patches ports as it
//! does against a real server). Everything below is an untyped object or value: any content
//! passes, the server validates.
//!
//! kubectl reads `/openapi/v2` only as protobuf (gnostic's `openapi_v2.Document`); [`v2_protobuf`]
//! encodes the same document.

use serde_json::{Map, Value, json};

use super::resources::RESOURCES;

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const SERVICE_SPEC: &str = "io.k8s.api.core.v1.ServiceSpec";
const SERVICE_PORT: &str = "io.k8s.api.core.v1.ServicePort";

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn integer(description: &str) -> Value {
    json!({"type": "integer", "format": "int32", "description": description})
}

fn boolean(description: &str) -> Value {
    json!({"type": "boolean", "description": description})
}

/// An object whose content is not described (any fields pass).
fn object(description: &str) -> Value {
    json!({"type": "object", "description": description})
}

fn string_map(description: &str) -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}, "description": description})
}

fn array(items: Value, description: &str) -> Value {
    json!({"type": "array", "items": items, "description": description})
}

fn reference(prefix: &str, name: &str) -> Value {
    json!({"$ref": format!("{prefix}{name}")})
}

fn kind_definition_name(group: &str, version: &str, kind: &str) -> String {
    match group {
        "" => format!("io.k8s.api.core.{version}.{kind}"),
        g => format!(
            "io.k8s.api.{}.{version}.{kind}",
            g.split('.').next().unwrap_or(g)
        ),
    }
}

/// The top-level fields of a kind besides `apiVersion`, `kind` and `metadata`.
fn kind_fields(group: &str, kind: &str, prefix: &str) -> Vec<(&'static str, Value)> {
    match (group, kind) {
        ("", "Service") => vec![
            ("spec", reference(prefix, SERVICE_SPEC)),
            (
                "status",
                object("Most recently observed status of the service."),
            ),
        ],
        ("", "ConfigMap") => vec![
            ("data", string_map("Configuration data.")),
            ("binaryData", string_map("Binary data, base64-encoded.")),
            ("immutable", boolean("If true, the data cannot be updated.")),
        ],
        ("", "Secret") => vec![
            ("data", string_map("Secret data, base64-encoded.")),
            (
                "stringData",
                string_map("Write-only data, merged into data on write."),
            ),
            (
                "type",
                string("Used to facilitate programmatic handling of secret data."),
            ),
            ("immutable", boolean("If true, the data cannot be updated.")),
        ],
        ("", "Endpoints") => vec![(
            "subsets",
            array(object("EndpointSubset"), "Sets of addresses and ports."),
        )],
        ("", "Event") => vec![
            ("involvedObject", object("The object this event is about.")),
            ("reason", string("Short, machine understandable reason.")),
            ("message", string("Human-readable description.")),
            ("source", object("The component reporting this event.")),
            (
                "firstTimestamp",
                string("First time the event was recorded."),
            ),
            (
                "lastTimestamp",
                string("Most recent time the event occurred."),
            ),
            ("count", integer("Number of times this event has occurred.")),
            ("type", string("Type of this event (Normal, Warning).")),
            (
                "eventTime",
                string("Time when this Event was first observed."),
            ),
            ("series", object("Data about the Event series.")),
            ("action", string("What action was taken/failed.")),
            ("related", object("Optional secondary object.")),
            (
                "reportingComponent",
                string("Name of the controller that emitted this Event."),
            ),
            (
                "reportingInstance",
                string("ID of the controller instance."),
            ),
        ],
        ("events.k8s.io", "Event") => vec![
            (
                "eventTime",
                string("Time when this Event was first observed."),
            ),
            ("series", object("Data about the Event series.")),
            (
                "reportingController",
                string("Name of the controller that emitted this Event."),
            ),
            (
                "reportingInstance",
                string("ID of the controller instance."),
            ),
            ("action", string("What action was taken/failed.")),
            ("reason", string("Why the action was taken.")),
            ("regarding", object("The object this Event is about.")),
            ("related", object("Optional secondary object.")),
            ("note", string("Human-readable description.")),
            ("type", string("Type of this event (Normal, Warning).")),
            (
                "deprecatedSource",
                object("Deprecated field for core.v1 Event compatibility."),
            ),
            ("deprecatedFirstTimestamp", string("Deprecated field.")),
            ("deprecatedLastTimestamp", string("Deprecated field.")),
            ("deprecatedCount", integer("Deprecated field.")),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            ("addressType", string("IPv4, IPv6 or FQDN.")),
            (
                "endpoints",
                array(object("Endpoint"), "Unique endpoints in this slice."),
            ),
            (
                "ports",
                array(
                    object("EndpointPort"),
                    "Network ports exposed by each endpoint.",
                ),
            ),
        ],
        _ => vec![
            ("spec", object("Specification of the desired behavior.")),
            ("status", object("Most recently observed status.")),
        ],
    }
}

fn object_meta(prefix: &str) -> Value {
    let _ = prefix;
    json!({
        "type": "object",
        "description": "Standard object metadata.",
        "properties": {
            "name": string("Name, unique within a namespace."),
            "generateName": string("Prefix the server uses to generate a unique name."),
            "namespace": string("Namespace of the object."),
            "selfLink": string("Deprecated."),
            "uid": string("Unique in time and space value for this object."),
            "resourceVersion": string("Internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "Sequence number of the desired state."},
            "creationTimestamp": string("Time the object was created."),
            "deletionTimestamp": string("Time the object will be deleted."),
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64", "description": "Seconds allowed for graceful termination."},
            "labels": string_map("Map of string keys and values for organizing and selecting objects."),
            "annotations": string_map("Unstructured key value map of arbitrary metadata."),
            "ownerReferences": {
                "type": "array",
                "items": object("OwnerReference"),
                "description": "Objects this object depends on.",
                "x-kubernetes-patch-merge-key": "uid",
                "x-kubernetes-patch-strategy": "merge",
            },
            "finalizers": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Must be empty before the object is deleted from the registry.",
                "x-kubernetes-patch-strategy": "merge",
            },
            "managedFields": array(object("ManagedFieldsEntry"), "Field management."),
        },
    })
}

fn service_spec(prefix: &str) -> Value {
    let strings = |d: &str| array(json!({"type": "string"}), d);
    json!({
        "type": "object",
        "description": "ServiceSpec describes the attributes that a user creates on a service.",
        "properties": {
            "ports": {
                "type": "array",
                "items": reference(prefix, SERVICE_PORT),
                "description": "The list of ports that are exposed by this service.",
                "x-kubernetes-list-map-keys": ["port", "protocol"],
                "x-kubernetes-list-type": "map",
                "x-kubernetes-patch-merge-key": "port",
                "x-kubernetes-patch-strategy": "merge",
            },
            "selector": string_map("Route service traffic to pods with label keys and values matching this selector."),
            "clusterIP": string("IP address of the service, usually assigned randomly."),
            "clusterIPs": strings("IP addresses assigned to this service."),
            "type": string("ClusterIP, NodePort, LoadBalancer or ExternalName."),
            "externalIPs": strings("IP addresses for which nodes in the cluster also accept traffic."),
            "sessionAffinity": string("ClientIP or None."),
            "loadBalancerIP": string("Deprecated."),
            "loadBalancerSourceRanges": strings("Client IP ranges allowed to the load balancer."),
            "externalName": string("DNS name for an ExternalName service."),
            "externalTrafficPolicy": string("Cluster or Local."),
            "healthCheckNodePort": integer("Health check node port."),
            "publishNotReadyAddresses": boolean("Publish addresses of not ready endpoints."),
            "sessionAffinityConfig": object("Configurations of session affinity."),
            "topologyKeys": strings("Deprecated."),
            "ipFamilies": strings("IP families (IPv4, IPv6) assigned to this service."),
            "ipFamilyPolicy": string("SingleStack, PreferDualStack or RequireDualStack."),
            "allocateLoadBalancerNodePorts": boolean("Whether node ports are allocated for a LoadBalancer service."),
            "loadBalancerClass": string("The class of the load balancer implementation this Service belongs to."),
            "internalTrafficPolicy": string("Cluster or Local."),
            "trafficDistribution": string("How traffic is distributed to Service endpoints."),
        },
    })
}

fn service_port() -> Value {
    json!({
        "type": "object",
        "description": "ServicePort contains information on service's port.",
        "required": ["port"],
        "properties": {
            "name": string("The name of this port within the service."),
            "protocol": string("TCP, UDP or SCTP."),
            "appProtocol": string("The application protocol for this port."),
            "port": integer("The port that will be exposed by this service."),
            "targetPort": {"format": "int-or-string", "description": "Number or name of the port to access on the pods."},
            "nodePort": integer("The port on each node on which this service is exposed."),
        },
    })
}

/// The definitions of the kinds of one group-version (all of them for `None`), with the shared
/// definitions they refer to; references start with `prefix` (`#/definitions/` in v2,
/// `#/components/schemas/` in v3).
pub fn definitions(group_version: Option<(&str, &str)>, prefix: &str) -> Map<String, Value> {
    let mut defs = Map::new();
    defs.insert(META.into(), object_meta(prefix));
    let mut service = false;
    for r in RESOURCES
        .iter()
        .filter(|r| group_version.is_none_or(|(g, v)| r.group == g && r.version == v))
    {
        let api_version = r.api_version();
        let mut properties = Map::new();
        properties.insert(
            "apiVersion".into(),
            string("Versioned schema of this representation of an object."),
        );
        properties.insert(
            "kind".into(),
            string("REST resource this object represents."),
        );
        properties.insert("metadata".into(), reference(prefix, META));
        for (field, schema) in kind_fields(r.group, r.kind, prefix) {
            properties.insert(field.into(), schema);
        }
        service |= r.group.is_empty() && r.kind == "Service";
        defs.insert(
            kind_definition_name(r.group, r.version, r.kind),
            json!({
                "type": "object",
                "description": format!("{} ({api_version}), as served by the ferrolb test API server.", r.kind),
                "properties": properties,
                "x-kubernetes-group-version-kind": [{"group": r.group, "kind": r.kind, "version": r.version}],
            }),
        );
    }
    if service {
        defs.insert(SERVICE_SPEC.into(), service_spec(prefix));
        defs.insert(SERVICE_PORT.into(), service_port());
    }
    defs
}

/// The v2 paths: one PATCH operation per kind with its group-version-kind and a `dryRun`
/// parameter, which is what kubectl before 1.26 looks for before it sends `dryRun=All`
/// (`kubectl create --dry-run=server`: "doesn't support dry-run" otherwise). The operations name
/// no `consumes`, so kubectl's `apply` computes its strategic merge patch from its built-in types
/// (as it does with the v3 documents).
fn v2_paths() -> Map<String, Value> {
    let mut paths = Map::new();
    for r in RESOURCES {
        let prefix = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "parameters": [
                    {"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true},
                    {"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true},
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": r.group, "kind": r.kind, "version": r.version},
            }}),
        );
    }
    paths
}

/// `/openapi/v2` as JSON.
pub fn v2_json() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes (ferrolb test API server)", "version": "v1.33.0"},
        "paths": v2_paths(),
        "definitions": definitions(None, "#/definitions/"),
    })
}

/// `/openapi/v2` as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
pub fn v2_protobuf() -> Vec<u8> {
    let doc = v2_json();
    let mut out = Vec::new();
    put_string(&mut out, 1, "2.0");
    let mut info = Vec::new();
    put_string(&mut info, 1, "Kubernetes (ferrolb test API server)");
    put_string(&mut info, 2, "v1.33.0");
    put_bytes(&mut out, 2, &info);
    let mut paths = Vec::new();
    for (name, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut path_item = Vec::new();
        if let Some(op) = item.get("patch") {
            put_bytes(&mut path_item, 8, &operation_protobuf(op));
        }
        let mut named = Vec::new();
        put_string(&mut named, 1, name);
        put_bytes(&mut named, 2, &path_item);
        put_bytes(&mut paths, 2, &named);
    }
    put_bytes(&mut out, 8, &paths);
    let mut defs = Vec::new();
    if let Some(m) = doc["definitions"].as_object() {
        for (name, schema) in m {
            put_bytes(&mut defs, 1, &named_schema(name, schema));
        }
    }
    put_bytes(&mut out, 9, &defs);
    out
}

/// gnostic's `openapi_v2.Operation`: operation id, query parameters, vendor extensions.
fn operation_protobuf(op: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(id) = op["operationId"].as_str() {
        put_string(&mut out, 5, id);
    }
    for p in op["parameters"].as_array().into_iter().flatten() {
        let mut query = Vec::new();
        put_string(&mut query, 2, "query");
        put_string(&mut query, 4, p["name"].as_str().unwrap_or_default());
        put_string(&mut query, 6, p["type"].as_str().unwrap_or("string"));
        let mut non_body = Vec::new();
        put_bytes(&mut non_body, 3, &query);
        let mut parameter = Vec::new();
        put_bytes(&mut parameter, 2, &non_body);
        let mut item = Vec::new();
        put_bytes(&mut item, 1, &parameter);
        put_bytes(&mut out, 8, &item);
    }
    for named in vendor_extensions(op) {
        put_bytes(&mut out, 13, &named);
    }
    out
}

/// gnostic's `NamedAny`s of a schema's or operation's `x-` keys. Its `Any` holds them as YAML;
/// JSON is YAML.
fn vendor_extensions(v: &Value) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for (k, v) in v.as_object().into_iter().flatten() {
        if !k.starts_with("x-") {
            continue;
        }
        let mut any = Vec::new();
        put_string(&mut any, 2, &v.to_string());
        let mut named = Vec::new();
        put_string(&mut named, 1, k);
        put_bytes(&mut named, 2, &any);
        all.push(named);
    }
    all
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_string(out: &mut Vec<u8>, field: u64, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

fn named_schema(name: &str, schema: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, 1, name);
    put_bytes(&mut out, 2, &schema_protobuf(schema));
    out
}

/// gnostic's `openapi_v2.Schema`, for the keys [`definitions`] uses.
fn schema_protobuf(schema: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(m) = schema.as_object() else {
        return out;
    };
    let s = |k: &str| m.get(k).and_then(Value::as_str);
    if let Some(r) = s("$ref") {
        put_string(&mut out, 1, r);
    }
    if let Some(f) = s("format") {
        put_string(&mut out, 2, f);
    }
    if let Some(d) = s("description") {
        put_string(&mut out, 4, d);
    }
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        put_string(&mut out, 19, r.as_str().unwrap_or_default());
    }
    if let Some(a) = m.get("additionalProperties") {
        let mut item = Vec::new();
        match a {
            Value::Bool(b) => {
                varint(&mut item, 2 << 3);
                varint(&mut item, u64::from(*b));
            }
            other => put_bytes(&mut item, 1, &schema_protobuf(other)),
        }
        put_bytes(&mut out, 21, &item);
    }
    if let Some(t) = s("type") {
        let mut item = Vec::new();
        put_string(&mut item, 1, t);
        put_bytes(&mut out, 22, &item);
    }
    if let Some(i) = m.get("items") {
        let mut item = Vec::new();
        put_bytes(&mut item, 1, &schema_protobuf(i));
        put_bytes(&mut out, 23, &item);
    }
    if let Some(p) = m.get("properties").and_then(Value::as_object) {
        let mut props = Vec::new();
        for (name, sub) in p {
            put_bytes(&mut props, 1, &named_schema(name, sub));
        }
        put_bytes(&mut out, 25, &props);
    }
    for named in vendor_extensions(schema) {
        put_bytes(&mut out, 31, &named);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_group_version_kind_and_references_resolve() {
        let defs = definitions(None, "#/definitions/");
        for r in RESOURCES {
            let name = kind_definition_name(r.group, r.version, r.kind);
            let d = &defs[&name];
            assert_eq!(
                d["x-kubernetes-group-version-kind"][0]["kind"], r.kind,
                "{name}"
            );
        }
        let text = Value::Object(defs.clone()).to_string();
        for r in text.split("\"#/definitions/").skip(1) {
            let target = r.split('"').next().unwrap();
            assert!(defs.contains_key(target), "{target}");
        }
    }

    #[test]
    fn protobuf_encodes_lengths_and_tags() {
        let mut out = Vec::new();
        put_string(&mut out, 1, "2.0");
        assert_eq!(out, [0x0a, 3, b'2', b'.', b'0']);
        let mut big = Vec::new();
        varint(&mut big, 300);
        assert_eq!(big, [0xac, 0x02]);
        assert!(v2_protobuf().len() > 1000);
    }
}
