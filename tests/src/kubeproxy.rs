//! The real kube-proxy, run in a lab node's network namespace
//! (docs/lab-agent.md): one process per node (a network namespace belongs to
//! a process, so kube-proxies cannot share one), `--hostname-override` as the
//! Node name, and every conntrack setting at 0 so that it changes no
//! machine-wide value (nf_conntrack_max and the hash size are global).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The proxy backend kube-proxy programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// Tables `ip kube-proxy` / `ip6 kube-proxy` (needs the `nft` binary).
    #[default]
    Nftables,
    /// iptables-nft chains; locks /run/xtables.lock, which is shared by all namespaces.
    Iptables,
}

impl ProxyMode {
    pub fn flag(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        }
    }
}

/// One node's kube-proxy.
#[derive(Clone, Debug)]
pub struct KubeProxy {
    /// The Node name (`--hostname-override`).
    pub node: String,
    /// The node's address: metrics (:10249) listen on it; health (:10256) on
    /// every address, as kube-proxy's default.
    pub address: IpAddr,
    /// A kubeconfig for `system:kube-proxy` ([`crate::kube::ControlPlane::proxy_kubeconfig`]).
    pub kubeconfig: PathBuf,
    pub mode: ProxyMode,
}

fn host_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

impl KubeProxy {
    /// kube-proxy's command-line flags (no `--config`: it would make kube-proxy ignore them).
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--proxy-mode={}", self.mode.flag()),
            format!("--hostname-override={}", self.node),
            format!("--kubeconfig={}", self.kubeconfig.display()),
            // 0: leave nf_conntrack_max and the global hash size alone (they
            // are read-only outside the initial namespace, and global).
            "--conntrack-max-per-core=0".into(),
            "--conntrack-min=0".into(),
            // 0: leave the (per-namespace) conntrack timeouts alone too.
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--conntrack-udp-timeout=0".into(),
            "--conntrack-udp-timeout-stream=0".into(),
            format!("--metrics-bind-address={}", host_port(self.address, 10249)),
            // kube-proxy's default (every address of the node's namespace):
            // the speaker checks it on 127.0.0.1, as on a real node.
            "--healthz-bind-address=0.0.0.0:10256".into(),
            // No --cluster-cidr: no local-traffic detection.
            "--v=2".into(),
        ]
    }

    /// The binary in `kube_bin`, after checking what it needs is installed.
    pub fn program(&self, kube_bin: &Path) -> anyhow::Result<PathBuf> {
        let tool = match self.mode {
            ProxyMode::Nftables => "nft",
            ProxyMode::Iptables => "iptables",
        };
        let ok = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!(
                "kube-proxy --proxy-mode={} needs `{tool}` in PATH (scripts/install-deps.sh installs it)",
                self.mode.flag()
            );
        }
        let p = kube_bin.join("kube-proxy");
        if !p.is_file() {
            bail!("{} is missing: run scripts/build-kube.sh", p.display());
        }
        Ok(p)
    }
}

/// The rules kube-proxy wrote in namespace `ns` (`nft list table ip kube-proxy`).
pub fn nft_rules(ns: &str, family: &str) -> anyhow::Result<String> {
    crate::lab::run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            family,
            "kube-proxy",
        ],
    )
    .context("listing kube-proxy's table")
}
