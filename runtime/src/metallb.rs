//! Reading MetalLB's `metallb.io/v1beta1` objects from the API server, the
//! config source `crds` (docs/architecture.md, section 3): a watch of the
//! IPAddressPool and L2Advertisement objects of one namespace, turned into the
//! text [`ferrolb_core::sources::read`] parses. Only what configures is kept
//! (apiVersion, kind, name, namespace, labels, spec): a status write or a
//! resync gives the same text, so it is no change to the config gate.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

/// The group and version read.
pub const GROUP: &str = "metallb.io";
pub const VERSION: &str = "v1beta1";

/// The kinds that configure layer 2, in the order their text lists them.
pub const CONFIG_KINDS: [&str; 2] = ["IPAddressPool", "L2Advertisement"];

/// MetalLB's BGP kinds: not supported; their presence is said once.
pub const BGP_KINDS: [&str; 4] = ["BGPPeer", "BGPAdvertisement", "BFDProfile", "Community"];

/// The API resource of a `metallb.io/v1beta1` kind.
pub fn resource(kind: &str) -> ApiResource {
    resource_at(kind, VERSION)
}

fn resource_at(kind: &str, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, version, kind), &plural(kind))
}

/// The version a BGP kind is listed at: MetalLB stores BGPPeer as v1beta2
/// (its v1beta1 is served only through MetalLB's conversion webhook).
fn bgp_version(kind: &str) -> &'static str {
    if kind == "BGPPeer" {
        "v1beta2"
    } else {
        VERSION
    }
}

/// The resource name of a kind, as MetalLB's CRDs define it.
fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

/// Whether a watch failed because the kind is not served (its CRD is not
/// installed).
pub fn not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(s) => s.code == 404,
            _ => false,
        },
        watcher::Error::WatchError(s) => s.code == 404,
        watcher::Error::NoResourceVersion => false,
    }
}

/// What one of the two watches reported.
pub struct Update {
    /// Index into [`CONFIG_KINDS`].
    pub kind: usize,
    /// `Ok(true)`: the listing is complete.
    pub result: Result<bool, watcher::Error>,
}

/// The IPAddressPool and L2Advertisement objects of a namespace, as watched.
pub struct Objects {
    namespace: String,
    stores: Vec<Store<DynamicObject>>,
    synced: [bool; 2],
    /// Why a kind cannot be read (its CRD is missing), while that lasts.
    missing: [Option<String>; 2],
}

/// Starts watching the layer-2 kinds in `namespace`; feed every item of the
/// stream to [`Objects::note`].
pub fn watch(client: kube::Client, namespace: &str) -> (Objects, BoxStream<'static, Update>) {
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for (i, kind) in CONFIG_KINDS.iter().enumerate() {
        let ar = resource(kind);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let writer = reflector::store::Writer::new(ar);
        stores.push(writer.as_reader());
        let stream = reflector::reflector(
            writer,
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|o| o.metadata.managed_fields = None),
        )
        .map_ok(|e| matches!(e, Event::InitDone))
        .map(move |result| Update { kind: i, result })
        .boxed();
        streams.push(stream);
    }
    (
        Objects {
            namespace: namespace.to_owned(),
            stores,
            synced: [false; 2],
            missing: [None, None],
        },
        futures::stream::select_all(streams).boxed(),
    )
}

impl Objects {
    /// Takes in one update; returns a message worth a log line when a kind
    /// became unreadable or readable again, and `Err` with the watch error
    /// otherwise (the caller logs and counts it).
    pub fn note(&mut self, u: Update) -> Result<Option<String>, watcher::Error> {
        let kind = CONFIG_KINDS[u.kind];
        match u.result {
            Ok(done) => {
                if done {
                    self.synced[u.kind] = true;
                }
                if self.synced[u.kind] && self.missing[u.kind].take().is_some() {
                    return Ok(Some(format!("{kind} objects can be read again")));
                }
                Ok(None)
            }
            Err(e) if not_installed(&e) => {
                if self.missing[u.kind].is_some() {
                    return Ok(None);
                }
                let why = format!(
                    "the {kind} kind ({GROUP}/{VERSION}) is not served: its CRD is not installed (add the component manifests/components/metallb-crds to your kustomization, or keep MetalLB's CRDs)"
                );
                self.missing[u.kind] = Some(why.clone());
                Ok(Some(why))
            }
            Err(e) => Err(e),
        }
    }

    /// The objects as the text [`ferrolb_core::sources::read`] parses, or
    /// why they cannot be read; `None` until both kinds are listed (or known
    /// not to be served).
    pub fn input(&self) -> Option<Result<String, String>> {
        let ready = (0..2).all(|i| self.synced[i] || self.missing[i].is_some());
        if !ready {
            return None;
        }
        if let Some(why) = self.missing.iter().flatten().next() {
            return Some(Err(why.clone()));
        }
        let mut items: Vec<Value> = Vec::new();
        for (i, store) in self.stores.iter().enumerate() {
            let mut objs: Vec<(String, Value)> = store
                .state()
                .iter()
                .map(|o| {
                    (
                        o.metadata.name.clone().unwrap_or_default(),
                        config_part(CONFIG_KINDS[i], o),
                    )
                })
                .collect();
            objs.sort_by(|a, b| a.0.cmp(&b.0));
            items.extend(objs.into_iter().map(|(_, v)| v));
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        Some(Ok(
            serde_json::to_string_pretty(&list).expect("JSON values serialise")
        ))
    }

    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// An object by kind and name, as the watch holds it (for Events on it).
    pub fn get(&self, kind: &str, name: &str) -> Option<std::sync::Arc<DynamicObject>> {
        let i = CONFIG_KINDS.iter().position(|k| *k == kind)?;
        self.stores[i]
            .state()
            .into_iter()
            .find(|o| o.metadata.name.as_deref() == Some(name))
    }

    /// The IPAddressPool objects held.
    pub fn pools(&self) -> Vec<std::sync::Arc<DynamicObject>> {
        self.stores[0].state()
    }
}

/// What of an object configures: apiVersion, kind, name, namespace, labels
/// and spec (the rest is the API server's or a status).
fn config_part(kind: &str, o: &DynamicObject) -> Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), json!(o.metadata.name));
    metadata.insert("namespace".into(), json!(o.metadata.namespace));
    if let Some(labels) = &o.metadata.labels {
        metadata.insert("labels".into(), json!(labels));
    }
    let mut obj = serde_json::Map::new();
    obj.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
    obj.insert("kind".into(), json!(kind));
    obj.insert("metadata".into(), Value::Object(metadata));
    if let Some(spec) = o.data.get("spec") {
        obj.insert("spec".into(), spec.clone());
    }
    Value::Object(obj)
}

/// The BGP objects in `namespace` (`kind namespace/name`), for the notice
/// that they are ignored; a kind whose CRD is not installed has none.
pub async fn bgp_objects(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<(String, DynamicObject)>, kube::Error> {
    let mut out = Vec::new();
    for kind in BGP_KINDS {
        let ar = resource_at(kind, bgp_version(kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        match api.list(&ListParams::default()).await {
            Ok(list) => out.extend(list.items.into_iter().map(|o| (kind.to_owned(), o))),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::runtime::watcher;

    /// The API server answers a kind it does not serve with a bare 404
    /// (`404 page not found`, no Status reason): that is "not installed".
    #[test]
    fn a_bare_404_means_not_installed() {
        let bare = || {
            kube::Error::Api(
                Status::failure("404 page not found", "")
                    .with_code(404)
                    .boxed(),
            )
        };
        assert!(super::not_installed(&watcher::Error::InitialListFailed(
            bare()
        )));
        assert!(super::not_installed(&watcher::Error::WatchFailed(bare())));
        let forbidden = kube::Error::Api(Status::failure("no", "Forbidden").with_code(403).boxed());
        assert!(!super::not_installed(&watcher::Error::InitialListFailed(
            forbidden
        )));
    }

    #[test]
    fn plurals_are_those_of_metallbs_crds() {
        let got: Vec<String> = [
            "IPAddressPool",
            "L2Advertisement",
            "ServiceL2Status",
            "BGPPeer",
            "BFDProfile",
            "Community",
        ]
        .iter()
        .map(|k| super::resource(k).plural)
        .collect();
        assert_eq!(
            got,
            [
                "ipaddresspools",
                "l2advertisements",
                "servicel2statuses",
                "bgppeers",
                "bfdprofiles",
                "communities"
            ]
        );
    }
}
