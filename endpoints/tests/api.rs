//! ferrolb-endpoints against an API server: the in-process test API server, or the real
//! cluster named by `FERROLB_E2E_KUBECONFIG` (tests that inject faults skip themselves there).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Env, eventually, ready, terminating, zoned};
use ferrolb_endpoints::{
    Config, Ejection, Error, Family, FamilyPreference, HintsUsed, LoadBalancer, Policy,
};
use ferrolb_tests::Contents;

fn addrs(lb: &LoadBalancer) -> Vec<String> {
    lb.endpoints()
        .iter()
        .map(|e| e.addr().to_string())
        .collect()
}

fn set(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort_by_key(|s| s.parse::<SocketAddr>().unwrap());
    v
}

#[tokio::test]
async fn sync_merges_slices_and_next_round_robins() {
    let env = Env::start("sync-rr").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-v4",
        "IPv4",
        "http",
        8080,
        vec![ready("10.1.0.2", "node-2"), ready("10.1.0.1", "node-1")],
    )
    .await;
    env.slice(
        "web",
        "web-v6",
        "IPv6",
        "http",
        8080,
        vec![ready("fd00:1::1", "node-1")],
    )
    .await;
    // Another Service's slice is not ours.
    env.slice(
        "other",
        "other-v4",
        "IPv4",
        "http",
        8080,
        vec![ready("10.9.0.1", "node-1")],
    )
    .await;

    let lb = LoadBalancer::new(
        env.client.clone(),
        Config::new("web").namespace(&env.ns).port("http"),
    );
    assert!(
        matches!(lb.next(), Err(Error::NotSynced)),
        "next() before any sync"
    );
    lb.sync().await.expect("sync");
    assert_eq!(
        addrs(&lb),
        ["10.1.0.1:8080", "10.1.0.2:8080", "[fd00:1::1]:8080"]
    );
    // In address order, round and round.
    let order: Vec<String> = (0..7)
        .map(|_| lb.next().unwrap().addr().to_string())
        .collect();
    let first = lb
        .endpoints()
        .iter()
        .position(|e| e.addr().to_string() == order[0])
        .unwrap();
    for (k, a) in order.iter().enumerate() {
        assert_eq!(*a, addrs(&lb)[(first + k) % 3], "pick {k} of {order:?}");
    }
    let ep = lb.endpoints()[1].clone();
    assert_eq!(
        (ep.host().to_string().as_str(), ep.port(), ep.node()),
        ("10.1.0.2", 8080, Some("node-2"))
    );

    // The Service port number names the same port; the families can be narrowed.
    let by_number = LoadBalancer::new(
        env.client.clone(),
        Config::new("web")
            .namespace(&env.ns)
            .port(80)
            .families(FamilyPreference::Only(Family::IPv6)),
    );
    by_number.sync().await.unwrap();
    assert_eq!(addrs(&by_number), ["[fd00:1::1]:8080"]);
    env.cleanup().await;
}

#[tokio::test]
async fn namespace_defaults_to_the_clients() {
    let env = Env::start("default-ns").await;
    env.service("web", &[("", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "",
        8080,
        vec![ready("10.2.0.1", "n")],
    )
    .await;
    let lb = LoadBalancer::new(
        env.client_defaulting_to_namespace().await,
        Config::new("web"),
    );
    assert_eq!(lb.namespace(), env.ns);
    lb.sync().await.unwrap();
    assert_eq!(lb.next().unwrap().addr().to_string(), "10.2.0.1:8080");
    env.cleanup().await;
}

#[tokio::test]
async fn sync_errors_are_distinct() {
    let env = Env::start("errors").await;
    let lb = |name: &str, port: Option<&str>| {
        let mut c = Config::new(name).namespace(&env.ns);
        if let Some(p) = port {
            c = c.port(p);
        }
        LoadBalancer::new(env.client.clone(), c)
    };
    assert!(matches!(
        lb("", None).sync().await,
        Err(Error::MissingServiceName)
    ));
    assert!(matches!(
        lb("", None).start_background_sync(),
        Err(Error::MissingServiceName)
    ));
    let missing = lb("missing", None);
    assert!(matches!(
        missing.sync().await,
        Err(Error::ServiceNotFound { .. })
    ));
    assert!(matches!(missing.next(), Err(Error::ServiceNotFound { .. })));

    env.service("empty", &[("http", 80, 8080)]).await;
    let empty = lb("empty", None);
    let e = empty.sync().await.unwrap_err();
    assert!(matches!(e, Error::NoEndpoints { .. }), "{e}");
    assert!(matches!(empty.next(), Err(Error::NoEndpoints { .. })));

    env.service("two", &[("http", 80, 8080), ("metrics", 9090, 9090)])
        .await;
    env.slice(
        "two",
        "two-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.3.0.1", "n")],
    )
    .await;
    assert!(matches!(
        lb("two", None).sync().await,
        Err(Error::AmbiguousPort { .. })
    ));
    assert!(matches!(
        lb("two", Some("grpc")).sync().await,
        Err(Error::PortNotFound { .. })
    ));
    assert!(
        matches!(
            lb("two", Some("8080")).sync().await,
            Err(Error::PortNotFound { .. })
        ),
        "8080 is a target port, not the Service's"
    );
    // A port the Service has but no slice lists: no endpoints.
    assert!(matches!(
        lb("two", Some("metrics")).sync().await,
        Err(Error::NoEndpoints { .. })
    ));
    lb("two", Some("http")).sync().await.unwrap();
    env.cleanup().await;
}

/// Eight tasks call `next()` without pause while the endpoints change under them; each
/// answer must be an endpoint of the current set (or, during a change, of the one before
/// or after).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_change_while_many_tasks_call_next() {
    let env = Env::start("concurrent").await;
    env.service("web", &[("http", 80, 8080)]).await;
    let sets: Vec<Vec<&str>> = vec![
        vec!["10.4.0.1", "10.4.0.2"],
        vec!["10.4.0.1", "10.4.0.2", "10.4.0.3", "10.4.0.4"],
        vec!["10.4.0.3", "10.4.0.4"],
        vec!["10.4.0.5"],
        vec!["10.4.0.1", "10.4.0.5", "10.4.0.6"],
    ];
    let as_addrs = |s: &Vec<&str>| -> HashSet<SocketAddr> {
        s.iter()
            .map(|ip| format!("{ip}:8080").parse().unwrap())
            .collect()
    };
    let expected: Arc<Vec<HashSet<SocketAddr>>> = Arc::new(sets.iter().map(as_addrs).collect());
    let write = |i: usize| {
        let eps = sets[i].iter().map(|ip| ready(ip, "n")).collect();
        env.slice("web", "web-a", "IPv4", "http", 8080, eps)
    };
    write(0).await;
    let lb = LoadBalancer::new(env.client.clone(), Config::new("web").namespace(&env.ns));
    lb.sync().await.unwrap();
    lb.start_background_sync().unwrap();

    // phase 2k: the set is sets[k]; 2k+1: changing from sets[k] to sets[k+1].
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let picks = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..8 {
        let (lb, phase, stop, picks, expected) = (
            lb.clone(),
            phase.clone(),
            stop.clone(),
            picks.clone(),
            expected.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let before = phase.load(Ordering::SeqCst);
                let got = lb.next().expect("an endpoint at every moment").addr();
                let after = phase.load(Ordering::SeqCst);
                if before == after {
                    let k = before / 2;
                    let ok = if before.is_multiple_of(2) {
                        expected[k].contains(&got)
                    } else {
                        expected[k].contains(&got) || expected[k + 1].contains(&got)
                    };
                    assert!(ok, "phase {before}: {got} is not an endpoint");
                }
                n += 1;
                picks.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            n
        }));
    }
    for k in 1..sets.len() {
        phase.store(2 * k - 1, Ordering::SeqCst);
        write(k).await;
        let want: BTreeSet<SocketAddr> = expected[k].iter().copied().collect();
        eventually(&format!("set {k} in the rotation"), || {
            lb.endpoints()
                .iter()
                .map(|e| e.addr())
                .collect::<BTreeSet<_>>()
                == want
        })
        .await;
        phase.store(2 * k, Ordering::SeqCst);
        // Let the readers run in this phase for a while.
        let seen = picks.load(Ordering::Relaxed);
        eventually("the readers to go on", || {
            picks.load(Ordering::Relaxed) > seen + 10_000
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        assert!(
            t.await.expect("reader task") > 0,
            "every reader made progress"
        );
    }
    lb.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn terminating_endpoints_only_when_none_is_ready() {
    let env = Env::start("terminating").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![
            ready("10.5.0.1", "n1"),
            terminating("10.5.0.2", "n2", true),
            terminating("10.5.0.3", "n3", false),
        ],
    )
    .await;
    let lb = LoadBalancer::new(env.client.clone(), Config::new("web").namespace(&env.ns));
    lb.sync().await.unwrap();
    lb.start_background_sync().unwrap();
    assert_eq!(addrs(&lb), ["10.5.0.1:8080"]);
    assert!(!lb.state().terminating_fallback);

    // The ready one starts terminating too: the serving ones are used.
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![
            terminating("10.5.0.1", "n1", true),
            terminating("10.5.0.2", "n2", true),
            terminating("10.5.0.3", "n3", false),
        ],
    )
    .await;
    eventually("the serving-terminating fallback", || {
        lb.state().terminating_fallback
    })
    .await;
    assert_eq!(addrs(&lb), ["10.5.0.1:8080", "10.5.0.2:8080"]);
    assert!(lb.next().unwrap().is_terminating());

    // A new ready endpoint (in another slice) takes over at once.
    env.slice(
        "web",
        "web-b",
        "IPv4",
        "http",
        8080,
        vec![ready("10.5.0.9", "n9")],
    )
    .await;
    eventually("the new ready endpoint alone", || {
        addrs(&lb) == ["10.5.0.9:8080"]
    })
    .await;
    assert!(!lb.state().terminating_fallback);
    lb.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn topology_hints_for_the_callers_zone() {
    let env = Env::start("hints").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![
            zoned("10.6.0.1", "zone-a", &["zone-a"]),
            zoned("10.6.0.2", "zone-b", &["zone-b"]),
            zoned("10.6.0.3", "zone-c", &["zone-a"]),
        ],
    )
    .await;
    let in_zone = |z: &str| {
        LoadBalancer::new(
            env.client.clone(),
            Config::new("web").namespace(&env.ns).zone(z),
        )
    };
    let a = in_zone("zone-a");
    a.sync().await.unwrap();
    assert_eq!(addrs(&a), ["10.6.0.1:8080", "10.6.0.3:8080"]);
    assert_eq!(a.state().hints, HintsUsed::Zone);
    assert_eq!(
        a.next()
            .unwrap()
            .zone()
            .map(str::to_owned)
            .as_deref()
            .map(|z| z == "zone-a" || z == "zone-c"),
        Some(true)
    );
    let b = in_zone("zone-b");
    b.sync().await.unwrap();
    assert_eq!(addrs(&b), ["10.6.0.2:8080"]);
    // No hint names zone-d: every endpoint.
    let d = in_zone("zone-d");
    d.sync().await.unwrap();
    assert_eq!(d.endpoints().len(), 3);
    assert_eq!(d.state().hints, HintsUsed::None);

    // The hinted set in zone-b goes away (its endpoint is no longer ready): all of the
    // remaining ones, through the watch.
    b.start_background_sync().unwrap();
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![
            zoned("10.6.0.1", "zone-a", &["zone-a"]),
            terminating("10.6.0.2", "n", false),
            zoned("10.6.0.3", "zone-c", &["zone-a"]),
        ],
    )
    .await;
    eventually("zone-b's fallback to every endpoint", || {
        addrs(&b) == ["10.6.0.1:8080", "10.6.0.3:8080"]
    })
    .await;
    assert_eq!(b.state().hints, HintsUsed::None);
    b.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn reported_failures_eject_at_most_half() {
    let env = Env::start("ejection").await;
    env.service("web", &[("http", 80, 8080)]).await;
    let ips = ["10.7.0.1", "10.7.0.2", "10.7.0.3", "10.7.0.4"];
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        ips.iter().map(|ip| ready(ip, "n")).collect(),
    )
    .await;
    // A backoff far longer than the test: nothing comes back by itself.
    let lb = LoadBalancer::new(
        env.client.clone(),
        Config::new("web")
            .namespace(&env.ns)
            .ejection(Some(Ejection {
                consecutive_failures: 1,
                base: Duration::from_secs(3600),
                max: Duration::from_secs(3600),
            })),
    );
    lb.sync().await.unwrap();
    let eps = lb.endpoints();
    assert!(lb.report_failure(&eps[0]));
    let req = lb.next_tracked().unwrap();
    let second = req.endpoint().clone();
    assert_ne!(second, eps[0]);
    assert!(req.failure(), "a tracked request's failure ejects too");
    // Two of four are out: no more.
    let third = eps.iter().find(|e| **e != eps[0] && **e != second).unwrap();
    assert!(!lb.report_failure(third));
    assert_eq!(lb.state().ejected, 2);
    let seen: HashSet<SocketAddr> = (0..40).map(|_| lb.next().unwrap().addr()).collect();
    assert_eq!(seen.len(), 2);
    assert!(!seen.contains(&eps[0].addr()) && !seen.contains(&second.addr()));
    // An endpoint that leaves and comes back keeps its ejection only while it stays.
    env.cleanup().await;
}

#[tokio::test]
async fn power_of_two_choices_avoids_the_busy_endpoint() {
    let env = Env::start("p2c").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.8.0.1", "n"), ready("10.8.0.2", "n")],
    )
    .await;
    let lb = LoadBalancer::new(
        env.client.clone(),
        Config::new("web")
            .namespace(&env.ns)
            .policy(Policy::PowerOfTwoChoices),
    );
    lb.sync().await.unwrap();
    let busy = lb.next_tracked().unwrap();
    let idle: HashSet<SocketAddr> = (0..50).map(|_| lb.next().unwrap().addr()).collect();
    assert_eq!(idle.len(), 1);
    assert!(!idle.contains(&busy.endpoint().addr()));
    drop(busy);
    env.cleanup().await;
}

/// Fault injection: watches closed, history compacted (410 Gone, relist), requests failing,
/// the API server restarted; the background sync recovers from each and `next()` keeps
/// answering throughout.
#[tokio::test]
async fn background_sync_recovers_from_watch_faults() {
    let env = Env::start("faults").await;
    let Some(server) = env.server() else {
        eprintln!(
            "skipped: fault injection needs the test API server (FERROLB_E2E_KUBECONFIG is set)"
        );
        return;
    };
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.9.0.1", "n")],
    )
    .await;
    let lb = LoadBalancer::new(env.client.clone(), Config::new("web").namespace(&env.ns));
    lb.start_background_sync().unwrap();
    eventually("the first list", || addrs(&lb) == ["10.9.0.1:8080"]).await;
    eventually("both watches open", || server.open_watches() >= 2).await;

    // 1. Watches end: they resume from where they were.
    server.close_watches();
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.9.0.2", "n")],
    )
    .await;
    eventually("the change after closed watches", || {
        addrs(&lb) == ["10.9.0.2:8080"]
    })
    .await;

    // 2. A change the watch has not seen yet is compacted away (410 Gone): a fresh list.
    let lists = lb.stats().lists;
    eventually("both watches open again", || server.open_watches() >= 2).await;
    server.with_store(|s| {
        let r =
            ferrolb_tests::apiserver::resources::find("discovery.k8s.io", "v1", "endpointslices")
                .unwrap();
        s.create(
            r,
            &env.ns,
            serde_json::json!({
                "metadata": {"name": "web-b", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [ready("10.9.0.3", "n")],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }),
        )
        .unwrap();
        s.compact();
    });
    eventually("the change compacted away, after a relist", || {
        addrs(&lb) == ["10.9.0.2:8080", "10.9.0.3:8080"]
    })
    .await;
    assert!(lb.stats().lists > lists, "a relist");
    env.delete_slice("web-b").await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.9.0.3", "n")],
    )
    .await;
    eventually("the changes after the relist", || {
        addrs(&lb) == ["10.9.0.3:8080"]
    })
    .await;

    // 3. Requests fail for a while: retried with a backoff; readers keep the endpoints.
    let errors = lb.stats().watch_errors;
    let injected = server.injected_failures();
    server.fail_next_requests(4, 500);
    server.close_watches();
    assert_eq!(lb.next().unwrap().addr().to_string(), "10.9.0.3:8080");
    eventually("the injected failures to be seen", || {
        lb.stats().watch_errors > errors
    })
    .await;
    // (The test's own writes must not meet them.)
    eventually("every injected failure consumed", || {
        server.injected_failures() >= injected + 4
    })
    .await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.9.0.4", "n")],
    )
    .await;
    eventually("the change after failed requests", || {
        addrs(&lb) == ["10.9.0.4:8080"]
    })
    .await;

    // 4. The API server restarts (same contents).
    server.restart(Contents::Keep).await.unwrap();
    assert_eq!(lb.next().unwrap().addr().to_string(), "10.9.0.4:8080");
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.9.0.5", "n")],
    )
    .await;
    eventually("the change after a restart", || {
        addrs(&lb) == ["10.9.0.5:8080"]
    })
    .await;

    // 5. It restarts empty (a new cluster): the Service is gone.
    server.restart(Contents::Drop).await.unwrap();
    eventually(
        "the Service gone after a restart that dropped everything",
        || matches!(lb.next(), Err(Error::ServiceNotFound { .. })),
    )
    .await;
    lb.shutdown().await;
}

#[tokio::test]
async fn periodic_resync_lists_again() {
    let env = Env::start("resync").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.10.0.1", "n")],
    )
    .await;
    let lb = LoadBalancer::new(
        env.client.clone(),
        Config::new("web")
            .namespace(&env.ns)
            .resync_interval(Some(Duration::from_millis(200))),
    );
    lb.start_background_sync().unwrap();
    eventually("the first list", || addrs(&lb) == ["10.10.0.1:8080"]).await;
    eventually("two resyncs", || {
        lb.stats().restarts >= 2 && lb.stats().lists >= 3
    })
    .await;
    assert_eq!(addrs(&lb), ["10.10.0.1:8080"]);
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.10.0.2", "n")],
    )
    .await;
    eventually("a change between resyncs", || {
        addrs(&lb) == ["10.10.0.2:8080"]
    })
    .await;
    lb.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn service_deleted_and_created_again() {
    let env = Env::start("deleted").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.11.0.1", "n")],
    )
    .await;
    let lb = LoadBalancer::new(env.client.clone(), Config::new("web").namespace(&env.ns));
    lb.sync().await.unwrap();
    lb.start_background_sync().unwrap();
    env.delete_service("web").await;
    eventually("next() to say the Service is gone", || {
        matches!(lb.next(), Err(Error::ServiceNotFound { .. }))
    })
    .await;
    // The test's slice has no ownerReference to the Service (a controller's would), so no
    // garbage collector removes it: the test does, as the endpoint controller would.
    env.delete_slice("web-a").await;
    env.service("web", &[("http", 80, 8080)]).await;
    eventually("no endpoints for the new Service", || {
        matches!(lb.next(), Err(Error::NoEndpoints { .. }))
    })
    .await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.11.0.2", "n")],
    )
    .await;
    eventually("the new Service's endpoint", || {
        addrs(&lb) == set(&["10.11.0.2:8080"])
    })
    .await;
    lb.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_stops_the_watches() {
    let env = Env::start("shutdown").await;
    env.service("web", &[("http", 80, 8080)]).await;
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.12.0.1", "n")],
    )
    .await;
    let lb = LoadBalancer::new(env.client.clone(), Config::new("web").namespace(&env.ns));
    lb.start_background_sync().unwrap();
    assert!(matches!(
        lb.start_background_sync(),
        Err(Error::AlreadyStarted)
    ));
    eventually("the first list", || addrs(&lb) == ["10.12.0.1:8080"]).await;
    if let Some(server) = env.server() {
        eventually("both watches open", || server.open_watches() >= 2).await;
    }
    lb.shutdown().await;
    if let Some(server) = env.server() {
        eventually("no watch open", || server.open_watches() == 0).await;
    }
    assert!(matches!(lb.start_background_sync(), Err(Error::Shutdown)));
    // The endpoints stay as they were.
    env.slice(
        "web",
        "web-a",
        "IPv4",
        "http",
        8080,
        vec![ready("10.12.0.2", "n")],
    )
    .await;
    assert_eq!(lb.next().unwrap().addr().to_string(), "10.12.0.1:8080");
    // Dropping the last handle also stops a background sync.
    let lb2 = LoadBalancer::new(env.client.clone(), Config::new("web").namespace(&env.ns));
    lb2.start_background_sync().unwrap();
    eventually("the second load balancer's list", || {
        addrs(&lb2) == ["10.12.0.2:8080"]
    })
    .await;
    drop(lb2);
    if let Some(server) = env.server() {
        eventually("no watch open after the drop", || {
            server.open_watches() == 0
        })
        .await;
    }
    env.cleanup().await;
}
