//! The one core behind every facade.
//!
//! [`Core`] owns the router, the statistics, the optional persistence store (for replay), the
//! lifecycle state, the phase and the observers (parity, trace). Every facade — the legacy
//! ones and the phase-4 [`EventBus`](crate::EventBus) — publishes through
//! [`Core::publish`]. A bridged core also has an [`Uplink`]: the trait this module defines
//! for what it needs from a bridge, which the bridge implements (the core knows nothing of
//! busrt).
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
use crate::observe::Observers;
use crate::parity::{Parity, ParityConfig};
use crate::phase::{Phase, PhaseError};
use crate::router::{Filter, Policy, Router, RouterError};
use crate::stats::Stats;
use crate::subscription::{BackpressureStrategy, BusEvent, EventBusStatistics, EventSubscription};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The tokio facade requires `start()` before publishing.
    #[error("the bus is not started: call start() first")]
    NotStarted,
    /// The bus was shut down.
    #[error("the bus is shut down")]
    ShutDown,
    /// A subscription change was refused.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The phase cannot be used here.
    #[error(transparent)]
    Phase(#[from] PhaseError),
    /// The event cannot be encoded (too large for the broker, for example); nothing was
    /// delivered or sent.
    #[error("cannot encode the event: {0}")]
    Codec(#[from] crate::codec::CodecError),
    /// The busrt transport failed.
    #[cfg(feature = "busrt")]
    #[error("busrt: {0}")]
    Transport(#[from] crate::client::ClientError),
    /// Phase 5: the trigger request could not be dispatched as a task (nothing capable, the
    /// queue full, ...); nothing was delivered. The source is a `task::DispatchError`.
    #[error("trigger request not dispatched: {0}")]
    Dispatch(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A correlation pattern is not a valid regular expression.
    #[error("invalid correlation pattern `{pattern}`: {source}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it does not compile.
        source: regex::Error,
    },
}

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const SHUT_DOWN: u8 = 2;

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// Most subscribers on the core, across every facade made over it (each facade also
    /// has its own limit).
    pub max_subscribers: usize,
    /// Keep the last N events for replay; `None` keeps none.
    pub persistence: Option<usize>,
    /// Publishing before `start()` is an error (the tokio facade's rule).
    pub require_start: bool,
    /// Publisher id used when a facade has none of its own.
    pub publisher_id: String,
    /// How the parity engine compares (used once the bus is bridged).
    pub parity: ParityConfig,
    /// Queue size of every subscriber, whatever each facade's own configuration says
    /// (`bus.channel_capacity`); `None` leaves it to each facade.
    pub channel_capacity: Option<usize>,
    /// What a full queue does, for every facade (`bus.backpressure_strategy`); `None` leaves
    /// it to each facade.
    pub backpressure_strategy: Option<BackpressureStrategy>,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            max_subscribers: 1000,
            persistence: None,
            require_start: false,
            publisher_id: "busbridge".into(),
            parity: ParityConfig::default(),
            channel_capacity: None,
            backpressure_strategy: None,
        }
    }
}

/// How one local publish travels, as the uplink decided for the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The legacy router delivers it to local subscribers now (otherwise it is delivered
    /// when it returns from busrt).
    pub deliver_now: bool,
    /// It goes to busrt.
    pub send: bool,
    /// busrt serves it and the legacy router's answer is recorded as the shadow control.
    pub compare: bool,
}

/// What the core needs from a bridge. The bridge ([`crate::bridge`]) implements it; the core
/// calls it for every local publish of a bridged bus.
#[async_trait::async_trait]
pub trait Uplink: Send + Sync {
    /// Whether another event may be taken now (the uplink bounds what is in flight).
    fn has_room(&self) -> bool;
    /// Waits until another event may be taken.
    async fn wait_room(&self);
    /// Decides the route of a local publish in `phase`, stamping the envelope's origin and,
    /// if it is sent, its sequence number. `compare`: parity or recording wants the legacy
    /// path's answer beside busrt's.
    /// `local`: a subscriber of this bus matches the event now (its return owes it them).
    fn route(&self, phase: Phase, compare: bool, local: bool, env: &mut Envelope) -> Route;
    /// Encodes an envelope the route sends. On error nothing is owed for it any more.
    fn encode(&self, env: &Envelope) -> Result<Bytes, BusError>;
    /// Queues an encoded envelope for busrt if there is room now; otherwise hands the frame
    /// back for [`send`](Self::send).
    fn try_send(&self, env: &Envelope, frame: Bytes) -> Result<Result<(), Bytes>, BusError>;
    /// Queues an encoded envelope for busrt, waiting for room.
    async fn send(&self, env: &Envelope, frame: Bytes) -> Result<(), BusError>;
    /// Starts receiving the event topics (called from the first local subscriber on).
    ///
    /// A publisher with no subscriber that wants its events confirmed by their return from
    /// the broker calls it itself (`busbridge pub --bridged` does, then waits for
    /// [`Link::settled`](crate::bridge::Link::settled)): a return that owes no local delivery
    /// is settled from its header and never decoded.
    async fn listen(&self) -> Result<(), BusError>;
    /// Own events sent and not yet returned from busrt.
    fn in_flight(&self) -> usize;
    /// Waits until every event handed over was confirmed by the broker and every return
    /// owed was settled. Wrap it in a timeout: a lost broker keeps returns owed.
    async fn drained(&self);
    /// Stops the uplink.
    fn close(&self);
}

/// What the core needs at phase 5: a way to hand a trigger request to one capable collector
/// as a task. `task::TriggerDispatch` implements it (defined here, as [`Uplink`] is, so the core
/// does not depend on the task layer).
#[async_trait::async_trait]
pub trait TaskUplink: Send + Sync {
    /// Submits the trigger request in `env` as a task. An error refuses the publish whole
    /// (nothing is delivered); its source is a `task::DispatchError`.
    async fn dispatch_trigger(
        &self,
        env: &Envelope,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
    /// What it dispatched so far.
    fn counts(&self) -> crate::stats::TriggerCounts;
}

/// One facade's own subscriber limit on a shared core.
///
/// Several facades can be made over one core (a bridged bus often has a crossbeam and a tokio
/// facade); each keeps the limit of its own configuration over the subscribers it added.
#[derive(Debug)]
pub struct Quota {
    max: usize,
    ids: Mutex<HashSet<String>>,
}

impl Quota {
    /// A limit of `max` subscribers.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            ids: Mutex::new(HashSet::new()),
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
    observers: Observers,
    uplink: OnceLock<Arc<dyn Uplink>>,
    tasks: OnceLock<Arc<dyn TaskUplink>>,
    queues: (Option<usize>, Option<BackpressureStrategy>),
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
            observers: Observers::new(Arc::new(Parity::new(opts.parity))),
            uplink: OnceLock::new(),
            tasks: OnceLock::new(),
            queues: (opts.channel_capacity, opts.backpressure_strategy),
        }
    }

    /// Queue size every facade of this bus must use, if the bus's configuration sets one.
    pub fn channel_capacity(&self) -> Option<usize> {
        self.queues.0
    }

    /// Back-pressure every facade of this bus must use, if the bus's configuration sets one.
    pub fn backpressure_strategy(&self) -> Option<BackpressureStrategy> {
        self.queues.1
    }

    /// A facade's queue size and back-pressure, overridden by the bus's where it sets them.
    pub fn queue_settings(
        &self,
        capacity: usize,
        strategy: BackpressureStrategy,
    ) -> (usize, BackpressureStrategy) {
        (
            self.queues.0.unwrap_or(capacity),
            self.queues.1.unwrap_or(strategy),
        )
    }

    /// The migration phase now.
    pub fn phase(&self) -> Phase {
        Phase::try_from(self.phase.load(Ordering::Acquire)).unwrap_or(Phase::Legacy)
    }

    /// Switches the phase; the next event takes the new route. A phase other than 0 needs a
    /// bridge, and the build must serve it.
    pub fn set_phase(&self, phase: Phase) -> Result<(), BusError> {
        phase.check_build()?;
        if phase != Phase::Legacy && self.uplink.get().is_none() {
            return Err(PhaseError::NeedsBridge(phase as u8).into());
        }
        if phase.dispatches_triggers() && self.tasks.get().is_none() {
            return Err(PhaseError::NeedsTasks.into());
        }
        let old = self.phase.swap(phase as u8, Ordering::AcqRel);
        if old != phase as u8 {
            tracing::info!(from = old, to = %phase, "phase switched");
        }
        Ok(())
    }

    /// Starts (or with `None` stops) recording subscriptions, publishes and control-path
    /// deliveries to a trace (see [`crate::trace`]). It can start on a running bus: the
    /// subscribers already there are written first, so the trace replays on its own.
    ///
    /// ```no_run
    /// # async fn run(bridged: busbridge::bridge::Bridged) -> Result<(), busbridge::trace::TraceError> {
    /// use busbridge::trace::Recorder;
    /// use std::sync::Arc;
    /// let recorder = Arc::new(Recorder::create("/var/lib/daemoneye/trace.jsonl")?);
    /// bridged.core().record_to(Some(recorder.clone()));
    /// // ... a day of the agent's own traffic, then:
    /// bridged.core().record_to(None);
    /// recorder.close()?; // then: busbridge parity --replay /var/lib/daemoneye/trace.jsonl
    /// # Ok(()) }
    /// ```
    pub fn record_to(&self, recorder: Option<Arc<crate::trace::Recorder>>) {
        if let Some(r) = &recorder {
            for (id, filter) in self.router.filters() {
                crate::observe::Observer::subscribed(r.as_ref(), &id, &filter);
            }
        }
        self.observers.record_to(recorder);
    }

    /// Whether a trace is being recorded.
    pub fn is_recording(&self) -> bool {
        self.observers.is_recording()
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
        self.add(id.into(), filter, policy, sink, false).await
    }

    /// As [`subscribe`](Self::subscribe), replacing a subscriber with the same id (whose
    /// receiver then disconnects): the facades' `resubscribe`.
    pub async fn resubscribe(
        &self,
        id: impl Into<String>,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn crate::router::Sink>,
    ) -> Result<(), BusError> {
        self.add(id.into(), filter, policy, sink, true).await
    }

    async fn add(
        &self,
        id: String,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn crate::router::Sink>,
        replace: bool,
    ) -> Result<(), BusError> {
        if replace {
            self.router
                .replace(id.clone(), filter.clone(), policy, sink)?;
        } else {
            self.router
                .subscribe(id.clone(), filter.clone(), policy, sink)?;
        }
        self.observers.subscribed(&id, &filter);
        if let Some(up) = self.uplink.get() {
            up.listen().await?;
        }
        Ok(())
    }

    /// Subscribes within a facade's own limit (see [`Quota`]); `replace` replaces a
    /// subscriber with the same id instead of refusing it.
    pub async fn subscribe_within(
        &self,
        quota: &Quota,
        id: impl Into<String>,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn crate::router::Sink>,
        replace: bool,
    ) -> Result<(), BusError> {
        let id = id.into();
        {
            let mut ids = quota.ids.lock();
            // Subscribers whose receiver went away are gone from the router: not counted.
            ids.retain(|i| self.router.contains(i));
            if !ids.contains(&id) && ids.len() >= quota.max {
                return Err(RouterError::TooManySubscribers(quota.max).into());
            }
        }
        self.add(id.clone(), filter, policy, sink, replace).await?;
        quota.ids.lock().insert(id);
        Ok(())
    }

    /// Removes a subscriber (and frees its place in `quota`).
    pub fn unsubscribe_within(&self, quota: &Quota, id: &str) -> Result<(), BusError> {
        self.router.unsubscribe(id)?;
        quota.ids.lock().remove(id);
        Ok(())
    }

    /// The parity engine of this bus.
    pub fn parity(&self) -> &Arc<Parity> {
        self.observers.parity()
    }

    /// Makes this core bridged (once; later calls are ignored).
    pub fn attach(&self, uplink: Arc<dyn Uplink>) {
        let _ = self.uplink.set(uplink);
    }

    /// The phase-5 dispatcher's counts, if this core has one.
    pub fn trigger_counts(&self) -> Option<crate::stats::TriggerCounts> {
        self.tasks.get().map(|t| t.counts())
    }

    /// Gives this core its phase-5 task dispatcher (once; later calls are ignored).
    pub fn attach_tasks(&self, tasks: Arc<dyn TaskUplink>) {
        let _ = self.tasks.set(tasks);
    }

    /// Events waiting in local subscribers' queues, all subscribers together.
    pub fn queued(&self) -> usize {
        self.router.queued()
    }

    /// Local subscribers now.
    pub fn subscribers(&self) -> usize {
        self.router.len()
    }

    /// Own events on their way through busrt (0 unless bridged).
    pub fn in_flight(&self) -> usize {
        self.uplink.get().map_or(0, |u| u.in_flight())
    }

    /// Waits until what the bridge was handed is confirmed and returned (at once unless
    /// bridged). Wrap it in a timeout.
    pub async fn drained(&self) {
        if let Some(up) = self.uplink.get() {
            up.drained().await;
        }
    }

    /// Whether this core is bridged.
    pub fn is_bridged(&self) -> bool {
        self.uplink.get().is_some()
    }

    /// The subscriber table and delivery loop.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The bus's counters (every drop has one).
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

    /// Accepts an envelope: counts it, persists it, routes it by the phase. Returns how many
    /// local subscribers received it now.
    pub async fn publish(&self, env: Envelope) -> Result<usize, BusError> {
        self.check_running()?;
        // Boxed once: this future (and every facade's around it) holds a pointer, not the
        // envelope, across its awaits; the last subscriber takes the box.
        let mut env = Box::new(env);
        Stats::add(&self.stats.published, 1);
        Stats::add(
            &self.stats.published_by_topic[crate::topic::counted_topic(&env.event)],
            1,
        );
        self.persist(&env);
        self.observers.published(&env);
        let Some(up) = self.uplink.get() else {
            return Ok(self.deliver_last(env).await);
        };
        // Bounded in flight: a publisher faster than the round trip waits here. (The common
        // case is checked without a future: this runs for every event.)
        if !up.has_room() {
            Box::pin(up.wait_room()).await;
        }
        let phase = self.phase();
        if phase.dispatches_triggers() && matches!(env.event, CollectionEvent::TriggerRequest(_)) {
            // Phase 5: one collector instance gets it as a task, not every subscriber of
            // its topic; this process's own subscribers still see what it publishes.
            if let Some(tasks) = self.tasks.get() {
                Box::pin(tasks.dispatch_trigger(&env))
                    .await
                    .map_err(BusError::Dispatch)?;
                return Ok(self.deliver_last(env).await);
            }
        }
        let compare = phase.has_control() && self.observers.comparing();
        let local = self.router.any_matching(&env);
        let route = up.route(phase, compare, local, &mut env);
        // Encoded before any delivery: an event that cannot travel is refused whole.
        let frame = if route.send {
            Some(up.encode(&env)?)
        } else {
            None
        };
        let delivered = if route.deliver_now {
            self.deliver_direct(&env, compare, local).await
        } else {
            if route.compare {
                self.observers
                    .shadow_control(&self.router.matching(&env), &env);
            }
            0
        };
        if let Some(frame) = frame {
            if let Err(frame) = up.try_send(&env, frame)? {
                Box::pin(up.send(&env, frame)).await?;
            }
        }
        Ok(delivered)
    }

    /// [`deliver_direct`](Self::deliver_direct) of an envelope not needed afterwards: the
    /// last subscriber takes it instead of a copy (unless observers need it too).
    async fn deliver_last(&self, env: Box<Envelope>) -> usize {
        if self.observers.watching_direct(false) {
            // Observers were just asked: straight to the observed delivery, not through
            // `deliver_direct`, which would ask them again.
            return Box::pin(self.deliver_observed(&env, false)).await;
        }
        self.router.route_owned(env).await
    }

    /// The legacy router delivers now; observers are told who received it. `local`: a
    /// subscriber here matched the envelope a moment ago.
    async fn deliver_direct(&self, env: &Envelope, compare: bool, local: bool) -> usize {
        if !self.observers.watching_direct(compare) {
            // Nobody here wants it (a publishing-only bus, say) and no observer needs to hear
            // so: the router is not walked for nothing.
            return if local {
                self.router.route(env).await
            } else {
                0
            };
        }
        // Boxed: the rare path would otherwise size every publish's future.
        Box::pin(self.deliver_observed(env, compare)).await
    }

    async fn deliver_observed(&self, env: &Envelope, compare: bool) -> usize {
        let mut ids = Vec::new();
        let n = self.router.route_collect(env, &mut ids).await;
        self.observers
            .delivered_direct(&ids, env, compare, || self.router.matching(env));
        n
    }

    /// Our own event returned from busrt: deliver it (busrt is the route) and/or record it as
    /// the parity candidate, as was owed when it was published.
    pub async fn deliver_returned(&self, env: &Envelope, deliver: bool, compare: bool) {
        if deliver {
            if !compare {
                self.router.route(env).await;
                return;
            }
            let mut ids = Vec::new();
            self.router.route_collect(env, &mut ids).await;
            self.observers.candidate(&ids, env);
        } else if compare {
            self.observers.candidate(&self.router.matching(env), env);
        }
    }

    /// Another bus's event from busrt, for the local subscribers.
    /// It is moved into the last matching subscriber.
    pub async fn deliver_remote(&self, env: Box<Envelope>) -> usize {
        Stats::add(
            &self.stats.received_by_topic[crate::topic::counted_topic(&env.event)],
            1,
        );
        self.router.route_owned(env).await
    }

    /// Replays persisted events of `correlation_id` to one subscriber (the tokio facade's
    /// `replay_events`), each marked `routing_metadata.replay = "true"`; recorded like any
    /// control-path delivery. Returns how many arrived.
    pub async fn replay_to(&self, subscriber: &str, correlation_id: &str) -> usize {
        let mut n = 0;
        for mut env in self.persisted(correlation_id) {
            env.routing_metadata.insert("replay".into(), "true".into());
            let got = self.router.route_to(&env, subscriber).await;
            if got > 0 {
                self.observers
                    .delivered_direct(&[subscriber.to_owned()], &env, false, Vec::new);
            }
            n += got;
        }
        n
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
        if let Some(up) = self.uplink.get() {
            up.close();
        }
        self.router.clear();
    }

    /// Every counter, parity included.
    pub fn snapshot(&self) -> crate::stats::StatsSnapshot {
        let mut s = self.stats.snapshot();
        (s.parity_compared, s.parity_mismatches) = self.parity().totals();
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
    crossbeam_filter(
        sub.capabilities,
        sub.event_filter.clone(),
        sub.correlation_filter.clone(),
    )
}

/// The router's filter for the crossbeam buses' subscription parts (every version has these).
pub(crate) fn crossbeam_filter(
    capabilities: crate::event::SourceCaps,
    event_filter: Option<crate::subscription::EventFilter>,
    correlation_filter: Option<String>,
) -> Filter {
    let f = event_filter.unwrap_or_default();
    Filter {
        capabilities,
        event_types: f.event_types,
        min_priority: f.min_priority,
        source: f.source_filter,
        correlation_ids: correlation_filter.into_iter().collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::PerformanceEvent;

    /// Every facade's publish future (boxed per call by `async_trait`) holds this one: it was
    /// 2,208 bytes, copied on every publish, before the envelope and the rare paths (trigger
    /// dispatch, a full uplink, observers) were boxed.
    #[test]
    fn a_publish_future_stays_small() {
        let core = Core::new(CoreOptions::default());
        let event = CollectionEvent::Performance(PerformanceEvent {
            metric_name: "m".into(),
            value: 1.0,
            unit: "u".into(),
            pid: None,
            component: "c".into(),
            timestamp: SystemTime::now(),
        });
        let envelope = core.envelope(event, String::new());
        assert!(std::mem::size_of_val(&envelope) > 400);
        let publish = core.publish(envelope);
        assert!(
            std::mem::size_of_val(&publish) <= 1024,
            "{} bytes",
            std::mem::size_of_val(&publish)
        );
    }
}
