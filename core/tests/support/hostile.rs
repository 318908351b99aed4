//! Hostile `config` documents and a peak-memory probe for parsing them, shared
//! by the test `core/tests/config_rss.rs` and the bench
//! `core/benches/config_rss.rs`.
//!
//! Each input is parsed in a process of its own (the caller re-runs its own
//! executable), so that one input's allocations cannot hide another's: the
//! child builds the input, resets its peak RSS (`VmHWM`, by writing 5 to
//! `/proc/self/clear_refs`), parses, and reports how far the peak rose above
//! the resident size just before parsing.

use std::fmt::Write as _;

/// The environment variable that tells a re-run executable which input to parse.
pub const CHILD_ENV: &str = "FERROLB_CONFIG_RSS_INPUT";

/// The inputs: name, what it is.
pub const INPUTS: &[(&str, &str)] = &[
    (
        "alias-bomb",
        "alias bomb: 9 anchors, each a list of 9 aliases of the one before (9^9 nodes expanded)",
    ),
    (
        "alias-fan-out",
        "one 64 KiB string, used by 3,000 aliases as address entries (192 MiB expanded)",
    ),
    (
        "5mb-config",
        "a 5 MiB config of address entries (over the size limit)",
    ),
    (
        "5mb-pool-name",
        "a pool whose name is 5 MiB long (over the size limit)",
    ),
    (
        "long-pool-name",
        "a pool whose name is 200 KiB long (under the size limit)",
    ),
    ("deep-nesting", "10,000 nested flow sequences"),
    (
        "deep-block-nesting",
        "500 nested block sequences of mappings (1,000 levels)",
    ),
    ("nul-bytes", "250 KiB of NUL bytes"),
    (
        "max-size-valid",
        "a valid config of /32 address entries (about 14,000), filled to just under the size limit",
    ),
    (
        "max-size-error-at-end",
        "the same with an unknown key at its end (parsed twice: the error names the pool)",
    ),
];

/// A string of exactly `cap` bytes' capacity, filled by `f`, so that building
/// the input leaves no freed memory behind for the parser to reuse unseen.
fn build(cap: usize, f: impl FnOnce(&mut String)) -> String {
    let mut s = String::with_capacity(cap);
    f(&mut s);
    s
}

/// The document called `name`.
pub fn input(name: &str) -> String {
    match name {
        "alias-bomb" => build(4096, |s| {
            s.push_str("bgp-communities:\n  a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
            for (prev, cur) in ('a'..='h').zip('b'..='i') {
                let _ = write!(s, "  {cur}: &{cur} [");
                for j in 0..9 {
                    let _ = write!(s, "{}*{prev}", if j == 0 { "" } else { ", " });
                }
                s.push_str("]\n");
            }
        }),
        "alias-fan-out" => build(100 * 1024, |s| {
            s.push_str("address-pools:\n- name: &n \"");
            s.extend(std::iter::repeat_n('x', 64 * 1024));
            s.push_str("\"\n  protocol: layer2\n  addresses: [");
            for j in 0..3000 {
                s.push_str(if j == 0 { "*n" } else { ", *n" });
            }
            s.push_str("]\n");
        }),
        "5mb-config" => build(5 * 1024 * 1024 + 64, |s| {
            s.push_str("address-pools:\n- name: big\n  protocol: layer2\n  addresses:\n");
            let mut i = 0u32;
            while s.len() < 5 * 1024 * 1024 - 40 {
                let _ = writeln!(
                    s,
                    "  - 10.{}.{}.{}/32",
                    i >> 16 & 255,
                    i >> 8 & 255,
                    i & 255
                );
                i += 1;
            }
        }),
        "5mb-pool-name" => pool_named(5 * 1024 * 1024),
        "long-pool-name" => pool_named(200 * 1024),
        "deep-nesting" => build(20_100, |s| {
            s.push_str("peers: ");
            s.extend(std::iter::repeat_n('[', 10_000));
            s.extend(std::iter::repeat_n(']', 10_000));
            s.push('\n');
        }),
        "deep-block-nesting" => build(256 * 1024, |s| {
            s.push_str("peers:\n");
            for d in 0..500 {
                s.extend(std::iter::repeat_n(' ', 2 * d + 2));
                s.push_str("- k:\n");
            }
        }),
        "nul-bytes" => build(250 * 1024, |s| {
            s.extend(std::iter::repeat_n('\0', 250 * 1024));
        }),
        "max-size-valid" => max_size(""),
        "max-size-error-at-end" => max_size("  bogus: 1\n"),
        other => panic!("no hostile input named {other:?}"),
    }
}

/// A config of /32 entries filled to just under the size limit, then `tail`.
fn max_size(tail: &str) -> String {
    build(256 * 1024, |s| {
        s.push_str("address-pools:\n- name: big\n  protocol: layer2\n  addresses:\n");
        let mut i = 0u32;
        while s.len() < 256 * 1024 - 24 - tail.len() {
            let _ = writeln!(
                s,
                "  - 10.{}.{}.{}/32",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            );
            i += 1;
        }
        s.push_str(tail);
    })
}

fn pool_named(len: usize) -> String {
    build(len + 80, |s| {
        s.push_str("address-pools:\n- name: ");
        s.extend(std::iter::repeat_n('p', len));
        s.push_str("\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n");
    })
}

/// A `/proc/self/status` field, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// In the child: parses input `name` and prints one line,
/// `RSS <name> <input bytes> <rise KiB> <peak KiB> <outcome>`.
pub fn child(name: &str) {
    let text = input(name);
    // Reset the peak to the current RSS (Linux 4.0+). Should that fail, the
    // peak still counts building the input, which only overstates the rise.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kib("VmRSS");
    let result = ferrolb_core::config::parse(&text);
    let peak = status_kib("VmHWM");
    let outcome = match &result {
        Ok(c) => format!("accepted ({} pools)", c.pools.len()),
        Err(e) => format!("refused: {}", e[0]),
    };
    // The outcome can be long (it may quote the input): keep the line short.
    let outcome: String = outcome.chars().take(300).collect();
    println!(
        "RSS {name} {} {} {peak} {}",
        text.len(),
        peak.saturating_sub(before),
        outcome.replace('\n', " ")
    );
    drop(result);
}

/// One child's report.
pub struct Report {
    pub name: String,
    pub input_bytes: usize,
    pub rise_kib: u64,
    pub peak_kib: u64,
    pub outcome: String,
}

/// Reads the `RSS ...` line from a child's output.
pub fn read_report(stdout: &str) -> Option<Report> {
    // libtest may print "test rss_child ... " ahead of it on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RSS ").map(|(_, r)| r))?;
    let mut f = line.splitn(5, ' ');
    Some(Report {
        name: f.next()?.to_owned(),
        input_bytes: f.next()?.parse().ok()?,
        rise_kib: f.next()?.parse().ok()?,
        peak_kib: f.next()?.parse().ok()?,
        outcome: f.next().unwrap_or_default().to_owned(),
    })
}
