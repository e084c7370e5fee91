//! Phase 5 for legacy code: a `TriggerRequest` published through any facade becomes a task,
//! dispatched one-of to a collector instance of the target's type, instead of a broadcast to
//! every subscriber of `tasks.<target_collector>`.
//!
//! The agent's bus gets a [`TriggerDispatch`] (the core's [`TaskUplink`]); a collector process
//! serves the `trigger` operation with [`TaskServerBuilder::triggers`], which hands the
//! request to its own bus's subscribers, so legacy collector code receives it exactly as
//! before, on one instance. The task id is the trigger id, so a collector runs a trigger once
//! however often it is offered; the correlation id is the trigger's.

use super::{Priority, TaskClient, TaskEvent, TaskServerBuilder, TaskSpec};
use crate::bus::{Core, TaskUplink};
use crate::codec::{Codec, CodecKind, Envelope, DEFAULT_MAX_MESSAGE_SIZE};
use crate::event::{CollectionEvent, TriggerPriority};
pub use crate::stats::TriggerCounts as TriggerStats;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The operation that carries a trigger request.
pub const TRIGGER_OPERATION: &str = "trigger";

/// Counters of the triggers a bus dispatched.
#[derive(Debug, Default)]
struct Counters {
    dispatched: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

/// The agent side: dispatches the trigger requests its bus publishes at phase 5.
pub struct TriggerDispatch {
    tasks: Arc<TaskClient>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl TriggerDispatch {
    /// Dispatches through `tasks`; each trigger has `timeout` to be taken and delivered.
    pub fn new(tasks: Arc<TaskClient>, timeout: Duration) -> Self {
        Self {
            tasks,
            timeout,
            counters: Arc::default(),
        }
    }

    /// The dispatcher of the bus named `bus` on the broker at `address`: its task client is a
    /// busrt secondary of the bus's own client (`<bus>%%tasks`, so the bus's access rule
    /// covers it) and connects in the background, as a bus may start before its broker.
    pub async fn connect(
        address: &str,
        bus: &str,
        client: crate::client::ClientOptions,
        settings: crate::config::TasksConfig,
    ) -> Result<Self, crate::client::ClientError> {
        let timeout = settings.trigger_timeout;
        let opts = super::TaskClientOptions {
            client: client.name(format!("{bus}{}", super::proto::TASK_CLIENT_SUFFIX)),
            dispatch: settings,
            ..Default::default()
        };
        let tasks = TaskClient::connect_lazily(address, opts).await?;
        Ok(Self::new(Arc::new(tasks), timeout))
    }

    /// The task client (its registry and counters).
    pub fn tasks(&self) -> &Arc<TaskClient> {
        &self.tasks
    }

    /// Counters.
    pub fn stats(&self) -> TriggerStats {
        TriggerStats {
            dispatched: self.counters.dispatched.load(Relaxed),
            completed: self.counters.completed.load(Relaxed),
            failed: self.counters.failed.load(Relaxed),
        }
    }
}

fn priority(p: TriggerPriority) -> Priority {
    match p {
        TriggerPriority::Low => Priority::Low,
        TriggerPriority::Normal => Priority::Normal,
        TriggerPriority::High => Priority::High,
        TriggerPriority::Critical => Priority::Critical,
    }
}

fn codec() -> Codec {
    Codec::new(CodecKind::Json, DEFAULT_MAX_MESSAGE_SIZE)
}

#[async_trait::async_trait]
impl TaskUplink for TriggerDispatch {
    async fn dispatch_trigger(
        &self,
        env: &Envelope,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let CollectionEvent::TriggerRequest(trigger) = &env.event else {
            return Ok(());
        };
        let payload: serde_json::Value = serde_json::from_slice(&codec().encode(env)?)?;
        let spec = TaskSpec {
            id: trigger.trigger_id.clone(),
            operation: TRIGGER_OPERATION.into(),
            like: Some(trigger.target_collector.clone()),
            priority: priority(trigger.priority),
            payload,
            timeout: self.timeout,
            correlation_id: env.correlation_id.clone(),
            ..TaskSpec::default()
        };
        let handle = self.tasks.submit(spec).await?;
        self.counters.dispatched.fetch_add(1, Relaxed);
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let id = handle.id().to_owned();
            let (results, status) = handle.results().await;
            let delivered = results
                .iter()
                .any(|r| matches!(r, TaskEvent::Result { outcome: Ok(_), .. }));
            if delivered {
                counters.completed.fetch_add(1, Relaxed);
            } else {
                counters.failed.fetch_add(1, Relaxed);
                tracing::warn!(trigger = %id, ?status, "trigger request not delivered");
            }
        });
        Ok(())
    }

    fn counts(&self) -> TriggerStats {
        self.stats()
    }
}

impl TaskServerBuilder {
    /// Serves the `trigger` operation: a trigger request dispatched at phase 5 is delivered to
    /// `core`'s subscribers (the collector's legacy bus) and answered with how many received
    /// it. Also sets `core` as the bus of [`super::TaskContext::publish`].
    pub fn triggers(self, core: Arc<Core>) -> Self {
        let deliver_to = core.clone();
        self.events(core)
            .operation(TRIGGER_OPERATION, move |_ctx, payload| {
                let core = deliver_to.clone();
                async move {
                    let bytes = serde_json::to_vec(&payload)
                        .map_err(|e| super::TaskFailure::BadPayload(e.to_string()))?;
                    let env = codec()
                        .decode(&bytes)
                        .map_err(|e| super::TaskFailure::BadPayload(e.to_string()))?;
                    if !matches!(env.event, CollectionEvent::TriggerRequest(_)) {
                        return Err(super::TaskFailure::BadPayload(
                            "not a trigger request".into(),
                        ));
                    }
                    let delivered = core.deliver_remote(Box::new(env)).await;
                    Ok(serde_json::json!({ "delivered": delivered }))
                }
            })
    }
}
