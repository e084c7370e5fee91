//! Record and replay: how phase 4 is verified against an old path that no longer exists.
//!
//! In phases 1–3 a bus can record, as JSON lines, every subscription, every publish and
//! every delivery of the control path (the legacy router's answer). Replaying the file on the
//! phase-4 path publishes the same envelopes to the same subscribers and compares what they
//! receive with what the control delivered.
//!
//! ```text
//! {"subscribe":{"id":"all","filter":{...}}}
//! {"publish":{"v":1,"origin":"...","event":{...}, ...}}
//! {"deliver":{"subscriber":"all","event_id":"..."}}
//! ```

use crate::codec::{Codec, CodecError, CodecKind, Envelope};
use crate::router::Filter;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

/// Why a trace could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("trace line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One line of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    Subscribe {
        id: String,
        filter: Filter,
    },
    Publish(Value),
    Deliver {
        subscriber: String,
        event_id: String,
    },
}

/// Writes a trace (shared by the core; every method takes `&self`).
pub struct Recorder {
    out: Mutex<BufWriter<std::fs::File>>,
    codec: Codec,
}

impl Recorder {
    /// Creates (truncates) the trace file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        Ok(Self {
            out: Mutex::new(BufWriter::new(std::fs::File::create(path)?)),
            codec: Codec::new(CodecKind::Json, usize::MAX),
        })
    }

    fn write(&self, entry: &Entry) {
        let mut out = self.out.lock();
        let ok = serde_json::to_writer(&mut *out, entry).is_ok() && out.write_all(b"\n").is_ok();
        if !ok {
            tracing::warn!("trace write failed");
        }
    }

    pub(crate) fn subscribe(&self, id: &str, filter: &Filter) {
        self.write(&Entry::Subscribe {
            id: id.to_owned(),
            filter: filter.clone(),
        });
    }

    pub(crate) fn publish(&self, env: &Envelope) {
        match self
            .codec
            .encode(env)
            .map_err(TraceError::from)
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| TraceError::Line {
                    line: 0,
                    reason: e.to_string(),
                })
            }) {
            Ok(v) => self.write(&Entry::Publish(v)),
            Err(e) => tracing::warn!("trace: cannot record publish: {e}"),
        }
    }

    pub(crate) fn deliver(&self, subscriber: &str, event_id: &str) {
        self.write(&Entry::Deliver {
            subscriber: subscriber.to_owned(),
            event_id: event_id.to_owned(),
        });
    }

    /// Writes everything buffered to the file.
    pub fn flush(&self) -> Result<(), TraceError> {
        Ok(self.out.lock().flush()?)
    }
}

/// A trace read back.
#[derive(Debug, Default)]
pub struct Trace {
    pub subscriptions: Vec<(String, Filter)>,
    pub publishes: Vec<Envelope>,
    /// Control deliveries in order: (subscriber, event id).
    pub deliveries: Vec<(String, String)>,
}

impl Trace {
    /// Reads a trace file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let codec = Codec::new(CodecKind::Json, usize::MAX);
        let mut trace = Trace::default();
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        for (i, line) in file.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| TraceError::Line {
                line: i + 1,
                reason,
            };
            match serde_json::from_str::<Entry>(&line).map_err(|e| bad(e.to_string()))? {
                Entry::Subscribe { id, filter } => trace.subscriptions.push((id, filter)),
                Entry::Publish(v) => {
                    let bytes = serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))?;
                    trace
                        .publishes
                        .push(codec.decode(&bytes).map_err(|e| bad(e.to_string()))?);
                }
                Entry::Deliver {
                    subscriber,
                    event_id,
                } => trace.deliveries.push((subscriber, event_id)),
            }
        }
        Ok(trace)
    }
}
