//! The host side: the broker's events into JetStream through the spool, and the fleet's
//! tasks into the host's task layer.

use super::spool::{Mark, Record, Spool};
use super::{connect, js_error, FleetError, HostInfo, HostReply};
use crate::bridge::{BridgeBuilder, Bridged};
use crate::client::{Backoff, ClientOptions};
use crate::codec::{Codec, CodecError, CodecKind, Envelope, DEFAULT_MAX_MESSAGE_SIZE};
use crate::config::UplinkConfig;
use crate::eventbus::EventBusConfig;
use crate::metrics::{count_each, counters, gauges, label, set_each, Families};
use crate::phase::Phase;
use crate::queue::Receiver;
use crate::subscription::EventSubscription;
use crate::task::{TaskClient, TaskClientOptions, TaskSpec};
use crate::topic::{topic_for_event, Pattern, Topic};
use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Events taken from the bridge's queue before the spool is flushed.
const INTAKE_BATCH: usize = 1024;
/// How often acknowledged positions are written while events flow.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The uplink's counters (`busbridge uplink` prints them as JSON on exit and every
/// `--stats-every`, and serves them on `/metrics` with `[metrics] listen`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UplinkStats {
    /// The host's name in subjects.
    pub host: String,
    /// Events taken from the host's bus.
    pub received: u64,
    /// Events whose topic no `subjects` pattern matches (not forwarded).
    pub filtered: u64,
    /// Events written to the spool.
    pub spooled: u64,
    /// Events the spool refused because it was full: they are not forwarded.
    pub spool_overflow: u64,
    /// Bytes in the spool now.
    pub spool_bytes: u64,
    /// Events in the spool not yet acknowledged.
    pub spool_pending: u64,
    /// Events read back from the spool at start (left by an earlier run).
    pub spool_recovered: u64,
    /// Publishes sent to JetStream (resends after a failure included).
    pub published: u64,
    /// Events JetStream acknowledged.
    pub acked: u64,
    /// Of those, events JetStream already had (resent after a restart or a failure).
    pub duplicates: u64,
    /// Publishes or acknowledgements that failed (NATS away, a timeout); each is retried.
    pub publish_failures: u64,
    /// Whether the NATS connection is up.
    pub nats_connected: bool,
    /// Tasks received from the fleet.
    pub tasks_received: u64,
    /// Tasks this host did not dispatch (nothing capable, queue full, invalid).
    pub tasks_refused: u64,
    /// Task messages that did not parse or had no reply subject.
    pub tasks_malformed: u64,
}

fn read_stats(stats: &Mutex<UplinkStats>, nats: &async_nats::Client) -> UplinkStats {
    let mut s = stats.lock().clone();
    s.nats_connected = nats.connection_state() == async_nats::connection::State::Connected;
    s
}

/// The uplinks' counters on `/metrics` (`busbridge_uplink_*`, labelled by host).
impl Families for Vec<UplinkStats> {
    fn register(&self, r: &mut Registry) {
        type Count = fn(&UplinkStats) -> u64;
        let plain: [(&str, &str, Count); 8] = [
            (
                "uplink_events_received",
                "Events the uplink took from the host's bus",
                |u| u.received,
            ),
            (
                "uplink_events_filtered",
                "Events no `subjects` pattern matches (not forwarded)",
                |u| u.filtered,
            ),
            (
                "uplink_events_spooled",
                "Events written to the spool",
                |u| u.spooled,
            ),
            (
                "uplink_events_recovered",
                "Events read back from the spool at start",
                |u| u.spool_recovered,
            ),
            (
                "uplink_publishes",
                "Publishes sent to JetStream, resends included",
                |u| u.published,
            ),
            ("uplink_acked", "Events JetStream acknowledged", |u| u.acked),
            (
                "uplink_duplicates",
                "Acknowledged events JetStream already had",
                |u| u.duplicates,
            ),
            (
                "uplink_publish_failures",
                "Publishes or acknowledgements that failed (retried)",
                |u| u.publish_failures,
            ),
        ];
        for (name, help, count) in plain {
            let family = counters(r, name, help);
            for u in self {
                family
                    .get_or_create(&label("host", &u.host))
                    .inc_by(count(u));
            }
        }
        let dropped = counters(
            r,
            "uplink_events_dropped",
            "Events not forwarded, by reason",
        );
        let tasks = counters(r, "uplink_tasks", "Fleet tasks, by outcome");
        let spool = gauges(
            r,
            "uplink_spool",
            "The spool now: bytes, events not yet acknowledged",
        );
        let nats = gauges(
            r,
            "uplink_nats_connected",
            "1 if the uplink is connected to NATS",
        );
        for u in self {
            let host = label("host", &u.host);
            count_each(
                &dropped,
                &host,
                "reason",
                [("spool_full", u.spool_overflow)],
            );
            count_each(
                &tasks,
                &host,
                "outcome",
                [
                    ("received", u.tasks_received),
                    ("refused", u.tasks_refused),
                    ("malformed", u.tasks_malformed),
                ],
            );
            set_each(
                &spool,
                &host,
                "what",
                [
                    ("bytes", u.spool_bytes as i64),
                    ("pending", u.spool_pending as i64),
                ],
            );
            nats.get_or_create(&host).set(i64::from(u.nats_connected));
        }
    }
}

type AckFuture =
    Pin<Box<dyn Future<Output = Result<jetstream::publish::PublishAck, String>> + Send>>;

struct InFlight {
    origin: String,
    seq: u64,
    mark: Mark,
    /// `None`: already acknowledged by an earlier run; settled in its turn without a send.
    ack: Option<AckFuture>,
}

/// A running uplink: the host's broker into JetStream, the fleet's tasks into the host.
pub struct NatsUplink {
    stats: Arc<Mutex<UplinkStats>>,
    stop: watch::Sender<bool>,
    forward: tokio::task::JoinHandle<Result<(), FleetError>>,
    side: Vec<tokio::task::JoinHandle<()>>,
    bridged: Bridged,
    nats: async_nats::Client,
}

impl NatsUplink {
    /// Opens the spool, joins the broker at `broker` (resuming after what the spool holds)
    /// and starts forwarding. NATS may be away: the connection is retried in the
    /// background and events wait in the spool.
    pub async fn start(config: UplinkConfig, broker: &str) -> Result<Self, FleetError> {
        let patterns = config
            .subjects
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FleetError::Config(e.to_string()))?;
        let host = config.host_name();
        let spool = Spool::open(config.spool_path(), config.spool_max_bytes)?;
        let name = format!("busbridge-uplink-{host}");
        let nats = connect(&config, &name, false).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .ack_timeout(config.ack_timeout)
            .max_ack_inflight(config.in_flight)
            .build(nats.clone());
        let bridged = BridgeBuilder::new()
            .phase(Phase::BusrtOnly)
            .connect(broker)
            .name(name.clone())
            // A durable subscriber would rather wait for a resend than skip a gap.
            .gap_wait(Duration::from_secs(10))
            .resume(spool.spooled().clone())
            .client_options(ClientOptions {
                reconnect_initial: Duration::from_millis(50),
                ..Default::default()
            })
            .build()
            .await?;
        let take = match config.codec {
            CodecKind::Protobuf => Taken::protobuf,
            CodecKind::Json => Taken::json,
        };
        let events = bridged
            .event_bus(EventBusConfig {
                publisher_id: name.clone(),
                ..EventBusConfig::default()
            })
            .subscribe_map(EventSubscription::everything(&name), take)
            .await?;
        let stats = Arc::new(Mutex::new(UplinkStats {
            host: host.clone(),
            spool_recovered: spool.stats().recovered,
            ..UplinkStats::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let mut side = Vec::new();
        if config.tasks {
            let tasks = TaskClient::connect_lazily(
                broker,
                TaskClientOptions {
                    client: ClientOptions {
                        name: Some(format!("{name}.tasks")),
                        reconnect_initial: Duration::from_millis(50),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
            let tasks = Arc::new(tasks);
            side.push(tokio::spawn(announce(
                config.clone(),
                host.clone(),
                js.clone(),
                tasks.clone(),
                stopped.clone(),
            )));
            side.push(tokio::spawn(serve_tasks(
                config.clone(),
                host.clone(),
                nats.clone(),
                tasks,
                stats.clone(),
                stopped.clone(),
            )));
        }
        let forward = Forward {
            subject_prefix: format!("{}.{host}.", config.prefix),
            config,
            patterns,
            spool,
            js,
            nats: nats.clone(),
            stats: stats.clone(),
            in_flight: VecDeque::new(),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            paused_until: None,
            stream_ready: false,
            disconnected_since: None,
            said_disconnected: false,
        };
        let forward = tokio::spawn(forward.run(events, stopped));
        Ok(Self {
            stats,
            stop,
            forward,
            side,
            bridged,
            nats,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> UplinkStats {
        read_stats(&self.stats, &self.nats)
    }

    /// Reads [`stats`](Self::stats) without borrowing the uplink: what a `/metrics`
    /// endpoint's source holds.
    pub fn stats_reader(&self) -> impl Fn() -> UplinkStats + Send + Sync + 'static {
        let (stats, nats) = (self.stats.clone(), self.nats.clone());
        move || read_stats(&stats, &nats)
    }

    /// The bridged bus the uplink reads from (its statistics, its link).
    pub fn bridged(&self) -> &Bridged {
        &self.bridged
    }

    /// Stops: the spool is flushed and its positions written, the bridge is closed. What
    /// was not acknowledged stays in the spool for the next start.
    pub async fn shutdown(mut self) -> Result<UplinkStats, FleetError> {
        let _ = self.stop.send(true);
        let result = (&mut self.forward).await.unwrap_or(Ok(()));
        for task in &self.side {
            task.abort();
        }
        self.bridged.shutdown().await;
        let _ = self.nats.flush().await;
        let stats = self.stats();
        result.map(|()| stats)
    }
}

/// An event as the uplink takes it from the bus: encoded on the delivering task (the
/// bridge's), which spares a copy of the envelope and runs beside the uplink's own task.
struct Taken {
    origin: String,
    seq: u64,
    topic: Topic,
    payload: Result<Vec<u8>, CodecError>,
}

impl Taken {
    fn with(envelope: &Envelope, kind: CodecKind) -> Self {
        Self {
            origin: envelope.origin.clone(),
            seq: envelope.seq,
            topic: topic_for_event(&envelope.event),
            payload: Codec::new(kind, DEFAULT_MAX_MESSAGE_SIZE).encode(envelope),
        }
    }

    fn protobuf(envelope: &Envelope) -> Self {
        Self::with(envelope, CodecKind::Protobuf)
    }

    fn json(envelope: &Envelope) -> Self {
        Self::with(envelope, CodecKind::Json)
    }
}

struct Forward {
    config: UplinkConfig,
    /// `<prefix>.<host>.`
    subject_prefix: String,
    patterns: Vec<Pattern>,
    spool: Spool,
    js: jetstream::Context,
    nats: async_nats::Client,
    stats: Arc<Mutex<UplinkStats>>,
    in_flight: VecDeque<InFlight>,
    backoff: Backoff,
    paused_until: Option<Instant>,
    stream_ready: bool,
    disconnected_since: Option<Instant>,
    said_disconnected: bool,
}

impl Forward {
    async fn run(
        mut self,
        events: Receiver<Taken>,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<(), FleetError> {
        let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = 0;
        loop {
            self.send_ready().await?;
            self.settle_skipped()?;
            self.publish_stats();
            let paused = self.paused_until;
            tokio::select! {
                biased;
                _ = stopped.changed() => break,
                ack = front_ack(&mut self.in_flight) => {
                    self.acknowledged(ack)?;
                    // Acknowledgements come in bursts: take every one already there.
                    while let Some(ack) = self
                        .in_flight
                        .front_mut()
                        .and_then(|f| f.ack.as_mut())
                        .and_then(|a| a.as_mut().now_or_never())
                    {
                        self.acknowledged(ack)?;
                    }
                }
                next = events.recv_async() => {
                    let Some(envelope) = next else { break };
                    self.take(envelope)?;
                    for _ in 1..INTAKE_BATCH {
                        match events.try_recv() {
                            Ok(envelope) => self.take(envelope)?,
                            Err(_) => break,
                        }
                    }
                    self.spool.flush()?;
                }
                _ = sleep_until(paused), if paused.is_some() => self.paused_until = None,
                _ = checkpoint.tick() => {
                    let acked = self.spool.stats().acked;
                    if acked != last_checkpoint {
                        self.spool.checkpoint()?;
                        last_checkpoint = acked;
                    }
                }
            }
        }
        self.spool.flush()?;
        self.spool.checkpoint()?;
        self.publish_stats();
        Ok(())
    }

    /// An event from the host's bus into the spool, if a pattern wants it. It is counted
    /// received together with its outcome, so a reading of the counters never shows an event
    /// received but neither filtered, spooled nor dropped.
    fn take(&mut self, taken: Taken) -> Result<(), FleetError> {
        let filtered = || {
            let mut stats = self.stats.lock();
            stats.received += 1;
            stats.filtered += 1;
        };
        if !self.patterns.iter().any(|p| p.matches(&taken.topic)) {
            filtered();
            return Ok(());
        }
        let payload = match taken.payload {
            Ok(p) => p,
            Err(e) => {
                // It came off the bus, so it encoded once; a size limit is the only way here.
                tracing::warn!(origin = %taken.origin, seq = taken.seq, error = %e, "uplink: event not forwarded");
                filtered();
                return Ok(());
            }
        };
        let record = Record {
            subject: format!("{}{}", self.subject_prefix, taken.topic.as_str()),
            origin: taken.origin,
            seq: taken.seq,
            payload: payload.into(),
        };
        let pushed = self.spool.push(record)?;
        let mut stats = self.stats.lock();
        stats.received += 1;
        if pushed {
            stats.spooled += 1;
            return Ok(());
        }
        let spool = self.spool.stats();
        stats.spool_overflow = spool.overflow;
        drop(stats);
        if spool.overflow.is_power_of_two() {
            tracing::warn!(
                overflow = spool.overflow,
                bytes = spool.bytes,
                "uplink: the spool is full; events are dropped until JetStream acknowledges"
            );
        }
        Ok(())
    }

    /// Publishes what the spool holds, up to the window, unless paused after a failure.
    async fn send_ready(&mut self) -> Result<(), FleetError> {
        if self.paused_until.is_some() {
            return Ok(());
        }
        if !self.stream_ready {
            if self.spool.stats().pending == 0 {
                return Ok(());
            }
            if self.nats.connection_state() != async_nats::connection::State::Connected {
                // The client reconnects on its own; look again shortly, and say so once if
                // it lasts.
                let since = *self.disconnected_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(3) && !self.said_disconnected {
                    self.said_disconnected = true;
                    tracing::warn!(nats = %self.config.nats, pending = self.spool.stats().pending, "uplink: NATS is not reachable; events wait in the spool");
                }
                self.paused_until = Some(Instant::now() + Duration::from_millis(50));
                return Ok(());
            }
            if self.disconnected_since.take().is_some() && self.said_disconnected {
                self.said_disconnected = false;
                tracing::info!("uplink: NATS is back; sending the spool");
            }
            if let Err(e) = ensure_stream(&self.js, &self.config).await {
                self.failed(&e.to_string());
                return Ok(());
            }
            self.stream_ready = true;
        }
        while self.in_flight.len() < self.config.in_flight {
            let Some((record, mark)) = self.spool.read_next()? else {
                break;
            };
            if record.seq <= self.spool.acked().get(&record.origin).unwrap_or(0) {
                self.in_flight.push_back(InFlight {
                    origin: record.origin,
                    seq: record.seq,
                    mark,
                    ack: None,
                });
                continue;
            }
            let publish = PublishMessage::build()
                .payload(record.payload)
                .message_id(super::message_id(&record.origin, record.seq));
            match self.js.send_publish(record.subject, publish).await {
                Ok(ack) => {
                    self.stats.lock().published += 1;
                    self.in_flight.push_back(InFlight {
                        origin: record.origin,
                        seq: record.seq,
                        mark,
                        ack: Some(Box::pin(async move {
                            ack.into_future().await.map_err(|e| e.to_string())
                        })),
                    });
                }
                Err(e) => {
                    self.failed(&e.to_string());
                    break;
                }
            }
        }
        Ok(())
    }

    /// Records at the front that an earlier run had sent and JetStream acknowledged.
    fn settle_skipped(&mut self) -> Result<(), FleetError> {
        while self.in_flight.front().is_some_and(|f| f.ack.is_none()) {
            let f = self.in_flight.pop_front().expect("checked");
            self.spool.ack(&f.origin, f.seq, f.mark)?;
        }
        Ok(())
    }

    fn acknowledged(
        &mut self,
        ack: Result<jetstream::publish::PublishAck, String>,
    ) -> Result<(), FleetError> {
        let f = self
            .in_flight
            .pop_front()
            .expect("an acknowledgement is for the front");
        match ack {
            Ok(ack) => {
                self.spool.ack(&f.origin, f.seq, f.mark)?;
                self.backoff.reset();
                let mut stats = self.stats.lock();
                stats.acked += 1;
                stats.duplicates += u64::from(ack.duplicate);
            }
            Err(e) => self.failed(&e),
        }
        Ok(())
    }

    /// A publish failed: everything not acknowledged is sent again after a back-off, in
    /// order (JetStream drops what had arrived by its message id).
    fn failed(&mut self, reason: &str) {
        let delay = self.backoff.next_delay();
        self.stats.lock().publish_failures += 1;
        if self.backoff.attempt() <= 1 || self.backoff.attempt().is_power_of_two() {
            tracing::warn!(%reason, retry_in = ?delay, pending = self.spool.stats().pending, "uplink: JetStream publish failed; events wait in the spool");
        }
        self.in_flight.clear();
        self.spool.rewind();
        self.stream_ready = false;
        self.paused_until = Some(Instant::now() + delay);
    }

    fn publish_stats(&self) {
        let spool = self.spool.stats();
        let mut stats = self.stats.lock();
        // `spool_overflow` is not copied here: `take` counts it with the event it drops.
        stats.spool_bytes = spool.bytes;
        stats.spool_pending = spool.pending;
    }
}

/// Creates the stream if asked to and it does not exist.
async fn ensure_stream(js: &jetstream::Context, config: &UplinkConfig) -> Result<(), FleetError> {
    if config.create_stream {
        js.get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: config.stream_subjects(),
            storage: jetstream::stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(js_error)?;
    }
    Ok(())
}

async fn front_ack(
    in_flight: &mut VecDeque<InFlight>,
) -> Result<jetstream::publish::PublishAck, String> {
    match in_flight.front_mut().and_then(|f| f.ack.as_mut()) {
        Some(ack) => ack.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Keeps the host's entry in the hosts bucket fresh: its collectors, every heartbeat. The
/// bucket's entries expire after five heartbeats, so a host that stops is forgotten.
async fn announce(
    config: UplinkConfig,
    host: String,
    js: jetstream::Context,
    tasks: Arc<TaskClient>,
    mut stopped: watch::Receiver<bool>,
) {
    let bucket = super::hosts_bucket(&config.stream);
    let mut store = None;
    let mut tick = tokio::time::interval(config.heartbeat);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tick.tick() => {}
        }
        if store.is_none() {
            store = match js.get_key_value(&bucket).await {
                Ok(s) => Some(s),
                Err(_) => js
                    .create_key_value(jetstream::kv::Config {
                        bucket: bucket.clone(),
                        history: 1,
                        max_age: config.heartbeat * 5,
                        storage: jetstream::stream::StorageType::Memory,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| tracing::debug!(error = %e, "uplink: hosts bucket not ready"))
                    .ok(),
            };
        }
        let Some(kv) = &store else { continue };
        let info = HostInfo {
            host: host.clone(),
            collectors: tasks.collectors().into_iter().map(|e| e.info).collect(),
        };
        let value = serde_json::to_vec(&info).expect("host info serializes");
        if let Err(e) = kv.put(&host, value.into()).await {
            tracing::debug!(error = %e, "uplink: announcement not stored");
        }
    }
}

/// Tasks from the fleet into the host's task layer; each event back to the reply subject.
async fn serve_tasks(
    config: UplinkConfig,
    host: String,
    nats: async_nats::Client,
    tasks: Arc<TaskClient>,
    stats: Arc<Mutex<UplinkStats>>,
    mut stopped: watch::Receiver<bool>,
) {
    let subscribe = |subject: String| {
        let nats = nats.clone();
        async move { nats.subscribe(subject).await }
    };
    let (own, fleet) = match tokio::try_join!(
        subscribe(super::host_task_subject(&config.prefix, &host)),
        subscribe(super::fleet_task_subject(&config.prefix)),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "uplink: cannot subscribe to fleet tasks");
            return;
        }
    };
    let mut requests =
        futures_util::stream::select(own.map(|m| (m, false)), fleet.map(|m| (m, true)));
    loop {
        let (message, fleet_wide) = tokio::select! {
            _ = stopped.changed() => return,
            next = requests.next() => match next {
                Some(m) => m,
                None => return,
            },
        };
        let spec = serde_json::from_slice::<TaskSpec>(&message.payload);
        let (Some(reply), Ok(spec)) = (message.reply, spec) else {
            stats.lock().tasks_malformed += 1;
            continue;
        };
        let info = HostInfo {
            host: host.clone(),
            collectors: tasks.collectors().into_iter().map(|e| e.info).collect(),
        };
        // A fleet-wide task is for capable hosts only; the centre expects no answer here.
        if fleet_wide && !info.can_run(&spec) {
            continue;
        }
        stats.lock().tasks_received += 1;
        let (nats, tasks, host, stats) = (nats.clone(), tasks.clone(), host.clone(), stats.clone());
        tokio::spawn(async move {
            let send = |reply_msg: HostReply| {
                let body = serde_json::to_vec(&reply_msg).expect("a reply serializes");
                let (nats, reply) = (nats.clone(), reply.clone());
                async move {
                    if let Err(e) = nats.publish(reply, body.into()).await {
                        tracing::debug!(error = %e, "uplink: task reply not sent");
                    }
                }
            };
            match tasks.submit(spec).await {
                Err(e) => {
                    stats.lock().tasks_refused += 1;
                    send(HostReply::Refused {
                        host,
                        reason: e.to_string(),
                    })
                    .await;
                }
                Ok(mut handle) => {
                    while let Some(event) = handle.next().await {
                        send(HostReply::Event {
                            host: host.clone(),
                            event,
                        })
                        .await;
                    }
                }
            }
        });
    }
}
