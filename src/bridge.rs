//! The bridge loop: the one place where events cross between the local router and busrt.
//!
//! Outbound, a local publish is stamped with this bus's origin id and sequence number, routed
//! as the phase says (`Link::publish`), and sent to its topic. Inbound, every frame on the
//! event topics is decoded and checked in this order: size and format (bad frames are counted
//! and dropped), hop limit, echo (our origin relayed by another sender), duplicate or gap (by
//! per-origin sequence), then delivered or compared as the phase says.
//!
//! | phase | local publish | own event back from busrt | remote event |
//! |---|---|---|---|
//! | 0 | router | — (nothing sent) | ignored |
//! | 1 | router (control) + mirror | candidate, compared | shadow only (counted) |
//! | 2, 3 | legacy shadow control; sent | delivered (served), compared | delivered |
//! | 4 | sent | delivered | delivered |
//!
//! Switching phase never loses or duplicates an event in flight: an event sent for delivery by
//! echo is delivered by its echo whatever the phase then, and while such echoes are owed a
//! legacy-routed publish also waits for its echo, so per-subscriber order holds.

use crate::broker::{Broker, BrokerError};
use crate::bus::{BusError, Core, CoreOptions};
use crate::client::{Ack, AsyncClient, ClientError, ClientOptions, Message, Publisher, QoS};
use crate::codec::{Codec, CodecKind, Envelope};
use crate::config::Config;
use crate::durable::Positions;
use crate::parity::ParityConfig;
use crate::phase::Phase;
use crate::sequence::{InOrder, Pushed};
use crate::stats::Stats;
use crate::topic::topic_for_event;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Default most hops an envelope may have travelled.
pub const DEFAULT_HOP_LIMIT: u32 = 8;

/// Missing sequence numbers remembered per origin (to accept them if they come late).
const MAX_MISSING: usize = 100_000;

/// How long events behind a sequence gap wait for the resend before they are delivered
/// anyway (and the gap counted as lost), unless `bus.gap_wait` says otherwise.
pub const GAP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Most events held behind gaps per origin before the wait is given up.
const MAX_HELD: usize = 100_000;

/// One origin's stream as this bus receives it.
struct Origin {
    name: String,
    stream: InOrder<Envelope>,
    /// Since when events have been held behind a gap.
    holding_since: Option<tokio::time::Instant>,
}

impl Origin {
    /// An origin first heard of: a durable subscriber expects it from its first event, any
    /// other bus from wherever it joins the stream.
    fn first_heard(name: &str, durable: bool) -> Self {
        if durable {
            Self::after(name, 0)
        } else {
            Self {
                name: name.to_owned(),
                stream: InOrder::new(MAX_MISSING),
                holding_since: None,
            }
        }
    }

    /// Resuming after `position` (a durable subscriber's stored position).
    fn after(name: &str, position: u64) -> Self {
        Self {
            name: name.to_owned(),
            stream: InOrder::after(position, MAX_MISSING),
            holding_since: None,
        }
    }
}

type Origins = HashMap<String, Origin>;

/// Topic on which an idle origin announces the highest sequence number it has sent.
pub const HEARTBEAT_TOPIC: &str = "control.bridge.heartbeat";

/// How long a sender is idle before it announces its highest sequence number.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);

/// "`origin` has sent up to `highest`."
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    origin: String,
    highest: u64,
}

/// Resent frames in flight before their acknowledgements are awaited.
const RESEND_WINDOW: usize = 256;

/// Topic on which a receiver asks an origin to send a gap again.
pub const RESEND_TOPIC: &str = "control.bridge.resend";

/// Topic on which a resuming subscriber asks every origin for its highest sequence number
/// (answered with a heartbeat at once), so a tail it missed while down is found even if the
/// origin is idle.
pub const HELLO_TOPIC: &str = "control.bridge.hello";

/// "`origin` is resuming: tell me how far you have got."
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Hello {
    origin: String,
}

/// "Send `from..=to` of `origin` again."
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ResendRequest {
    origin: String,
    from: u64,
    to: u64,
}

/// Sends queued events: batches what is queued now (up to `batch_max`, one topic a frame, so
/// an idle bus sends each event at once), keeps up to `window` acknowledgements in flight.
async fn sender(
    link: std::sync::Weak<Link>,
    mut queue: tokio::sync::mpsc::Receiver<Outgoing>,
    publisher: Publisher,
    qos: QoS,
    codec: Codec,
    opts: SendOptions,
    stats: Arc<Stats>,
) {
    let mut carry: Option<Outgoing> = None;
    let (mut highest_sent, mut last_beat) = (0u64, 0u64);
    let mut in_flight: VecDeque<(Vec<u64>, Ack)> = VecDeque::new();
    loop {
        let first = match carry.take() {
            Some(o) => o,
            None => {
                // Nothing queued: settle what is in flight before sleeping on the queue.
                if queue.is_empty() {
                    while let Some((seqs, ack)) = in_flight.pop_front() {
                        finish(&link, &stats, seqs, ack.await);
                    }
                }
                // Idle: tell receivers the highest sequence sent, so one that missed the tail of
                // a stream (lost at a broker while it reconnected) notices and asks for it.
                let next = if highest_sent > last_beat {
                    match tokio::time::timeout(HEARTBEAT, queue.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            if let Some(l) = link.upgrade() {
                                l.heartbeat(highest_sent).await;
                            }
                            last_beat = highest_sent;
                            queue.recv().await
                        }
                    }
                } else {
                    queue.recv().await
                };
                match next {
                    Some(o) => o,
                    None => break,
                }
            }
        };
        let mut group = vec![first];
        let mut size = group[0].bytes.len();
        while group.len() < opts.batch_max.max(1) {
            match queue.try_recv() {
                Ok(o)
                    if o.topic == group[0].topic
                        && size + o.bytes.len() + 16 <= codec.max_size() =>
                {
                    size += o.bytes.len() + 16;
                    group.push(o);
                }
                Ok(o) => {
                    carry = Some(o);
                    break;
                }
                Err(_) => break,
            }
        }
        let topic = group[0].topic.clone();
        let seqs: Vec<u64> = group.iter().map(|o| o.seq).collect();
        highest_sent = highest_sent.max(seqs.iter().copied().max().unwrap_or(0));
        let n = group.len() as u64;
        let frame = if group.len() == 1 {
            group.pop().map(|o| o.bytes).unwrap_or_default()
        } else {
            Stats::add(&stats.bridge_batches, 1);
            codec.batch(group.into_iter().map(|o| o.bytes).collect())
        };
        // More already queued: let busrt buffer this frame; the last one of the burst flushes.
        let more = carry.is_some() || !queue.is_empty();
        match publisher.publish_pipelined(topic, frame, qos, more).await {
            Ok(ack) => {
                Stats::add(&stats.bridge_sent, n);
                in_flight.push_back((seqs, ack));
            }
            Err(e) => finish(&link, &stats, seqs, Err(e)),
        }
        while in_flight.len() >= opts.window.max(1) {
            if let Some((seqs, ack)) = in_flight.pop_front() {
                finish(&link, &stats, seqs, ack.await);
            }
        }
    }
    for (seqs, ack) in in_flight {
        finish(&link, &stats, seqs, ack.await);
    }
}

/// Accounts for one frame's outcome; a refused frame releases its events' owed echoes.
fn finish(
    link: &std::sync::Weak<Link>,
    stats: &Stats,
    seqs: Vec<u64>,
    result: Result<(), ClientError>,
) {
    let Some(link) = link.upgrade() else { return };
    match result {
        Ok(()) => {
            let high = seqs.iter().copied().max().unwrap_or(0);
            link.sent_high.fetch_max(high, Relaxed);
        }
        Err(e) => {
            Stats::add(&stats.bridge_send_errors, seqs.len() as u64);
            tracing::warn!(events = seqs.len(), "send failed: {e}");
            for seq in &seqs {
                link.forget(*seq);
            }
        }
    }
    link.sent(seqs.len());
}

/// Why a bridge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What an own event still owes when its echo comes back from busrt.
#[derive(Debug, Clone, Copy)]
struct Owed {
    /// Deliver it locally (busrt is the route).
    deliver: bool,
    /// Record it as the candidate for parity.
    compare: bool,
}

/// One encoded event on its way to busrt.
struct Outgoing {
    seq: u64,
    topic: String,
    bytes: Vec<u8>,
}

/// How the bridge sends.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    /// Most events in one busrt frame; 1 turns batching off (the default: a batch frame is
    /// not a legacy record, so legacy protobuf consumers cannot read it).
    pub batch_max: usize,
    /// Most acknowledged frames in flight at once.
    pub window: usize,
    /// Encoded events waiting for the sender; a full queue makes `publish` wait.
    pub queue: usize,
    /// Recently sent events kept to answer resend requests.
    pub replay: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            batch_max: 1,
            window: 256,
            queue: 65_536,
            replay: 100_000,
        }
    }
}

/// The live bridge of one bus.
pub struct Link {
    origin: String,
    name: String,
    seq: AtomicU64,
    codec: Codec,
    hop_limit: u32,
    outbound: tokio::sync::mpsc::Sender<Outgoing>,
    /// The last events sent (seq, busrt topic, bytes), for resend requests.
    replay: Mutex<VecDeque<(u64, String, Vec<u8>)>>,
    replay_capacity: usize,
    /// For resends and resend requests.
    publisher: Publisher,
    /// The bridge's connection state.
    state: tokio::sync::watch::Receiver<crate::client::ConnectionState>,
    /// Whether the bridge is subscribed to the event topics (from the first local subscriber
    /// on; a bus without local subscribers does not receive its own events back).
    listening: std::sync::atomic::AtomicBool,
    listen_lock: tokio::sync::Mutex<()>,
    /// Events handed to the sender and not yet confirmed (or failed).
    unsent: std::sync::atomic::AtomicUsize,
    sent_all: tokio::sync::Notify,
    qos: QoS,
    owed: Mutex<OwedEchoes>,
    /// Signalled when no echo is owed any more.
    settled: tokio::sync::Notify,
    /// Signalled whenever an owed echo is settled (room for another).
    room: tokio::sync::Notify,
    /// Most own events in flight: below the client's receive buffer, so no echo of ours can
    /// be dropped there.
    max_in_flight: usize,
    stats: Arc<Stats>,
    shadow_remote: AtomicU64,
    /// Highest sequence number busrt confirmed (what a hello is answered with).
    sent_high: AtomicU64,
    /// A durable subscriber: origins first heard of are expected from sequence 1.
    durable: bool,
    /// How long events wait behind a gap.
    gap_wait: std::time::Duration,
    close: Mutex<Option<oneshot::Sender<()>>>,
}

#[derive(Default)]
struct OwedEchoes {
    by_seq: BTreeMap<u64, Owed>,
    deliveries: usize,
}

impl Link {
    /// This bus's origin id (unique per instance).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The busrt client name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Remote events seen in phase 1 that went to the shadow path only.
    pub fn shadow_remote(&self) -> u64 {
        self.shadow_remote.load(Relaxed)
    }

    /// Subscribes the bridge to the event topics, once (called when the bus gets a local
    /// subscriber); returns when the broker has confirmed.
    pub(crate) async fn listen(&self) -> Result<(), ClientError> {
        if self.listening.load(Relaxed) {
            return Ok(());
        }
        let _guard = self.listen_lock.lock().await;
        if self.listening.load(Relaxed) {
            return Ok(());
        }
        self.publisher
            .subscribe(HEARTBEAT_TOPIC, QoS::Processed)
            .await?;
        for pattern in crate::topic::all_event_patterns() {
            self.publisher
                .subscribe(&pattern.to_dotted(), QoS::Processed)
                .await?;
        }
        self.listening.store(true, Relaxed);
        if self.durable {
            let hello = serde_json::to_vec(&Hello {
                origin: self.origin.clone(),
            })
            .unwrap_or_default();
            self.publisher
                .publish(HELLO_TOPIC, hello, QoS::Processed)
                .await?;
        }
        Ok(())
    }

    /// Waits until every event handed to the sender has been confirmed by the broker (or
    /// has failed and been counted). Wrap it in a timeout.
    pub async fn flushed(&self) {
        loop {
            let notified = self.sent_all.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unsent.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn sent(&self, n: usize) {
        if self.unsent.fetch_sub(n, Relaxed) == n {
            self.sent_all.notify_waiters();
        }
    }

    /// Watch the bridge's connection to the broker.
    pub fn state(&self) -> tokio::sync::watch::Receiver<crate::client::ConnectionState> {
        self.state.clone()
    }

    /// Own events sent and not yet back from busrt.
    pub fn in_flight(&self) -> usize {
        self.owed.lock().by_seq.len()
    }

    /// Waits until every own event sent so far came back from busrt (and was delivered or
    /// compared). Wrap it in a timeout: a lost broker keeps echoes owed.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn close(&self) {
        if let Some(tx) = self.close.lock().take() {
            let _ = tx.send(());
        }
    }

    /// Routes one local publish as the phase says.
    pub(crate) async fn publish(&self, core: &Core, mut env: Envelope) -> Result<usize, BusError> {
        // Bounded in flight: a publisher faster than the round trip waits here, not in memory.
        self.wait_for_room().await;
        let phase = core.phase();
        env.origin = self.origin.clone();
        let parity = core.parity();
        let aa = parity.config().aa && parity.is_enabled();
        let compare = phase.has_control() && (parity.is_enabled() || core.is_recording()) && !aa;
        let router = core.router();
        // Decide under the lock so concurrent publishes see a consistent owed-echo state.
        let (direct, send) = {
            let mut owed = self.owed.lock();
            // Echoes come back only once the bridge listens (it starts to when the bus gets its
            // first local subscriber); before that there is nobody to deliver to.
            let listening = self.listening.load(Relaxed);
            let (direct, send, owe) =
                if !listening || (phase.legacy_authoritative() && owed.deliveries == 0) {
                    let owe = (compare && listening).then_some(Owed {
                        deliver: false,
                        compare: true,
                    });
                    (true, phase.uses_busrt(), owe)
                } else if phase.uses_busrt() || owed.deliveries > 0 {
                    let owe = Owed {
                        deliver: true,
                        compare,
                    };
                    (false, true, Some(owe))
                } else {
                    (true, false, None)
                };
            // Only what goes to busrt is numbered, so receivers see no false gaps.
            if send {
                env.seq = self.seq.fetch_add(1, Relaxed) + 1;
            }
            if let Some(o) = owe {
                owed.by_seq.insert(env.seq, o);
                if o.deliver {
                    owed.deliveries += 1;
                }
            }
            (direct, send)
        };
        let bytes = if send {
            match self.codec.encode(&env) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.forget(env.seq);
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let mut delivered = 0;
        if direct {
            let mut ids = Vec::new();
            delivered = router.route_collect(&env, &mut ids).await;
            if aa {
                for id in &ids {
                    core.note_control(id, &env);
                }
                core.aa_candidate(&env);
            } else if compare {
                for id in ids {
                    core.note_control(&id, &env);
                }
            }
        } else if compare {
            // busrt serves; the legacy router computes what it would have delivered.
            for id in router.matching(&env) {
                core.note_control(&id, &env);
            }
        }
        if let Some(bytes) = bytes {
            let out = Outgoing {
                seq: env.seq,
                topic: topic_for_event(&env.event).to_busrt(),
                bytes,
            };
            if self.replay_capacity > 0 {
                let mut replay = self.replay.lock();
                if replay.len() >= self.replay_capacity {
                    replay.pop_front();
                }
                replay.push_back((out.seq, out.topic.clone(), out.bytes.clone()));
            }
            self.unsent.fetch_add(1, Relaxed);
            if self.outbound.send(out).await.is_err() {
                self.sent(1);
                self.forget(env.seq);
                return Err(BusError::ShutDown);
            }
        }
        Ok(delivered)
    }

    fn forget(&self, seq: u64) {
        let mut owed = self.owed.lock();
        if let Some(o) = owed.by_seq.remove(&seq) {
            if o.deliver {
                owed.deliveries -= 1;
            }
        }
        if owed.by_seq.is_empty() {
            self.settled.notify_waiters();
        }
        self.room.notify_waiters();
    }

    /// Waits until fewer than `max_in_flight` own events are in flight.
    async fn wait_for_room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.in_flight() < self.max_in_flight {
                return;
            }
            room.await;
        }
    }

    async fn heartbeat(&self, highest: u64) {
        let body = serde_json::to_vec(&Heartbeat {
            origin: self.origin.clone(),
            highest,
        })
        .unwrap_or_default();
        if let Err(e) = self
            .publisher
            .publish(HEARTBEAT_TOPIC, body, QoS::Realtime)
            .await
        {
            tracing::debug!("heartbeat failed: {e}");
        }
    }

    /// A heartbeat from another origin: anything up to its highest that never arrived is a
    /// gap (the tail of its stream was lost), asked for again.
    fn on_heartbeat(&self, seen: &mut Origins, payload: &[u8]) {
        let Ok(h) = serde_json::from_slice::<Heartbeat>(payload) else {
            Stats::add(&self.stats.bridge_decode_errors, 1);
            return;
        };
        if h.origin == self.origin {
            return;
        }
        // Never heard of it: nothing to compare with, unless this subscriber wants every
        // origin's stream from its start.
        if self.durable && !seen.contains_key(&h.origin) {
            seen.insert(h.origin.clone(), Origin::first_heard(&h.origin, true));
        }
        let Some(state) = seen.get_mut(&h.origin) else {
            return;
        };
        if let Some((from, to)) = state.stream.expect_up_to(h.highest) {
            Stats::add(&self.stats.bridge_gaps, to - from + 1);
            tracing::warn!(origin = %h.origin, from, to, "tail of a stream missing; asking for a resend");
            self.request_resend(&h.origin, from, to);
        }
    }

    /// A resuming subscriber said hello: tell it at once how far this origin has got.
    async fn on_hello(&self, payload: &[u8]) {
        let Ok(h) = serde_json::from_slice::<Hello>(payload) else {
            Stats::add(&self.stats.bridge_decode_errors, 1);
            return;
        };
        let high = self.sent_high.load(Relaxed);
        if h.origin != self.origin && high > 0 {
            self.heartbeat(high).await;
        }
    }

    fn request_resend(&self, origin: &str, from: u64, to: u64) {
        Stats::add(&self.stats.bridge_resend_requests, 1);
        let request = ResendRequest {
            origin: origin.to_owned(),
            from,
            to,
        };
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&request).unwrap_or_default();
            if let Err(e) = publisher.publish(RESEND_TOPIC, body, QoS::Processed).await {
                tracing::warn!("resend request failed: {e}");
            }
        });
    }

    /// Answers a resend request for this origin from the replay buffer; what is no longer
    /// there is counted and reported with its range.
    async fn resend(&self, payload: &[u8]) {
        let Ok(r) = serde_json::from_slice::<ResendRequest>(payload) else {
            Stats::add(&self.stats.bridge_decode_errors, 1);
            return;
        };
        if r.origin != self.origin || r.to < r.from {
            return;
        }
        let items: Vec<_> = self
            .replay
            .lock()
            .iter()
            .filter(|(seq, _, _)| (r.from..=r.to).contains(seq))
            .cloned()
            .collect();
        let wanted = r.to - r.from + 1;
        let lost = wanted - items.len() as u64;
        if lost > 0 {
            Stats::add(&self.stats.bridge_resend_unavailable, lost);
            tracing::error!(
                from = r.from,
                to = r.to,
                lost,
                "events asked for are no longer in the replay buffer"
            );
        }
        // Pipelined, as the sender does: a resend that waited for each acknowledgement could
        // take longer than receivers hold events behind the gap.
        let last = items.len();
        let mut acks = VecDeque::new();
        for (i, (_, topic, bytes)) in items.into_iter().enumerate() {
            let more = i + 1 < last;
            match self
                .publisher
                .publish_pipelined(topic, bytes, self.qos, more)
                .await
            {
                Ok(ack) => acks.push_back(ack),
                Err(e) => tracing::warn!("resend failed: {e}"),
            }
            if acks.len() >= RESEND_WINDOW {
                if let Some(ack) = acks.pop_front() {
                    self.resent(ack).await;
                }
            }
        }
        for ack in acks {
            self.resent(ack).await;
        }
    }

    /// Counts one resent frame once busrt confirms it.
    async fn resent(&self, ack: Ack) {
        match ack.await {
            Ok(()) => Stats::add(&self.stats.bridge_resent, 1),
            Err(e) => tracing::warn!("resend failed: {e}"),
        }
    }

    /// Handles one frame from busrt (one envelope or a batch).
    async fn inbound(&self, core: &Core, seen: &mut Origins, msg: &Message) {
        match self.codec.decode_frame(msg.payload()) {
            Ok(envelopes) => {
                for env in envelopes {
                    self.inbound_envelope(core, seen, msg, env).await;
                }
            }
            Err(e) => {
                Stats::add(&self.stats.bridge_decode_errors, 1);
                tracing::debug!(
                    topic = msg.topic(),
                    sender = msg.sender(),
                    "dropped frame: {e}"
                );
            }
        }
    }

    async fn inbound_envelope(
        &self,
        core: &Core,
        seen: &mut Origins,
        msg: &Message,
        env: Envelope,
    ) {
        if env.hops > self.hop_limit {
            Stats::add(&self.stats.bridge_hop_limited, 1);
            return;
        }
        let own = env.origin == self.origin;
        if own && msg.primary_sender() != self.name {
            // Our own event, relayed back by someone else: a loop.
            Stats::add(&self.stats.bridge_echo_suppressed, 1);
            return;
        }
        // Looked up by reference: the origin's name is copied once, when first heard of.
        if !seen.contains_key(&env.origin) {
            let state = Origin::first_heard(&env.origin, self.durable);
            seen.insert(env.origin.clone(), state);
        }
        let Some(state) = seen.get_mut(&env.origin) else {
            return;
        };
        let ready = match state.stream.push(env.seq, env) {
            Pushed::Duplicate => {
                Stats::add(&self.stats.bridge_duplicates, 1);
                return;
            }
            Pushed::Accepted { gap, filled, ready } => {
                if let Some((from, to)) = gap {
                    let origin = &state.name;
                    Stats::add(&self.stats.bridge_gaps, to - from + 1);
                    tracing::warn!(%origin, from, to, "sequence gap; asking for a resend");
                    self.request_resend(origin, from, to);
                }
                if filled {
                    Stats::add(&self.stats.bridge_gaps_filled, 1);
                }
                ready
            }
        };
        let mut ready = ready;
        if state.stream.held() > MAX_HELD {
            ready.extend(self.give_up(state));
        }
        state.holding_since = match (state.stream.held(), state.holding_since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(tokio::time::Instant::now()),
        };
        for env in ready {
            self.dispatch(core, env).await;
        }
    }

    /// Stops waiting for an origin's gaps: they are lost (counted), held events are released.
    fn give_up(&self, state: &mut Origin) -> Vec<Envelope> {
        let (lost, ready) = state.stream.give_up();
        state.holding_since = None;
        if lost > 0 {
            Stats::add(&self.stats.bridge_gaps_lost, lost);
            tracing::error!(lost, "sequence gap not filled in time; events lost");
        }
        ready
    }

    /// Releases what has waited longer than the gap wait behind a gap.
    async fn expire_holds(&self, core: &Core, seen: &mut Origins) {
        let now = tokio::time::Instant::now();
        let mut ready = Vec::new();
        for state in seen.values_mut() {
            if state
                .holding_since
                .is_some_and(|t| now >= t + self.gap_wait)
            {
                ready.extend(self.give_up(state));
            }
        }
        for env in ready {
            self.dispatch(core, env).await;
        }
    }

    /// Delivers (or compares) one accepted envelope as the phase says.
    async fn dispatch(&self, core: &Core, env: Envelope) {
        let own = env.origin == self.origin;
        Stats::add(&self.stats.bridge_received, 1);
        let router = core.router();
        if own {
            let owed = self.owed.lock().by_seq.get(&env.seq).copied();
            let Some(owed) = owed else { return };
            let parity = core.parity();
            if owed.deliver {
                let mut ids = Vec::new();
                router.route_collect(&env, &mut ids).await;
                if owed.compare {
                    for id in ids {
                        parity.record_candidate(&id, &env);
                    }
                }
            } else if owed.compare {
                for id in router.matching(&env) {
                    parity.record_candidate(&id, &env);
                }
            }
            // Only now is the echo settled: a waiter sees the delivery done.
            self.forget(env.seq);
        } else if core.phase() >= Phase::Topics {
            router.route(&env).await;
        } else {
            self.shadow_remote.fetch_add(1, Relaxed);
        }
    }
}

/// Builds a bridged bus: a core whose events also travel on busrt.
///
/// ```no_run
/// # async fn run() -> Result<(), busbridge::bridge::BridgeError> {
/// use busbridge::bridge::BridgeBuilder;
/// use busbridge::phase::Phase;
/// use busbridge::legacy::crossbeam::HighPerformanceEventBusConfig;
///
/// let bridged = BridgeBuilder::new()
///     .phase(Phase::Topics)
///     .connect("ipc:///run/daemoneye/daemoneye.sock")
///     .name("procmond")
///     .build()
///     .await?;
/// let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
/// # Ok(()) }
/// ```
pub struct BridgeBuilder {
    phase: Phase,
    connect: Option<String>,
    embedded: Option<Broker>,
    codec: CodecKind,
    name: Option<String>,
    qos: QoS,
    client: ClientOptions,
    hop_limit: u32,
    core: CoreOptions,
    send: SendOptions,
    resume: Option<Positions>,
    gap_wait: std::time::Duration,
}

impl Default for BridgeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BridgeBuilder {
    /// Phase 2 by default once you bridge (phase 4 in a build without the legacy router),
    /// protobuf, `Processed`.
    pub fn new() -> Self {
        Self {
            phase: if cfg!(feature = "legacy") {
                Phase::Topics
            } else {
                Phase::BusrtOnly
            },
            connect: None,
            embedded: None,
            codec: CodecKind::Protobuf,
            name: None,
            qos: QoS::Processed,
            client: ClientOptions::default(),
            hop_limit: DEFAULT_HOP_LIMIT,
            core: CoreOptions::default(),
            send: SendOptions::default(),
            resume: None,
            gap_wait: GAP_WAIT,
        }
    }

    /// Everything from the configuration file: phase, codec, connection or embedded broker.
    pub fn from_config(config: &Config) -> Result<Self, BridgeError> {
        config.validate()?;
        let mut b = Self::new()
            .phase(config.phase)
            .codec(config.codec)
            .client_options(ClientOptions::from_config(
                &config.client,
                config.broker.max_message_size,
            ));
        b.core.max_subscribers = config.bus.max_subscribers;
        b.send = SendOptions {
            batch_max: config.bus.batch_max,
            window: config.bus.publish_window,
            queue: config.bus.outbound_queue,
            replay: config.bus.replay_buffer,
        };
        b.gap_wait = config.bus.gap_wait;
        if let Some(name) = &config.client.name {
            b = b.name(name);
        }
        match &config.client.connect {
            Some(uri) => b = b.connect(uri),
            None if config.broker.embedded => {
                let mut broker = Broker::from_config(config)?;
                broker.set_name(format!("embedded-{}", uuid::Uuid::new_v4().simple()));
                b = b.embedded(broker);
            }
            None => b = b.connect("ipc://daemoneye.sock"),
        }
        Ok(b)
    }

    pub fn phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }
    /// Connection string of a standalone broker.
    pub fn connect(mut self, uri: impl Into<String>) -> Self {
        self.connect = Some(uri.into());
        self
    }
    /// Runs this broker inside the bus (started by `build`, stopped with the bus).
    pub fn embedded(mut self, broker: Broker) -> Self {
        self.embedded = Some(broker);
        self
    }
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.codec = codec;
        self
    }
    /// busrt client name of the bridge (default `busbridge-<pid>-<n>`); must be unique.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
    pub fn client_options(mut self, opts: ClientOptions) -> Self {
        self.client = opts;
        self
    }
    /// Batching, window and queue of the sender.
    pub fn send_options(mut self, send: SendOptions) -> Self {
        self.send = send;
        self
    }
    pub fn hop_limit(mut self, hops: u32) -> Self {
        self.hop_limit = hops;
        self
    }
    /// Core settings (subscriber limit, persistence, parity configuration).
    pub fn core_options(mut self, core: CoreOptions) -> Self {
        self.core = core;
        self
    }
    /// Makes this a durable subscriber resuming after `positions` (see [`crate::durable`]):
    /// what was processed is dropped, what follows is asked for again and delivered once, in
    /// order; origins not in `positions` are expected from their first event. Empty
    /// `positions` (a first start) join the stream live.
    pub fn resume(mut self, positions: Positions) -> Self {
        self.resume = Some(positions);
        self
    }
    /// How long events behind a sequence gap wait for the resend ([`GAP_WAIT`] by default);
    /// a subscriber that would rather wait than lose sets it longer.
    pub fn gap_wait(mut self, wait: std::time::Duration) -> Self {
        self.gap_wait = wait;
        self
    }
    pub fn parity(mut self, parity: ParityConfig) -> Self {
        self.core.parity = parity;
        self
    }

    /// Starts the embedded broker (if any), connects, subscribes to the event topics and
    /// starts the bridge loop. A name already in use on the broker is an error here.
    pub async fn build(self) -> Result<Bridged, BridgeError> {
        self.phase.check_build().map_err(BusError::from)?;
        let mut broker = self.embedded;
        let uri = match (&mut broker, self.connect) {
            (Some(b), _) => {
                b.spawn().await?;
                format!("inproc://{}", b.name())
            }
            (None, Some(uri)) => uri,
            (None, None) => "ipc://daemoneye.sock".to_owned(),
        };
        let mut opts = self.client;
        if let Some(n) = self.name {
            opts.name = Some(n);
        }
        let client = AsyncClient::connect_with(&uri, opts).await?;
        client.subscribe(RESEND_TOPIC, QoS::Processed).await?;
        client.subscribe(HELLO_TOPIC, QoS::Processed).await?;
        let name = client.name().to_owned();
        let mut core_opts = self.core;
        if core_opts.publisher_id == CoreOptions::default().publisher_id {
            core_opts.publisher_id = name.clone();
        }
        let core = Arc::new(Core::new(core_opts));
        let (close_tx, close_rx) = oneshot::channel();
        let codec = Codec::new(self.codec, client.max_message_size());
        let (outbound, queue) = tokio::sync::mpsc::channel(self.send.queue.max(1));
        let link = Arc::new(Link {
            origin: format!("{name}#{}", uuid::Uuid::new_v4().simple()),
            name,
            seq: AtomicU64::new(0),
            codec,
            hop_limit: self.hop_limit,
            outbound,
            replay: Mutex::new(VecDeque::new()),
            replay_capacity: self.send.replay,
            publisher: client.publisher(),
            state: client.state(),
            listening: std::sync::atomic::AtomicBool::new(false),
            listen_lock: tokio::sync::Mutex::new(()),
            unsent: std::sync::atomic::AtomicUsize::new(0),
            sent_all: tokio::sync::Notify::new(),
            qos: self.qos,
            owed: Mutex::new(OwedEchoes::default()),
            settled: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
            max_in_flight: (client.queue_size() / 2).max(1),
            stats: core.stats().clone(),
            shadow_remote: AtomicU64::new(0),
            sent_high: AtomicU64::new(0),
            // Nothing to resume from: join live, like any bus.
            durable: self.resume.as_ref().is_some_and(|p| !p.is_empty()),
            gap_wait: self.gap_wait,
            close: Mutex::new(Some(close_tx)),
        });
        core.attach(link.clone());
        core.set_phase(self.phase)?;
        tokio::spawn(sender(
            Arc::downgrade(&link),
            queue,
            client.publisher(),
            self.qos,
            codec,
            self.send,
            core.stats().clone(),
        ));
        let task = tokio::spawn(bridge_loop(
            Arc::downgrade(&core),
            link.clone(),
            client,
            close_rx,
            self.resume.unwrap_or_default(),
        ));
        Ok(Bridged {
            core,
            link,
            broker: tokio::sync::Mutex::new(broker),
            task: Mutex::new(Some(task)),
        })
    }
}

/// The inbound half: frames from busrt into the core, until the bus closes.
async fn bridge_loop(
    core: std::sync::Weak<Core>,
    link: Arc<Link>,
    mut client: AsyncClient,
    mut close: oneshot::Receiver<()>,
    resume: Positions,
) {
    let mut seen: Origins = resume
        .iter()
        .map(|(origin, pos)| (origin.to_owned(), Origin::after(origin, pos)))
        .collect();
    loop {
        tokio::select! {
            m = client.recv() => {
                let Ok(m) = m else { break };
                let Some(core) = core.upgrade() else { break };
                if m.topic() == RESEND_TOPIC {
                    link.resend(m.payload()).await;
                } else if m.topic() == HEARTBEAT_TOPIC {
                    link.on_heartbeat(&mut seen, m.payload());
                } else if m.topic() == HELLO_TOPIC {
                    link.on_hello(m.payload()).await;
                } else {
                    link.inbound(&core, &mut seen, &m).await;
                }
            }
            _ = wait_for_expiry(&seen, link.gap_wait) => {
                let Some(core) = core.upgrade() else { break };
                link.expire_holds(&core, &mut seen).await;
            }
            _ = &mut close => break,
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.disconnect()).await;
}

/// Resolves when the oldest hold behind a gap reaches `wait`; never if nothing waits.
async fn wait_for_expiry(seen: &Origins, wait: std::time::Duration) {
    match seen.values().filter_map(|o| o.holding_since).min() {
        Some(t) => tokio::time::sleep_until(t + wait).await,
        None => std::future::pending().await,
    }
}

/// A running bridged bus: make facades from it, switch its phase, read its parity.
pub struct Bridged {
    core: Arc<Core>,
    link: Arc<Link>,
    broker: tokio::sync::Mutex<Option<Broker>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Bridged {
    /// Builds and starts the bus the configuration describes (what the facades' `bridged`
    /// constructors use).
    pub async fn start(config: &Config) -> Result<Arc<Self>, BridgeError> {
        Ok(Arc::new(BridgeBuilder::from_config(config)?.build().await?))
    }

    /// The core (shared by every facade made from this bus).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The bridge.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Switches the phase at run time.
    pub fn set_phase(&self, phase: Phase) -> Result<(), BusError> {
        self.core.set_phase(phase)
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.core.phase()
    }

    /// The crossbeam facade over this bus.
    #[cfg(feature = "legacy")]
    pub fn crossbeam(
        &self,
        config: crate::legacy::crossbeam::HighPerformanceEventBusConfig,
    ) -> crate::legacy::crossbeam::HighPerformanceEventBusImpl {
        crate::legacy::crossbeam::HighPerformanceEventBusImpl::with_core(self.core.clone(), config)
    }

    /// The tokio facade over this bus (already started).
    #[cfg(feature = "legacy")]
    pub fn tokio(
        &self,
        config: crate::legacy::tokio::EventBusConfig,
    ) -> crate::legacy::tokio::LocalEventBus {
        crate::legacy::tokio::LocalEventBus::with_core(self.core.clone(), config)
    }

    /// The phase-4 facade over this bus.
    pub fn event_bus(&self, config: crate::bus::EventBusConfig) -> crate::bus::EventBus {
        crate::bus::EventBus::with_core(self.core.clone(), config)
    }

    /// The embedded broker's socket paths, if it has any.
    pub async fn broker_socket_paths(&self) -> Vec<std::path::PathBuf> {
        self.broker
            .lock()
            .await
            .as_ref()
            .map(Broker::socket_paths)
            .unwrap_or_default()
    }

    /// Stops the bus, the bridge, and the embedded broker.
    pub async fn shutdown(&self) {
        self.core.shutdown();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        if let Some(mut b) = self.broker.lock().await.take() {
            b.shutdown_within(std::time::Duration::from_secs(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::sample_envelope;

    /// Events already queued when the sender looks share frames; the receiver unbatches them
    /// in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_events_share_frames_and_unbatch_in_order() {
        let mut broker = Broker::new();
        broker.set_name(uuid::Uuid::new_v4().to_string());
        broker.spawn().await.unwrap();
        let uri = format!("inproc://{}", broker.name());
        let mut sub = AsyncClient::connect(&uri).await.unwrap();
        sub.subscribe("events.#", QoS::Processed).await.unwrap();
        let publisher = AsyncClient::connect(&uri).await.unwrap();
        let codec = Codec::default();
        let (tx, rx) = tokio::sync::mpsc::channel(2000);
        let envs: Vec<Envelope> = (0..1000)
            .map(|i| {
                let mut e = sample_envelope("batch", i * 5, "p");
                e.seq = i as u64 + 1;
                e
            })
            .collect();
        for e in &envs {
            tx.send(Outgoing {
                seq: e.seq,
                topic: topic_for_event(&e.event).to_busrt(),
                bytes: codec.encode(e).unwrap(),
            })
            .await
            .unwrap();
        }
        drop(tx);
        let stats = Arc::new(Stats::default());
        let opts = SendOptions {
            batch_max: 300,
            ..Default::default()
        };
        sender(
            std::sync::Weak::new(),
            rx,
            publisher.publisher(),
            QoS::Processed,
            codec,
            opts,
            stats.clone(),
        )
        .await;
        let mut got = Vec::new();
        let mut frames = 0;
        while got.len() < envs.len() {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), sub.recv())
                .await
                .unwrap()
                .unwrap();
            frames += 1;
            got.extend(codec.decode_frame(m.payload()).unwrap());
        }
        assert_eq!(got, envs);
        assert_eq!(frames, 4, "1000 events in frames of at most 300");
        assert_eq!(stats.snapshot().bridge_batches, 4);
        assert_eq!(stats.snapshot().bridge_sent, 1000);
    }
}
