//! The parity engine (Scientist-style): what each subscriber received on the control path is
//! compared with what it received on the candidate path: the same events, the same fields,
//! the same order.
//!
//! Pure logic, no I/O: the bridge feeds it, tests drive it directly.
//!
//! ```
//! use busbridge::parity::{MismatchKind, Parity, ParityConfig};
//! use busbridge::codec::Envelope;
//! use busbridge::event::{CollectionEvent, PerformanceEvent};
//!
//! let event = CollectionEvent::Performance(PerformanceEvent {
//!     metric_name: "cpu".into(), value: 1.0, unit: "%".into(), pid: None,
//!     component: "c".into(), timestamp: std::time::SystemTime::UNIX_EPOCH,
//! });
//! let control = Envelope::new(event, "corr", "p");
//! let mut candidate = control.clone();
//! candidate.correlation_id = "changed".into();
//!
//! let parity = Parity::new(ParityConfig::default());
//! parity.record_control("sub-a", &control);
//! parity.record_candidate("sub-a", &candidate);
//! let report = parity.finish();
//! assert_eq!(report.mismatches.len(), 1);
//! assert!(matches!(&report.mismatches[0].kind, MismatchKind::Field { field, .. } if field == "correlation_id"));
//! ```

use crate::codec::{Codec, CodecKind, Envelope};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// Turns an envelope into what is compared (for fields known to differ between paths).
pub type Normalizer = Arc<dyn Fn(&mut Envelope) + Send + Sync>;

/// What the engine compares and how much.
#[derive(Clone)]
pub struct ParityConfig {
    /// Dotted paths of fields not compared, e.g. `timestamp` or `routing_metadata.replay`.
    pub ignore_fields: Vec<String>,
    /// A hook applied to both sides before comparing.
    pub normalize: Option<Normalizer>,
    /// Percentage (0–100) of sticky keys compared; the key is the publisher id and the pid,
    /// so one collector's (or one process's) events are all in or all out.
    pub sample_percent: u8,
    /// Most reports kept (counters keep counting beyond it).
    pub max_reports: usize,
    /// A/A mode: the candidate is the control path run a second time, to measure the noise
    /// of the comparison itself (it should be zero).
    pub aa: bool,
    /// How long one side's delivery waits for the other's. Past it (at most half a window
    /// later), live and without [`Parity::finish`], a control delivery the candidate never made is `Missing` (busrt
    /// lacks it) and a candidate delivery the control never made is `Extra` (the legacy path
    /// lacks it). `None` waits until `finish`.
    pub missing_after: Option<std::time::Duration>,
}

/// How long a delivery waits for the other side's before it counts as missing, by default.
pub const DEFAULT_MISSING_AFTER: std::time::Duration = crate::config::DEFAULT_PARITY_WINDOW;

/// Expired event ids remembered per subscriber, so a very late delivery is not counted again.
const MAX_EXPIRED: usize = 10_000;

impl Default for ParityConfig {
    fn default() -> Self {
        Self {
            ignore_fields: Vec::new(),
            normalize: None,
            sample_percent: 100,
            max_reports: 1000,
            aa: false,
            missing_after: Some(DEFAULT_MISSING_AFTER),
        }
    }
}

impl std::fmt::Debug for ParityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParityConfig")
            .field("ignore_fields", &self.ignore_fields)
            .field("normalize", &self.normalize.is_some())
            .field("sample_percent", &self.sample_percent)
            .finish()
    }
}

/// What kind of difference was found.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MismatchKind {
    /// The control (legacy) path delivered it; the candidate (busrt) path never did, or not
    /// within `missing_after`.
    Missing,
    /// The candidate (busrt) path delivered it; the control (legacy) path never did, or not
    /// within `missing_after`.
    Extra,
    /// Both delivered it, in a different order relative to the events before it.
    Reordered,
    /// Both delivered it, with a field that differs (the first one found).
    Field {
        /// Dotted path of the field.
        field: String,
        /// Its value on the control path.
        control: Value,
        /// Its value on the candidate path.
        candidate: Value,
    },
}

/// One difference, with context.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Mismatch {
    /// The subscriber that saw the difference.
    pub subscriber: String,
    /// The event.
    pub event_id: String,
    /// Its type (`process`, `network`, ...).
    pub event_type: String,
    #[serde(flatten)]
    /// What differed.
    pub kind: MismatchKind,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ParityReport {
    /// Deliveries compared.
    pub compared: u64,
    /// Deliveries that matched.
    pub matched: u64,
    /// Differences found (all of them, even beyond `max_reports`).
    pub mismatch_count: u64,
    /// The differences kept (at most `max_reports`).
    pub mismatches: Vec<Mismatch>,
}

impl ParityReport {
    /// True if nothing differed.
    pub fn is_clean(&self) -> bool {
        self.mismatch_count == 0
    }
}

#[derive(Default)]
struct PerSubscriber {
    /// Control deliveries not yet seen on the candidate, by event id: (order, age generation,
    /// envelope).
    pending: HashMap<String, (u64, u32, Envelope)>,
    next_order: u64,
    /// Order of the last matched control delivery.
    last_matched: Option<u64>,
    /// Candidate deliveries that arrived before their control.
    early: Vec<(u32, Envelope)>,
    /// Ids already reported as missing or extra by expiry (bounded), so a late arrival is
    /// not reported a second time.
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
}

impl PerSubscriber {
    fn note_expired(&mut self, id: String) {
        if self.expired_order.len() >= MAX_EXPIRED {
            if let Some(old) = self.expired_order.pop_front() {
                self.expired.remove(&old);
            }
        }
        self.expired.insert(id.clone());
        self.expired_order.push_back(id);
    }
}

/// The engine. Cheap to share; every method takes `&self`.
pub struct Parity {
    config: ParityConfig,
    enabled: AtomicBool,
    state: Mutex<BTreeMap<String, PerSubscriber>>,
    reports: Mutex<Vec<Mismatch>>,
    /// Since the last `finish`.
    compared: AtomicU64,
    matched: AtomicU64,
    mismatches: AtomicU64,
    /// Since the engine was made (for the statistics).
    total_compared: AtomicU64,
    total_mismatches: AtomicU64,
    /// Deliveries that waited longer than `missing_after` (counted in the mismatches too).
    total_expired: AtomicU64,
    /// Ages are counted in generations of half the window since `base`: each delivery
    /// waiting for the other side carries the generation it was recorded in, so recording
    /// costs no clock arithmetic beyond one `Instant::now`, and expiry is one scan per half
    /// window. A delivery expires between one and one and a half windows after it was made.
    base: Instant,
    /// The last generation expiry ran for.
    swept: std::sync::atomic::AtomicU32,
}

fn json(env: &Envelope) -> Value {
    Codec::new(CodecKind::Json, usize::MAX)
        .encode(env)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn remove_path(v: &mut Value, path: &str) {
    let mut parts = path.split('.').peekable();
    let mut cur = v;
    while let Some(p) = parts.next() {
        let Value::Object(map) = cur else { return };
        if parts.peek().is_none() {
            map.remove(p);
            return;
        }
        match map.get_mut(p) {
            Some(next) => cur = next,
            None => return,
        }
    }
}

/// The first path where two JSON values differ.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<(String, Value, Value)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(va, vb, &sub) {
                    return Some(d);
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some((path.to_owned(), a.clone(), b.clone())),
    }
}

impl Parity {
    /// An engine that records from the start (switch it off with `set_enabled`).
    pub fn new(config: ParityConfig) -> Self {
        Self {
            config,
            enabled: AtomicBool::new(true),
            state: Mutex::new(BTreeMap::new()),
            reports: Mutex::new(Vec::new()),
            compared: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            total_compared: AtomicU64::new(0),
            total_mismatches: AtomicU64::new(0),
            total_expired: AtomicU64::new(0),
            base: Instant::now(),
            swept: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Reports what has waited longer than `missing_after` for the other side, as of `now`:
    /// control deliveries as `Missing`, candidate deliveries as `Extra`. The engine does this by
    /// itself as it records and whenever its counters are read; call it to check at a given
    /// time (a test's clock, say). Returns how many expired.
    pub fn expire(&self, now: Instant) -> u64 {
        let generation = self.generation(now);
        self.swept.fetch_max(generation, Relaxed);
        self.expire_before(generation)
    }

    /// The age generation of `now` (0 without a window).
    fn generation(&self, now: Instant) -> u32 {
        let Some(window) = self.config.missing_after else {
            return 0;
        };
        let half = (window / 2)
            .max(std::time::Duration::from_millis(1))
            .as_nanos();
        (now.saturating_duration_since(self.base).as_nanos() / half).min(u32::MAX as u128) as u32
    }

    /// Reports what was recorded three or more generations before `generation` (at least a
    /// window ago).
    fn expire_before(&self, generation: u32) -> u64 {
        if self.config.missing_after.is_none() || generation < 3 {
            return 0;
        }
        let limit = generation - 3;
        let mut found = Vec::new();
        {
            let mut state = self.state.lock();
            for (subscriber, s) in state.iter_mut() {
                let old: Vec<String> = s
                    .pending
                    .iter()
                    .filter(|(_, (_, g, _))| *g <= limit)
                    .map(|(id, _)| id.clone())
                    .collect();
                let mut missing: Vec<(u64, Envelope)> = Vec::new();
                for id in old {
                    if let Some((order, _, env)) = s.pending.remove(&id) {
                        s.note_expired(id);
                        missing.push((order, env));
                    }
                }
                missing.sort_by_key(|(order, _)| *order);
                for (_, env) in missing {
                    found.push((subscriber.clone(), env, MismatchKind::Missing));
                }
                let (old, young): (Vec<_>, Vec<_>) =
                    s.early.drain(..).partition(|(g, _)| *g <= limit);
                s.early = young;
                for (_, env) in old {
                    s.note_expired(env.event_id.clone());
                    found.push((subscriber.clone(), env, MismatchKind::Extra));
                }
            }
        }
        let n = found.len() as u64;
        self.total_expired.fetch_add(n, Relaxed);
        for (subscriber, env, kind) in found {
            self.report(&subscriber, &env, kind);
        }
        n
    }

    /// The generation now; runs expiry once per generation.
    fn tick(&self) -> u32 {
        if self.config.missing_after.is_none() {
            return 0;
        }
        let generation = self.generation(Instant::now());
        let swept = self.swept.load(Relaxed);
        if generation > swept
            && self
                .swept
                .compare_exchange(swept, generation, Relaxed, Relaxed)
                .is_ok()
        {
            self.expire_before(generation);
        }
        generation
    }

    /// Deliveries reported because the other side's did not come within `missing_after`.
    pub fn expired(&self) -> u64 {
        self.tick();
        self.total_expired.load(Relaxed)
    }

    /// What it compares and how much.
    pub fn config(&self) -> &ParityConfig {
        &self.config
    }

    /// The kill switch: when off, nothing is recorded or compared.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
        if !on {
            self.state.lock().clear();
        }
    }

    /// Whether the engine records.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Whether this envelope's sticky key is in the sample.
    pub fn sampled(&self, env: &Envelope) -> bool {
        if self.config.sample_percent >= 100 {
            return true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        env.publisher_id.hash(&mut h);
        env.event.pid().hash(&mut h);
        (h.finish() % 100) < u64::from(self.config.sample_percent)
    }

    fn active(&self, env: &Envelope) -> bool {
        self.is_enabled() && self.sampled(env)
    }

    /// Records a delivery on the control path.
    pub fn record_control(&self, subscriber: &str, env: &Envelope) {
        if !self.active(env) {
            return;
        }
        let generation = self.tick();
        let mut state = self.state.lock();
        let s = state.entry(subscriber.to_owned()).or_default();
        if s.expired.contains(&env.event_id) {
            // Its candidate was reported extra already: too late to match.
            return;
        }
        let order = s.next_order;
        s.next_order += 1;
        // A candidate that came first (possible with concurrent paths) is matched now.
        if let Some(i) = s.early.iter().position(|(_, e)| e.event_id == env.event_id) {
            let (_, candidate) = s.early.remove(i);
            s.last_matched = Some(order);
            drop(state);
            self.compare(subscriber, env, &candidate);
            return;
        }
        s.pending
            .insert(env.event_id.clone(), (order, generation, env.clone()));
    }

    /// Records a delivery on the candidate path.
    pub fn record_candidate(&self, subscriber: &str, env: &Envelope) {
        if !self.active(env) {
            return;
        }
        let generation = self.tick();
        let mut state = self.state.lock();
        let s = state.entry(subscriber.to_owned()).or_default();
        let Some((order, _, control)) = s.pending.remove(&env.event_id) else {
            if s.expired.contains(&env.event_id) {
                // Reported missing already: arriving this late does not undo that.
                return;
            }
            s.early.push((generation, env.clone()));
            return;
        };
        let reordered = s.last_matched.is_some_and(|last| order < last);
        s.last_matched = Some(s.last_matched.map_or(order, |l| l.max(order)));
        drop(state);
        if reordered {
            self.report(subscriber, env, MismatchKind::Reordered);
        } else {
            self.compare(subscriber, &control, env);
        }
    }

    fn compare(&self, subscriber: &str, control: &Envelope, candidate: &Envelope) {
        self.compared.fetch_add(1, Relaxed);
        self.total_compared.fetch_add(1, Relaxed);
        let (mut a, mut b) = (control.clone(), candidate.clone());
        if let Some(n) = &self.config.normalize {
            n(&mut a);
            n(&mut b);
        }
        if a == b && self.config.ignore_fields.is_empty() {
            self.matched.fetch_add(1, Relaxed);
            return;
        }
        let (mut ja, mut jb) = (json(&a), json(&b));
        for f in &self.config.ignore_fields {
            remove_path(&mut ja, f);
            remove_path(&mut jb, f);
        }
        match first_difference(&ja, &jb, "") {
            None => {
                self.matched.fetch_add(1, Relaxed);
            }
            Some((field, control, candidate)) => self.report(
                subscriber,
                &a,
                MismatchKind::Field {
                    field,
                    control,
                    candidate,
                },
            ),
        }
    }

    fn report(&self, subscriber: &str, env: &Envelope, kind: MismatchKind) {
        self.mismatches.fetch_add(1, Relaxed);
        self.total_mismatches.fetch_add(1, Relaxed);
        tracing::warn!(subscriber, event_id = %env.event_id, ?kind, "parity mismatch");
        let mut reports = self.reports.lock();
        if reports.len() < self.config.max_reports {
            reports.push(Mismatch {
                subscriber: subscriber.to_owned(),
                event_id: env.event_id.clone(),
                event_type: env.event.event_type().to_owned(),
                kind,
            });
        }
    }

    /// Comparisons and mismatches since the engine was made: (compared, mismatches).
    pub fn totals(&self) -> (u64, u64) {
        self.tick();
        (
            self.total_compared.load(Relaxed),
            self.total_mismatches.load(Relaxed),
        )
    }

    /// Reports since the last `finish`, without closing anything that is still pending.
    pub fn report_so_far(&self) -> ParityReport {
        self.tick();
        ParityReport {
            compared: self.compared.load(Relaxed),
            matched: self.matched.load(Relaxed),
            mismatch_count: self.mismatches.load(Relaxed),
            mismatches: self.reports.lock().clone(),
        }
    }

    /// Events recorded on one side and still waiting for the other.
    pub fn pending(&self) -> usize {
        self.tick();
        self.state
            .lock()
            .values()
            .map(|s| s.pending.len() + s.early.len())
            .sum()
    }

    /// Closes the comparison window: what the control delivered and the candidate did not
    /// is `Missing`; what only the candidate delivered is `Extra`. Returns the window's report
    /// and starts a new window.
    pub fn finish(&self) -> ParityReport {
        let state = std::mem::take(&mut *self.state.lock());
        for (subscriber, s) in state {
            let mut missing: Vec<_> = s.pending.into_values().collect();
            missing.sort_by_key(|(order, _, _)| *order);
            for (_, _, env) in missing {
                self.report(&subscriber, &env, MismatchKind::Missing);
            }
            let mut seen = HashSet::new();
            for (_, env) in s.early {
                if seen.insert(env.event_id.clone()) {
                    self.report(&subscriber, &env, MismatchKind::Extra);
                }
            }
        }
        let report = self.report_so_far();
        self.compared.store(0, Relaxed);
        self.matched.store(0, Relaxed);
        self.mismatches.store(0, Relaxed);
        self.reports.lock().clear();
        report
    }
}

/// Pass or fail, with every reason it failed: the verdict `busbridge parity` prints, for
/// any set of parity results (a live bus's, a replay's, RPC answers, counts).
///
/// ```
/// use busbridge::parity::{ParityReport, Verdict};
/// let clean = ParityReport { compared: 10, matched: 10, ..Default::default() };
/// let empty = ParityReport::default();
/// let v = Verdict::new().report("local", &clean).report("remote", &empty);
/// assert!(!v.passed());
/// assert_eq!(v.reasons, ["remote: nothing was compared"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    /// Why it failed; empty when it passed.
    pub reasons: Vec<String>,
}

impl Verdict {
    /// A verdict with nothing checked yet (passing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }

    /// A report passes when it compared something and found no mismatch.
    pub fn report(mut self, name: &str, r: &ParityReport) -> Self {
        if r.compared == 0 {
            self.reasons.push(format!("{name}: nothing was compared"));
        }
        if !r.is_clean() {
            self.reasons
                .push(format!("{name}: {} mismatches", r.mismatch_count));
        }
        self
    }

    /// Compared answers (RPC, for example) pass when there were some and none differed.
    pub fn answers(mut self, name: &str, compared: u64, mismatches: &[String]) -> Self {
        if compared == 0 {
            self.reasons.push(format!("{name}: nothing was compared"));
        }
        for m in mismatches {
            self.reasons.push(format!("{name}: {m}"));
        }
        self
    }

    /// A count passes when it is what was expected.
    pub fn count(mut self, name: &str, got: u64, want: u64) -> Self {
        if got != want {
            self.reasons.push(format!("{name}: {got}, expected {want}"));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CollectionEvent, NetworkEvent};

    fn env(i: u32) -> Envelope {
        Envelope::new(
            CollectionEvent::Network(NetworkEvent {
                connection_id: format!("c{i}"),
                source_addr: "a".into(),
                dest_addr: "b".into(),
                protocol: "tcp".into(),
                state: "s".into(),
                pid: Some(i),
                bytes_sent: 1,
                bytes_received: 2,
                timestamp: std::time::SystemTime::UNIX_EPOCH,
            }),
            "corr",
            "pub",
        )
    }

    fn kinds(r: &ParityReport) -> Vec<&MismatchKind> {
        r.mismatches.iter().map(|m| &m.kind).collect()
    }

    #[test]
    fn what_waits_past_the_window_is_reported_live_once() {
        let window = std::time::Duration::from_secs(5);
        let p = Parity::new(ParityConfig {
            missing_after: Some(window),
            ..Default::default()
        });
        let (lost, early) = (env(1), env(2));
        p.record_control("s", &lost);
        p.record_candidate("s", &early);
        let start = Instant::now();
        assert_eq!(p.expire(start), 0, "not yet");
        assert_eq!(p.expire(start + window + window), 2);
        let kinds: Vec<_> = p
            .report_so_far()
            .mismatches
            .into_iter()
            .map(|m| m.kind)
            .collect();
        assert_eq!(kinds, [MismatchKind::Missing, MismatchKind::Extra]);
        // Arriving after being reported does not count again, at expiry or at finish.
        p.record_candidate("s", &lost);
        p.record_control("s", &early);
        assert_eq!(p.expire(start + window * 4), 0);
        assert_eq!(p.finish().mismatch_count, 2);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn identical_paths_match() {
        let p = Parity::new(ParityConfig::default());
        for i in 0..10 {
            let e = env(i);
            p.record_control("s", &e);
            p.record_candidate("s", &e);
        }
        let r = p.finish();
        assert!(r.is_clean());
        assert_eq!((r.compared, r.matched), (10, 10));
    }

    #[test]
    fn dropped_field_is_named() {
        let p = Parity::new(ParityConfig::default());
        let a = env(1);
        let mut b = a.clone();
        if let CollectionEvent::Network(n) = &mut b.event {
            n.bytes_received = 0;
        }
        p.record_control("s", &a);
        p.record_candidate("s", &b);
        let r = p.finish();
        assert!(
            matches!(kinds(&r)[..], [MismatchKind::Field { field, .. }] if field == "event.Network.bytes_received")
        );
    }

    #[test]
    fn reordered_missing_extra() {
        let p = Parity::new(ParityConfig::default());
        let (a, b, c, x) = (env(1), env(2), env(3), env(9));
        for e in [&a, &b, &c] {
            p.record_control("s", e);
        }
        p.record_candidate("s", &b);
        p.record_candidate("s", &a); // a after b: reordered
        p.record_candidate("s", &x); // never in control: extra
        let r = p.finish(); // c: missing
        assert_eq!(
            kinds(&r),
            vec![
                &MismatchKind::Reordered,
                &MismatchKind::Missing,
                &MismatchKind::Extra
            ]
        );
        assert_eq!(r.mismatches[1].event_id, c.event_id);
    }

    #[test]
    fn ignore_fields_and_kill_switch() {
        let p = Parity::new(ParityConfig {
            ignore_fields: vec!["correlation_id".into()],
            ..Default::default()
        });
        let a = env(1);
        let mut b = a.clone();
        b.correlation_id = "other".into();
        p.record_control("s", &a);
        p.record_candidate("s", &b);
        assert!(p.finish().is_clean());
        p.set_enabled(false);
        p.record_control("s", &env(2));
        assert!(p.finish().is_clean(), "nothing recorded while off");
    }

    #[test]
    fn sampling_is_sticky() {
        let p = Parity::new(ParityConfig {
            sample_percent: 50,
            ..Default::default()
        });
        let e = env(7);
        let first = p.sampled(&e);
        for _ in 0..10 {
            assert_eq!(p.sampled(&e.clone()), first);
        }
    }
}
