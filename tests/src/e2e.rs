//! The cluster every end-to-end test runs against.
//!
//! With `FERROLB_E2E_KUBECONFIG` naming a kubeconfig, tests use that (real) cluster; otherwise
//! each test starts its own in-process [`TestApiServer`], so the same suite runs both ways.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::apiserver::TestApiServer;

/// The environment variable naming the kubeconfig of a real cluster for end-to-end tests.
pub const E2E_KUBECONFIG_ENV: &str = "FERROLB_E2E_KUBECONFIG";

/// A cluster for one test: a client, a kubeconfig file for processes the test starts
/// (controller, speaker, kubectl), and the test API server when there is no real cluster.
pub struct TestCluster {
    pub client: kube::Client,
    /// `None` for a real cluster: fault injection is only possible against the test API server.
    pub server: Option<TestApiServer>,
    kubeconfig: PathBuf,
    /// Removed on drop (only the file written for an in-process server).
    owned_kubeconfig: bool,
}

impl TestCluster {
    /// The real cluster named by `FERROLB_E2E_KUBECONFIG`, or else a fresh test API server.
    pub async fn start() -> anyhow::Result<Self> {
        match std::env::var_os(E2E_KUBECONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Self::from_kubeconfig(Path::new(&path)).await,
            None => Self::in_process().await,
        }
    }

    /// A fresh in-process test API server, whatever the environment says.
    pub async fn in_process() -> anyhow::Result<Self> {
        let server = TestApiServer::start().await?;
        let kubeconfig = std::env::temp_dir().join(format!(
            "ferrolb-test-kubeconfig-{}-{}",
            std::process::id(),
            server.addr().port()
        ));
        server
            .write_kubeconfig(&kubeconfig)
            .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
        Ok(TestCluster {
            client: server.client()?,
            server: Some(server),
            kubeconfig,
            owned_kubeconfig: true,
        })
    }

    /// The cluster of a kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?;
        Ok(TestCluster {
            client: kube::Client::try_from(config)?,
            server: None,
            kubeconfig: path.to_path_buf(),
            owned_kubeconfig: false,
        })
    }

    /// A kubeconfig file for this cluster, for `KUBECONFIG=` of processes the test starts.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The test API server, for fault injection; `None` against a real cluster (a test that
    /// needs faults should skip itself with a message then).
    pub fn server(&self) -> Option<&TestApiServer> {
        self.server.as_ref()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.owned_kubeconfig {
            let _ = std::fs::remove_file(&self.kubeconfig);
        }
    }
}
