//! The uplink's on-disk spool: every event bound for JetStream is appended here first and
//! leaves only when JetStream has acknowledged it, so neither a NATS outage nor an uplink
//! crash loses what the uplink accepted.
//!
//! The spool is a directory of segment files (`<n>.seg`), each a run of records:
//!
//! ```text
//! u32 length of what follows (little-endian)
//! u16 subject length, subject
//! u16 origin length, origin
//! u64 sequence number
//! payload (the rest)
//! ```
//!
//! Records are read back in order by the sender (from the page cache while it keeps up),
//! acknowledged in order, and a segment is deleted once every record in it is acknowledged.
//! `acked.json` holds the highest acknowledged sequence number per origin, written at each
//! segment deletion and on [`Spool::checkpoint`]: on reopen, records at or below it are not
//! sent again; those after it are (JetStream drops them as duplicates by message id if they
//! had arrived). A record torn by a crash at the end of the last segment is cut off.
//!
//! The spool is bounded by `max_bytes`: a record that does not fit is refused and counted
//! ([`SpoolStats::overflow`]), never silently.

use crate::durable::Positions;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started past this size (or a quarter of the bound).
const SEGMENT_BYTES: u64 = 16 << 20;
/// A segment this large is replaced as soon as everything in it is acknowledged.
const IDLE_ROTATE: u64 = 1 << 20;
/// Most records, and payload bytes, kept in memory for a sender that keeps up.
const TAIL_RECORDS: usize = 8192;
const TAIL_BYTES: usize = 8 << 20;
/// Length prefix, subject and origin lengths, sequence number.
const OVERHEAD: u64 = 4 + 2 + 2 + 8;
const ACKED_FILE: &str = "acked.json";

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file of the spool could not be read or written.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The acknowledged positions file does not parse.
    #[error("spool {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One event waiting for JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its JetStream subject.
    pub subject: String,
    /// The bus instance that published it.
    pub origin: String,
    /// Its sequence number within the origin.
    pub seq: u64,
    /// The envelope, encoded.
    pub payload: Bytes,
}

impl Record {
    fn encoded_len(&self) -> u64 {
        OVERHEAD + (self.subject.len() + self.origin.len() + self.payload.len()) as u64
    }
}

/// Where a record ends: what acknowledging it releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    segment: u64,
    offset: u64,
}

/// Spool counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpoolStats {
    /// Records written.
    pub written: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records refused because the spool was full.
    pub overflow: u64,
    /// Bytes on disk now.
    pub bytes: u64,
    /// Records on disk not yet acknowledged.
    pub pending: u64,
    /// Records recovered from disk at open.
    pub recovered: u64,
}

struct Segment {
    id: u64,
    /// Bytes written (flushed or buffered).
    len: u64,
    records: u64,
}

/// The bounded on-disk queue between the bridge and JetStream.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: BufWriter<File>,
    /// Bytes of the last segment the writer has flushed.
    flushed: u64,
    /// An open segment and the offset it is at.
    reader: Option<(u64, BufReader<File>, u64)>,
    /// Where the next record to send starts.
    read_pos: Mark,
    /// The records written since the sender last caught up, still in memory: while the
    /// sender keeps up it takes them from here and the disk is only written (each entry:
    /// where the record starts, the record, where it ends). Contiguous up to `read_pos`.
    tail: VecDeque<(Mark, Record, Mark)>,
    tail_bytes: usize,
    /// Whether new records also go to `tail` (off once it is full or after a rewind, until
    /// the sender has read everything from disk).
    tail_open: bool,
    /// The first record not yet acknowledged.
    acked_to: Mark,
    acked: Positions,
    spooled: Positions,
    stats: SpoolStats,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes`. Records left by a
    /// previous run are kept and will be read again, except those already acknowledged.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let acked = read_acked(&dir.join(ACKED_FILE))?;
        let mut ids: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        let mut spooled = acked.clone();
        let mut stats = SpoolStats::default();
        let last = ids.last().copied();
        for id in ids {
            let path = segment_path(&dir, id);
            let (len, records) = scan(&path, Some(id) == last, |r| {
                if r.seq > acked.get(&r.origin).unwrap_or(0) {
                    stats.recovered += 1;
                }
                spooled.set_at_least(&r.origin, r.seq);
            })?;
            segments.push_back(Segment { id, len, records });
            stats.bytes += len;
            stats.pending += records;
        }
        let segment_bytes = SEGMENT_BYTES.min(max_bytes / 4).max(1 << 12);
        if segments.is_empty() {
            segments.push_back(Segment {
                id: 1,
                len: 0,
                records: 0,
            });
        }
        let back = segments.back().expect("one segment");
        let path = segment_path(&dir, back.id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let first = segments.front().expect("one segment").id;
        let start = Mark {
            segment: first,
            offset: 0,
        };
        Ok(Self {
            flushed: back.len,
            writer: BufWriter::with_capacity(64 << 10, file),
            dir,
            max_bytes,
            segment_bytes,
            segments,
            reader: None,
            read_pos: start,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_open: false,
            acked_to: start,
            acked,
            spooled,
            stats,
        })
    }

    /// Per origin, the highest sequence number in the spool or acknowledged: where the
    /// bridge resumes after a restart.
    pub fn spooled(&self) -> &Positions {
        &self.spooled
    }

    /// Per origin, the highest sequence number JetStream acknowledged.
    pub fn acked(&self) -> &Positions {
        &self.acked
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Appends a record. `Ok(false)`: the spool is full, the record is refused and counted;
    /// a record at or behind the origin's spooled position is already here and is skipped
    /// (`Ok(true)`).
    pub fn push(&mut self, record: Record) -> Result<bool, SpoolError> {
        if record.seq <= self.spooled.get(&record.origin).unwrap_or(0) {
            return Ok(true);
        }
        let len = record.encoded_len();
        if self.stats.bytes + len > self.max_bytes {
            self.stats.overflow += 1;
            return Ok(false);
        }
        if self.segments.back().expect("one segment").len >= self.segment_bytes {
            self.rotate()?;
        }
        let start = {
            let back = self.segments.back().expect("one segment");
            Mark {
                segment: back.id,
                offset: back.len,
            }
        };
        let w = &mut self.writer;
        let path = segment_path(&self.dir, start.segment);
        let record = &record;
        let write = |w: &mut BufWriter<File>| -> std::io::Result<()> {
            w.write_all(&((len - 4) as u32).to_le_bytes())?;
            w.write_all(&(record.subject.len() as u16).to_le_bytes())?;
            w.write_all(record.subject.as_bytes())?;
            w.write_all(&(record.origin.len() as u16).to_le_bytes())?;
            w.write_all(record.origin.as_bytes())?;
            w.write_all(&record.seq.to_le_bytes())?;
            w.write_all(&record.payload)
        };
        write(w).map_err(io(&path))?;
        let back = self.segments.back_mut().expect("one segment");
        back.len += len;
        back.records += 1;
        self.stats.bytes += len;
        self.stats.written += 1;
        self.stats.pending += 1;
        self.spooled.set_at_least(&record.origin, record.seq);
        if self.tail_open {
            if self.tail.len() < TAIL_RECORDS && self.tail_bytes < TAIL_BYTES {
                self.tail_bytes += record.payload.len();
                let end = Mark {
                    segment: start.segment,
                    offset: start.offset + len,
                };
                self.tail.push_back((start, record.clone(), end));
            } else {
                self.tail_open = false;
            }
        }
        Ok(true)
    }

    /// Hands what is buffered to the operating system (it then survives the process).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        let id = self.segments.back().expect("one segment").id;
        self.writer
            .flush()
            .map_err(io(&segment_path(&self.dir, id)))?;
        self.flushed = self.segments.back().expect("one segment").len;
        Ok(())
    }

    /// The next record to send and its mark, or `None` when every record has been read.
    pub fn read_next(&mut self) -> Result<Option<(Record, Mark)>, SpoolError> {
        loop {
            if self
                .tail
                .front()
                .is_some_and(|(start, ..)| *start == self.read_pos)
            {
                let (_, record, end) = self.tail.pop_front().expect("checked");
                self.tail_bytes -= record.payload.len();
                self.read_pos = end;
                return Ok(Some((record, end)));
            }
            let first = self.segments.front().expect("one segment").id;
            if self.read_pos.segment < first {
                // Its segment was acknowledged whole and deleted: go on after it.
                self.read_pos = Mark {
                    segment: first,
                    offset: 0,
                };
                continue;
            }
            let Some(seg) = self.segments.iter().find(|s| s.id == self.read_pos.segment) else {
                return Ok(None);
            };
            let (seg_id, seg_len) = (seg.id, seg.len);
            let is_last = seg_id == self.segments.back().expect("one segment").id;
            if self.read_pos.offset >= seg_len {
                if is_last {
                    // Caught up: what is written next is read from memory.
                    self.tail_open = true;
                    return Ok(None);
                }
                let next = self.segments.iter().find(|s| s.id > seg_id).map(|s| s.id);
                self.read_pos = Mark {
                    segment: next.expect("a later segment"),
                    offset: 0,
                };
                continue;
            }
            if is_last && self.read_pos.offset >= self.flushed {
                self.flush()?;
            }
            let at = self.read_pos;
            if !self
                .reader
                .as_ref()
                .is_some_and(|(s, _, o)| *s == at.segment && *o == at.offset)
            {
                self.open_reader(at.segment, at.offset)?;
            }
            let path = segment_path(&self.dir, at.segment);
            let (_, reader, pos) = self.reader.as_mut().expect("opened");
            let record =
                read_record(reader)
                    .map_err(io(&path))?
                    .ok_or_else(|| SpoolError::Corrupt {
                        path: path.clone(),
                        reason: format!("record at byte {pos} is torn"),
                    })?;
            *pos += record.encoded_len();
            self.read_pos = Mark {
                segment: at.segment,
                offset: *pos,
            };
            return Ok(Some((record, self.read_pos)));
        }
    }

    fn open_reader(&mut self, segment: u64, offset: u64) -> Result<(), SpoolError> {
        let path = segment_path(&self.dir, segment);
        let mut file = File::open(&path).map_err(io(&path))?;
        file.seek(SeekFrom::Start(offset)).map_err(io(&path))?;
        self.reader = Some((segment, BufReader::with_capacity(64 << 10, file), offset));
        Ok(())
    }

    /// Sends everything after the last acknowledged record again (after a failed publish):
    /// the next [`read_next`](Self::read_next) starts there.
    pub fn rewind(&mut self) {
        self.read_pos = self.acked_to;
        self.tail.clear();
        self.tail_bytes = 0;
        self.tail_open = false;
    }

    /// JetStream acknowledged the record `(origin, seq)` that ends at `mark`; records are
    /// acknowledged in the order they were read. Segments wholly acknowledged are deleted.
    pub fn ack(&mut self, origin: &str, seq: u64, mark: Mark) -> Result<(), SpoolError> {
        self.acked.set_at_least(origin, seq);
        self.acked_to = mark;
        self.stats.acked += 1;
        self.stats.pending = self.stats.pending.saturating_sub(1);
        // Everything acknowledged: start a new segment so the old one's bytes are freed
        // (they count against the bound) rather than waiting for it to fill.
        let back = self.segments.back().expect("one segment");
        if self.stats.pending == 0 && back.len >= IDLE_ROTATE.min(self.segment_bytes / 4) {
            self.rotate()?;
        }
        let mut deleted = false;
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("non-empty");
            let done =
                front.id < mark.segment || (front.id == mark.segment && mark.offset >= front.len);
            if !done {
                break;
            }
            let front = self.segments.pop_front().expect("non-empty");
            if self.acked_to.segment == front.id {
                let next = self.segments.front().expect("non-empty").id;
                self.acked_to = Mark {
                    segment: next,
                    offset: 0,
                };
            }
            // Positions first: a crash between the two sends nothing twice.
            if !deleted {
                self.checkpoint()?;
                deleted = true;
            }
            let path = segment_path(&self.dir, front.id);
            std::fs::remove_file(&path).map_err(io(&path))?;
            self.stats.bytes -= front.len;
        }
        Ok(())
    }

    /// Writes the acknowledged positions (atomically: a temporary file renamed over).
    pub fn checkpoint(&mut self) -> Result<(), SpoolError> {
        let path = self.dir.join(ACKED_FILE);
        let tmp = self.dir.join("acked.json.tmp");
        let map: BTreeMap<&str, u64> = self.acked.iter().collect();
        let text = serde_json::to_vec(&map).expect("a map of numbers serializes");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        let id = self.segments.back().expect("one segment").id + 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        self.writer = BufWriter::with_capacity(64 << 10, file);
        self.flushed = 0;
        self.segments.push_back(Segment {
            id,
            len: 0,
            records: 0,
        });
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

fn read_acked(path: &Path) -> Result<Positions, SpoolError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Positions::new()),
        Err(source) => {
            return Err(SpoolError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let map: BTreeMap<String, u64> =
        serde_json::from_slice(&text).map_err(|e| SpoolError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let mut positions = Positions::new();
    for (origin, seq) in map {
        positions.set_at_least(&origin, seq);
    }
    Ok(positions)
}

/// One record, `None` at a clean end of file; an error on a torn one.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<Record>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    parse_body(&body)
        .map(Some)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed record"))
}

fn parse_body(body: &[u8]) -> Option<Record> {
    let (n, rest) = body.split_first_chunk::<2>()?;
    let (subject, rest) = rest.split_at_checked(u16::from_le_bytes(*n) as usize)?;
    let (n, rest) = rest.split_first_chunk::<2>()?;
    let (origin, rest) = rest.split_at_checked(u16::from_le_bytes(*n) as usize)?;
    let (seq, payload) = rest.split_first_chunk::<8>()?;
    Some(Record {
        subject: std::str::from_utf8(subject).ok()?.to_owned(),
        origin: std::str::from_utf8(origin).ok()?.to_owned(),
        seq: u64::from_le_bytes(*seq),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Reads a segment through; a torn or malformed tail of the last segment is cut off (a
/// crash mid-write), anywhere else it is an error. Returns its length and record count.
fn scan(
    path: &Path,
    is_last: bool,
    mut each: impl FnMut(&Record),
) -> Result<(u64, u64), SpoolError> {
    let file = File::open(path).map_err(io(path))?;
    let total = file.metadata().map_err(io(path))?.len();
    let mut reader = BufReader::new(file);
    let (mut len, mut records) = (0u64, 0u64);
    loop {
        match read_record(&mut reader) {
            Ok(Some(r)) => {
                len += r.encoded_len();
                records += 1;
                each(&r);
            }
            Ok(None) if len == total => return Ok((len, records)),
            Ok(None) | Err(_) if is_last => {
                tracing::warn!(path = %path.display(), kept = len, cut = total - len, "spool: cutting a torn record off the last segment");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                file.set_len(len).map_err(io(path))?;
                return Ok((len, records));
            }
            Ok(None) | Err(_) => {
                return Err(SpoolError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("malformed record at byte {len}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(origin: &str, seq: u64) -> Record {
        Record {
            subject: format!("busbridge.h.events.{seq}"),
            origin: origin.into(),
            seq,
            payload: Bytes::from(vec![seq as u8; 100]),
        }
    }

    #[test]
    fn records_come_back_in_order_and_acknowledged_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 16).unwrap();
        for seq in 1..=300 {
            assert!(spool.push(rec("a", seq)).unwrap());
        }
        assert!(spool.segments.len() > 1, "small bound rotates segments");
        let mut marks = Vec::new();
        while let Some((r, m)) = spool.read_next().unwrap() {
            assert_eq!(r, rec("a", marks.len() as u64 + 1));
            marks.push(m);
        }
        assert_eq!(marks.len(), 300);
        for (i, m) in marks.iter().enumerate() {
            spool.ack("a", i as u64 + 1, *m).unwrap();
        }
        assert_eq!(spool.segments.len(), 1);
        assert_eq!(spool.stats().pending, 0);
        assert_eq!(spool.stats().bytes, 0, "an acknowledged segment is freed");
        // Writing and reading go on in the new segment.
        spool.push(rec("a", 301)).unwrap();
        assert_eq!(spool.read_next().unwrap().unwrap().0.seq, 301);
        assert_eq!(spool.acked().get("a"), Some(300));
    }

    #[test]
    fn a_full_spool_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 16).unwrap();
        let mut seq = 0;
        while spool.push(rec("a", seq + 1)).unwrap() {
            seq += 1;
        }
        assert_eq!(spool.stats().overflow, 1);
        assert!(spool.stats().bytes <= 1 << 16);
        assert_eq!(spool.stats().written, seq);
    }

    #[test]
    fn reopened_it_sends_what_was_not_acknowledged_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            for seq in 1..=10 {
                spool.push(rec("a", seq)).unwrap();
            }
            let mut last = None;
            for _ in 0..4 {
                last = spool.read_next().unwrap();
            }
            let (r, m) = last.unwrap();
            spool.ack(&r.origin, r.seq, m).unwrap();
            spool.checkpoint().unwrap();
            spool.flush().unwrap();
        }
        // A crash mid-write: half a record at the end.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.spooled().get("a"), Some(10));
        assert_eq!(spool.acked().get("a"), Some(4));
        assert_eq!(spool.stats().recovered, 6);
        let mut seqs = Vec::new();
        while let Some((r, _)) = spool.read_next().unwrap() {
            seqs.push(r.seq);
        }
        // The whole segment is read again; the sender skips what `acked` covers.
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        // What is already spooled is not written twice.
        assert!(spool.push(rec("a", 10)).unwrap());
        assert_eq!(spool.stats().written, 0);
    }

    #[test]
    fn rewind_reads_again_from_the_first_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for seq in 1..=5 {
            spool.push(rec("a", seq)).unwrap();
        }
        let (r, m) = spool.read_next().unwrap().unwrap();
        spool.ack(&r.origin, r.seq, m).unwrap();
        spool.read_next().unwrap();
        spool.read_next().unwrap();
        spool.rewind();
        assert_eq!(spool.read_next().unwrap().unwrap().0.seq, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Read,
        Ack,
        Rewind,
    }

    proptest::proptest! {
        /// Against a model (a list, a read index, an acknowledged index): whatever the mix of
        /// writes, reads from memory or disk, acknowledgements, rewinds, segment rotations and
        /// deletions, and a full spool, records come back in order, each once per read pass.
        #[test]
        fn reads_follow_writes_in_order_whatever_the_interleaving(
            ops in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => proptest::strategy::Just(Op::Push),
                    3 => proptest::strategy::Just(Op::Read),
                    2 => proptest::strategy::Just(Op::Ack),
                    1 => proptest::strategy::Just(Op::Rewind),
                ],
                1..400,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut spool = Spool::open(dir.path(), 1 << 16).unwrap();
            let (mut pushed, mut next, mut read, mut acked) = (Vec::new(), 1u64, 0usize, 0usize);
            let mut in_flight = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push => {
                        if spool.push(rec("a", next)).unwrap() {
                            pushed.push(next);
                        }
                        next += 1;
                    }
                    Op::Read => {
                        let got = spool.read_next().unwrap();
                        match pushed.get(read) {
                            Some(&seq) => {
                                let (r, m) = got.expect("a record is due");
                                proptest::prop_assert_eq!(r.seq, seq);
                                in_flight.push_back((r.seq, m));
                                read += 1;
                            }
                            None => proptest::prop_assert!(got.is_none()),
                        }
                    }
                    Op::Ack => {
                        if let Some((seq, m)) = in_flight.pop_front() {
                            spool.ack("a", seq, m).unwrap();
                            acked += 1;
                        }
                    }
                    Op::Rewind => {
                        in_flight.clear();
                        read = acked;
                        spool.rewind();
                    }
                }
                proptest::prop_assert_eq!(spool.stats().pending, (pushed.len() - acked) as u64);
            }
        }
    }
}
