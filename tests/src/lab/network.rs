//! The lab's network: network namespaces on one layer-2 segment.
//!
//! A switch namespace holds bridge `br0`; every [`Host`] is a namespace of
//! its own whose `eth0` is one end of a veth pair, the other end being port
//! `p<i>` of the bridge (`i`: the host's index). The caller chooses the
//! namespace names, addresses and MACs: the lab ([`Lab::up`](super::Lab::up))
//! and the speaker's own namespace tests (`speaker/tests/common`) build their
//! segments with it. Nothing is added to the machine's own namespace, and
//! dropping a [`Network`] deletes every namespace it made.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::Context as _;

use super::{run, run_with_input};

/// One machine of the lab: a network namespace with `eth0` on the segment.
#[derive(Clone, Debug)]
pub struct Host {
    /// The Kubernetes node name (or `cp` / `client`).
    pub name: String,
    pub ns: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub mac: String,
}

impl Host {
    /// Runs `args` inside the host's namespace (`ip netns exec`): its
    /// output, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!("cannot run ip (scripts/install-deps.sh installs it) for {args:?}")
            })
    }
}

/// Namespaces on one bridge: the switch and its hosts. Dropping it deletes
/// them.
pub struct Network {
    /// The switch's namespace: bridge `br0`, port `p<i>` for `hosts[i]`.
    pub switch: String,
    pub hosts: Vec<Host>,
    /// The namespaces made so far, deleted on drop (the last made first).
    namespaces: Vec<String>,
}

impl Network {
    /// Creates namespace `switch` with bridge `br0`, and for every host its
    /// namespace, with `lo` up and `eth0` on the bridge: the host's MAC, its
    /// IPv4 address as a /24 and its IPv6 address as a /64, usable at once
    /// (no duplicate address detection). On failure, whatever was made is
    /// deleted again.
    pub fn new(switch: &str, hosts: Vec<Host>) -> anyhow::Result<Network> {
        let mut net = Network {
            switch: switch.to_owned(),
            hosts,
            namespaces: Vec::new(),
        };
        let names: Vec<String> = std::iter::once(net.switch.clone())
            .chain(net.hosts.iter().map(|h| h.ns.clone()))
            .collect();
        for ns in names {
            run("ip", &["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let sw = net.switch.as_str();
        // No multicast snooping: every port gets the segment's multicast
        // (NDP's solicited-node groups included), as a plain switch does.
        run(
            "ip",
            &[
                "-n",
                sw,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        run("ip", &["-n", sw, "link", "set", "br0", "up"])?;
        for (i, h) in net.hosts.iter().enumerate() {
            let port = format!("p{i}");
            run(
                "ip",
                &[
                    "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &h.ns,
                ],
            )?;
            run(
                "ip",
                &["-n", sw, "link", "set", &port, "master", "br0", "up"],
            )?;
            // Addresses usable at once: no duplicate address detection.
            for key in ["all", "default", "eth0"] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &h.ns,
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{key}.accept_dad=0"),
                    ],
                )?;
            }
            run(
                "ip",
                &["-n", &h.ns, "link", "set", "eth0", "address", &h.mac],
            )?;
            let v4 = format!("{}/24", h.ip4);
            let v6 = format!("{}/64", h.ip6);
            for (addr, flags) in [(&v4, &[][..]), (&v6, &["nodad"][..])] {
                let mut args = vec!["-n", &h.ns, "addr", "add", addr, "dev", "eth0"];
                args.extend(flags);
                run("ip", &args)?;
            }
            run("ip", &["-n", &h.ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The switch port of host `name` (`p<i>`).
    pub fn port(&self, name: &str) -> Option<String> {
        let i = self.hosts.iter().position(|h| h.name == name)?;
        Some(format!("p{i}"))
    }

    /// Plugs in (`up`) or pulls (`!up`) the cable of host `name`: its port
    /// on the switch goes up or down; its `eth0` loses its carrier but keeps
    /// its addresses and routes.
    pub fn set_port(&self, name: &str, up: bool) -> anyhow::Result<()> {
        let port = self
            .port(name)
            .with_context(|| format!("no host {name} on the segment"))?;
        let state = if up { "up" } else { "down" };
        run("ip", &["-n", &self.switch, "link", "set", &port, state])?;
        Ok(())
    }

    /// Fixed IPv4 neighbour entries (`nud permanent`) between every two of
    /// the hosts named `names`: none of them ever resolves another by ARP.
    pub fn pin_neighbours(&self, names: &[&str]) -> anyhow::Result<()> {
        let hosts = names
            .iter()
            .map(|n| self.host(n).with_context(|| format!("no host {n}")))
            .collect::<anyhow::Result<Vec<&Host>>>()?;
        for h in &hosts {
            let batch: String = hosts
                .iter()
                .filter(|o| o.ns != h.ns)
                .map(|o| {
                    format!(
                        "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                        o.ip4, o.mac
                    )
                })
                .collect();
            if !batch.is_empty() {
                run_with_input("ip", &["-n", &h.ns, "-batch", "-"], Some(&batch))?;
            }
        }
        Ok(())
    }

    /// Deletes the namespaces named `<prefix><pid>...` whose process `pid`
    /// is gone: those of a run that was killed before it could delete them.
    /// The prefix must be followed by the process ID and then by something
    /// that is not a digit.
    pub fn clean_stale(prefix: &str) {
        let Ok(list) = run("ip", &["netns", "list"]) else {
            return;
        };
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

fn open_netns(ns: &str) -> anyhow::Result<File> {
    let path = format!("/run/netns/{ns}");
    File::open(&path).with_context(|| format!("opening {path}"))
}

/// Moves the calling thread (only it) into the namespace `file` refers to.
fn enter(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid descriptor; it changes this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread that has joined namespace `ns` (a network namespace
/// is per thread: the caller's thread is untouched). Sockets `f` opens, and
/// threads it starts, belong to `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = open_netns(ns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            enter(&file).with_context(|| format!("setns into {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
    })
}

/// Starts `f` on a thread that joins namespace `ns` first (see
/// [`in_netns`]); the thread panics if it cannot.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<T>> {
    let file = open_netns(ns)?;
    let ns = ns.to_owned();
    Ok(std::thread::spawn(move || {
        enter(&file).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
        f()
    }))
}
