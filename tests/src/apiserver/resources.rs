//! The resources the test API server serves, and the discovery documents built from them.

use serde_json::{Value, json};

/// One resource as clients see it: a group, version and plural name.
///
/// Two views may share one storage (`events` in `v1` and `events.k8s.io/v1`, as in the real
/// server); the store keeps the object in the form of the view named by `storage`.
#[derive(Debug)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: the main endpoint ignores `status`, `/status` changes only it.
    pub has_status: bool,
    /// Maintains `metadata.generation` (bumped when anything but metadata and status changes).
    pub has_generation: bool,
    /// A PUT of a missing object creates it (as the real registry allows for these kinds).
    pub create_on_update: bool,
    /// A delete that removes the object at once answers with the object, not a Status.
    pub return_deleted_object: bool,
    /// Storage key; equal for views of the same storage.
    pub storage: &'static str,
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `leases.coordination.k8s.io`, as the real server names resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this view stores its objects in another view's form (needs conversion).
    pub fn is_converted(&self) -> bool {
        self.storage == "events" && !self.group.is_empty()
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        has_status: true,
        has_generation: false,
        create_on_update: false,
        return_deleted_object: true,
        storage: "namespaces",
        field_labels: &["status.phase"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        has_status: true,
        has_generation: true,
        create_on_update: false,
        return_deleted_object: true,
        storage: "services",
        field_labels: &["spec.clusterIP", "spec.type"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        has_status: false,
        has_generation: false,
        create_on_update: false,
        return_deleted_object: false,
        storage: "configmaps",
        field_labels: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        has_status: false,
        has_generation: false,
        create_on_update: false,
        return_deleted_object: false,
        storage: "secrets",
        field_labels: &["type"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        has_status: true,
        has_generation: false,
        create_on_update: false,
        return_deleted_object: false,
        storage: "nodes",
        field_labels: &["spec.unschedulable"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        has_status: true,
        has_generation: false,
        create_on_update: false,
        return_deleted_object: true,
        storage: "pods",
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        has_status: false,
        has_generation: false,
        create_on_update: true,
        return_deleted_object: false,
        storage: "endpoints",
        field_labels: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        has_status: false,
        has_generation: false,
        create_on_update: true,
        return_deleted_object: false,
        storage: "events",
        field_labels: EVENT_FIELDS,
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        has_status: false,
        has_generation: true,
        create_on_update: false,
        return_deleted_object: false,
        storage: "endpointslices",
        field_labels: &["addressType"],
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        has_status: false,
        has_generation: false,
        create_on_update: true,
        return_deleted_object: false,
        storage: "leases",
        field_labels: &[],
    },
    ResourceInfo {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        has_status: false,
        has_generation: false,
        create_on_update: true,
        return_deleted_object: false,
        storage: "events",
        field_labels: EVENT_FIELDS,
    },
];

/// The API groups other than the core group, in discovery order.
pub const GROUPS: &[&str] = &["discovery.k8s.io", "coordination.k8s.io", "events.k8s.io"];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The view whose form the store keeps for `storage`.
pub fn storage_view(storage: &str) -> &'static ResourceInfo {
    RESOURCES
        .iter()
        .find(|r| r.storage == storage && !r.is_converted())
        .expect("every storage has a primary view")
}

pub fn group_served(group: &str, version: &str) -> bool {
    RESOURCES
        .iter()
        .any(|r| r.group == group && r.version == version)
}

pub fn namespaces() -> &'static ResourceInfo {
    find("", "v1", "namespaces").expect("namespaces are served")
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `APIResourceList` for one group version (`/api/v1`, `/apis/<group>/<version>`).
pub fn api_resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

fn api_group(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({
        "name": group,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// `APIGroup` for `/apis/<group>`.
pub fn api_group_doc(group: &str) -> Option<Value> {
    if !GROUPS.contains(&group) {
        return None;
    }
    let mut doc = api_group(group);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `APIGroupList` for `/apis`.
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|g| api_group(g)).collect::<Vec<_>>(),
    })
}

/// `APIVersions` for `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/version`.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-ferrolb-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    for (g, v) in gvs {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=ferrolb")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<group-version>`: operations and the minimal schemas of `openapi.rs` (for
/// `kubectl explain`). The operations tell kubectl that the server validates fields itself
/// (`fieldValidation`), so that kubectl does not validate against the schemas; PATCH operations
/// name no strategic-merge request body, so `kubectl apply` computes its patch from its built-in
/// types.
pub fn openapi_v3_group_version(group: &str, version: &str) -> Option<Value> {
    if !group_served(group, version) {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let param = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "parameters": param,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let (collection, item) = if r.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            )
        } else {
            (
                format!("{prefix}/{}", r.plural),
                format!("{prefix}/{}/{{name}}", r.plural),
            )
        };
        paths.insert(collection, json!({"post": op("post")}));
        paths.insert(item, json!({"put": op("put"), "patch": op("patch")}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (ferrolb test API server)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": super::openapi::definitions(Some((group, version)), "#/components/schemas/")},
    }))
}
