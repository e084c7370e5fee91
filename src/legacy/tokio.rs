//! The tokio facade: `EventBus` / `LocalEventBus`, as production legacy code calls it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use busbridge::legacy::tokio::{
//!     CollectionEvent, EventBus, EventBusConfig, EventSubscription, LocalEventBus,
//!     NetworkEvent, SourceCaps,
//! };
//! let mut bus = LocalEventBus::new(EventBusConfig::default()).await?;
//! bus.start().await?;
//! let mut rx = bus.subscribe(EventSubscription {
//!     subscriber_id: "netwatch".into(),
//!     capabilities: SourceCaps::NETWORK,
//!     event_filter: None,
//!     correlation_filter: None,
//! }).await?;
//! let event = CollectionEvent::Network(NetworkEvent {
//!     connection_id: "c".into(), source_addr: "a".into(), dest_addr: "b".into(),
//!     protocol: "tcp".into(), state: "SYN_SENT".into(), pid: None, bytes_sent: 0,
//!     bytes_received: 0, timestamp: std::time::SystemTime::now(),
//! });
//! bus.publish(event.clone(), "c-1".into()).await?;
//! assert_eq!(rx.recv().await.unwrap().event, event);
//! # anyhow::Ok(()) }).unwrap();
//! ```

use crate::bus::{Core, CoreOptions, Quota};
use crate::codec::Envelope;
use crate::router::{Filter, Offer, Policy, Refused, Sink};
use crate::subscription::BackpressureStrategy;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

pub use crate::event::{
    AnalysisType, CollectionEvent, FilesystemEvent, NetworkEvent, PerformanceEvent, ProcessEvent,
    SourceCaps, TriggerPriority, TriggerRequest,
};

/// The tokio bus, as legacy code knows it.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes an event (an error before `start`).
    async fn publish(
        &mut self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> anyhow::Result<()>;
    /// Subscribes; events arrive on the returned tokio receiver.
    async fn subscribe(
        &mut self,
        subscription: EventSubscription,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>>;
    /// Removes a subscriber; an unknown id is an error.
    async fn unsubscribe(&mut self, subscriber_id: &str) -> anyhow::Result<()>;
    /// Counters.
    async fn statistics(&self) -> EventBusStatistics;
    /// Stops publishing and disconnects every subscriber.
    async fn shutdown(&mut self) -> anyhow::Result<()>;
    /// Re-sends the persisted events of one correlation id to one subscriber, marked
    /// `routing_metadata["replay"] = "true"`.
    async fn replay_events(
        &mut self,
        correlation_id: &str,
        subscriber_id: &str,
    ) -> anyhow::Result<()>;
}

/// Settings, with the legacy defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EventBusConfig {
    /// Queue size of each subscriber.
    pub max_buffer_size: usize,
    /// Most subscribers through this facade.
    pub max_subscribers: usize,
    #[serde(with = "humantime_serde")]
    /// How long a publish waits on a full subscriber queue before dropping (counted).
    pub delivery_timeout: Duration,
    /// Keep recent events for `replay_events`.
    pub enable_persistence: bool,
    /// How many events persistence keeps.
    pub max_persisted_events: usize,
    #[serde(with = "humantime_serde")]
    /// How often expired persisted events are removed.
    pub cleanup_interval: Duration,
    #[serde(with = "humantime_serde")]
    /// Age after which a persisted event expires.
    pub max_event_age: Duration,
    /// Log every publish at debug level.
    pub enable_debug_logging: bool,
    /// Kept for compatibility; delivery waits up to `delivery_timeout` on a full queue.
    pub backpressure_threshold: usize,
    /// Kept for compatibility; see `backpressure_threshold`.
    #[serde(with = "humantime_serde")]
    pub max_backpressure_wait: Duration,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        Self {
            max_buffer_size: 1000,
            max_subscribers: 32,
            delivery_timeout: Duration::from_secs(5),
            enable_persistence: true,
            max_persisted_events: 10_000,
            cleanup_interval: Duration::from_secs(300),
            max_event_age: Duration::from_secs(3600),
            enable_debug_logging: false,
            backpressure_threshold: 800,
            max_backpressure_wait: Duration::from_secs(1),
        }
    }
}

/// What a subscriber wants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventSubscription {
    /// Unique id of the subscriber.
    pub subscriber_id: String,
    /// Event sources wanted.
    pub capabilities: SourceCaps,
    /// Narrower filters (event types, pids, priority, metadata).
    pub event_filter: Option<EventFilter>,
    /// Correlation ids and patterns wanted.
    pub correlation_filter: Option<CorrelationFilter>,
}

/// Further narrowing; every non-empty part must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventFilter {
    /// `event_type()` names; empty means all.
    pub event_types: Vec<String>,
    /// Event pids; empty means all.
    pub pids: Vec<u32>,
    /// Minimum trigger priority; applies to trigger requests only.
    pub min_priority: Option<TriggerPriority>,
    /// Every pair must be present in the trigger metadata or the routing metadata.
    pub metadata_filters: HashMap<String, String>,
}

/// Correlation matching: when ids are given the event's must be one; when patterns are given
/// one must match as well (the legacy bus ignored patterns; they narrow, never widen).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CorrelationFilter {
    /// Exact correlation ids.
    pub correlation_ids: Vec<String>,
    /// Regular expressions over correlation ids.
    pub correlation_patterns: Vec<String>,
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
    /// When the bus accepted it.
    pub bus_timestamp: SystemTime,
    /// Publisher id of the facade that published it.
    pub publisher_id: String,
    /// Routing metadata (`replay = true` on replayed events).
    pub routing_metadata: HashMap<String, String>,
}

/// Moves the fields (the last subscriber of a delivery gets them without a copy).
impl From<Envelope> for BusEvent {
    fn from(env: Envelope) -> Self {
        Self {
            event_id: env.event_id,
            event: env.event,
            correlation_id: env.correlation_id,
            bus_timestamp: env.timestamp,
            publisher_id: env.publisher_id,
            routing_metadata: env.routing_metadata,
        }
    }
}

impl From<&Envelope> for BusEvent {
    fn from(env: &Envelope) -> Self {
        Self {
            event_id: env.event_id.clone(),
            event: env.event.clone(),
            correlation_id: env.correlation_id.clone(),
            bus_timestamp: env.timestamp,
            publisher_id: env.publisher_id.clone(),
            routing_metadata: env.routing_metadata.clone(),
        }
    }
}

/// Counters, with `events_persisted`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventBusStatistics {
    /// Events published.
    pub events_published: u64,
    /// Deliveries to subscribers.
    pub events_delivered: u64,
    /// Deliveries dropped (full queue, timeout, gone receiver).
    pub events_dropped: u64,
    /// Events kept for replay.
    pub events_persisted: u64,
    /// Subscribers now.
    pub active_subscribers: usize,
    /// Average delivery latency (sampled), milliseconds.
    pub avg_delivery_latency_ms: f64,
    /// Estimated memory held by queued events.
    pub memory_usage_bytes: u64,
    /// When these numbers were read.
    pub last_updated: SystemTime,
}

/// The tokio bus over busbridge's core.
pub struct LocalEventBus {
    core: Arc<Core>,
    config: EventBusConfig,
    quota: Quota,
    cleanup: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the bridge (and an embedded broker) alive as long as the facade.
    #[cfg(feature = "busrt")]
    bridge: Option<crate::bridge::Bridged>,
}

/// The publisher id of events published through an unbridged `LocalEventBus`, as in the
/// legacy bus. A bridged bus uses its busrt name, so events from different processes are told
/// apart.
pub const PUBLISHER_ID: &str = "local-publisher";

impl LocalEventBus {
    /// A legacy-router-only bus (phase 0); publishing needs `start()` first.
    pub async fn new(config: EventBusConfig) -> anyhow::Result<Self> {
        let core = Arc::new(Core::new(CoreOptions {
            max_subscribers: config.max_subscribers,
            persistence: config
                .enable_persistence
                .then_some(config.max_persisted_events),
            require_start: true,
            publisher_id: PUBLISHER_ID.into(),
            ..CoreOptions::default()
        }));
        Ok(Self::with_core(core, config))
    }

    /// This facade over an existing core (for example a bridged one).
    pub fn with_core(core: Arc<Core>, mut config: EventBusConfig) -> Self {
        // The bus's own configuration, where it sets it, wins over the facade's.
        config.max_buffer_size = core.channel_capacity().unwrap_or(config.max_buffer_size);
        Self {
            core,
            quota: Quota::new(config.max_subscribers),
            config,
            cleanup: None,
            #[cfg(feature = "busrt")]
            bridge: None,
        }
    }

    /// This facade over a bridged bus (already started): the one way every bridged tokio
    /// facade is made ([`bridged`](Self::bridged) and
    /// [`Bridged::tokio`](crate::bridge::Bridged::tokio) call it). The facade keeps the bus
    /// alive.
    #[cfg(feature = "busrt")]
    pub fn over(bridged: &crate::bridge::Bridged, config: EventBusConfig) -> Self {
        let mut bus = Self::with_core(bridged.core().clone(), config);
        bus.bridge = Some(bridged.clone());
        bus
    }

    /// The same bus bridged to busrt, in the phase the configuration names: the one
    /// constructor that changes when migrating. Call `start()` as before.
    #[cfg(feature = "busrt")]
    pub async fn bridged(
        config: EventBusConfig,
        bridge: &crate::config::Config,
    ) -> anyhow::Result<Self> {
        Ok(Self::over(
            &crate::bridge::Bridged::start(bridge).await?,
            config,
        ))
    }

    /// The bridge, if this bus was built with [`bridged`](Self::bridged).
    #[cfg(feature = "busrt")]
    pub fn bridge(&self) -> Option<&crate::bridge::Bridged> {
        self.bridge.as_ref()
    }

    /// Starts the bus and its periodic clean-up of expired persisted events.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.core.start();
        if self.config.enable_persistence && self.cleanup.is_none() {
            let core = Arc::downgrade(&self.core);
            let (every, max_age) = (self.config.cleanup_interval, self.config.max_event_age);
            self.cleanup = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match core.upgrade() {
                        Some(core) => core.expire(max_age),
                        None => return,
                    }
                }
            }));
        }
        Ok(())
    }

    /// Every counter of the core.
    pub fn stats(&self) -> crate::stats::StatsSnapshot {
        self.core.snapshot()
    }

    /// The core this facade publishes through (shared with other facades of the bus).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Subscribes, replacing a subscriber with the same id (whose receiver then disconnects).
    /// `subscribe` refuses a duplicate id, as the legacy bus did; this is the deliberate
    /// replace.
    pub async fn resubscribe(
        &mut self,
        subscription: EventSubscription,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>> {
        self.add(subscription, true).await
    }

    async fn add(
        &mut self,
        subscription: EventSubscription,
        replace: bool,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>> {
        let filter = filter_of(&subscription)?;
        self.add_filter(subscription.subscriber_id, filter, replace)
            .await
    }

    /// Subscribes with a router filter (the 2025-10 bus's subscriptions build theirs).
    pub(crate) async fn add_filter(
        &mut self,
        subscriber_id: String,
        filter: Filter,
        replace: bool,
    ) -> anyhow::Result<mpsc::Receiver<BusEvent>> {
        let (tx, rx) = mpsc::channel(self.config.max_buffer_size.max(1));
        self.core
            .subscribe_within(
                &self.quota,
                subscriber_id,
                filter,
                match self.core.backpressure_strategy() {
                    // The legacy tokio bus waited at most its delivery timeout.
                    None | Some(BackpressureStrategy::Blocking) => {
                        Policy::BlockFor(self.config.delivery_timeout)
                    }
                    Some(other) => other.into(),
                },
                Box::new(TokioSink(tx)),
                replace,
            )
            .await?;
        Ok(rx)
    }
}

impl Drop for LocalEventBus {
    fn drop(&mut self) {
        if let Some(task) = self.cleanup.take() {
            task.abort();
        }
    }
}

pub(crate) fn filter_of(sub: &EventSubscription) -> anyhow::Result<Filter> {
    let f = sub.event_filter.clone().unwrap_or_default();
    let c = sub.correlation_filter.clone().unwrap_or_default();
    let correlation_patterns = c
        .correlation_patterns
        .iter()
        .map(|p| {
            regex::Regex::new(p).map_err(|source| crate::bus::BusError::BadPattern {
                pattern: p.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Filter {
        capabilities: sub.capabilities,
        event_types: f.event_types,
        pids: f.pids,
        min_priority: f.min_priority.map(|p| p as u8),
        // The legacy tokio bus refused every non-trigger event once a minimum was set.
        min_priority_triggers_only: true,
        source: None,
        metadata: f.metadata_filters,
        correlation_ids: c.correlation_ids,
        correlation_patterns,
        ..Filter::default()
    })
}

impl LocalEventBus {
    /// [`EventBus::publish`] without the trait's boxed future (see [`crate::legacy`]).
    pub async fn publish(
        &mut self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> anyhow::Result<()> {
        let env = self.core.envelope(event, correlation_id);
        if self.config.enable_debug_logging {
            tracing::debug!(event_id = %env.event_id, kind = env.event.event_type(), "publish");
        }
        self.core.publish(env).await?;
        Ok(())
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
        self.add(subscription, false).await
    }

    async fn unsubscribe(&mut self, subscriber_id: &str) -> anyhow::Result<()> {
        self.core.unsubscribe_within(&self.quota, subscriber_id)?;
        Ok(())
    }

    async fn statistics(&self) -> EventBusStatistics {
        let s = self.core.legacy_statistics();
        EventBusStatistics {
            events_published: s.events_published,
            events_delivered: s.events_delivered,
            events_dropped: s.events_dropped,
            events_persisted: self.core.stats().snapshot().events_persisted,
            active_subscribers: s.active_subscribers,
            avg_delivery_latency_ms: s.avg_delivery_latency_ms,
            memory_usage_bytes: s.memory_usage_bytes,
            last_updated: s.last_updated,
        }
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.core.shutdown();
        if let Some(task) = self.cleanup.take() {
            task.abort();
        }
        Ok(())
    }

    async fn replay_events(
        &mut self,
        correlation_id: &str,
        subscriber_id: &str,
    ) -> anyhow::Result<()> {
        if !self.core.router().contains(subscriber_id) {
            return Err(crate::router::RouterError::UnknownSubscriber(subscriber_id.into()).into());
        }
        self.core.replay_to(subscriber_id, correlation_id).await;
        Ok(())
    }
}

struct TokioSink(mpsc::Sender<BusEvent>);

#[async_trait]
impl Sink for TokioSink {
    fn offer(&self, env: &Envelope) -> Offer {
        match self.0.try_reserve() {
            Ok(permit) => {
                permit.send(BusEvent::from(env));
                Offer::Sent
            }
            Err(mpsc::error::TrySendError::Full(())) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(())) => Offer::Closed,
        }
    }

    fn offer_owned(&self, env: Box<Envelope>) -> Result<(), Refused> {
        match self.0.try_reserve() {
            Ok(permit) => {
                permit.send(BusEvent::from(*env));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(Refused::Full(env)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(Refused::Closed),
        }
    }

    async fn ready(&self, limit: Option<Duration>) -> bool {
        let reserve = self.0.reserve();
        match limit {
            None => {
                let _ = reserve.await;
                true
            }
            Some(d) => tokio::time::timeout(d, reserve).await.is_ok(),
        }
    }

    fn discard_oldest(&self) -> bool {
        false
    }

    fn queued(&self) -> usize {
        self.0.max_capacity() - self.0.capacity()
    }
}

#[cfg(feature = "busrt")]
impl crate::bridge::Bridged {
    /// The tokio facade over this bus, already started (it keeps the bus alive).
    pub fn tokio(&self, config: EventBusConfig) -> LocalEventBus {
        LocalEventBus::over(self, config)
    }
}
