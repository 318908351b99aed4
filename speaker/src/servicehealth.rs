//! The `healthCheckNodePort` check of `Local` Services: kube-proxy answers
//! that port on every node with 200 while it has a local endpoint for the
//! Service and 503 when it has none. The EndpointSlices decide which nodes
//! may own a `Local` Service's address; this check catches the node whose
//! kube-proxy disagrees (rules not programmed, a broken sync), which would
//! drop the traffic it attracts.
//!
//! The speaker probes, on its own node's first InternalIP (where kube-proxy
//! listens: its node-port addresses, the node's primary IPs by default), the
//! port of each `Local` Service it owns, and of each it withdrew from (to
//! see it recover). A Service whose
//! check fails for the threshold (500 ms, `--kube-proxy-health-threshold`) is
//! withdrawn: the speaker lists it in its own Pod's annotation
//! [`WITHDRAWN_ANNOTATION`], every speaker reads it from the Pod watch it
//! already has, and the election passes this node over for that Service
//! (`core::election`, `NodeInfo::withdrawn`). Back after the check has passed
//! for the recovery time (2 s). A port nothing listens on says nothing (a
//! proxy that does not serve it, or not yet). The decisions are
//! `core::datapath::ServiceGates`; this is the probing and the Pod write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_core::ServiceKey;
use ferrolb_core::datapath::ServiceGates;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The annotation on a speaker's Pod listing the `Local` Services (as
/// `namespace/name`, comma-separated) its node withdrew from.
pub const WITHDRAWN_ANNOTATION: &str = "ferrolb.io/withdrawn-services";

/// Where and how to check.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This speaker's Pod (namespace, name): where the withdrawals are written.
    pub pod: (String, String),
    pub interval: Duration,
    pub down_after: Duration,
    pub up_after: Duration,
}

/// The Services to probe and where: the node's address and the Service's
/// `healthCheckNodePort`.
pub type Targets = BTreeMap<ServiceKey, SocketAddr>;

/// Starts the checks; the daemon sends the targets after every recompute.
pub fn start(client: kube::Client, s: Settings, metrics: Arc<Metrics>) -> watch::Sender<Targets> {
    let (tx, rx) = watch::channel(Targets::new());
    tokio::spawn(run(client, s, rx, metrics));
    tx
}

async fn run(
    client: kube::Client,
    s: Settings,
    targets: watch::Receiver<Targets>,
    metrics: Arc<Metrics>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &s.pod.0);
    let mut gates: ServiceGates<ServiceKey> = ServiceGates::new(s.down_after, s.up_after);
    // What the Pod shows, as far as this process wrote it. `None`: not yet
    // written: a restarted container clears what an earlier one left.
    let mut published: Option<BTreeSet<ServiceKey>> = None;
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(pod = %format!("{}/{}", s.pod.0, s.pod.1), "checking the healthCheckNodePort of the Local Services this node owns");
    loop {
        tick.tick().await;
        let now = targets.borrow().clone();
        let probes = now.iter().map(|(k, addr)| {
            let timeout = s.interval;
            async move { (k.clone(), probe(*addr, timeout).await) }
        });
        let results: BTreeMap<ServiceKey, Option<bool>> = futures::future::join_all(probes)
            .await
            .into_iter()
            .collect();
        if gates.observe(crate::clock::boottime(), &results) {
            let w = gates.withdrawn();
            metrics.withdrawn_services.set(w.len() as i64);
            let previous = published.clone().unwrap_or_default();
            for k in w.difference(&previous) {
                warn!(service = %k, check = ?now.get(k), after = ?s.down_after,
                    "the Service's healthCheckNodePort says this node has no local endpoint: withdrawing from it");
            }
            for k in previous.difference(&w) {
                info!(service = %k, "the Service's healthCheckNodePort passes again (or it is no longer checked): no longer withdrawn");
            }
        }
        let want = gates.withdrawn();
        if published.as_ref() != Some(&want) {
            let value = (!want.is_empty()).then(|| {
                want.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let patch = json!({"metadata": {"annotations": {WITHDRAWN_ANNOTATION: value}}});
            match pods
                .patch(&s.pod.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => published = Some(want),
                Err(e) => {
                    metrics.api_error("write_withdrawn");
                    warn!(error = %e, "could not write this node's withdrawn Services to its Pod; retrying");
                }
            }
        }
    }
}

/// GET / on `addr`: `Some(true)` for 2xx, `Some(false)` for any other
/// answer or none within `timeout`, `None` when nothing listens.
async fn probe(addr: SocketAddr, timeout: Duration) -> Option<bool> {
    let attempt = async {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return None,
            Err(_) => return Some(false),
        };
        if s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
            return Some(false);
        }
        let mut head = [0u8; 64];
        let n = s.read(&mut head).await.unwrap_or(0);
        let line = std::str::from_utf8(&head[..n]).unwrap_or_default();
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Some((200..300).contains(&code))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Some(false))
}

/// The Services each node withdrew from, from the speaker Pods' annotation
/// (Pods being deleted included: their node still runs them).
pub fn withdrawn_by_node<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
) -> BTreeMap<String, BTreeSet<ServiceKey>> {
    let mut out: BTreeMap<String, BTreeSet<ServiceKey>> = BTreeMap::new();
    for p in pods {
        let (Some(node), Some(list)) = (
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(WITHDRAWN_ANNOTATION)),
        ) else {
            continue;
        };
        let keys = list.split(',').filter_map(|k| {
            let (ns, name) = k.trim().split_once('/')?;
            (!ns.is_empty() && !name.is_empty()).then(|| ServiceKey::new(ns, name))
        });
        out.entry(node).or_default().extend(keys);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawals_are_read_per_node_from_the_pod_annotation() {
        let pod = |name: &str, node: &str, list: Option<&str>| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": list.map(|l| json!({WITHDRAWN_ANNOTATION: l}))},
                "spec": {"nodeName": node, "containers": []}
            }))
            .unwrap()
        };
        let pods = [
            pod("a", "node-1", Some("ns/web, ns/api")),
            pod("b", "node-2", None),
            pod("c", "node-3", Some("garbage,,/x,ns/")),
        ];
        let w = withdrawn_by_node(pods.iter());
        assert_eq!(
            w["node-1"],
            BTreeSet::from([ServiceKey::new("ns", "web"), ServiceKey::new("ns", "api")])
        );
        assert!(!w.contains_key("node-2"));
        assert!(w["node-3"].is_empty(), "malformed entries are skipped");
    }

    #[tokio::test]
    async fn a_closed_port_says_nothing_and_an_answer_is_judged_by_its_code() {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(probe(local(1), Duration::from_millis(200)).await, None);
        for (status, want) in [("200 OK", true), ("503 Service Unavailable", false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let reply = format!("HTTP/1.1 {status}\r\n\r\n");
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            });
            assert_eq!(
                probe(local(port), Duration::from_secs(2)).await,
                Some(want),
                "{status}"
            );
        }
    }
}
