//! `ferrolb-test-apiserver`: the in-memory test API server as a process, for kubectl and for
//! running the controller and speaker by hand. See docs/test-apiserver.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ferrolb_tests::apiserver::{ServerOptions, TestApiServer};

#[derive(Parser, Debug)]
#[command(about = "In-memory Kubernetes API server for ferrolb tests (plain HTTP, no auth)")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(
        long,
        default_value = "127.0.0.1:0",
        env = "FERROLB_TEST_APISERVER_LISTEN"
    )]
    listen: SocketAddr,
    /// Write a kubeconfig for the server to this file once it listens.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Changes kept per resource for resuming watches; older versions get 410 Expired.
    #[arg(long, default_value_t = 100_000)]
    history_limit: usize,
    /// Seconds between watch bookmarks (for watches that ask for them).
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// Enforce the RBAC objects (Role, ClusterRole and bindings) of this YAML file on requests
    /// that impersonate a service account; may be given several times. `GET /admin/rbac`
    /// reports what was denied and which permissions went unused.
    #[arg(long)]
    enforce_rbac: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = TestApiServer::start_with(ServerOptions {
        listen: args.listen,
        history_limit: args.history_limit,
        bookmark_interval: Duration::from_secs(args.bookmark_interval),
    })
    .await?;
    if !args.enforce_rbac.is_empty() {
        let mut docs: Vec<serde_json::Value> = Vec::new();
        for f in &args.enforce_rbac {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let more: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
                .with_context(|| format!("parsing {}", f.display()))?;
            docs.extend(more);
        }
        server.enforce_rbac(ferrolb_tests::apiserver::rbac::Rbac::from_documents(&docs)?);
    }
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
    }
    // One line on stdout, so that scripts can read the URL.
    println!("{}", server.url());
    tokio::signal::ctrl_c().await?;
    drop(server);
    Ok(())
}
