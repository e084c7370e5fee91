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
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Process name.
    pub name: String,
    /// Path of the executable.
    pub executable_path: Option<String>,
    /// Command line, one argument per entry.
    pub command_line: Vec<String>,
    /// When the process started.
    pub start_time: Option<SystemTime>,
    /// CPU usage in percent.
    pub cpu_usage: Option<f64>,
    /// Resident memory in bytes.
    pub memory_usage: Option<u64>,
    /// SHA-256 of the executable, hex.
    pub executable_hash: Option<String>,
    /// Owner's user id.
    pub user_id: Option<String>,
    /// Whether the process's details could be read.
    pub accessible: bool,
    /// Whether the executable still exists on disk.
    pub file_exists: bool,
    /// When the event was collected.
    pub timestamp: SystemTime,
    /// Platform-specific details, as JSON.
    pub platform_metadata: Option<serde_json::Value>,
}

/// A network connection observation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkEvent {
    /// Connection identifier.
    pub connection_id: String,
    /// Local address and port.
    pub source_addr: String,
    /// Remote address and port.
    pub dest_addr: String,
    /// Protocol (`tcp`, `udp`).
    pub protocol: String,
    /// Connection state.
    pub state: String,
    /// Owning process id.
    pub pid: Option<u32>,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// When the event was collected.
    pub timestamp: SystemTime,
}

/// A filesystem operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilesystemEvent {
    /// Path of the file.
    pub path: String,
    /// Operation (`create`, `modify`, `delete`, ...).
    pub operation: String,
    /// Process that performed it.
    pub pid: Option<u32>,
    /// File size in bytes.
    pub size: Option<u64>,
    /// Permissions, as text.
    pub permissions: Option<String>,
    /// Hash of the contents, hex.
    pub file_hash: Option<String>,
    /// When the event was collected.
    pub timestamp: SystemTime,
}

/// A performance metric sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PerformanceEvent {
    /// Name of the metric.
    pub metric_name: String,
    /// Its value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Process measured, if any.
    pub pid: Option<u32>,
    /// Component measured.
    pub component: String,
    /// When it was measured.
    pub timestamp: SystemTime,
}

/// A request for deeper analysis, addressed to one collector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriggerRequest {
    /// Trigger identifier.
    pub trigger_id: String,
    /// Collector that should act on it.
    pub target_collector: String,
    /// What to analyse.
    pub analysis_type: AnalysisType,
    /// How urgent it is.
    pub priority: TriggerPriority,
    /// Process to analyse.
    pub target_pid: Option<u32>,
    /// File to analyse.
    pub target_path: Option<String>,
    /// Correlation id of the trigger.
    pub correlation_id: String,
    /// Free-form metadata.
    pub metadata: HashMap<String, String>,
    /// When it was requested.
    pub timestamp: SystemTime,
}

/// What a trigger request asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum AnalysisType {
    /// Hash a binary.
    BinaryHash,
    /// Analyse a process's memory.
    MemoryAnalysis,
    /// Scan with YARA rules.
    YaraScan,
    /// Analyse network activity.
    NetworkAnalysis,
    /// Analyse behaviour over time.
    BehavioralAnalysis,
    /// A named analysis of the user's own.
    Custom(String),
}

/// Urgency of a trigger request; ordered `Low < Normal < High < Critical`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TriggerPriority {
    /// Background work.
    Low = 0,
    /// The default.
    Normal = 1,
    /// Ahead of normal work.
    High = 2,
    /// At once.
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
        /// Process events.
        const PROCESS = 1;
        /// Network connection events.
        const NETWORK = 2;
        /// Filesystem events.
        const FILESYSTEM = 4;
        /// Performance metrics.
        const PERFORMANCE = 8;
        /// Real-time collection (as opposed to periodic scans).
        const REALTIME = 16;
        /// Collected at kernel level (eBPF, ETW, ...).
        const KERNEL_LEVEL = 32;
        /// Covers the whole system, not selected processes.
        const SYSTEM_WIDE = 64;
    }
}
