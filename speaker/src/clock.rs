//! The speaker's clock for stall detection and hold times.

/// CLOCK_BOOTTIME: monotonic, and unlike `Instant` it keeps counting while
/// the machine is suspended, so a suspended node also sees its stall.
pub fn boottime() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
