//! The lab's node agent (the stand-in for kubelet and containers) and its
//! echo backend; see docs/lab-agent.md.
//!
//! ```text
//! ip netns exec NODE-NS ferrolb-node-agent run --node node-1 --kubeconfig KC \
//!     --internal-ip 192.0.2.11 --pod-range 192.0.2.128/29
//! ferrolb-node-agent echo --listen 192.0.2.128:8080 --pod NAME --node node-1
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferrolb_tests::agent::{self, AgentConfig, PodRange};
use ferrolb_tests::podexec::ImageMapping;

#[derive(Parser)]
#[command(about = "The ferrolb lab's node agent: registers a Node and runs lab-echo Pods")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent for one node (inside that node's network namespace).
    Run {
        /// The Node name.
        #[arg(long)]
        node: String,
        /// A kubeconfig allowed to write Nodes, Leases and Pods.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// The node's InternalIP (repeat for dual-stack, primary first).
        #[arg(long = "internal-ip", required = true)]
        internal_ips: Vec<IpAddr>,
        /// A range the Pod IPs come from, one per family (e.g. 192.0.2.128/29).
        #[arg(long = "pod-range", required = true)]
        pod_ranges: Vec<PodRange>,
        /// The interface the Pod IPs are added to.
        #[arg(long, default_value = "eth0")]
        interface: String,
        /// Run Pods of this image (any tag) as processes: each container's
        /// command is DIR/<file name of command[0]> (ferrolb's own image).
        #[arg(long = "run-image", value_name = "IMAGE=DIR")]
        images: Vec<ImageMapping>,
        /// Give each non-hostNetwork process Pod a network namespace named
        /// PREFIX-<uid> (without it, such Pods are refused).
        #[arg(long)]
        pod_netns_prefix: Option<String>,
        /// Where process Pods' logs and kubeconfigs go.
        #[arg(long, default_value = ".")]
        state_dir: PathBuf,
    },
    /// The lab-echo backend: answers every HTTP request with the Pod and node names.
    Echo {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        node: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Plain text in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // One thread: the echo processes die with the thread that started them
    // (PR_SET_PDEATHSIG), which must live as long as the agent.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Args::parse().cmd {
        Cmd::Run {
            node,
            kubeconfig,
            internal_ips,
            pod_ranges,
            interface,
            images,
            pod_netns_prefix,
            state_dir,
        } => rt.block_on(agent::run(AgentConfig {
            node,
            kubeconfig,
            internal_ips,
            pod_ranges,
            interface,
            images,
            pod_netns_prefix,
            state_dir,
        })),
        Cmd::Echo { listen, pod, node } => rt.block_on(agent::echo(&listen, &pod, &node)),
    }
}
