//! Counters behind every statistics view. Every drop has a named counter, so none is silent.

use crate::topic::COUNTED_TOPICS;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Shared, lock-free counters of one bus.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    /// Dropped because a subscriber's queue was full (DropNewest, DropOldest).
    pub(crate) dropped_full: AtomicU64,
    /// Dropped after waiting the delivery timeout on a full queue.
    pub(crate) dropped_timeout: AtomicU64,
    /// Dropped because the subscriber's receiver was gone.
    pub(crate) dropped_disconnected: AtomicU64,
    /// Subscribers removed because their receiver was gone.
    pub(crate) subscribers_removed: AtomicU64,
    pub(crate) persisted: AtomicU64,
    /// Persisted events evicted because the store was full.
    pub(crate) persist_evicted: AtomicU64,
    pub(crate) latency_ns_total: AtomicU64,
    pub(crate) latency_samples: AtomicU64,
    // Bridge counters (zero while nothing is bridged).
    pub(crate) bridge_sent: AtomicU64,
    pub(crate) bridge_received: AtomicU64,
    pub(crate) bridge_echo_suppressed: AtomicU64,
    pub(crate) bridge_duplicates: AtomicU64,
    pub(crate) bridge_returns_undecoded: AtomicU64,
    pub(crate) bridge_decode_errors: AtomicU64,
    pub(crate) bridge_send_errors: AtomicU64,
    pub(crate) bridge_hop_limited: AtomicU64,
    pub(crate) bridge_gaps: AtomicU64,
    pub(crate) bridge_gaps_filled: AtomicU64,
    pub(crate) bridge_gaps_lost: AtomicU64,
    pub(crate) bridge_batches: AtomicU64,
    pub(crate) bridge_resend_requests: AtomicU64,
    pub(crate) bridge_resent: AtomicU64,
    pub(crate) bridge_resend_unavailable: AtomicU64,
    pub(crate) parity_compared: AtomicU64,
    pub(crate) parity_mismatches: AtomicU64,
    /// Published, by [`COUNTED_TOPICS`] index.
    pub(crate) published_by_topic: [AtomicU64; COUNTED_TOPICS.len()],
    /// Received from other origins through busrt, by [`COUNTED_TOPICS`] index.
    pub(crate) received_by_topic: [AtomicU64; COUNTED_TOPICS.len()],
}

fn by_topic(counters: &[AtomicU64; COUNTED_TOPICS.len()]) -> BTreeMap<String, u64> {
    COUNTED_TOPICS
        .iter()
        .zip(counters)
        .map(|(t, n)| ((*t).to_owned(), n.load(Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn record_latency(&self, d: Duration) {
        self.latency_ns_total
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.latency_samples.fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let samples = self.latency_samples.load(Relaxed);
        let avg_ms = if samples == 0 {
            0.0
        } else {
            self.latency_ns_total.load(Relaxed) as f64 / samples as f64 / 1e6
        };
        StatsSnapshot {
            events_published: self.published.load(Relaxed),
            events_delivered: self.delivered.load(Relaxed),
            dropped_full: self.dropped_full.load(Relaxed),
            dropped_timeout: self.dropped_timeout.load(Relaxed),
            dropped_disconnected: self.dropped_disconnected.load(Relaxed),
            subscribers_removed: self.subscribers_removed.load(Relaxed),
            events_persisted: self.persisted.load(Relaxed),
            persist_evicted: self.persist_evicted.load(Relaxed),
            avg_delivery_latency_ms: avg_ms,
            bridge_sent: self.bridge_sent.load(Relaxed),
            bridge_received: self.bridge_received.load(Relaxed),
            bridge_echo_suppressed: self.bridge_echo_suppressed.load(Relaxed),
            bridge_duplicates: self.bridge_duplicates.load(Relaxed),
            bridge_returns_undecoded: self.bridge_returns_undecoded.load(Relaxed),
            bridge_decode_errors: self.bridge_decode_errors.load(Relaxed),
            bridge_send_errors: self.bridge_send_errors.load(Relaxed),
            bridge_hop_limited: self.bridge_hop_limited.load(Relaxed),
            bridge_gaps: self.bridge_gaps.load(Relaxed),
            bridge_gaps_filled: self.bridge_gaps_filled.load(Relaxed),
            bridge_gaps_lost: self.bridge_gaps_lost.load(Relaxed),
            bridge_batches: self.bridge_batches.load(Relaxed),
            bridge_resend_requests: self.bridge_resend_requests.load(Relaxed),
            bridge_resent: self.bridge_resent.load(Relaxed),
            bridge_resend_unavailable: self.bridge_resend_unavailable.load(Relaxed),
            parity_compared: self.parity_compared.load(Relaxed),
            parity_mismatches: self.parity_mismatches.load(Relaxed),
            published_by_topic: by_topic(&self.published_by_topic),
            received_by_topic: by_topic(&self.received_by_topic),
        }
    }
}

/// A copy of a bus's counters, for `stats --json` and for the legacy statistics structs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Events accepted by `publish`.
    pub events_published: u64,
    /// Deliveries to local subscribers.
    pub events_delivered: u64,
    /// Deliveries dropped on a full queue (`DropNewest`, `DropOldest`).
    pub dropped_full: u64,
    /// Deliveries dropped after waiting the delivery timeout.
    pub dropped_timeout: u64,
    /// Deliveries dropped because the receiver was gone.
    pub dropped_disconnected: u64,
    /// Subscribers removed because their receiver was gone.
    pub subscribers_removed: u64,
    /// Events kept for replay.
    pub events_persisted: u64,
    /// Persisted events evicted because the store was full.
    pub persist_evicted: u64,
    /// Average delivery latency (one event in 16 sampled), milliseconds.
    pub avg_delivery_latency_ms: f64,
    /// Events the bridge handed to busrt.
    pub bridge_sent: u64,
    /// Events accepted from busrt (own returns included), counted once delivered to the
    /// local subscribers (or needing no delivery): when it reads n, n events have arrived.
    pub bridge_received: u64,
    /// Loops dropped: own events relayed back by another client.
    pub bridge_echo_suppressed: u64,
    /// Events received twice and dropped.
    pub bridge_duplicates: u64,
    /// Own events back from busrt that no local subscriber matched: counted back in by their
    /// header, not decoded (included in `bridge_received`).
    #[serde(default)]
    pub bridge_returns_undecoded: u64,
    /// Frames that did not decode (dropped).
    pub bridge_decode_errors: u64,
    /// Events or control messages busrt did not take.
    pub bridge_send_errors: u64,
    /// Events dropped for exceeding the hop limit.
    pub bridge_hop_limited: u64,
    /// Sequence numbers found missing (a gap), whether or not they came later.
    pub bridge_gaps: u64,
    /// Missing sequence numbers that arrived later (resent).
    pub bridge_gaps_filled: u64,
    /// Missing sequence numbers given up on after the bridge's gap wait: lost.
    pub bridge_gaps_lost: u64,
    /// Frames sent that carried more than one event.
    pub bridge_batches: u64,
    /// Gaps this bus asked an origin to send again.
    pub bridge_resend_requests: u64,
    /// Events this bus sent again on request.
    pub bridge_resent: u64,
    /// Events asked for that had left the replay buffer: lost, reported with their range.
    pub bridge_resend_unavailable: u64,
    /// Parity comparisons made.
    pub parity_compared: u64,
    /// Parity differences found.
    pub parity_mismatches: u64,
    /// Events published, by topic (`tasks.#` for every trigger target); topics with none
    /// left out.
    #[serde(default)]
    pub published_by_topic: BTreeMap<String, u64>,
    /// Events of other origins received through busrt, by topic as above.
    #[serde(default)]
    pub received_by_topic: BTreeMap<String, u64>,
}

impl StatsSnapshot {
    /// Every event that did not reach a subscriber it was meant for.
    pub fn events_dropped(&self) -> u64 {
        self.dropped_full + self.dropped_timeout + self.dropped_disconnected
    }
}

/// What a bridged bus reports about itself when asked on [`STATUS_TOPIC`](crate::topic::STATUS_TOPIC)
/// (`busbridge stats` asks every bus on a broker): its counters and its live parity, so the
/// comparison of the legacy path with busrt on the user's own traffic can be read from
/// outside the process.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// busrt client name.
    pub name: String,
    /// Origin id (unique per bus instance).
    pub origin: String,
    /// Migration phase now.
    pub phase: u8,
    /// Connection to the broker (`Connected`, `Reconnecting(n)`, ...).
    pub connection: String,
    /// Every counter of the bus.
    pub stats: StatsSnapshot,
    /// Live parity so far: compared, matched, mismatches (each with the event and the
    /// subscriber that lacks it or got it twice).
    pub parity: crate::parity::ParityReport,
    /// Deliveries still waiting for the other path (younger than the parity window).
    pub parity_pending: u64,
    /// Deliveries the other path never made within the window (counted as missing).
    pub parity_expired: u64,
    /// Events waiting in local subscribers' queues.
    #[serde(default)]
    pub queued: u64,
    /// Own events sent to busrt and not yet back.
    #[serde(default)]
    pub in_flight: u64,
    /// Local subscribers.
    #[serde(default)]
    pub subscribers: u64,
    /// Phase 5: the trigger requests this bus dispatched as tasks, if it has a dispatcher.
    #[serde(default)]
    pub triggers: Option<TriggerCounts>,
}

/// Trigger requests a bus dispatched as phase-5 tasks (`task::TriggerDispatch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TriggerCounts {
    /// Triggers handed to the task layer.
    pub dispatched: u64,
    /// Triggers a collector took and delivered.
    pub completed: u64,
    /// Triggers that ended otherwise (timed out, failed); each one is also logged.
    pub failed: u64,
}
