//! The announcer on a real (virtual) segment: a bridge in one network
//! namespace, a node namespace running `ferrolb-speaker announce` for
//! 192.0.2.50 and 2001:db8::50, and a client namespace asking with `arping`,
//! `ndisc6` and hand-built frames.
//!
//! Needs root, iproute2, iputils-arping and ndisc6 (scripts/install-deps.sh).
//! Everything happens inside namespaces this test creates, with documentation
//! addresses only; the namespaces are deleted on drop, also when an assertion
//! fails.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Host, Network, Speaker, host, run};
use ferrolb_core::packet::{
    MacAddr, NdpFrame, NdpMessage, NeighborAdvertisement, NeighborSolicitation, multicast_mac,
    solicited_node_multicast,
};

const NODE_MAC: &str = "02:00:00:00:01:01";
const CLIENT_MAC: &str = "02:00:00:00:02:02";
const WRONG_MAC: &str = "02:00:00:00:99:99";
const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `f` until it returns `Some`, or panics with `what` after DEADLINE.
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::eventually(what, DEADLINE, f)
}

/// The segment: a switch namespace with a bridge; `node` and `client` each
/// have an `eth0` on it.
struct Lab {
    net: Network,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let base = format!("flb{}{tag}", std::process::id());
        let hosts = vec![
            host(
                &base,
                "node",
                "node",
                Ipv4Addr::new(192, 0, 2, 1),
                "2001:db8::1",
                NODE_MAC,
            ),
            host(
                &base,
                "client",
                "cli",
                Ipv4Addr::new(192, 0, 2, 100),
                "2001:db8::100",
                CLIENT_MAC,
            ),
        ];
        Lab {
            net: Network::new(&format!("{base}-lan"), hosts).expect("the test's segment"),
        }
    }

    fn node(&self) -> &Host {
        &self.net.hosts[0]
    }

    fn client(&self) -> &Host {
        &self.net.hosts[1]
    }

    fn start_speaker(&self, addresses: &[&str]) -> Speaker {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.node().ns,
            env!("CARGO_BIN_EXE_ferrolb-speaker"),
            "announce",
        ]);
        for a in addresses {
            cmd.args(["--address", a]);
        }
        cmd.env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Speaker {
            child: cmd.spawn().expect("cannot start ferrolb-speaker"),
        }
    }

    fn in_client(&self, args: &[&str]) -> Output {
        self.client().output(args).expect("ip netns exec")
    }

    fn client_neighbour(&self, address: &str) -> String {
        run(
            "ip",
            &[
                "-n",
                &self.client().ns,
                "neigh",
                "show",
                address,
                "dev",
                "eth0",
            ],
        )
        .expect("ip neigh show")
    }

    /// Runs `f` on a thread inside the client namespace: sockets it opens
    /// belong to that namespace.
    fn with_client_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        ferrolb_tests::lab::in_netns(&self.client().ns, f).expect("the client thread")
    }
}

fn contains_mac(output: &Output, mac: &str) -> bool {
    String::from_utf8_lossy(&output.stdout)
        .to_lowercase()
        .contains(mac)
}

#[test]
fn speaker_answers_arp_and_ndp_for_owned_addresses_only_and_announces_takeover() {
    let lab = Lab::new("a");
    // Stale entries pointing elsewhere, as after a failover: only the
    // speaker's gratuitous ARP / unsolicited NA can correct them, since the
    // client sends nothing to these addresses before the check.
    for address in ["192.0.2.50", "2001:db8::50"] {
        run(
            "ip",
            &[
                "-n",
                &lab.client().ns,
                "neigh",
                "replace",
                address,
                "lladdr",
                WRONG_MAC,
                "dev",
                "eth0",
                "nud",
                "stale",
            ],
        )
        .expect("ip neigh replace");
    }
    let _speaker = lab.start_speaker(&["192.0.2.50", "2001:db8::50"]);

    for address in ["192.0.2.50", "2001:db8::50"] {
        eventually(
            &format!("gratuitous update of {address} in the client"),
            || {
                lab.client_neighbour(address)
                    .contains(NODE_MAC)
                    .then_some(())
            },
        );
    }

    // ARP: the owned address gets the node's MAC.
    eventually("an ARP reply for 192.0.2.50", || {
        let out = lab.in_client(&["arping", "-c", "1", "-w", "2", "-I", "eth0", "192.0.2.50"]);
        contains_mac(&out, NODE_MAC).then_some(())
    });
    // An address in the same subnet that the node does not own: silence.
    let out = lab.in_client(&["arping", "-c", "2", "-w", "2", "-I", "eth0", "192.0.2.51"]);
    assert!(!out.status.success(), "arping 192.0.2.51 got an answer");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Received 0 response(s)"));

    // NDP with a source link-layer option (ndisc6 always sends one).
    eventually("an NA for 2001:db8::50", || {
        let out = lab.in_client(&[
            "ndisc6",
            "-1",
            "-r",
            "2",
            "-w",
            "1000",
            "2001:db8::50",
            "eth0",
        ]);
        contains_mac(&out, NODE_MAC).then_some(())
    });
    let out = lab.in_client(&[
        "ndisc6",
        "-1",
        "-r",
        "2",
        "-w",
        "500",
        "2001:db8::51",
        "eth0",
    ]);
    assert!(!out.status.success(), "ndisc6 2001:db8::51 got an answer");
    assert!(!contains_mac(&out, NODE_MAC));

    // The node joined the solicited-node group of its IPv6 address.
    let maddr = run(
        "ip",
        &["-n", &lab.node().ns, "maddr", "show", "dev", "eth0"],
    )
    .expect("ip maddr show");
    assert!(maddr.contains("ff02::1:ff00:50"), "{maddr}");

    // A solicitation without a source link-layer option (RFC 4861 allows
    // it; MetalLB drops it): still answered, Solicited and Override.
    let group = solicited_node_multicast(TARGET.parse().unwrap());
    let answer = probe_without_source_option(&lab, multicast_mac(group), group);
    assert!(answer.solicited && answer.override_flag, "{answer:?}");
    assert_eq!(answer.target_mac, Some(NODE_MAC.parse().unwrap()));
}

const TARGET: &str = "2001:db8::50";

/// A router's unicast reachability probe: to the node's MAC and the target
/// address itself, without a source link-layer option. The kernel drops it
/// before any ICMPv6 socket (the address is not assigned); the speaker's
/// BPF-filtered packet socket sees it.
#[test]
fn speaker_answers_unicast_probe_without_source_option() {
    let lab = Lab::new("u");
    let _speaker = lab.start_speaker(&[TARGET]);
    let target: Ipv6Addr = TARGET.parse().unwrap();
    let answer = probe_without_source_option(&lab, NODE_MAC.parse().unwrap(), target);
    assert!(answer.solicited && answer.override_flag, "{answer:?}");
}

/// Sends, from the client, a solicitation for TARGET without a source
/// link-layer option to `destination` (Ethernet `eth_destination`), as
/// routers do for reachability probes, and returns the advertisement that
/// answers it.
fn probe_without_source_option(
    lab: &Lab,
    eth_destination: MacAddr,
    destination: Ipv6Addr,
) -> NeighborAdvertisement {
    let target: Ipv6Addr = TARGET.parse().unwrap();
    let client_mac: MacAddr = CLIENT_MAC.parse().unwrap();
    lab.with_client_netns(|| {
        let index = nix::net::if_::if_nametoindex("eth0").expect("client eth0");
        let socket = ferrolb_speaker::sockets::packet_socket(0x86dd, index).expect("packet socket");
        let probe = NdpFrame {
            eth_destination,
            eth_source: client_mac,
            source: "2001:db8::100".parse().unwrap(),
            destination,
            message: NdpMessage::Solicitation(NeighborSolicitation {
                target,
                source_mac: None,
            }),
        };
        let mut out = vec![0u8; probe.buffer_len()];
        probe.emit(&mut out).unwrap();
        let mut buf = [0u8; 1600];
        let mut sent_at = None::<Instant>;
        eventually("an NA answering the probe without source option", || {
            // Resend every second in case one was lost.
            if sent_at.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                socket.send(&out).expect("send probe");
                sent_at = Some(Instant::now());
            }
            let n = (&socket).read(&mut buf).ok()?;
            match NdpFrame::parse(&buf[..n]).ok()?.message {
                NdpMessage::Advertisement(na) if na.target == target && na.solicited => Some(na),
                _ => None,
            }
        })
    })
}

/// The freshness rule alone (no membership here): the responder is stopped
/// for 1 s while the client asks every 10 ms. After SIGCONT it answers no
/// request that waited in its socket longer than the limit (150 ms), and
/// answers fresh ones again.
#[test]
fn a_stopped_responder_answers_no_request_that_waited_past_the_limit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    const LIMIT: Duration = Duration::from_millis(150);
    let lab = Lab::new("s");
    let speaker = lab.start_speaker(&["192.0.2.50"]);
    let vip = "192.0.2.50".parse().unwrap();
    let node: MacAddr = NODE_MAC.parse().unwrap();
    let log = Arc::new(Mutex::new(common::TaggedLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = common::probe_tagged_in(
        &lab.client().ns,
        vip,
        Duration::from_millis(10),
        stop.clone(),
        log.clone(),
    );
    let answered_since = |since: SystemTime| {
        let log = log.lock().unwrap();
        log.replies
            .iter()
            .any(|r| r.mac == node && log.sent[r.seq as usize] >= since)
    };
    let start = SystemTime::now();
    eventually("the responder answering", || {
        answered_since(start).then_some(())
    });
    let pid = speaker.child.id();
    speaker.signal(nix::sys::signal::Signal::SIGSTOP);
    eventually("the responder stopped", || {
        common::all_threads_stopped(pid).then_some(())
    });
    let paused = SystemTime::now();
    std::thread::sleep(Duration::from_secs(1));
    let resumed = SystemTime::now();
    speaker.signal(nix::sys::signal::Signal::SIGCONT);
    eventually("fresh requests answered again", || {
        answered_since(resumed).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    let log = std::mem::take(&mut *log.lock().unwrap());
    let sent = |r: &common::TaggedReply| log.sent[r.seq as usize];
    // From the client's send to its kernel receiving the reply; the way
    // there and back takes microseconds, 20 ms is slack for a loaded machine.
    let old: Vec<String> = log
        .replies
        .iter()
        .map(|r| {
            (
                r.seq,
                r.received.duration_since(sent(r)).unwrap_or_default(),
            )
        })
        .filter(|(_, age)| *age > LIMIT + Duration::from_millis(20))
        .map(|(seq, age)| format!("#{seq} {age:?} old"))
        .collect();
    assert!(
        old.is_empty(),
        "{} replies to requests older than {LIMIT:?}: {old:?}",
        old.len()
    );
    let asked_during = log
        .sent
        .iter()
        .filter(|t| **t >= paused && **t <= resumed)
        .count();
    let answered_during = log
        .replies
        .iter()
        .filter(|r| sent(r) >= paused && sent(r) <= resumed)
        .count();
    eprintln!(
        "stopped responder: {asked_during} requests sent during the stop, {answered_during} of them answered (fresh enough at the resume)"
    );
}

/// The liveness epoch on the answering path: an announcer (the library, in
/// the node namespace) whose epoch a task renews every 10 ms, as the
/// membership loop does. It answers nothing while the epoch says "not
/// current" (a re-join) or while the stamp is older than the stall
/// threshold (the loop did not run), and answers again once renewed.
#[test]
fn the_responder_answers_only_while_the_liveness_epoch_is_current() {
    use ferrolb_speaker::announcer::{
        Announcer, Desired, DropLabel, GratuitousSchedule, Guard, Stats,
    };
    use ferrolb_speaker::liveness::Liveness;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const STALL_AFTER: Duration = Duration::from_millis(130);
    let lab = Lab::new("e");
    let vip: std::net::Ipv4Addr = "192.0.2.50".parse().unwrap();
    let liveness = Arc::new(Liveness::new(STALL_AFTER));
    let stats = Arc::new(Stats::default());
    let renewing = Arc::new(AtomicBool::new(true));
    let current = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let node = {
        let (liveness, stats, renewing, current, done) = (
            liveness.clone(),
            stats.clone(),
            renewing.clone(),
            current.clone(),
            done.clone(),
        );
        ferrolb_tests::lab::spawn_in_netns(&lab.node().ns, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let eth0 = ferrolb_speaker::interfaces::list()
                    .expect("interfaces")
                    .into_iter()
                    .find(|i| i.name == "eth0")
                    .expect("eth0");
                let guard = Guard {
                    max_age: Duration::from_millis(150),
                    liveness: Some(liveness.clone()),
                };
                let mut announcer =
                    Announcer::with_stats(GratuitousSchedule::default(), stats).with_guard(guard);
                let failed = announcer.set(&[Desired {
                    interface: eth0,
                    addresses: [std::net::IpAddr::V4(vip)].into(),
                }]);
                assert!(failed.is_empty(), "{failed:?}");
                while !done.load(Ordering::Relaxed) {
                    if renewing.load(Ordering::Relaxed) {
                        liveness.renew(
                            ferrolb_speaker::clock::boottime(),
                            current.load(Ordering::Relaxed),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .expect("the node's thread")
    };
    let dropped = |reason: &str| {
        stats
            .requests_dropped
            .get_or_create(&DropLabel {
                reason: reason.into(),
            })
            .get()
    };
    let ask = || {
        lab.with_client_netns(|| common::Prober::open().round_trip(vip, Duration::from_millis(200)))
    };
    let node_mac: MacAddr = NODE_MAC.parse().unwrap();
    let answered = || {
        eventually("an answer", || {
            ask().filter(|(_, m)| *m == node_mac).map(|_| ())
        })
    };
    let silent = |reason: &str| {
        let before = dropped(reason);
        for _ in 0..5 {
            assert_eq!(ask(), None, "answered while {reason}");
        }
        eventually(
            &format!("5 more requests counted as dropped, {reason}"),
            || (dropped(reason) >= before + 5).then_some(()),
        );
    };

    // Joined but re-joining: the stamp is young, the view not current.
    eventually("the epoch renewed as not current", || {
        let e = liveness.epoch();
        (e.stamp > Duration::ZERO && !e.current).then_some(())
    });
    // The responders are open once set() returned; a request is counted
    // as dropped only when it reaches them.
    eventually("a request dropped as not current", || {
        (ask().is_none() && dropped("not_current") > 0).then_some(())
    });
    silent("not_current");
    current.store(true, Ordering::Relaxed);
    answered();
    // The loop stops running: once its stamp is older than the threshold,
    // nothing is answered, although the last view said "current".
    renewing.store(false, Ordering::Relaxed);
    eventually("the stamp ageing past the threshold", || {
        let age = ferrolb_speaker::clock::boottime().saturating_sub(liveness.epoch().stamp);
        (age > STALL_AFTER).then_some(())
    });
    silent("not_current");
    renewing.store(true, Ordering::Relaxed);
    answered();
    assert_eq!(dropped("stale"), 0, "fresh requests counted as stale");
    done.store(true, Ordering::Relaxed);
    node.join().expect("node thread");
}
