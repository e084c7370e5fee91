//! The collector lifecycle operations: typed requests and responses, JSON on the wire.

use crate::event::SourceCaps;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `health_check` takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckRequest {}

/// How a collector is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckResponse {
    /// `healthy`, `degraded` (a recent error) or `stopping`.
    pub status: String,
    /// Seconds since the collector started.
    pub uptime_seconds: u64,
    /// Whether it is collecting.
    pub collecting: bool,
    /// Events published since start.
    pub events_published: u64,
    /// Events queued locally plus events sent and not yet confirmed back.
    pub queue_depth: u64,
    /// The last publish error, if any.
    pub last_error: Option<String>,
}

/// `start_collection` takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartCollectionRequest {}

/// `stop_collection` takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopCollectionRequest {}

/// The answer to `start_collection` and `stop_collection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectionStateResponse {
    /// Whether it is collecting now.
    pub collecting: bool,
    /// False if it was already in that state.
    pub changed: bool,
}

/// What a process collector does; `update_config` replaces it after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSettings {
    /// Time between scans (10 ms to 1 h).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Only processes whose name contains this.
    pub name_contains: Option<String>,
    /// Only processes using at least this much memory.
    pub min_memory_bytes: u64,
    /// At most this many events per scan (at least 1).
    pub max_events_per_scan: usize,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            name_contains: None,
            min_memory_bytes: 0,
            max_events_per_scan: 10_000,
        }
    }
}

impl CollectorSettings {
    /// Checks every value; the reason names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(3600) {
            return Err(format!("interval: {:?} is outside 10ms..1h", self.interval));
        }
        if self.max_events_per_scan == 0 {
            return Err("max_events_per_scan: must be at least 1".into());
        }
        if self.name_contains.as_deref() == Some("") {
            return Err("name_contains: must not be empty (omit it to match every name)".into());
        }
        Ok(())
    }
}

/// `update_config`: the new settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfigRequest {
    /// The new settings (validated before they apply).
    pub config: CollectorSettings,
}

/// The settings in force after `update_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfigResponse {
    /// The settings now in force.
    pub config: CollectorSettings,
}

/// `get_capabilities` takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetCapabilitiesRequest {}

/// What the collector really produces, from its configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// The collector's name.
    pub collector: String,
    /// The event sources it produces.
    pub capabilities: SourceCaps,
    /// The busrt topics it publishes to.
    pub topics: Vec<String>,
}

/// `shutdown`: stop publishing, flush, answer, disconnect, within the deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShutdownRequest {
    #[serde(with = "humantime_serde")]
    /// How long the collector may take to flush before it answers.
    pub deadline: Duration,
}

impl Default for ShutdownRequest {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
        }
    }
}

/// The answer to `shutdown`, sent after the flush.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShutdownResponse {
    /// Everything published was confirmed back before the deadline.
    pub flushed: bool,
    /// Events published in its lifetime.
    pub events_published: u64,
}
