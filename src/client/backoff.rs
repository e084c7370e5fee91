//! Exponential back-off with jitter, free of I/O so it is tested exactly.

use rand::Rng;
use std::time::Duration;

/// Delays that start at `initial`, double up to `max`, each jittered by up to ±20%.
///
/// ```
/// use busbridge::client::Backoff;
/// use std::time::Duration;
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
/// let first = b.next_delay();
/// assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    attempt: u32,
}

impl Backoff {
    /// 100 ms doubling to 30 s is the default of the integration patterns.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
            attempt: 0,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        self.attempt += 1;
        let jitter = rand::thread_rng().gen_range(0.8..=1.2);
        base.mul_f64(jitter).min(self.max)
    }

    /// Attempts so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let mut base = 100.0_f64;
        for _ in 0..20 {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            let cap = 30_000.0;
            assert!(
                d >= (base * 0.8).min(cap) - 1e-6 && d <= (base * 1.2).min(cap) + 1e-6,
                "{d} vs {base}"
            );
            base = (base * 2.0).min(cap);
        }
        assert_eq!(b.attempt(), 20);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
