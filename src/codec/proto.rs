//! The protobuf messages. Fields 1–14 (or fewer) are the legacy records', with their legacy
//! numbers and types; busbridge's additions use numbers the legacy schema never had, and the
//! envelope header sits at field 100 of every message.

use super::time::{join, split, MS, SEC};
use super::{CodecError, Envelope, ENVELOPE_VERSION};
use crate::event::*;
use prost::Message;
use std::collections::HashMap;

/// The envelope header carried at field 100 of every busbridge protobuf message.
#[derive(Clone, PartialEq, Message)]
pub struct Header {
    #[prost(uint32, tag = "1")]
    /// Envelope format version (1).
    pub version: u32,
    /// 1 process, 2 network, 3 filesystem, 4 performance, 5 trigger request.
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(string, tag = "3")]
    /// The publishing bus instance.
    pub origin: String,
    #[prost(uint64, tag = "4")]
    /// Sequence number per origin, from 1 (0: not sent by a bridge).
    pub seq: u64,
    #[prost(uint32, tag = "5")]
    /// Bridges the envelope has crossed.
    pub hops: u32,
    #[prost(string, tag = "6")]
    /// Unique id of the event.
    pub event_id: String,
    #[prost(string, tag = "7")]
    /// Correlation id given at publish.
    pub correlation_id: String,
    #[prost(string, tag = "8")]
    /// Publisher id of the facade that published it.
    pub publisher_id: String,
    #[prost(int64, tag = "9")]
    /// Bus timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    #[prost(uint32, tag = "10")]
    /// Nanoseconds within that millisecond's second (sub-millisecond precision).
    pub timestamp_nanos: u32,
    #[prost(uint32, tag = "11")]
    /// Delivery priority, 0 (low) to 10.
    pub priority: u32,
    #[prost(map = "string, string", tag = "12")]
    /// Routing metadata (for example `replay`).
    pub routing_metadata: HashMap<String, String>,
}

/// Reads only the header's version and kind, skipping everything else without allocating:
/// the record, decoded next, carries the whole header.
#[derive(Clone, PartialEq, Message)]
struct HeaderProbe {
    #[prost(message, optional, tag = "100")]
    header: Option<HeaderKind>,
}

/// The first two fields of [`Header`].
#[derive(Clone, PartialEq, Message)]
struct HeaderKind {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint32, tag = "2")]
    kind: u32,
}

/// Legacy `ProcessRecord` (fields 1–14) plus busbridge's additions.
#[derive(Clone, PartialEq, Message)]
pub struct ProcessRecord {
    #[prost(uint32, tag = "1")]
    /// Process id.
    pub pid: u32,
    #[prost(uint32, optional, tag = "2")]
    /// Parent process id.
    pub ppid: Option<u32>,
    #[prost(string, tag = "3")]
    /// Process name.
    pub name: String,
    #[prost(string, optional, tag = "4")]
    /// Path of the executable.
    pub executable_path: Option<String>,
    #[prost(string, repeated, tag = "5")]
    /// Command line, one argument per entry.
    pub command_line: Vec<String>,
    /// Unix seconds.
    #[prost(int64, optional, tag = "6")]
    pub start_time: Option<i64>,
    #[prost(double, optional, tag = "7")]
    /// CPU usage in percent.
    pub cpu_usage: Option<f64>,
    #[prost(uint64, optional, tag = "8")]
    /// Resident memory in bytes.
    pub memory_usage: Option<u64>,
    #[prost(string, optional, tag = "9")]
    /// Hash of the executable, hex.
    pub executable_hash: Option<String>,
    #[prost(string, optional, tag = "10")]
    /// Algorithm of `executable_hash` (legacy field; `sha256` when set).
    pub hash_algorithm: Option<String>,
    #[prost(string, optional, tag = "11")]
    /// Owner's user id.
    pub user_id: Option<String>,
    #[prost(bool, tag = "12")]
    /// Whether the process's details could be read.
    pub accessible: bool,
    #[prost(bool, tag = "13")]
    /// Whether the executable still exists on disk.
    pub file_exists: bool,
    /// Unix milliseconds.
    #[prost(int64, tag = "14")]
    pub collection_time: i64,
    /// Added: nanoseconds within the `start_time` second.
    #[prost(uint32, optional, tag = "15")]
    pub start_time_nanos: Option<u32>,
    /// Added: nanoseconds within the `collection_time` millisecond.
    #[prost(uint32, tag = "16")]
    pub collection_time_nanos: u32,
    /// Added: `platform_metadata` as JSON.
    #[prost(bytes = "vec", optional, tag = "17")]
    pub platform_metadata: Option<Vec<u8>>,
    #[prost(message, optional, tag = "100")]
    /// busbridge's envelope header (absent in legacy records).
    pub header: Option<Header>,
}

/// Legacy `NetworkRecord` (fields 1–9) plus busbridge's additions.
#[derive(Clone, PartialEq, Message)]
pub struct NetworkRecord {
    #[prost(string, tag = "1")]
    /// Connection identifier.
    pub connection_id: String,
    #[prost(string, tag = "2")]
    /// Local address and port.
    pub source_address: String,
    #[prost(string, tag = "3")]
    /// Remote address and port.
    pub destination_address: String,
    #[prost(string, tag = "4")]
    /// Protocol (`tcp`, `udp`).
    pub protocol: String,
    #[prost(string, tag = "5")]
    /// Connection state (`ESTABLISHED`, ...).
    pub state: String,
    #[prost(uint32, optional, tag = "6")]
    /// Owning process id.
    pub pid: Option<u32>,
    #[prost(uint64, tag = "7")]
    /// Bytes sent on the connection.
    pub bytes_sent: u64,
    #[prost(uint64, tag = "8")]
    /// Bytes received on the connection.
    pub bytes_received: u64,
    #[prost(int64, tag = "9")]
    /// Collection time, milliseconds since the Unix epoch.
    pub collection_time: i64,
    #[prost(uint32, tag = "10")]
    /// Nanoseconds within that second.
    pub collection_time_nanos: u32,
    #[prost(message, optional, tag = "100")]
    /// busbridge's envelope header (absent in legacy records).
    pub header: Option<Header>,
}

/// Legacy `FilesystemRecord` (fields 1–8) plus busbridge's additions.
#[derive(Clone, PartialEq, Message)]
pub struct FilesystemRecord {
    /// The event id.
    #[prost(string, tag = "1")]
    pub operation_id: String,
    #[prost(string, tag = "2")]
    /// Path of the file.
    pub path: String,
    #[prost(string, tag = "3")]
    /// Operation (`create`, `modify`, `delete`, ...).
    pub operation_type: String,
    #[prost(uint32, optional, tag = "4")]
    /// Process that performed it.
    pub pid: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    /// File size in bytes.
    pub file_size: Option<u64>,
    #[prost(string, optional, tag = "6")]
    /// Permissions, as text.
    pub permissions: Option<String>,
    #[prost(string, optional, tag = "7")]
    /// Hash of the file's contents, hex.
    pub file_hash: Option<String>,
    #[prost(int64, tag = "8")]
    /// Collection time, milliseconds since the Unix epoch.
    pub collection_time: i64,
    #[prost(uint32, tag = "9")]
    /// Nanoseconds within that second.
    pub collection_time_nanos: u32,
    #[prost(message, optional, tag = "100")]
    /// busbridge's envelope header (absent in legacy records).
    pub header: Option<Header>,
}

/// Legacy `PerformanceRecord` (fields 1–7) plus busbridge's additions.
#[derive(Clone, PartialEq, Message)]
pub struct PerformanceRecord {
    /// The event id.
    #[prost(string, tag = "1")]
    pub metric_id: String,
    #[prost(string, tag = "2")]
    /// Name of the metric.
    pub metric_name: String,
    #[prost(double, tag = "3")]
    /// Its value.
    pub value: f64,
    #[prost(string, tag = "4")]
    /// Its unit.
    pub unit: String,
    #[prost(uint32, optional, tag = "5")]
    /// Process measured, if any.
    pub pid: Option<u32>,
    #[prost(string, tag = "6")]
    /// Component measured.
    pub component: String,
    #[prost(int64, tag = "7")]
    /// Collection time, milliseconds since the Unix epoch.
    pub collection_time: i64,
    #[prost(uint32, tag = "8")]
    /// Nanoseconds within that second.
    pub collection_time_nanos: u32,
    #[prost(message, optional, tag = "100")]
    /// busbridge's envelope header (absent in legacy records).
    pub header: Option<Header>,
}

/// busbridge's own record for trigger requests (no legacy equivalent).
#[derive(Clone, PartialEq, Message)]
pub struct TriggerRecord {
    #[prost(string, tag = "1")]
    /// Trigger identifier.
    pub trigger_id: String,
    #[prost(string, tag = "2")]
    /// Collector that should act on it.
    pub target_collector: String,
    /// 0 binary hash, 1 memory, 2 yara, 3 network, 4 behavioral, 5 custom.
    #[prost(uint32, tag = "3")]
    pub analysis_type: u32,
    #[prost(string, tag = "4")]
    /// Name of a custom analysis (with `AnalysisType::Custom`).
    pub custom_analysis: String,
    #[prost(uint32, tag = "5")]
    /// Priority, 0 (low) to 3 (critical).
    pub priority: u32,
    #[prost(uint32, optional, tag = "6")]
    /// Process to analyse.
    pub target_pid: Option<u32>,
    #[prost(string, optional, tag = "7")]
    /// File to analyse.
    pub target_path: Option<String>,
    #[prost(string, tag = "8")]
    /// Correlation id of the trigger.
    pub correlation_id: String,
    #[prost(map = "string, string", tag = "9")]
    /// Free-form metadata.
    pub metadata: HashMap<String, String>,
    #[prost(int64, tag = "10")]
    /// Request time, milliseconds since the Unix epoch.
    pub collection_time: i64,
    #[prost(uint32, tag = "11")]
    /// Nanoseconds within that second.
    pub collection_time_nanos: u32,
    #[prost(message, optional, tag = "100")]
    /// busbridge's envelope header (absent in legacy records).
    pub header: Option<Header>,
}

const KIND_PROCESS: u32 = 1;
const KIND_NETWORK: u32 = 2;
const KIND_FILESYSTEM: u32 = 3;
const KIND_PERFORMANCE: u32 = 4;
const KIND_TRIGGER: u32 = 5;
const KIND_BATCH: u32 = 6;

/// Several encoded envelopes in one busrt frame (batching). Not a legacy record: a legacy
/// decoder cannot read it, so batching is off unless configured.
#[derive(Clone, PartialEq, Message)]
pub struct BatchRecord {
    #[prost(bytes = "vec", repeated, tag = "1")]
    /// Encoded envelopes, in order.
    pub items: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "100")]
    /// Header marking the frame as a batch.
    pub header: Option<Header>,
}

/// Wraps already-encoded protobuf envelopes into one batch frame.
pub(super) fn batch(items: Vec<Vec<u8>>) -> Vec<u8> {
    BatchRecord {
        items,
        header: Some(Header {
            version: ENVELOPE_VERSION,
            kind: KIND_BATCH,
            ..Default::default()
        }),
    }
    .encode_to_vec()
}

const NO_HEADER: CodecError = CodecError::NotAnEnvelope("protobuf message without a header");

/// The version and kind of a busbridge protobuf message, read without decoding the record.
fn probe(bytes: &[u8]) -> Result<HeaderKind, CodecError> {
    HeaderProbe::decode(bytes)?.header.ok_or(NO_HEADER)
}

/// Decodes a frame holding one envelope or a batch, reading the header once.
pub(super) fn decode_frame(bytes: &[u8]) -> Result<Vec<Envelope>, CodecError> {
    let h = probe(bytes)?;
    if h.kind != KIND_BATCH {
        return Ok(vec![decode_with(bytes, h)?]);
    }
    if h.version != ENVELOPE_VERSION {
        return Err(CodecError::UnsupportedVersion(h.version));
    }
    batch_items(bytes)?.into_iter().map(decode).collect()
}

/// The items of a batch frame as slices of it: `BatchRecord::decode` would copy each one.
fn batch_items(mut buf: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut items = Vec::new();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag != 1 || wire_type != WireType::LengthDelimited {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
            continue;
        }
        let len = usize::try_from(decode_varint(&mut buf)?).unwrap_or(usize::MAX);
        if len > buf.len() {
            return Err(prost::DecodeError::new("batch item beyond the frame").into());
        }
        let (item, rest) = buf.split_at(len);
        items.push(item);
        buf = rest;
    }
    Ok(items)
}

fn header(env: &Envelope, kind: u32) -> Result<Header, CodecError> {
    let (timestamp_ms, timestamp_nanos) = split(env.timestamp, MS, "timestamp")?;
    Ok(Header {
        version: ENVELOPE_VERSION,
        kind,
        origin: env.origin.clone(),
        seq: env.seq,
        hops: env.hops,
        event_id: env.event_id.clone(),
        correlation_id: env.correlation_id.clone(),
        publisher_id: env.publisher_id.clone(),
        timestamp_ms,
        timestamp_nanos,
        priority: u32::from(env.priority),
        routing_metadata: env.routing_metadata.clone(),
    })
}

/// Encodes an envelope as its event's protobuf record.
pub(super) fn encode(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    Ok(match &env.event {
        CollectionEvent::Process(e) => {
            let (collection_time, collection_time_nanos) =
                split(e.timestamp, MS, "process.timestamp")?;
            let start = e
                .start_time
                .map(|t| split(t, SEC, "process.start_time"))
                .transpose()?;
            let platform_metadata = e
                .platform_metadata
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()?;
            ProcessRecord {
                pid: e.pid,
                ppid: e.ppid,
                name: e.name.clone(),
                executable_path: e.executable_path.clone(),
                command_line: e.command_line.clone(),
                start_time: start.map(|s| s.0),
                cpu_usage: e.cpu_usage,
                memory_usage: e.memory_usage,
                executable_hash: e.executable_hash.clone(),
                hash_algorithm: env.extra.hash_algorithm.clone(),
                user_id: e.user_id.clone(),
                accessible: e.accessible,
                file_exists: e.file_exists,
                collection_time,
                start_time_nanos: start.map(|s| s.1),
                collection_time_nanos,
                platform_metadata,
                header: Some(header(env, KIND_PROCESS)?),
            }
            .encode_to_vec()
        }
        CollectionEvent::Network(e) => {
            let (collection_time, collection_time_nanos) =
                split(e.timestamp, MS, "network.timestamp")?;
            NetworkRecord {
                connection_id: e.connection_id.clone(),
                source_address: e.source_addr.clone(),
                destination_address: e.dest_addr.clone(),
                protocol: e.protocol.clone(),
                state: e.state.clone(),
                pid: e.pid,
                bytes_sent: e.bytes_sent,
                bytes_received: e.bytes_received,
                collection_time,
                collection_time_nanos,
                header: Some(header(env, KIND_NETWORK)?),
            }
            .encode_to_vec()
        }
        CollectionEvent::Filesystem(e) => {
            let (collection_time, collection_time_nanos) =
                split(e.timestamp, MS, "filesystem.timestamp")?;
            FilesystemRecord {
                operation_id: env.event_id.clone(),
                path: e.path.clone(),
                operation_type: e.operation.clone(),
                pid: e.pid,
                file_size: e.size,
                permissions: e.permissions.clone(),
                file_hash: e.file_hash.clone(),
                collection_time,
                collection_time_nanos,
                header: Some(header(env, KIND_FILESYSTEM)?),
            }
            .encode_to_vec()
        }
        CollectionEvent::Performance(e) => {
            let (collection_time, collection_time_nanos) =
                split(e.timestamp, MS, "performance.timestamp")?;
            PerformanceRecord {
                metric_id: env.event_id.clone(),
                metric_name: e.metric_name.clone(),
                value: e.value,
                unit: e.unit.clone(),
                pid: e.pid,
                component: e.component.clone(),
                collection_time,
                collection_time_nanos,
                header: Some(header(env, KIND_PERFORMANCE)?),
            }
            .encode_to_vec()
        }
        CollectionEvent::TriggerRequest(e) => {
            let (collection_time, collection_time_nanos) =
                split(e.timestamp, MS, "trigger.timestamp")?;
            let (analysis_type, custom_analysis) = match &e.analysis_type {
                AnalysisType::BinaryHash => (0, String::new()),
                AnalysisType::MemoryAnalysis => (1, String::new()),
                AnalysisType::YaraScan => (2, String::new()),
                AnalysisType::NetworkAnalysis => (3, String::new()),
                AnalysisType::BehavioralAnalysis => (4, String::new()),
                AnalysisType::Custom(s) => (5, s.clone()),
            };
            TriggerRecord {
                trigger_id: e.trigger_id.clone(),
                target_collector: e.target_collector.clone(),
                analysis_type,
                custom_analysis,
                priority: e.priority as u32,
                target_pid: e.target_pid,
                target_path: e.target_path.clone(),
                correlation_id: e.correlation_id.clone(),
                metadata: e.metadata.clone(),
                collection_time,
                collection_time_nanos,
                header: Some(header(env, KIND_TRIGGER)?),
            }
            .encode_to_vec()
        }
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Decodes a busbridge protobuf message: the header first, then the record it names.
pub(super) fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    decode_with(bytes, probe(bytes)?)
}

/// Decodes the record a probed header names.
fn decode_with(bytes: &[u8], h: HeaderKind) -> Result<Envelope, CodecError> {
    if h.version != ENVELOPE_VERSION {
        return Err(CodecError::UnsupportedVersion(h.version));
    }
    let header;
    let mut extra = super::EventExtra::default();
    let event = match h.kind {
        KIND_PROCESS => {
            let mut r = ProcessRecord::decode(bytes)?;
            header = r.header.take();
            extra.hash_algorithm = r.hash_algorithm.take();
            let start_time = match (r.start_time, r.start_time_nanos) {
                (Some(s), n) => Some(join(s, n.unwrap_or(0), SEC, "process.start_time")?),
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(invalid(
                        "process.start_time_nanos",
                        "set without start_time",
                    ))
                }
            };
            let platform_metadata = r
                .platform_metadata
                .as_deref()
                .map(serde_json::from_slice)
                .transpose()?;
            CollectionEvent::Process(ProcessEvent {
                pid: r.pid,
                ppid: r.ppid,
                name: r.name,
                executable_path: r.executable_path,
                command_line: r.command_line,
                start_time,
                cpu_usage: r.cpu_usage,
                memory_usage: r.memory_usage,
                executable_hash: r.executable_hash,
                user_id: r.user_id,
                accessible: r.accessible,
                file_exists: r.file_exists,
                timestamp: join(
                    r.collection_time,
                    r.collection_time_nanos,
                    MS,
                    "process.collection_time",
                )?,
                platform_metadata,
            })
        }
        KIND_NETWORK => {
            let mut r = NetworkRecord::decode(bytes)?;
            header = r.header.take();
            CollectionEvent::Network(NetworkEvent {
                connection_id: r.connection_id,
                source_addr: r.source_address,
                dest_addr: r.destination_address,
                protocol: r.protocol,
                state: r.state,
                pid: r.pid,
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
                timestamp: join(
                    r.collection_time,
                    r.collection_time_nanos,
                    MS,
                    "network.collection_time",
                )?,
            })
        }
        KIND_FILESYSTEM => {
            let mut r = FilesystemRecord::decode(bytes)?;
            header = r.header.take();
            CollectionEvent::Filesystem(FilesystemEvent {
                path: r.path,
                operation: r.operation_type,
                pid: r.pid,
                size: r.file_size,
                permissions: r.permissions,
                file_hash: r.file_hash,
                timestamp: join(
                    r.collection_time,
                    r.collection_time_nanos,
                    MS,
                    "filesystem.collection_time",
                )?,
            })
        }
        KIND_PERFORMANCE => {
            let mut r = PerformanceRecord::decode(bytes)?;
            header = r.header.take();
            CollectionEvent::Performance(PerformanceEvent {
                metric_name: r.metric_name,
                value: r.value,
                unit: r.unit,
                pid: r.pid,
                component: r.component,
                timestamp: join(
                    r.collection_time,
                    r.collection_time_nanos,
                    MS,
                    "performance.collection_time",
                )?,
            })
        }
        KIND_TRIGGER => {
            let mut r = TriggerRecord::decode(bytes)?;
            header = r.header.take();
            let analysis_type = match r.analysis_type {
                0 => AnalysisType::BinaryHash,
                1 => AnalysisType::MemoryAnalysis,
                2 => AnalysisType::YaraScan,
                3 => AnalysisType::NetworkAnalysis,
                4 => AnalysisType::BehavioralAnalysis,
                5 => AnalysisType::Custom(r.custom_analysis),
                n => {
                    return Err(invalid(
                        "trigger.analysis_type",
                        format!("unknown value {n}"),
                    ))
                }
            };
            let priority = match r.priority {
                0..=3 => TriggerPriority::from_u8(r.priority as u8),
                n => return Err(invalid("trigger.priority", format!("unknown value {n}"))),
            };
            CollectionEvent::TriggerRequest(TriggerRequest {
                trigger_id: r.trigger_id,
                target_collector: r.target_collector,
                analysis_type,
                priority,
                target_pid: r.target_pid,
                target_path: r.target_path,
                correlation_id: r.correlation_id,
                metadata: r.metadata,
                timestamp: join(
                    r.collection_time,
                    r.collection_time_nanos,
                    MS,
                    "trigger.collection_time",
                )?,
            })
        }
        KIND_BATCH => return Err(invalid("header.kind", "a batch inside a batch")),
        n => return Err(invalid("header.kind", format!("unknown event kind {n}"))),
    };
    let h = header.ok_or(NO_HEADER)?;
    let priority = u8::try_from(h.priority).map_err(|_| invalid("header.priority", "above 255"))?;
    Ok(Envelope {
        origin: h.origin,
        seq: h.seq,
        hops: h.hops,
        event_id: h.event_id,
        correlation_id: h.correlation_id,
        publisher_id: h.publisher_id,
        timestamp: join(h.timestamp_ms, h.timestamp_nanos, MS, "header.timestamp")?,
        priority,
        routing_metadata: h.routing_metadata,
        event,
        extra,
    })
}
