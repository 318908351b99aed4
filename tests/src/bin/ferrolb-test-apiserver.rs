//! `ferrolb-test-apiserver`: the in-memory test API server as a process, for kubectl and for
//! running the controller and speaker by hand. See docs/test-apiserver.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
    }
    // One line on stdout, so that scripts can read the URL.
    println!("{}", server.url());
    tokio::signal::ctrl_c().await?;
    drop(server);
    Ok(())
}
