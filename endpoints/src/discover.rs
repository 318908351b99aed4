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
    /// use tower::ServiceExt as _;
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
