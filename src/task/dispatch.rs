//! The dispatcher: where each task goes, what happens when a collector refuses, stays silent
//! or dies, and when a task is finished. Pure state, no I/O: it is told the time and the
//! registry, and hands out [`Output`]s (messages to send, events for the requester), so every
//! path is tested on a simulated clock (`tests/task_sim.rs`).

use super::proto::{millis, Priority, TaskFailure, TaskOffer, ToCollector, ToRequester};
use super::registry::{Change, Entry, Liveness, Registry};
pub use crate::config::{Strategy, TasksConfig, WhenNoneCapable};
use crate::event::SourceCaps;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// One collector, or every capable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One of the matching collectors, chosen by the strategy (queue-group delivery).
    #[default]
    OneOf,
    /// Every matching collector (scatter-gather); the expected count is fixed at dispatch.
    AllOf,
}

/// A task to dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSpec {
    /// Its id; generated when empty.
    pub id: String,
    /// The operation (`list_processes`).
    pub operation: String,
    /// Capabilities the collector must have.
    pub capabilities: SourceCaps,
    /// Only collectors of this type.
    pub collector_type: Option<String>,
    /// Only this collector.
    pub target: Option<String>,
    /// Only collectors of the same type as this named one (a legacy `target_collector`:
    /// `procmond` means any instance of procmond's type). A name the registry does not know
    /// is taken as a type.
    pub like: Option<String>,
    /// One of them, or all.
    pub mode: Mode,
    /// Queue order and `priority_aware` slots.
    pub priority: Priority,
    /// The operation's parameters.
    pub payload: serde_json::Value,
    /// Time from submission to the deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Correlation id of results and events; the task id when empty.
    pub correlation_id: String,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            id: String::new(),
            operation: String::new(),
            capabilities: SourceCaps::empty(),
            collector_type: None,
            target: None,
            like: None,
            mode: Mode::OneOf,
            priority: Priority::Normal,
            payload: serde_json::Value::Null,
            timeout: Duration::from_secs(5),
            correlation_id: String::new(),
        }
    }
}

impl TaskSpec {
    /// A one-of task for `operation` with `payload`.
    pub fn new(operation: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            operation: operation.into(),
            payload,
            ..Self::default()
        }
    }

    /// The alive collectors among `entries` that can run this task: capabilities,
    /// operation, type, named target, and `like` (the type of the collector of that name
    /// among `entries`, or the name itself as a type). The dispatcher's choice and the
    /// command line's wait for a capable collector both ask this.
    pub fn candidates<'a, I>(&'a self, entries: I) -> impl Iterator<Item = &'a Entry> + 'a
    where
        I: Iterator<Item = &'a Entry> + Clone + 'a,
    {
        let like = self.like.as_deref().map(|name| {
            entries
                .clone()
                .find(|e| e.info.name == name)
                .map_or(name, |e| e.info.kind.as_str())
        });
        entries.filter(move |e| {
            e.state == Liveness::Alive
                && e.info.serves(self.capabilities, &self.operation)
                && self
                    .collector_type
                    .as_ref()
                    .is_none_or(|k| *k == e.info.kind)
                && self.target.as_ref().is_none_or(|t| *t == e.info.name)
                && like.is_none_or(|k| e.info.kind == k)
        })
    }

    fn requirement(&self) -> String {
        let mut s = format!(
            "operation `{}`, capabilities {:?}",
            self.operation, self.capabilities
        );
        if let Some(t) = &self.collector_type {
            s += &format!(", type `{t}`");
        }
        if let Some(t) = &self.target {
            s += &format!(", collector `{t}`");
        }
        if let Some(t) = &self.like {
            s += &format!(", the type of `{t}`");
        }
        s
    }
}

/// A task was not accepted for dispatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// No alive collector can run it and the policy is to refuse.
    #[error("no collector can run this task (required: {required}; registry: {registry})")]
    NothingCapable {
        /// What the task requires.
        required: String,
        /// What the registry holds.
        registry: String,
    },
    /// The queue is full.
    #[error("task queue is full ({capacity} tasks waiting)")]
    QueueFull {
        /// Its capacity.
        capacity: usize,
    },
    /// A task with this id is still running.
    #[error("task `{0}` is already in flight")]
    DuplicateId(String),
    /// The task itself is wrong (empty operation, zero timeout, payload too large).
    #[error("invalid task: {0}")]
    Invalid(String),
}

/// One collector's part in a failed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The collector.
    pub collector: String,
    /// What went wrong.
    pub reason: String,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// Every expected result arrived, and none is an error.
    Complete,
    /// Some results arrived; these collectors did not answer, or answered with an error.
    Partial {
        /// Who is missing and why.
        missing: Vec<Attempt>,
    },
    /// The deadline passed before any result.
    TimedOut {
        /// Who was working on it.
        missing: Vec<Attempt>,
    },
    /// No result but errors: every attempt's reason.
    Failed {
        /// Each attempt.
        attempts: Vec<Attempt>,
    },
    /// The requester cancelled it.
    Cancelled,
}

/// What a requester sees of its task, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TaskEvent {
    /// A collector took the task.
    Accepted {
        /// The collector.
        collector: String,
    },
    /// A collector reported progress.
    Progress {
        /// The collector.
        collector: String,
        /// What it said.
        message: String,
    },
    /// A partial result.
    Partial {
        /// The collector.
        collector: String,
        /// The data.
        data: serde_json::Value,
    },
    /// A final result (one per task for one-of, one per collector for all-of).
    Result {
        /// The collector.
        collector: String,
        /// The task's correlation id.
        correlation_id: String,
        /// What it returned, or why it failed.
        outcome: Result<serde_json::Value, TaskFailure>,
    },
    /// The task is over.
    Finished(Status),
}

/// What the dispatcher asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this to the collector.
    Send {
        /// The collector's name.
        to: String,
        /// The message.
        message: ToCollector,
    },
    /// Hand this to the requester of the task.
    Event {
        /// The task.
        task_id: String,
        /// What happened.
        event: TaskEvent,
    },
}

/// Dispatcher counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DispatchStats {
    /// Tasks accepted for dispatch.
    pub submitted: u64,
    /// Offers sent.
    pub offers: u64,
    /// Offers after the first for a one-of task.
    pub retries: u64,
    /// Tasks by final status.
    pub complete: u64,
    /// Tasks that ended partial.
    pub partial: u64,
    /// Tasks that timed out.
    pub timed_out: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks refused: nothing capable.
    pub nothing_capable: u64,
    /// Tasks refused: queue full.
    pub queue_full: u64,
    /// Tasks waiting now.
    pub queued: u64,
    /// Tasks in flight now (offered or running).
    pub in_flight: u64,
    /// Repeated results dropped (a second result for a one-of task, a repeat per collector).
    pub duplicates: u64,
    /// Replies whose collector name is not the sender, or from a collector never offered
    /// the task.
    pub spoofed: u64,
    /// Replies for tasks that are already over.
    pub late: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Offered(Instant),
    Accepted,
    Answered { ok: bool, reason: String },
    Failed(String),
}

#[derive(Debug)]
struct Task {
    spec: TaskSpec,
    reply_to: String,
    deadline: Instant,
    seq: u64,
    /// One-of: the attempts so far and the one in progress (the last, unless failed).
    attempts: Vec<Attempt>,
    current: Option<(String, Target)>,
    /// All-of: each target collector.
    targets: BTreeMap<String, Target>,
    /// Partials seen per collector (next expected seq).
    partial_seq: HashMap<String, u64>,
}

/// Queue order: highest priority first, then first come.
type QueueKey = (std::cmp::Reverse<Priority>, u64, String);

fn queue_key(id: &str, task: &Task) -> QueueKey {
    (
        std::cmp::Reverse(task.spec.priority),
        task.seq,
        id.to_owned(),
    )
}

/// The dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    config: TasksConfig,
    reply_to: String,
    tasks: HashMap<String, Task>,
    queue: BTreeSet<QueueKey>,
    /// Tasks this dispatcher has on each collector now.
    assigned: HashMap<String, u32>,
    seq: u64,
    last_round_robin: Option<String>,
    /// The earliest deadline added since [`take_added_deadline`](Self::take_added_deadline).
    added_deadline: Option<Instant>,
    out: Vec<Output>,
    stats: DispatchStats,
}

impl Dispatcher {
    /// A dispatcher whose collectors answer on `reply_to` (`results.<requester>`).
    pub fn new(config: TasksConfig, reply_to: impl Into<String>) -> Self {
        Self {
            config,
            reply_to: reply_to.into(),
            tasks: HashMap::new(),
            queue: BTreeSet::new(),
            assigned: HashMap::new(),
            seq: 0,
            last_round_robin: None,
            added_deadline: None,
            out: Vec::new(),
            stats: DispatchStats::default(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &TasksConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> DispatchStats {
        let mut s = self.stats;
        s.queued = self.queue.len() as u64;
        s.in_flight = (self.tasks.len() - self.queue.len()) as u64;
        s
    }

    /// What to send and deliver, in order; empties the buffer.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Accepts a task: offers it at once, queues it, or refuses it. Returns its id.
    pub fn submit(
        &mut self,
        mut spec: TaskSpec,
        registry: &Registry,
        now: Instant,
    ) -> Result<String, DispatchError> {
        if spec.operation.is_empty() {
            return Err(DispatchError::Invalid("the operation is empty".into()));
        }
        if spec.timeout.is_zero() {
            return Err(DispatchError::Invalid("the timeout is zero".into()));
        }
        let size = serde_json::to_vec(&spec.payload).map_or(usize::MAX, |v| v.len());
        if size > self.config.max_payload {
            return Err(DispatchError::Invalid(format!(
                "payload of {size} bytes is larger than the limit of {} bytes",
                self.config.max_payload
            )));
        }
        if spec.id.is_empty() {
            spec.id = uuid::Uuid::new_v4().to_string();
        }
        if self.tasks.contains_key(&spec.id) {
            return Err(DispatchError::DuplicateId(spec.id));
        }
        if spec.correlation_id.is_empty() {
            spec.correlation_id = spec.id.clone();
        }
        let capable = self.capable(&spec, registry).count();
        if capable == 0 && self.config.when_none_capable == WhenNoneCapable::Refuse {
            self.stats.nothing_capable += 1;
            return Err(DispatchError::NothingCapable {
                required: spec.requirement(),
                registry: registry.describe(),
            });
        }
        if capable == 0 && self.queue.len() >= self.config.queue_capacity {
            self.stats.queue_full += 1;
            return Err(DispatchError::QueueFull {
                capacity: self.config.queue_capacity,
            });
        }
        let id = spec.id.clone();
        self.seq += 1;
        let task = Task {
            deadline: now + spec.timeout,
            spec,
            reply_to: self.reply_to.clone(),
            seq: self.seq,
            attempts: Vec::new(),
            current: None,
            targets: BTreeMap::new(),
            partial_seq: HashMap::new(),
        };
        self.added(task.deadline);
        self.tasks.insert(id.clone(), task);
        self.stats.submitted += 1;
        if !self.start(&id, registry, now) {
            if self.queue.len() >= self.config.queue_capacity {
                self.tasks.remove(&id);
                self.stats.submitted -= 1;
                self.stats.queue_full += 1;
                return Err(DispatchError::QueueFull {
                    capacity: self.config.queue_capacity,
                });
            }
            self.enqueue(&id);
        }
        Ok(id)
    }

    /// Cancels a task: its collectors are told to stop and it ends `Cancelled`.
    pub fn cancel(&mut self, task_id: &str) -> bool {
        if !self.tasks.contains_key(task_id) {
            return false;
        }
        self.finish(task_id, Some(Status::Cancelled));
        true
    }

    /// Takes in a reply from busrt `sender` (its primary name).
    pub fn receive(
        &mut self,
        sender: &str,
        message: ToRequester,
        registry: &Registry,
        now: Instant,
    ) {
        let id = message.task_id().to_owned();
        let collector = message.collector().to_owned();
        let Some(task) = self.tasks.get_mut(&id) else {
            self.stats.late += 1;
            return;
        };
        let offered = match task.spec.mode {
            Mode::OneOf => {
                task.current.as_ref().is_some_and(|(c, _)| *c == collector)
                    || task.attempts.iter().any(|a| a.collector == collector)
            }
            Mode::AllOf => task.targets.contains_key(&collector),
        };
        if sender != collector || !offered {
            self.stats.spoofed += 1;
            tracing::warn!(task = %id, sender, claimed = %collector, "task reply refused: not from a collector offered the task");
            return;
        }
        let current = match task.spec.mode {
            Mode::OneOf => task
                .current
                .as_mut()
                .filter(|(c, _)| *c == collector)
                .map(|(_, t)| t),
            Mode::AllOf => task.targets.get_mut(&collector),
        };
        match message {
            ToRequester::Accepted { .. } => {
                if let Some(t @ Target::Offered(_)) = current {
                    *t = Target::Accepted;
                    self.event(&id, TaskEvent::Accepted { collector });
                }
            }
            ToRequester::Refused { reason, .. } => {
                if matches!(current, Some(Target::Offered(_) | Target::Accepted)) {
                    self.fail_target(&id, &collector, format!("refused: {reason}"), registry, now);
                }
            }
            ToRequester::Progress { message, .. } => {
                if let Some(t) = current {
                    // Progress (or a partial result) is an acceptance too.
                    if matches!(t, Target::Offered(_)) {
                        *t = Target::Accepted;
                    }
                    self.event(&id, TaskEvent::Progress { collector, message });
                }
            }
            ToRequester::Partial { seq, data, .. } => {
                if let Some(t @ Target::Offered(_)) = current {
                    *t = Target::Accepted;
                }
                let task = self.tasks.get_mut(&id).expect("checked above");
                let next = task.partial_seq.entry(collector.clone()).or_default();
                let current = match task.spec.mode {
                    Mode::OneOf => task.current.as_ref().is_some_and(|(c, _)| *c == collector),
                    Mode::AllOf => task.targets.contains_key(&collector),
                };
                if current && seq >= *next {
                    *next = seq + 1;
                    self.event(&id, TaskEvent::Partial { collector, data });
                } else {
                    self.stats.duplicates += 1;
                }
            }
            ToRequester::Done {
                correlation_id,
                outcome,
                ..
            } => self.done(&id, collector, correlation_id, outcome),
        }
        self.pump(registry, now);
    }

    /// Reacts to a registry change: a gone collector's tasks go elsewhere; a new or changed
    /// one may take queued tasks.
    pub fn registry_changed(&mut self, change: &Change, registry: &Registry, now: Instant) {
        if let Change::Gone(name) = change {
            let affected: Vec<String> = self
                .tasks
                .iter()
                .filter(|(_, t)| {
                    t.current.as_ref().is_some_and(|(c, _)| c == name)
                        || matches!(
                            t.targets.get(name),
                            Some(Target::Offered(_) | Target::Accepted)
                        )
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in affected {
                self.fail_target(
                    &id,
                    name,
                    format!("collector `{name}` is gone"),
                    registry,
                    now,
                );
            }
        }
        self.pump(registry, now);
    }

    /// Deadlines and acceptance timeouts up to `now`.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.finish(&id, None);
        }
        let accept_timeout = self.config.accept_timeout;
        let silent: Vec<(String, String)> = self
            .tasks
            .iter()
            .flat_map(|(id, t)| {
                t.current
                    .iter()
                    .map(|(c, s)| (c, s))
                    .chain(t.targets.iter())
                    .filter(
                        |(_, s)| matches!(s, Target::Offered(at) if *at + accept_timeout <= now),
                    )
                    .map(|(c, _)| (id.clone(), c.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, collector) in silent {
            let reason = format!(
                "no acceptance within {}",
                humantime::format_duration(accept_timeout)
            );
            self.fail_target(&id, &collector, reason, registry, now);
        }
        self.pump(registry, now);
    }

    fn added(&mut self, deadline: Instant) {
        super::keep_earliest(&mut self.added_deadline, deadline);
    }

    /// The earliest deadline added (a task submitted, an offer made) since the last call: a
    /// driver that keeps its timer armed by [`next_deadline`](Self::next_deadline) only
    /// needs this after each message, not a scan of every task. (Deadlines that go away only
    /// make the timer fire early, which [`tick`](Self::tick) takes as nothing to do.)
    pub fn take_added_deadline(&mut self) -> Option<Instant> {
        self.added_deadline.take()
    }

    /// When [`tick`](Self::tick) has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let accept = self.config.accept_timeout;
        self.tasks
            .values()
            .flat_map(|t| {
                let offers = t
                    .current
                    .iter()
                    .map(|(_, s)| s)
                    .chain(t.targets.values())
                    .filter_map(move |s| match s {
                        Target::Offered(at) => Some(*at + accept),
                        _ => None,
                    });
                std::iter::once(t.deadline).chain(offers)
            })
            .min()
    }

    /// Tasks in flight or queued.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is in flight or queued.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn capable<'a>(
        &'a self,
        spec: &'a TaskSpec,
        registry: &'a Registry,
    ) -> impl Iterator<Item = &'a super::registry::Entry> + 'a {
        spec.candidates(registry.entries())
    }

    fn load(&self, entry: &super::registry::Entry) -> u32 {
        entry
            .info
            .load
            .max(self.assigned.get(&entry.info.name).copied().unwrap_or(0))
    }

    /// Offers a task that is not running; false when it must wait (nothing capable or no
    /// room).
    fn start(&mut self, id: &str, registry: &Registry, now: Instant) -> bool {
        let task = &self.tasks[id];
        match task.spec.mode {
            Mode::AllOf => {
                let targets: Vec<String> = self
                    .capable(&task.spec, registry)
                    .map(|e| e.info.name.clone())
                    .collect();
                if targets.is_empty() {
                    return false;
                }
                for c in targets {
                    self.offer(id, &c, now);
                }
                true
            }
            Mode::OneOf => {
                let tried: BTreeSet<&str> =
                    task.attempts.iter().map(|a| a.collector.as_str()).collect();
                let reserve = self.config.strategy == Strategy::PriorityAware
                    && task.spec.priority < Priority::High;
                let mut room: Vec<(&super::registry::Entry, u32)> = self
                    .capable(&task.spec, registry)
                    .filter(|e| !tried.contains(e.info.name.as_str()))
                    .map(|e| (e, self.load(e)))
                    .filter(|(e, load)| {
                        let keep = u32::from(reserve && e.info.capacity > 1);
                        load + keep < e.info.capacity
                    })
                    .collect();
                if room.is_empty() {
                    return false;
                }
                if self.config.strategy != Strategy::RoundRobin {
                    // Lowest load for capacity; the ties rotate like round robin, so equal
                    // collectors share.
                    let key = |(e, load): &(&super::registry::Entry, u32)| {
                        u64::from(*load) * 1_000_000 / u64::from(e.info.capacity.max(1))
                    };
                    let best = room.iter().map(key).min().unwrap_or_default();
                    room.retain(|r| key(r) == best);
                }
                // Each in turn by name: the first after the last one chosen.
                room.sort_by(|a, b| a.0.info.name.cmp(&b.0.info.name));
                let after = self.last_round_robin.as_deref().unwrap_or("");
                let chosen = room
                    .iter()
                    .find(|(e, _)| e.info.name.as_str() > after)
                    .unwrap_or(&room[0])
                    .0
                    .info
                    .name
                    .clone();
                self.last_round_robin = Some(chosen.clone());
                if !self.tasks[id].attempts.is_empty() {
                    self.stats.retries += 1;
                }
                self.offer(id, &chosen, now);
                true
            }
        }
    }

    fn offer(&mut self, id: &str, collector: &str, now: Instant) {
        self.added(now + self.config.accept_timeout);
        let task = self.tasks.get_mut(id).expect("task exists");
        let attempt = task.attempts.len() as u32 + 1;
        match task.spec.mode {
            Mode::OneOf => task.current = Some((collector.to_owned(), Target::Offered(now))),
            Mode::AllOf => {
                task.targets
                    .insert(collector.to_owned(), Target::Offered(now));
            }
        }
        let offer = TaskOffer {
            task_id: id.to_owned(),
            correlation_id: task.spec.correlation_id.clone(),
            operation: task.spec.operation.clone(),
            payload: task.spec.payload.clone(),
            priority: task.spec.priority,
            deadline_ms: millis(task.deadline.saturating_duration_since(now)),
            reply_to: task.reply_to.clone(),
            attempt,
            accept_ms: millis(self.config.accept_timeout),
        };
        *self.assigned.entry(collector.to_owned()).or_default() += 1;
        self.stats.offers += 1;
        self.out.push(Output::Send {
            to: collector.to_owned(),
            message: ToCollector::Offer(offer),
        });
    }

    fn release(&mut self, collector: &str) {
        if let Some(n) = self.assigned.get_mut(collector) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.assigned.remove(collector);
            }
        }
    }

    fn cancel_on(&mut self, id: &str, collector: &str) {
        self.release(collector);
        self.out.push(Output::Send {
            to: collector.to_owned(),
            message: ToCollector::Cancel {
                task_id: id.to_owned(),
            },
        });
    }

    /// A collector's part in a task failed before a result: a one-of task moves on, an
    /// all-of task notes it.
    fn fail_target(
        &mut self,
        id: &str,
        collector: &str,
        reason: String,
        registry: &Registry,
        now: Instant,
    ) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        match task.spec.mode {
            Mode::OneOf => {
                if task.current.as_ref().is_none_or(|(c, _)| c != collector) {
                    return;
                }
                task.current = None;
                task.attempts.push(Attempt {
                    collector: collector.to_owned(),
                    reason,
                });
                let exhausted = task.attempts.len() as u32 >= self.config.max_attempts;
                self.cancel_on(id, collector);
                if exhausted {
                    self.finish(id, None);
                } else if !self.start(id, registry, now) {
                    let any_capable = self
                        .capable(&self.tasks[id].spec, registry)
                        .next()
                        .is_some();
                    if self.config.when_none_capable == WhenNoneCapable::Queue || any_capable {
                        self.enqueue(id);
                    } else {
                        self.finish(id, None);
                    }
                }
            }
            Mode::AllOf => {
                if let Some(t) = task.targets.get_mut(collector) {
                    if matches!(t, Target::Offered(_) | Target::Accepted) {
                        *t = Target::Failed(reason);
                        self.cancel_on(id, collector);
                        self.finish_if_answered(id);
                    }
                }
            }
        }
    }

    fn done(
        &mut self,
        id: &str,
        collector: String,
        correlation_id: String,
        outcome: Result<serde_json::Value, TaskFailure>,
    ) {
        let task = self.tasks.get_mut(id).expect("checked by the caller");
        let ok = outcome.is_ok();
        let reason = outcome
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        match task.spec.mode {
            Mode::OneOf => {
                let current = task.current.take();
                let was_current = current.as_ref().is_some_and(|(c, _)| *c == collector);
                if !was_current {
                    // A result from an earlier attempt that was given up on: still the
                    // answer (the task ran once), and the current attempt is cancelled.
                    if let Some((c, _)) = current {
                        self.cancel_on(id, &c);
                    }
                } else {
                    self.release(&collector);
                }
                let task = self.tasks.get_mut(id).expect("still there");
                task.current = Some((
                    collector.clone(),
                    Target::Answered {
                        ok,
                        reason: reason.clone(),
                    },
                ));
                self.event(
                    id,
                    TaskEvent::Result {
                        collector: collector.clone(),
                        correlation_id,
                        outcome,
                    },
                );
                let status = if ok {
                    Status::Complete
                } else {
                    let mut attempts = self.tasks[id].attempts.clone();
                    attempts.push(Attempt { collector, reason });
                    Status::Failed { attempts }
                };
                self.finish(id, Some(status));
            }
            Mode::AllOf => {
                let Some(t) = task.targets.get_mut(&collector) else {
                    return;
                };
                if matches!(t, Target::Answered { .. }) {
                    self.stats.duplicates += 1;
                    return;
                }
                let held = matches!(t, Target::Offered(_) | Target::Accepted);
                *t = Target::Answered { ok, reason };
                if held {
                    self.release(&collector);
                }
                self.event(
                    id,
                    TaskEvent::Result {
                        collector,
                        correlation_id,
                        outcome,
                    },
                );
                self.finish_if_answered(id);
            }
        }
    }

    fn finish_if_answered(&mut self, id: &str) {
        let task = &self.tasks[id];
        if task
            .targets
            .values()
            .all(|t| matches!(t, Target::Answered { .. } | Target::Failed(_)))
        {
            self.finish(id, None);
        }
    }

    /// Ends a task. `None`: the status follows from what arrived (deadline, exhaustion, the
    /// last scatter target).
    fn finish(&mut self, id: &str, status: Option<Status>) {
        let Some(task) = self.tasks.remove(id) else {
            return;
        };
        self.queue.remove(&queue_key(id, &task));
        // Whoever still works on it is told to stop.
        let holders: Vec<String> = task
            .current
            .iter()
            .map(|(c, s)| (c, s))
            .chain(task.targets.iter())
            .filter(|(_, s)| matches!(s, Target::Offered(_) | Target::Accepted))
            .map(|(c, _)| c.clone())
            .collect();
        for c in &holders {
            self.cancel_on(id, c);
        }
        let status = status.unwrap_or_else(|| match task.spec.mode {
            Mode::OneOf => match &task.current {
                Some((c, _)) => Status::TimedOut {
                    missing: vec![Attempt {
                        collector: c.clone(),
                        reason: "no result before the deadline".into(),
                    }],
                },
                None if task.attempts.is_empty() => Status::TimedOut { missing: vec![] },
                None => Status::Failed {
                    attempts: task.attempts.clone(),
                },
            },
            Mode::AllOf => {
                let mut missing = Vec::new();
                let mut answered = 0;
                for (c, t) in &task.targets {
                    let reason = match t {
                        Target::Answered { ok: true, .. } => {
                            answered += 1;
                            continue;
                        }
                        Target::Answered { ok: false, reason } | Target::Failed(reason) => {
                            reason.clone()
                        }
                        Target::Offered(_) | Target::Accepted => {
                            "no result before the deadline".into()
                        }
                    };
                    missing.push(Attempt {
                        collector: c.clone(),
                        reason,
                    });
                }
                let pending = task
                    .targets
                    .values()
                    .any(|t| matches!(t, Target::Offered(_) | Target::Accepted));
                if missing.is_empty() {
                    Status::Complete
                } else if answered > 0 {
                    Status::Partial { missing }
                } else if !pending && !task.targets.is_empty() {
                    Status::Failed { attempts: missing }
                } else {
                    Status::TimedOut { missing }
                }
            }
        });
        match &status {
            Status::Complete => self.stats.complete += 1,
            Status::Partial { .. } => self.stats.partial += 1,
            Status::TimedOut { .. } => self.stats.timed_out += 1,
            Status::Failed { .. } => self.stats.failed += 1,
            Status::Cancelled => self.stats.cancelled += 1,
        }
        self.out.push(Output::Event {
            task_id: id.to_owned(),
            event: TaskEvent::Finished(status),
        });
    }

    fn enqueue(&mut self, id: &str) {
        let key = queue_key(id, &self.tasks[id]);
        self.queue.insert(key);
    }

    /// Offers queued tasks, highest priority first, where a capable collector has room.
    fn pump(&mut self, registry: &Registry, now: Instant) {
        let waiting: Vec<QueueKey> = self.queue.iter().cloned().collect();
        for key in waiting {
            if self.start(&key.2, registry, now) {
                self.queue.remove(&key);
            }
        }
    }

    fn event(&mut self, id: &str, event: TaskEvent) {
        self.out.push(Output::Event {
            task_id: id.to_owned(),
            event,
        });
    }
}
