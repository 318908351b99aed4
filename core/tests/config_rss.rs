//! Parsing a hostile `config` cannot run the controller or a speaker out of
//! memory (issue #17, item 3): for each input of `support/hostile.rs`, a
//! child process (this test executable, re-run) parses it and reports how far
//! its peak RSS rose. Before the size limit and the YAML budget, an alias bomb
//! took the peak to about 150 MiB and a 5 MiB config to about 100 MiB, over
//! the manifests' 128 MiB limit. Deterministic: a memory bound, not a timing.

#[path = "support/hostile.rs"]
mod hostile;

use std::process::Command;

/// The most any input may raise peak RSS, in KiB. The manifests limit the
/// controller and the speaker to 128 MiB; their steady state is well under
/// 32 MiB (BENCHMARKS.md), so a few MiB leaves far more than 4x headroom.
const BOUND_KIB: u64 = 8 * 1024;

/// Runs in the child only: parses the input named in the environment.
#[test]
fn rss_child() {
    if let Ok(name) = std::env::var(hostile::CHILD_ENV) {
        hostile::child(&name);
    }
}

#[test]
fn no_hostile_config_raises_peak_rss_by_more_than_the_bound() {
    let exe = std::env::current_exe().expect("the test executable");
    let mut failures = Vec::new();
    for (name, what) in hostile::INPUTS {
        let out = Command::new(&exe)
            .args(["--exact", "rss_child", "--nocapture", "--test-threads=1"])
            .env(hostile::CHILD_ENV, name)
            .output()
            .expect("re-run the test executable");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: the child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = hostile::read_report(&stdout)
            .unwrap_or_else(|| panic!("{name}: no report in {stdout:?}"));
        assert_eq!(r.name, *name);
        eprintln!(
            "{name} ({what}): {} bytes, peak RSS +{} KiB (process peak {} KiB), {}",
            r.input_bytes, r.rise_kib, r.peak_kib, r.outcome
        );
        if r.rise_kib > BOUND_KIB {
            failures.push(format!("{name}: +{} KiB", r.rise_kib));
        }
        // Only the valid config at the size limit is accepted.
        assert_eq!(
            r.outcome.starts_with("accepted"),
            *name == "max-size-valid",
            "{name}: {}",
            r.outcome
        );
    }
    assert!(
        failures.is_empty(),
        "peak RSS rose by more than {BOUND_KIB} KiB: {failures:?}"
    );
}
