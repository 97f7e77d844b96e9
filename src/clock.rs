//! The kernel's coarse clocks, for what is stamped on every statement and needs only
//! milliseconds: a coarse read is a plain load from the vDSO page, where a precise one also
//! reads the timestamp counter (clock reads were about 5 % of Sluice's CPU time per
//! statement). Their resolution is the kernel tick (1–10 ms).

fn coarse(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    (r == 0).then(|| (ts.tv_sec as u64).saturating_mul(1000) + ts.tv_nsec as u64 / 1_000_000)
}

/// Milliseconds since the Unix epoch (the digest store's `last_seen`).
pub fn coarse_realtime_ms() -> u64 {
    coarse(libc::CLOCK_REALTIME_COARSE).unwrap_or_else(crate::monitor::now_ms)
}

/// Milliseconds on a clock that never goes back (ages of idle pool connections).
pub fn coarse_monotonic_ms() -> u64 {
    coarse(libc::CLOCK_MONOTONIC_COARSE).unwrap_or_else(|| {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_tells_the_time() {
        let (coarse, fine) = (coarse_realtime_ms(), crate::monitor::now_ms());
        assert!(coarse.abs_diff(fine) < 1000, "coarse {coarse} fine {fine}");
    }

    #[test]
    fn the_coarse_monotonic_clock_counts_milliseconds() {
        let (a, t) = (coarse_monotonic_ms(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (b, took) = (coarse_monotonic_ms(), t.elapsed().as_millis() as u64);
        // Within two ticks of the precise clock.
        assert!(
            b >= a && (b - a).abs_diff(took) <= 25,
            "coarse {} ms, precise {took} ms",
            b - a
        );
    }
}
