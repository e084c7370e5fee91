//! The routing core: one subscriber table, one filter, one delivery loop, for every facade.
//!
//! A facade turns its subscription into a [`Filter`] and its channel into a [`Sink`]; the
//! router decides who gets an event and applies the subscriber's [`Policy`] when a queue is
//! full. Delivery happens on the publisher's task (no routing thread, so no idle spinning), in
//! publish order per subscriber.

use crate::codec::Envelope;
use crate::event::SourceCaps;
use crate::stats::Stats;
use async_trait::async_trait;
use parking_lot::RwLock;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a subscription can ask for, in one place.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    /// The event's capability must be contained here.
    pub capabilities: SourceCaps,
    /// `event_type()` names; empty means all.
    pub event_types: Vec<String>,
    /// Event pids; empty means all.
    pub pids: Vec<u32>,
    /// Minimum trigger priority, for trigger requests.
    pub min_priority: Option<u8>,
    /// With `min_priority`, events that are not trigger requests are refused too (the tokio
    /// bus's rule); otherwise they pass (the crossbeam facade's).
    pub min_priority_triggers_only: bool,
    /// Exact publisher id.
    pub source: Option<String>,
    /// Every pair must be present in the trigger metadata or the routing metadata.
    pub metadata: HashMap<String, String>,
    /// Exact correlation ids: when any are given, the event's must be one of them.
    pub correlation_ids: Vec<String>,
    /// Regular expressions over the correlation id: when any are given, one must match (as
    /// well as `correlation_ids`: patterns narrow, never widen).
    #[serde(with = "regex_strings")]
    pub correlation_patterns: Vec<Regex>,
    /// Topics wanted instead of `capabilities` (the 2025-10 tokio bus's `topic_patterns`):
    /// when set, the event's topic must match one and its capability is not checked.
    pub topics: Option<Vec<TopicRule>>,
    /// Topics the event's topic must also match, one of them (empty: any).
    pub topic_filters: Vec<TopicRule>,
    /// Publisher ids, one of which must be the event's (empty: any).
    pub sources: Vec<String>,
}

/// A topic a subscription asks for: a dotted pattern (`*` one level, `#` one or more) or, with
/// wildcards off, the literal topic. Parsed once, at subscribe; a trace keeps it as text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RuleText", into = "RuleText")]
pub enum TopicRule {
    /// A pattern.
    Pattern(crate::topic::Pattern),
    /// Exactly this topic.
    Literal(String),
}

/// A [`TopicRule`] as a trace writes it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum RuleText {
    Pattern(String),
    Literal(String),
}

impl TryFrom<RuleText> for TopicRule {
    type Error = crate::topic::TopicError;
    fn try_from(t: RuleText) -> Result<Self, Self::Error> {
        match t {
            RuleText::Pattern(p) => Self::parse(&p, true),
            RuleText::Literal(l) => Ok(Self::Literal(l)),
        }
    }
}

impl From<TopicRule> for RuleText {
    fn from(r: TopicRule) -> Self {
        match r {
            TopicRule::Pattern(p) => Self::Pattern(p.to_dotted()),
            TopicRule::Literal(l) => Self::Literal(l),
        }
    }
}

impl TopicRule {
    /// A rule from a subscription's text: a pattern when `wildcards`, else taken literally.
    pub fn parse(text: &str, wildcards: bool) -> Result<Self, crate::topic::TopicError> {
        if wildcards {
            Ok(Self::Pattern(crate::topic::Pattern::parse(text)?))
        } else {
            Ok(Self::Literal(text.to_owned()))
        }
    }

    /// Whether `topic` is wanted.
    pub fn matches(&self, topic: &crate::topic::Topic) -> bool {
        match self {
            Self::Pattern(p) => p.matches(topic),
            Self::Literal(l) => topic.as_str() == l,
        }
    }
}

/// Regular expressions as their source strings (for recorded traces).
mod regex_strings {
    use regex::Regex;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Regex], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(Regex::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Regex>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|p| Regex::new(p).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl Filter {
    /// True if the envelope passes every part of the filter.
    pub fn matches(&self, env: &Envelope) -> bool {
        let event = &env.event;
        if self.topics.is_some() || !self.topic_filters.is_empty() {
            let topic = crate::topic::topic_for_event(event);
            let any = |rules: &[TopicRule]| rules.iter().any(|r| r.matches(&topic));
            if self.topics.as_deref().is_some_and(|t| !any(t)) {
                return false;
            }
            if !self.topic_filters.is_empty() && !any(&self.topic_filters) {
                return false;
            }
        }
        if self.topics.is_none() && !self.capabilities.contains(event.capability()) {
            return false;
        }
        if !self.sources.is_empty() && !self.sources.contains(&env.publisher_id) {
            return false;
        }
        if !self.event_types.is_empty() && !self.event_types.iter().any(|t| t == event.event_type())
        {
            return false;
        }
        if !self.pids.is_empty() && !event.pid().is_some_and(|p| self.pids.contains(&p)) {
            return false;
        }
        if let Some(min) = self.min_priority {
            match event.trigger_priority() {
                Some(p) if (p as u8) < min => return false,
                None if self.min_priority_triggers_only => return false,
                _ => {}
            }
        }
        if self.source.as_ref().is_some_and(|s| *s != env.publisher_id) {
            return false;
        }
        if !self.metadata.is_empty() {
            let trigger_meta = match event {
                crate::event::CollectionEvent::TriggerRequest(t) => Some(&t.metadata),
                _ => None,
            };
            let has = |k: &String, v: &String| {
                env.routing_metadata.get(k) == Some(v)
                    || trigger_meta.is_some_and(|m| m.get(k) == Some(v))
            };
            if !self.metadata.iter().all(|(k, v)| has(k, v)) {
                return false;
            }
        }
        (self.correlation_ids.is_empty() || self.correlation_ids.contains(&env.correlation_id))
            && (self.correlation_patterns.is_empty()
                || self
                    .correlation_patterns
                    .iter()
                    .any(|r| r.is_match(&env.correlation_id)))
    }
}

/// What happens when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Wait for room as long as it takes.
    Block,
    /// Wait at most this long, then drop the event (counted as a timeout drop).
    BlockFor(Duration),
    /// Discard the oldest queued event.
    DropOldest,
    /// Discard the new event.
    DropNewest,
}

/// The result of offering an event to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Sent,
    /// The queue is full.
    Full,
    /// The receiver is gone.
    Closed,
}

/// A subscriber's channel, as the router sees it.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Queues the event without waiting.
    fn offer(&self, env: &Envelope) -> Offer;
    /// Queues the event without waiting, taking it: the last subscriber of a delivery gets
    /// the envelope's fields, not a copy. The default queues a copy; a sink that can move
    /// the fields into what its receiver gets overrides it.
    fn offer_owned(&self, env: Box<Envelope>) -> Result<(), Refused> {
        match self.offer(&env) {
            Offer::Sent => Ok(()),
            Offer::Full => Err(Refused::Full(env)),
            Offer::Closed => Err(Refused::Closed),
        }
    }
    /// Waits until there may be room; false if `limit` passed first.
    async fn ready(&self, limit: Option<Duration>) -> bool;
    /// Discards the oldest queued event; false if it cannot.
    fn discard_oldest(&self) -> bool;
    /// Events queued now.
    fn queued(&self) -> usize;
}

struct Subscriber {
    id: String,
    filter: Filter,
    policy: Policy,
    sink: Box<dyn Sink>,
}

/// Why a subscription change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("subscriber limit of {0} reached")]
    /// The subscriber limit (the number) is reached.
    TooManySubscribers(usize),
    #[error("unknown subscriber `{0}`")]
    /// No subscriber has this id.
    UnknownSubscriber(String),
    /// A subscriber with this id is already subscribed (the legacy buses' error and message;
    /// a deliberate replace is [`Router::replace`]).
    #[error("Subscriber '{0}' already exists")]
    DuplicateSubscriber(String),
}

/// The subscriber table and delivery loop.
pub struct Router {
    // Copy-on-write: publishers clone the Arc and deliver without holding the lock.
    subscribers: RwLock<Arc<Vec<Arc<Subscriber>>>>,
    max_subscribers: std::sync::atomic::AtomicUsize,
    stats: Arc<Stats>,
    sampler: std::sync::atomic::AtomicU64,
}

impl Router {
    /// A router that accepts at most `max_subscribers`.
    pub fn new(max_subscribers: usize, stats: Arc<Stats>) -> Self {
        Self {
            subscribers: RwLock::new(Arc::new(Vec::new())),
            max_subscribers: max_subscribers.into(),
            stats,
            sampler: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Changes the subscriber limit (a facade made over an existing core sets its own).
    pub fn set_max_subscribers(&self, max: usize) {
        self.max_subscribers
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Adds a subscriber; an id already subscribed is refused, as the legacy buses did.
    pub fn subscribe(
        &self,
        id: impl Into<String>,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn Sink>,
    ) -> Result<(), RouterError> {
        self.add(id.into(), filter, policy, sink, false)
    }

    /// Adds a subscriber, replacing one with the same id (whose receiver then disconnects).
    pub fn replace(
        &self,
        id: impl Into<String>,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn Sink>,
    ) -> Result<(), RouterError> {
        self.add(id.into(), filter, policy, sink, true)
    }

    fn add(
        &self,
        id: String,
        filter: Filter,
        policy: Policy,
        sink: Box<dyn Sink>,
        replace: bool,
    ) -> Result<(), RouterError> {
        let mut guard = self.subscribers.write();
        if !replace && guard.iter().any(|s| s.id == id) {
            return Err(RouterError::DuplicateSubscriber(id));
        }
        let mut next: Vec<_> = guard.iter().filter(|s| s.id != id).cloned().collect();
        let max = self
            .max_subscribers
            .load(std::sync::atomic::Ordering::Relaxed);
        if next.len() >= max {
            return Err(RouterError::TooManySubscribers(max));
        }
        next.push(Arc::new(Subscriber {
            id,
            filter,
            policy,
            sink,
        }));
        *guard = Arc::new(next);
        Ok(())
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, id: &str) -> Result<(), RouterError> {
        let mut guard = self.subscribers.write();
        if !guard.iter().any(|s| s.id == id) {
            return Err(RouterError::UnknownSubscriber(id.to_owned()));
        }
        *guard = Arc::new(guard.iter().filter(|s| s.id != id).cloned().collect());
        Ok(())
    }

    /// Removes every subscriber (their receivers then disconnect).
    pub fn clear(&self) {
        *self.subscribers.write() = Arc::new(Vec::new());
    }

    /// Every subscriber's id and filter, in subscription order.
    pub fn filters(&self) -> Vec<(String, Filter)> {
        self.subscribers
            .read()
            .iter()
            .map(|s| (s.id.clone(), s.filter.clone()))
            .collect()
    }

    /// Subscribers now.
    pub fn len(&self) -> usize {
        self.subscribers.read().len()
    }

    /// True if nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events queued across all subscribers.
    pub fn queued(&self) -> usize {
        self.subscribers
            .read()
            .iter()
            .map(|s| s.sink.queued())
            .sum()
    }

    /// True if the subscriber exists.
    pub fn contains(&self, id: &str) -> bool {
        self.subscribers.read().iter().any(|s| s.id == id)
    }

    /// Delivers to every matching subscriber; returns how many received it.
    pub async fn route(&self, env: &Envelope) -> usize {
        self.route_where(Routed::Ref(env), |_| true, None).await
    }

    /// Delivers like [`route`](Self::route), moving the envelope into the last matching
    /// subscriber instead of copying it (for an envelope not needed afterwards).
    pub async fn route_owned(&self, env: Box<Envelope>) -> usize {
        self.route_where(Routed::Owned(env), |_| true, None).await
    }

    /// Delivers like [`route`](Self::route) and appends the ids that received it (for parity).
    pub async fn route_collect(&self, env: &Envelope, delivered_to: &mut Vec<String>) -> usize {
        self.route_where(Routed::Ref(env), |_| true, Some(delivered_to))
            .await
    }

    /// Delivers to one subscriber if its filter matches (used by replay).
    pub async fn route_to(&self, env: &Envelope, id: &str) -> usize {
        self.route_where(Routed::Ref(env), |s| s == id, None).await
    }

    /// True if some subscriber's filter matches, without delivering or allocating.
    pub fn any_matching(&self, env: &Envelope) -> bool {
        self.subscribers
            .read()
            .iter()
            .any(|s| s.filter.matches(env))
    }

    /// The subscribers whose filters match, without delivering (the shadow control path).
    pub fn matching(&self, env: &Envelope) -> Vec<String> {
        self.subscribers
            .read()
            .iter()
            .filter(|s| s.filter.matches(env))
            .map(|s| s.id.clone())
            .collect()
    }

    async fn route_where(
        &self,
        env: Routed<'_>,
        pick: impl Fn(&str) -> bool,
        mut delivered_to: Option<&mut Vec<String>>,
    ) -> usize {
        // Latency is sampled (one event in 16): reading the clock per delivery costs more
        // than the rest of a local delivery.
        let sample = self
            .sampler
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(16);
        let start = sample.then(Instant::now);
        let subscribers = self.subscribers.read().clone();
        let wants = |sub: &Subscriber, e: &Envelope| pick(&sub.id) && sub.filter.matches(e);
        // Found first, so that the last one can be given the envelope itself.
        let Some(last) = subscribers.iter().rposition(|s| wants(s, env.get())) else {
            return 0;
        };
        let mut delivered = 0;
        let mut env = Some(env);
        for (i, sub) in subscribers[..=last].iter().enumerate() {
            let this = match env.as_ref() {
                _ if i == last => env.take(),
                Some(e) if wants(sub, e.get()) => Some(Routed::Ref(e.get())),
                _ => None,
            };
            let Some(this) = this else { continue };
            if self.deliver(sub, this).await {
                delivered += 1;
                if let Some(start) = start {
                    self.stats.record_latency(start.elapsed());
                }
                if let Some(ids) = delivered_to.as_deref_mut() {
                    ids.push(sub.id.clone());
                }
            }
        }
        Stats::add(&self.stats.delivered, delivered as u64);
        delivered
    }

    async fn deliver(&self, sub: &Arc<Subscriber>, mut env: Routed<'_>) -> bool {
        let deadline = match sub.policy {
            Policy::BlockFor(d) => Some(Instant::now() + d),
            _ => None,
        };
        loop {
            let offer = match env {
                Routed::Ref(e) => sub.sink.offer(e),
                Routed::Owned(e) => match sub.sink.offer_owned(e) {
                    Ok(()) => return true,
                    Err(Refused::Full(e)) => {
                        env = Routed::Owned(e);
                        Offer::Full
                    }
                    // Handled here: the envelope is gone, so the loop must not go on.
                    Err(Refused::Closed) => {
                        self.remove_closed(sub);
                        return false;
                    }
                },
            };
            match offer {
                Offer::Sent => return true,
                Offer::Closed => {
                    self.remove_closed(sub);
                    return false;
                }
                Offer::Full => match sub.policy {
                    Policy::DropNewest => {
                        Stats::add(&self.stats.dropped_full, 1);
                        return false;
                    }
                    Policy::DropOldest => {
                        if sub.sink.discard_oldest() {
                            Stats::add(&self.stats.dropped_full, 1);
                        } else if !sub.sink.ready(Some(Duration::from_millis(1))).await {
                            // A sink that cannot discard behaves as DropNewest.
                            Stats::add(&self.stats.dropped_full, 1);
                            return false;
                        }
                    }
                    Policy::Block => {
                        sub.sink.ready(None).await;
                    }
                    Policy::BlockFor(_) => {
                        let left = deadline
                            .map(|d| d.saturating_duration_since(Instant::now()))
                            .unwrap_or_default();
                        if left.is_zero() || !sub.sink.ready(Some(left)).await {
                            Stats::add(&self.stats.dropped_timeout, 1);
                            return false;
                        }
                    }
                },
            }
        }
    }

    fn remove_closed(&self, sub: &Arc<Subscriber>) {
        Stats::add(&self.stats.dropped_disconnected, 1);
        let mut guard = self.subscribers.write();
        if guard.iter().any(|s| Arc::ptr_eq(s, sub)) {
            *guard = Arc::new(
                guard
                    .iter()
                    .filter(|s| !Arc::ptr_eq(s, sub))
                    .cloned()
                    .collect(),
            );
            Stats::add(&self.stats.subscribers_removed, 1);
            tracing::debug!(subscriber = %sub.id, "receiver dropped; subscriber removed");
        }
    }
}

/// Why [`Sink::offer_owned`] did not queue an envelope.
pub enum Refused {
    /// No room now: the envelope comes back, to offer again.
    Full(Box<Envelope>),
    /// The receiver is gone.
    Closed,
}

/// An envelope being delivered: borrowed, or owned and moved into the last subscriber.
enum Routed<'a> {
    Ref(&'a Envelope),
    Owned(Box<Envelope>),
}

impl Routed<'_> {
    fn get(&self) -> &Envelope {
        match self {
            Routed::Ref(e) => e,
            Routed::Owned(e) => e,
        }
    }
}

/// A [`QueueSink`] that also builds its item from the envelope itself, moving its fields
/// (see [`Sink::offer_owned`]).
pub(crate) struct MovingQueueSink<T>(pub(crate) QueueSink<T>, pub(crate) fn(Envelope) -> T);

#[async_trait]
impl<T: Send + 'static> Sink for MovingQueueSink<T> {
    fn offer(&self, env: &Envelope) -> Offer {
        self.0.offer(env)
    }
    fn offer_owned(&self, env: Box<Envelope>) -> Result<(), Refused> {
        use crate::queue::TrySendError;
        match self.0 .0.try_send_from(env, |env| (self.1)(*env)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(env)) => Err(Refused::Full(env)),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Closed),
        }
    }
    async fn ready(&self, limit: Option<Duration>) -> bool {
        self.0.ready(limit).await
    }
    fn discard_oldest(&self) -> bool {
        self.0.discard_oldest()
    }
    fn queued(&self) -> usize {
        self.0.queued()
    }
}

/// A sink over busbridge's own queue (the phase-4 receiver), which can discard its oldest
/// item; the function turns an envelope into what the receiver gets.
pub struct QueueSink<T>(pub crate::queue::Sender<T>, pub fn(&Envelope) -> T);

#[async_trait]
impl<T: Send + 'static> Sink for QueueSink<T> {
    fn offer(&self, env: &Envelope) -> Offer {
        use crate::queue::TrySendError;
        if self.0.is_disconnected() {
            return Offer::Closed;
        }
        match self.0.try_send((self.1)(env)) {
            Ok(()) => Offer::Sent,
            Err(TrySendError::Full(_)) => Offer::Full,
            Err(TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }
    async fn ready(&self, limit: Option<Duration>) -> bool {
        self.0.ready(limit).await
    }
    fn discard_oldest(&self) -> bool {
        self.0.discard_oldest()
    }
    fn queued(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CollectionEvent, PerformanceEvent, SourceCaps};

    fn env(i: u32) -> Envelope {
        let event = CollectionEvent::Performance(PerformanceEvent {
            metric_name: format!("m{i}"),
            value: 0.0,
            unit: "u".into(),
            pid: Some(i),
            component: "c".into(),
            timestamp: std::time::SystemTime::now(),
        });
        Envelope::new(event, format!("c{i}"), "p")
    }

    fn all() -> Filter {
        Filter {
            capabilities: SourceCaps::all(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_last_subscriber_takes_the_envelope_and_a_full_one_hands_it_back() {
        let stats = Arc::new(Stats::default());
        let router = Router::new(10, stats.clone());
        let (a_tx, a_rx) = crate::queue::channel(1);
        let (b_tx, b_rx) = crate::queue::channel(1);
        let a = QueueSink(a_tx, Clone::clone);
        let b = MovingQueueSink(QueueSink(b_tx, Clone::clone), |e| e);
        router
            .subscribe("a", all(), Policy::DropNewest, Box::new(a))
            .unwrap();
        router
            .subscribe("b", all(), Policy::DropOldest, Box::new(b))
            .unwrap();
        let first = env(1);
        assert_eq!(router.route_owned(Box::new(first.clone())).await, 2);
        // Both full: `a` drops the new event; `b`, the last, gets it back from its full
        // queue, discards its oldest and takes it whole.
        let second = env(2);
        assert_eq!(router.route_owned(Box::new(second.clone())).await, 1);
        assert_eq!(a_rx.try_recv().unwrap().event_id, first.event_id);
        let got = b_rx.try_recv().unwrap();
        assert_eq!(got.event_id, second.event_id);
        assert_eq!(got.correlation_id, "c2");
        assert!(b_rx.try_recv().is_err());
        assert_eq!(stats.snapshot().dropped_full, 2);
        // The last subscriber's receiver gone: counted and removed, the other still served.
        drop(b_rx);
        assert_eq!(router.route_owned(Box::new(env(3))).await, 1);
        assert_eq!(stats.snapshot().subscribers_removed, 1);
        assert!(!router.contains("b"));
    }
}
