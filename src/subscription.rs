//! The subscription and delivery types of the crossbeam-era API, shared by
//! `legacy::crossbeam` and the phase-4 [`crate::EventBus`].

use crate::codec::Envelope;
use crate::event::{CollectionEvent, SourceCaps};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// What a subscriber wants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventSubscription {
    /// Unique id of the subscriber.
    pub subscriber_id: String,
    /// Events whose capability is contained here are delivered.
    pub capabilities: SourceCaps,
    /// Narrower filters (event types, pids, priority, metadata).
    pub event_filter: Option<EventFilter>,
    /// Exact correlation id to match.
    pub correlation_filter: Option<String>,
}

impl EventSubscription {
    /// Every event, for subscriber `id`: all capabilities, no filter.
    ///
    /// ```
    /// let sub = busbridge::EventSubscription::everything("agent");
    /// assert!(sub.event_filter.is_none() && sub.correlation_filter.is_none());
    /// ```
    pub fn everything(id: impl Into<String>) -> Self {
        Self {
            subscriber_id: id.into(),
            capabilities: SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
        }
    }
}

/// Further narrowing of a subscription.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventFilter {
    /// `event_type()` names to accept; empty means all.
    pub event_types: Vec<String>,
    /// Minimum trigger priority (0 = Low … 3 = Critical); applies to trigger requests only.
    pub min_priority: Option<u8>,
    /// Exact publisher id to accept.
    pub source_filter: Option<String>,
}

/// One delivered event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BusEvent {
    /// Unique id of the event.
    pub event_id: String,
    /// The event.
    pub event: CollectionEvent,
    /// Correlation id given at publish.
    pub correlation_id: String,
    /// Publisher id of the facade that published it.
    pub publisher_id: String,
    /// When the bus accepted it.
    pub timestamp: SystemTime,
    /// Delivery priority, 0 (low) to 10.
    pub priority: u8,
}

/// Moves the fields (the last subscriber of a delivery gets them without a copy).
impl From<Envelope> for BusEvent {
    fn from(env: Envelope) -> Self {
        Self {
            event_id: env.event_id,
            event: env.event,
            correlation_id: env.correlation_id,
            publisher_id: env.publisher_id,
            timestamp: env.timestamp,
            priority: env.priority,
        }
    }
}

impl From<&Envelope> for BusEvent {
    fn from(env: &Envelope) -> Self {
        Self {
            event_id: env.event_id.clone(),
            event: env.event.clone(),
            correlation_id: env.correlation_id.clone(),
            publisher_id: env.publisher_id.clone(),
            timestamp: env.timestamp,
            priority: env.priority,
        }
    }
}

/// What to do when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BackpressureStrategy {
    /// The publisher waits for room (the default, as the name of the legacy bus promised).
    #[default]
    Blocking,
    /// The oldest queued event is discarded (and counted) to make room.
    DropOldest,
    /// The new event is discarded (and counted).
    DropNewest,
}

/// The crossbeam-era statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventBusStatistics {
    /// Events published.
    pub events_published: u64,
    /// Deliveries to subscribers.
    pub events_delivered: u64,
    /// Deliveries dropped (full queue, timeout, gone receiver).
    pub events_dropped: u64,
    /// Subscribers now.
    pub active_subscribers: usize,
    /// Average delivery latency (sampled), milliseconds.
    pub avg_delivery_latency_ms: f64,
    /// Estimated memory held by queued events.
    pub memory_usage_bytes: u64,
    /// When these numbers were read.
    pub last_updated: SystemTime,
}
