//! Peak memory of parsing hostile `config` documents (BENCHMARKS.md). Run:
//! `cargo bench -p ferrolb-core --bench config_rss`.
//!
//! Each input of `core/tests/support/hostile.rs` is parsed in a process of its
//! own (this executable, re-run), which reports how far its peak RSS (`VmHWM`)
//! rose while parsing. The test `core/tests/config_rss.rs` asserts a bound on
//! the same figures. Prints one Markdown section.

#[path = "../tests/support/hostile.rs"]
mod hostile;

use std::process::Command;

use ferrolb_core::config::{MAX_CONFIG_BYTES, MAX_POOL_NAME};

/// The container memory limit in a manifest, e.g. "128Mi".
fn memory_limit(manifest: &str) -> String {
    let path = format!("{}/../manifests/{manifest}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .skip_while(|l| l.trim() != "limits:")
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .map(|m| m.trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn main() {
    if let Ok(name) = std::env::var(hostile::CHILD_ENV) {
        hostile::child(&name);
        return;
    }
    let exe = std::env::current_exe().expect("the bench executable");
    let mut rows = Vec::new();
    for (name, what) in hostile::INPUTS {
        let out = Command::new(&exe)
            .env(hostile::CHILD_ENV, name)
            .output()
            .expect("re-run the bench executable");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let r = hostile::read_report(&stdout).unwrap_or_else(|| {
            panic!(
                "{name}: no report: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(r.name, *name, "the report is for the input asked for");
        rows.push((what, r));
    }
    let controller = memory_limit("controller.yaml");
    let speaker = memory_limit("speaker.yaml");
    let worst = rows.iter().map(|(_, r)| r.rise_kib).max().unwrap_or(0);
    let worst_peak = rows.iter().map(|(_, r)| r.peak_kib).max().unwrap_or(0);

    println!("## Config parsing: peak memory of hostile configs");
    println!();
    println!(
        "Command: `cargo bench -p ferrolb-core --bench config_rss`. Each document is handed to `config::parse` (what the controller, every speaker and `check-config` use) in a process of its own; the figure is how far the process's peak RSS (`VmHWM`, reset just before parsing) rose above its RSS before parsing, and the process's whole peak. Limits: a `config` of at most {MAX_CONFIG_BYTES} bytes (256 KiB), refused unread when longer; pool names of at most {MAX_POOL_NAME} characters; a YAML budget (nodes, depth, aliases) for what is parsed. The test `core/tests/config_rss.rs` fails if any input raises the peak by more than 8 MiB."
    );
    println!();
    println!("| input | size | outcome | peak RSS rise while parsing | process peak RSS |");
    println!("|---|---|---|---|---|");
    for (what, r) in &rows {
        let outcome = if r.outcome.starts_with("accepted") {
            r.outcome.clone()
        } else if r.outcome.contains("it was not parsed") {
            "refused unread: over the size limit".to_owned()
        } else if r.outcome.contains("over ferrolb's limits: ") {
            let why = r
                .outcome
                .split("over ferrolb's limits: ")
                .nth(1)
                .unwrap_or("");
            let why = why.split(" (the limits").next().unwrap_or(why);
            format!("refused: YAML budget ({why})")
        } else if r.outcome.contains("characters long") {
            format!("refused: pool name over {MAX_POOL_NAME} characters")
        } else if let Some((_, why)) = r.outcome.split_once("could not parse config: ") {
            // "line L column C: reason (hint); a YAML error stops ..."
            let why = why.split_once(": ").map_or(why, |(_, w)| w);
            let why = why.split("; a YAML error").next().unwrap_or(why);
            let why = why.split(", expected").next().unwrap_or(why);
            format!("refused: YAML error, {}", why.replace('|', "\\|"))
        } else {
            r.outcome.replace('|', "\\|")
        };
        println!(
            "| {what} | {} | {outcome} | {} | {} |",
            size(r.input_bytes),
            mib(r.rise_kib),
            mib(r.peak_kib)
        );
    }
    println!();
    let limit_mib = |l: &str| l.strip_suffix("Mi").and_then(|n| n.parse::<f64>().ok());
    let headroom = match (limit_mib(&controller), limit_mib(&speaker)) {
        (Some(c), Some(s)) => format!("{:.0}x", c.min(s) * 1024.0 / (worst_peak.max(1) as f64)),
        _ => "?".to_owned(),
    };
    println!(
        "The largest rise is {}, and no parsing process peaked above {}; the manifests limit the controller to {controller} and the speaker to {speaker}, {headroom} the largest peak here. Before these limits (issue #17), the alias bomb took the controller to 134-159 MB at peak and a 5 MB config to 101 MB.",
        mib(worst),
        mib(worst_peak)
    );
}
