//! The crossbeam facade: `HighPerformanceEventBus`, as legacy code calls it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use busbridge::legacy::crossbeam::{
//!     CollectionEvent, EventSubscription, HighPerformanceEventBus, HighPerformanceEventBusConfig,
//!     HighPerformanceEventBusImpl, PerformanceEvent, SourceCaps,
//! };
//! let bus = HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default()).await?;
//! let rx = bus.subscribe(EventSubscription {
//!     subscriber_id: "metrics".into(),
//!     capabilities: SourceCaps::PERFORMANCE,
//!     event_filter: None,
//!     correlation_filter: None,
//! }).await?;
//! let event = CollectionEvent::Performance(PerformanceEvent {
//!     metric_name: "rss".into(), value: 3.0, unit: "MiB".into(), pid: Some(1),
//!     component: "agent".into(), timestamp: std::time::SystemTime::now(),
//! });
//! bus.publish(event.clone(), "c-1".into()).await?;
//! assert_eq!(rx.recv()?.event, event);
//! # anyhow::Ok(()) }).unwrap();
//! ```
//!
//! Queues are unbounded crossbeam channels whose length the router bounds at
//! `channel_capacity` (a bounded crossbeam channel would allocate every slot up front: about
//! 300 MiB per subscriber at the legacy default of 1,048,576). The bound can be exceeded by at
//! most one event per concurrently publishing task. Under `DropOldest` the router keeps a clone
//! of the receiver to discard from, so a dropped receiver is noticed only at `shutdown`.

use crate::bus::{filter_of, Core, CoreOptions, Quota};
use crate::codec::Envelope;
use crate::router::{Offer, Refused, Sink};
use async_trait::async_trait;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub use crate::event::{
    AnalysisType, CollectionEvent, FilesystemEvent, NetworkEvent, PerformanceEvent, ProcessEvent,
    SourceCaps, TriggerPriority, TriggerRequest,
};
pub use crate::subscription::{
    BackpressureStrategy, BusEvent, EventBusStatistics, EventFilter, EventSubscription,
};

/// The crossbeam bus, as legacy code knows it.
#[async_trait]
pub trait HighPerformanceEventBus: Send + Sync {
    /// Publishes an event to every matching subscriber.
    async fn publish(&self, event: CollectionEvent, correlation_id: String) -> anyhow::Result<()>;
    /// Subscribes; events arrive on the returned crossbeam receiver.
    async fn subscribe(
        &self,
        subscription: EventSubscription,
    ) -> anyhow::Result<crossbeam_channel::Receiver<BusEvent>>;
    /// Counters.
    async fn get_statistics(&self) -> EventBusStatistics;
    /// Stops publishing and disconnects every subscriber.
    async fn shutdown(&mut self) -> anyhow::Result<()>;
}

/// Settings, with the legacy defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HighPerformanceEventBusConfig {
    /// Queue size of each subscriber.
    pub channel_capacity: usize,
    /// Most subscribers through this facade.
    pub max_subscribers: usize,
    /// What a full subscriber queue does to the publisher.
    pub backpressure_strategy: BackpressureStrategy,
    /// Keep recent events for replay.
    pub enable_persistence: bool,
    /// How many events persistence keeps.
    pub max_persisted_events: usize,
    /// Accepted for compatibility; correlation filters always work.
    pub enable_correlation_tracking: bool,
}

impl Default for HighPerformanceEventBusConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 1_048_576,
            max_subscribers: 1000,
            backpressure_strategy: BackpressureStrategy::Blocking,
            enable_persistence: false,
            max_persisted_events: 10_000,
            enable_correlation_tracking: true,
        }
    }
}

/// The publisher id of events published through an unbridged bus, as in the legacy bus. A
/// bridged bus uses its busrt name, so events from different processes are told apart.
pub const PUBLISHER_ID: &str = "high-performance-bus";

/// `BusEvent::priority` on this facade: the legacy bus set 5 on every event.
pub const PRIORITY: u8 = 5;

/// The crossbeam bus over busbridge's core.
pub struct HighPerformanceEventBusImpl {
    core: Arc<Core>,
    config: HighPerformanceEventBusConfig,
    quota: Quota,
    /// Keeps the bridge (and an embedded broker) alive as long as the facade.
    #[cfg(feature = "busrt")]
    bridge: Option<crate::bridge::Bridged>,
}

impl HighPerformanceEventBusImpl {
    /// A legacy-router-only bus (phase 0).
    pub async fn new(config: HighPerformanceEventBusConfig) -> anyhow::Result<Self> {
        let core = Arc::new(Core::new(CoreOptions {
            max_subscribers: config.max_subscribers,
            persistence: config
                .enable_persistence
                .then_some(config.max_persisted_events),
            publisher_id: PUBLISHER_ID.into(),
            ..CoreOptions::default()
        }));
        Ok(Self::with_core(core, config))
    }

    /// This facade over an existing core (for example a bridged one).
    pub fn with_core(core: Arc<Core>, mut config: HighPerformanceEventBusConfig) -> Self {
        // The bus's own configuration, where it sets them, wins over the facade's.
        (config.channel_capacity, config.backpressure_strategy) =
            core.queue_settings(config.channel_capacity, config.backpressure_strategy);
        Self {
            core,
            quota: Quota::new(config.max_subscribers),
            config,
            #[cfg(feature = "busrt")]
            bridge: None,
        }
    }

    /// This facade over a bridged bus: the one way every bridged crossbeam facade is made
    /// ([`bridged`](Self::bridged) and [`Bridged::crossbeam`](crate::bridge::Bridged::crossbeam)
    /// call it). The facade keeps the bus alive.
    #[cfg(feature = "busrt")]
    pub fn over(bridged: &crate::bridge::Bridged, config: HighPerformanceEventBusConfig) -> Self {
        let mut bus = Self::with_core(bridged.core().clone(), config);
        bus.bridge = Some(bridged.clone());
        bus
    }

    /// The same bus bridged to busrt, in the phase the configuration names (embedded broker
    /// or `client.connect`): the one constructor that changes when migrating.
    #[cfg(feature = "busrt")]
    pub async fn bridged(
        config: HighPerformanceEventBusConfig,
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

    /// Kept for compatibility: the legacy bus had a no-op `start`.
    pub async fn start(&self) -> anyhow::Result<()> {
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
        &self,
        subscription: EventSubscription,
    ) -> anyhow::Result<Receiver<BusEvent>> {
        self.add(subscription, true).await
    }

    async fn add(
        &self,
        subscription: EventSubscription,
        replace: bool,
    ) -> anyhow::Result<Receiver<BusEvent>> {
        let source = subscription
            .event_filter
            .as_ref()
            .and_then(|f| f.source_filter.as_deref());
        if source == Some(PUBLISHER_ID) && self.core.is_bridged() {
            // It would match nothing: say so rather than deliver nothing.
            anyhow::bail!(
                "source_filter `{PUBLISHER_ID}`: on a bridged bus the publisher id is the \
                 publishing bus's busrt name (`{}` here)",
                self.core.publisher_id()
            );
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let strategy = self.config.backpressure_strategy;
        let sink = CrossbeamSink {
            tx,
            capacity: self.config.channel_capacity.max(1),
            discard_from: (strategy == BackpressureStrategy::DropOldest).then(|| rx.clone()),
            convert: bus_event,
            owned: Some(bus_event_owned),
            retry: RETRY,
        };
        self.core
            .subscribe_within(
                &self.quota,
                subscription.subscriber_id.clone(),
                filter_of(&subscription),
                strategy.into(),
                Box::new(sink),
                replace,
            )
            .await?;
        Ok(rx)
    }
}

impl HighPerformanceEventBusImpl {
    /// [`HighPerformanceEventBus::publish`] without the trait's boxed future (see [`crate::legacy`]).
    pub async fn publish(
        &self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> anyhow::Result<()> {
        self.core
            .publish(self.core.envelope(event, correlation_id))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl HighPerformanceEventBus for HighPerformanceEventBusImpl {
    async fn publish(&self, event: CollectionEvent, correlation_id: String) -> anyhow::Result<()> {
        HighPerformanceEventBusImpl::publish(self, event, correlation_id).await
    }

    async fn subscribe(
        &self,
        subscription: EventSubscription,
    ) -> anyhow::Result<Receiver<BusEvent>> {
        self.add(subscription, false).await
    }

    async fn get_statistics(&self) -> EventBusStatistics {
        self.core.legacy_statistics()
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.core.shutdown();
        Ok(())
    }
}

/// A crossbeam channel as a router sink, shared by the crossbeam facades of every version:
/// unbounded underneath (a bounded channel allocates every slot up front), bounded here at
/// `capacity`.
pub(crate) struct CrossbeamSink<T> {
    pub(crate) tx: Sender<T>,
    pub(crate) capacity: usize,
    /// Under `DropOldest`: a clone of the receiver to discard from.
    pub(crate) discard_from: Option<Receiver<T>>,
    /// What a subscriber of this version receives.
    pub(crate) convert: fn(&Envelope) -> T,
    /// The same, moving the envelope's fields (see [`Sink::offer_owned`]), where the
    /// version's item can take them.
    pub(crate) owned: Option<fn(Envelope) -> T>,
    /// How a blocked publisher polls for room.
    pub(crate) retry: Retry,
}

/// Polling for room in a full crossbeam queue: crossbeam has no async "room available"
/// signal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    /// First pause; each next one doubles.
    pub(crate) first: Duration,
    /// Longest pause.
    pub(crate) max_delay: Duration,
}

/// The 2025-09 bus's polling: fine-grained, no retry limit.
const RETRY: Retry = Retry {
    first: Duration::from_micros(50),
    max_delay: Duration::from_millis(5),
};

fn bus_event(env: &Envelope) -> BusEvent {
    BusEvent {
        priority: PRIORITY,
        ..BusEvent::from(env)
    }
}

fn bus_event_owned(env: Envelope) -> BusEvent {
    BusEvent {
        priority: PRIORITY,
        ..BusEvent::from(env)
    }
}

#[async_trait]
impl<T: Send + Sync + 'static> Sink for CrossbeamSink<T> {
    fn offer(&self, env: &Envelope) -> Offer {
        if self.tx.len() >= self.capacity {
            return Offer::Full;
        }
        match self.tx.send((self.convert)(env)) {
            Ok(()) => Offer::Sent,
            Err(_) => Offer::Closed,
        }
    }

    fn offer_owned(&self, env: Box<Envelope>) -> Result<(), Refused> {
        if self.tx.len() >= self.capacity {
            return Err(Refused::Full(env));
        }
        // The capacity is the facade's own bound over an unbounded channel: with room, a
        // send only fails with the receiver gone.
        let item = match self.owned {
            Some(owned) => owned(*env),
            None => (self.convert)(&env),
        };
        self.tx.send(item).map_err(|_| Refused::Closed)
    }

    async fn ready(&self, limit: Option<Duration>) -> bool {
        // Only a full queue under a blocking policy gets here; a dropped receiver empties
        // the channel.
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        let mut pause = self.retry.first;
        while self.tx.len() >= self.capacity {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.retry.max_delay);
        }
        true
    }

    fn discard_oldest(&self) -> bool {
        self.discard_from
            .as_ref()
            .is_some_and(|rx| rx.try_recv().is_ok())
    }

    fn queued(&self) -> usize {
        self.tx.len()
    }
}

#[cfg(feature = "busrt")]
impl crate::bridge::Bridged {
    /// The crossbeam facade over this bus (it keeps the bus alive).
    pub fn crossbeam(&self, config: HighPerformanceEventBusConfig) -> HighPerformanceEventBusImpl {
        HighPerformanceEventBusImpl::over(self, config)
    }
}
