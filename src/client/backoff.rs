//! Exponential back-off with jitter, free of I/O and with its randomness injected, so it is
//! tested exactly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Delays that start at `initial`, double up to `max`, each jittered by up to ±20%.
///
/// The jitter comes from the generator the back-off owns: [`Backoff::new`] seeds one from
/// the system's entropy (so a fleet restarted together spreads out), [`Backoff::with_rng`]
/// takes the caller's (a seeded one gives the same delays every run).
///
/// ```
/// use busbridge::client::Backoff;
/// use rand::{rngs::StdRng, SeedableRng};
/// use std::time::Duration;
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
/// let first = b.next_delay();
/// assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
///
/// let seeded = |seed| Backoff::with_rng(Duration::from_millis(100), Duration::from_secs(30),
///     StdRng::seed_from_u64(seed));
/// assert_eq!(seeded(7).next_delay(), seeded(7).next_delay());
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// 100 ms doubling to 30 s is the default of the integration patterns.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, StdRng::from_entropy())
    }

    /// The same, with the jitter drawn from `rng`.
    pub fn with_rng(initial: Duration, max: Duration, rng: StdRng) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
            attempt: 0,
            rng,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        self.attempt += 1;
        let jitter = self.rng.gen_range(0.8..=1.2);
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

    fn seeded(seed: u64) -> Backoff {
        Backoff::with_rng(
            Duration::from_millis(100),
            Duration::from_secs(30),
            StdRng::seed_from_u64(seed),
        )
    }

    #[test]
    fn a_seeded_backoff_repeats_exactly() {
        let delays = |seed| {
            let mut b = seeded(seed);
            (0..12).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(42), delays(42));
        assert_ne!(
            delays(42),
            delays(43),
            "the jitter comes from the generator"
        );
    }

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = seeded(1);
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
