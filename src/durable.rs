//! Durable subscribers: a subscriber that is killed and restarted processes every event once.
//!
//! A legacy subscriber never tells the bus what it has processed, so after a crash nobody
//! knows which of the events that were queued in the dead process were handled. A durable
//! subscriber keeps its own [`Positions`] (per origin, the highest sequence number processed),
//! stored together with its output so the two cannot disagree; on restart it hands them to
//! [`BridgeBuilder::resume`](crate::bridge::BridgeBuilder::resume). The bridge then drops what
//! was already processed, asks each publisher to resend what follows from its replay buffer
//! (publishers answer a resuming subscriber's hello with their highest sequence number, so a
//! lost tail is found even if they are idle), and delivers the rest in order.
//!
//! Resuming asks every origin it has not heard of for its whole replay buffer (a collector
//! that started while the subscriber was down must not lose its first events). Resuming from
//! empty positions (a subscriber starting for the first time) joins the stream live instead.
//!
//! [`Journal`] is the simplest such store: an append-only file of JSON lines, one envelope a
//! line, whose own content is the checkpoint. A line torn by a crash is cut off on reopen.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use busbridge::bridge::BridgeBuilder;
//! use busbridge::durable::Journal;
//! use busbridge::event::SourceCaps;
//! use busbridge::subscription::EventSubscription;
//!
//! let mut journal = Journal::open("events.jsonl")?;
//! let bridged = BridgeBuilder::new()
//!     .phase(busbridge::phase::Phase::BusrtOnly)
//!     .connect("ipc:///run/busbridge/daemoneye.sock")
//!     .resume(journal.positions().clone())
//!     .build()
//!     .await?;
//! let rx = bridged
//!     .event_bus(Default::default())
//!     .subscribe_envelopes(EventSubscription {
//!         subscriber_id: "journal".into(),
//!         capabilities: SourceCaps::all(),
//!         event_filter: None,
//!         correlation_filter: None,
//!     })
//!     .await?;
//! while let Some(envelope) = rx.recv_async().await {
//!     journal.append(&envelope)?;
//!     if rx.is_empty() {
//!         journal.flush()?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Bounds: a publisher can resend only what its replay buffer still holds
//! (`bus.replay_buffer`, 100,000 events by default: 10 s at 10,000 events/s); what it no
//! longer holds is counted in `bridge_resend_unavailable` and logged with its range. Written
//! lines survive the process; they survive a power loss only once the file system has them.

use crate::codec::{Codec, CodecError, CodecKind, Envelope, DEFAULT_MAX_MESSAGE_SIZE};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Per origin, the highest sequence number a subscriber has processed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<String, u64>);

impl Positions {
    /// No positions: a first start.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest sequence number processed from `origin`.
    pub fn get(&self, origin: &str) -> Option<u64> {
        self.0.get(origin).copied()
    }

    /// Notes `envelope` as processed; false if it was already behind the position.
    pub fn advance(&mut self, envelope: &Envelope) -> bool {
        let pos = self.0.entry(envelope.origin.clone()).or_insert(0);
        if envelope.seq <= *pos {
            return false;
        }
        *pos = envelope.seq;
        true
    }

    /// Raises `origin`'s position to `seq` (never lowers it).
    pub fn set_at_least(&mut self, origin: &str, seq: u64) {
        match self.0.get_mut(origin) {
            Some(pos) => *pos = (*pos).max(seq),
            None => {
                self.0.insert(origin.to_owned(), seq);
            }
        }
    }

    /// Every origin and its position.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(o, p)| (o.as_str(), *p))
    }

    /// Origins with a position.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no origin has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    /// The journal file could not be read or written.
    Io {
        /// The journal file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    #[error("journal {path}, line {line}: {source}")]
    /// A line before the last one does not decode (a torn last line is cut instead).
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The underlying error.
        source: CodecError,
    },
    #[error(transparent)]
    /// An envelope could not be encoded.
    Encode(#[from] CodecError),
}

/// An append-only file of envelopes (JSON, one a line) that is its own checkpoint.
pub struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
    codec: Codec,
    positions: Positions,
    lines: u64,
}

impl Journal {
    /// Opens (or creates) the journal and reads the positions it holds. A last line without
    /// its newline (the process died writing it) is cut off; any other unreadable line is
    /// an error, never skipped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let codec = Codec::new(CodecKind::Json, DEFAULT_MAX_MESSAGE_SIZE);
        let (mut positions, mut lines, mut good) = (Positions::new(), 0u64, 0u64);
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io)?;
            if n == 0 || line.last() != Some(&b'\n') {
                if n > 0 {
                    tracing::warn!(path = %path.display(), bytes = n, "cutting off a torn last line");
                }
                break;
            }
            let env = codec
                .decode(&line[..n - 1])
                .map_err(|source| JournalError::Corrupt {
                    path: path.clone(),
                    line: lines as usize + 1,
                    source,
                })?;
            positions.advance(&env);
            lines += 1;
            good += n as u64;
        }
        drop(reader);
        file.set_len(good).map_err(io)?;
        file.seek(SeekFrom::Start(good)).map_err(io)?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
            codec,
            positions,
            lines,
        })
    }

    /// What the journal holds, per origin.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Lines written, including those found on open.
    pub fn len(&self) -> u64 {
        self.lines
    }

    /// True if the journal holds no event.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Appends one envelope (buffered: call [`flush`](Self::flush) when the queue is empty).
    /// Returns false, writing nothing, if its origin's position is already at or past it.
    pub fn append(&mut self, envelope: &Envelope) -> Result<bool, JournalError> {
        if self
            .positions
            .get(&envelope.origin)
            .is_some_and(|p| envelope.seq <= p)
        {
            return Ok(false);
        }
        let mut bytes = self.codec.encode(envelope)?;
        bytes.push(b'\n');
        self.out.write_all(&bytes).map_err(|e| self.io(e))?;
        self.positions.advance(envelope);
        self.lines += 1;
        Ok(true)
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Hands buffered lines to the operating system.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::sample_event;

    fn env(origin: &str, seq: u64) -> Envelope {
        let mut e = Envelope::new(sample_event("t", seq as usize), "", "t");
        e.origin = origin.into();
        e.seq = seq;
        e
    }

    #[test]
    fn reopening_recovers_positions_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = Journal::open(&path).unwrap();
        for s in 1..=3 {
            assert!(j.append(&env("a", s)).unwrap());
        }
        assert!(j.append(&env("b", 7)).unwrap());
        assert!(!j.append(&env("a", 2)).unwrap(), "behind the position");
        j.flush().unwrap();
        drop(j);
        // A crash in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"header\":").unwrap();
        drop(f);
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.len(), 4);
        assert_eq!(j.positions().get("a"), Some(3));
        assert_eq!(j.positions().get("b"), Some(7));
        assert!(j.append(&env("a", 4)).unwrap());
        j.flush().unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!((j.len(), j.positions().get("a")), (5, Some(4)));
    }

    #[test]
    fn a_corrupt_line_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, b"not json\n").unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::Corrupt { line: 1, .. })
        ));
    }
}
