//! The bridge protocol as a state machine: no sockets, no clock of its own, no tasks.
//!
//! The driver ([`super::Link`]) feeds it what happens — a local publish, a frame from busrt, a
//! confirmation from the broker, a deadline reached — with `now` passed in, and carries out
//! what it asks for: [`Output::Deliver`] (hand an envelope to the core) and
//! [`Output::Transmit`] (publish a frame). Timers are a deadline ([`Protocol::poll_timeout`])
//! and a call when it is reached ([`Protocol::handle_timeout`]). The same machine runs in tests
//! on a simulated clock between simulated bridges, with frames lost, duplicated and reordered.
//!
//! Two things come back from busrt that look alike and are kept apart by name:
//! - a **loop**: our own event relayed back by another sender (a bridge of bridges). It is
//!   dropped and counted (`bridge_echo_suppressed`).
//! - a **return**: our own event delivered back to us by the broker, which may still be
//!   *owed* a local delivery (busrt is the route) or a parity comparison. The owed returns are
//!   the ledger that makes phase switches lossless and order-preserving.
//!
//! Decision table for a local publish:
//!
//! | phase | returns owed | local subscribers get it | sent to busrt | owed on return |
//! |---|---|---|---|---|
//! | any | not listening yet | now | if the phase uses busrt | nothing |
//! | 0, 1 | none | now | in phase 1 | a comparison, if comparing |
//! | 0, 1 | some | on return | yes | delivery (+ comparison) |
//! | 2–4 | any | on return | yes | delivery (+ comparison) |
//!
//! "Listening" means the bridge is subscribed to the event topics, which it is from the bus's
//! first local subscriber on: before that nothing could come back to deliver.

use crate::bus::Route;
use crate::codec::{Codec, Envelope};
use crate::phase::Phase;
use crate::sequence::{Accepted, InOrder};
use crate::stats::Stats;
use crate::topic::BusrtTopic;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Topic on which an idle origin announces the highest sequence number it has sent.
pub const HEARTBEAT_TOPIC: &str = "control.bridge.heartbeat";
/// Topic on which a receiver asks an origin to send a gap again.
pub const RESEND_TOPIC: &str = "control.bridge.resend";
/// Topic on which a resuming subscriber asks every origin for its highest sequence number
/// (answered with a heartbeat at once), so a tail it missed while down is found even if the
/// origin is idle.
pub const HELLO_TOPIC: &str = "control.bridge.hello";
// Status requests and answers: the driver and the broker answer them, the protocol ignores
// them.
pub use crate::topic::{STATUS_REPLY_TOPIC, STATUS_TOPIC};

/// Missing sequence numbers remembered per origin (to accept them if they come late).
const MAX_MISSING: usize = 100_000;
/// Most events held behind gaps per origin before the wait is given up.
const MAX_HELD: usize = 100_000;
/// Most ranges asked for again in one retry.
const MAX_RETRY_RANGES: usize = 64;

/// "`origin` has sent up to `highest`."
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Heartbeat {
    origin: String,
    highest: u64,
}

/// "`origin` is resuming: tell me how far you have got."
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hello {
    origin: String,
}

/// "Send `from..=to` of `origin` again."
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResendRequest {
    origin: String,
    from: u64,
    to: u64,
}

/// What an own event still owes when it returns from busrt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    /// Deliver it to local subscribers (busrt is the route).
    pub deliver: bool,
    /// Record it as the parity candidate.
    pub compare: bool,
}

/// Settings of one bridge's protocol.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This bus instance's origin id (unique).
    pub origin: String,
    /// The busrt client name (what the broker reports as a frame's primary sender).
    pub name: String,
    /// Encodes and decodes frames.
    pub codec: Codec,
    /// Most hops an envelope may have travelled.
    pub hop_limit: u32,
    /// How long events behind a sequence gap wait for the resend.
    pub gap_wait: Duration,
    /// How long a sender is idle before it announces its highest sequence number.
    pub heartbeat: Duration,
    /// Recently sent events kept to answer resend requests.
    pub replay: usize,
    /// A durable subscriber resuming after these positions: origins it has not heard of are
    /// expected from their first event. `None` joins every stream live.
    pub resume: Option<Vec<(String, u64)>>,
}

/// Entries of the replay buffer reserved up front, at most (64 bytes each).
const REPLAY_RESERVE: usize = 1 << 17;

/// What the driver must do.
#[derive(Debug)]
// Outputs live briefly in one queue; boxing the envelope would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Hand an envelope to the core.
    Deliver(Delivery),
    /// Publish frames.
    Transmit(Transmit),
}

/// An envelope for the core.
#[derive(Debug)]
pub enum Delivery {
    /// Our own event, returned; do what is owed, then call [`Protocol::settle`] with its
    /// sequence number.
    Returned {
        /// The event (boxed: it moves through several queues on its way).
        env: Box<Envelope>,
        /// What it owes.
        owed: Owed,
    },
    /// Another origin's event, to deliver to local subscribers.
    Remote(Box<Envelope>),
    /// Our own event, returned, owing nothing (no local subscriber, no comparison): only
    /// call [`Protocol::settle`] with this sequence number. It was not decoded.
    Settle(u64),
    /// Our own event that busrt refused (see [`Protocol::send_failed`]): do locally what its
    /// return owed, then call [`Protocol::settle`] with its sequence number.
    Refused {
        /// The event, from the replay buffer.
        env: Box<Envelope>,
        /// What it owes.
        owed: Owed,
    },
}

impl Delivery {
    /// True for an event that came from busrt (counted in `bridge_received` once carried
    /// out), false for one busrt refused.
    pub fn received(&self) -> bool {
        !matches!(self, Delivery::Refused { .. })
    }
}

/// An event as a stream holds it: decoded, or only numbered (an own event that owes nothing
/// needs no decoding: its header says all the stream needs).
#[derive(Debug)]
enum Arrival {
    Event(Box<Envelope>),
    Bare(u64),
}

/// Frames to publish.
#[derive(Debug, PartialEq)]
pub enum Transmit {
    /// A control message: heartbeat, hello or resend request.
    Control {
        /// One of the `*_TOPIC` constants.
        topic: &'static str,
        /// JSON body.
        body: Vec<u8>,
    },
    /// Events sent again from the replay buffer, in order: (busrt topic, frame).
    Resend(Vec<(BusrtTopic, Bytes)>),
}

/// One origin's stream as this bridge receives it.
struct Origin {
    name: String,
    stream: InOrder<Arrival>,
    /// Since when events have been held behind a gap.
    holding_since: Option<Instant>,
    /// A resend was asked for: when first, when last. A request or its answer can be lost
    /// (a broker restarting), so it is asked again until the gap wait has passed.
    asked: Option<(Instant, Instant)>,
}

impl Origin {
    fn new(name: &str, after: Option<u64>) -> Self {
        Self {
            name: name.to_owned(),
            stream: match after {
                Some(p) => InOrder::after(p, MAX_MISSING),
                None => InOrder::new(MAX_MISSING),
            },
            holding_since: None,
            asked: None,
        }
    }

    /// An origin first heard of now: a durable subscriber expects it from its first event,
    /// others join its stream live.
    fn heard_of(name: &str, durable: bool) -> Self {
        Self::new(name, durable.then_some(0))
    }

    fn note_asked(&mut self, now: Instant) {
        let first = self.asked.map_or(now, |(first, _)| first);
        self.asked = Some((first, now));
    }
}

/// The bridge protocol of one bus. See the module docs.
pub struct Protocol {
    s: Settings,
    stats: Arc<Stats>,
    durable: bool,
    // Send side.
    seq: u64,
    owed: BTreeMap<u64, Owed>,
    owed_deliveries: usize,
    listening: bool,
    replay: VecDeque<(u64, BusrtTopic, Bytes)>,
    /// Highest sequence handed to busrt, and when.
    handed: u64,
    handed_at: Option<Instant>,
    /// Highest sequence announced by heartbeat.
    announced: u64,
    /// Highest sequence busrt confirmed (what a hello is answered with).
    confirmed: u64,
    // Receive side.
    origins: HashMap<String, Origin>,
    /// Events a push made ready, kept between pushes (empty in between).
    ready: Vec<Arrival>,
    shadow_remote: u64,
    out: VecDeque<Output>,
}

impl Protocol {
    /// A protocol with nothing sent or received; counters go to `stats`.
    pub fn new(settings: Settings, stats: Arc<Stats>) -> Self {
        // Nothing to resume from: join live, like any bus.
        let resume = settings.resume.clone().unwrap_or_default();
        // Room for the whole replay buffer (address space: pages are touched as it fills): a
        // growing buffer copies every kept entry into fresh memory each time it doubles, on
        // the publishing path.
        let replay = VecDeque::with_capacity(settings.replay.min(REPLAY_RESERVE));
        let durable = !resume.is_empty();
        let origins = resume
            .iter()
            .map(|(o, p)| (o.clone(), Origin::new(o, Some(*p))))
            .collect();
        Self {
            s: settings,
            stats,
            durable,
            seq: 0,
            owed: BTreeMap::new(),
            owed_deliveries: 0,
            listening: false,
            replay,
            handed: 0,
            handed_at: None,
            announced: 0,
            confirmed: 0,
            origins,
            ready: Vec::new(),
            shadow_remote: 0,
            out: VecDeque::new(),
        }
    }

    /// This bus's origin id.
    pub fn origin(&self) -> &str {
        &self.s.origin
    }

    /// Own events sent and not yet returned (and settled).
    pub fn in_flight(&self) -> usize {
        self.owed.len()
    }

    /// Remote events seen in phase 1, which go to the shadow path only.
    pub fn shadow_remote(&self) -> u64 {
        self.shadow_remote
    }

    /// Whether the bridge listens to the event topics.
    pub fn is_listening(&self) -> bool {
        self.listening
    }

    /// The bridge now listens to the event topics. A durable subscriber's hello is returned
    /// (the body to publish on [`HELLO_TOPIC`]), for the driver to send before anything else.
    pub fn listening(&mut self) -> Option<Vec<u8>> {
        if self.listening {
            return None;
        }
        self.listening = true;
        // Our own returns are expected from the next number on: one lost at the broker is
        // then a gap (asked for again), never a return owed forever.
        let own = self.s.origin.clone();
        self.origins
            .insert(own.clone(), Origin::new(&own, Some(self.seq)));
        self.durable.then(|| self.hello_body())
    }

    /// The hello to send after a reconnection, when listening: every origin answers with how
    /// far it has got, so a tail sent while this bus was cut off is found and asked for even
    /// if its origin has gone idle since.
    pub fn reconnected(&self) -> Option<Vec<u8>> {
        self.listening.then(|| self.hello_body())
    }

    fn hello_body(&self) -> Vec<u8> {
        json(&Hello {
            origin: self.s.origin.clone(),
        })
    }

    /// Decides the route of a local publish (see the module's table), stamps the origin and,
    /// for what is sent, the next sequence number. `compare`: the legacy path's answer is
    /// being compared with busrt's. `local`: a local subscriber matches the event now.
    pub fn publish(
        &mut self,
        phase: Phase,
        compare: bool,
        local: bool,
        env: &mut Envelope,
    ) -> Route {
        env.origin.clone_from(&self.s.origin);
        let (deliver_now, send, owe) =
            if !self.listening || (phase.legacy_authoritative() && self.owed_deliveries == 0) {
                let owe = (compare && self.listening).then_some(Owed {
                    deliver: false,
                    compare: true,
                });
                (true, phase.uses_busrt(), owe)
            } else if phase.uses_busrt() || self.owed_deliveries > 0 {
                // Also in phase 0 while returns are owed: this event waits its turn behind them.
                // A return owes a delivery only if a subscriber there now matches it, as the
                // legacy router delivered only to those; it is still owed (and counted in
                // flight) without one, so a publisher cannot outrun its own returns.
                let owe = Owed {
                    deliver: local,
                    compare,
                };
                (false, true, Some(owe))
            } else {
                (true, false, None)
            };
        // Only what goes to busrt is numbered, so receivers see no false gaps.
        if send {
            self.seq += 1;
            env.seq = self.seq;
        }
        if let Some(o) = owe {
            self.owed.insert(env.seq, o);
            self.owed_deliveries += usize::from(o.deliver);
        }
        Route {
            deliver_now,
            send,
            compare: compare && !deliver_now,
        }
    }

    /// Keeps an encoded event for resend requests (call for every event that is sent).
    ///
    /// An event is kept at least until busrt confirms it, whatever the replay size (even 0):
    /// if busrt refuses it, what its return owes is done from this copy
    /// ([`send_failed`](Self::send_failed)).
    pub fn remember(&mut self, seq: u64, topic: BusrtTopic, frame: Bytes) {
        self.replay.push_back((seq, topic, frame));
        self.trim_replay();
    }

    fn trim_replay(&mut self) {
        while self.replay.len() > self.s.replay
            && self
                .replay
                .front()
                .is_some_and(|(seq, _, _)| *seq <= self.confirmed)
        {
            self.replay.pop_front();
        }
    }

    /// The sender handed events up to `highest` to busrt, the last at `at`: once it has been
    /// idle for the heartbeat interval, the highest number is announced, so a receiver that
    /// lost the tail of the stream finds out.
    ///
    /// Returns true if this armed a heartbeat deadline where there was none (the driver's
    /// timer must then look again); a deadline that only moves later needs no wake-up.
    pub fn handed(&mut self, highest: u64, at: Instant) -> bool {
        let armed = self.handed > self.announced;
        self.handed = self.handed.max(highest);
        // Idle for the heartbeat interval after the last event handed: a busy sender does not
        // announce numbers whose frames may still be on their way (a receiver would take
        // them for a lost tail).
        self.handed_at = Some(self.handed_at.map_or(at, |t| t.max(at)));
        !armed && self.handed > self.announced
    }

    /// busrt confirmed events up to `highest`.
    pub fn confirmed(&mut self, highest: u64) {
        self.confirmed = self.confirmed.max(highest);
        self.trim_replay();
    }

    /// busrt did not take event `seq` (its outbox was full, the client closed) after the
    /// publish had returned: what its return owes — the local delivery busrt was to make —
    /// is done now from the kept copy, so an accepted event is never lost locally. (Other
    /// receivers find the gap and ask for it again.) Returns false if nothing was owed.
    pub fn send_failed(&mut self, seq: u64) -> bool {
        let Some(&owed) = self.owed.get(&seq) else {
            return false;
        };
        if !owed.deliver {
            // Only a comparison was owed: busrt did not deliver it, and parity will say so.
            self.settle(seq);
            return false;
        }
        // The local delivery is done; busrt's side is not compared (it never delivered).
        let owed = Owed {
            deliver: true,
            compare: false,
        };
        let env = self
            .replay
            .iter()
            .rev()
            .find(|(s, _, _)| *s == seq)
            .and_then(|(_, _, frame)| {
                let mut last = None;
                self.s
                    .codec
                    .decode_frame_each(frame, |e| last = Some(e))
                    .ok()?;
                last
            });
        match env {
            Some(env) => {
                self.out
                    .push_back(Output::Deliver(Delivery::Refused { env, owed }));
                true
            }
            None => {
                // Kept until confirmed, so this cannot happen; settle rather than owe forever.
                tracing::error!(seq, "refused event not found in the replay buffer");
                self.settle(seq);
                false
            }
        }
    }

    /// A returned event's owed work is done (or, for an event that could not be encoded or
    /// queued, will never be: nothing will return for it).
    pub fn settle(&mut self, seq: u64) {
        if let Some(o) = self.owed.remove(&seq) {
            self.owed_deliveries -= usize::from(o.deliver);
        }
    }

    /// A message from busrt: on `topic`, from the client named `sender` (one of a client's
    /// secondary connections, `name%%…`, counts as the client itself).
    pub fn on_message(
        &mut self,
        topic: &str,
        sender: &str,
        payload: &[u8],
        phase: Phase,
        now: Instant,
    ) {
        match topic {
            RESEND_TOPIC => self.on_resend_request(payload),
            HEARTBEAT_TOPIC => self.on_heartbeat(payload, now),
            HELLO_TOPIC => self.on_hello(payload),
            STATUS_TOPIC | STATUS_REPLY_TOPIC => {}
            _ => self.on_frame(sender, payload, phase, now),
        }
    }

    /// The earliest deadline: a hold behind a gap to give up, or a heartbeat to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hold = self
            .origins
            .values()
            .filter_map(|o| o.holding_since)
            .min()
            .map(|t| t + self.s.gap_wait);
        let retry = self
            .origins
            .values()
            .filter_map(|o| o.asked)
            .map(|(_, last)| last + self.retry_interval())
            .min();
        let hold = match (hold, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let beat = self
            .handed_at
            .filter(|_| self.handed > self.announced)
            .map(|t| t + self.s.heartbeat);
        match (hold, beat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Does what is due at `now`: gives up holds that waited `gap_wait`, asks again for gaps
    /// still missing, announces the highest sequence sent.
    pub fn handle_timeout(&mut self, now: Instant, phase: Phase) {
        let expired: Vec<String> = self
            .origins
            .iter()
            .filter(|(_, o)| o.holding_since.is_some_and(|t| now >= t + self.s.gap_wait))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let ready = self.origins.get_mut(&key).map(|o| give_up(&self.stats, o));
            for env in ready.unwrap_or_default() {
                self.dispatch(env, phase);
            }
        }
        self.retry_resends(now);
        if self.handed > self.announced
            && self.handed_at.is_some_and(|t| now >= t + self.s.heartbeat)
        {
            self.announced = self.handed;
            let body = json(&Heartbeat {
                origin: self.s.origin.clone(),
                highest: self.handed,
            });
            self.transmit(HEARTBEAT_TOPIC, body);
        }
    }

    /// How often a gap still missing is asked for again.
    fn retry_interval(&self) -> Duration {
        (self.s.gap_wait / 4).max(Duration::from_millis(50))
    }

    /// Asks again for what is still missing, until the gap wait has passed since the first
    /// request.
    fn retry_resends(&mut self, now: Instant) {
        let (wait, retry) = (self.s.gap_wait, self.retry_interval());
        let mut again = Vec::new();
        for o in self.origins.values_mut() {
            let Some((first, last)) = o.asked else {
                continue;
            };
            if now < last + retry {
                continue;
            }
            let ranges = o.stream.missing_ranges(MAX_RETRY_RANGES);
            if ranges.is_empty() || now >= first + wait {
                o.asked = None;
                continue;
            }
            o.asked = Some((first, now));
            again.extend(ranges.into_iter().map(|r| (o.name.clone(), r)));
        }
        for (origin, (from, to)) in again {
            tracing::debug!(%origin, from, to, "gap still missing; asking again");
            self.request_resend(origin, from, to);
        }
    }

    /// The next thing to do, in the order it arose.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Moves everything to do into `into`, in order (one lock for many outputs).
    pub fn poll_all(&mut self, into: &mut VecDeque<Output>) {
        into.append(&mut self.out);
    }

    fn transmit(&mut self, topic: &'static str, body: Vec<u8>) {
        self.out
            .push_back(Output::Transmit(Transmit::Control { topic, body }));
    }

    fn decode_error(&self) {
        Stats::add(&self.stats.bridge_decode_errors, 1);
    }

    fn request_resend(&mut self, origin: String, from: u64, to: u64) {
        Stats::add(&self.stats.bridge_resend_requests, 1);
        self.transmit(RESEND_TOPIC, json(&ResendRequest { origin, from, to }));
    }

    /// Answers a resend request for this origin from the replay buffer; what is no longer
    /// there is counted and reported with its range.
    fn on_resend_request(&mut self, payload: &[u8]) {
        let Ok(r) = serde_json::from_slice::<ResendRequest>(payload) else {
            return self.decode_error();
        };
        if r.origin != self.s.origin || r.to < r.from {
            return;
        }
        let frames: Vec<_> = self
            .replay
            .iter()
            .filter(|(seq, _, _)| (r.from..=r.to).contains(seq))
            .map(|(_, topic, frame)| (topic.clone(), frame.clone()))
            .collect();
        let lost = (r.to - r.from + 1).saturating_sub(frames.len() as u64);
        if lost > 0 {
            Stats::add(&self.stats.bridge_resend_unavailable, lost);
            tracing::error!(
                from = r.from,
                to = r.to,
                lost,
                "events asked for are no longer in the replay buffer"
            );
        }
        if !frames.is_empty() {
            self.out
                .push_back(Output::Transmit(Transmit::Resend(frames)));
        }
    }

    /// A heartbeat from another origin: anything up to its highest that never arrived is a
    /// gap (the tail of its stream was lost), asked for again.
    fn on_heartbeat(&mut self, payload: &[u8], now: Instant) {
        let Ok(h) = serde_json::from_slice::<Heartbeat>(payload) else {
            return self.decode_error();
        };
        // Never heard of it: nothing to compare with, unless this subscriber wants every
        // origin's stream from its start. (Our own heartbeat finds a lost tail of our own
        // returns, once we have received any.)
        if self.durable && h.origin != self.s.origin && !self.origins.contains_key(&h.origin) {
            self.origins
                .insert(h.origin.clone(), Origin::new(&h.origin, Some(0)));
        }
        let Some(state) = self.origins.get_mut(&h.origin) else {
            return;
        };
        if let Some((from, to)) = state.stream.expect_up_to(h.highest) {
            state.note_asked(now);
            Stats::add(&self.stats.bridge_gaps, to - from + 1);
            tracing::warn!(origin = %h.origin, from, to, "tail of a stream missing; asking for a resend");
            self.request_resend(h.origin, from, to);
        }
    }

    /// A resuming subscriber said hello: tell it at once how far this origin has got.
    fn on_hello(&mut self, payload: &[u8]) {
        let Ok(h) = serde_json::from_slice::<Hello>(payload) else {
            return self.decode_error();
        };
        if h.origin != self.s.origin && self.confirmed > 0 {
            let body = json(&Heartbeat {
                origin: self.s.origin.clone(),
                highest: self.confirmed,
            });
            self.transmit(HEARTBEAT_TOPIC, body);
        }
    }

    /// One event frame (one envelope or a batch).
    fn on_frame(&mut self, sender: &str, payload: &[u8], phase: Phase, now: Instant) {
        let ours = is_client(sender, &self.s.name);
        if ours && self.returns_owe_nothing(payload, phase, now) {
            return;
        }
        let codec = self.s.codec;
        if let Err(e) =
            codec.decode_frame_each(payload, |env| self.on_envelope(ours, env, phase, now))
        {
            self.decode_error();
            tracing::debug!(sender, "dropped frame: {e}");
        }
    }

    /// Our own frame back from busrt, all of whose events owe nothing: they are taken in by
    /// number, without decoding. False (nothing done) if one owes something or the frame
    /// cannot be read that way; it is then decoded.
    fn returns_owe_nothing(&mut self, payload: &[u8], phase: Phase, now: Instant) -> bool {
        let Some(items) = self.s.codec.peek_frame(payload) else {
            return false;
        };
        let owes_nothing = |seq| {
            self.owed
                .get(&seq)
                .is_some_and(|o| !o.deliver && !o.compare)
        };
        if !items
            .iter()
            .all(|p| p.origin == self.s.origin && p.hops <= self.s.hop_limit && owes_nothing(p.seq))
        {
            return false;
        }
        let origin = self.s.origin.as_str();
        if !self.origins.contains_key(origin) {
            let state = Origin::heard_of(origin, self.durable);
            self.origins.insert(origin.to_owned(), state);
        }
        // The items borrow the frame, not the protocol.
        let mut ready = std::mem::take(&mut self.ready);
        for seq in items.into_iter().map(|p| p.seq) {
            let Some(state) = self.origins.get_mut(self.s.origin.as_str()) else {
                break;
            };
            let accepted = state.stream.push_into(seq, Arrival::Bare(seq), &mut ready);
            let gap = took(&self.stats, state, accepted, &mut ready, now);
            self.hand_on(gap, &mut ready, phase);
        }
        self.ready = ready;
        true
    }

    /// One decoded event; `ours` if this bridge's own client published the frame.
    fn on_envelope(&mut self, ours: bool, env: Box<Envelope>, phase: Phase, now: Instant) {
        if env.hops > self.s.hop_limit {
            return Stats::add(&self.stats.bridge_hop_limited, 1);
        }
        if env.origin == self.s.origin && !ours {
            // A loop: our own event relayed back by someone else.
            return Stats::add(&self.stats.bridge_echo_suppressed, 1);
        }
        // Looked up by reference (one hash for a known origin): the origin's name is copied
        // once, when first heard of.
        let seq = env.seq;
        let mut fresh = None;
        let state = match self.origins.get_mut(&env.origin) {
            Some(state) => state,
            None => {
                let origin = Origin::heard_of(&env.origin, self.durable);
                &mut fresh.insert((env.origin.clone(), origin)).1
            }
        };
        let mut ready = std::mem::take(&mut self.ready);
        let accepted = state.stream.push_into(seq, Arrival::Event(env), &mut ready);
        let gap = took(&self.stats, state, accepted, &mut ready, now);
        if let Some((name, origin)) = fresh {
            self.origins.insert(name, origin);
        }
        self.hand_on(gap, &mut ready, phase);
        self.ready = ready;
    }

    /// Asks for what a pushed event found missing (`gap`: origin, from, to), then dispatches
    /// what is now in order (`ready`, left empty).
    fn hand_on(&mut self, gap: Option<(String, u64, u64)>, ready: &mut Vec<Arrival>, phase: Phase) {
        if let Some((origin, from, to)) = gap {
            self.request_resend(origin, from, to);
        }
        for item in ready.drain(..) {
            self.dispatch(item, phase);
        }
    }

    /// Hands one accepted event on as the phase says.
    ///
    /// `bridge_received` counts an event once nothing is left to do for it: here if the
    /// protocol is done with it, else by the driver once it carried out its [`Delivery`] (so
    /// that code waiting for the counter finds the event delivered).
    fn dispatch(&mut self, item: Arrival, phase: Phase) {
        let env = match item {
            Arrival::Bare(seq) => {
                Stats::add(&self.stats.bridge_returns_undecoded, 1);
                return self.out.push_back(Output::Deliver(Delivery::Settle(seq)));
            }
            Arrival::Event(env) => env,
        };
        if env.origin == self.s.origin {
            if let Some(&owed) = self.owed.get(&env.seq) {
                return self
                    .out
                    .push_back(Output::Deliver(Delivery::Returned { env, owed }));
            }
        } else if phase >= Phase::Topics {
            return self.out.push_back(Output::Deliver(Delivery::Remote(env)));
        } else {
            self.shadow_remote += 1;
        }
        Stats::add(&self.stats.bridge_received, 1);
    }
}

/// Accounts for one event pushed into `state`'s stream (`None`: a duplicate): filled gaps
/// counted, a hold behind a gap timed (and given up when too much is held, its events added to
/// `ready`), a new gap reported and returned as (origin, from, to), to ask for.
fn took(
    stats: &Stats,
    state: &mut Origin,
    accepted: Option<Accepted>,
    ready: &mut Vec<Arrival>,
    now: Instant,
) -> Option<(String, u64, u64)> {
    let Some(Accepted { gap, filled }) = accepted else {
        Stats::add(&stats.bridge_duplicates, 1);
        return None;
    };
    if filled {
        Stats::add(&stats.bridge_gaps_filled, 1);
    }
    if state.stream.held() > MAX_HELD {
        ready.extend(give_up(stats, state));
    }
    state.holding_since = match (state.stream.held(), state.holding_since) {
        (0, _) => None,
        (_, Some(t)) => Some(t),
        (_, None) => Some(now),
    };
    gap.map(|(from, to)| {
        state.note_asked(now);
        Stats::add(&stats.bridge_gaps, to - from + 1);
        tracing::warn!(origin = %state.name, from, to, "sequence gap; asking for a resend");
        (state.name.clone(), from, to)
    })
}

/// Stops waiting for an origin's gaps: they are lost (counted), held events are released.
fn give_up(stats: &Stats, state: &mut Origin) -> Vec<Arrival> {
    let (lost, ready) = state.stream.give_up();
    state.holding_since = None;
    state.asked = None;
    if lost > 0 {
        Stats::add(&stats.bridge_gaps_lost, lost);
        tracing::error!(origin = %state.name, lost, "sequence gap not filled in time; events lost");
    }
    ready
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Whether busrt client `sender` is `name` or one of its secondary connections (`name%%…`).
/// busrt's `primary_sender` finds the same by searching each sender for the separator.
fn is_client(sender: &str, name: &str) -> bool {
    sender
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(busrt::SECONDARY_SEP))
}

#[cfg(test)]
mod tests {
    use super::is_client;

    #[test]
    fn a_secondary_connection_is_its_client() {
        assert!(is_client("agent", "agent"));
        assert!(is_client("agent%%rpc", "agent"));
        assert!(!is_client("agent2", "agent"));
        assert!(!is_client("agen", "agent"));
        assert!(!is_client("other%%agent", "agent"));
    }
}
