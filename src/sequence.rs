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
    /// New, and numbers before it are missing.
    Gap {
        /// How many numbers are missing just before it.
        missing: u64,
    },
    /// One of the noted missing numbers, arriving late (delivered).
    FilledGap,
    /// Seen before (dropped).
    Duplicate,
}

/// Tracks one origin's sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// False until the first number: without a known start, the first one seen is the start.
    started: bool,
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
            started: false,
            highest: 0,
            missing: BTreeSet::new(),
            max_missing,
            forgotten: 0,
        }
    }

    /// A tracker that has seen everything up to `position` (a durable subscriber resuming;
    /// 0 = nothing yet, so the stream is expected from its first number, 1).
    ///
    /// ```
    /// use busbridge::sequence::{SeqTracker, Seen};
    /// let mut t = SeqTracker::after(10, 1024);
    /// assert_eq!(t.observe(10), Seen::Duplicate);
    /// assert_eq!(t.observe(13), Seen::Gap { missing: 2 });   // 11 and 12
    /// ```
    pub fn after(position: u64, max_missing: usize) -> Self {
        Self {
            started: true,
            highest: position,
            ..Self::new(max_missing)
        }
    }

    /// Classifies `seq` and updates the state.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if !self.started {
            self.started = true;
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

    /// Learns that numbers up to `highest` exist; those beyond what was seen become missing.
    /// Returns the new missing range, if any.
    pub fn expect_up_to(&mut self, highest: u64) -> Option<(u64, u64)> {
        if !self.started || highest <= self.highest {
            return None;
        }
        let from = self.highest + 1;
        for s in from..=highest {
            if self.missing.len() >= self.max_missing {
                self.forgotten += 1;
                self.missing.pop_first();
            }
            self.missing.insert(s);
        }
        self.highest = highest;
        Some((from, highest))
    }

    /// The oldest number still missing.
    pub fn first_missing(&self) -> Option<u64> {
        self.missing.first().copied()
    }

    /// Stops waiting for every missing number; returns how many there were.
    pub fn give_up(&mut self) -> u64 {
        let n = self.missing.len() as u64;
        self.missing.clear();
        n
    }
}

/// What [`InOrder::push`] made of an item.
#[derive(Debug, PartialEq)]
pub enum Pushed<T> {
    /// Seen before: dropped.
    Duplicate,
    /// Accepted. `gap` names numbers found missing by this item (ask for them again);
    /// `ready` are the items now deliverable, in sequence order.
    Accepted {
        /// Numbers found missing by this item (ask for them again).
        gap: Option<(u64, u64)>,
        /// This item filled a gap.
        filled: bool,
        /// Items now deliverable, in sequence order.
        ready: Vec<T>,
    },
}

/// What [`InOrder::push_into`] made of an accepted item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Numbers found missing by this item (ask for them again).
    pub gap: Option<(u64, u64)>,
    /// This item filled a gap.
    pub filled: bool,
}

/// Delivers one origin's items once and in sequence order: items behind a gap are held until
/// the gap is filled or [`give_up`](InOrder::give_up) is called.
///
/// ```
/// use busbridge::sequence::{InOrder, Pushed};
/// let mut s = InOrder::new(1024);
/// assert_eq!(s.push(1, 'a'), Pushed::Accepted { gap: None, filled: false, ready: vec!['a'] });
/// assert_eq!(s.push(3, 'c'), Pushed::Accepted { gap: Some((2, 2)), filled: false, ready: vec![] });
/// assert_eq!(s.push(2, 'b'), Pushed::Accepted { gap: None, filled: true, ready: vec!['b', 'c'] });
/// assert_eq!(s.push(2, 'b'), Pushed::Duplicate);
/// ```
#[derive(Debug)]
pub struct InOrder<T> {
    tracker: SeqTracker,
    held: std::collections::BTreeMap<u64, T>,
}

impl<T> InOrder<T> {
    /// Remembers at most `max_missing` outstanding numbers.
    pub fn new(max_missing: usize) -> Self {
        Self {
            tracker: SeqTracker::new(max_missing),
            held: Default::default(),
        }
    }

    /// Delivers only what follows `position` (see [`SeqTracker::after`]).
    pub fn after(position: u64, max_missing: usize) -> Self {
        Self {
            tracker: SeqTracker::after(position, max_missing),
            held: Default::default(),
        }
    }

    /// Takes one item with its sequence number.
    pub fn push(&mut self, seq: u64, item: T) -> Pushed<T> {
        let mut ready = Vec::new();
        match self.push_into(seq, item, &mut ready) {
            None => Pushed::Duplicate,
            Some(Accepted { gap, filled }) => Pushed::Accepted { gap, filled, ready },
        }
    }

    /// [`push`](Self::push), appending the items now deliverable to `ready`, a list the
    /// caller keeps between pushes (the common case then allocates nothing). `None` for a
    /// duplicate.
    ///
    /// ```
    /// use busbridge::sequence::{Accepted, InOrder};
    /// let (mut s, mut ready) = (InOrder::new(1024), Vec::new());
    /// assert_eq!(s.push_into(1, 'a', &mut ready), Some(Accepted { gap: None, filled: false }));
    /// assert_eq!(s.push_into(3, 'c', &mut ready), Some(Accepted { gap: Some((2, 2)), filled: false }));
    /// assert_eq!(s.push_into(2, 'b', &mut ready), Some(Accepted { gap: None, filled: true }));
    /// assert_eq!(s.push_into(2, 'b', &mut ready), None);
    /// assert_eq!(ready, ['a', 'b', 'c']);
    /// ```
    pub fn push_into(&mut self, seq: u64, item: T, ready: &mut Vec<T>) -> Option<Accepted> {
        let (gap, filled) = match self.tracker.observe(seq) {
            // The common case, the next number with nothing missing or held: straight through.
            Seen::New if self.held.is_empty() && self.tracker.missing.is_empty() => {
                ready.push(item);
                return Some(Accepted {
                    gap: None,
                    filled: false,
                });
            }
            Seen::Duplicate => return None,
            Seen::Gap { missing } => (Some((seq - missing, seq - 1)), false),
            Seen::FilledGap => (None, true),
            Seen::New => (None, false),
        };
        self.held.insert(seq, item);
        self.release(ready);
        Some(Accepted { gap, filled })
    }

    fn release(&mut self, ready: &mut Vec<T>) {
        let limit = self.tracker.first_missing().unwrap_or(u64::MAX);
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() >= limit {
                break;
            }
            ready.push(entry.remove());
        }
    }

    /// Learns the origin's highest number (a heartbeat); returns what is now missing.
    pub fn expect_up_to(&mut self, highest: u64) -> Option<(u64, u64)> {
        self.tracker.expect_up_to(highest)
    }

    /// The missing numbers as ranges `(from, to)`, oldest first, at most `max` of them.
    pub fn missing_ranges(&self, max: usize) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &s in &self.tracker.missing {
            if let Some((_, to)) = ranges.last_mut().filter(|(_, to)| *to + 1 == s) {
                *to = s;
            } else if ranges.len() == max {
                break;
            } else {
                ranges.push((s, s));
            }
        }
        ranges
    }

    /// Items held behind a gap.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Stops waiting: the missing numbers are lost (their count is returned), everything
    /// held is released in order.
    pub fn give_up(&mut self) -> (u64, Vec<T>) {
        let lost = self.tracker.give_up();
        let mut ready = Vec::new();
        self.release(&mut ready);
        (lost, ready)
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
    fn held_items_wait_for_the_gap_then_come_in_order() {
        let mut s = InOrder::new(100);
        s.push(1, 1);
        assert!(
            matches!(s.push(4, 4), Pushed::Accepted { gap: Some((2, 3)), ref ready, .. } if ready.is_empty())
        );
        assert!(
            matches!(s.push(5, 5), Pushed::Accepted { gap: None, ref ready, .. } if ready.is_empty())
        );
        assert!(
            matches!(s.push(3, 3), Pushed::Accepted { filled: true, ref ready, .. } if ready.is_empty())
        );
        assert_eq!(s.held(), 3);
        assert_eq!(s.give_up(), (1, vec![3, 4, 5]));
        assert_eq!(s.push(2, 2), Pushed::Duplicate, "given up is given up");
        assert!(matches!(s.push(6, 6), Pushed::Accepted { ref ready, .. } if ready == &vec![6]));
    }

    #[test]
    fn a_heartbeat_reveals_a_lost_tail() {
        let mut s = InOrder::new(100);
        s.push(1, 1);
        s.push(2, 2);
        assert_eq!(s.expect_up_to(2), None);
        assert_eq!(s.expect_up_to(4), Some((3, 4)));
        assert!(
            matches!(s.push(3, 3), Pushed::Accepted { filled: true, ref ready, .. } if ready == &vec![3])
        );
        assert!(matches!(s.push(5, 5), Pushed::Accepted { ref ready, .. } if ready.is_empty()));
        assert!(matches!(s.push(4, 4), Pushed::Accepted { ref ready, .. } if ready == &vec![4, 5]));
    }

    #[test]
    fn resuming_asks_for_what_follows_the_position() {
        let mut s = InOrder::after(3, 100);
        assert_eq!(s.push(2, 2), Pushed::Duplicate);
        assert!(
            matches!(s.push(6, 6), Pushed::Accepted { gap: Some((4, 5)), ref ready, .. } if ready.is_empty())
        );
        assert!(matches!(s.push(4, 4), Pushed::Accepted { ref ready, .. } if ready == &vec![4]));
        assert!(matches!(s.push(5, 5), Pushed::Accepted { ref ready, .. } if ready == &vec![5, 6]));
        // From nothing: everything from 1 is expected, a heartbeat reveals all of it.
        let mut fresh = InOrder::<u64>::after(0, 100);
        assert_eq!(fresh.expect_up_to(3), Some((1, 3)));
    }

    #[test]
    fn first_seen_can_start_anywhere() {
        let mut t = SeqTracker::new(8);
        assert_eq!(t.observe(1000), Seen::New);
        assert_eq!(t.observe(1001), Seen::New);
    }

    proptest::proptest! {
        /// Whatever order and repetition the numbers arrive in, each is released once and in
        /// increasing order; giving up releases whatever is held.
        #[test]
        fn every_number_released_once_in_order(
            arrivals in proptest::collection::vec(1u64..200, 0..400),
            heartbeat in proptest::option::of(1u64..250),
        ) {
            let mut s = InOrder::new(1000);
            let mut out = Vec::new();
            for (i, &seq) in arrivals.iter().enumerate() {
                if let Pushed::Accepted { ready, .. } = s.push(seq, seq) {
                    out.extend(ready);
                }
                if i == arrivals.len() / 2 {
                    if let Some(h) = heartbeat {
                        s.expect_up_to(h);
                    }
                }
            }
            out.extend(s.give_up().1);
            proptest::prop_assert!(out.windows(2).all(|w| w[0] < w[1]), "{:?}", out);
            let first = arrivals.first().copied().unwrap_or(0);
            let expected: std::collections::BTreeSet<u64> =
                arrivals.iter().copied().filter(|&x| x >= first).collect();
            let got: std::collections::BTreeSet<u64> = out.iter().copied().collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
