//! What benchmarks read about a process from /proc: CPU time and memory.

/// User plus system CPU time of process `pid` so far, in clock ticks (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command (which may hold spaces), utime and stime
    // are the 12th and 13th fields.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks per second, the unit of [`cpu_ticks`].
pub fn clock_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// Resident memory of process `pid` now and at its peak (`VmRSS`, `VmHWM`), in KiB.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let (rss, peak) = memory(me);
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        // Burn a little CPU so that at least one tick is counted.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_ticks(me) == 0 && start.elapsed() < std::time::Duration::from_secs(10) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(cpu_ticks(me) > 0, "{x}");
        assert!(clock_tick() >= 1.0);
        assert_eq!(memory(u32::MAX), (0, 0));
        assert_eq!(cpu_ticks(u32::MAX), 0);
    }
}
