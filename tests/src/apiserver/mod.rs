//! An in-memory Kubernetes API server over plain HTTP, for tests.
//!
//! kube-rs clients and `kubectl` talk to it as to a real API server: discovery, list, watch, get,
//! create, update, patch, delete, the status subresource, Service defaulting. Tests inject faults
//! through [`TestApiServer`] (or over HTTP, see `docs/test-apiserver.md`).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use ferrolb_tests::apiserver::{Contents, TestApiServer};
//! let server = TestApiServer::start().await?;
//! let client = server.client()?;
//! server.close_watches();          // every open watch ends
//! server.fail_next_requests(3, 500);
//! server.restart(Contents::Keep).await?;
//! # Ok(()) }
//! ```

pub mod convert;
mod http;
mod openapi;
pub mod patch;
mod protobuf;
pub mod rbac;
pub mod resources;
pub mod selectors;
pub mod services;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use store::Store;

/// How the server starts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to listen on; port 0 picks a free one. Only loopback makes sense for tests.
    pub listen: SocketAddr,
    /// Changes kept per resource for resuming watches; older versions get `410 Expired`.
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 100_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// What a restart does with the stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// Objects and versions survive, like an API server restart over the same etcd.
    Keep,
    /// Everything is dropped, like a new cluster; versions keep counting up and watches from
    /// any earlier version get `410 Expired`, so clients relist.
    Drop,
}

/// Faults the server injects into its answers.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// (status code, how many more requests get it)
    fail: Mutex<Option<(u16, u32)>>,
    /// (status code, n): every n-th request gets the code, until turned off.
    every: Mutex<Option<(u16, u64)>>,
    counted: AtomicU64,
    delay_ms: AtomicU64,
    /// Writes are applied at once, their answers sent this much later: the
    /// watch shows a change before its writer hears it landed.
    answer_delay_ms: AtomicU64,
    /// How many answers were injected failures.
    injected: AtomicU64,
}

impl Faults {
    fn take_failure(&self) -> Option<u16> {
        // A steady ratio: every n-th API request fails, whoever sends it.
        if let Some((code, every)) = *lock(&self.every) {
            let seen = self.counted.fetch_add(1, Ordering::SeqCst) + 1;
            if every > 0 && seen.is_multiple_of(every) {
                self.injected.fetch_add(1, Ordering::SeqCst);
                return Some(code);
            }
        }
        let mut f = lock(&self.fail);
        match &mut *f {
            Some((code, n)) if *n > 0 => {
                *n -= 1;
                let code = *code;
                self.injected.fetch_add(1, Ordering::SeqCst);
                if *n == 0 {
                    *f = None;
                }
                Some(code)
            }
            _ => None,
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    fn answer_delay(&self) -> Duration {
        Duration::from_millis(self.answer_delay_ms.load(Ordering::Relaxed))
    }
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion; watches wait on it.
    changed: watch::Sender<u64>,
    /// Bumped to end every open watch.
    close_watches: watch::Sender<u64>,
    faults: Faults,
    opts: ServerOptions,
    addr: Mutex<SocketAddr>,
    serving: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    open_watches: AtomicUsize,
    /// RBAC enforced on impersonated requests, once a test asks for it.
    rbac: Mutex<Option<Arc<rbac::Rbac>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the store consistent (every change is applied at
    // once at the end), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Wakes watches after a change.
    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }

    fn addr(&self) -> SocketAddr {
        *lock(&self.addr)
    }

    async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }

    /// Starts listening (on the current address, or `opts.listen` the first time).
    async fn start_listening(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut serving = self.serving.lock().await;
        if serving.is_some() {
            return Ok(());
        }
        let addr = self.addr();
        let listener = Self::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        *lock(&self.addr) = listener.local_addr()?;
        *serving = Some(tokio::spawn(http::serve(listener, self.clone())));
        Ok(())
    }

    /// Stops listening and drops every connection (and with them every watch).
    async fn stop_listening(&self) {
        let task = self.serving.lock().await.take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.close_watches.send_modify(|n| *n += 1);
    }

    async fn restart(self: &Arc<Self>, contents: Contents, down: Duration) -> anyhow::Result<()> {
        self.stop_listening().await;
        if contents == Contents::Drop {
            let rv = {
                let mut store = self.store();
                let rv = store.resource_version();
                *store = Store::starting_at(self.opts.history_limit, rv);
                store.resource_version()
            };
            self.notify(rv);
        }
        tokio::time::sleep(down).await;
        self.start_listening().await
    }
}

/// A running test API server. Dropping it stops it.
pub struct TestApiServer {
    shared: Arc<Shared>,
}

impl TestApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(opts: ServerOptions) -> anyhow::Result<Self> {
        let store = Store::new(opts.history_limit);
        let (changed, _) = watch::channel(store.resource_version());
        let (close_watches, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changed,
            close_watches,
            faults: Faults::default(),
            addr: Mutex::new(opts.listen),
            opts,
            serving: tokio::sync::Mutex::new(None),
            open_watches: AtomicUsize::new(0),
            rbac: Mutex::new(None),
        });
        shared.start_listening().await?;
        Ok(TestApiServer { shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A kubeconfig (JSON, which is valid YAML) for this server, context `ferrolb-test`.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A kube client for this server (default namespace `default`).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(self.url().parse()?);
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(295));
        Ok(kube::Client::try_from(config)?)
    }

    /// Ends every open watch now (the connection of each ends cleanly, as when an API server
    /// instance goes away behind a load balancer).
    pub fn close_watches(&self) {
        self.shared.close_watches.send_modify(|n| *n += 1);
    }

    /// Answers the next `n` API requests with `code` (500 InternalError, 429 TooManyRequests
    /// with `Retry-After: 1`, or any other 4xx/5xx) as a Status object.
    pub fn fail_next_requests(&self, n: u32, code: u16) {
        *lock(&self.shared.faults.fail) = (n > 0).then_some((code, n));
    }

    /// From now on, requests that impersonate a service account (header
    /// `Impersonate-User`, as kube-rs sends with `KUBE_RS_DEBUG_IMPERSONATE_USER`)
    /// are authorised against `policy`; denied ones get `403 Forbidden`. The
    /// returned handle tells what was denied and which grants went unused.
    pub fn enforce_rbac(&self, policy: rbac::Rbac) -> Arc<rbac::Rbac> {
        let policy = Arc::new(policy);
        *lock(&self.shared.rbac) = Some(policy.clone());
        policy
    }

    /// Answers every `n`-th API request with `code` from now on (`n` = 0 turns it off):
    /// a steady failure ratio of 1/n, however busy or idle the clients are.
    pub fn fail_every(&self, n: u64, code: u16) {
        *lock(&self.shared.faults.every) = (n > 0).then_some((code, n));
    }

    /// How many answers so far were injected failures (clients may retry 429/503/504 on their
    /// own: kube-rs does, up to 3 times).
    pub fn injected_failures(&self) -> u64 {
        self.shared.faults.injected.load(Ordering::SeqCst)
    }

    /// Delays every API answer by `delay` (zero turns it off).
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared
            .faults
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Forgets the watch history: a watch from any version before now gets `410 Expired`.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Stops listening and drops every connection. Contents stay until [`Self::restart`].
    pub async fn stop(&self) {
        self.shared.stop_listening().await;
    }

    /// Stops (if running) and starts again on the same address, keeping or dropping contents.
    pub async fn restart(&self, contents: Contents) -> anyhow::Result<()> {
        self.shared.restart(contents, Duration::ZERO).await
    }

    /// Number of watches being served now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Direct access to the store, for assertions and bulk setup without HTTP. Watches see
    /// changes made here once [`Self::notify_watches`] is called.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut self.shared.store());
        let rv = self.resource_version();
        self.shared.notify(rv);
        out
    }

    /// Wakes watches after changes made through [`Self::with_store`].
    pub fn notify_watches(&self) {
        let rv = self.resource_version();
        self.shared.notify(rv);
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Ok(mut serving) = self.shared.serving.try_lock()
            && let Some(task) = serving.take()
        {
            task.abort();
        }
        self.shared.close_watches.send_modify(|n| *n += 1);
    }
}

/// A kubeconfig text for a server at `url`, without credentials.
pub fn kubeconfig_for(url: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ferrolb-test", "cluster": {"server": url}}],
        "users": [{"name": "ferrolb-test", "user": {}}],
        "contexts": [{"name": "ferrolb-test", "context": {"cluster": "ferrolb-test", "user": "ferrolb-test", "namespace": "default"}}],
        "current-context": "ferrolb-test",
        "preferences": {},
    });
    serde_json::to_string_pretty(&doc).expect("JSON serializes")
}
