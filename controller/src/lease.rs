//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one
//! replica writes.
//!
//! Written here rather than taken from a crate: the maintained Lease crates
//! (kube-lease-manager, kubert, kube-coordinate) follow kube's major versions
//! and none had a release for kube 5 when this was written; the loop is small.
//!
//! Like client-go, a follower decides that a lease expired by its own clock:
//! the lease's resourceVersion has not changed for a whole lease duration. So
//! clock skew between replicas does not matter. A leader that cannot renew for
//! two thirds of the duration, or sees another holder, gives up; the caller then
//! exits, and the next leader starts from the Services' status.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// Held leadership. `lost` turns true when it is gone.
pub struct Leadership {
    pub lost: watch::Receiver<bool>,
    api: Api<Lease>,
    cfg: LeaseConfig,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Gives the lease up so that a follower takes over at once (graceful stop).
    pub async fn release(self) {
        self.renewer.abort();
        for _ in 0..3 {
            match step(&self.api, &self.cfg, &mut None, Step::Release).await {
                Ok(_) => {
                    info!(lease = %self.cfg.name, "released the leader lease");
                    return;
                }
                Err(e) => warn!(error = %format!("{e:#}"), "could not release the leader lease"),
            }
        }
    }
}

/// Waits until this replica holds the lease, then keeps renewing it in the background.
pub async fn acquire(client: kube::Client, cfg: LeaseConfig) -> anyhow::Result<Leadership> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed = None;
    let mut waiting_logged = false;
    loop {
        match step(&api, &cfg, &mut observed, Step::Acquire).await {
            Ok(true) => break,
            Ok(false) => {
                if !waiting_logged {
                    info!(lease = %cfg.name, identity = %cfg.identity, "another replica leads; standing by");
                    waiting_logged = true;
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "leader election attempt failed; retrying"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
    info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
    let (tx, lost) = watch::channel(false);
    let renewer = {
        let (api, cfg) = (api.clone(), cfg.clone());
        tokio::spawn(async move {
            let mut last_ok = Instant::now();
            let deadline = cfg.duration * 2 / 3;
            loop {
                tokio::time::sleep(cfg.renew_every).await;
                match step(&api, &cfg, &mut None, Step::Renew).await {
                    Ok(true) => last_ok = Instant::now(),
                    Ok(false) => {
                        warn!(lease = %cfg.name, "another replica took the leader lease");
                        break;
                    }
                    Err(e) if last_ok.elapsed() < deadline => {
                        warn!(error = %format!("{e:#}"), "could not renew the leader lease; retrying")
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "could not renew the leader lease in time");
                        break;
                    }
                }
            }
            let _ = tx.send(true);
        })
    };
    Ok(Leadership {
        lost,
        api,
        cfg,
        renewer,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Acquire,
    Renew,
    Release,
}

/// One attempt; true when this replica holds the lease afterwards (or, for
/// `Release`, no longer does).
async fn step(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<(String, Instant)>,
    what: Step,
) -> anyhow::Result<bool> {
    let now = MicroTime(Timestamp::now());
    let secs = i32::try_from(cfg.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&cfg.name).await.context("reading the lease")? else {
        if what != Step::Acquire {
            return Ok(what == Step::Release);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e).context("creating the lease"),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == cfg.identity;
    match what {
        Step::Release if !mine => return Ok(true),
        Step::Release => {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now);
        }
        Step::Renew if !mine => return Ok(false),
        Step::Renew => spec.renew_time = Some(now),
        Step::Acquire => {
            if !mine && !holder.is_empty() {
                let rv = lease.metadata.resource_version.clone().unwrap_or_default();
                let held_for =
                    Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
                match observed {
                    Some((seen, since)) if *seen == rv && since.elapsed() >= held_for => {}
                    Some((seen, _)) if *seen == rv => return Ok(false),
                    _ => {
                        *observed = Some((rv, Instant::now()));
                        return Ok(false);
                    }
                }
            }
            if !mine {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now.clone());
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(now);
        }
    }
    // resourceVersion is kept: a concurrent change makes this a 409, not a silent overwrite.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e).context("updating the lease"),
    }
}
