//! The collector's side: serves operations with bounded concurrency, announces itself and
//! sends heartbeats, runs each task id once, cancels on request and at the deadline.

use super::proto::{
    self, CollectorInfo, Presence, PresenceReason, TaskFailure, TaskOffer, ToCollector, ToRequester,
};
use super::worker::{Decision, Worker};
use crate::bus::{BusError, Core};
use crate::client::{AsyncClient, ClientError, ClientOptions, QoS};
use crate::event::{CollectionEvent, SourceCaps};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// An operation: takes the task's context and parameters, returns its result.
pub type Handler = Arc<
    dyn Fn(
            TaskContext,
            serde_json::Value,
        ) -> BoxFuture<'static, Result<serde_json::Value, TaskFailure>>
        + Send
        + Sync,
>;

/// What an operation sees of its task.
#[derive(Clone)]
pub struct TaskContext {
    task_id: String,
    correlation_id: String,
    collector: String,
    reply_to: String,
    out: mpsc::Sender<(String, Vec<u8>)>,
    cancelled: watch::Receiver<bool>,
    partial_seq: Arc<AtomicU64>,
    core: Option<Arc<Core>>,
}

impl TaskContext {
    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The task's correlation id (carried by its results and by events published with
    /// [`publish`](Self::publish)).
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Reports progress to the requester.
    pub async fn progress(&self, message: impl Into<String>) {
        self.send(ToRequester::Progress {
            task_id: self.task_id.clone(),
            collector: self.collector.clone(),
            message: message.into(),
        })
        .await;
    }

    /// Streams a partial result to the requester (before the final one).
    pub async fn partial(&self, data: serde_json::Value) {
        self.send(ToRequester::Partial {
            task_id: self.task_id.clone(),
            collector: self.collector.clone(),
            seq: self.partial_seq.fetch_add(1, Relaxed),
            data,
        })
        .await;
    }

    /// Whether the task was cancelled (by its requester, or its deadline passed).
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when the task is cancelled: `select!` on it in long operations.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Publishes an event found while working on the task, with the task's correlation id,
    /// on the bus given to [`TaskServerBuilder::events`] (so the legacy correlation filters
    /// and `replay_events` find it). Returns how many local subscribers received it; without
    /// a bus, or when the bus refuses the event, the task fails with the reason.
    pub async fn publish(&self, event: CollectionEvent) -> Result<usize, TaskFailure> {
        let core = self.core.as_ref().ok_or_else(|| {
            TaskFailure::Failed("this collector has no event bus to publish on".into())
        })?;
        core.publish(core.envelope(event, self.correlation_id.clone()))
            .await
            .map_err(|e: BusError| TaskFailure::Failed(e.to_string()))
    }

    async fn send(&self, m: ToRequester) {
        send(&self.out, self.reply_to.clone(), &m).await;
    }
}

/// Builds a [`TaskServer`].
pub struct TaskServerBuilder {
    info: CollectorInfo,
    heartbeat: Duration,
    operations: BTreeMap<String, Handler>,
    client: ClientOptions,
    core: Option<Arc<Core>>,
    shares_name: bool,
}

impl TaskServerBuilder {
    /// What it can collect.
    pub fn capabilities(mut self, caps: SourceCaps) -> Self {
        self.info.capabilities = caps;
        self
    }

    /// Tasks at once (at least 1).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.info.capacity = capacity.max(1);
        self
    }

    /// Heartbeat interval (registries call it suspect after two missed, gone after four).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// Its version, as announced.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.info.version = version.into();
        self
    }

    /// Connection settings (the name is set from the collector's).
    pub fn client_options(mut self, opts: ClientOptions) -> Self {
        self.client = opts;
        self
    }

    /// The collector's RPC node or bridged bus already holds its name on the broker: connect
    /// as that client's busrt secondary, `<name>%%tasks` (busrt admits a secondary only while
    /// its primary is connected). Receivers still see the collector's name as the sender, and
    /// the broker's access rule and certificate identity of `<name>` cover it.
    pub fn shares_name(mut self) -> Self {
        self.shares_name = true;
        self
    }

    /// The bus on which [`TaskContext::publish`] publishes.
    pub fn events(mut self, core: Arc<Core>) -> Self {
        self.core = Some(core);
        self
    }

    /// Serves `operation` with `f`.
    pub fn operation<F, Fut>(mut self, operation: &str, f: F) -> Self
    where
        F: Fn(TaskContext, serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<serde_json::Value, TaskFailure>> + Send + 'static,
    {
        self.operations.insert(
            operation.to_owned(),
            Arc::new(move |c, p| Box::pin(f(c, p))),
        );
        self.info.operations = self.operations.keys().cloned().collect();
        self
    }

    /// Connects to `address`, announces itself and serves until shut down.
    pub async fn serve(self, address: &str) -> Result<TaskServer, ClientError> {
        let name = if self.shares_name {
            format!("{}{}", self.info.name, proto::TASK_CLIENT_SUFFIX)
        } else {
            self.info.name.clone()
        };
        let client = AsyncClient::connect_with(address, self.client.clone().name(name)).await?;
        client
            .subscribe(&proto::offer_topic(&self.info.name), QoS::Processed)
            .await?;
        client
            .subscribe(proto::DISCOVER_TOPIC, QoS::Processed)
            .await?;
        let (stop, stopped) = watch::channel(false);
        let served = Arc::new(AtomicU64::new(0));
        let run = Serve {
            state: Arc::new(Mutex::new(State {
                worker: Worker::new(&self.info.name, self.info.capacity),
                running: HashMap::new(),
            })),
            info: self.info.clone(),
            heartbeat: self.heartbeat,
            operations: self.operations,
            core: self.core,
            served: served.clone(),
        };
        let driver = tokio::spawn(run.run(client, stopped));
        Ok(TaskServer {
            info: self.info,
            stop,
            driver: Some(driver),
            served,
        })
    }
}

/// A collector serving tasks. Dropping it stops it without a goodbye; [`shutdown`]
/// announces the leave so registries take it out at once.
///
/// [`shutdown`]: TaskServer::shutdown
pub struct TaskServer {
    info: CollectorInfo,
    stop: watch::Sender<bool>,
    driver: Option<tokio::task::JoinHandle<()>>,
    served: Arc<AtomicU64>,
}

impl TaskServer {
    /// A builder for collector `name` of type `kind` (`process`, `network`, ...).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), busbridge::client::ClientError> {
    /// use busbridge::event::SourceCaps;
    /// use busbridge::task::TaskServer;
    /// let server = TaskServer::builder("procmond-1", "process")
    ///     .capabilities(SourceCaps::PROCESS)
    ///     .capacity(4)
    ///     .operation("echo", |_ctx, payload| async move { Ok(payload) })
    ///     .serve("ipc:///run/busbridge/daemoneye.sock")
    ///     .await?;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn builder(name: impl Into<String>, kind: impl Into<String>) -> TaskServerBuilder {
        TaskServerBuilder {
            info: CollectorInfo {
                name: name.into(),
                kind: kind.into(),
                capabilities: SourceCaps::empty(),
                operations: Vec::new(),
                capacity: 4,
                load: 0,
                version: env!("CARGO_PKG_VERSION").into(),
            },
            heartbeat: Duration::from_secs(1),
            operations: BTreeMap::new(),
            client: ClientOptions::default(),
            core: None,
            shares_name: false,
        }
    }

    /// What it announces.
    pub fn info(&self) -> &CollectorInfo {
        &self.info
    }

    /// Tasks it has finished (each id once).
    pub fn served(&self) -> u64 {
        self.served.load(Relaxed)
    }

    /// Announces its leave, cancels running tasks and disconnects.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
    }
}

impl Drop for TaskServer {
    fn drop(&mut self) {
        if let Some(d) = &self.driver {
            d.abort();
        }
    }
}

struct Serve {
    state: Arc<Mutex<State>>,
    info: CollectorInfo,
    heartbeat: Duration,
    operations: BTreeMap<String, Handler>,
    core: Option<Arc<Core>>,
    served: Arc<AtomicU64>,
}

/// What the serving loop and the tasks it runs share: a task that ends records its result
/// and sends it itself, one hop fewer than handing it back to the loop.
struct State {
    worker: Worker,
    /// Cancellation switches of running tasks, by (requester, task id).
    running: HashMap<(String, String), watch::Sender<bool>>,
}

impl State {
    /// Stops a running task; true if it was running.
    fn cancel(&mut self, key: &(String, String)) -> bool {
        if let Some(c) = self.running.remove(key) {
            let _ = c.send(true);
        }
        self.worker.cancel(&key.0, &key.1)
    }
}

impl Serve {
    async fn run(mut self, mut client: AsyncClient, mut stop: watch::Receiver<bool>) {
        // Everything the collector says leaves through one queue, in order: an acceptance
        // before its partial results before its final result.
        let (out, out_rx) = mpsc::channel::<(String, Vec<u8>)>(super::OUTGOING);
        let sender = tokio::spawn(super::send_in_order(client.publisher(), out_rx));
        self.announce(&out, PresenceReason::Start).await;
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut timer = super::LazyTimer::new();
        loop {
            {
                let mut st = self.state.lock();
                let added = st.worker.take_added_deadline();
                timer.rearm(added, || st.worker.next_deadline());
            }
            tokio::select! {
                m = client.recv() => match m {
                    Ok(m) if m.topic() == proto::DISCOVER_TOPIC => {
                        self.announce(&out, PresenceReason::Discover).await;
                    }
                    Ok(m) => match serde_json::from_slice::<ToCollector>(m.payload()) {
                        Ok(ToCollector::Offer(offer)) => {
                            self.offer(m.sender(), offer, &out).await;
                        }
                        Ok(ToCollector::Cancel { task_id }) => {
                            self.state.lock().cancel(&(m.sender().to_owned(), task_id));
                        }
                        Err(e) => tracing::warn!(sender = m.sender(), "malformed task message: {e}"),
                    },
                    Err(_) => break,
                },
                _ = beat.tick() => self.announce(&out, PresenceReason::Heartbeat).await,
                _ = timer.fired() => {
                    let expired: Vec<_> = {
                        let mut st = self.state.lock();
                        let keys = st.worker.expired(std::time::Instant::now());
                        keys.into_iter()
                            .filter_map(|(requester, task_id)| {
                                if let Some(c) = st.running.remove(&(requester.clone(), task_id.clone())) {
                                    let _ = c.send(true);
                                }
                                st.worker.finished(&requester, &task_id, "", Err(TaskFailure::DeadlineExceeded))
                            })
                            .collect()
                    };
                    // The requester has given up too; the result tells it why if not.
                    for (topic, m) in expired {
                        send(&out, topic, &m).await;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        for (_, c) in self.state.lock().running.drain() {
            let _ = c.send(true);
        }
        self.announce(&out, PresenceReason::Leave).await;
        drop(out);
        let _ = sender.await;
        let _ = client.disconnect().await;
    }

    async fn announce(&mut self, out: &mpsc::Sender<(String, Vec<u8>)>, reason: PresenceReason) {
        self.info.load = self.state.lock().worker.load();
        let presence = Presence {
            reason,
            collector: self.info.clone(),
            heartbeat_ms: proto::millis(self.heartbeat),
        };
        let body = serde_json::to_vec(&presence).expect("serializable");
        let _ = out.send((proto::health_topic(&self.info.name), body)).await;
    }

    async fn offer(
        &mut self,
        requester: &str,
        offer: TaskOffer,
        out: &mpsc::Sender<(String, Vec<u8>)>,
    ) {
        let name = self.info.name.clone();
        let decision = self
            .state
            .lock()
            .worker
            .offer(requester, &offer, std::time::Instant::now());
        match decision {
            Decision::Running => {
                let m = ToRequester::Accepted {
                    task_id: offer.task_id,
                    collector: name,
                };
                send(out, offer.reply_to, &m).await;
            }
            Decision::Repeat(m) => send(out, offer.reply_to, &m).await,
            Decision::Refuse(reason) => {
                let m = ToRequester::Refused {
                    task_id: offer.task_id,
                    collector: name,
                    reason,
                };
                send(out, offer.reply_to, &m).await;
            }
            Decision::Start => {
                let accepted = ToRequester::Accepted {
                    task_id: offer.task_id.clone(),
                    collector: name.clone(),
                };
                // A task that ends within a quarter of the requester's acceptance timeout is
                // acknowledged by its result; a longer one says "accepted" at that point, well
                // before the requester gives up on it. (Offers without the timeout: at once.)
                let accept_after = Duration::from_millis(offer.accept_ms / 4);
                if accept_after.is_zero() {
                    send(out, offer.reply_to.clone(), &accepted).await;
                }
                let (cancel, cancelled) = watch::channel(false);
                let key = (requester.to_owned(), offer.task_id.clone());
                self.state.lock().running.insert(key, cancel);
                let ctx = TaskContext {
                    task_id: offer.task_id.clone(),
                    correlation_id: offer.correlation_id.clone(),
                    collector: name,
                    reply_to: offer.reply_to.clone(),
                    out: out.clone(),
                    cancelled,
                    partial_seq: Arc::new(AtomicU64::new(0)),
                    core: self.core.clone(),
                };
                let handler = self.operations.get(&offer.operation).cloned();
                let state = self.state.clone();
                let served = self.served.clone();
                let requester = requester.to_owned();
                let out = out.clone();
                tokio::spawn(async move {
                    let outcome = match handler {
                        None => Err(TaskFailure::UnknownOperation(offer.operation.clone())),
                        Some(h) => {
                            use futures_util::FutureExt;
                            let cancelled = ctx.clone();
                            // A panicking operation is a failed task, not a dead collector;
                            // dropping the operation's future is what cancels it.
                            let work = std::panic::AssertUnwindSafe(h(ctx, offer.payload))
                                .catch_unwind()
                                .map(|r| {
                                    r.unwrap_or_else(|_| {
                                        Err(TaskFailure::Failed("the operation panicked".into()))
                                    })
                                });
                            let mut work = std::pin::pin!(work);
                            let early = if accept_after.is_zero() {
                                None
                            } else {
                                tokio::select! {
                                    r = &mut work => Some(r),
                                    _ = cancelled.cancelled() => Some(Err(TaskFailure::Cancelled)),
                                    _ = tokio::time::sleep(accept_after) => {
                                        send(&out, offer.reply_to.clone(), &accepted).await;
                                        None
                                    }
                                }
                            };
                            match early {
                                Some(r) => r,
                                None => tokio::select! {
                                    r = &mut work => r,
                                    _ = cancelled.cancelled() => Err(TaskFailure::Cancelled),
                                },
                            }
                        }
                    };
                    // Recorded before it is sent, so a repeated offer gets this same result; a
                    // task cancelled meanwhile was recorded as cancelled and sends nothing.
                    let finished = {
                        let mut st = state.lock();
                        st.running
                            .remove(&(requester.clone(), offer.task_id.clone()));
                        st.worker.finished(
                            &requester,
                            &offer.task_id,
                            &offer.correlation_id,
                            outcome,
                        )
                    };
                    if let Some((topic, m)) = finished {
                        served.fetch_add(1, Relaxed);
                        send(&out, topic, &m).await;
                    }
                });
            }
        }
    }
}

async fn send(out: &mpsc::Sender<(String, Vec<u8>)>, topic: String, m: &ToRequester) {
    let body = serde_json::to_vec(m).expect("serializable");
    let _ = out.send((topic, body)).await;
}
