//! The task protocol's messages and topics. JSON on the wire: tasks are control traffic,
//! readable with `busbridge sub`, and the payload is the operation's own JSON.
//!
//! | topic | from → to | message |
//! |---|---|---|
//! | `health.<collector>` | collector → every registry | [`Presence`] (start, change, heartbeat, leave) |
//! | `control.collectors.discover` | registry → every collector | empty: announce now |
//! | `control.tasks.<collector>` | requester → one collector | [`ToCollector`] (offer, cancel) |
//! | `results.<requester>` | collector → requester | [`ToRequester`] (accepted, refused, progress, partial, done) |
//!
//! `<collector>` and `<requester>` are the busrt names made into one topic level
//! ([`topic_level`]). The name inside each message is what counts: a receiver checks it against
//! the busrt sender, so no collector can speak for another.

use crate::event::SourceCaps;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where collectors announce themselves and send heartbeats (`health.<level>`).
pub const HEALTH_ROOT: &str = "health";
/// Asks every collector to announce itself now.
pub const DISCOVER_TOPIC: &str = "control.collectors.discover";
/// Offers and cancellations to one collector (`control.tasks.<level>`).
pub const OFFER_ROOT: &str = "control.tasks";
/// Replies to one requester (`results.<level>`).
pub const RESULT_ROOT: &str = "results";
/// The suffix of a collector's task connection when its name is taken by its own RPC node or
/// bridged bus (`TaskServerBuilder::shares_name`): `procmond` then serves tasks as `procmond%%tasks`, a busrt secondary client of
/// `procmond`, so broker access rules and certificate identities of `procmond` cover it and
/// receivers see `procmond` as its primary name.
pub const TASK_CLIENT_SUFFIX: &str = "%%tasks";

/// A busrt client name as one topic level (characters topics may not hold become `_`).
pub fn topic_level(name: &str) -> String {
    crate::topic::sanitize_level(name)
}

/// `health.<level>` of a collector.
pub fn health_topic(collector: &str) -> String {
    format!("{HEALTH_ROOT}.{}", topic_level(collector))
}

/// `control.tasks.<level>` of a collector.
pub fn offer_topic(collector: &str) -> String {
    format!("{OFFER_ROOT}.{}", topic_level(collector))
}

/// `results.<level>` of a requester.
pub fn result_topic(requester: &str) -> String {
    format!("{RESULT_ROOT}.{}", topic_level(requester))
}

/// What a collector is and can do, as it announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorInfo {
    /// Its unique busrt name (the primary name of the client that sends this).
    pub name: String,
    /// Its type: `process`, `network`, `filesystem`, `performance` or a user's own.
    #[serde(rename = "type")]
    pub kind: String,
    /// The kinds of events it can collect.
    pub capabilities: SourceCaps,
    /// Operations it serves.
    pub operations: Vec<String>,
    /// Tasks it runs at once.
    pub capacity: u32,
    /// Tasks it is running now.
    pub load: u32,
    /// Its software version.
    pub version: String,
}

impl CollectorInfo {
    /// Whether it has every capability in `caps` and serves `operation`.
    pub fn serves(&self, caps: SourceCaps, operation: &str) -> bool {
        self.capabilities.contains(caps) && self.operations.iter().any(|o| o == operation)
    }
}

/// Why a presence message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceReason {
    /// The collector started.
    Start,
    /// Something it announced changed (load, operations, capacity).
    Change,
    /// It is alive (sent every `heartbeat_ms`).
    Heartbeat,
    /// A registry asked (`control.collectors.discover`).
    Discover,
    /// It is leaving gracefully: take it out of the registry now.
    Leave,
}

/// An announcement or heartbeat on `health.<collector>`: every one carries the whole record,
/// so a registry that starts late learns everything from the next heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Why it was sent.
    pub reason: PresenceReason,
    /// The collector.
    pub collector: CollectorInfo,
    /// Its heartbeat interval, in milliseconds: registries judge silence by it.
    pub heartbeat_ms: u64,
}

/// Priority of a task: higher is served first from a queue, and `priority_aware` keeps a
/// collector's last free slot for `high` and `critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal work.
    High,
    /// Ahead of everything.
    Critical,
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Self::Low),
            "normal" => Ok(Self::Normal),
            "high" => Ok(Self::High),
            "critical" => Ok(Self::Critical),
            _ => Err(format!(
                "unknown priority `{s}` (low, normal, high, critical)"
            )),
        }
    }
}

/// What a collector is offered: one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOffer {
    /// The task id (unique per requester; the collector runs an id once).
    pub task_id: String,
    /// Correlation id: every result and every event published for the task carries it.
    pub correlation_id: String,
    /// The operation to run.
    pub operation: String,
    /// The operation's parameters.
    pub payload: serde_json::Value,
    /// Its priority.
    pub priority: Priority,
    /// Time left until its deadline when offered, in milliseconds: the collector cancels the
    /// work once it passes.
    pub deadline_ms: u64,
    /// Topic to answer on (`results.<requester>`).
    pub reply_to: String,
    /// Which attempt this is (1 first).
    pub attempt: u32,
    /// The requester's acceptance timeout, in milliseconds: a collector whose task is still
    /// running after a quarter of it sends `accepted`; a quicker task's result is its
    /// acknowledgement. 0 (or absent): accept at once.
    #[serde(default)]
    pub accept_ms: u64,
}

/// Requester → collector, on `control.tasks.<collector>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToCollector {
    /// Run this task.
    Offer(TaskOffer),
    /// Stop working on this task (cancelled, or given to another collector).
    Cancel {
        /// The task.
        task_id: String,
    },
}

/// Why a task failed on a collector: typed, so a requester can tell a bad request from a
/// collector's trouble.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", content = "message", rename_all = "snake_case")]
pub enum TaskFailure {
    /// The collector does not serve this operation.
    #[error("unknown operation: {0}")]
    UnknownOperation(String),
    /// The payload is not what the operation takes.
    #[error("malformed payload: {0}")]
    BadPayload(String),
    /// The operation ran and failed.
    #[error("operation failed: {0}")]
    Failed(String),
    /// The deadline passed while it ran.
    #[error("deadline passed")]
    DeadlineExceeded,
    /// It was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Collector → requester, on `results.<requester>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToRequester {
    /// The collector took the task.
    Accepted {
        /// The task.
        task_id: String,
        /// The collector (checked against the sender).
        collector: String,
    },
    /// The collector cannot take it now.
    Refused {
        /// The task.
        task_id: String,
        /// The collector.
        collector: String,
        /// Why (`over capacity: 4 of 4 running`).
        reason: String,
    },
    /// How far it is.
    Progress {
        /// The task.
        task_id: String,
        /// The collector.
        collector: String,
        /// Free text.
        message: String,
    },
    /// A partial result, streamed before the final one.
    Partial {
        /// The task.
        task_id: String,
        /// The collector.
        collector: String,
        /// Numbered from 0 per task and collector, so repeats are dropped.
        seq: u64,
        /// The data.
        data: serde_json::Value,
    },
    /// The final result.
    Done {
        /// The task.
        task_id: String,
        /// The collector.
        collector: String,
        /// The task's correlation id.
        correlation_id: String,
        /// What the operation returned, or why it failed.
        outcome: Result<serde_json::Value, TaskFailure>,
    },
}

impl ToRequester {
    /// The task the message is about.
    pub fn task_id(&self) -> &str {
        match self {
            Self::Accepted { task_id, .. }
            | Self::Refused { task_id, .. }
            | Self::Progress { task_id, .. }
            | Self::Partial { task_id, .. }
            | Self::Done { task_id, .. } => task_id,
        }
    }

    /// The collector that sent it (as it claims; receivers check it against the sender).
    pub fn collector(&self) -> &str {
        match self {
            Self::Accepted { collector, .. }
            | Self::Refused { collector, .. }
            | Self::Progress { collector, .. }
            | Self::Partial { collector, .. }
            | Self::Done { collector, .. } => collector,
        }
    }
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_are_stable() {
        let m = ToRequester::Done {
            task_id: "t1".into(),
            collector: "procmond-1".into(),
            correlation_id: "c".into(),
            outcome: Err(TaskFailure::UnknownOperation("x".into())),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"done","task_id":"t1","collector":"procmond-1","correlation_id":"c","outcome":{"Err":{"code":"unknown_operation","message":"x"}}}"#
        );
        assert_eq!(serde_json::from_str::<ToRequester>(&json).unwrap(), m);
        assert_eq!(
            offer_topic("procmond%%tasks"),
            "control.tasks.procmond__tasks"
        );
    }
}
