//! Exponential backoff with full jitter (the AWS architecture blog's "full jitter"): each wait
//! is uniform in `[0, min(cap, base · 2^attempt))`, so a fleet that lost its control plane at
//! the same moment does not come back in lock step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The discovery stream's: 0.5 s base, 30 s cap.
    pub fn control_plane() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 0..12u32 {
            let ceiling = Duration::from_millis(500)
                .saturating_mul(1 << attempt)
                .min(Duration::from_secs(30));
            assert!(b.next_delay() <= ceiling);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    /// Full jitter spreads each wait over the whole of `[0, ceiling]`: many draws of one
    /// attempt reach near its ceiling and average about half of it, so the waits do grow (a
    /// backoff stuck near zero, or one that never jitters, fails this).
    #[test]
    fn waits_fill_the_range_up_to_each_ceiling() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        for attempt in [0u32, 3, 8] {
            let ceiling = base.saturating_mul(1 << attempt).min(cap);
            let mut at = Backoff::new(base, cap);
            for _ in 0..attempt {
                at.next_delay();
            }
            let draws: Vec<Duration> = (0..400).map(|_| at.clone().next_delay()).collect();
            let max = draws.iter().max().copied().unwrap_or_default();
            let mean = draws.iter().sum::<Duration>() / 400;
            assert!(max <= ceiling, "attempt {attempt}: {max:?} > {ceiling:?}");
            assert!(
                max >= ceiling.mul_f64(0.9),
                "attempt {attempt}: the largest of 400 waits is {max:?}, ceiling {ceiling:?}"
            );
            assert!(
                mean >= ceiling.mul_f64(0.4) && mean <= ceiling.mul_f64(0.6),
                "attempt {attempt}: mean {mean:?}, ceiling {ceiling:?}"
            );
        }
    }
}
