//! Network namespaces on one bridge for tests with the real control plane,
//! the node agents and kube-proxy (tests/tests/real_lab.rs).
//!
//! Hosts get 192.0.2.N/24 and 2001:db8::N/64 on `eth0`, as in the lab
//! (tests/src/lab.rs); nothing is added to the machine's own namespace. The
//! namespaces are named `flblab<pid>r<seq>-<host>`, so `Lab::clean_stale`
//! also deletes those of a killed run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::lab::{Host, Network, run};

/// A bridge segment with hosts, and the processes started in them. Dropping
/// it kills the processes, then deletes the namespaces and the log directory.
pub struct Segment {
    pub dir: PathBuf,
    /// Dropped after `Drop::drop` killed the processes.
    net: Network,
    procs: Vec<(String, Child)>,
    keep_dir: bool,
}

impl Segment {
    /// A switch namespace with bridge `br0`, and one namespace per `(name, N)`
    /// with `eth0` at 192.0.2.N and 2001:db8::N (the lab's [`Network`]).
    pub fn new(hosts: &[(&str, u8)]) -> anyhow::Result<Segment> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = format!("flblab{}r{seq}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let hosts = hosts
            .iter()
            .map(|(name, i)| Host {
                name: (*name).to_owned(),
                ns: format!("{prefix}-{name}"),
                ip4: Ipv4Addr::new(192, 0, 2, *i),
                ip6: format!("2001:db8::{i:x}").parse().expect("valid"),
                mac: format!("02:00:00:00:01:{i:02x}"),
            })
            .collect();
        let net = Network::new(&format!("{prefix}-switch"), hosts)?;
        Ok(Segment {
            dir,
            net,
            procs: Vec::new(),
            keep_dir: false,
        })
    }

    pub fn host(&self, name: &str) -> &Host {
        self.net
            .host(name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Keeps the log directory after drop (also kept when dropped by a panic).
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    /// Starts `program` in namespace `ns` (`ip netns exec`, which execs it:
    /// the child is the program). Output goes to `<dir>/<what>.log`; the
    /// process dies with the thread that started it.
    pub fn spawn(
        &mut self,
        ns: &str,
        what: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{what}.log")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        self.procs.push((what.to_owned(), child));
        Ok(())
    }

    /// The log of the process started as `what`.
    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{what}.log"))).unwrap_or_default()
    }

    /// Fails with its log tail if a process started here exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (what, child) in &mut self.procs {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join(format!("{what}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{what} exited ({status}):\n{}", tail.join("\n"));
            }
        }
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep_dir || std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sets a sysctl inside namespace `ns` (`/proc/sys/net` is per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
    )?;
    Ok(())
}

/// One HTTP GET of `/` on `addr` (a new connection), with timeouts; the body.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let host = match addr.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{head}");
    }
    Ok(body.to_owned())
}
