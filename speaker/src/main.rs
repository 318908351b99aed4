//! ferrolb-speaker: the per-node agent that answers ARP/NDP for the
//! addresses this node owns. The default command watches the cluster, runs
//! membership among speakers and announces what the election gives this
//! node; `announce` runs the announcer for a fixed set of addresses, for
//! labs and the network-namespace tests.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferrolb_speaker::announcer::{Announcer, Desired, GratuitousSchedule};
use ferrolb_speaker::{daemon, interfaces, membership, metrics};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "ferrolb-speaker",
    version,
    about = "Announces ferrolb's load-balancer addresses on the node's layer-2 segment (ARP/NDP)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// The Kubernetes name of this node.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the config ConfigMap (default: this pod's namespace, else ferrolb-system).
    #[arg(long, env = "FERROLB_CONFIG_NAMESPACE")]
    config_namespace: Option<String>,
    /// Name of the config ConfigMap.
    #[arg(long, env = "FERROLB_CONFIG_NAME", default_value = "config")]
    config_name: String,
    /// Where the pools come from: `configmap`, `crds` (MetalLB's
    /// IPAddressPool and L2Advertisement objects in --crds-namespace) or
    /// `both`; the same as the controller's.
    #[arg(long, env = "FERROLB_CONFIG_SOURCE", default_value = "configmap")]
    config_source: ferrolb_core::sources::Source,
    /// Namespace of MetalLB's objects, when they are read (default: the
    /// config namespace; MetalLB's own is metallb-system).
    #[arg(long, env = "FERROLB_CRDS_NAMESPACE")]
    crds_namespace: Option<String>,
    /// Write MetalLB's ServiceL2Status objects (one per Service this node
    /// announces); needs their CRD and RBAC (manifests/components).
    #[arg(long, env = "FERROLB_SERVICE_L2_STATUS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    service_l2_status: bool,
    /// Namespace of the speaker Pods and the membership Secret (default: the config namespace).
    #[arg(long, env = "FERROLB_SPEAKER_NAMESPACE")]
    speaker_namespace: Option<String>,
    /// Label selector of the speaker Pods: their Pod IPs are the peers.
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=ferrolb,app.kubernetes.io/component=speaker"
    )]
    speaker_selector: String,
    /// Also handle Services with this spec.loadBalancerClass; repeatable or
    /// comma-separated, as the controller's. Services of any other class are ignored.
    #[arg(long, env = "FERROLB_LOAD_BALANCER_CLASS", value_delimiter = ',')]
    load_balancer_class: Vec<String>,
    /// Ignore Services without a spec.loadBalancerClass (needs --load-balancer-class).
    #[arg(long, env = "FERROLB_IGNORE_SERVICES_WITHOUT_CLASS")]
    ignore_services_without_class: bool,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "FERROLB_METRICS_ADDR", default_value = "0.0.0.0:7473")]
    metrics_addr: SocketAddr,
    #[arg(long, value_enum, env = "FERROLB_LOG_FORMAT", default_value = "text")]
    log_format: ferrolb_runtime::LogFormat,
    /// Log filter: a level (info, debug) or tracing directives.
    #[arg(long, env = "FERROLB_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Membership among speakers; off: every Node is a candidate (no failure detection).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    membership: bool,
    /// UDP address membership listens on; peers are reached at their Pod IP and this port.
    #[arg(long, env = "FERROLB_MEMBERSHIP_BIND", default_value = "0.0.0.0:7946")]
    membership_bind: SocketAddr,
    /// Time between heartbeats to each peer.
    #[arg(long, default_value = "20ms", value_parser = ferrolb_runtime::parse_duration)]
    membership_interval: Duration,
    /// A peer not heard from for this long is dead and loses its addresses; also the age past
    /// which a queued ARP request or neighbour solicitation is no longer answered.
    #[arg(long, default_value = "130ms", value_parser = ferrolb_runtime::parse_duration)]
    membership_timeout: Duration,
    /// At start, announce after hearing every peer or after this long.
    #[arg(long, default_value = "1s", value_parser = ferrolb_runtime::parse_duration)]
    membership_join_grace: Duration,
    /// Membership protocol: ring (K observers per node, constant cost, majority rule for
    /// partitions) or mesh (every speaker heartbeats every other one).
    #[arg(
        long,
        value_enum,
        env = "FERROLB_MEMBERSHIP_PROTOCOL",
        default_value = "ring"
    )]
    membership_protocol: membership::Protocol,
    /// Ring protocol: a node removed as failed (or back from a stall) owns no address for this
    /// long after it re-joins, unless no other node can; its addresses do not flip back at once.
    #[arg(long, default_value = "10s", value_parser = ferrolb_runtime::parse_duration)]
    membership_hold_down: Duration,
    /// Secret holding the membership key (in the speaker namespace).
    #[arg(long, default_value = "ferrolb-memberlist")]
    membership_secret_name: String,
    /// Key in that Secret's data.
    #[arg(long, default_value = "secretkey")]
    membership_secret_key: String,
    /// On SIGTERM, wait at most this long for peers to confirm they took over.
    #[arg(long, default_value = "1s", value_parser = ferrolb_runtime::parse_duration)]
    leave_timeout: Duration,
    /// Repeat gratuitous ARP / unsolicited NA for every owned address this often (off by default).
    #[arg(long, value_parser = ferrolb_runtime::parse_duration)]
    gratuitous_refresh: Option<Duration>,
    /// Gratuitous frames per second per interface, all addresses together:
    /// a takeover of many addresses is paced at this rate, every address's
    /// first burst before any repeat (up to 512 frames leave at once).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    gratuitous_rate: u32,
    /// Interface name prefixes never announced on; replaces the default list.
    #[arg(long, value_delimiter = ',', default_values_t = interfaces::default_excludes())]
    exclude_interfaces: Vec<String>,
    /// How often interfaces are listed again (new, vanished, carrier lost).
    #[arg(long, default_value = "1s", value_parser = ferrolb_runtime::parse_duration)]
    interface_rescan: Duration,
    /// kube-proxy's health endpoint on this node (hostNetwork): while it
    /// fails, this node owns no address. Empty: no check (clusters without
    /// kube-proxy, e.g. with a kube-proxy replacement).
    #[arg(
        long,
        env = "FERROLB_KUBE_PROXY_HEALTH_URL",
        default_value = "http://127.0.0.1:10256/healthz"
    )]
    kube_proxy_health_url: String,
    /// How long the check must fail before this node gives its addresses up.
    #[arg(long, default_value = "500ms", value_parser = ferrolb_runtime::parse_duration)]
    kube_proxy_health_threshold: Duration,
    /// How long it must pass again before this node may own addresses.
    #[arg(long, default_value = "2s", value_parser = ferrolb_runtime::parse_duration)]
    kube_proxy_health_recovery: Duration,
    /// Probe the healthCheckNodePort of the Local Services this node owns on
    /// 127.0.0.1, and withdraw from a Service while it says there is no local
    /// endpoint (same threshold and recovery as the kube-proxy check). Needs
    /// the Pod's name (POD_NAME), where the withdrawals are written.
    #[arg(long, env = "FERROLB_HEALTH_CHECK_NODE_PORT", default_value_t = true, action = clap::ArgAction::Set)]
    health_check_node_port: bool,
    /// This speaker's Pod (the manifests set it from metadata.name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Also expose the announcement metrics under MetalLB's names
    /// (`metallb_speaker_announced`, `metallb_layer2_*`), for its dashboards.
    #[arg(long, env = "FERROLB_METALLB_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    metallb_metrics: bool,
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
        /// Gratuitous frames per second per interface, all addresses together.
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
        gratuitous_rate: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Announce {
            addresses,
            interfaces,
            exclude_interfaces,
            gratuitous_bursts,
            gratuitous_interval_ms,
            gratuitous_rate,
        }) => {
            ferrolb_runtime::init_logging(
                &std::env::var("RUST_LOG").unwrap_or_else(|_| cli.run.log_level.clone()),
                cli.run.log_format,
            );
            let schedule = GratuitousSchedule {
                bursts: gratuitous_bursts,
                interval: Duration::from_millis(gratuitous_interval_ms),
                rate: gratuitous_rate,
                ..GratuitousSchedule::default()
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
        None => {
            ferrolb_runtime::init_logging(&cli.run.log_level, cli.run.log_format);
            // Two workers: the responders and the watch processing never
            // wait for each other. Membership has its own thread.
            ferrolb_runtime::run_to_exit(
                ferrolb_runtime::Threads::Workers(2),
                "speaker",
                speaker(cli.run),
            )
        }
    }
}

async fn speaker(args: RunArgs) -> anyhow::Result<()> {
    let node = args
        .node_name
        .clone()
        .context("--node-name (or NODE_NAME) is required")?;
    let config_namespace = args
        .config_namespace
        .clone()
        .or_else(ferrolb_runtime::pod_namespace)
        .unwrap_or_else(|| "ferrolb-system".into());
    let metrics = metrics::Metrics::new(args.metallb_metrics);
    let server = ferrolb_runtime::serve::spawn(args.metrics_addr, metrics.clone());
    let client = ferrolb_runtime::client().await?;
    let speaker_namespace = args
        .speaker_namespace
        .clone()
        .unwrap_or_else(|| config_namespace.clone());
    let settings = daemon::Settings {
        membership: args.membership.then(|| membership::Settings {
            node: node.clone(),
            bind: args.membership_bind,
            interval: args.membership_interval,
            timeout: args.membership_timeout,
            join_grace: args.membership_join_grace,
            protocol: args.membership_protocol,
            hold_down: args.membership_hold_down,
        }),
        node,
        namespace: speaker_namespace.clone(),
        crds_namespace: args
            .crds_namespace
            .clone()
            .unwrap_or_else(|| config_namespace.clone()),
        config_namespace,
        config_name: args.config_name,
        config_source: args.config_source,
        pod_name: args.pod_name.clone(),
        service_l2_status: args.service_l2_status,
        speaker_selector: args.speaker_selector,
        secret_name: args.membership_secret_name,
        secret_key: args.membership_secret_key,
        classes: ferrolb_runtime::service::ServiceClasses::from_flags(
            &args.load_balancer_class,
            args.ignore_services_without_class,
        )
        .map_err(anyhow::Error::msg)?,
        excludes: args.exclude_interfaces,
        gratuitous: GratuitousSchedule {
            rate: args.gratuitous_rate,
            ..GratuitousSchedule::default()
        },
        gratuitous_refresh: args.gratuitous_refresh,
        service_health: match (&args.pod_name, args.health_check_node_port) {
            (Some(pod), true) => Some(ferrolb_speaker::servicehealth::Settings {
                pod: (speaker_namespace.clone(), pod.clone()),
                interval: Duration::from_millis(100),
                down_after: args.kube_proxy_health_threshold,
                up_after: args.kube_proxy_health_recovery,
            }),
            (None, true) => {
                info!("POD_NAME is unset: the healthCheckNodePort check is off");
                None
            }
            (_, false) => None,
        },
        data_path: if args.kube_proxy_health_url.is_empty() {
            None
        } else {
            let (addr, host, path) =
                ferrolb_speaker::datapath::parse_url(&args.kube_proxy_health_url)
                    .map_err(|e| anyhow::anyhow!("--kube-proxy-health-url: {e}"))?;
            Some(ferrolb_speaker::datapath::Check {
                addr,
                host,
                path,
                down_after: args.kube_proxy_health_threshold,
                up_after: args.kube_proxy_health_recovery,
                interval: Duration::from_millis(100),
            })
        },
        leave_timeout: args.leave_timeout,
        rescan_interval: args.interface_rescan,
        max_request_age: args.membership_timeout,
    };
    let result = daemon::run(client, settings, metrics).await;
    server.abort();
    result
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
    let mut signals = ferrolb_runtime::Shutdown::install()?;
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
            _ = signals.recv() => break,
        }
    }
    info!("stopping");
    Ok(())
}
