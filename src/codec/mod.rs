//! The envelope and its two encodings, protobuf (legacy-compatible) and JSON.
//!
//! Every event busbridge puts on a busrt topic is an [`Envelope`]: the event plus what the bus
//! needs to route it (origin id, per-origin sequence, hop count, ids, bus timestamp, priority,
//! routing metadata). [`Codec::decode`] detects the encoding from the first byte: JSON starts
//! with `{`, which no busbridge protobuf message ever does (the protobuf tag `0x7B` would be
//! field 15 as a group, a wire type busbridge never writes).
//!
//! The protobuf messages keep the legacy field numbers (`ProcessRecord`, `NetworkRecord`,
//! `FilesystemRecord`, `PerformanceRecord`), so a consumer that knows only the legacy schema
//! still decodes them; what the legacy records lose (sub-millisecond time, platform metadata,
//! trigger requests, the envelope header) travels in added fields that proto3 decoders skip.
//!
//! ```
//! use busbridge::codec::{Codec, CodecKind, Envelope};
//! use busbridge::event::{CollectionEvent, NetworkEvent};
//! use std::time::SystemTime;
//!
//! let event = CollectionEvent::Network(NetworkEvent {
//!     connection_id: "c1".into(), source_addr: "10.0.0.1:5000".into(),
//!     dest_addr: "10.0.0.2:443".into(), protocol: "tcp".into(), state: "ESTABLISHED".into(),
//!     pid: Some(7), bytes_sent: 10, bytes_received: 20, timestamp: SystemTime::now(),
//! });
//! let envelope = Envelope::new(event, "corr-1", "netmond");
//! for kind in [CodecKind::Protobuf, CodecKind::Json] {
//!     let codec = Codec::new(kind, 1 << 20);
//!     let bytes = codec.encode(&envelope).unwrap();
//!     assert_eq!(Codec::new(CodecKind::Protobuf, 1 << 20).decode(&bytes).unwrap(), envelope);
//! }
//! ```

mod json;
pub mod proto;
mod time;

use crate::event::CollectionEvent;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// Default largest encoded message, in bytes (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// An event with its routing data, as it travels on busrt.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The bus instance that first published the event (random per instance).
    pub origin: String,
    /// Sequence number of the event within its origin, starting at 1.
    pub seq: u64,
    /// How many bridges forwarded the event so far.
    pub hops: u32,
    /// Unique id of the event.
    pub event_id: String,
    /// Correlation id given by the publisher.
    pub correlation_id: String,
    /// Who published the event.
    pub publisher_id: String,
    /// When the bus accepted the event.
    pub timestamp: SystemTime,
    /// Routing priority (see [`CollectionEvent::priority`]).
    pub priority: u8,
    /// Free-form routing metadata.
    pub routing_metadata: HashMap<String, String>,
    /// The event itself.
    pub event: CollectionEvent,
    /// What the event has beyond the 2025-09 domain types, carried beside it.
    pub extra: EventExtra,
}

/// Fields of an event that the 2025-09 domain types lack (later versions of the legacy API
/// added them), carried beside the event: an event that crosses a bus of an older version on
/// its way to a newer one arrives whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventExtra {
    /// The process event's `hash_algorithm` (the 2026-04 crossbeam bus's `ProcessEvent`); on
    /// the wire, the legacy `ProcessRecord` field 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_algorithm: Option<String>,
}

impl EventExtra {
    /// True if nothing is carried.
    pub fn is_empty(&self) -> bool {
        self.hash_algorithm.is_none()
    }
}

impl Envelope {
    /// An envelope for a fresh publish: new event id, now as bus time, no origin yet.
    pub fn new(
        event: CollectionEvent,
        correlation_id: impl Into<String>,
        publisher_id: impl Into<String>,
    ) -> Self {
        Self {
            origin: String::new(),
            seq: 0,
            hops: 0,
            // Written into a stack buffer, then copied once (`to_string` goes through the
            // formatter).
            event_id: uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            correlation_id: correlation_id.into(),
            publisher_id: publisher_id.into(),
            timestamp: SystemTime::now(),
            priority: event.priority(),
            routing_metadata: HashMap::new(),
            event,
            extra: EventExtra::default(),
        }
    }
}

/// Which encoding a bus writes. Both are always accepted on receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CodecKind {
    /// prost, legacy field numbers (default).
    #[default]
    Protobuf,
    /// serde_json, human-readable.
    Json,
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    /// The encoded event is larger than the broker accepts.
    TooLarge {
        /// The encoded size in bytes.
        size: usize,
        /// The largest size accepted.
        limit: usize,
    },
    #[error("empty message")]
    /// The frame is empty.
    Empty,
    #[error("not a busbridge envelope: {0}")]
    /// The frame is not a busbridge envelope; says what was missing.
    NotAnEnvelope(&'static str),
    #[error("unsupported envelope version {0} (this build reads version {ENVELOPE_VERSION})")]
    /// The envelope's format version is newer than this build reads.
    UnsupportedVersion(u32),
    #[error("invalid protobuf: {0}")]
    /// The protobuf frame does not decode.
    Protobuf(#[from] prost::DecodeError),
    #[error("invalid JSON: {0}")]
    /// The JSON frame does not decode.
    Json(#[from] serde_json::Error),
    #[error("field `{field}`: {reason}")]
    /// A field decodes but its value is not allowed.
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    #[error("timestamp in `{0}` is outside the representable range")]
    /// A timestamp cannot be represented; names the field.
    TimestampOutOfRange(&'static str),
    #[error("field `{0}` is not a finite number, which JSON cannot carry")]
    /// A number is NaN or infinite; names the field.
    NonFinite(&'static str),
}

/// Encodes and decodes envelopes with a size limit.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    kind: CodecKind,
    max_size: usize,
}

impl Codec {
    /// A codec writing `kind`, refusing messages over `max_size` bytes both ways.
    pub fn new(kind: CodecKind, max_size: usize) -> Self {
        Self { kind, max_size }
    }

    /// The encoding this codec writes.
    pub fn kind(&self) -> CodecKind {
        self.kind
    }

    /// The size limit in bytes.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Encodes an envelope.
    pub fn encode(&self, envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
        let bytes = match self.kind {
            CodecKind::Protobuf => proto::encode(envelope)?,
            CodecKind::Json => json::encode(envelope)?,
        };
        self.check_size(bytes.len())?;
        Ok(bytes)
    }

    /// Encodes an envelope at the end of `out`, as [`encode`](Self::encode) would; on error
    /// `out` is as it was. Frames split off one buffer share its allocation: the bridge
    /// encodes every event this way (see [`FrameBuffer`]).
    pub fn encode_to(&self, envelope: &Envelope, out: &mut BytesMut) -> Result<(), CodecError> {
        let start = out.len();
        match self.kind {
            CodecKind::Protobuf => proto::encode_to(envelope, out),
            CodecKind::Json => json::encode(envelope).map(|j| out.extend_from_slice(&j)),
        }
        .and_then(|()| self.check_size(out.len() - start))
        .inspect_err(|_| out.truncate(start))
    }

    /// Decodes an envelope in either encoding; the size is checked before any parsing.
    pub fn decode(&self, bytes: &[u8]) -> Result<Envelope, CodecError> {
        self.check_size(bytes.len())?;
        match bytes.first() {
            None => Err(CodecError::Empty),
            Some(b'{') => json::decode(bytes),
            Some(_) => proto::decode(bytes),
        }
    }

    /// Wraps envelopes encoded by this codec into one batch frame.
    pub fn batch<'a>(&self, items: impl IntoIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
        match self.kind {
            CodecKind::Protobuf => proto::batch(items),
            CodecKind::Json => json::batch(items),
        }
    }

    /// Origin, sequence number and hops of each envelope in a protobuf frame, read without
    /// decoding the events (`None` for JSON or a frame that does not read as one).
    pub fn peek_frame<'a>(&self, bytes: &'a [u8]) -> Option<Vec<proto::Peeked<'a>>> {
        if bytes.first() == Some(&b'{') || bytes.len() > self.max_size {
            return None;
        }
        proto::peek_frame(bytes)
    }

    /// Decodes a frame that holds one envelope or a batch of them (in order).
    pub fn decode_frame(&self, bytes: &[u8]) -> Result<Vec<Envelope>, CodecError> {
        let mut out = Vec::new();
        self.decode_frame_each(bytes, |e| out.push(*e))?;
        Ok(out)
    }

    /// Like [`decode_frame`](Self::decode_frame), handing each envelope to `each` in order,
    /// boxed, instead of collecting them (a frame of one envelope allocates no list). A batch
    /// with one bad item hands on nothing. Boxed because a batch is decoded whole before any
    /// is handed on: a list of 500 envelopes by value is a fresh allocation of about 220 KB
    /// per frame (the allocator takes such sizes from the system and gives them back), a list
    /// of boxes 4 KB.
    pub fn decode_frame_each(
        &self,
        bytes: &[u8],
        mut each: impl FnMut(Box<Envelope>),
    ) -> Result<(), CodecError> {
        self.check_size(bytes.len())?;
        match bytes.first() {
            None => Err(CodecError::Empty),
            Some(b'{') => match json::unbatch(bytes)? {
                None => {
                    each(Box::new(json::decode(bytes)?));
                    Ok(())
                }
                Some(items) => {
                    let envs = items
                        .iter()
                        .map(|i| self.decode(i).map(Box::new))
                        .collect::<Result<Vec<_>, _>>()?;
                    envs.into_iter().for_each(each);
                    Ok(())
                }
            },
            Some(_) => proto::decode_frame_each(bytes, each),
        }
    }

    fn check_size(&self, size: usize) -> Result<(), CodecError> {
        if size > self.max_size {
            Err(CodecError::TooLarge {
                size,
                limit: self.max_size,
            })
        } else {
            Ok(())
        }
    }
}

/// Frames encoded one after another into shared chunks of memory, each frame a [`Bytes`]
/// handle into its chunk: one allocation per chunk instead of one per frame, and a frame's
/// clone (kept for resends) allocates nothing. A chunk is written again once every frame cut
/// from it is gone; while some are kept (a replay buffer), the next frames go to a new one.
///
/// ```
/// use busbridge::codec::{Codec, Envelope, FrameBuffer};
/// # let event = busbridge::event::CollectionEvent::Performance(busbridge::event::PerformanceEvent {
/// #     metric_name: "cpu".into(), value: 1.0, unit: "%".into(), pid: None,
/// #     component: "procmond".into(), timestamp: std::time::SystemTime::now() });
/// let codec = Codec::default();
/// let mut frames = FrameBuffer::new(16 * 1024);
/// let envelope = Envelope::new(event, "corr", "procmond");
/// let frame = frames.encode(&codec, &envelope)?;
/// assert_eq!(frame, codec.encode(&envelope)?);
/// # Ok::<(), busbridge::codec::CodecError>(())
/// ```
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
}

impl FrameBuffer {
    /// Frames go into chunks of `chunk` bytes (a larger frame takes a chunk at least its
    /// size).
    pub fn new(chunk: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(chunk),
        }
    }

    /// Encodes `envelope` with `codec` as the next frame.
    pub fn encode(&mut self, codec: &Codec, envelope: &Envelope) -> Result<Bytes, CodecError> {
        codec.encode_to(envelope, &mut self.buf)?;
        Ok(self.buf.split().freeze())
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(CodecKind::default(), DEFAULT_MAX_MESSAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CollectionEvent, PerformanceEvent};

    fn envelope(metric: &str) -> Envelope {
        let event = CollectionEvent::Performance(PerformanceEvent {
            metric_name: metric.into(),
            value: 1.0,
            unit: "%".into(),
            pid: None,
            component: "procmond".into(),
            timestamp: std::time::SystemTime::now(),
        });
        Envelope::new(event, "corr", "procmond")
    }

    /// A refused frame leaves the buffer as it was: the frames already cut from it, and the
    /// next one, are whole.
    #[test]
    fn a_refused_frame_leaves_nothing_behind() {
        for kind in [CodecKind::Protobuf, CodecKind::Json] {
            let small = envelope("cpu");
            let codec = Codec::new(
                kind,
                Codec::new(kind, usize::MAX).encode(&small).unwrap().len(),
            );
            let mut out = BytesMut::from(&b"earlier"[..]);
            let err = codec
                .encode_to(&envelope(&"x".repeat(1000)), &mut out)
                .expect_err("too large");
            assert!(
                matches!(err, CodecError::TooLarge { .. }),
                "{kind:?}: {err}"
            );
            assert_eq!(&out[..], b"earlier", "{kind:?}");
            codec.encode_to(&small, &mut out).expect("fits");
            assert_eq!(&out[7..], &codec.encode(&small).unwrap()[..], "{kind:?}");
        }
    }
}
