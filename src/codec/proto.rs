//! The protobuf messages. Fields 1–14 (or fewer) are the legacy records', with their legacy
//! numbers and types; busbridge's additions use numbers the legacy schema never had, and the
//! envelope header sits at field 100 of every message, written first: a reader finds the
//! event's kind without scanning the record (protobuf readers take fields in any order).

use super::time::{split, MS, SEC};
use super::{CodecError, Envelope, ENVELOPE_VERSION};
use crate::event::*;
use bytes::BytesMut;
use decode::decode_with;
use prost::encoding::{encoded_len_varint, key_len};
use prost::Message;
use std::collections::HashMap;

mod decode;

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

/// The first two fields of [`Header`], as [`probe`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderKind {
    version: u32,
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

/// Wraps already-encoded protobuf envelopes into one batch frame: the bytes of a
/// [`BatchRecord`], written from the items in place (no copy of each into a record first).
pub(super) fn batch<'a>(items: impl IntoIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    let header = Header {
        version: ENVELOPE_VERSION,
        kind: KIND_BATCH,
        ..Default::default()
    };
    let len: usize = items
        .clone()
        .into_iter()
        .map(|i| key_len(1) + encoded_len_varint(i.len() as u64) + i.len())
        .sum::<usize>()
        + prost::encoding::message::encoded_len(100, &header);
    let mut out = Vec::with_capacity(len);
    prost::encoding::message::encode(100, &header, &mut out);
    for item in items {
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(item.len() as u64, &mut out);
        out.extend_from_slice(item);
    }
    out
}

const NO_HEADER: CodecError = CodecError::NotAnEnvelope("protobuf message without a header");

/// The version and kind of a busbridge protobuf message, read without decoding the record.
/// busbridge writes the header first, so this reads one field; a message whose header comes
/// later (another encoder's) is scanned up to it. A second header would be merged into the
/// first by the full decode, which therefore checks that version and kind did not change.
fn probe(mut buf: &[u8]) -> Result<HeaderKind, CodecError> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if tag == 100 && wire == WireType::LengthDelimited {
            let len = usize::try_from(decode_varint(&mut buf)?).unwrap_or(usize::MAX);
            let header = buf
                .get(..len)
                .ok_or_else(|| prost::DecodeError::new("header beyond the frame"))?;
            return header_kind(header);
        }
        skip_field(wire, tag, &mut buf, DecodeContext::default())?;
    }
    Err(NO_HEADER)
}

/// Version and kind of a header, read up to where both were seen (busbridge writes them
/// first) rather than through the whole header. A later repeat of either is caught by the
/// full decode, which compares.
fn header_kind(mut buf: &[u8]) -> Result<HeaderKind, CodecError> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let (mut version, mut kind) = (None, None);
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match (tag, wire) {
            // As prost reads a uint32: the varint truncated.
            (1, WireType::Varint) => version = Some(decode_varint(&mut buf)? as u32),
            (2, WireType::Varint) => kind = Some(decode_varint(&mut buf)? as u32),
            _ => skip_field(wire, tag, &mut buf, DecodeContext::default())?,
        }
        if let (Some(version), Some(kind)) = (version, kind) {
            return Ok(HeaderKind { version, kind });
        }
    }
    Ok(HeaderKind {
        version: version.unwrap_or(0),
        kind: kind.unwrap_or(0),
    })
}

/// Decodes a frame holding one envelope or a batch, reading the header once, and hands each
/// envelope to `each` in order. A batch with one bad item hands on nothing.
pub(super) fn decode_frame_each(
    bytes: &[u8],
    mut each: impl FnMut(Box<Envelope>),
) -> Result<(), CodecError> {
    let h = probe(bytes)?;
    if h.kind != KIND_BATCH {
        each(Box::new(decode_with(bytes, h)?));
        return Ok(());
    }
    if h.version != ENVELOPE_VERSION {
        return Err(CodecError::UnsupportedVersion(h.version));
    }
    let items = batch_items(bytes)?
        .into_iter()
        .map(|item| decode(item).map(Box::new))
        .collect::<Result<Vec<_>, _>>()?;
    items.into_iter().for_each(each);
    Ok(())
}

/// What [`Codec::peek_frame`](super::Codec::peek_frame) reads of an envelope: who sent it,
/// its number and hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The envelope's origin.
    pub origin: &'a str,
    /// Its sequence number.
    pub seq: u64,
    /// Bridges it crossed.
    pub hops: u32,
}

/// Reads origin, sequence and hops of each envelope in a frame, borrowing from it and
/// decoding nothing else; `None` if the frame is not a well-formed busbridge protobuf frame
/// of this version (the full decode then says why).
pub(super) fn peek_frame(bytes: &[u8]) -> Option<Vec<Peeked<'_>>> {
    let (kind, first) = peek(bytes)?;
    if kind != KIND_BATCH {
        return Some(vec![first]);
    }
    batch_items(bytes)
        .ok()?
        .into_iter()
        .map(|item| peek(item).filter(|(k, _)| *k != KIND_BATCH).map(|(_, p)| p))
        .collect()
}

/// The kind, origin, sequence and hops in one message's header.
fn peek(mut buf: &[u8]) -> Option<(u32, Peeked<'_>)> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    // Each field's value: a varint, or a length-delimited slice.
    fn slice<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
        let (head, rest) = (buf.get(..len)?, buf.get(len..)?);
        *buf = rest;
        Some(head)
    }
    let mut header = None;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if tag == 100 && wire == WireType::LengthDelimited {
            // The last occurrence wins, as in a full decode (prost merges; busbridge writes
            // one).
            header = Some(slice(&mut buf)?);
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
        }
    }
    let mut h = header?;
    let (mut version, mut kind, mut seq, mut hops, mut origin) = (0, 0, 0, 0, "");
    while !h.is_empty() {
        let (tag, wire) = decode_key(&mut h).ok()?;
        match (tag, wire) {
            (1, WireType::Varint) => version = u32::try_from(decode_varint(&mut h).ok()?).ok()?,
            (2, WireType::Varint) => kind = u32::try_from(decode_varint(&mut h).ok()?).ok()?,
            (3, WireType::LengthDelimited) => origin = std::str::from_utf8(slice(&mut h)?).ok()?,
            (4, WireType::Varint) => seq = decode_varint(&mut h).ok()?,
            (5, WireType::Varint) => hops = u32::try_from(decode_varint(&mut h).ok()?).ok()?,
            _ => skip_field(wire, tag, &mut h, DecodeContext::default()).ok()?,
        }
    }
    (version == ENVELOPE_VERSION).then_some((kind, Peeked { origin, seq, hops }))
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

/// Where encoded fields go: only counted (a nested message's length comes before it) or
/// written. The encoder runs over the event once per pass and builds no intermediate record.
trait Out {
    /// A varint field (`uint32`, `uint64`, `int64`, `bool`).
    fn varint(&mut self, tag: u32, v: u64);
    /// A 64-bit field (`double`), its bits.
    fn fixed64(&mut self, tag: u32, v: u64);
    /// A length-delimited field (`string`, `bytes`).
    fn bytes(&mut self, tag: u32, v: &[u8]);
    /// A nested message of `len` bytes (counted once, by the caller).
    fn message(&mut self, tag: u32, len: usize, m: &impl Fields);
}

/// A message's fields, in tag order, skipping proto3 defaults as prost's derive does, so the
/// bytes equal those of the prost records above.
trait Fields {
    fn fields(&self, o: &mut impl Out);
    fn len(&self) -> usize {
        let mut n = Count(0);
        self.fields(&mut n);
        n.0
    }
}

struct Count(usize);
impl Out for Count {
    fn varint(&mut self, tag: u32, v: u64) {
        self.0 += key_len(tag) + encoded_len_varint(v);
    }
    fn fixed64(&mut self, tag: u32, _: u64) {
        self.0 += key_len(tag) + 8;
    }
    fn bytes(&mut self, tag: u32, v: &[u8]) {
        self.0 += key_len(tag) + encoded_len_varint(v.len() as u64) + v.len();
    }
    fn message(&mut self, tag: u32, len: usize, _: &impl Fields) {
        self.0 += key_len(tag) + encoded_len_varint(len as u64) + len;
    }
}

/// The write pass: into a slice the count pass sized, so no byte checks for capacity (a
/// `BufMut` reserves on every byte). A write past the end is skipped and still counted:
/// `pos` then differs from the slice's length and [`write`] refuses the frame.
struct Slice<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Slice<'_> {
    #[inline(always)]
    fn put_u8(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.pos) {
            *slot = b;
        }
        self.pos += 1;
    }

    #[inline(always)]
    fn put_slice(&mut self, v: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + v.len()) {
            dst.copy_from_slice(v);
        }
        self.pos += v.len();
    }

    /// A varint written in place (most values here take one byte).
    #[inline(always)]
    fn put_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.put_u8(v as u8 | 0x80);
            v >>= 7;
        }
        self.put_u8(v as u8);
    }

    /// A field's key: its tag and wire type (0 varint, 1 64-bit, 2 length-delimited).
    #[inline(always)]
    fn put_key(&mut self, tag: u32, wire: u32) {
        self.put_varint(u64::from(tag << 3 | wire));
    }
}

impl Out for Slice<'_> {
    fn varint(&mut self, tag: u32, v: u64) {
        self.put_key(tag, 0);
        self.put_varint(v);
    }
    fn fixed64(&mut self, tag: u32, v: u64) {
        self.put_key(tag, 1);
        self.put_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, tag: u32, v: &[u8]) {
        self.put_key(tag, 2);
        self.put_varint(v.len() as u64);
        self.put_slice(v);
    }
    fn message(&mut self, tag: u32, len: usize, m: &impl Fields) {
        self.put_key(tag, 2);
        self.put_varint(len as u64);
        m.fields(self);
    }
}

/// Typed shorthands over [`Out`], each skipping what prost's derive skips.
mod put {
    use super::{Fields, Out};
    use std::collections::HashMap;

    pub fn string(o: &mut impl Out, tag: u32, v: &str) {
        if !v.is_empty() {
            o.bytes(tag, v.as_bytes());
        }
    }
    pub fn opt_string(o: &mut impl Out, tag: u32, v: &Option<String>) {
        if let Some(v) = v {
            o.bytes(tag, v.as_bytes());
        }
    }
    /// A repeated string: every entry written, empty ones too.
    pub fn strings(o: &mut impl Out, tag: u32, v: &[String]) {
        for s in v {
            o.bytes(tag, s.as_bytes());
        }
    }
    pub fn u32(o: &mut impl Out, tag: u32, v: u32) {
        opt_u32(o, tag, (v != 0).then_some(v));
    }
    pub fn opt_u32(o: &mut impl Out, tag: u32, v: Option<u32>) {
        if let Some(v) = v {
            o.varint(tag, u64::from(v));
        }
    }
    pub fn u64(o: &mut impl Out, tag: u32, v: u64) {
        opt_u64(o, tag, (v != 0).then_some(v));
    }
    pub fn opt_u64(o: &mut impl Out, tag: u32, v: Option<u64>) {
        if let Some(v) = v {
            o.varint(tag, v);
        }
    }
    pub fn i64(o: &mut impl Out, tag: u32, v: i64) {
        opt_i64(o, tag, (v != 0).then_some(v));
    }
    /// As protobuf writes an `int64`: a negative value as its two's complement, ten bytes.
    pub fn opt_i64(o: &mut impl Out, tag: u32, v: Option<i64>) {
        if let Some(v) = v {
            o.varint(tag, v as u64);
        }
    }
    /// Not written at 0.0 or -0.0 (equal to the default, as prost compares).
    pub fn f64(o: &mut impl Out, tag: u32, v: f64) {
        opt_f64(o, tag, (v != 0.0).then_some(v));
    }
    pub fn opt_f64(o: &mut impl Out, tag: u32, v: Option<f64>) {
        if let Some(v) = v {
            o.fixed64(tag, v.to_bits());
        }
    }
    pub fn bool(o: &mut impl Out, tag: u32, v: bool) {
        if v {
            o.varint(tag, 1);
        }
    }
    pub fn opt_bytes(o: &mut impl Out, tag: u32, v: &Option<Vec<u8>>) {
        if let Some(v) = v {
            o.bytes(tag, v);
        }
    }
    /// A `map<string, string>`: one entry message per pair, in the map's order, an empty key
    /// or value left out of its entry (as prost writes a map).
    pub fn map(o: &mut impl Out, tag: u32, v: &HashMap<String, String>) {
        struct Entry<'a>(&'a str, &'a str);
        impl Fields for Entry<'_> {
            fn fields(&self, o: &mut impl Out) {
                string(o, 1, self.0);
                string(o, 2, self.1);
            }
        }
        for (k, v) in v {
            let entry = Entry(k, v);
            o.message(tag, entry.len(), &entry);
        }
    }
}

/// The envelope header of [`Header`], read from the envelope.
struct HeaderOf<'a> {
    env: &'a Envelope,
    kind: u32,
    time: (i64, u32),
}

impl Fields for HeaderOf<'_> {
    fn fields(&self, o: &mut impl Out) {
        let env = self.env;
        put::u32(o, 1, ENVELOPE_VERSION);
        put::u32(o, 2, self.kind);
        put::string(o, 3, &env.origin);
        put::u64(o, 4, env.seq);
        put::u32(o, 5, env.hops);
        put::string(o, 6, &env.event_id);
        put::string(o, 7, &env.correlation_id);
        put::string(o, 8, &env.publisher_id);
        put::i64(o, 9, self.time.0);
        put::u32(o, 10, self.time.1);
        put::u32(o, 11, u32::from(env.priority));
        put::map(o, 12, &env.routing_metadata);
    }
}

/// An envelope as its event's record: the fields of [`ProcessRecord`], [`NetworkRecord`],
/// [`FilesystemRecord`], [`PerformanceRecord`] or [`TriggerRecord`], the header first.
struct RecordOf<'a> {
    header: HeaderOf<'a>,
    /// The header's encoded length, counted once.
    header_len: usize,
    /// The event's collection time, split.
    time: (i64, u32),
    /// Process: start time split; platform metadata as JSON.
    start: Option<(i64, u32)>,
    platform: Option<Vec<u8>>,
}

impl Fields for RecordOf<'_> {
    fn fields(&self, o: &mut impl Out) {
        let env = self.header.env;
        let (time, nanos) = self.time;
        // The header first: a receiver reads its kind without scanning the record.
        o.message(100, self.header_len, &self.header);
        match &env.event {
            CollectionEvent::Process(e) => {
                put::u32(o, 1, e.pid);
                put::opt_u32(o, 2, e.ppid);
                put::string(o, 3, &e.name);
                put::opt_string(o, 4, &e.executable_path);
                put::strings(o, 5, &e.command_line);
                put::opt_i64(o, 6, self.start.map(|s| s.0));
                put::opt_f64(o, 7, e.cpu_usage);
                put::opt_u64(o, 8, e.memory_usage);
                put::opt_string(o, 9, &e.executable_hash);
                put::opt_string(o, 10, &env.extra.hash_algorithm);
                put::opt_string(o, 11, &e.user_id);
                put::bool(o, 12, e.accessible);
                put::bool(o, 13, e.file_exists);
                put::i64(o, 14, time);
                put::opt_u32(o, 15, self.start.map(|s| s.1));
                put::u32(o, 16, nanos);
                put::opt_bytes(o, 17, &self.platform);
            }
            CollectionEvent::Network(e) => {
                put::string(o, 1, &e.connection_id);
                put::string(o, 2, &e.source_addr);
                put::string(o, 3, &e.dest_addr);
                put::string(o, 4, &e.protocol);
                put::string(o, 5, &e.state);
                put::opt_u32(o, 6, e.pid);
                put::u64(o, 7, e.bytes_sent);
                put::u64(o, 8, e.bytes_received);
                put::i64(o, 9, time);
                put::u32(o, 10, nanos);
            }
            CollectionEvent::Filesystem(e) => {
                put::string(o, 1, &env.event_id);
                put::string(o, 2, &e.path);
                put::string(o, 3, &e.operation);
                put::opt_u32(o, 4, e.pid);
                put::opt_u64(o, 5, e.size);
                put::opt_string(o, 6, &e.permissions);
                put::opt_string(o, 7, &e.file_hash);
                put::i64(o, 8, time);
                put::u32(o, 9, nanos);
            }
            CollectionEvent::Performance(e) => {
                put::string(o, 1, &env.event_id);
                put::string(o, 2, &e.metric_name);
                put::f64(o, 3, e.value);
                put::string(o, 4, &e.unit);
                put::opt_u32(o, 5, e.pid);
                put::string(o, 6, &e.component);
                put::i64(o, 7, time);
                put::u32(o, 8, nanos);
            }
            CollectionEvent::TriggerRequest(e) => {
                let analysis = match &e.analysis_type {
                    AnalysisType::BinaryHash => 0,
                    AnalysisType::MemoryAnalysis => 1,
                    AnalysisType::YaraScan => 2,
                    AnalysisType::NetworkAnalysis => 3,
                    AnalysisType::BehavioralAnalysis => 4,
                    AnalysisType::Custom(_) => 5,
                };
                put::string(o, 1, &e.trigger_id);
                put::string(o, 2, &e.target_collector);
                put::u32(o, 3, analysis);
                if let AnalysisType::Custom(s) = &e.analysis_type {
                    put::string(o, 4, s);
                }
                put::u32(o, 5, e.priority as u32);
                put::opt_u32(o, 6, e.target_pid);
                put::opt_string(o, 7, &e.target_path);
                put::string(o, 8, &e.correlation_id);
                put::map(o, 9, &e.metadata);
                put::i64(o, 10, time);
                put::u32(o, 11, nanos);
            }
        }
    }
}

/// Encodes an envelope as its event's protobuf record, straight from the event: no record
/// struct is built and no string copied but into the output.
pub(super) fn encode(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    let record = record(env)?;
    let mut out = vec![0; record.len()];
    write(&record, &mut out)?;
    Ok(out)
}

/// [`encode`] at the end of `out`. On error `out` may end in a partial frame:
/// [`Codec::encode_to`](super::Codec::encode_to) cuts it off, as it does a frame too large.
pub(super) fn encode_to(env: &Envelope, out: &mut BytesMut) -> Result<(), CodecError> {
    let record = record(env)?;
    let start = out.len();
    out.resize(start + record.len(), 0);
    write(&record, &mut out[start..])
}

/// Writes `record` into `buf`, which its count sized.
fn write(record: &RecordOf<'_>, buf: &mut [u8]) -> Result<(), CodecError> {
    let mut o = Slice { buf, pos: 0 };
    record.fields(&mut o);
    if o.pos == o.buf.len() {
        Ok(())
    } else {
        // The count and the write pass run the same `fields`: only a bug gets here.
        Err(invalid("envelope", "encoded length differs from its count"))
    }
}

/// What [`encode`] writes: the event's fields that need converting, converted (a refusal
/// comes before anything is written).
fn record(env: &Envelope) -> Result<RecordOf<'_>, CodecError> {
    let (kind, at, field) = match &env.event {
        CollectionEvent::Process(e) => (KIND_PROCESS, e.timestamp, "process.timestamp"),
        CollectionEvent::Network(e) => (KIND_NETWORK, e.timestamp, "network.timestamp"),
        CollectionEvent::Filesystem(e) => (KIND_FILESYSTEM, e.timestamp, "filesystem.timestamp"),
        CollectionEvent::Performance(e) => (KIND_PERFORMANCE, e.timestamp, "performance.timestamp"),
        CollectionEvent::TriggerRequest(e) => (KIND_TRIGGER, e.timestamp, "trigger.timestamp"),
    };
    let time = split(at, MS, field)?;
    let (start, platform) = match &env.event {
        CollectionEvent::Process(e) => (
            e.start_time
                .map(|t| split(t, SEC, "process.start_time"))
                .transpose()?,
            e.platform_metadata
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()?,
        ),
        _ => (None, None),
    };
    let header = HeaderOf {
        env,
        kind,
        time: split(env.timestamp, MS, "timestamp")?,
    };
    Ok(RecordOf {
        header_len: header.len(),
        header,
        time,
        start,
        platform,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The write pass refuses a slice its count did not size (what a count and a write that
    /// disagree would give): nothing short or padded goes out as a frame.
    #[test]
    fn a_slice_of_another_length_is_refused() {
        let mut env = Envelope::new(
            CollectionEvent::Performance(PerformanceEvent {
                metric_name: "cpu".into(),
                value: 1.5,
                unit: "%".into(),
                pid: Some(7),
                component: "procmond".into(),
                timestamp: std::time::SystemTime::now(),
            }),
            "corr",
            "procmond",
        );
        env.routing_metadata.insert("k".into(), "v".into());
        let record = record(&env).expect("record");
        let len = record.len();
        for wrong in [len - 1, len + 1] {
            let err = write(&record, &mut vec![0; wrong]).expect_err("wrong length");
            assert!(matches!(
                err,
                CodecError::InvalidField {
                    field: "envelope",
                    ..
                }
            ));
        }
        let mut out = vec![0; len];
        write(&record, &mut out).expect("sized");
        assert_eq!(out, encode(&env).expect("encode"));
    }
}
