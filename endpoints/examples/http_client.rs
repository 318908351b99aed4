//! Sends HTTP requests to a Service's endpoints through the load balancer and prints which
//! endpoint answered (and what it said), and when the set of endpoints changes.
//!
//! ```sh
//! KUBECONFIG=... cargo run -p ferrolb-endpoints --example http_client -- \
//!     --service web --port http --requests 20 --interval-ms 250
//! ```
//!
//! Each request is a plain `GET <path> HTTP/1.0` on a new connection. A request that fails
//! (connection refused, timeout, non-2xx) is reported to the load balancer, which skips the
//! endpoint for a backoff (passive ejection); the background sync follows the Service's
//! EndpointSlices, so endpoints added or removed through the API appear or disappear.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ferrolb_endpoints::{Config, Ejection, Endpoint, LoadBalancer, Policy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "HTTP requests spread over a Service's endpoints (ferrolb-endpoints)")]
struct Args {
    /// The Service.
    #[arg(long)]
    service: String,
    /// Its namespace (default: the kubeconfig's, or the Pod's own in a cluster).
    #[arg(long)]
    namespace: Option<String>,
    /// The Service port, by name or number (default: its only port).
    #[arg(long)]
    port: Option<String>,
    /// How many requests (0: until Ctrl-C).
    #[arg(long, default_value_t = 20)]
    requests: u64,
    /// Time between two requests.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Per-request timeout (connect and answer).
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// The HTTP path.
    #[arg(long, default_value = "/")]
    path: String,
    /// This client's zone, for topology hints.
    #[arg(long)]
    zone: Option<String>,
    /// This client's node, for topology hints.
    #[arg(long)]
    node: Option<String>,
    /// Power-of-two-choices instead of round-robin.
    #[arg(long)]
    p2c: bool,
    /// How long a failed endpoint is skipped the first time (doubling after each further
    /// ejection, up to 30 s).
    #[arg(long, default_value_t = 5000)]
    eject_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client (set KUBECONFIG or run in a cluster)")?;
    let mut config = Config::new(&args.service).ejection(Some(Ejection {
        consecutive_failures: 1,
        base: Duration::from_millis(args.eject_ms),
        max: Duration::from_secs(30),
    }));
    if let Some(ns) = &args.namespace {
        config = config.namespace(ns);
    }
    if let Some(p) = &args.port {
        config = config.port(p.as_str());
    }
    if let Some(z) = &args.zone {
        config = config.zone(z);
    }
    if let Some(n) = &args.node {
        config = config.node(n);
    }
    if args.p2c {
        config = config.policy(Policy::PowerOfTwoChoices);
    }
    let lb = LoadBalancer::new(client, config);
    lb.sync().await.context("first sync")?;
    lb.start_background_sync()?;
    let mut shown = print_endpoints(&lb, None);
    let mut changes = lb.subscribe();
    changes.borrow_and_update();

    let timeout = Duration::from_millis(args.timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if changes.has_changed().unwrap_or(false) {
            changes.borrow_and_update();
            shown = print_endpoints(&lb, Some(&shown));
        }
        n += 1;
        match lb.next_tracked() {
            Err(e) => println!("{n:4}  no endpoint: {e}"),
            Ok(req) => {
                let ep = req.endpoint().clone();
                match get(&ep, &args.path, timeout).await {
                    Ok((status, body)) => {
                        println!("{n:4}  {ep}  {status}  {body:?}");
                        req.success();
                    }
                    Err(e) => {
                        let ejected = req.failure();
                        println!(
                            "{n:4}  {ep}  failed: {e:#}{}",
                            if ejected {
                                "; ejected for a backoff"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
        if args.requests != 0 && n >= args.requests {
            break;
        }
    }
    lb.shutdown().await;
    Ok(())
}

/// Prints the endpoints unless they are what was printed last (the first
/// watch event repeats the first sync's list); returns what is shown.
fn print_endpoints(lb: &LoadBalancer, last: Option<&str>) -> String {
    let state = lb.state();
    let list: Vec<String> = state.endpoints.iter().map(|e| e.to_string()).collect();
    let line = format!(
        "      endpoints of {}/{}: {}{}",
        lb.namespace(),
        lb.config().service,
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        },
        if state.terminating_fallback {
            " (terminating: none is ready)"
        } else {
            ""
        }
    );
    if last != Some(line.as_str()) {
        println!("{line}");
    }
    line
}

/// One `GET` over HTTP/1.0: the status line and the body's first line.
async fn get(ep: &Endpoint, path: &str, timeout: Duration) -> anyhow::Result<(String, String)> {
    tokio::time::timeout(timeout, async {
        let mut conn = TcpStream::connect(ep.addr()).await?;
        let host = match ep.host() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        conn.take(64 * 1024).read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or("").to_owned();
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if !code.starts_with('2') {
            anyhow::bail!("answered {status:?}");
        }
        let status = status
            .split_once(' ')
            .map(|(_, s)| s)
            .unwrap_or("")
            .to_owned();
        Ok((status, body.lines().next().unwrap_or("").to_owned()))
    })
    .await
    .context("timed out")?
}
