//! The bridge: the one place where events cross between the local core and busrt.
//!
//! It has two halves. [`protocol`] is the bridge protocol as a state machine without I/O:
//! numbering, the ledger of owed returns, the replay buffer, per-origin order with gap
//! holds, heartbeats, hellos and resend requests, and the phase table of what a local publish
//! and a received event become. This module is its thin async driver: [`Link`] owns the busrt
//! client, feeds the protocol what arrives (with the time), carries out what it asks for, and
//! implements the core's [`Uplink`] trait so that [`Core::publish`](crate::bus::Core::publish)
//! can hand it local events.
//!
//! The path of one local event: `Core::publish` → [`Uplink::route`] (the protocol decides,
//! numbers it and records what its return owes) → [`Uplink::encode`] → local delivery if
//! the route says so → [`Uplink::send`] (queue) → the sender task (batching, acknowledgement
//! window) → busrt. Inbound, the receive task hands each frame to the protocol and delivers
//! what it releases through `Core::deliver_returned` / `Core::deliver_remote`.
//!
//! | phase | local publish | own event back from busrt | remote event |
//! |---|---|---|---|
//! | 0 | router | — (nothing sent) | ignored |
//! | 1 | router (control) + mirror | candidate, compared | shadow only (counted) |
//! | 2, 3 | legacy shadow control; sent | delivered (served), compared | delivered |
//! | 4 | sent | delivered | delivered |
//!
//! Switching phase never loses or duplicates an event in flight: an event sent for delivery on
//! its return is delivered by its return whatever the phase then, and while such returns are
//! owed a legacy-routed publish also waits for its return, so per-subscriber order holds.

pub mod protocol;

use crate::broker::{Broker, BrokerError};
use crate::bus::{BusError, Core, CoreOptions, Route, Uplink};
use crate::client::{
    Ack, AsyncClient, ClientError, ClientOptions, Grouped, GroupedPublisher, Publisher, QoS,
};
use crate::codec::{Codec, CodecKind, Envelope, FrameBuffer};
use crate::config::Config;
use crate::durable::Positions;
use crate::parity::ParityConfig;
use crate::phase::Phase;
use crate::stats::Stats;
use crate::topic::{busrt_topic_for_event, BusrtTopic};
use bytes::Bytes;
use parking_lot::Mutex;
use protocol::{Delivery, Output, Protocol, Settings, Transmit};
pub use protocol::{HEARTBEAT_TOPIC, HELLO_TOPIC, RESEND_TOPIC, STATUS_REPLY_TOPIC, STATUS_TOPIC};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};

pub use crate::config::DEFAULT_HOP_LIMIT;

/// How long events behind a sequence gap wait for the resend before they are delivered
/// anyway (and the gap counted as lost), unless `bus.gap_wait` says otherwise.
pub const GAP_WAIT: Duration = Duration::from_secs(2);

/// How long a sender is idle before it announces its highest sequence number.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// Resent frames in flight before their acknowledgements are awaited.
const RESEND_WINDOW: usize = 256;

/// Control messages (heartbeats, hellos, resend requests) waiting to be published.
const CONTROL_QUEUE: usize = 4096;

pub use crate::stats::Status;

/// Why a bridge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The core refused (phase not served by this build, for example).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The busrt client failed (broker unreachable, name in use).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The embedded broker could not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The `/metrics` endpoint could not start.
    #[error("{0}")]
    Metrics(String),
}

/// The size of the chunks each thread encodes its frames into (see [`FrameBuffer`]): small
/// enough that what a thread keeps of its last chunk is little, large enough that a chunk
/// holds dozens of events.
const FRAME_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Frames encoded on this thread: publishers on different threads share no lock.
    static FRAMES: RefCell<FrameBuffer> = RefCell::new(FrameBuffer::new(FRAME_CHUNK));
}

/// One encoded event on its way to busrt.
struct Outgoing {
    seq: u64,
    topic: BusrtTopic,
    /// Shared with the replay buffer, not copied.
    bytes: Bytes,
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

/// The live bridge of one bus: drives the [`Protocol`] and implements [`Uplink`].
pub struct Link {
    origin: String,
    name: String,
    proto: Mutex<Protocol>,
    codec: Codec,
    qos: QoS,
    outbound: mpsc::Sender<Outgoing>,
    control: mpsc::Sender<(&'static str, Vec<u8>)>,
    /// For resends, subscriptions and hellos.
    publisher: Publisher,
    state: watch::Receiver<crate::client::ConnectionState>,
    /// Held while subscribing to the event topics (from the first local subscriber on; a bus
    /// without local subscribers does not receive its own events back).
    listen_lock: tokio::sync::Mutex<()>,
    /// Events handed to the sender and not yet confirmed (or failed).
    unsent: AtomicUsize,
    sent_all: Notify,
    /// Signalled when a return is settled (room for another; maybe none owed any more).
    settled: Notify,
    /// Signalled when the protocol's next deadline may have moved earlier.
    timer: Notify,
    /// Highest sequence the sender handed to busrt, and whether the protocol's heartbeat is
    /// armed for it (kept outside the protocol's lock; see `sender`).
    handed_high: AtomicU64,
    /// When the sender last handed a frame, in nanoseconds since `born`.
    handed_at: AtomicU64,
    born: Instant,
    beat_armed: AtomicBool,
    /// Highest sequence busrt confirmed.
    confirmed_high: AtomicU64,
    /// Most own events in flight: below the client's receive buffer, so no return of ours
    /// can be dropped there.
    max_in_flight: usize,
    stats: Arc<Stats>,
    close: Mutex<Option<oneshot::Sender<()>>>,
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
        self.proto.lock().shadow_remote()
    }

    /// Watch the bridge's connection to the broker.
    pub fn state(&self) -> watch::Receiver<crate::client::ConnectionState> {
        self.state.clone()
    }

    /// Own events sent and not yet back from busrt.
    pub fn in_flight(&self) -> usize {
        self.proto.lock().in_flight()
    }

    /// Waits until every event handed to the sender has been confirmed by the broker (or
    /// has failed and been counted). Wrap it in a timeout.
    pub async fn flushed(&self) {
        wait_until(&self.sent_all, || self.unsent.load(Relaxed) == 0).await;
    }

    /// Waits until every own event sent so far came back from busrt (and was delivered or
    /// compared). Wrap it in a timeout: a lost broker keeps returns owed.
    pub async fn settled(&self) {
        wait_until(&self.settled, || self.in_flight() == 0).await;
    }

    fn sent(&self, n: usize) {
        if self.unsent.fetch_sub(n, Relaxed) == n {
            self.sent_all.notify_waiters();
        }
    }

    /// An event about to be queued for the sender: kept for resends, counted as unsent.
    fn outgoing(&self, env: &Envelope, bytes: Bytes) -> Outgoing {
        let topic = busrt_topic_for_event(&env.event);
        let mut proto = self.proto.lock();
        proto.confirmed(self.confirmed_high.load(Relaxed));
        proto.remember(env.seq, topic.clone(), bytes.clone());
        drop(proto);
        self.unsent.fetch_add(1, Relaxed);
        Outgoing {
            seq: env.seq,
            topic,
            bytes,
        }
    }

    /// The sender handed events up to `high` to busrt, the last of a burst. It only notes how
    /// far it got; the protocol (under its lock) hears of it when the heartbeat is armed and
    /// when it is due, so the sender and the publishers do not contend for the lock per frame.
    fn handed(&self, high: u64) {
        let now = Instant::now();
        self.handed_high.fetch_max(high, Relaxed);
        self.handed_at.store(
            now.saturating_duration_since(self.born).as_nanos() as u64,
            Relaxed,
        );
        if !self.beat_armed.swap(true, SeqCst) && self.proto.lock().handed(high, now) {
            self.timer.notify_one();
        }
    }

    fn release(&self, seq: u64) {
        self.proto.lock().settle(seq);
        self.settled.notify_waiters();
    }

    /// Takes `first` and what else waits in the client's inbox (up to [`RECV_BATCH`]) into
    /// the protocol under one lock; returns how many it took.
    fn on_messages(
        &self,
        core: &Core,
        first: crate::client::Message,
        client: &mut AsyncClient,
        batch: &mut Vec<crate::client::Message>,
    ) -> usize {
        batch.push(first);
        while batch.len() < RECV_BATCH {
            match client.try_recv() {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        let taken = batch.len();
        let phase = core.phase();
        let now = Instant::now();
        let mut status = false;
        {
            let mut proto = self.proto.lock();
            proto.confirmed(self.confirmed_high.load(Relaxed));
            for m in batch.drain(..) {
                if m.topic() == STATUS_TOPIC {
                    status = true;
                    continue;
                }
                proto.on_message(m.topic(), m.sender(), m.payload(), phase, now);
            }
        }
        if status {
            self.answer_status(core);
        }
        taken
    }

    /// This bus's status now: what a tool attached to the broker asks for.
    pub fn status(&self, core: &Core) -> Status {
        let parity = core.parity();
        Status {
            name: self.name.clone(),
            origin: self.origin.clone(),
            phase: core.phase() as u8,
            connection: format!("{:?}", *self.state.borrow()),
            stats: core.snapshot(),
            parity: parity.report_so_far(),
            parity_pending: parity.pending() as u64,
            parity_expired: parity.expired(),
            queued: core.queued() as u64,
            in_flight: core.in_flight() as u64,
            subscribers: core.subscribers() as u64,
            triggers: core.trigger_counts(),
        }
    }

    /// Back after an outage (the client has subscribed again): says hello, so origins that
    /// went idle meanwhile announce how far they got (see [`Protocol::reconnected`]).
    fn say_hello_again(&self) {
        let Some(body) = self.proto.lock().reconnected() else {
            return;
        };
        if self.control.try_send((HELLO_TOPIC, body)).is_err() {
            Stats::add(&self.stats.bridge_send_errors, 1);
            tracing::warn!("control queue full; hello after reconnecting dropped");
        }
    }

    fn answer_status(&self, core: &Core) {
        let body = serde_json::to_vec(&self.status(core)).expect("status serializes");
        if self.control.try_send((STATUS_REPLY_TOPIC, body)).is_err() {
            Stats::add(&self.stats.bridge_send_errors, 1);
            tracing::warn!("control queue full; status reply dropped");
        }
    }

    /// Carries out what the protocol asks for, in order.
    async fn drive(&self, core: &Core, bufs: &mut DriveBuffers) {
        let DriveBuffers { todo, returned, .. } = bufs;
        loop {
            self.proto.lock().poll_all(todo);
            if todo.is_empty() {
                return;
            }
            let mut received = 0;
            while let Some(out) = todo.pop_front() {
                match out {
                    Output::Deliver(d) => {
                        received += u64::from(d.received());
                        match d {
                            Delivery::Returned { env, owed } | Delivery::Refused { env, owed } => {
                                core.deliver_returned(&env, owed.deliver, owed.compare)
                                    .await;
                                returned.push(env.seq);
                            }
                            Delivery::Remote(env) => {
                                core.deliver_remote(env).await;
                            }
                            Delivery::Settle(seq) => returned.push(seq),
                        }
                    }
                    Output::Transmit(Transmit::Control { topic, body }) => {
                        if self.control.try_send((topic, body)).is_err() {
                            Stats::add(&self.stats.bridge_send_errors, 1);
                            tracing::warn!(topic, "control queue full; message dropped");
                        }
                    }
                    Output::Transmit(Transmit::Resend(frames)) => self.resend(frames).await,
                }
            }
            // Only now are they counted and the returns settled: a waiter sees the
            // deliveries done.
            Stats::add(&self.stats.bridge_received, received);
            if !returned.is_empty() {
                let mut proto = self.proto.lock();
                for seq in returned.drain(..) {
                    proto.settle(seq);
                }
                drop(proto);
                self.settled.notify_waiters();
            }
        }
    }

    /// Sends frames again, pipelined as the sender does: a resend that waited for each
    /// acknowledgement could take longer than receivers hold events behind the gap.
    #[tracing::instrument(name = "resend", level = "info", skip_all, fields(client = %self.name, frames = frames.len()))]
    async fn resend(&self, frames: Vec<(BusrtTopic, Bytes)>) {
        let last = frames.len();
        let mut acks = VecDeque::new();
        for (i, (topic, bytes)) in frames.into_iter().enumerate() {
            match self
                .publisher
                .publish_out_of_order(topic, bytes, self.qos, i + 1 < last)
                .await
            {
                Ok(ack) => acks.push_back(ack),
                Err(e) => tracing::warn!("resend failed: {e}"),
            }
            while acks.len() >= RESEND_WINDOW || (i + 1 == last && !acks.is_empty()) {
                if let Some(ack) = acks.pop_front() {
                    match ack.await {
                        Ok(()) => Stats::add(&self.stats.bridge_resent, 1),
                        Err(e) => tracing::warn!("resend failed: {e}"),
                    }
                }
            }
        }
    }
}

/// Frames the receive task takes from the inbox at once: the protocol's lock, the deliveries'
/// settlement and the loop's own bookkeeping are paid per batch, not per frame. Small enough
/// that a local publisher waiting for the protocol's lock waits for a few decodes at most.
const RECV_BATCH: usize = 16;

/// Buffers the receive task reuses for every frame (no allocation per frame).
#[derive(Default)]
struct DriveBuffers {
    todo: VecDeque<Output>,
    returned: Vec<u64>,
    received: Vec<crate::client::Message>,
}

/// Waits for `done`, re-checking it whenever `notify` fires.
async fn wait_until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

#[async_trait::async_trait]
impl Uplink for Link {
    fn has_room(&self) -> bool {
        self.in_flight() < self.max_in_flight
    }

    async fn wait_room(&self) {
        wait_until(&self.settled, || self.has_room()).await;
    }

    fn route(&self, phase: Phase, compare: bool, local: bool, env: &mut Envelope) -> Route {
        self.proto.lock().publish(phase, compare, local, env)
    }

    fn encode(&self, env: &Envelope) -> Result<Bytes, BusError> {
        FRAMES
            .try_with(|frames| frames.borrow_mut().encode(&self.codec, env))
            // This thread's buffer is gone (a thread-local destructor publishing): a frame of
            // its own.
            .unwrap_or_else(|_| self.codec.encode(env).map(Bytes::from))
            .map_err(|e| {
                self.release(env.seq);
                e.into()
            })
    }

    fn try_send(&self, env: &Envelope, bytes: Bytes) -> Result<Result<(), Bytes>, BusError> {
        let permit = match self.outbound.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => return Ok(Err(bytes)),
            Err(mpsc::error::TrySendError::Closed(())) => {
                self.release(env.seq);
                return Err(BusError::ShutDown);
            }
        };
        permit.send(self.outgoing(env, bytes));
        Ok(Ok(()))
    }

    async fn send(&self, env: &Envelope, bytes: Bytes) -> Result<(), BusError> {
        let Ok(permit) = self.outbound.reserve().await else {
            self.release(env.seq);
            return Err(BusError::ShutDown);
        };
        permit.send(self.outgoing(env, bytes));
        Ok(())
    }

    /// Subscribes the bridge to the event topics, once; returns when the broker confirmed.
    async fn listen(&self) -> Result<(), BusError> {
        if self.proto.lock().is_listening() {
            return Ok(());
        }
        let _guard = self.listen_lock.lock().await;
        if self.proto.lock().is_listening() {
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
        let hello = self.proto.lock().listening();
        // A durable subscriber's hello goes out before anything else is published.
        if let Some(body) = hello {
            self.publisher
                .publish(HELLO_TOPIC, body, QoS::Processed)
                .await?;
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        Link::in_flight(self)
    }

    async fn drained(&self) {
        self.flushed().await;
        self.settled().await;
    }

    fn close(&self) {
        if let Some(tx) = self.close.lock().take() {
            let _ = tx.send(());
        }
    }
}

/// Sends queued events: batches what is queued now (up to `batch_max`, one topic a frame, so
/// an idle bus sends each event at once), keeps up to `window` frames in flight
/// unacknowledged. Acknowledged frames are confirmed a group at a time (see
/// [`GroupedPublisher`]): one broker acknowledgement per run of frames to a topic, at most a
/// quarter of the window (64) long.
async fn sender(
    link: Weak<Link>,
    queue: mpsc::Receiver<Outgoing>,
    publisher: Publisher,
    qos: QoS,
    codec: Codec,
    opts: SendOptions,
    stats: Arc<Stats>,
) {
    let window = opts.window.max(1);
    let group_len = (window / 4).clamp(1, 64);
    let mut grouped = GroupedPublisher::new(publisher.clone(), group_len);
    let mut carry: Option<Outgoing> = None;
    let mut burst_high = 0u64;
    // Acknowledgements in flight: the events each confirms, its frames, the acknowledgement.
    let mut in_flight: VecDeque<(Vec<u64>, usize, Ack)> = VecDeque::new();
    let mut frames_in_flight = 0;
    // The open group: events written whose acknowledgement is a later frame's.
    let (mut open, mut open_frames) = (Vec::new(), 0);
    // The events of the frame being built; kept between frames, as `open` is, so that an
    // unbatched stream allocates nothing here per event.
    let mut group: Vec<Outgoing> = Vec::new();
    let mut queue = Taken::new(queue);
    loop {
        let first = match carry.take() {
            Some(o) => o,
            None => {
                // Nothing queued: settle what is in flight before sleeping on the queue.
                if queue.is_empty() {
                    while let Some((seqs, _, ack)) = in_flight.pop_front() {
                        finish(&link, &stats, &seqs, ack.await);
                    }
                    frames_in_flight = 0;
                }
                match queue.next().await {
                    Some(o) => o,
                    None => break,
                }
            }
        };
        let mut size = first.bytes.len();
        group.push(first);
        while group.len() < opts.batch_max.max(1) {
            match queue.try_next() {
                Some(o)
                    if o.topic == group[0].topic
                        && size + o.bytes.len() + 16 <= codec.max_size() =>
                {
                    size += o.bytes.len() + 16;
                    group.push(o);
                }
                Some(o) => {
                    carry = Some(o);
                    break;
                }
                None => break,
            }
        }
        // One frame ahead: its topic says whether this frame closes its acknowledgement group,
        // and whether it is the last of a burst (flushed; else left to busrt's buffer so that a
        // burst costs one write).
        if carry.is_none() {
            carry = queue.try_next();
        }
        let next = carry.as_ref().map(|o| &o.topic);
        let topic = group[0].topic.clone();
        let n = group.len() as u64;
        // This frame's events join the open group now; taken out again if it is refused.
        let from = open.len();
        open.extend(group.iter().map(|o| o.seq));
        burst_high = burst_high.max(open[from..].iter().copied().max().unwrap_or(0));
        let frame = if group.len() == 1 {
            group.pop().map(|o| o.bytes).unwrap_or_default()
        } else {
            Stats::add(&stats.bridge_batches, 1);
            Bytes::from(codec.batch(group.iter().map(|o| &o.bytes[..])))
        };
        group.clear();
        let sent = match qos {
            QoS::Processed => grouped.publish(topic, frame, next).await,
            // Best effort: done once written (or dropped and counted), nothing to await.
            // Accounted for at the end of a burst (or of a group's length), not per frame: the
            // counters this moves are shared with the publishers.
            QoS::Realtime => publisher
                .publish_unacked(&topic, &frame, next.is_some())
                .await
                .map(|()| match next {
                    Some(_) if open.len() < group_len => Grouped::Open,
                    _ => Grouped::Queued(open.len()),
                }),
        };
        let sent = match sent {
            Ok(sent) => {
                Stats::add(&stats.bridge_sent, n);
                if next.is_none() {
                    if let Some(l) = link.upgrade() {
                        l.handed(burst_high);
                    }
                }
                open_frames += 1;
                sent
            }
            Err(e) => {
                let refused = open.split_off(from);
                finish(&link, &stats, &refused, Err(e));
                // The frame that was to close the open group was refused and none follows:
                // close it now, or its events would wait for the next burst. (On failure it
                // stays open, for the next frame to close.)
                if carry.is_some() || open.is_empty() {
                    continue;
                }
                match qos {
                    // What was written before it is done.
                    QoS::Realtime => Grouped::Queued(open.len()),
                    QoS::Processed => match grouped.close().await {
                        Ok(Some(closed)) => closed,
                        Ok(None) | Err(_) => continue,
                    },
                }
            }
        };
        match sent {
            Grouped::Open => {}
            // Safe in the client's outbox, to be sent after reconnecting; or best effort.
            Grouped::Queued(_) => {
                finish(&link, &stats, &open, Ok(()));
                open.clear();
                open_frames = 0;
            }
            Grouped::Closed(group) => {
                frames_in_flight += open_frames;
                in_flight.push_back((std::mem::take(&mut open), open_frames, group.ack));
                open_frames = 0;
            }
        }
        while frames_in_flight >= window {
            let Some((seqs, frames, ack)) = in_flight.pop_front() else {
                break;
            };
            frames_in_flight -= frames;
            finish(&link, &stats, &seqs, ack.await);
        }
    }
    for (seqs, _, ack) in in_flight {
        finish(&link, &stats, &seqs, ack.await);
    }
    if !open.is_empty() {
        // Written, but the frame that was to acknowledge them was refused: unconfirmed.
        finish(&link, &stats, &open, Err(ClientError::Closed));
    }
}

/// The sender's queue, taken up to [`Taken::AT_ONCE`] events at a time: the channel's
/// permits go back once per take instead of once per event (each return takes the channel's
/// semaphore lock, which the publishers reserving room contend for).
struct Taken {
    queue: mpsc::Receiver<Outgoing>,
    /// Taken and not yet handed out, last first.
    ready: Vec<Outgoing>,
}

impl Taken {
    const AT_ONCE: usize = 64;

    fn new(queue: mpsc::Receiver<Outgoing>) -> Self {
        Self {
            queue,
            ready: Vec::with_capacity(Self::AT_ONCE),
        }
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.queue.is_empty()
    }

    /// The next event if one is queued now.
    fn try_next(&mut self) -> Option<Outgoing> {
        if self.ready.is_empty() {
            // Ready at once when anything is queued; not waiting is the point.
            futures_util::FutureExt::now_or_never(
                self.queue.recv_many(&mut self.ready, Self::AT_ONCE),
            )?;
            self.ready.reverse();
        }
        self.ready.pop()
    }

    /// The next event; `None` once the queue is closed and empty.
    async fn next(&mut self) -> Option<Outgoing> {
        if self.ready.is_empty() {
            self.queue.recv_many(&mut self.ready, Self::AT_ONCE).await;
            self.ready.reverse();
        }
        self.ready.pop()
    }
}

/// Accounts for one frame's outcome; for a refused frame, what its events' returns owed is
/// done locally (see [`Protocol::send_failed`]).
fn finish(link: &Weak<Link>, stats: &Stats, seqs: &[u64], result: Result<(), ClientError>) {
    let Some(link) = link.upgrade() else { return };
    match result {
        Ok(()) => {
            let high = seqs.iter().copied().max().unwrap_or(0);
            // Read by the protocol when it next needs it (a hello, trimming the replay).
            link.confirmed_high.fetch_max(high, Relaxed);
        }
        Err(e) => {
            Stats::add(&stats.bridge_send_errors, seqs.len() as u64);
            tracing::warn!(events = seqs.len(), "busrt did not take events: {e}");
            let mut proto = link.proto.lock();
            for seq in seqs {
                proto.send_failed(*seq);
            }
            drop(proto);
            // The receive task carries out the owed local deliveries.
            link.timer.notify_one();
        }
    }
    link.sent(seqs.len());
}

/// Publishes control messages in order (heartbeats best effort, the rest acknowledged).
async fn control_sender(mut queue: mpsc::Receiver<(&'static str, Vec<u8>)>, publisher: Publisher) {
    while let Some((topic, body)) = queue.recv().await {
        let qos = if topic == HEARTBEAT_TOPIC {
            QoS::Realtime
        } else {
            QoS::Processed
        };
        if let Err(e) = publisher.publish(topic, body, qos).await {
            tracing::warn!(topic, "control message failed: {e}");
        }
    }
}

/// The inbound half and the timers: frames from busrt into the protocol, until the bus
/// closes.
async fn receive_loop(
    core: Weak<Core>,
    link: Arc<Link>,
    mut client: AsyncClient,
    mut close: oneshot::Receiver<()>,
) {
    // One timer and one wake-up registration for the whole loop, reset only when the
    // protocol's deadline changes: re-arming them for every frame cost more than the frame.
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let woken = link.timer.notified();
    tokio::pin!(woken);
    let mut bufs = DriveBuffers::default();
    let mut state = link.state.clone();
    let mut state_open = true;
    let mut was_lost = false;
    loop {
        let deadline = link.proto.lock().poll_timeout();
        if deadline != armed {
            armed = deadline;
            sleep
                .as_mut()
                .reset(deadline.map_or_else(far, tokio::time::Instant::from_std));
        }
        tokio::select! {
            m = client.recv() => {
                let Ok(m) = m else { break };
                let Some(core) = core.upgrade() else { break };
                link.on_messages(&core, m, &mut client, &mut bufs.received);
                link.drive(&core, &mut bufs).await;
            }
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                let Some(core) = core.upgrade() else { break };
                // What already arrived counts before a deadline is acted on: a resend queued
                // behind a burst in the inbox must fill its gap, not find it given up.
                let mut queued = client.queued();
                while queued > 0 {
                    let Some(m) = client.try_recv() else { break };
                    let taken = link.on_messages(&core, m, &mut client, &mut bufs.received);
                    queued = queued.saturating_sub(taken);
                    link.drive(&core, &mut bufs).await;
                }
                // Cleared first: a sender that hands more from here on arms the beat again.
                link.beat_armed.store(false, SeqCst);
                let now = Instant::now();
                {
                    let mut proto = link.proto.lock();
                    let last = link.born + Duration::from_nanos(link.handed_at.load(Relaxed));
                    proto.handed(link.handed_high.load(Relaxed), last);
                    proto.handle_timeout(now, core.phase());
                }
                link.drive(&core, &mut bufs).await;
            }
            // The deadline may have moved earlier, or deliveries are waiting (an event busrt
            // refused): carry them out and compute the deadline again.
            _ = &mut woken => {
                woken.set(link.timer.notified());
                let Some(core) = core.upgrade() else { break };
                link.drive(&core, &mut bufs).await;
            }
            changed = state.changed(), if state_open => {
                state_open = changed.is_ok();
                let connected =
                    *state.borrow_and_update() == crate::client::ConnectionState::Connected;
                if connected && was_lost {
                    link.say_hello_again();
                }
                was_lost = !connected;
            }
            _ = &mut close => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
}

/// Builds a bridged bus: a core whose events also travel on busrt.
///
/// ```no_run
/// # async fn run() -> Result<(), busbridge::bridge::BridgeError> {
/// use busbridge::bridge::BridgeBuilder;
/// use busbridge::phase::Phase;
///
/// let bridged = BridgeBuilder::new()
///     .phase(Phase::BusrtOnly)
///     .connect("ipc:///run/busbridge/daemoneye.sock")
///     .name("procmond")
///     .build()
///     .await?;
/// // Any facade: `bridged.crossbeam(..)` and `bridged.tokio(..)` with the `legacy` feature.
/// let bus = bridged.event_bus(Default::default());
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
    wait_for_broker: bool,
    metrics: Option<std::net::SocketAddr>,
    tasks: Option<crate::config::TasksConfig>,
}

impl Default for BridgeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BridgeBuilder {
    /// The phase a configuration without `phase` has ([`Phase::default`]: 0, or 4 in a
    /// build without the legacy router), so code and configuration start alike; protobuf,
    /// `Processed`.
    pub fn new() -> Self {
        Self {
            phase: Phase::default(),
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
            wait_for_broker: true,
            metrics: None,
            tasks: None,
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
        b.core.channel_capacity = config.bus.channel_capacity;
        b.core.backpressure_strategy = config.bus.backpressure_strategy;
        b.core.parity.missing_after = Some(config.bus.parity_window);
        b.hop_limit = config.bus.hop_limit;
        b.send = SendOptions {
            batch_max: config.bus.batch_max,
            window: config.bus.publish_window,
            queue: config.bus.outbound_queue,
            replay: config.bus.replay_buffer,
        };
        b.gap_wait = config.bus.gap_wait;
        b.metrics = config.metrics.addr()?;
        if config.phase.dispatches_triggers() || config.tasks.dispatch_triggers {
            b.tasks = Some(config.tasks.clone());
        }
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

    /// Starts the phase-5 trigger dispatcher with these settings (at phase 5 it starts with
    /// the defaults if not set), so the bus can be switched into phase 5: a `TriggerRequest`
    /// then goes to one collector instance of the target's type as a task
    /// ([`crate::task::trigger`]).
    pub fn tasks(mut self, settings: crate::config::TasksConfig) -> Self {
        self.tasks = Some(settings);
        self
    }

    /// Serves Prometheus `/metrics` for this bus (and its embedded broker) on `addr`
    /// (`[metrics] listen`; port 0 picks one, see [`Bridged::metrics_addr`]).
    pub fn metrics(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// The migration phase to start in.
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
    /// The wire format of events on busrt.
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.codec = codec;
        self
    }
    /// busrt client name of the bridge (default `busbridge-<pid>-<n>`); must be unique.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The QoS events are published with.
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
    /// Options of the busrt client (timeouts, reconnection, queue sizes).
    pub fn client_options(mut self, opts: ClientOptions) -> Self {
        self.client = opts;
        self
    }
    /// Batching, window and queue of the sender.
    pub fn send_options(mut self, send: SendOptions) -> Self {
        self.send = send;
        self
    }
    /// Most hops an envelope may have travelled before it is dropped.
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
    /// Whether `build` succeeds when the broker cannot be reached yet (the default): the bus
    /// starts, local delivery follows the phase's rules, busrt-bound events wait in the
    /// client's bounded outbox, and the bridge joins when the broker appears. `false` makes
    /// an unreachable broker an error of `build`.
    pub fn wait_for_broker(mut self, wait: bool) -> Self {
        self.wait_for_broker = wait;
        self
    }
    /// How the parity engine compares.
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
        let task_client_opts = opts.clone();
        let client = match AsyncClient::connect_with(&uri, opts.clone()).await {
            Ok(c) => c,
            // Start in any order: the broker may come later (a collector before its agent).
            Err(e @ (ClientError::Connect { .. } | ClientError::Timeout(_)))
                if self.wait_for_broker =>
            {
                tracing::warn!(%uri, "broker not reachable ({e}); starting anyway, connecting in the background");
                AsyncClient::connect_lazily(&uri, opts)?
            }
            Err(e) => return Err(e.into()),
        };
        client.subscribe(RESEND_TOPIC, QoS::Processed).await?;
        client.subscribe(HELLO_TOPIC, QoS::Processed).await?;
        client.subscribe(STATUS_TOPIC, QoS::Processed).await?;
        let name = client.name().to_owned();
        let mut core_opts = self.core;
        if core_opts.publisher_id == CoreOptions::default().publisher_id {
            core_opts.publisher_id = name.clone();
        }
        let core = Arc::new(Core::new(core_opts));
        let (close_tx, close_rx) = oneshot::channel();
        let codec = Codec::new(self.codec, client.max_message_size());
        let (outbound, queue) = mpsc::channel(self.send.queue.max(1));
        let (control, control_queue) = mpsc::channel(CONTROL_QUEUE);
        let origin = format!("{name}#{}", uuid::Uuid::new_v4().simple());
        let settings = Settings {
            origin: origin.clone(),
            name: name.clone(),
            codec,
            hop_limit: self.hop_limit,
            gap_wait: self.gap_wait,
            heartbeat: HEARTBEAT,
            replay: self.send.replay,
            resume: self.resume.map(|p| {
                p.iter()
                    .map(|(o, pos)| (o.to_owned(), pos))
                    .collect::<Vec<_>>()
            }),
        };
        let link = Arc::new(Link {
            origin,
            name,
            proto: Mutex::new(Protocol::new(settings, core.stats().clone())),
            codec,
            qos: self.qos,
            outbound,
            control,
            publisher: client.publisher(),
            state: client.state(),
            listen_lock: tokio::sync::Mutex::new(()),
            unsent: AtomicUsize::new(0),
            sent_all: Notify::new(),
            settled: Notify::new(),
            timer: Notify::new(),
            handed_high: AtomicU64::new(0),
            handed_at: AtomicU64::new(0),
            born: Instant::now(),
            beat_armed: AtomicBool::new(false),
            confirmed_high: AtomicU64::new(0),
            max_in_flight: (client.queue_size() / 2).max(1),
            stats: core.stats().clone(),
            close: Mutex::new(Some(close_tx)),
        });
        core.attach(link.clone());
        let settings = self.tasks.or_else(|| {
            self.phase
                .dispatches_triggers()
                .then(crate::config::TasksConfig::default)
        });
        let triggers = match settings {
            Some(settings) => {
                let dispatch = crate::task::TriggerDispatch::connect(
                    &uri,
                    &link.name,
                    task_client_opts,
                    settings,
                )
                .await?;
                let dispatch = Arc::new(dispatch);
                core.attach_tasks(dispatch.clone());
                Some(dispatch)
            }
            None => None,
        };
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
        tokio::spawn(control_sender(control_queue, client.publisher()));
        let task = tokio::spawn(receive_loop(
            Arc::downgrade(&core),
            link.clone(),
            client,
            close_rx,
        ));
        let broker_status = broker.as_ref().and_then(Broker::status_handle);
        let bridged = Bridged(Arc::new(Inner {
            core,
            link,
            broker: tokio::sync::Mutex::new(broker),
            task: Mutex::new(Some(task)),
            metrics: std::sync::OnceLock::new(),
            triggers,
        }));
        if let Some(addr) = self.metrics {
            // The endpoint must not keep the bus alive: it reads through a weak handle.
            let bus = Arc::downgrade(&bridged.0);
            let source: crate::metrics::Source = Arc::new(move || {
                let bus = bus.upgrade();
                let broker = broker_status.clone();
                Box::pin(async move {
                    let mut snapshot = crate::metrics::Snapshot::default();
                    if let Some(bus) = bus {
                        snapshot.buses.push(bus.link.status(&bus.core));
                    }
                    if let Some(status) = match broker {
                        Some(b) => b.status().await,
                        None => None,
                    } {
                        snapshot.brokers.push(status);
                    }
                    snapshot
                })
            });
            let server = crate::metrics::MetricsServer::start(addr, source)
                .await
                .map_err(|e| BridgeError::Metrics(e.to_string()))?;
            let _ = bridged.0.metrics.set(server);
        }
        Ok(bridged)
    }
}

/// A running bridged bus: make facades from it, switch its phase, read its parity.
///
/// A cheap handle (clone it freely); every facade made from it holds one, so the bus, its
/// bridge and its embedded broker live as long as any of them.
#[derive(Clone)]
pub struct Bridged(Arc<Inner>);

struct Inner {
    core: Arc<Core>,
    link: Arc<Link>,
    broker: tokio::sync::Mutex<Option<Broker>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// `/metrics`, if configured (stops with the bus).
    metrics: std::sync::OnceLock<crate::metrics::MetricsServer>,
    /// The phase-5 trigger dispatcher, if started.
    triggers: Option<Arc<crate::task::TriggerDispatch>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the bridge's tasks (the broker stops with `broker`).
        self.link.close();
    }
}

impl Bridged {
    /// Builds and starts the bus the configuration describes (what the facades' `bridged`
    /// constructors use).
    pub async fn start(config: &Config) -> Result<Self, BridgeError> {
        BridgeBuilder::from_config(config)?.build().await
    }

    /// The core (shared by every facade made from this bus).
    pub fn core(&self) -> &Arc<Core> {
        &self.0.core
    }

    /// The bridge's link: connection state, in-flight events, flush and settle waits.
    pub fn link(&self) -> &Arc<Link> {
        &self.0.link
    }

    /// Switches the phase at run time.
    pub fn set_phase(&self, phase: Phase) -> Result<(), BusError> {
        self.0.core.set_phase(phase)
    }

    /// The migration phase now.
    pub fn phase(&self) -> Phase {
        self.0.core.phase()
    }

    /// The phase-5 trigger dispatcher (its task client, registry and counters), if this bus
    /// started one.
    pub fn triggers(&self) -> Option<&Arc<crate::task::TriggerDispatch>> {
        self.0.triggers.as_ref()
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.0
            .metrics
            .get()
            .map(crate::metrics::MetricsServer::addr)
    }

    /// The embedded broker's socket paths, if it has any.
    pub async fn broker_socket_paths(&self) -> Vec<std::path::PathBuf> {
        self.0
            .broker
            .lock()
            .await
            .as_ref()
            .map(Broker::socket_paths)
            .unwrap_or_default()
    }

    /// Stops the bus, the bridge, and the embedded broker.
    pub async fn shutdown(&self) {
        self.0.core.shutdown();
        let task = self.0.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        if let Some(mut b) = self.0.broker.lock().await.take() {
            b.shutdown_within(Duration::from_secs(2)).await;
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
                topic: busrt_topic_for_event(&e.event),
                bytes: codec.encode(e).unwrap().into(),
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

    /// A best-effort bridge accounts for what it wrote a burst (or a group's length) at a
    /// time: every event is counted as sent and `flushed` returns once the burst is out, also
    /// for a burst longer than a group and one that ends mid-group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn best_effort_bursts_are_accounted_whole() {
        let mut broker = Broker::new();
        broker.set_name(uuid::Uuid::new_v4().to_string());
        broker.spawn().await.unwrap();
        let bridge = |name: &str| {
            BridgeBuilder::new()
                .phase(Phase::BusrtOnly)
                .connect(format!("inproc://{}", broker.name()))
                .name(name)
                .qos(QoS::Realtime)
                .build()
        };
        let (publisher, subscriber) = (bridge("p").await.unwrap(), bridge("s").await.unwrap());
        let rx = subscriber
            .event_bus(Default::default())
            .subscribe(crate::EventSubscription::everything("s"))
            .await
            .unwrap();
        let bus = publisher.event_bus(Default::default());
        let limit = std::time::Duration::from_secs(10);
        let mut sent = 0;
        // 64 events a group: bursts of 150 (two whole groups and part of a third) and of 1.
        for burst in [150, 1, 150] {
            for i in 0..burst {
                bus.publish(
                    crate::scenario::sample_event("burst", sent + i),
                    String::new(),
                )
                .await
                .unwrap();
            }
            sent += burst;
            tokio::time::timeout(limit, publisher.link().flushed())
                .await
                .expect("every written event accounted for");
            assert_eq!(publisher.core().stats().snapshot().bridge_sent, sent as u64);
        }
        for _ in 0..sent {
            tokio::time::timeout(limit, rx.recv_async())
                .await
                .unwrap()
                .unwrap();
        }
        publisher.shutdown().await;
        subscriber.shutdown().await;
    }
}
