//! Measurements for `busbridge bench` and `benches/`: throughput, latency percentiles, CPU
//! and memory of each path, and the ratios against the legacy crossbeam router and raw busrt
//! measured in the same run on the same machine.
//!
//! Numbers are only compared with each other (ratios), never with fixed thresholds: machines
//! differ and are shared.

use busbridge::bridge::{BridgeBuilder, SendOptions};
use busbridge::client::QoS;
use busbridge::codec::Codec;
use busbridge::event::{CollectionEvent, PerformanceEvent, SourceCaps};
use busbridge::phase::Phase;
use busbridge::rpc::RpcNode;
use busbridge::subscription::{BusEvent, EventSubscription};
use busbridge::Broker;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per throughput run.
    pub events: usize,
    /// RPC calls per run.
    pub calls: usize,
    /// Seconds of the steady 10,000 events/s run.
    pub steady_secs: u64,
    /// Seconds the slow subscriber stops reading.
    pub stall_secs: u64,
    /// Run only the paths whose name contains this, or the one path whose whole name it is
    /// (for profiling one path); `|` separates alternatives.
    pub only: Option<String>,
    /// Each path runs this many times, interleaved with the others; the median counts.
    pub rounds: usize,
    /// Whether freed memory stays with the process between runs.
    pub memory: Memory,
}

impl BenchOptions {
    /// Under a minute on a 2-core machine: more, shorter rounds than the full run, so a
    /// noisy moment moves one round's ratio, not the median. Runs of 30,000 events (a few
    /// tens of milliseconds on the fast paths) and a 6 s steady run left two quick runs on a
    /// quiet machine up to 41% apart on some ratios.
    pub fn quick() -> Self {
        Self {
            events: 100_000,
            calls: 3_000,
            steady_secs: 10,
            stall_secs: 2,
            only: None,
            rounds: 7,
            memory: Memory::Kept,
        }
    }
    /// The full run: bigger samples, the 10 s stall the targets name.
    pub fn full() -> Self {
        Self {
            events: 300_000,
            calls: 30_000,
            steady_secs: 10,
            stall_secs: 10,
            only: None,
            rounds: 5,
            memory: Memory::Kept,
        }
    }
}

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub name: String,
    pub events: u64,
    /// Events (or calls) that arrived; below `events` only if the path lost some.
    pub delivered: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub cpu_secs_per_million: f64,
    /// Process high-water mark after this run (the runs share a process).
    pub peak_rss_mib: f64,
}

/// Which side of its target a ratio must be on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtLeast,
    AtMost,
}

/// A target, as a ratio of two measurements of the same run (or a quantity of one run, such
/// as a difference of CPU per event or a percentile, where the target names one).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
    pub target: f64,
    pub bound: Bound,
    pub met: bool,
}

impl Ratio {
    fn new(name: &str, value: f64, bound: Bound, target: f64) -> Self {
        let met = match bound {
            Bound::AtLeast => value >= target,
            Bound::AtMost => value <= target,
        };
        Ratio {
            name: name.into(),
            value,
            target,
            bound,
            met,
        }
    }
}

/// The steady-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub rate_per_sec: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Publish-to-delivery latency of raw busrt clients carrying the same stream: how much
    /// of the bridged latency is the machine's (its wake-ups, its other load).
    pub raw_busrt_p50_us: f64,
    pub raw_busrt_p99_us: f64,
    /// Each segment's p99, the median over the segments (the target's figure: like the
    /// other targets' medians of rounds, a noisy moment of a shared machine moves one
    /// segment, not the result). `p99_us` is over the whole run.
    pub segment_p99_us: f64,
    /// The same for raw busrt carrying the same stream.
    pub raw_busrt_segment_p99_us: f64,
    /// CPU of the whole process (publisher bridge, subscriber bridge, broker) over wall time.
    pub cpu_fraction_of_core: f64,
    /// The same for raw busrt clients carrying the same stream (same rate, bytes, QoS).
    pub raw_busrt_cpu_fraction_of_core: f64,
    /// What the two bridges add over raw busrt, per bridge (the difference, halved).
    pub bridge_cpu_fraction_of_core: f64,
}

/// The stalled-subscriber run.
#[derive(Debug, Clone, Serialize)]
pub struct Stall {
    pub stall_secs: u64,
    pub published: u64,
    pub queue_capacity: usize,
    pub max_queue_len: usize,
    pub dropped_counted: u64,
    pub slowest_publish_us: f64,
    pub rss_growth_mib: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    /// `/proc/loadavg` (1, 5 and 15 minutes) when the run started and when it ended: a busy
    /// machine makes every number less certain.
    pub load_average_start: [f64; 3],
    pub load_average_end: [f64; 3],
    /// Rounds each path ran (its median round is reported; ratios are medians of each
    /// round's ratio, so a slow moment counts against both sides alike).
    pub rounds: usize,
    /// Whether freed memory stayed with the process between runs (`--cold` returns it).
    pub memory: Memory,
    pub measurements: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
    /// `None` when filtered out with `only`.
    pub steady: Option<Steady>,
    pub stall: Option<Stall>,
}

fn rusage() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let cpu = u.ru_utime.tv_sec as f64
        + u.ru_utime.tv_usec as f64 / 1e6
        + u.ru_stime.tv_sec as f64
        + u.ru_stime.tv_usec as f64 / 1e6;
    (cpu, u.ru_maxrss as f64 / 1024.0)
}

fn current_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|pages| pages * 4096.0 / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latency_us(e: &BusEvent) -> f64 {
    SystemTime::now()
        .duration_since(e.timestamp)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e6
}

/// Where a run's figures start and end (wall clock, process CPU seconds): from its first
/// event sent to its last received, marked by the path's code with [`window_open`] and
/// [`window_close`]. Setting up and tearing down brokers, bridges and clients differs from
/// path to path, and weighed most on a quick run's few events, so it is left out. A run that
/// marks nothing is measured whole.
static WINDOW: std::sync::Mutex<[Option<(Instant, f64)>; 2]> = std::sync::Mutex::new([None; 2]);

fn mark(end: usize) {
    let now = (Instant::now(), rusage().0);
    if let Ok(mut w) = WINDOW.lock() {
        w[end] = Some(now);
    }
}

/// Forgets the last run's marks.
fn window_reset() {
    if let Ok(mut w) = WINDOW.lock() {
        *w = [None; 2];
    }
}

/// The marked window: its start and end, each (wall clock, process CPU seconds).
fn window_marked() -> Option<((Instant, f64), (Instant, f64))> {
    match WINDOW.lock().map(|w| *w) {
        Ok([Some(open), Some(close)]) => Some((open, close)),
        _ => None,
    }
}

/// The measured part of a run starts: right before its first event is sent.
fn window_open() {
    mark(0);
}

/// The measured part of a run ends: right after its last event is received.
fn window_close() {
    mark(1);
}

/// What the allocator does with memory a run freed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Memory {
    /// Kept for the next run, as a long-running process keeps what its queues once took:
    /// a run pays for fresh pages only where it grows beyond every run before it.
    Kept,
    /// Returned to the system before each run (`--cold`): every run starts from fresh pages,
    /// as a process starting up (the bench's only mode before this release).
    Returned,
}

impl Memory {
    /// Sets the allocator up for the whole bench.
    fn apply(self) {
        if self == Memory::Kept {
            // mimalloc's `purge_delay` (option 15 in its enum; the crate exports no name for
            // it): -1 never gives freed pages back, so no later run faults them in again.
            // SAFETY: setting an option has no preconditions; it is read when pages are freed.
            unsafe { libmimalloc_sys::mi_option_set(15, -1) };
        }
    }
}

/// Before each run: collects what the previous run freed. With `Memory::Returned` it goes
/// back to the system now, not a second later (mimalloc's delay), where that work (hundreds
/// of MiB after a full run's queues) fell into whichever run came next, a short one most;
/// with purging off (`Memory::Kept`) nothing is given back.
fn settle() {
    // SAFETY: mi_collect has no preconditions; it only walks the allocator's own heaps.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Runs `f` and turns its latencies into a measurement.
async fn measure<F, Fut>(name: &str, events: usize, f: F) -> Measurement
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<f64>>,
{
    settle();
    window_reset();
    let whole = (Instant::now(), rusage().0);
    let mut lat = f().await;
    let (cpu_end, rss) = rusage();
    let ((t0, cpu0), (t1, cpu1)) = window_marked().unwrap_or((whole, (Instant::now(), cpu_end)));
    let seconds = t1.duration_since(t0).as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let m = Measurement {
        name: name.into(),
        events: events as u64,
        seconds,
        delivered: lat.len() as u64,
        // What arrived, not what was sent: a run that lost events does not look faster.
        events_per_sec: lat.len() as f64 / seconds,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        cpu_secs_per_million: (cpu1 - cpu0) / events as f64 * 1e6,
        peak_rss_mib: rss,
    };
    tracing::debug!(name, eps = m.events_per_sec, "measured");
    m
}

/// The event every path carries (a performance sample, about 100 bytes encoded).
pub fn bench_event(i: usize) -> CollectionEvent {
    CollectionEvent::Performance(PerformanceEvent {
        metric_name: "cpu.user.percent.core0.bench".into(),
        value: i as f64,
        unit: "percent".into(),
        pid: Some(i as u32),
        component: "procmond".into(),
        timestamp: SystemTime::now(),
    })
}

fn all() -> EventSubscription {
    EventSubscription::everything("bench")
}

/// Subscribers in the local fan-out runs.
const FANOUT: usize = 2;

/// (a) A reference fan-out router written as the legacy one was: one routing thread that
/// stamps an event id and clones the event into each subscriber's crossbeam channel.
#[cfg(feature = "legacy")]
pub async fn reference_router(events: usize) -> Vec<f64> {
    let (input, routed) = crossbeam_channel::unbounded::<(CollectionEvent, String, SystemTime)>();
    let mut outs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..FANOUT {
        let (tx, rx) = crossbeam_channel::unbounded::<BusEvent>();
        outs.push(tx);
        readers.push(std::thread::spawn(move || {
            (0..events)
                .map(|_| latency_us(&rx.recv().expect("routed")))
                .collect::<Vec<_>>()
        }));
    }
    let router = std::thread::spawn(move || {
        for (event, correlation_id, timestamp) in routed.iter() {
            let event_id = uuid::Uuid::new_v4().to_string();
            for out in &outs {
                let _ = out.send(BusEvent {
                    event_id: event_id.clone(),
                    priority: event.priority(),
                    event: event.clone(),
                    correlation_id: correlation_id.clone(),
                    publisher_id: "bench".into(),
                    timestamp,
                });
            }
        }
    });
    window_open();
    for i in 0..events {
        let _ = input.send((bench_event(i), String::new(), SystemTime::now()));
    }
    drop(input);
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.join().unwrap_or_default());
    }
    window_close();
    let _ = router.join();
    lat
}

/// (b) busbridge phase 0: the crossbeam facade over the legacy router, same fan-out.
#[cfg(feature = "legacy")]
pub async fn phase0(events: usize) -> Vec<f64> {
    use busbridge::legacy::crossbeam::*;
    let bus = HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default())
        .await
        .expect("bus");
    let mut readers = Vec::new();
    for i in 0..FANOUT {
        let mut s = all();
        s.subscriber_id = format!("bench-{i}");
        let rx = bus.subscribe(s).await.expect("subscribe");
        readers.push(std::thread::spawn(move || {
            (0..events)
                .map(|_| latency_us(&rx.recv().expect("delivered")))
                .collect::<Vec<_>>()
        }));
    }
    window_open();
    for i in 0..events {
        let _ = bus.publish(bench_event(i), String::new()).await;
    }
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.join().unwrap_or_default());
    }
    window_close();
    lat
}

/// Payload of the raw busrt runs: the same bytes busbridge sends for the bench event.
fn raw_payload() -> Vec<u8> {
    Codec::default()
        .encode(&busbridge::codec::Envelope::new(
            bench_event(0),
            "",
            "bench",
        ))
        .unwrap_or_default()
}

/// What a raw busrt run carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Payload {
    /// The bytes busbridge sends for the bench event, never encoded or decoded: busrt alone.
    Opaque,
    /// The code a user would write instead of busbridge: each event encoded with prost as the
    /// legacy record before it is published, and decoded back into an event on receipt.
    Prost,
}

/// The legacy record of bench event `i`, as hand-written code would fill it.
fn legacy_record(i: usize) -> Vec<u8> {
    use busbridge::codec::proto::PerformanceRecord;
    use prost::Message;
    let CollectionEvent::Performance(e) = bench_event(i) else {
        unreachable!("the bench event is a performance sample")
    };
    let at = e
        .timestamp
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    PerformanceRecord {
        metric_id: uuid::Uuid::new_v4().to_string(),
        metric_name: e.metric_name,
        value: e.value,
        unit: e.unit,
        pid: e.pid,
        component: e.component,
        collection_time: at.as_millis() as i64,
        ..Default::default()
    }
    .encode_to_vec()
}

/// The event hand-written code decodes from a legacy record (`None` if it is not one).
fn from_legacy_record(bytes: &[u8]) -> Option<CollectionEvent> {
    use busbridge::codec::proto::PerformanceRecord;
    use prost::Message;
    let r = PerformanceRecord::decode(bytes).ok()?;
    Some(CollectionEvent::Performance(PerformanceEvent {
        metric_name: r.metric_name,
        value: r.value,
        unit: r.unit,
        pid: r.pid,
        component: r.component,
        timestamp: std::time::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(r.collection_time).ok()?),
    }))
}

/// The raw runs' broker: busrt closes a client that sent nothing for its timeout (1 s by
/// default; a subscriber that only reads does that) and logs an error, so the timeout covers
/// the run. busbridge's clients ping instead.
fn raw_server_config() -> busrt::broker::ServerConfig {
    busrt::broker::ServerConfig::default().timeout(Duration::from_secs(120))
}

/// Waits (up to a second) until busrt has let go of clients dropped just before: their
/// reader tasks end asynchronously, and one still running when the broker goes reads the
/// closed socket and logs an error. busrt has no client count; a name it has let go of can
/// be registered again.
async fn released(broker: &busrt::broker::Broker, names: &[&str]) {
    let until = Instant::now() + Duration::from_secs(1);
    for name in names {
        while Instant::now() < until {
            if let Ok(c) = broker.register_client(name).await {
                broker.unregister_client(&c).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// (c) raw busrt with its own clients; `window` acknowledgements in flight (0 = `QoS::No`).
/// With `pace`, that many events leave every millisecond, acknowledged and flushed each
/// (busrt `RealtimeProcessed`, what busbridge's `Processed` uses): the steady comparison.
pub async fn raw_busrt(events: usize, unix: bool, window: usize, pace: Option<usize>) -> Vec<f64> {
    let via = if unix { Via::Unix } else { Via::InProcess };
    raw_busrt_with(Payload::Opaque, via, events, window, pace).await
}

/// How raw busrt clients reach the broker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    /// Registered in the broker's process, no socket.
    InProcess,
    /// busrt's own Unix socket server.
    Unix,
    /// busbridge's broker: its Unix socket, whose checked connections are handed to busrt.
    Relay,
}

/// [`raw_busrt`] carrying `payload`, reaching the broker `via`.
pub async fn raw_busrt_with(
    payload: Payload,
    via: Via,
    events: usize,
    window: usize,
    pace: Option<usize>,
) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raw.sock").to_string_lossy().into_owned();
    // Queues hold a whole run: busrt unregisters a subscriber whose queue fills, which would
    // end the run early and flatter raw busrt.
    let queue = events.max(262_144) + 16;
    let mut broker = busrt::broker::Broker::new();
    broker.set_queue_size(queue);
    let mut ours = Broker::new();
    if via == Via::Relay {
        ours.set_name(format!("bench-relay-{}", uuid::Uuid::new_v4().simple()));
        ours.set_queue_size(queue);
        ours.set_timeout(Duration::from_secs(120));
        ours.spawn_ipc_server(&path, 10).expect("listener");
        ours.spawn().await.expect("broker");
    }
    let (mut publisher, mut subscriber): (
        Box<dyn busrt::client::AsyncClient>,
        Box<dyn busrt::client::AsyncClient>,
    ) = if via != Via::InProcess {
        if via == Via::Unix {
            broker
                .spawn_unix_server(&path, raw_server_config())
                .await
                .expect("raw server");
        }
        let cfg = |n: &str| busrt::ipc::Config::new(&path, n).queue_size(queue);
        (
            Box::new(
                busrt::ipc::Client::connect(&cfg("p"))
                    .await
                    .expect("connect"),
            ),
            Box::new(
                busrt::ipc::Client::connect(&cfg("s"))
                    .await
                    .expect("connect"),
            ),
        )
    } else {
        (
            Box::new(broker.register_client("p").await.expect("client")),
            Box::new(broker.register_client("s").await.expect("client")),
        )
    };
    let rx = subscriber.take_event_channel().expect("channel");
    if let Ok(Some(c)) = subscriber.subscribe("bench/#", busrt::QoS::Processed).await {
        let _ = c.await;
    }
    let opaque = raw_payload();
    // One clock for both sides: latency is receive time minus send time.
    window_open();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(events);
        while lat.len() < events {
            let Ok(frame) = rx.recv().await else { break };
            if payload == Payload::Prost {
                std::hint::black_box(from_legacy_record(frame.payload()));
            }
            lat.push(start.elapsed().as_secs_f64());
        }
        // The channel lives as long as the clients: a client whose channel is gone stops
        // reading, and the broker then times it out.
        (lat, rx)
    });
    let mut sent_at = Vec::with_capacity(events);
    let mut acks = std::collections::VecDeque::new();
    let qos = match (window, pace) {
        (_, Some(_)) => busrt::QoS::RealtimeProcessed,
        (0, None) => busrt::QoS::No,
        _ => busrt::QoS::Processed,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..events {
        if let Some(per_tick) = pace {
            if i % per_tick.max(1) == 0 {
                tick.tick().await;
            }
        }
        sent_at.push(start.elapsed().as_secs_f64());
        let frame = match payload {
            Payload::Opaque => opaque.as_slice().into(),
            Payload::Prost => legacy_record(i).into(),
        };
        if let Ok(Some(c)) = publisher.publish("bench/metric", frame, qos).await {
            acks.push_back(c);
            if acks.len() >= window.max(1) {
                if let Some(a) = acks.pop_front() {
                    let _ = a.await;
                }
            }
        }
    }
    for a in acks {
        let _ = a.await;
    }
    let Ok((recv, rx)) = reader.await else {
        return Vec::new();
    };
    window_close();
    drop(publisher);
    if via != Via::InProcess {
        // busrt's client reader may still be running (preempted on a busy machine) just
        // after handing over the last frame: dropped then, it reads the broker's close of
        // the connection and logs a `reader error: Eof`. A moment lets it go idle; outside
        // the measured window.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(subscriber);
    drop(rx);
    ours.shutdown_within(Duration::from_secs(1)).await;
    if via == Via::Unix {
        released(&broker, &["p", "s"]).await;
    }
    recv.iter()
        .zip(sent_at)
        .map(|(r, s)| (r - s).max(0.0) * 1e6)
        .collect()
}

/// Reads `n` events in a task, as the raw busrt runs read theirs (each wait bounded by
/// 30 s), and returns their publish-to-delivery latencies with the receiver (to read on).
/// A blocking reader would spin between events, CPU the raw runs do not spend.
fn read_latencies(
    rx: busbridge::queue::Receiver<BusEvent>,
    n: usize,
) -> tokio::task::JoinHandle<(Vec<f64>, busbridge::queue::Receiver<BusEvent>)> {
    tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            // A waiting event is taken without the timeout: setting one up reads the clock,
            // a cost per event the raw runs' readers (which wait without one) do not pay.
            let event = match rx.try_recv() {
                Ok(e) => Some(e),
                Err(_) => tokio::time::timeout(Duration::from_secs(30), rx.recv_async())
                    .await
                    .ok()
                    .flatten(),
            };
            match event {
                Some(e) => lat.push(latency_us(&e)),
                None => break,
            }
        }
        (lat, rx)
    })
}

/// Where a bridged run's broker is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transport {
    InProcess,
    Unix,
    Tcp,
}

/// (d) busbridge phase 2: one bridged bus publishes, another delivers to its subscriber.
pub async fn phase2(events: usize, transport: Transport, batch: bool, qos: QoS) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::new();
    broker.set_name(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    // As for the raw runs: a queue that holds the run, so a realtime publisher outrunning the
    // subscriber does not get it unregistered mid-run (the bridge would recover by resends).
    broker.set_queue_size(events.max(262_144) + 16);
    let socket = dir.path().join("bench.sock");
    broker.spawn_ipc_server(&socket, 100).expect("listener");
    broker
        .spawn_tcp_server("127.0.0.1:0", 100)
        .expect("listener");
    broker.spawn().await.expect("broker");
    let uri = match transport {
        Transport::InProcess => format!("inproc://{}", broker.name()),
        Transport::Unix => format!("ipc://{}", socket.display()),
        Transport::Tcp => format!("tcp://{}", broker.tcp_addrs()[0]),
    };
    let send = SendOptions {
        batch_max: if batch { 500 } else { 1 },
        ..Default::default()
    };
    let build = |name: &str| {
        BridgeBuilder::new()
            .phase(Phase::BusrtOnly)
            .connect(&uri)
            .name(name)
            .qos(qos)
            .send_options(send)
            .client_options(busbridge::client::ClientOptions {
                queue_size: 262_144,
                ..Default::default()
            })
            .build()
    };
    let publisher = build("bench-pub").await.expect("bridge");
    let subscriber = build("bench-sub").await.expect("bridge");
    let sub_bus = subscriber.event_bus(busbridge::EventBusConfig {
        channel_capacity: events + 1,
        ..Default::default()
    });
    let rx = sub_bus.subscribe(all()).await.expect("subscribe");
    // The publisher's own bus has no subscriber; its own echoes are settled, not delivered.
    let pub_bus = publisher.event_bus(Default::default());
    let reader = read_latencies(rx, events);
    window_open();
    for i in 0..events {
        let _ = pub_bus.publish(bench_event(i), String::new()).await;
    }
    let lat = reader.await.map(|(lat, _)| lat).unwrap_or_default();
    window_close();
    publisher.shutdown().await;
    subscriber.shutdown().await;
    broker.shutdown_within(Duration::from_secs(1)).await;
    lat
}

/// A broker of its own on a Unix socket in a fresh temp dir (kept alive by the returned
/// guard), at most `connections` clients; its `ipc://` address.
async fn unix_broker(tag: &str, connections: u32) -> (tempfile::TempDir, Broker, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join(format!("{tag}.sock"));
    let mut broker = Broker::new();
    broker.set_name(format!("bench-{tag}-{}", uuid::Uuid::new_v4().simple()));
    broker
        .spawn_ipc_server(&socket, connections)
        .expect("listener");
    broker.spawn().await.expect("broker");
    let uri = format!("ipc://{}", socket.display());
    (dir, broker, uri)
}

/// (e) RPC calls: `concurrency` callers sharing `calls`.
pub async fn rpc_calls(calls: usize, concurrency: usize) -> Vec<f64> {
    let (_dir, mut broker, uri) = unix_broker("rpc", 100).await;
    let lat = rpc_calls_at(&uri, calls, concurrency).await;
    // Clients close asynchronously once dropped; closed under them, busrt's readers log it.
    broker.shutdown_within(Duration::from_secs(1)).await;
    lat
}

/// A busrt broker of its own (no busbridge in front) on a Unix socket in a fresh temp dir
/// (kept alive by the returned guard); the socket's path.
async fn raw_unix_broker() -> (tempfile::TempDir, busrt::broker::Broker, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raw.sock").to_string_lossy().into_owned();
    let mut broker = busrt::broker::Broker::new();
    broker
        .spawn_unix_server(&path, raw_server_config())
        .await
        .expect("raw server");
    (dir, broker, path)
}

/// (e'') [`rpc_calls`] on busrt's own Unix socket, without busbridge's broker in front: what
/// busbridge's accept loop adds to a round trip.
pub async fn rpc_calls_direct(calls: usize, concurrency: usize) -> Vec<f64> {
    let (_dir, broker, path) = raw_unix_broker().await;
    let lat = rpc_calls_at(&format!("ipc://{path}"), calls, concurrency).await;
    released(&broker, &["bench-server", "bench-client"]).await;
    lat
}

async fn rpc_calls_at(uri: &str, calls: usize, concurrency: usize) -> Vec<f64> {
    let server = RpcNode::connect(uri, "bench-server").await.expect("server");
    server
        .rpc_register_raw("echo", |b| async move { Ok(b) })
        .await
        .expect("register");
    let client = Arc::new(RpcNode::connect(uri, "bench-client").await.expect("client"));
    timed_calls(calls, concurrency, move || {
        let client = client.clone();
        async move {
            client
                .rpc_call_to("bench-server", "echo", b"{}".to_vec())
                .await
                .is_ok()
        }
    })
    .await
}

/// Calls from `concurrency` callers sharing `calls`, each call timed.
async fn timed_calls<F, Fut>(calls: usize, concurrency: usize, call: F) -> Vec<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let callers = concurrency.max(1);
    let mut tasks = Vec::new();
    window_open();
    for c in 0..callers {
        // Every call is made: the first `calls % callers` callers make one more.
        let per = calls / callers + usize::from(c < calls % callers);
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                if call().await {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    window_close();
    lat
}

/// Echoes every call: the raw busrt RPC server.
struct Echo;

#[async_trait::async_trait]
impl busrt::rpc::RpcHandlers for Echo {
    async fn handle_call(&self, event: busrt::rpc::RpcEvent) -> busrt::rpc::RpcResult {
        Ok(Some(event.payload().to_vec()))
    }
}

/// (e') The same calls with busrt's own RPC clients on a busrt broker, nothing of
/// busbridge's: what hand-written busrt RPC costs.
pub async fn raw_rpc_calls(calls: usize, concurrency: usize) -> Vec<f64> {
    use busrt::rpc::{Rpc, RpcClient};
    let (_dir, broker, path) = raw_unix_broker().await;
    let connect = |name: &'static str| {
        let cfg = busrt::ipc::Config::new(&path, name);
        async move { busrt::ipc::Client::connect(&cfg).await.expect("connect") }
    };
    let server = RpcClient::new(connect("raw-rpc-server").await, Echo);
    let client = Arc::new(RpcClient::new0(connect("raw-rpc-client").await));
    let caller = client.clone();
    let lat = timed_calls(calls, concurrency, move || {
        let client = caller.clone();
        async move {
            client
                .call(
                    "raw-rpc-server",
                    "echo",
                    b"{}".as_slice().into(),
                    busrt::QoS::RealtimeProcessed,
                )
                .await
                .is_ok()
        }
    })
    .await;
    drop((client, server));
    released(&broker, &["raw-rpc-server", "raw-rpc-client"]).await;
    lat
}

/// (f) Phase-5 tasks: one-of `echo` tasks to four collectors over Unix sockets, `in_flight`
/// at once, or one every `1/pace` seconds; the latency is submit to final status.
pub async fn task_round_trips(count: usize, in_flight: usize, pace: Option<usize>) -> Vec<f64> {
    use busbridge::task::{Status, TaskClient, TaskClientOptions, TaskServer, TaskSpec};
    let (_dir, mut broker, uri) = unix_broker("tasks", 100).await;
    let mut servers = Vec::new();
    for i in 0..4 {
        let server = TaskServer::builder(format!("bench-collector-{i}"), "process")
            .capabilities(SourceCaps::PROCESS)
            .capacity(64)
            .operation("echo", |_ctx, p| async move { Ok(p) })
            .serve(&uri)
            .await
            .expect("collector");
        servers.push(server);
    }
    let client = Arc::new(
        TaskClient::connect(&uri, TaskClientOptions::default())
            .await
            .expect("task client"),
    );
    client
        .wait_for(|c| c.len() == 4, Duration::from_secs(10))
        .await;
    // One task, submit to final status, in microseconds (None if it did not complete).
    let one = |client: Arc<TaskClient>, i: usize| async move {
        let t = Instant::now();
        let mut spec = TaskSpec::new("echo", serde_json::json!(i));
        spec.capabilities = SourceCaps::PROCESS;
        spec.timeout = Duration::from_secs(30);
        let handle = client.submit(spec).await.ok()?;
        let (_, status) = handle.results().await;
        (status == Status::Complete).then(|| t.elapsed().as_secs_f64() * 1e6)
    };
    let mut lat = Vec::with_capacity(count);
    window_open();
    match pace {
        // As the RPC path: `in_flight` callers, each submitting its next task when one ends
        // (no task spawned per call, so the harness costs the same on both paths).
        None => {
            let callers = in_flight.max(1);
            let mut running = tokio::task::JoinSet::new();
            for c in 0..callers {
                let per = count / callers + usize::from(c < count % callers);
                let client = client.clone();
                running.spawn(async move {
                    let mut lat = Vec::with_capacity(per);
                    for k in 0..per {
                        lat.extend(one(client.clone(), k * callers + c).await);
                    }
                    lat
                });
            }
            while let Some(r) = running.join_next().await {
                lat.extend(r.unwrap_or_default());
            }
        }
        // Open loop: one task every `1/per_sec` seconds whatever the latency, reaped as they
        // end so finished tasks do not pile up.
        Some(per_sec) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut running = tokio::task::JoinSet::new();
            for i in 0..count {
                tick.tick().await;
                running.spawn(one(client.clone(), i));
                while let Some(r) = running.try_join_next() {
                    lat.extend(r.ok().flatten());
                }
            }
            while let Some(r) = running.join_next().await {
                lat.extend(r.ok().flatten());
            }
        }
    }
    window_close();
    // Clients go before the broker, so none of them sees (and logs) a lost connection.
    drop(client);
    for s in servers {
        s.shutdown().await;
    }
    broker.shutdown_within(Duration::from_secs(1)).await;
    lat
}

/// A steady 10,000 events/s over a Unix socket (no batching), published from a runtime
/// task: latency and CPU. The bridged stream and raw busrt carrying the same stream
/// alternate in `segments` parts of the run (a shared machine's drift then hits both alike);
/// CPU figures are medians of the parts, latencies are over every bridged event.
pub async fn steady(secs: u64, segments: usize) -> Steady {
    let (_dir, mut broker, uri) = unix_broker("steady", 10).await;
    let build = |n: &str| {
        BridgeBuilder::new()
            .phase(Phase::BusrtOnly)
            .connect(&uri)
            .name(n)
            .build()
    };
    let (p, s) = (
        build("steady-pub").await.expect("bridge"),
        build("steady-sub").await.expect("bridge"),
    );
    let mut rx = s
        .event_bus(Default::default())
        .subscribe(all())
        .await
        .expect("subscribe");
    let pub_bus = std::sync::Arc::new(p.event_bus(Default::default()));
    let segments = segments.max(1);
    let per = (secs.max(1) as usize * 10_000 / segments).max(10);
    let (mut lat, mut bridged, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_lat, mut p99s, mut raw_p99s) = (Vec::new(), Vec::new(), Vec::new());
    // Sorts a segment's latencies and returns their p99.
    let p99 = |l: &mut Vec<f64>| {
        l.sort_by(|a, b| a.total_cmp(b));
        percentile(l, 0.99)
    };
    for _ in 0..segments {
        let reader = read_latencies(rx, per);
        let (cpu0, _) = rusage();
        let start = Instant::now();
        // Published from a task on the runtime, as a collector's loop runs, for both
        // streams: from the thread that calls `block_on` every tick and every hand-over to a
        // runtime task is a wake-up across threads (README: about twice the CPU for both
        // streams, and 3% of a core per bridge more).
        let publisher = pub_bus.clone();
        let publishing = tokio::spawn(async move {
            // 10 events each millisecond: the timer is the pace of the load, not a
            // synchronisation.
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut sent = 0;
            while sent < per {
                tick.tick().await;
                // Exactly `per`: a segment that sent more left its extra events to the next
                // segment's reader, a raw segment later (p999 of 1.45 s, all of them extras).
                for _ in 0..10.min(per - sent) {
                    let _ = publisher.publish(bench_event(sent), String::new()).await;
                    sent += 1;
                }
            }
        });
        let _ = publishing.await;
        let Ok((mut got, back)) = reader.await else {
            break;
        };
        bridged.push((rusage().0 - cpu0) / start.elapsed().as_secs_f64());
        p99s.push(p99(&mut got));
        lat.extend(got);
        rx = back;
        window_reset();
        let mut raw_got = tokio::spawn(raw_busrt(per, true, 256, Some(10)))
            .await
            .unwrap_or_default();
        raw_p99s.push(p99(&mut raw_got));
        raw_lat.extend(raw_got);
        if let Some(((t0, c0), (t1, c1))) = window_marked() {
            raw.push((c1 - c0) / t1.duration_since(t0).as_secs_f64());
        }
    }
    p.shutdown().await;
    s.shutdown().await;
    broker.shutdown_within(Duration::from_secs(1)).await;
    lat.sort_by(|a, b| a.total_cmp(b));
    raw_lat.sort_by(|a, b| a.total_cmp(b));
    let adds = bridged
        .iter()
        .zip(&raw)
        .map(|(b, r)| ((b - r) / 2.0).max(0.0));
    Steady {
        rate_per_sec: 10_000,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        raw_busrt_p50_us: percentile(&raw_lat, 0.5),
        raw_busrt_p99_us: percentile(&raw_lat, 0.99),
        segment_p99_us: median(p99s).unwrap_or(0.0),
        raw_busrt_segment_p99_us: median(raw_p99s).unwrap_or(0.0),
        cpu_fraction_of_core: median(bridged.clone()).unwrap_or(0.0),
        raw_busrt_cpu_fraction_of_core: median(raw.clone()).unwrap_or(0.0),
        bridge_cpu_fraction_of_core: median(adds.collect()).unwrap_or(0.0),
    }
}

/// A subscriber that stops reading for `secs` under 100,000 events/s (`DropOldest`, queue
/// of 10,000): queue bound, counted drops, publisher never blocked.
#[cfg(feature = "legacy")]
pub async fn stall(secs: u64) -> Stall {
    use busbridge::legacy::crossbeam::*;
    let capacity = 10_000;
    let bus = HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig {
        channel_capacity: capacity,
        backpressure_strategy: busbridge::subscription::BackpressureStrategy::DropOldest,
        ..Default::default()
    })
    .await
    .expect("bus");
    let rx = bus.subscribe(all()).await.expect("subscribe");
    let rss0 = current_rss_mib();
    let total = secs * 100_000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut slowest, mut max_len, mut sent) = (0f64, 0usize, 0u64);
    while sent < total {
        tick.tick().await;
        for _ in 0..100 {
            let t = Instant::now();
            let _ = bus.publish(bench_event(sent as usize), String::new()).await;
            slowest = slowest.max(t.elapsed().as_secs_f64() * 1e6);
            sent += 1;
        }
        max_len = max_len.max(rx.len());
    }
    let dropped = bus.get_statistics().await.events_dropped;
    Stall {
        stall_secs: secs,
        published: sent,
        queue_capacity: capacity,
        max_queue_len: max_len,
        dropped_counted: dropped,
        slowest_publish_us: slowest,
        rss_growth_mib: current_rss_mib() - rss0,
    }
}

/// Whether the path called `name` runs under `--only`: alternatives separated by `|`, each
/// the whole name of one path (that path alone: one name is often a prefix of another) or
/// text that names contain.
fn selected(only: Option<&str>, names: &[&str], name: &str) -> bool {
    let Some(only) = only else { return true };
    only.split('|').map(str::trim).any(|o| {
        if names.contains(&o) {
            name == o
        } else {
            name.contains(o)
        }
    })
}

/// One path of the run.
#[cfg(feature = "legacy")]
enum Path {
    Reference,
    Phase0,
    /// Payload, way to the broker, acknowledgements in flight (0 = `QoS::No`).
    Raw(Payload, Via, usize),
    /// Transport, batching, QoS.
    Phase2(Transport, bool, QoS),
    /// Calls in flight.
    Rpc(usize),
    /// busrt's own RPC, calls in flight.
    RawRpc(usize),
    /// busbridge's RPC on busrt's own socket (not busbridge's broker), calls in flight.
    DirectRpc(usize),
    /// Phase-5 tasks in flight, and a pace in tasks per second.
    Tasks(usize, Option<usize>),
}

#[cfg(feature = "legacy")]
impl Path {
    async fn run(&self, n: usize) -> Vec<f64> {
        match *self {
            Path::Reference => reference_router(n).await,
            Path::Phase0 => phase0(n).await,
            Path::Raw(payload, via, window) => raw_busrt_with(payload, via, n, window, None).await,
            Path::Phase2(transport, batch, qos) => phase2(n, transport, batch, qos).await,
            Path::Rpc(concurrency) => rpc_calls(n, concurrency).await,
            Path::RawRpc(concurrency) => raw_rpc_calls(n, concurrency).await,
            Path::DirectRpc(concurrency) => rpc_calls_direct(n, concurrency).await,
            Path::Tasks(in_flight, pace) => task_round_trips(n, in_flight, pace).await,
        }
    }
}

/// `/proc/loadavg`'s three averages (zeros where there is none).
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [(); 3].map(|()| it.next().unwrap_or(0.0))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied()
}

/// What a target compares, from one round's measurements of two paths.
#[cfg(feature = "legacy")]
#[derive(Clone, Copy)]
enum Compare {
    /// Events (or calls) per second, first over second.
    Rate,
    /// CPU per event (or call), first over second.
    Cpu,
    /// CPU per event of the first minus the second, in microseconds.
    CpuOver,
}

/// The targets between two paths: (name, first path, second path, what, bound, target).
#[cfg(feature = "legacy")]
const TARGETS: &[(&str, &str, &str, Compare, Bound, f64)] = &[
    (
        "phase 0 / reference crossbeam router",
        "busbridge phase 0",
        "reference crossbeam router",
        Compare::Rate,
        Bound::AtLeast,
        0.95,
    ),
    (
        "bridge's own CPU per event, us (phase 2 in-process - raw busrt in-process)",
        "busbridge phase 2 in-process, realtime",
        "raw busrt in-process, QoS::No",
        Compare::CpuOver,
        Bound::AtMost,
        1.2,
    ),
    (
        "phase 2 unix unbatched / hand-written busrt + prost unix QoS::No",
        "busbridge phase 2 unix, realtime",
        "hand-written busrt + prost unix, QoS::No",
        Compare::Rate,
        Bound::AtLeast,
        0.8,
    ),
    (
        "phase 2 unix processed / hand-written busrt + prost unix Processed x256",
        "busbridge phase 2 unix, processed",
        "hand-written busrt + prost unix, Processed x256",
        Compare::Rate,
        Bound::AtLeast,
        0.8,
    ),
    (
        "phase 2 unix batched / raw busrt unix QoS::No",
        "busbridge phase 2 unix, realtime, batched",
        "raw busrt unix, QoS::No",
        Compare::Rate,
        Bound::AtLeast,
        1.5,
    ),
    (
        "broker: raw busrt unix through busbridge's broker / busrt's own socket",
        "raw busrt unix through busbridge's broker, QoS::No",
        "raw busrt unix, QoS::No",
        Compare::Rate,
        Bound::AtLeast,
        0.9,
    ),
    (
        "rpc CPU per call, 1 in flight / raw busrt rpc",
        "rpc calls, 1 in flight",
        "raw busrt rpc calls, 1 in flight",
        Compare::Cpu,
        Bound::AtMost,
        1.5,
    ),
    (
        "rpc calls/s, 16 in flight / raw busrt rpc",
        "rpc calls, 16 in flight",
        "raw busrt rpc calls, 16 in flight",
        Compare::Rate,
        Bound::AtLeast,
        0.9,
    ),
    (
        "tasks 64 in flight / rpc 16 in flight",
        "tasks one-of, 4 collectors unix, 64 in flight",
        "rpc calls, 16 in flight",
        Compare::Rate,
        Bound::AtLeast,
        0.5,
    ),
];

/// Runs every measurement and computes the ratios.
#[cfg(feature = "legacy")]
pub async fn run(opts: &BenchOptions) -> Report {
    let load_average_start = load_average();
    opts.memory.apply();
    let n = opts.events;
    let calls = opts.calls;
    let (rt, pr) = (QoS::Realtime, QoS::Processed);
    let (opaque, prost) = (Payload::Opaque, Payload::Prost);
    let paths: Vec<(&str, usize, Path)> = vec![
        ("reference crossbeam router", n, Path::Reference),
        ("busbridge phase 0", n, Path::Phase0),
        (
            "raw busrt in-process, QoS::No",
            n,
            Path::Raw(opaque, Via::InProcess, 0),
        ),
        (
            "raw busrt unix, QoS::No",
            n,
            Path::Raw(opaque, Via::Unix, 0),
        ),
        (
            "raw busrt unix through busbridge's broker, QoS::No",
            n,
            Path::Raw(opaque, Via::Relay, 0),
        ),
        (
            "raw busrt unix, Processed x256",
            n,
            Path::Raw(opaque, Via::Unix, 256),
        ),
        (
            "hand-written busrt + prost unix, QoS::No",
            n,
            Path::Raw(prost, Via::Unix, 0),
        ),
        (
            "hand-written busrt + prost unix, Processed x256",
            n,
            Path::Raw(prost, Via::Unix, 256),
        ),
        (
            "busbridge phase 2 in-process, realtime",
            n,
            Path::Phase2(Transport::InProcess, false, rt),
        ),
        (
            "busbridge phase 2 unix, realtime",
            n,
            Path::Phase2(Transport::Unix, false, rt),
        ),
        (
            "busbridge phase 2 unix, realtime, batched",
            n,
            Path::Phase2(Transport::Unix, true, rt),
        ),
        (
            "busbridge phase 2 unix, processed",
            n,
            Path::Phase2(Transport::Unix, false, pr),
        ),
        (
            "busbridge phase 2 unix, processed, batched",
            n,
            Path::Phase2(Transport::Unix, true, pr),
        ),
        (
            "busbridge phase 2 tcp, realtime",
            n,
            Path::Phase2(Transport::Tcp, false, rt),
        ),
        (
            "busbridge phase 2 tcp, realtime, batched",
            n,
            Path::Phase2(Transport::Tcp, true, rt),
        ),
        ("rpc calls, 1 in flight", calls, Path::Rpc(1)),
        ("raw busrt rpc calls, 1 in flight", calls, Path::RawRpc(1)),
        (
            "rpc calls on busrt's own socket, 1 in flight",
            calls,
            Path::DirectRpc(1),
        ),
        ("rpc calls, 16 in flight", calls, Path::Rpc(16)),
        ("raw busrt rpc calls, 16 in flight", calls, Path::RawRpc(16)),
        (
            "rpc calls on busrt's own socket, 16 in flight",
            calls,
            Path::DirectRpc(16),
        ),
        (
            "tasks one-of, 4 collectors unix, 64 in flight",
            calls,
            Path::Tasks(64, None),
        ),
        (
            "tasks one-of, 4 collectors unix, 1,000/s",
            (calls / 6).max(1),
            Path::Tasks(64, Some(1000)),
        ),
    ];
    let names: Vec<&str> = paths.iter().map(|(name, ..)| *name).collect();
    let wanted = |name: &str| selected(opts.only.as_deref(), &names, name);
    let paths: Vec<_> = paths
        .into_iter()
        .filter(|(name, ..)| wanted(name))
        .collect();
    // Rounds interleave the paths so a noisy moment hits all of them alike; each path
    // reports its median round.
    let total = opts.rounds.max(1);
    let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); paths.len()];
    for round in 1..=total {
        for ((name, count, path), seen) in paths.iter().zip(&mut rounds) {
            let m = measure(name, *count, || path.run(*count)).await;
            eprintln!(
                "round {round}/{total}  {name}: {:.0}/s, {:.2} us CPU each",
                m.events_per_sec, m.cpu_secs_per_million
            );
            seen.push(m);
        }
    }
    let by_round = |name: &str| {
        paths
            .iter()
            .position(|(n, ..)| *n == name)
            .map(|i| &rounds[i])
    };
    // Each target is the median of its per-round values: the two sides of one round ran
    // seconds apart, which cancels most of a shared machine's drift.
    let mut ratios: Vec<Ratio> = TARGETS
        .iter()
        .filter_map(|&(name, a, b, what, bound, target)| {
            let (a, b) = (by_round(a)?, by_round(b)?);
            let per_round = a.iter().zip(b).map(|(a, b)| match what {
                Compare::Rate => a.events_per_sec / b.events_per_sec,
                Compare::Cpu => a.cpu_secs_per_million / b.cpu_secs_per_million,
                Compare::CpuOver => a.cpu_secs_per_million - b.cpu_secs_per_million,
            });
            Some(Ratio::new(
                name,
                median(per_round.collect())?,
                bound,
                target,
            ))
        })
        .collect();
    // Like the ratios, the median of each round's p99 (the median round by rate need not
    // have the median tail).
    if let Some(p99) = by_round("tasks one-of, 4 collectors unix, 1,000/s")
        .and_then(|seen| median(seen.iter().map(|t| t.p99_us / 1000.0).collect()))
    {
        ratios.push(Ratio::new(
            "task round trip p99 at 1,000/s, ms",
            p99,
            Bound::AtMost,
            2.0,
        ));
    }
    let m: Vec<Measurement> = rounds
        .into_iter()
        .map(|mut seen| {
            seen.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
            seen.swap_remove(seen.len() / 2)
        })
        .collect();
    let steady = if wanted("steady") {
        let s = steady(opts.steady_secs, opts.rounds.min(opts.steady_secs as usize)).await;
        eprintln!(
            "steady  10,000/s: p99 {:.0} us (median of segments {:.0} us), each bridge adds {:.1}% of a core",
            s.p99_us,
            s.segment_p99_us,
            s.bridge_cpu_fraction_of_core * 100.0
        );
        ratios.push(Ratio::new(
            "steady 10,000/s unix: p99, ms (median of segments)",
            s.segment_p99_us / 1000.0,
            Bound::AtMost,
            0.5,
        ));
        ratios.push(Ratio::new(
            "steady 10,000/s unix: CPU each bridge adds over raw busrt, % of a core",
            s.bridge_cpu_fraction_of_core * 100.0,
            Bound::AtMost,
            3.0,
        ));
        Some(s)
    } else {
        None
    };
    let stall = if wanted("stall") {
        Some(stall(opts.stall_secs).await)
    } else {
        None
    };
    Report {
        machine: format!(
            "{} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::env::consts::ARCH
        ),
        load_average_start,
        load_average_end: load_average(),
        rounds: total,
        memory: opts.memory,
        measurements: m,
        ratios,
        steady,
        stall,
    }
}

#[cfg(test)]
mod tests {
    // Paths in full: this file is also compiled into the criterion bench, without tests.
    #[test]
    fn only_takes_whole_names_text_and_alternatives() {
        use super::selected;
        let names = [
            "busbridge phase 2 unix, realtime",
            "busbridge phase 2 unix, realtime, batched",
            "reference crossbeam router",
            "busbridge phase 0",
        ];
        let run = |only: Option<&str>| -> Vec<&str> {
            names
                .iter()
                .copied()
                .filter(|n| selected(only, &names, n))
                .collect()
        };
        assert_eq!(run(None).len(), 4);
        assert_eq!(run(Some("busbridge phase 2 unix, realtime")), [names[0]]);
        assert_eq!(run(Some("realtime")), [names[0], names[1]]);
        assert_eq!(
            run(Some("reference crossbeam router|busbridge phase 0")),
            [names[2], names[3]]
        );
        assert_eq!(run(Some("phase 0 | batched")), [names[1], names[3]]);
        assert!(run(Some("nothing")).is_empty());
        assert!(selected(Some("steady|phase 0"), &names, "steady"));
    }
}
