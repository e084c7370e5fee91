//! The crossbeam bus in its final version (2026-04-19, the last before it was deleted): for
//! code written against it.
//!
//! Against [`legacy::crossbeam`](crate::legacy::crossbeam) (2025-09): `subscribe` returns
//! `Receiver<Arc<BusEvent>>`; each subscription names its own [`BackpressureStrategy`]
//! (`Blocking` or `DropNewest`) and gets its own queue of `per_subscriber_channel_capacity`;
//! a publish into a full `Blocking` subscriber retries with back-off (from 1 ms, doubling, at
//! most `publish_timeout / 4` and `blocking_backoff_max_delay`, at most
//! `max_blocking_retries` times) and fails with an error after `publish_timeout`;
//! [`ProcessEvent`] has `hash_algorithm`. Buses of every version exchange events through one
//! core and bridge: `hash_algorithm` is carried beside the event (`codec::EventExtra`) through
//! buses whose types lack it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use busbridge::legacy::crossbeam_2026_04::{
//!     BackpressureStrategy, CollectionEvent, EventSubscription, HighPerformanceEventBus,
//!     HighPerformanceEventBusConfig, HighPerformanceEventBusImpl, PerformanceEvent, SourceCaps,
//! };
//! let bus = HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default()).await?;
//! let rx = bus.subscribe(EventSubscription {
//!     subscriber_id: "metrics".into(),
//!     capabilities: SourceCaps::PERFORMANCE,
//!     event_filter: None,
//!     correlation_filter: None,
//!     backpressure_strategy: BackpressureStrategy::DropNewest,
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
//! `channel_capacity` (8192) sized the old bus's central queue in front of its routing thread.
//! busbridge has no central queue (a publish goes straight to the subscribers' queues), so
//! what bounds a publisher is each subscriber's `per_subscriber_channel_capacity` and
//! `publish_timeout`; `channel_capacity` is accepted and kept for code that reads it.

use super::crossbeam::{CrossbeamSink, Retry, PRIORITY, PUBLISHER_ID as LEGACY_PUBLISHER_ID};
use crate::bus::{Core, CoreOptions, Quota};
use crate::codec::{Envelope, EventExtra};
use crate::router::Policy;
use async_trait::async_trait;
use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::event::{
    AnalysisType, FilesystemEvent, NetworkEvent, PerformanceEvent, SourceCaps, TriggerPriority,
    TriggerRequest,
};
pub use crate::subscription::{EventBusStatistics, EventFilter};

/// The publisher id of events published through an unbridged bus, as in the legacy bus.
pub const PUBLISHER_ID: &str = LEGACY_PUBLISHER_ID;

/// A process observation (2026-04: with `hash_algorithm`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessEvent {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Process name.
    pub name: String,
    /// Path of the executable.
    pub executable_path: Option<String>,
    /// Command line, one argument per entry.
    pub command_line: Vec<String>,
    /// When the process started.
    pub start_time: Option<SystemTime>,
    /// CPU usage in percent.
    pub cpu_usage: Option<f64>,
    /// Resident memory in bytes.
    pub memory_usage: Option<u64>,
    /// Hash of the executable, hex.
    pub executable_hash: Option<String>,
    /// Algorithm of `executable_hash` (`None` exactly when it is `None`).
    pub hash_algorithm: Option<String>,
    /// Owner's user id.
    pub user_id: Option<String>,
    /// Whether the process could be inspected.
    pub accessible: bool,
    /// Whether the executable exists on disk.
    pub file_exists: bool,
    /// When it was observed.
    pub timestamp: SystemTime,
    /// Platform-specific details.
    pub platform_metadata: Option<serde_json::Value>,
}

impl ProcessEvent {
    /// The core's event and what it carries beside it.
    fn split(self) -> (crate::event::ProcessEvent, Option<String>) {
        let e = crate::event::ProcessEvent {
            pid: self.pid,
            ppid: self.ppid,
            name: self.name,
            executable_path: self.executable_path,
            command_line: self.command_line,
            start_time: self.start_time,
            cpu_usage: self.cpu_usage,
            memory_usage: self.memory_usage,
            executable_hash: self.executable_hash,
            user_id: self.user_id,
            accessible: self.accessible,
            file_exists: self.file_exists,
            timestamp: self.timestamp,
            platform_metadata: self.platform_metadata,
        };
        (e, self.hash_algorithm)
    }

    fn join(e: crate::event::ProcessEvent, hash_algorithm: Option<String>) -> Self {
        Self {
            pid: e.pid,
            ppid: e.ppid,
            name: e.name,
            executable_path: e.executable_path,
            command_line: e.command_line,
            start_time: e.start_time,
            cpu_usage: e.cpu_usage,
            memory_usage: e.memory_usage,
            executable_hash: e.executable_hash,
            hash_algorithm,
            user_id: e.user_id,
            accessible: e.accessible,
            file_exists: e.file_exists,
            timestamp: e.timestamp,
            platform_metadata: e.platform_metadata,
        }
    }
}

/// One event of any kind (2026-04: its [`ProcessEvent`] has `hash_algorithm`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CollectionEvent {
    /// A process observation.
    Process(ProcessEvent),
    /// A network connection.
    Network(NetworkEvent),
    /// A file-system operation.
    Filesystem(FilesystemEvent),
    /// A performance metric.
    Performance(PerformanceEvent),
    /// A request for deeper analysis.
    TriggerRequest(TriggerRequest),
}

impl CollectionEvent {
    /// When the event was observed.
    pub fn timestamp(&self) -> SystemTime {
        self.core_view().timestamp()
    }

    /// `"process"`, `"network"`, `"filesystem"`, `"performance"` or `"trigger_request"`.
    pub fn event_type(&self) -> &'static str {
        self.core_view().event_type()
    }

    /// The pid the event is about (a trigger request's `target_pid`).
    pub fn pid(&self) -> Option<u32> {
        self.core_view().pid()
    }

    fn core_view(&self) -> crate::event::CollectionEvent {
        self.clone().into_core().0
    }

    /// The core's event and what it carries beside it.
    pub fn into_core(self) -> (crate::event::CollectionEvent, EventExtra) {
        use crate::event::CollectionEvent as C;
        let mut extra = EventExtra::default();
        let event = match self {
            Self::Process(p) => {
                let (p, hash_algorithm) = p.split();
                extra.hash_algorithm = hash_algorithm;
                C::Process(p)
            }
            Self::Network(e) => C::Network(e),
            Self::Filesystem(e) => C::Filesystem(e),
            Self::Performance(e) => C::Performance(e),
            Self::TriggerRequest(e) => C::TriggerRequest(e),
        };
        (event, extra)
    }

    /// The event an envelope carries, with what travelled beside it.
    pub fn from_envelope(env: &Envelope) -> Self {
        Self::from_core(env.event.clone(), &env.extra)
    }

    /// A core event with what travels beside it, in this version's types.
    pub fn from_core(event: crate::event::CollectionEvent, extra: &EventExtra) -> Self {
        use crate::event::CollectionEvent as C;
        match event {
            C::Process(p) => Self::Process(ProcessEvent::join(p, extra.hash_algorithm.clone())),
            C::Network(e) => Self::Network(e),
            C::Filesystem(e) => Self::Filesystem(e),
            C::Performance(e) => Self::Performance(e),
            C::TriggerRequest(e) => Self::TriggerRequest(e),
        }
    }
}

/// What a full subscriber queue does (2026-04: per subscription; no `DropOldest`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BackpressureStrategy {
    /// The publisher retries with back-off, and fails after `publish_timeout`.
    #[default]
    Blocking,
    /// The new event is dropped for that subscriber (counted).
    DropNewest,
}

/// What a subscriber wants (2026-04: with its own back-pressure strategy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventSubscription {
    /// Unique id of the subscriber.
    pub subscriber_id: String,
    /// Event sources wanted.
    pub capabilities: SourceCaps,
    /// Narrower filters.
    pub event_filter: Option<EventFilter>,
    /// Exact correlation id wanted.
    pub correlation_filter: Option<String>,
    /// What this subscriber's full queue does.
    pub backpressure_strategy: BackpressureStrategy,
}

/// One delivered event (shared by reference: subscribers get `Arc<BusEvent>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BusEvent {
    /// Unique id of the event.
    pub event_id: String,
    /// The event.
    pub event: CollectionEvent,
    /// Correlation id given at publish.
    pub correlation_id: String,
    /// Publisher id (see [`PUBLISHER_ID`]).
    pub publisher_id: String,
    /// When the bus accepted it.
    pub timestamp: SystemTime,
    /// Always 5, as in the legacy bus.
    pub priority: u8,
}

fn bus_event(env: &Envelope) -> Arc<BusEvent> {
    Arc::new(BusEvent {
        event_id: env.event_id.clone(),
        event: CollectionEvent::from_envelope(env),
        correlation_id: env.correlation_id.clone(),
        publisher_id: env.publisher_id.clone(),
        timestamp: env.timestamp,
        priority: PRIORITY,
    })
}

/// The same, moving the envelope's fields (the last subscriber of a delivery).
fn bus_event_owned(env: Envelope) -> Arc<BusEvent> {
    Arc::new(BusEvent {
        event_id: env.event_id,
        event: CollectionEvent::from_core(env.event, &env.extra),
        correlation_id: env.correlation_id,
        publisher_id: env.publisher_id,
        timestamp: env.timestamp,
        priority: PRIORITY,
    })
}

/// The crossbeam bus, as 2026-04 code knows it.
#[async_trait]
pub trait HighPerformanceEventBus: Send + Sync {
    /// Publishes an event to every matching subscriber; fails after `publish_timeout` if a
    /// `Blocking` subscriber's queue stays full.
    async fn publish(&self, event: CollectionEvent, correlation_id: String) -> anyhow::Result<()>;
    /// Subscribes; an id already subscribed is an error.
    async fn subscribe(
        &self,
        subscription: EventSubscription,
    ) -> anyhow::Result<Receiver<Arc<BusEvent>>>;
    /// Counters.
    async fn get_statistics(&self) -> EventBusStatistics;
    /// Stops publishing and disconnects every subscriber.
    async fn shutdown(&mut self) -> anyhow::Result<()>;
}

/// Settings, with the 2026-04 defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HighPerformanceEventBusConfig {
    /// The old bus's central queue (see the module docs: accepted, no effect).
    pub channel_capacity: usize,
    /// Most subscribers through this facade.
    pub max_subscribers: usize,
    /// Kept from the 2025-09 config; each subscription names its own strategy.
    pub backpressure_strategy: BackpressureStrategy,
    /// Keep recent events for replay.
    pub enable_persistence: bool,
    /// How many events persistence keeps.
    pub max_persisted_events: usize,
    /// Accepted for compatibility; correlation filters always work.
    pub enable_correlation_tracking: bool,
    /// Queue size of each subscriber.
    pub per_subscriber_channel_capacity: usize,
    /// How long a publish may wait for a full `Blocking` subscriber before it fails.
    pub publish_timeout: Duration,
    /// Most back-off pauses of one publish waiting for room.
    pub max_blocking_retries: usize,
    /// Longest back-off pause.
    pub blocking_backoff_max_delay: Duration,
}

impl Default for HighPerformanceEventBusConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 8192,
            max_subscribers: 1000,
            backpressure_strategy: BackpressureStrategy::Blocking,
            enable_persistence: false,
            max_persisted_events: 10_000,
            enable_correlation_tracking: true,
            per_subscriber_channel_capacity: 1024,
            publish_timeout: Duration::from_secs(5),
            max_blocking_retries: 1000,
            blocking_backoff_max_delay: Duration::from_millis(100),
        }
    }
}

/// The 2026-04 crossbeam bus over busbridge's core.
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

    /// This facade over an existing core (for example a bridged one). The bus's own
    /// `bus.channel_capacity` and `bus.backpressure_strategy`, where set, win.
    pub fn with_core(core: Arc<Core>, config: HighPerformanceEventBusConfig) -> Self {
        Self {
            core,
            quota: Quota::new(config.max_subscribers),
            config,
            #[cfg(feature = "busrt")]
            bridge: None,
        }
    }

    /// This facade over a bridged bus (it keeps the bus alive).
    #[cfg(feature = "busrt")]
    pub fn over(bridged: &crate::bridge::Bridged, config: HighPerformanceEventBusConfig) -> Self {
        let mut bus = Self::with_core(bridged.core().clone(), config);
        bus.bridge = Some(bridged.clone());
        bus
    }

    /// The same bus bridged to busrt, in the phase the configuration names.
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

    /// Kept for compatibility: the legacy bus had a no-op `start`.
    pub async fn start(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The core this facade publishes through (shared with other facades of the bus).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Every counter of the core.
    pub fn stats(&self) -> crate::stats::StatsSnapshot {
        self.core.snapshot()
    }

    /// How long a publish waits for a full `Blocking` subscriber: `publish_timeout`, or the
    /// time `max_blocking_retries` back-off pauses take (1 ms doubling to the cap), if less.
    pub fn blocking_limit(&self) -> Duration {
        let c = &self.config;
        let cap = (c.publish_timeout / 4).min(c.blocking_backoff_max_delay);
        let mut total = Duration::ZERO;
        let mut pause = Duration::from_millis(1);
        for _ in 0..c.max_blocking_retries {
            total += pause.min(cap);
            if total >= c.publish_timeout {
                return c.publish_timeout;
            }
            pause = (pause * 2).min(cap.max(Duration::from_millis(1)));
        }
        total.min(c.publish_timeout)
    }

    /// Subscribes, replacing a subscriber with the same id; `subscribe` refuses it.
    pub async fn resubscribe(
        &self,
        subscription: EventSubscription,
    ) -> anyhow::Result<Receiver<Arc<BusEvent>>> {
        self.add(subscription, true).await
    }

    async fn add(
        &self,
        sub: EventSubscription,
        replace: bool,
    ) -> anyhow::Result<Receiver<Arc<BusEvent>>> {
        let c = &self.config;
        let (capacity, policy) = match self.core.backpressure_strategy() {
            // An operator's `bus.backpressure_strategy` wins over the code's.
            Some(s) => (self.core.channel_capacity(), Policy::from(s)),
            None => (
                self.core.channel_capacity(),
                match sub.backpressure_strategy {
                    BackpressureStrategy::DropNewest => Policy::DropNewest,
                    // The publish itself gives up (see `publish`).
                    BackpressureStrategy::Blocking => Policy::Block,
                },
            ),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = CrossbeamSink {
            tx,
            capacity: capacity.unwrap_or(c.per_subscriber_channel_capacity).max(1),
            discard_from: matches!(policy, Policy::DropOldest).then(|| rx.clone()),
            convert: bus_event,
            owned: Some(bus_event_owned),
            retry: Retry {
                first: Duration::from_millis(1),
                // The publish bounds the whole wait (`blocking_limit`).
                max_delay: (c.publish_timeout / 4).min(c.blocking_backoff_max_delay),
            },
        };
        let filter = crate::bus::crossbeam_filter(
            sub.capabilities,
            sub.event_filter,
            sub.correlation_filter,
        );
        self.core
            .subscribe_within(
                &self.quota,
                sub.subscriber_id,
                filter,
                policy,
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
        let (event, extra) = event.into_core();
        let mut env = self.core.envelope(event, correlation_id);
        env.extra = extra;
        let limit = self.blocking_limit();
        match tokio::time::timeout(limit, self.core.publish(env)).await {
            Ok(r) => Ok(r.map(drop)?),
            // Delivered to the subscribers before the full one, not to it or those after
            // (in phases 2-4 nothing was accepted: the wait was for room to send).
            Err(_) => anyhow::bail!(
                "publish timed out after {limit:?}: a subscriber's queue stayed full \
                 (publish_timeout {:?}, max_blocking_retries {})",
                self.config.publish_timeout,
                self.config.max_blocking_retries
            ),
        }
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
    ) -> anyhow::Result<Receiver<Arc<BusEvent>>> {
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

#[cfg(feature = "busrt")]
impl crate::bridge::Bridged {
    /// The 2026-04 crossbeam facade over this bus (it keeps the bus alive).
    pub fn crossbeam_2026_04(
        &self,
        config: HighPerformanceEventBusConfig,
    ) -> HighPerformanceEventBusImpl {
        HighPerformanceEventBusImpl::over(self, config)
    }
}
