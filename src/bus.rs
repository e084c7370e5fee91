//! The one core behind every facade, and the phase-4 [`EventBus`].
//!
//! [`Core`] owns the router, the statistics, the optional persistence store (for replay) and the
//! lifecycle state. The legacy facades and [`EventBus`] are thin layers over it.
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

use crate::codec::Envelope;
use crate::event::CollectionEvent;
use crate::parity::{Parity, ParityConfig};
use crate::phase::{Phase, PhaseError};
use crate::queue::{self, Receiver};
use crate::router::{Filter, Policy, QueueSink, Router, RouterError};
use crate::stats::Stats;
use crate::subscription::{BackpressureStrategy, BusEvent, EventBusStatistics, EventSubscription};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is not started: call start() first")]
    NotStarted,
    #[error("the bus is shut down")]
    ShutDown,
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error(transparent)]
    Phase(#[from] PhaseError),
    #[error("cannot encode the event: {0}")]
    Codec(#[from] crate::codec::CodecError),
    #[cfg(feature = "busrt")]
    #[error("busrt: {0}")]
    Transport(#[from] crate::client::ClientError),
    #[error("invalid correlation pattern `{pattern}`: {source}")]
    BadPattern {
        pattern: String,
        source: regex::Error,
    },
}

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const SHUT_DOWN: u8 = 2;

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    pub max_subscribers: usize,
    /// Keep the last N events for replay; `None` keeps none.
    pub persistence: Option<usize>,
    /// Publishing before `start()` is an error (the tokio facade's rule).
    pub require_start: bool,
    /// Publisher id used when a facade has none of its own.
    pub publisher_id: String,
    /// How the parity engine compares (used once the bus is bridged).
    pub parity: ParityConfig,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            max_subscribers: 1000,
            persistence: None,
            require_start: false,
            publisher_id: "busbridge".into(),
            parity: ParityConfig::default(),
        }
    }
}

/// The routing core shared by every facade.
pub struct Core {
    router: Router,
    stats: Arc<Stats>,
    store: Option<(usize, Mutex<VecDeque<Envelope>>)>,
    state: AtomicU8,
    publisher_id: String,
    phase: AtomicU8,
    parity: Arc<Parity>,
    recorder: parking_lot::RwLock<Option<Arc<crate::trace::Recorder>>>,
    #[cfg(feature = "busrt")]
    link: OnceLock<Arc<crate::bridge::Link>>,
    #[cfg(not(feature = "busrt"))]
    link: OnceLock<()>,
}

impl Core {
    /// A core in the created state (running at once unless `require_start`).
    pub fn new(opts: CoreOptions) -> Self {
        let stats = Arc::new(Stats::default());
        Self {
            router: Router::new(opts.max_subscribers, stats.clone()),
            stats,
            store: opts
                .persistence
                .map(|n| (n, Mutex::new(VecDeque::with_capacity(n.min(1024))))),
            state: AtomicU8::new(if opts.require_start { CREATED } else { RUNNING }),
            publisher_id: opts.publisher_id,
            phase: AtomicU8::new(Phase::Legacy as u8),
            parity: Arc::new(Parity::new(opts.parity)),
            recorder: parking_lot::RwLock::new(None),
            link: OnceLock::new(),
        }
    }

    /// The migration phase now.
    pub fn phase(&self) -> Phase {
        Phase::try_from(self.phase.load(Ordering::Acquire)).unwrap_or(Phase::Legacy)
    }

    /// Switches the phase; the next event takes the new route. A phase other than 0 needs a
    /// bridge, and the build must serve it.
    pub fn set_phase(&self, phase: Phase) -> Result<(), BusError> {
        phase.check_build()?;
        if phase != Phase::Legacy && self.link.get().is_none() {
            return Err(PhaseError::NeedsBridge(phase as u8).into());
        }
        let old = self.phase.swap(phase as u8, Ordering::AcqRel);
        if old != phase as u8 {
            tracing::info!(from = old, to = %phase, "phase switched");
        }
        Ok(())
    }

    /// Starts (or with `None` stops) recording subscriptions, publishes and control-path
    /// deliveries to a trace (see [`crate::trace`]).
    pub fn record_to(&self, recorder: Option<Arc<crate::trace::Recorder>>) {
        *self.recorder.write() = recorder;
    }

    /// Whether a trace is being recorded.
    pub fn is_recording(&self) -> bool {
        self.recorder.read().is_some()
    }

    /// Notes one control-path delivery (for parity and for the trace).
    pub(crate) fn note_control(&self, subscriber: &str, env: &Envelope) {
        if self.parity.is_enabled() {
            self.parity.record_control(subscriber, env);
        }
        if let Some(r) = self.recorder.read().as_ref() {
            r.deliver(subscriber, &env.event_id);
        }
    }

    /// A/A mode: the control path again, as the candidate.
    pub(crate) fn aa_candidate(&self, env: &Envelope) {
        for id in self.router.matching(env) {
            self.parity.record_candidate(&id, env);
        }
    }

    /// Adds a subscriber to the router (and to the trace, if recording); a bridged bus starts
    /// receiving its event topics from its first subscriber on.
    pub async fn subscribe(
        &self,
        id: impl Into<String>,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn crate::router::Sink>,
    ) -> Result<(), BusError> {
        let id = id.into();
        if let Some(r) = self.recorder.read().as_ref() {
            r.subscribe(&id, &filter);
        }
        self.router.subscribe(id, filter, policy, sink)?;
        #[cfg(feature = "busrt")]
        if let Some(link) = self.link.get() {
            link.listen().await?;
        }
        Ok(())
    }

    /// The parity engine of this bus.
    pub fn parity(&self) -> &Arc<Parity> {
        &self.parity
    }

    #[cfg(feature = "busrt")]
    pub(crate) fn attach(&self, link: Arc<crate::bridge::Link>) {
        let _ = self.link.set(link);
    }

    /// The bridge, if this core is bridged.
    #[cfg(feature = "busrt")]
    pub fn link(&self) -> Option<&Arc<crate::bridge::Link>> {
        self.link.get()
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The default publisher id.
    pub fn publisher_id(&self) -> &str {
        &self.publisher_id
    }

    /// Moves to running (idempotent).
    pub fn start(&self) {
        let _ = self
            .state
            .compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
    }

    fn check_running(&self) -> Result<(), BusError> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            CREATED => Err(BusError::NotStarted),
            _ => Err(BusError::ShutDown),
        }
    }

    /// Wraps an event in a fresh envelope from this core's publisher.
    pub fn envelope(&self, event: CollectionEvent, correlation_id: String) -> Envelope {
        Envelope::new(event, correlation_id, self.publisher_id.clone())
    }

    /// Accepts an envelope: counts it, persists it, routes it by the phase.
    pub async fn publish(&self, env: Envelope) -> Result<usize, BusError> {
        self.check_running()?;
        Stats::add(&self.stats.published, 1);
        self.persist(&env);
        let recorder = self.recorder.read().clone();
        if let Some(r) = &recorder {
            r.publish(&env);
        }
        #[cfg(feature = "busrt")]
        if let Some(link) = self.link.get() {
            return link.publish(self, env).await;
        }
        let aa = self.parity.config().aa && self.parity.is_enabled();
        if recorder.is_none() && !aa {
            return Ok(self.router.route(&env).await);
        }
        let mut ids = Vec::new();
        let n = self.router.route_collect(&env, &mut ids).await;
        for id in &ids {
            self.note_control(id, &env);
        }
        if aa {
            self.aa_candidate(&env);
        }
        Ok(n)
    }

    fn persist(&self, env: &Envelope) {
        if let Some((cap, store)) = &self.store {
            let mut store = store.lock();
            if store.len() >= *cap {
                store.pop_front();
                Stats::add(&self.stats.persist_evicted, 1);
            }
            store.push_back(env.clone());
            Stats::add(&self.stats.persisted, 1);
        }
    }

    /// Persisted events of one correlation id, oldest first.
    pub fn persisted(&self, correlation_id: &str) -> Vec<Envelope> {
        self.store
            .as_ref()
            .map(|(_, s)| {
                s.lock()
                    .iter()
                    .filter(|e| e.correlation_id == correlation_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops persisted events older than `max_age`.
    pub fn expire(&self, max_age: std::time::Duration) {
        if let Some((_, store)) = &self.store {
            let now = SystemTime::now();
            store.lock().retain(|e| {
                now.duration_since(e.timestamp)
                    .map(|age| age <= max_age)
                    .unwrap_or(true)
            });
        }
    }

    /// Stops accepting publishes and disconnects every subscriber (and the bridge).
    pub fn shutdown(&self) {
        self.state.store(SHUT_DOWN, Ordering::Release);
        #[cfg(feature = "busrt")]
        if let Some(link) = self.link.get() {
            link.close();
        }
        self.router.clear();
    }

    /// Every counter, parity included.
    pub fn snapshot(&self) -> crate::stats::StatsSnapshot {
        let mut s = self.stats.snapshot();
        (s.parity_compared, s.parity_mismatches) = self.parity.totals();
        s
    }

    /// The crossbeam-era statistics view.
    pub fn legacy_statistics(&self) -> EventBusStatistics {
        let s = self.stats.snapshot();
        EventBusStatistics {
            events_published: s.events_published,
            events_delivered: s.events_delivered,
            events_dropped: s.events_dropped(),
            active_subscribers: self.router.len(),
            avg_delivery_latency_ms: s.avg_delivery_latency_ms,
            memory_usage_bytes: (self.router.queued() * std::mem::size_of::<BusEvent>()) as u64,
            last_updated: SystemTime::now(),
        }
    }
}

/// Turns the crossbeam-era subscription into the router's filter.
pub(crate) fn filter_of(sub: &EventSubscription) -> Filter {
    let f = sub.event_filter.clone().unwrap_or_default();
    Filter {
        capabilities: sub.capabilities,
        event_types: f.event_types,
        min_priority: f.min_priority,
        source: f.source_filter,
        correlation_ids: sub.correlation_filter.iter().cloned().collect(),
        ..Filter::default()
    }
}

impl From<BackpressureStrategy> for Policy {
    fn from(s: BackpressureStrategy) -> Self {
        match s {
            BackpressureStrategy::Blocking => Policy::Block,
            BackpressureStrategy::DropOldest => Policy::DropOldest,
            BackpressureStrategy::DropNewest => Policy::DropNewest,
        }
    }
}

/// Settings of the phase-4 [`EventBus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventBusConfig {
    /// Queue size of each subscriber.
    pub channel_capacity: usize,
    pub max_subscribers: usize,
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
    #[cfg(feature = "busrt")]
    bridge: Option<Arc<crate::bridge::Bridged>>,
}

impl EventBus {
    /// A local bus.
    pub fn new(config: EventBusConfig) -> Self {
        let core = Arc::new(Core::new(CoreOptions {
            max_subscribers: config.max_subscribers,
            publisher_id: config.publisher_id.clone(),
            ..CoreOptions::default()
        }));
        Self::with_core(core, config)
    }

    /// This API over an existing core (for example a bridged one).
    pub fn with_core(core: Arc<Core>, config: EventBusConfig) -> Self {
        core.router().set_max_subscribers(config.max_subscribers);
        Self {
            core,
            config,
            #[cfg(feature = "busrt")]
            bridge: None,
        }
    }

    /// A bus bridged to busrt as the configuration says (phase 4 in a build without
    /// `legacy`).
    #[cfg(feature = "busrt")]
    pub async fn bridged(
        config: EventBusConfig,
        bridge: &crate::config::Config,
    ) -> Result<Self, crate::bridge::BridgeError> {
        let bridged = crate::bridge::Bridged::start(bridge).await?;
        let mut bus = Self::with_core(bridged.core().clone(), config);
        bus.bridge = Some(bridged);
        Ok(bus)
    }

    /// The core.
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
        self.subscribe_as(subscription, |e| BusEvent::from(e)).await
    }

    async fn subscribe_as<T: Send + 'static>(
        &self,
        subscription: EventSubscription,
        convert: fn(&crate::codec::Envelope) -> T,
    ) -> Result<Receiver<T>, BusError> {
        let (tx, rx) = queue::channel(self.config.channel_capacity);
        self.core
            .subscribe(
                subscription.subscriber_id.clone(),
                filter_of(&subscription),
                self.config.backpressure_strategy.into(),
                Box::new(QueueSink(tx, convert)),
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
        self.subscribe_as(subscription, Clone::clone).await
    }

    /// The statistics.
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
