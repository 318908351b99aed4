//! ferrolb-controller: assigns addresses to LoadBalancer Services.

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

mod check_config;
mod engine;
mod lease;
mod metrics;
mod pool_status;
mod run;
mod service;
mod status;

#[derive(Parser)]
#[command(
    name = "ferrolb-controller",
    version,
    about = "Assigns addresses from ferrolb's pools to LoadBalancer Services",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config offline: a ConfigMap manifest, the bare document
    /// stored under its key `config`, or a file of MetalLB metallb.io/v1beta1
    /// objects (IPAddressPool, L2Advertisement). Prints every problem; exits 0
    /// only when valid.
    CheckConfig {
        /// The file to check; `-` reads standard input.
        file: String,
        /// `json` prints the parsed pools, or the errors, as JSON.
        #[arg(long, value_enum, default_value = "text")]
        output: check_config::Output,
        /// Instead of checking: write the ConfigMap's pools as MetalLB
        /// IPAddressPool and L2Advertisement objects (YAML on standard output).
        #[arg(long, default_value_t = false)]
        to_crds: bool,
        /// The namespace of the objects --to-crds writes.
        #[arg(long, default_value = "metallb-system", requires = "to_crds")]
        namespace: String,
    },
    /// Remove ferrolb's finalizer (service.kubernetes.io/load-balancer-cleanup)
    /// from every Service, so that none is left undeletable after uninstalling.
    /// Uses KUBECONFIG or the in-cluster config; run it once the controller is stopped.
    RemoveFinalizers {
        /// Only the Services of this namespace (default: every namespace).
        #[arg(long)]
        namespace: Option<String>,
    },
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// Namespace of the config ConfigMap (default: this pod's namespace, else ferrolb-system).
    #[arg(long, env = "FERROLB_CONFIG_NAMESPACE")]
    config_namespace: Option<String>,
    /// Name of the config ConfigMap.
    #[arg(long, env = "FERROLB_CONFIG_NAME", default_value = "config")]
    config_name: String,
    /// Where the pools come from: `configmap` (the ConfigMap), `crds`
    /// (MetalLB's IPAddressPool and L2Advertisement objects in
    /// --crds-namespace), or `both` (a pool or address in both is refused).
    #[arg(long, env = "FERROLB_CONFIG_SOURCE", default_value = "configmap")]
    config_source: ferrolb_core::sources::Source,
    /// Namespace of MetalLB's objects, when they are read (default: the
    /// config namespace; MetalLB's own is metallb-system).
    #[arg(long, env = "FERROLB_CRDS_NAMESPACE")]
    crds_namespace: Option<String>,
    /// Handle Services with this spec.loadBalancerClass; repeatable, or
    /// comma-separated. Services of any other class are ignored.
    #[arg(long, env = "FERROLB_LOAD_BALANCER_CLASS", value_delimiter = ',')]
    load_balancer_class: Vec<String>,
    /// Ignore Services without a spec.loadBalancerClass (needs --load-balancer-class).
    #[arg(long, env = "FERROLB_IGNORE_SERVICES_WITHOUT_CLASS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    ignore_services_without_class: bool,
    /// Hold a Lease so that only one replica writes.
    #[arg(long, env = "FERROLB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ferrolb-controller")]
    lease_name: String,
    /// Namespace of the leader Lease (default: the config namespace).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// How long a leader's Lease stays valid without renewal (e.g. 15s, 500ms).
    #[arg(long, default_value = "15s", value_parser = ferrolb_runtime::parse_duration)]
    lease_duration: Duration,
    /// How often the leader renews, and a follower retries.
    #[arg(long, default_value = "2s", value_parser = ferrolb_runtime::parse_duration)]
    lease_renew_interval: Duration,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "FERROLB_METRICS_ADDR", default_value = "0.0.0.0:7472")]
    metrics_addr: SocketAddr,
    /// Status writes in flight at once.
    #[arg(long, default_value_t = 32)]
    write_concurrency: usize,
    /// Also expose the pool and config metrics under MetalLB's names
    /// (`metallb_allocator_*`, `metallb_k8s_client_*`), for its dashboards.
    #[arg(long, env = "FERROLB_METALLB_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    metallb_metrics: bool,
    #[arg(long, value_enum, env = "FERROLB_LOG_FORMAT", default_value = "text")]
    log_format: ferrolb_runtime::LogFormat,
    /// Log filter: a level (info, debug) or tracing directives.
    #[arg(long, env = "FERROLB_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig {
            file,
            to_crds: true,
            namespace,
            ..
        }) => match read_input(&file) {
            Ok(input) => {
                let (out, err, ok) = check_config::to_crds(&input, &namespace);
                print!("{out}");
                eprint!("{err}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::CheckConfig { file, output, .. }) => match read_input(&file) {
            Ok(input) => {
                let (text, valid) = check_config::check(&input, output);
                print!("{text}");
                if valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::RemoveFinalizers { namespace }) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let done = runtime.block_on(async {
                status::remove_finalizers(ferrolb_runtime::client().await?, namespace.as_deref())
                    .await
            });
            match done {
                Ok(names) => {
                    for name in &names {
                        println!("removed the finalizer of Service {name}");
                    }
                    println!("{} Services changed", names.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        None => {
            ferrolb_runtime::init_logging(&cli.run.log_level, cli.run.log_format);
            // One thread: the work is waiting on the API server, and a single
            // allocator arena keeps the memory small.
            ferrolb_runtime::run_to_exit(
                ferrolb_runtime::Threads::One,
                "controller",
                controller(cli.run),
            )
        }
    }
}

async fn controller(args: RunArgs) -> anyhow::Result<()> {
    let namespace = args
        .config_namespace
        .clone()
        .or_else(ferrolb_runtime::pod_namespace)
        .unwrap_or_else(|| "ferrolb-system".into());
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let classes = service::Classes::from_flags(
        &args.load_balancer_class,
        args.ignore_services_without_class,
    )
    .map_err(anyhow::Error::msg)?;
    let metrics = metrics::Metrics::new(args.metallb_metrics);
    let server = ferrolb_runtime::serve::spawn(args.metrics_addr, metrics.clone());
    let client = ferrolb_runtime::client().await?;

    let mut signals = ferrolb_runtime::Shutdown::install()?;
    let mut shutdown = std::pin::pin!(async move {
        let which = signals.recv().await;
        info!("{which}: stopping");
    });
    let settings = run::Settings {
        crds_namespace: args
            .crds_namespace
            .clone()
            .unwrap_or_else(|| namespace.clone()),
        config_namespace: namespace.clone(),
        config_name: args.config_name.clone(),
        classes,
        identity: identity.clone(),
        write_concurrency: args.write_concurrency,
        source: args.config_source,
    };
    let lease_cfg = args.leader_election.then(|| lease::LeaseConfig {
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| namespace.clone()),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: args.lease_duration,
        renew_every: args.lease_renew_interval,
    });
    // Each term as leader starts from nothing, as after a restart: the engine
    // learns every address from the Services' status before giving out any.
    loop {
        let leadership = match &lease_cfg {
            Some(cfg) => {
                // A follower is ready: it serves by standing by.
                metrics
                    .ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    l = lease::acquire(client.clone(), cfg.clone()) => Some(l?),
                    _ = &mut shutdown => break,
                }
            }
            None => None,
        };
        metrics.is_leader.set(1);
        metrics
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut lost = leadership.as_ref().map(|l| l.lost.clone());
        let lost_leadership = async move {
            match lost.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|lost| *lost).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let run = run::run(client.clone(), settings.clone(), metrics.clone(), stop);
        tokio::pin!(run);
        let why = tokio::select! {
            r = &mut run => { r.context("the controller loop failed")?; "the watch ended" }
            _ = &mut shutdown => "signal",
            _ = lost_leadership => "lost",
        };
        let _ = stop_tx.send(());
        let _ = run.await;
        metrics.is_leader.set(0);
        match (why, leadership) {
            ("lost", _) => {
                // Stop writing at once; stand by, and start over if elected again.
                warn!("lost the leader lease: no longer writing; standing by");
            }
            (_, Some(l)) => {
                l.release().await;
                break;
            }
            _ => break,
        }
    }
    server.abort();
    info!("stopped");
    Ok(())
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}
