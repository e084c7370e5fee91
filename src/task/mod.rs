//! Phase 5: multi-process collectors. Collectors announce what they can do, a registry in
//! every agent tracks them, and tasks are dispatched to **one of** the capable collectors
//! (chosen by a [`Strategy`]) or to **all of** them, with acceptance, retries elsewhere,
//! deadlines, cancellation, and results gathered back per task.
//!
//! The shape is the bridge's: pure state machines without I/O ([`registry`], [`dispatch`],
//! [`worker`]), driven by thin async loops ([`TaskClient`] on the requester's side,
//! [`TaskServer`] on the collector's). The messages and topics are in [`proto`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use busbridge::task::{Mode, Status, TaskClient, TaskClientOptions, TaskEvent, TaskSpec};
//! use std::time::Duration;
//!
//! let tasks = TaskClient::connect("ipc:///run/busbridge/daemoneye.sock", TaskClientOptions::default()).await?;
//! tasks.wait_for(|c| !c.is_empty(), Duration::from_secs(5)).await;
//! let mut spec = TaskSpec::new("list_processes", serde_json::json!({"name_contains": "sshd"}));
//! spec.mode = Mode::AllOf;
//! let mut handle = tasks.submit(spec).await?;
//! while let Some(event) = handle.next().await {
//!     match event {
//!         TaskEvent::Result { collector, outcome, .. } => println!("{collector}: {outcome:?}"),
//!         TaskEvent::Finished(status) => println!("{status:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Guarantees: a task id runs at most once on a collector however often it is offered
//! ([`worker::Worker`] remembers the last [`worker::REMEMBERED`] ids); a one-of task yields one
//! result, an all-of task one per collector; replies that name another collector than their
//! busrt sender are dropped and counted; every queue is bounded.

pub mod dispatch;
#[cfg(feature = "cli")]
pub mod ops;
pub mod proto;
pub mod registry;
mod server;
pub mod trigger;
pub mod worker;

pub use dispatch::{
    Attempt, DispatchError, DispatchStats, Dispatcher, Mode, Output, Status, Strategy, TaskEvent,
    TaskSpec, TasksConfig, WhenNoneCapable,
};
pub use proto::{CollectorInfo, Priority, TaskFailure};
pub use registry::{Entry, Liveness, Registry, RegistryConfig, RegistryStats};
pub use server::{Handler, TaskContext, TaskServer, TaskServerBuilder};
pub use trigger::{TriggerDispatch, TriggerStats, TRIGGER_OPERATION};

use crate::client::{AsyncClient, ClientError, ClientOptions, Message, QoS};
use parking_lot::Mutex;
use proto::{ToCollector, ToRequester};
use registry::Change;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// Messages waiting to be sent, per requester or collector.
const OUTGOING: usize = 4096;
/// Acknowledged publishes in flight at once (as the bridge's window).
const SEND_WINDOW: usize = 256;

/// Acknowledged publishes in order with up to [`SEND_WINDOW`] in flight: one acknowledgement
/// at a time would cap a requester at one round trip per task. A message the broker refuses
/// is logged; one in flight across a reconnect is resent by the client's outbox.
pub(crate) struct Pipeline {
    publisher: crate::client::Publisher,
    acks: VecDeque<crate::client::Ack>,
}

impl Pipeline {
    pub(crate) fn new(publisher: crate::client::Publisher) -> Self {
        Self {
            publisher,
            acks: VecDeque::new(),
        }
    }

    /// Hands one message to the broker (waiting for the oldest acknowledgement when the
    /// window is full). `more`: another follows at once, so this one need not be flushed.
    pub(crate) async fn send(&mut self, topic: &str, body: Vec<u8>, more: bool) {
        if self.acks.len() >= SEND_WINDOW {
            self.settle_one().await;
        }
        let busrt_topic = match crate::topic::Topic::parse(topic) {
            Ok(t) => t.to_busrt(),
            Err(e) => return tracing::warn!(topic, "task message not sent: {e}"),
        };
        match self
            .publisher
            .publish_pipelined(busrt_topic, body, QoS::Processed, more)
            .await
        {
            Ok(ack) => self.acks.push_back(ack),
            Err(e) => tracing::warn!(topic, "task message not sent: {e}"),
        }
    }

    /// Waits for the oldest acknowledgement; pending forever when none is owed (for
    /// `select!`).
    pub(crate) async fn settle_one(&mut self) {
        match self.acks.front_mut() {
            Some(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!("task message not acknowledged: {e}");
                }
                self.acks.pop_front();
            }
            None => std::future::pending().await,
        }
    }

    /// Waits for every acknowledgement owed.
    pub(crate) async fn settle(&mut self) {
        while !self.acks.is_empty() {
            self.settle_one().await;
        }
    }
}

/// Publishes what arrives on `rx`, in order, through a [`Pipeline`].
pub(crate) async fn send_in_order(
    publisher: crate::client::Publisher,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
) {
    let mut pipeline = Pipeline::new(publisher);
    loop {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some((topic, body)) => pipeline.send(&topic, body, !rx.is_empty()).await,
                None => break,
            },
            _ = pipeline.settle_one() => {}
        }
    }
    pipeline.settle().await;
}

/// Progress and partial events held per task before new ones are dropped (and counted);
/// results and the final status are never dropped (their number is fixed at dispatch).
pub const EVENT_BUFFER: usize = 1024;

/// Requester settings.
#[derive(Debug, Clone, Default)]
pub struct TaskClientOptions {
    /// The busrt connection (its name is the requester's; default `busbridge-<pid>-<n>`).
    pub client: ClientOptions,
    /// Dispatch settings.
    pub dispatch: TasksConfig,
    /// Registry settings.
    pub registry: RegistryConfig,
}

/// The requester's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskClientStats {
    /// Dispatcher counters.
    pub dispatch: DispatchStats,
    /// Registry counters.
    pub registry: RegistryStats,
    /// Replies that did not parse.
    pub malformed: u64,
    /// Progress and partial events dropped because a handle did not keep up.
    pub events_dropped: u64,
}

enum Command {
    Submit(TaskSpec, oneshot::Sender<Result<TaskHandle, DispatchError>>),
    Cancel(String),
    Stats(oneshot::Sender<TaskClientStats>),
}

#[derive(Default)]
struct Sink {
    events: Mutex<VecDeque<TaskEvent>>,
    ready: Notify,
}

/// A connection that dispatches tasks and tracks collectors.
pub struct TaskClient {
    commands: mpsc::Sender<Command>,
    collectors: watch::Receiver<Vec<Entry>>,
    driver: tokio::task::JoinHandle<()>,
    client_name: String,
}

/// One submitted task: its events as they arrive, ending with [`TaskEvent::Finished`].
pub struct TaskHandle {
    id: String,
    sink: Arc<Sink>,
    commands: mpsc::Sender<Command>,
    finished: bool,
}

impl TaskHandle {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event; `None` after [`TaskEvent::Finished`] was returned.
    pub async fn next(&mut self) -> Option<TaskEvent> {
        if self.finished {
            return None;
        }
        loop {
            let notified = self.sink.ready.notified();
            if let Some(e) = self.sink.events.lock().pop_front() {
                self.finished = matches!(e, TaskEvent::Finished(_));
                return Some(e);
            }
            notified.await;
        }
    }

    /// Waits for the end: the results in arrival order and the status.
    pub async fn results(mut self) -> (Vec<TaskEvent>, Status) {
        let mut results = Vec::new();
        while let Some(e) = self.next().await {
            match e {
                TaskEvent::Finished(status) => return (results, status),
                e @ TaskEvent::Result { .. } => results.push(e),
                _ => {}
            }
        }
        unreachable!("a task always finishes")
    }

    /// Cancels the task; its collectors are told to stop and it ends `Cancelled`.
    pub async fn cancel(&self) {
        let _ = self.commands.send(Command::Cancel(self.id.clone())).await;
    }
}

impl TaskClient {
    /// Connects to the broker at `address`, subscribes to presence and to its own results,
    /// and asks every collector to announce itself.
    pub async fn connect(address: &str, opts: TaskClientOptions) -> Result<Self, ClientError> {
        let client = AsyncClient::connect_with(address, opts.client.clone()).await?;
        Self::start(client, opts).await
    }

    /// Like [`connect`](Self::connect), but returns at once and connects in the background
    /// (only a malformed address is an error): subscriptions and the discovery request are
    /// made on connecting. Until collectors have announced themselves, nothing is capable.
    pub async fn connect_lazily(
        address: &str,
        opts: TaskClientOptions,
    ) -> Result<Self, ClientError> {
        let client = AsyncClient::connect_lazily(address, opts.client.clone())?;
        Self::start(client, opts).await
    }

    async fn start(client: AsyncClient, opts: TaskClientOptions) -> Result<Self, ClientError> {
        let name = client.name().to_owned();
        let reply_to = proto::result_topic(&name);
        client
            .subscribe(&format!("{}.#", proto::HEALTH_ROOT), QoS::Processed)
            .await?;
        client.subscribe(&reply_to, QoS::Processed).await?;
        client
            .publish(proto::DISCOVER_TOPIC, Vec::new(), QoS::Processed)
            .await?;
        let (commands, command_rx) = mpsc::channel(1024);
        let (collectors_tx, collectors) = watch::channel(Vec::new());
        let driver = Driver {
            registry: Registry::new(opts.registry),
            dispatcher: Dispatcher::new(opts.dispatch, reply_to),
            sinks: HashMap::new(),
            collectors: collectors_tx,
            commands: commands.clone(),
            malformed: 0,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let driver = tokio::spawn(driver.run(client, command_rx));
        Ok(Self {
            commands,
            collectors,
            driver,
            client_name: name,
        })
    }

    /// The busrt name results come back to.
    pub fn name(&self) -> &str {
        &self.client_name
    }

    /// Submits a task. Errors at once when nothing can run it (policy `refuse`), the queue is
    /// full, or the task is invalid.
    #[tracing::instrument(name = "task_dispatch", level = "debug", skip_all, fields(client = %self.client_name, operation = %spec.operation, mode = ?spec.mode))]
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskHandle, DispatchError> {
        let (tx, rx) = oneshot::channel();
        let closed = || DispatchError::Invalid("the task client is closed".into());
        self.commands
            .send(Command::Submit(spec, tx))
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// The registry now.
    pub fn collectors(&self) -> Vec<Entry> {
        self.collectors.borrow().clone()
    }

    /// Waits until `ready` holds for the registry, at most `limit`; returns whether it did.
    pub async fn wait_for(&self, ready: impl Fn(&[Entry]) -> bool, limit: Duration) -> bool {
        let mut rx = self.collectors.clone();
        tokio::time::timeout(limit, async {
            loop {
                if ready(&rx.borrow_and_update()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Counters.
    pub async fn stats(&self) -> TaskClientStats {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Stats(tx)).await;
        rx.await.unwrap_or_default()
    }
}

impl Drop for TaskClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A driver that ends (its client dropped, its connection closed) finishes every task still
/// open, so no handle waits forever.
impl Drop for Driver {
    fn drop(&mut self) {
        for (_, sink) in self.sinks.drain() {
            sink.events
                .lock()
                .push_back(TaskEvent::Finished(Status::Failed {
                    attempts: vec![Attempt {
                        collector: String::new(),
                        reason: "the task client was closed".into(),
                    }],
                }));
            sink.ready.notify_one();
        }
    }
}

/// One timer for a loop whose earliest deadline moves at nearly every message (each reply
/// pushes a collector's silence deadline later): it is re-armed only when the deadline comes
/// earlier, and a wake-up before anything is due is harmless (the tick finds nothing to do).
/// Re-creating a `sleep` per message cost a timer-wheel insert and removal each time; after
/// each message only the deadlines added since are looked at ([`rearm`](Self::rearm)), all of
/// them only once it fired.
pub(crate) struct LazyTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<std::time::Instant>,
    /// Fired (or new) since the last [`rearm`](Self::rearm): every deadline must be looked at.
    rescan: bool,
}

impl LazyTimer {
    pub(crate) fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed: None,
            rescan: true,
        }
    }

    /// Makes sure the timer fires by `added`, the earliest deadline added since the last
    /// call, or by `all()`, every deadline's earliest, once it has fired.
    pub(crate) fn rearm(
        &mut self,
        added: Option<std::time::Instant>,
        all: impl FnOnce() -> Option<std::time::Instant>,
    ) {
        let due = if std::mem::take(&mut self.rescan) {
            all()
        } else {
            added
        };
        self.due_by(due);
    }

    /// Makes sure the timer fires by `deadline` (none: nothing to wait for).
    pub(crate) fn due_by(&mut self, deadline: Option<std::time::Instant>) {
        if let Some(d) = deadline {
            if self.armed.is_none_or(|a| d < a) {
                self.armed = Some(d);
                self.sleep.as_mut().reset(Instant::from_std(d));
            }
        }
    }

    /// Resolves when the armed deadline is reached (never while none is armed).
    pub(crate) async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
        self.rescan = true;
    }
}

/// Keeps in `slot` the earlier of it and `deadline` (the state machines' "deadlines added").
pub(crate) fn keep_earliest(slot: &mut Option<std::time::Instant>, deadline: std::time::Instant) {
    *slot = Some(slot.map_or(deadline, |d| d.min(deadline)));
}

struct Driver {
    registry: Registry,
    dispatcher: Dispatcher,
    sinks: HashMap<String, Arc<Sink>>,
    collectors: watch::Sender<Vec<Entry>>,
    commands: mpsc::Sender<Command>,
    malformed: u64,
    dropped: Arc<AtomicU64>,
}

impl Driver {
    async fn run(mut self, mut client: AsyncClient, mut commands: mpsc::Receiver<Command>) {
        // Offers and cancels leave from this task, pipelined: acknowledgements are awaited
        // beside the replies being read, never before them.
        let mut out = Pipeline::new(client.publisher());
        let mut timer = LazyTimer::new();
        loop {
            let added = self.dispatcher.take_added_deadline();
            let dispatcher = &self.dispatcher;
            timer.rearm(added, || dispatcher.next_deadline());
            timer.due_by(self.registry.next_deadline());
            tokio::select! {
                m = client.recv() => match m {
                    Ok(m) => self.message(&m),
                    Err(_) => break,
                },
                c = commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = timer.fired() => {
                    let now = std::time::Instant::now();
                    for change in self.registry.tick(now) {
                        self.changed(&change, now);
                    }
                    self.dispatcher.tick(&self.registry, now);
                }
                _ = out.settle_one() => {}
            }
            self.flush(&mut out).await;
        }
        out.settle().await;
        let _ = client.disconnect().await;
    }

    fn message(&mut self, m: &Message) {
        let now = std::time::Instant::now();
        // busrt finds it by a search through the sender's name: once per message.
        let sender = m.primary_sender();
        if m.topic().starts_with(proto::HEALTH_ROOT) {
            match self.registry.receive(sender, m.payload(), now) {
                Ok(Some(change)) => self.changed(&change, now),
                Ok(None) => {}
                Err(e) => tracing::warn!("presence refused: {e}"),
            }
            return;
        }
        match serde_json::from_slice::<ToRequester>(m.payload()) {
            Ok(reply) => {
                if let Some(change) = self.registry.touch(sender, now) {
                    self.changed(&change, now);
                }
                if matches!(reply, ToRequester::Done { .. }) {
                    self.registry.finished(sender);
                }
                self.dispatcher.receive(sender, reply, &self.registry, now)
            }
            Err(e) => {
                self.malformed += 1;
                tracing::warn!(sender = m.sender(), "malformed task reply: {e}");
            }
        }
    }

    fn changed(&mut self, change: &Change, now: std::time::Instant) {
        tracing::debug!(?change, "registry");
        self.dispatcher
            .registry_changed(change, &self.registry, now);
        self.collectors
            .send_replace(self.registry.entries().cloned().collect());
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(spec, reply) => {
                let now = std::time::Instant::now();
                let result = self.dispatcher.submit(spec, &self.registry, now).map(|id| {
                    let sink = Arc::new(Sink::default());
                    self.sinks.insert(id.clone(), sink.clone());
                    TaskHandle {
                        id,
                        sink,
                        commands: self.commands.clone(),
                        finished: false,
                    }
                });
                // The handle exists before any event for it is handed out (below).
                let _ = reply.send(result);
            }
            Command::Cancel(id) => {
                self.dispatcher.cancel(&id);
            }
            Command::Stats(reply) => {
                let _ = reply.send(TaskClientStats {
                    dispatch: self.dispatcher.stats(),
                    registry: self.registry.stats(),
                    malformed: self.malformed,
                    events_dropped: self.dropped.load(Relaxed),
                });
            }
        }
    }

    async fn flush(&mut self, out: &mut Pipeline) {
        let outputs = self.dispatcher.take_output();
        let sends = outputs
            .iter()
            .filter(|o| matches!(o, Output::Send { .. }))
            .count();
        let mut sent = 0;
        for o in outputs {
            match o {
                Output::Send { to, message } => {
                    let body = serde_json::to_vec::<ToCollector>(&message).expect("serializable");
                    sent += 1;
                    out.send(&proto::offer_topic(&to), body, sent < sends).await;
                }
                Output::Event { task_id, event } => {
                    let finished = matches!(event, TaskEvent::Finished(_));
                    let Some(sink) = (if finished {
                        self.sinks.remove(&task_id)
                    } else {
                        self.sinks.get(&task_id).cloned()
                    }) else {
                        continue;
                    };
                    let mut events = sink.events.lock();
                    let droppable = matches!(
                        event,
                        TaskEvent::Progress { .. } | TaskEvent::Partial { .. }
                    );
                    if droppable && events.len() >= EVENT_BUFFER {
                        self.dropped.fetch_add(1, Relaxed);
                    } else {
                        events.push_back(event);
                    }
                    drop(events);
                    sink.ready.notify_one();
                }
            }
        }
    }
}
