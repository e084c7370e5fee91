//! The tokio bus as of 2025-10-11 (the last version with the 2025-09 trait signatures): for
//! code written against that version, whose subscriptions carry topic patterns.
//!
//! Against [`legacy::tokio`](crate::legacy::tokio) (2025-09) it adds
//! `EventSubscription::{topic_patterns, enable_wildcards}` and
//! `EventFilter::{topic_filters, source_collectors}`; the rest of the surface is the same
//! (the same `LocalEventBus` settings, `BusEvent`, `CorrelationFilter`, statistics). Topics
//! are busbridge's dotted ones (`events.process.new`, `tasks.<collector>`): `*` is one level,
//! `#` one or more; with `enable_wildcards = false` a pattern matches only the topic spelled
//! the same.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use busbridge::legacy::tokio_2025_10::{
//!     CollectionEvent, EventBus, EventBusConfig, EventSubscription, LocalEventBus,
//!     PerformanceEvent, SourceCaps,
//! };
//! let mut bus = LocalEventBus::new(EventBusConfig::default()).await?;
//! bus.start().await?;
//! let mut rx = bus.subscribe(EventSubscription {
//!     subscriber_id: "metrics".into(),
//!     capabilities: SourceCaps::empty(), // topic_patterns replace the capabilities
//!     event_filter: None,
//!     correlation_filter: None,
//!     topic_patterns: Some(vec!["events.performance.*".into()]),
//!     enable_wildcards: true,
//! }).await?;
//! let event = CollectionEvent::Performance(PerformanceEvent {
//!     metric_name: "rss".into(), value: 3.0, unit: "MiB".into(), pid: Some(1),
//!     component: "agent".into(), timestamp: std::time::SystemTime::now(),
//! });
//! bus.publish(event.clone(), "c-1".into()).await?;
//! assert_eq!(rx.recv().await.unwrap().event, event);
//! # anyhow::Ok(()) }).unwrap();
//! ```

use super::tokio as v2025_09;
use crate::router::{Filter, TopicRule};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tokio::sync::mpsc;

pub use super::tokio::{
    AnalysisType, BusEvent, CollectionEvent, CorrelationFilter, EventBusConfig, EventBusStatistics,
    FilesystemEvent, NetworkEvent, PerformanceEvent, ProcessEvent, SourceCaps, TriggerPriority,
    TriggerRequest, PUBLISHER_ID,
};

/// What a subscriber wants (2025-10: with topic patterns).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventSubscription {
    /// Unique id of the subscriber.
    pub subscriber_id: String,
    /// Event sources wanted (ignored when `topic_patterns` is set).
    pub capabilities: SourceCaps,
    /// Narrower filters.
    pub event_filter: Option<EventFilter>,
    /// Correlation ids and patterns wanted.
    pub correlation_filter: Option<CorrelationFilter>,
    /// Topics wanted, replacing the ones the capabilities stand for.
    pub topic_patterns: Option<Vec<String>>,
    /// Whether `*` and `#` in `topic_patterns` and `topic_filters` are wildcards.
    pub enable_wildcards: bool,
}

/// Further narrowing; every non-empty part must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventFilter {
    /// `event_type()` names; empty means all.
    pub event_types: Vec<String>,
    /// Event pids; when any are given, an event without a pid is refused.
    pub pids: Vec<u32>,
    /// Minimum trigger priority; when set, events that are not trigger requests are refused.
    pub min_priority: Option<TriggerPriority>,
    /// Every pair must be present in the trigger metadata or the routing metadata.
    pub metadata_filters: HashMap<String, String>,
    /// Topic patterns, one of which the event's topic must match.
    pub topic_filters: Vec<String>,
    /// Publisher ids, one of which must have published the event.
    pub source_collectors: Vec<String>,
}

/// The tokio bus, as 2025-10 code knows it.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes an event (after `start`).
    async fn publish(
        &mut self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> anyhow::Result<()>;
    /// Subscribes; an id already subscribed is an error.
    async fn subscribe(
        &mut self,
        subscription: EventSubscription,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>>;
    /// Removes a subscriber; an unknown id is an error.
    async fn unsubscribe(&mut self, subscriber_id: &str) -> anyhow::Result<()>;
    /// Counters.
    async fn statistics(&self) -> EventBusStatistics;
    /// Stops the bus.
    async fn shutdown(&mut self) -> anyhow::Result<()>;
    /// Re-sends persisted events of one correlation id to one subscriber.
    async fn replay_events(
        &mut self,
        correlation_id: &str,
        subscriber_id: &str,
    ) -> anyhow::Result<()>;
}

/// The 2025-10 tokio bus over busbridge's core: the 2025-09 bus with topic subscriptions
/// (everything else, bridging included, is the same code).
pub struct LocalEventBus(v2025_09::LocalEventBus);

impl LocalEventBus {
    /// A legacy-router-only bus (phase 0); publishing needs `start()` first.
    pub async fn new(config: EventBusConfig) -> anyhow::Result<Self> {
        Ok(Self(v2025_09::LocalEventBus::new(config).await?))
    }

    /// The same bus bridged to busrt, in the phase the configuration names.
    #[cfg(feature = "busrt")]
    pub async fn bridged(
        config: EventBusConfig,
        bridge: &crate::config::Config,
    ) -> anyhow::Result<Self> {
        Ok(Self(
            v2025_09::LocalEventBus::bridged(config, bridge).await?,
        ))
    }

    /// This facade over a bridged bus (it keeps the bus alive).
    #[cfg(feature = "busrt")]
    pub fn over(bridged: &crate::bridge::Bridged, config: EventBusConfig) -> Self {
        Self(v2025_09::LocalEventBus::over(bridged, config))
    }

    /// Starts the bus (publishing before is an error, as in the legacy bus).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.0.start().await
    }

    /// Subscribes, replacing a subscriber with the same id; `subscribe` refuses it.
    pub async fn resubscribe(
        &mut self,
        subscription: EventSubscription,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>> {
        let (id, filter) = filter_of(subscription)?;
        self.0.add_filter(id, filter, true).await
    }

    /// The 2025-09 bus underneath (the same core).
    pub fn inner(&self) -> &v2025_09::LocalEventBus {
        &self.0
    }

    /// The core this facade publishes through.
    pub fn core(&self) -> &std::sync::Arc<crate::bus::Core> {
        self.0.core()
    }
}

/// The subscription's router filter: the 2025-09 parts, then topics and publishers.
fn filter_of(sub: EventSubscription) -> anyhow::Result<(String, Filter)> {
    let f = sub.event_filter.unwrap_or_default();
    let rules = |texts: &[String]| {
        texts
            .iter()
            .map(|t| TopicRule::parse(t, sub.enable_wildcards))
            .collect::<Result<Vec<_>, _>>()
    };
    let topics = sub.topic_patterns.as_deref().map(rules).transpose()?;
    let topic_filters = rules(&f.topic_filters)?;
    let base = v2025_09::EventSubscription {
        subscriber_id: sub.subscriber_id,
        capabilities: sub.capabilities,
        event_filter: Some(v2025_09::EventFilter {
            event_types: f.event_types,
            pids: f.pids,
            min_priority: f.min_priority,
            metadata_filters: f.metadata_filters,
        }),
        correlation_filter: sub.correlation_filter,
    };
    let filter = Filter {
        topics,
        topic_filters,
        sources: f.source_collectors,
        ..v2025_09::filter_of(&base)?
    };
    Ok((base.subscriber_id, filter))
}

impl LocalEventBus {
    /// [`EventBus::publish`] without the trait's boxed future (see [`crate::legacy`]).
    pub async fn publish(
        &mut self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> anyhow::Result<()> {
        self.0.publish(event, correlation_id).await
    }
}

#[async_trait]
impl EventBus for LocalEventBus {
    async fn publish(
        &mut self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> anyhow::Result<()> {
        LocalEventBus::publish(self, event, correlation_id).await
    }

    async fn subscribe(
        &mut self,
        subscription: EventSubscription,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>> {
        let (id, filter) = filter_of(subscription)?;
        self.0.add_filter(id, filter, false).await
    }

    async fn unsubscribe(&mut self, subscriber_id: &str) -> anyhow::Result<()> {
        v2025_09::EventBus::unsubscribe(&mut self.0, subscriber_id).await
    }

    async fn statistics(&self) -> EventBusStatistics {
        v2025_09::EventBus::statistics(&self.0).await
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        v2025_09::EventBus::shutdown(&mut self.0).await
    }

    async fn replay_events(
        &mut self,
        correlation_id: &str,
        subscriber_id: &str,
    ) -> anyhow::Result<()> {
        v2025_09::EventBus::replay_events(&mut self.0, correlation_id, subscriber_id).await
    }
}

#[cfg(feature = "busrt")]
impl crate::bridge::Bridged {
    /// The 2025-10 tokio facade over this bus (it keeps the bus alive).
    pub fn tokio_2025_10(&self, config: EventBusConfig) -> LocalEventBus {
        LocalEventBus::over(self, config)
    }
}
