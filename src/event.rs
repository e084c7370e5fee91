//! Domain types, exactly as the legacy `collector-core` defined them (plus `PartialEq`).
//!
//! These are shared by every facade and every path; the codecs carry every field of them
//! losslessly, timestamps to the nanosecond.
//!
//! ```
//! use busbridge::event::{CollectionEvent, PerformanceEvent, SourceCaps};
//! use std::time::SystemTime;
//!
//! let event = CollectionEvent::Performance(PerformanceEvent {
//!     metric_name: "cpu".into(),
//!     value: 12.5,
//!     unit: "percent".into(),
//!     pid: Some(42),
//!     component: "procmond".into(),
//!     timestamp: SystemTime::now(),
//! });
//! assert_eq!(event.event_type(), "performance");
//! assert_eq!(event.capability(), SourceCaps::PERFORMANCE);
//! assert_eq!(event.pid(), Some(42));
//! ```

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;

/// One event collected by a collector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CollectionEvent {
    /// A process observed by `procmond`.
    Process(ProcessEvent),
    /// A network connection.
    Network(NetworkEvent),
    /// A filesystem operation.
    Filesystem(FilesystemEvent),
    /// A performance metric.
    Performance(PerformanceEvent),
    /// A request that asks a collector for deeper analysis.
    TriggerRequest(TriggerRequest),
}

impl CollectionEvent {
    /// When the event was collected.
    pub fn timestamp(&self) -> SystemTime {
        match self {
            Self::Process(e) => e.timestamp,
            Self::Network(e) => e.timestamp,
            Self::Filesystem(e) => e.timestamp,
            Self::Performance(e) => e.timestamp,
            Self::TriggerRequest(e) => e.timestamp,
        }
    }

    /// `"process"`, `"network"`, `"filesystem"`, `"performance"` or `"trigger_request"`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Network(_) => "network",
            Self::Filesystem(_) => "filesystem",
            Self::Performance(_) => "performance",
            Self::TriggerRequest(_) => "trigger_request",
        }
    }

    /// The process the event is about (for a trigger request, its `target_pid`).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Process(e) => Some(e.pid),
            Self::Network(e) => e.pid,
            Self::Filesystem(e) => e.pid,
            Self::Performance(e) => e.pid,
            Self::TriggerRequest(e) => e.target_pid,
        }
    }

    /// The capability a subscriber needs to receive this event.
    pub fn capability(&self) -> SourceCaps {
        match self {
            Self::Process(_) => SourceCaps::PROCESS,
            Self::Network(_) => SourceCaps::NETWORK,
            Self::Filesystem(_) => SourceCaps::FILESYSTEM,
            Self::Performance(_) => SourceCaps::PERFORMANCE,
            Self::TriggerRequest(_) => SourceCaps::REALTIME,
        }
    }

    /// The trigger priority, for trigger requests only.
    pub fn trigger_priority(&self) -> Option<TriggerPriority> {
        match self {
            Self::TriggerRequest(t) => Some(t.priority),
            _ => None,
        }
    }

    /// The routing priority carried in `BusEvent::priority`: the trigger priority as a number
    /// (`Low` = 0 … `Critical` = 3), and `Normal` (1) for every other event.
    pub fn priority(&self) -> u8 {
        self.trigger_priority().unwrap_or(TriggerPriority::Normal) as u8
    }
}

/// A process observation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessEvent {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub name: String,
    pub executable_path: Option<String>,
    pub command_line: Vec<String>,
    pub start_time: Option<SystemTime>,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<u64>,
    pub executable_hash: Option<String>,
    pub user_id: Option<String>,
    pub accessible: bool,
    pub file_exists: bool,
    pub timestamp: SystemTime,
    pub platform_metadata: Option<serde_json::Value>,
}

/// A network connection observation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkEvent {
    pub connection_id: String,
    pub source_addr: String,
    pub dest_addr: String,
    pub protocol: String,
    pub state: String,
    pub pid: Option<u32>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub timestamp: SystemTime,
}

/// A filesystem operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilesystemEvent {
    pub path: String,
    pub operation: String,
    pub pid: Option<u32>,
    pub size: Option<u64>,
    pub permissions: Option<String>,
    pub file_hash: Option<String>,
    pub timestamp: SystemTime,
}

/// A performance metric sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PerformanceEvent {
    pub metric_name: String,
    pub value: f64,
    pub unit: String,
    pub pid: Option<u32>,
    pub component: String,
    pub timestamp: SystemTime,
}

/// A request for deeper analysis, addressed to one collector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriggerRequest {
    pub trigger_id: String,
    pub target_collector: String,
    pub analysis_type: AnalysisType,
    pub priority: TriggerPriority,
    pub target_pid: Option<u32>,
    pub target_path: Option<String>,
    pub correlation_id: String,
    pub metadata: HashMap<String, String>,
    pub timestamp: SystemTime,
}

/// What a trigger request asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum AnalysisType {
    BinaryHash,
    MemoryAnalysis,
    YaraScan,
    NetworkAnalysis,
    BehavioralAnalysis,
    Custom(String),
}

/// Urgency of a trigger request; ordered `Low < Normal < High < Critical`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TriggerPriority {
    Low = 0,
    Normal = 1,
    High = 2,
    Critical = 3,
}

impl TriggerPriority {
    /// The priority for a number as carried in `BusEvent::priority` (values above 3 saturate).
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Low,
            1 => Self::Normal,
            2 => Self::High,
            _ => Self::Critical,
        }
    }
}

bitflags::bitflags! {
    /// What a collector can produce, and what a subscriber wants to receive.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct SourceCaps: u32 {
        const PROCESS = 1;
        const NETWORK = 2;
        const FILESYSTEM = 4;
        const PERFORMANCE = 8;
        const REALTIME = 16;
        const KERNEL_LEVEL = 32;
        const SYSTEM_WIDE = 64;
    }
}
