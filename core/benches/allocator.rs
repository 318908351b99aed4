//! Allocator benchmark (BENCHMARKS.md): time to place 10,000 and 100,000
//! Services into a /16 and a /8 pool, and the time of one allocation when the
//! pool is 90 % full. Run: `cargo bench -p ferrolb-core --bench allocator`.
//!
//! Addresses here are data only; nothing is sent anywhere.

use std::time::{Duration, Instant};

use ferrolb_core::{Allocator, ServiceKey, ServiceSpec, config};

fn allocator(cidr: &str) -> Allocator {
    let yaml =
        format!("address-pools:\n- name: bench\n  protocol: layer2\n  addresses: [{cidr}]\n");
    let mut a = Allocator::new();
    a.set_config(config::parse(&yaml).unwrap()).unwrap();
    a
}

/// Places `n` new Services; returns the time spent in the allocator only.
fn place(a: &mut Allocator, from: usize, n: usize) -> Duration {
    let mut spent = Duration::ZERO;
    for i in from..from + n {
        let spec = ServiceSpec::simple("bench", &format!("s{i}"));
        let start = Instant::now();
        a.ensure(&spec, &[]).expect("the pool is large enough");
        spent += start.elapsed();
    }
    spent
}

/// Median and p99 of single allocate+release cycles on a pool filled to
/// `fill` of `size` addresses, freeing a random-looking address each time so
/// the lowest free address is deep inside the pool.
fn one_allocation(cidr: &str, size: usize, fill: f64) -> (Duration, Duration) {
    let mut a = allocator(cidr);
    let n = (size as f64 * fill) as usize;
    place(&mut a, 0, n);
    let mut samples = Vec::with_capacity(2000);
    let probe = ServiceSpec::simple("bench", "probe");
    for i in 0..2000usize {
        // Free one held address far from the start, then allocate: the
        // allocator must find it without walking the 90 % in front of it.
        let victim = ServiceKey::new("bench", format!("s{}", (i * 7919 + n / 2) % n));
        let released = a.release(&victim);
        let start = Instant::now();
        let got = a.ensure(&probe, &[]).unwrap();
        samples.push(start.elapsed());
        assert_eq!(Some(got.allocation.ips.clone()), released);
        a.release(&probe.key);
        a.learn(
            &ServiceSpec::simple("bench", &victim.name),
            &got.allocation.ips,
        )
        .unwrap();
    }
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it once as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!("## Allocator\n");
    println!(
        "Command: `cargo bench -p ferrolb-core --bench allocator` (the /8-at-90 % case holds 15.1 \
         million Services; peak memory below). Time spent in the allocator only.\n"
    );
    println!(
        "Placing Services one after another into an empty pool (each Service takes the lowest \
         free address):\n"
    );
    println!("| pool | Services placed | total | per Service |");
    println!("|---|---|---|---|");
    let sizes: &[usize] = if quick { &[1_000] } else { &[10_000, 100_000] };
    for (label, cidr) in [("/16", "10.0.0.0/16"), ("/8", "10.0.0.0/8")] {
        for &n in sizes {
            if label == "/16" && n > 65_536 {
                println!("| {label} | {n} | does not fit (65,536 addresses) | |");
                continue;
            }
            let mut a = allocator(cidr);
            let t = place(&mut a, 0, n);
            println!(
                "| {label} | {n} | {:.1} ms | {:.2} µs |",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
    println!();
    println!(
        "One allocation in a pool that is 90 % full, where the lowest free address lies deep \
         inside the pool (a held address in the middle is released, then one allocation takes \
         it; 2,000 samples):\n"
    );
    println!("| pool, 90 % full | Services held | one allocation p50 | p99 |");
    println!("|---|---|---|---|");
    let cases: &[(&str, &str, usize)] = if quick {
        &[("/16", "10.0.0.0/16", 65_536)]
    } else {
        &[
            ("/16", "10.0.0.0/16", 65_536),
            ("/8", "10.0.0.0/8", 1 << 24),
        ]
    };
    for &(label, cidr, size) in cases {
        let (p50, p99) = one_allocation(cidr, size, 0.9);
        println!(
            "| {label} | {} | {:.2} µs | {:.2} µs |",
            (size as f64 * 0.9) as usize,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    let peak_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    println!(
        "\nThe time does not grow with how full the pool is: each pool entry keeps its free \
         addresses as a map of intervals, so the lowest free address is found in logarithmic \
         time, never by scanning from the start. Peak memory of the whole run (`VmHWM`, the \
         largest case dominates): {:.1} GiB.\n",
        peak_kib as f64 / 1024.0 / 1024.0
    );
}
