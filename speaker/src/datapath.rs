//! The data-path check: polls kube-proxy's health endpoint and keeps this
//! node out of the membership while it fails (`ferrolb_core::datapath` has
//! the rule; README, "Announce only where traffic can flow").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_core::datapath::{HealthGate, PauseReasons};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// What to poll and how patiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Failing this long takes the node out; passing `up_after` brings it back.
    pub down_after: Duration,
    pub up_after: Duration,
    pub interval: Duration,
}

/// Parses `http://IP:PORT/PATH` (`localhost` for 127.0.0.1); an error says
/// what is wrong with it.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let with_ip = authority.replacen("localhost", "127.0.0.1", 1);
    let addr: SocketAddr = with_ip
        .parse()
        .map_err(|_| format!("{url:?}: expected http://IP:PORT/PATH (an IP address and a port)"))?;
    Ok((addr, authority.to_owned(), path))
}

/// One GET: whether the answer is 2xx within `timeout`.
async fn probe(check: &Check, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(check.addr).await.ok()?;
        s.write_all(
            format!(
                "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ferrolb-speaker\r\n\r\n",
                check.path, check.host
            )
            .as_bytes(),
        )
        .await
        .ok()?;
        let mut head = [0u8; 16];
        let n = s.read(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head[..n]).ok()?;
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..300).contains(&code))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The membership's pause, set for several reasons at once
/// ([`PauseReasons`]): the node is out while any holds.
#[derive(Clone)]
pub struct Pause {
    tx: watch::Sender<bool>,
    reasons: Arc<std::sync::Mutex<PauseReasons>>,
}

impl Pause {
    pub fn new(tx: watch::Sender<bool>) -> Pause {
        Pause {
            tx,
            reasons: Arc::default(),
        }
    }

    pub fn set(&self, reason: &'static str, on: bool) {
        let mut r = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(out) = r.set(reason, on) {
            self.tx.send_replace(out);
        }
    }
}

/// Polls until the process ends; pauses the membership while the gate says down.
pub async fn run(check: Check, pause: Pause, metrics: Arc<Metrics>) {
    let mut gate = HealthGate::new(check.down_after, check.up_after);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics.data_path_healthy.set(1);
    info!(url = %format!("http://{}{}", check.host, check.path), down_after = ?check.down_after, "checking the data path (kube-proxy's health)");
    loop {
        tick.tick().await;
        // Never longer than the interval: a hung check is a failed one.
        let ok = probe(&check, check.interval.max(Duration::from_millis(100))).await;
        match gate.observe(crate::clock::boottime(), ok) {
            Some(false) => {
                warn!(url = %format!("http://{}{}", check.host, check.path), after = ?check.down_after,
                    "the data path check fails: this node stops owning addresses (pass --kube-proxy-health-url='' if the cluster runs no kube-proxy)");
                metrics.data_path_healthy.set(0);
                pause.set("data_path", true);
            }
            Some(true) => {
                info!("the data path check passes again: this node may own addresses");
                metrics.data_path_healthy.set(1);
                pause.set("data_path", false);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, h, p) = parse_url("http://127.0.0.1:10256/healthz").unwrap();
        assert_eq!(a, "127.0.0.1:10256".parse().unwrap());
        assert_eq!((h.as_str(), p.as_str()), ("127.0.0.1:10256", "/healthz"));
        let (a, h, p) = parse_url("http://localhost:10256").unwrap();
        assert_eq!(a, "127.0.0.1:10256".parse().unwrap());
        assert_eq!((h.as_str(), p.as_str()), ("localhost:10256", "/"));
        assert!(parse_url("http://[2001:db8::1]:10256/healthz").is_ok());
        assert!(
            parse_url("https://127.0.0.1:10256/")
                .unwrap_err()
                .contains("only http")
        );
        assert!(
            parse_url("http://kube-proxy:10256/")
                .unwrap_err()
                .contains("IP address")
        );
    }
}
