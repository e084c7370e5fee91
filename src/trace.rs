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
    /// The trace file could not be read or written.
    Io(#[from] std::io::Error),
    #[error("trace line {line}: {reason}")]
    /// A line of the trace does not parse.
    Line {
        /// The line number, from 1.
        line: usize,
        /// Why it does not parse.
        reason: String,
    },
    #[error(transparent)]
    /// An envelope in the trace does not decode.
    Codec(#[from] CodecError),
}

/// One line of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A subscriber was added.
    Subscribe {
        /// Its id.
        id: String,
        /// Its filter (boxed: far larger than the other lines).
        filter: Box<Filter>,
    },
    /// An event was published (the envelope, as JSON).
    Publish(Value),
    /// The control path delivered an event to a subscriber.
    Deliver {
        /// The subscriber.
        subscriber: String,
        /// The event.
        event_id: String,
    },
}

/// Lines waiting for the recorder's writer thread; more are dropped and counted.
const RECORDER_QUEUE: usize = 65_536;

enum Line {
    Text(String),
    Flush(std::sync::mpsc::SyncSender<std::io::Result<()>>),
}

/// Writes a trace (shared by the core; every method takes `&self`).
///
/// Recording never does file I/O on the publishing task: lines go through a bounded queue to
/// a writer thread. A line that does not fit is dropped and counted ([`Recorder::dropped`]),
/// so a slow disk never stalls the bus (and a trace with drops is known to be incomplete).
pub struct Recorder {
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Line>>>,
    writer: Mutex<Option<std::thread::JoinHandle<std::io::Result<()>>>>,
    dropped: std::sync::atomic::AtomicU64,
    codec: Codec,
}

impl Recorder {
    /// Creates (truncates) the trace file and starts its writer thread.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let mut out = BufWriter::new(std::fs::File::create(path)?);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Line>(RECORDER_QUEUE);
        let writer = std::thread::Builder::new()
            .name("busbridge-trace".into())
            .spawn(move || {
                for line in rx {
                    match line {
                        Line::Text(t) => {
                            out.write_all(t.as_bytes())?;
                            out.write_all(b"\n")?;
                        }
                        Line::Flush(done) => {
                            let _ = done.send(out.flush());
                        }
                    }
                }
                out.flush()
            })?;
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            dropped: Default::default(),
            codec: Codec::new(CodecKind::Json, usize::MAX),
        })
    }

    fn write(&self, entry: &Entry) {
        let Ok(text) = serde_json::to_string(entry) else {
            return tracing::warn!("trace: cannot render an entry");
        };
        let sent = match self.queue.lock().as_ref() {
            Some(q) => q.try_send(Line::Text(text)).is_ok(),
            None => false,
        };
        if !sent {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Lines that could not be recorded (queue full, or the recorder closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until every line recorded so far is written to the file (blocking; call it off
    /// the async runtime or at the end).
    pub fn flush(&self) -> Result<(), TraceError> {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let queue = self.queue.lock().clone();
        if let Some(q) = queue {
            if q.send(Line::Flush(done_tx)).is_ok() {
                if let Ok(r) = done_rx.recv() {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// Stops recording: writes what is queued and closes the file.
    pub fn close(&self) -> Result<(), TraceError> {
        drop(self.queue.lock().take());
        match self.writer.lock().take().map(|w| w.join()) {
            Some(Ok(r)) => Ok(r?),
            Some(Err(_)) => Err(TraceError::Io(std::io::Error::other(
                "trace writer panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Recorder {
    pub(crate) fn record_subscribe(&self, id: &str, filter: &Filter) {
        self.write(&Entry::Subscribe {
            id: id.to_owned(),
            filter: Box::new(filter.clone()),
        });
    }

    pub(crate) fn record_publish(&self, env: &Envelope) {
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

    pub(crate) fn record_delivery(&self, subscriber: &str, env: &Envelope) {
        self.write(&Entry::Deliver {
            subscriber: subscriber.to_owned(),
            event_id: env.event_id.clone(),
        });
    }
}

/// A trace read back.
#[derive(Debug, Default)]
pub struct Trace {
    /// Subscribers, in the order they were added.
    pub subscriptions: Vec<(String, Filter)>,
    /// Published envelopes, in order.
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
                Entry::Subscribe { id, filter } => trace.subscriptions.push((id, *filter)),
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
