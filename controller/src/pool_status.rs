//! The `status` of MetalLB's IPAddressPool objects, as MetalLB v0.15+
//! writes it: `assignedIPv4`, `assignedIPv6`, `availableIPv4` and
//! `availableIPv6` (counts; a shared address counts once, and addresses a
//! pool avoids, `avoidBuggyIPs`, are not available). Written in the
//! background once the counts have held for [`SETTLE`], one patch per pool
//! whose status (as the watch shows it) differs, so a burst of assignments
//! costs one write per pool, and a status someone else changed, or a stale
//! one from an earlier leader, is put right. The task stops with the writer
//! (when leadership is lost).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_core::allocator::PoolStats;
use ferrolb_runtime::metallb;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::metrics::Metrics;

pub const SETTLE: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(5);

/// The status MetalLB writes for a pool (counts above `i64::MAX`, a huge
/// IPv6 range, are written as `i64::MAX`).
pub fn status_of(p: &PoolStats) -> Value {
    let n = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
    json!({
        "assignedIPv4": n(p.in_use_v4),
        "assignedIPv6": n(p.in_use_v6),
        "availableIPv4": n(p.total_v4.saturating_sub(p.in_use_v4)),
        "availableIPv6": n(p.total_v6.saturating_sub(p.in_use_v6)),
    })
}

/// Per pool (by object name): the status wanted, and the one the watch shows.
pub type Wanted = BTreeMap<String, (Value, Option<Value>)>;

pub struct PoolStatusWriter {
    tx: watch::Sender<Wanted>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PoolStatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PoolStatusWriter {
    /// `namespace`: where the IPAddressPool objects are.
    pub fn start(client: kube::Client, namespace: &str, metrics: Arc<Metrics>) -> PoolStatusWriter {
        let (tx, rx) = watch::channel(BTreeMap::new());
        let api: Api<DynamicObject> =
            Api::namespaced_with(client, namespace, &metallb::resource("IPAddressPool"));
        let task = tokio::spawn(worker(api, metrics, rx));
        PoolStatusWriter { tx, task }
    }

    /// The status each pool should show, and what it shows.
    pub fn set(&self, wanted: Wanted) {
        self.tx.send_if_modified(|w| {
            let changed = *w != wanted;
            *w = wanted;
            changed
        });
    }
}

async fn worker(api: Api<DynamicObject>, metrics: Arc<Metrics>, mut rx: watch::Receiver<Wanted>) {
    let mut retry = false;
    loop {
        let changed = if retry {
            tokio::time::timeout(RETRY, rx.changed())
                .await
                .unwrap_or(Ok(()))
        } else {
            rx.changed().await
        };
        if changed.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        let wanted = rx.borrow_and_update().clone();
        retry = false;
        for (name, (status, shown)) in &wanted {
            if shown.as_ref() == Some(status) {
                continue;
            }
            match api
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
            {
                Ok(_) => debug!(pool = %name, "IPAddressPool status written"),
                // Deleted meanwhile: the next config says so.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    metrics.api_error("write_pool_status");
                    warn!(pool = %name, error = %e, "writing the IPAddressPool status failed; tried again in 5 s");
                    retry = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_family_as_metallb_writes_them() {
        let p = PoolStats {
            name: "a".into(),
            total: 20,
            in_use: 3,
            total_v4: 16,
            total_v6: 4,
            in_use_v4: 2,
            in_use_v6: 1,
        };
        assert_eq!(
            status_of(&p),
            json!({"assignedIPv4": 2, "assignedIPv6": 1, "availableIPv4": 14, "availableIPv6": 3})
        );
        let huge = PoolStats {
            total_v6: u128::MAX,
            ..p
        };
        assert_eq!(status_of(&huge)["availableIPv6"], json!(i64::MAX));
    }
}
