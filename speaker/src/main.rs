//! ferrolb-speaker: the per-node agent that answers ARP/NDP for the addresses
//! this node owns. Not built yet: this binary only parses its command line.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ferrolb-speaker",
    version,
    about = "Announces ferrolb's load-balancer addresses on the node's layer-2 segment (ARP/NDP)"
)]
struct Cli {
    /// The Kubernetes name of this node.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "ferrolb-speaker: announcing is not implemented yet; this build only answers --help and --version"
    );
    ExitCode::from(2)
}
