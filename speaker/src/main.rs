//! ferrolb-speaker: the per-node agent that answers ARP/NDP for the addresses
//! this node owns. The Kubernetes-driven mode (watches, membership, election)
//! is not built yet; `announce` runs the announcer for a fixed set of
//! addresses, for the network-namespace tests and for labs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrolb_speaker::announcer::{Announcer, Desired, GratuitousSchedule};
use ferrolb_speaker::interfaces;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

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

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Announce a fixed set of addresses, without Kubernetes: answer ARP and
    /// NDP for them and send gratuitous ARP / unsolicited NA at start.
    Announce {
        /// An address to announce (repeat for more).
        #[arg(long = "address", required = true)]
        addresses: Vec<IpAddr>,
        /// Announce only on these interfaces (default: every eligible one).
        #[arg(long = "interface")]
        interfaces: Vec<String>,
        /// Interface name prefixes never announced on; replaces the default list.
        #[arg(long, value_delimiter = ',', default_values_t = interfaces::default_excludes())]
        exclude_interfaces: Vec<String>,
        /// Gratuitous bursts per takeover.
        #[arg(long, default_value_t = 3)]
        gratuitous_bursts: u32,
        /// Milliseconds between gratuitous bursts.
        #[arg(long, default_value_t = 600)]
        gratuitous_interval_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(Command::Announce {
        addresses,
        interfaces,
        exclude_interfaces,
        gratuitous_bursts,
        gratuitous_interval_ms,
    }) = cli.command
    else {
        eprintln!(
            "ferrolb-speaker: the Kubernetes mode is not implemented yet; `announce` runs the announcer for fixed addresses"
        );
        return ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let schedule = GratuitousSchedule {
        bursts: gratuitous_bursts,
        interval: Duration::from_millis(gratuitous_interval_ms),
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|rt| {
            rt.block_on(announce(
                addresses.into_iter().collect(),
                interfaces,
                exclude_interfaces,
                schedule,
            ))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrolb-speaker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Announces `addresses` on the selected interfaces until SIGTERM or
/// SIGINT, rescanning interfaces every few seconds so that new ones are
/// picked up and vanished ones dropped.
async fn announce(
    addresses: BTreeSet<IpAddr>,
    only: Vec<String>,
    excludes: Vec<String>,
    schedule: GratuitousSchedule,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut announcer = Announcer::new(schedule);
    let mut rescan = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = rescan.tick() => {
                let all = interfaces::list().context("cannot list interfaces")?;
                let desired: Vec<Desired> = interfaces::select(&all, &excludes, &only)
                    .into_iter()
                    .map(|i| Desired { interface: i.clone(), addresses: addresses.clone() })
                    .collect();
                if desired.is_empty() {
                    warn!("no interface to announce on");
                }
                for (name, e) in announcer.set(&desired) {
                    warn!(interface = %name, error = %e, "skipped interface");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    Ok(())
}
