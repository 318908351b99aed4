//! `tower::discover::Discover` over the load balancer's endpoints (feature `tower`).
//!
//! [`LoadBalancer::discover`] turns the usable endpoints into a stream of
//! `Change::Insert(addr, service)` / `Change::Remove(addr)`, which tower's balancers
//! (`tower::balance::p2c::Balance`) and the clients built on them (tonic's
//! `Channel::balance_channel`, hyper clients behind tower) take as their set of backends.
//! Each endpoint's service is made by the caller's function. The stream follows every
//! change the load balancer publishes (so start its background sync) and ends at its
//! `shutdown()`. Passive ejection is `next()`'s: tower's balancers keep their own view of
//! load and readiness, so ejected endpoints stay in the discovered set.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tower::discover::Change;

use crate::balancer::{LoadBalancer, Shared};
use crate::select::Endpoint;

type Changed = Pin<Box<dyn Future<Output = (watch::Receiver<u64>, bool)> + Send>>;

/// The endpoints of a [`LoadBalancer`] as a [`tower::discover::Discover`] (a stream of
/// changes keyed by address). Made by [`LoadBalancer::discover`].
pub struct Discover<F, S> {
    shared: Arc<Shared>,
    make: F,
    /// The endpoints announced so far.
    known: BTreeMap<SocketAddr, Endpoint>,
    pending: VecDeque<Change<SocketAddr, S>>,
    /// `None` until the first poll compares with the current endpoints.
    rx: Option<watch::Receiver<u64>>,
    waiting: Option<Changed>,
    done: bool,
}

// No field is ever pinned: the stream is polled through `&mut self`.
impl<F, S> Unpin for Discover<F, S> {}

impl LoadBalancer {
    /// A [`tower::discover::Discover`] of the usable endpoints, `make` building the service
    /// for each endpoint that appears (e.g. a connection or a client to its address).
    ///
    /// ```no_run
    /// # async fn f(lb: ferrolb_endpoints::LoadBalancer) {
    /// use tower::{Service as _, ServiceExt as _};
    /// // Each endpoint's service answers with its own address; a real one would connect to it.
    /// let discover = lb.discover(|ep| {
    ///     let addr = ep.addr();
    ///     tower::load::PendingRequests::new(
    ///         tower::service_fn(move |_req: ()| async move { Ok::<_, std::io::Error>(addr) }),
    ///         tower::load::CompleteOnResponse::default(),
    ///     )
    /// });
    /// let mut balance = tower::balance::p2c::Balance::new(discover);
    /// let answered_by = balance.ready().await.unwrap().call(()).await.unwrap();
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn discover<F, S>(&self, make: F) -> Discover<F, S>
    where
        F: FnMut(&Endpoint) -> S,
    {
        Discover {
            shared: self.shared().clone(),
            make,
            known: BTreeMap::new(),
            pending: VecDeque::new(),
            rx: None,
            waiting: None,
            done: false,
        }
    }
}

impl<F, S> Discover<F, S>
where
    F: FnMut(&Endpoint) -> S,
{
    /// Queues the changes from what was announced to the current endpoints.
    fn diff(&mut self) {
        let current: BTreeMap<SocketAddr, Endpoint> = self
            .shared
            .current_endpoints()
            .into_iter()
            .map(|e| (e.addr(), e))
            .collect();
        let gone: Vec<SocketAddr> = self
            .known
            .keys()
            .filter(|a| !current.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            self.known.remove(&addr);
            self.pending.push_back(Change::Remove(addr));
        }
        for (addr, ep) in current {
            // An endpoint whose node or zone changed is announced again with a new service.
            if self.known.get(&addr) != Some(&ep) {
                let service = (self.make)(&ep);
                self.known.insert(addr, ep);
                self.pending.push_back(Change::Insert(addr, service));
            }
        }
    }
}

impl<F, S> futures::Stream for Discover<F, S>
where
    F: FnMut(&Endpoint) -> S,
{
    type Item = Result<Change<SocketAddr, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.rx.is_none() && this.waiting.is_none() {
                // First poll: subscribe, then announce what is there already.
                let mut rx = this.shared.subscribe();
                rx.borrow_and_update();
                this.rx = Some(rx);
                this.diff();
                continue;
            }
            if this.shared.is_shut_down() {
                this.done = true;
                continue;
            }
            let fut = this.waiting.get_or_insert_with(|| {
                let mut rx = this.rx.take().expect("a receiver when not waiting");
                Box::pin(async move {
                    let alive = rx.changed().await.is_ok();
                    (rx, alive)
                })
            });
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready((rx, alive)) => {
                    this.waiting = None;
                    this.rx = Some(rx);
                    if !alive || this.shared.is_shut_down() {
                        this.done = true;
                    } else {
                        this.diff();
                    }
                }
            }
        }
    }
}

impl<F, S> std::fmt::Debug for Discover<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discover")
            .field("known", &self.known.keys().collect::<Vec<_>>())
            .field("done", &self.done)
            .finish()
    }
}

// Compiled with or without the feature (tower is a dev-dependency too), so that the
// workspace's plain `cargo test` runs them.
#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    use serde_json::json;
    use tower::discover::Change;
    use tower::{Service as _, ServiceExt as _};

    use crate::{Config, LoadBalancer};

    async fn write_slice(api: &Api<EndpointSlice>, ips: &[&str]) {
        let mut obj: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-a", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        match api.get_opt("web-a").await.unwrap() {
            Some(old) => {
                obj.metadata.resource_version = old.metadata.resource_version;
                api.replace("web-a", &PostParams::default(), &obj)
                    .await
                    .unwrap();
            }
            None => {
                api.create(&PostParams::default(), &obj).await.unwrap();
            }
        }
    }

    async fn setup(ips: &[&str]) -> (ferrolb_tests::TestCluster, Api<EndpointSlice>, LoadBalancer) {
        let cluster = ferrolb_tests::TestCluster::in_process().await.unwrap();
        let client = cluster.client.clone();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default");
        write_slice(&slices, ips).await;
        let lb = LoadBalancer::new(client, Config::new("web").namespace("default"));
        lb.sync().await.unwrap();
        lb.start_background_sync().unwrap();
        (cluster, slices, lb)
    }

    fn key<S>(c: &Change<std::net::SocketAddr, S>) -> String {
        match c {
            Change::Insert(a, _) => format!("+{a}"),
            Change::Remove(a) => format!("-{a}"),
        }
    }

    async fn next_change<S>(
        d: &mut crate::Discover<impl FnMut(&crate::Endpoint) -> S, S>,
    ) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(60), d.next())
            .await
            .expect("a change within 60 s")
            .map(|c| key(&c.unwrap()))
    }

    #[tokio::test]
    async fn discover_follows_the_endpoints() {
        let (_cluster, slices, lb) = setup(&["10.0.0.1", "10.0.0.2"]).await;
        let mut d = lb.discover(|ep| ep.addr());
        let mut first = vec![
            next_change(&mut d).await.unwrap(),
            next_change(&mut d).await.unwrap(),
        ];
        first.sort();
        assert_eq!(first, ["+10.0.0.1:8080", "+10.0.0.2:8080"]);
        write_slice(&slices, &["10.0.0.2", "10.0.0.3"]).await;
        let mut changes = HashSet::new();
        while changes.len() < 2 {
            changes.insert(next_change(&mut d).await.unwrap());
        }
        assert_eq!(
            changes,
            HashSet::from(["-10.0.0.1:8080".to_owned(), "+10.0.0.3:8080".to_owned()])
        );
        lb.shutdown().await;
        assert_eq!(
            next_change(&mut d).await,
            None,
            "the stream ends at shutdown"
        );
    }

    /// tower's power-of-two-choices balancer over the discovered endpoints: every endpoint
    /// gets requests, and a new endpoint joins.
    #[tokio::test]
    async fn tower_p2c_balances_over_discovered_endpoints() {
        let (_cluster, slices, lb) = setup(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]).await;
        let discover = lb.discover(|ep| {
            let addr = ep.addr();
            tower::load::PendingRequests::new(
                tower::service_fn(move |_req: ()| async move {
                    Ok::<_, std::convert::Infallible>(addr)
                }),
                tower::load::CompleteOnResponse::default(),
            )
        });
        let mut balance = tower::balance::p2c::Balance::new(discover);
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < 3 {
            assert!(Instant::now() < deadline, "saw only {seen:?}");
            seen.insert(balance.ready().await.unwrap().call(()).await.unwrap());
        }
        write_slice(&slices, &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]).await;
        let new: std::net::SocketAddr = "10.0.0.4:8080".parse().unwrap();
        while !seen.contains(&new) {
            assert!(Instant::now() < deadline, "the new endpoint never answered");
            seen.insert(balance.ready().await.unwrap().call(()).await.unwrap());
            tokio::task::yield_now().await;
        }
        lb.shutdown().await;
    }
}
