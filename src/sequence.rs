//! Per-origin sequence tracking: duplicates, gaps, and late arrivals that fill a gap.
//!
//! Pure logic without I/O. A receiver keeps one tracker per origin; every envelope's sequence
//! number goes through [`SeqTracker::observe`].
//!
//! ```
//! use busbridge::sequence::{SeqTracker, Seen};
//! let mut t = SeqTracker::new(1024);
//! assert_eq!(t.observe(1), Seen::New);
//! assert_eq!(t.observe(4), Seen::Gap { missing: 2 });   // 2 and 3 are missing
//! assert_eq!(t.observe(3), Seen::FilledGap);              // a resend arrives late
//! assert_eq!(t.observe(3), Seen::Duplicate);
//! assert_eq!(t.missing(), vec![2]);
//! ```

use std::collections::BTreeSet;

/// What one sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one, or the first ever seen.
    New,
    /// Ahead of the next one: `missing` numbers were skipped (delivered; the gap is noted).
    Gap { missing: u64 },
    /// One of the noted missing numbers, arriving late (delivered).
    FilledGap,
    /// Seen before (dropped).
    Duplicate,
}

/// Tracks one origin's sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    highest: u64,
    missing: BTreeSet<u64>,
    max_missing: usize,
    /// Missing numbers forgotten because more than `max_missing` were outstanding.
    forgotten: u64,
}

impl SeqTracker {
    /// Remembers at most `max_missing` outstanding gaps (the oldest are forgotten first).
    pub fn new(max_missing: usize) -> Self {
        Self {
            highest: 0,
            missing: BTreeSet::new(),
            max_missing,
            forgotten: 0,
        }
    }

    /// Classifies `seq` and updates the state.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if self.highest == 0 {
            self.highest = seq;
            return Seen::New;
        }
        if seq == self.highest + 1 {
            self.highest = seq;
            return Seen::New;
        }
        if seq > self.highest {
            let missing = seq - self.highest - 1;
            for s in (self.highest + 1)..seq {
                if self.missing.len() >= self.max_missing {
                    self.forgotten += 1;
                    self.missing.pop_first();
                }
                self.missing.insert(s);
            }
            self.highest = seq;
            return Seen::Gap { missing };
        }
        if self.missing.remove(&seq) {
            Seen::FilledGap
        } else {
            Seen::Duplicate
        }
    }

    /// Numbers skipped and not (yet) seen, oldest first.
    pub fn missing(&self) -> Vec<u64> {
        self.missing.iter().copied().collect()
    }

    /// The highest number seen.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Missing numbers forgotten because too many were outstanding.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicates_and_bounded_gaps() {
        let mut t = SeqTracker::new(2);
        for s in 1..=5 {
            assert_eq!(t.observe(s), Seen::New);
        }
        assert_eq!(t.observe(5), Seen::Duplicate);
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.observe(10), Seen::Gap { missing: 4 });
        assert_eq!(
            t.missing(),
            vec![8, 9],
            "only the newest two are remembered"
        );
        assert_eq!(t.forgotten(), 2);
        assert_eq!(
            t.observe(6),
            Seen::Duplicate,
            "forgotten gaps are treated as seen"
        );
        assert_eq!(t.observe(9), Seen::FilledGap);
    }

    #[test]
    fn first_seen_can_start_anywhere() {
        let mut t = SeqTracker::new(8);
        assert_eq!(t.observe(1000), Seen::New);
        assert_eq!(t.observe(1001), Seen::New);
    }
}
