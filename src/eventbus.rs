//! The phase-4 [`EventBus`]: the crossbeam-era methods over busbridge's own bounded
//! [`Receiver`], no crossbeam.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use busbridge::{EventBus, EventSubscription};
//! use busbridge::event::*;
//! use std::time::SystemTime;
//!
//! let bus = EventBus::new(Default::default());
//! let rx = bus
//!     .subscribe(EventSubscription {
//!         subscriber_id: "analyzer".into(),
//!         capabilities: SourceCaps::PERFORMANCE,
//!         event_filter: None,
//!         correlation_filter: None,
//!     })
//!     .await
//!     .unwrap();
//! let event = CollectionEvent::Performance(PerformanceEvent {
//!     metric_name: "cpu".into(), value: 1.0, unit: "%".into(), pid: None,
//!     component: "agent".into(), timestamp: SystemTime::now(),
//! });
//! bus.publish(event.clone(), "corr-1".into()).await.unwrap();
//! assert_eq!(rx.try_recv().unwrap().event, event);
//! # });
//! ```

use crate::bus::{filter_of, BusError, Core, CoreOptions, Quota};
use crate::event::CollectionEvent;
use crate::queue::{self, Receiver};
use crate::router::{MovingQueueSink, QueueSink};
use crate::subscription::{BackpressureStrategy, BusEvent, EventBusStatistics, EventSubscription};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Settings of the phase-4 [`EventBus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventBusConfig {
    /// Queue size of each subscriber.
    pub channel_capacity: usize,
    /// Most subscribers through this facade.
    pub max_subscribers: usize,
    /// What a full subscriber queue does to the publisher.
    pub backpressure_strategy: BackpressureStrategy,
    /// Publisher id stamped on events published through this bus.
    pub publisher_id: String,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 65_536,
            max_subscribers: 1000,
            backpressure_strategy: BackpressureStrategy::Blocking,
            publisher_id: "busbridge".into(),
        }
    }
}

/// The phase-4 bus: the crossbeam-era methods, busbridge's own [`Receiver`], no crossbeam.
pub struct EventBus {
    core: Arc<Core>,
    config: EventBusConfig,
    quota: Quota,
    /// Keeps the bridge (and its embedded broker) alive while this facade is.
    #[cfg(feature = "busrt")]
    bridge: Option<crate::bridge::Bridged>,
}

impl EventBus {
    /// A bus of its own, legacy router only until it is bridged.
    pub fn new(config: EventBusConfig) -> Self {
        let core = Arc::new(Core::new(CoreOptions {
            max_subscribers: config.max_subscribers,
            publisher_id: config.publisher_id.clone(),
            ..CoreOptions::default()
        }));
        Self::with_core(core, config)
    }

    /// This API over an existing core (for example a bridged one).
    pub fn with_core(core: Arc<Core>, mut config: EventBusConfig) -> Self {
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

    /// This API over a bridged bus (what [`bridged`](Self::bridged) and
    /// [`Bridged::event_bus`](crate::bridge::Bridged::event_bus) use).
    #[cfg(feature = "busrt")]
    pub fn over(bridged: &crate::bridge::Bridged, config: EventBusConfig) -> Self {
        let mut bus = Self::with_core(bridged.core().clone(), config);
        bus.bridge = Some(bridged.clone());
        bus
    }

    /// A bus bridged to busrt as the configuration says (phase 4 in a build without
    /// `legacy`).
    #[cfg(feature = "busrt")]
    pub async fn bridged(
        config: EventBusConfig,
        bridge: &crate::config::Config,
    ) -> Result<Self, crate::bridge::BridgeError> {
        Ok(Self::over(
            &crate::bridge::Bridged::start(bridge).await?,
            config,
        ))
    }

    /// The core this facade publishes through (shared with other facades of the bus).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Publishes an event to every matching subscriber.
    pub async fn publish(
        &self,
        event: CollectionEvent,
        correlation_id: String,
    ) -> Result<(), BusError> {
        self.core
            .publish(self.core.envelope(event, correlation_id))
            .await
            .map(drop)
    }

    /// Subscribes; events arrive on the returned receiver.
    pub async fn subscribe(
        &self,
        subscription: EventSubscription,
    ) -> Result<Receiver<BusEvent>, BusError> {
        self.subscribe_as(
            subscription,
            |e| BusEvent::from(e),
            Some(BusEvent::from),
            false,
        )
        .await
    }

    /// Subscribes, replacing a subscriber with the same id (whose receiver then disconnects);
    /// `subscribe` refuses a duplicate id.
    pub async fn resubscribe(
        &self,
        subscription: EventSubscription,
    ) -> Result<Receiver<BusEvent>, BusError> {
        self.subscribe_as(
            subscription,
            |e| BusEvent::from(e),
            Some(BusEvent::from),
            true,
        )
        .await
    }

    async fn subscribe_as<T: Send + 'static>(
        &self,
        subscription: EventSubscription,
        convert: fn(&crate::codec::Envelope) -> T,
        owned: Option<fn(crate::codec::Envelope) -> T>,
        replace: bool,
    ) -> Result<Receiver<T>, BusError> {
        let (tx, rx) = queue::channel(self.config.channel_capacity);
        let sink: Box<dyn crate::router::Sink> = match owned {
            Some(owned) => Box::new(MovingQueueSink(QueueSink(tx, convert), owned)),
            None => Box::new(QueueSink(tx, convert)),
        };
        self.core
            .subscribe_within(
                &self.quota,
                subscription.subscriber_id.clone(),
                filter_of(&subscription),
                self.config.backpressure_strategy.into(),
                sink,
                replace,
            )
            .await?;
        Ok(rx)
    }

    /// Subscribes to whole envelopes: each event with its origin and sequence number, what a
    /// durable subscriber records as its position (see [`crate::durable`]).
    pub async fn subscribe_envelopes(
        &self,
        subscription: EventSubscription,
    ) -> Result<Receiver<crate::codec::Envelope>, BusError> {
        self.subscribe_as(subscription, Clone::clone, Some(|e| e), false)
            .await
    }

    /// Subscribes with `convert` applied to each envelope as it is delivered, on the
    /// delivering task, instead of a clone: a subscriber that only wants part of an event, or
    /// its encoding (the fleet uplink), pays for nothing else.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use busbridge::{EventBus, EventSubscription};
    /// let bus = EventBus::new(Default::default());
    /// let rx = bus
    ///     .subscribe_map(EventSubscription::everything("pids"), |e| e.event.pid())
    ///     .await
    ///     .unwrap();
    /// # });
    /// ```
    pub async fn subscribe_map<T: Send + 'static>(
        &self,
        subscription: EventSubscription,
        convert: fn(&crate::codec::Envelope) -> T,
    ) -> Result<Receiver<T>, BusError> {
        self.subscribe_as(subscription, convert, None, false).await
    }

    /// The crossbeam-era statistics of the whole bus.
    pub async fn get_statistics(&self) -> EventBusStatistics {
        self.core.legacy_statistics()
    }

    /// Every counter.
    pub fn stats(&self) -> crate::stats::StatsSnapshot {
        self.core.snapshot()
    }

    /// Stops the bus; receivers drain what is queued, then disconnect.
    pub async fn shutdown(&mut self) -> Result<(), BusError> {
        self.core.shutdown();
        Ok(())
    }
}

#[cfg(feature = "busrt")]
impl crate::bridge::Bridged {
    /// The phase-4 facade over this bus (it keeps the bus alive).
    pub fn event_bus(&self, config: EventBusConfig) -> EventBus {
        EventBus::over(self, config)
    }
}
