//! When to try again after a transient failure: exponential backoff with jitter, capped.

use std::time::Duration;

/// Exponential backoff: attempt `n` failed → wait `min(cap, base * factor^(n-1))`, scaled by a jitter in
/// `[1 - jitter_ratio, 1]` so that runs failing together do not retry together.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub factor: f64,
    pub cap: Duration,
    pub jitter_ratio: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base: Duration::from_secs(30), factor: 2.0, cap: Duration::from_secs(600), jitter_ratio: 0.5 }
    }
}

impl RetryPolicy {
    /// The wait after the `failed_attempt`-th attempt (1-based) failed; `jitter` is in `[0, 1)`.
    pub fn delay(&self, failed_attempt: u32, jitter: f64) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(64) as i32;
        let raw = self.base.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = raw.min(self.cap.as_secs_f64());
        let scale = 1.0 - self.jitter_ratio.clamp(0.0, 1.0) * jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64((capped * scale).max(0.0))
    }
}

/// A jitter in `[0, 1)` derived from the run's uid and the attempt: spread across runs, yet the same on every
/// reconcile of one attempt (the chosen time is also kept in status).
pub fn jitter(uid: &str, attempt: u32) -> f64 {
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{uid}/{attempt}").as_bytes());
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_the_base_up_to_the_cap() {
        let policy = RetryPolicy { jitter_ratio: 0.0, ..RetryPolicy::default() };
        let cases = [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 600), (7, 600), (100, 600)];
        for (attempt, seconds) in cases {
            assert_eq!(policy.delay(attempt, 0.7), Duration::from_secs(seconds), "attempt {attempt}");
        }
    }

    #[test]
    fn jitter_shortens_the_delay_by_at_most_the_ratio() {
        let policy = RetryPolicy::default();
        let cases = [(0.0, 60.0), (0.5, 45.0), (0.999_999, 30.000_03)];
        for (jitter, seconds) in cases {
            let got = policy.delay(2, jitter).as_secs_f64();
            assert!((got - seconds).abs() < 1e-3, "jitter {jitter}: {got} != {seconds}");
        }
    }

    #[test]
    fn a_tiny_base_makes_tests_fast() {
        let policy =
            RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1), ..Default::default() };
        assert!(policy.delay(1, 0.0) == Duration::from_millis(100));
        assert!(policy.delay(9, 0.0) == Duration::from_secs(1));
    }

    #[test]
    fn jitter_is_stable_per_attempt_and_spread_across_runs() {
        assert_eq!(jitter("uid-1", 1), jitter("uid-1", 1));
        let values: Vec<f64> = (0..100).map(|i| jitter(&format!("uid-{i}"), 1)).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let low = values.iter().filter(|v| **v < 0.5).count();
        assert!((25..=75).contains(&low), "{low} of 100 below 0.5");
    }
}
