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
    /// Run only the paths whose name contains this (for profiling one path).
    pub only: Option<String>,
    /// Each path runs this many times, interleaved with the others; the median counts.
    pub rounds: usize,
}

impl BenchOptions {
    /// Under a minute on a 2-core machine.
    pub fn quick() -> Self {
        Self {
            events: 50_000,
            calls: 5_000,
            steady_secs: 2,
            stall_secs: 2,
            only: None,
            rounds: 3,
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

/// A target, as a ratio of two measurements of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

/// The steady-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub rate_per_sec: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
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

/// Runs `f` and turns its latencies into a measurement.
async fn measure<F, Fut>(name: &str, events: usize, f: F) -> Measurement
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<f64>>,
{
    let (cpu0, _) = rusage();
    let start = Instant::now();
    let mut lat = f().await;
    let seconds = start.elapsed().as_secs_f64();
    let (cpu1, rss) = rusage();
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
    tracing::info!(name, eps = m.events_per_sec, "measured");
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
    for i in 0..events {
        let _ = input.send((bench_event(i), String::new(), SystemTime::now()));
    }
    drop(input);
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.join().unwrap_or_default());
    }
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
    for i in 0..events {
        let _ = bus.publish(bench_event(i), String::new()).await;
    }
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.join().unwrap_or_default());
    }
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

/// (c) raw busrt with its own clients; `window` acknowledgements in flight (0 = `QoS::No`).
/// With `pace`, that many events leave every millisecond, acknowledged and flushed each
/// (busrt `RealtimeProcessed`, what busbridge's `Processed` uses): the steady comparison.
pub async fn raw_busrt(events: usize, unix: bool, window: usize, pace: Option<usize>) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raw.sock").to_string_lossy().into_owned();
    // Queues hold a whole run: busrt unregisters a subscriber whose queue fills, which would
    // end the run early and flatter raw busrt.
    let queue = events.max(262_144) + 16;
    let mut broker = busrt::broker::Broker::new();
    broker.set_queue_size(queue);
    let (mut publisher, mut subscriber): (
        Box<dyn busrt::client::AsyncClient>,
        Box<dyn busrt::client::AsyncClient>,
    ) = if unix {
        broker
            .spawn_unix_server(&path, busrt::broker::ServerConfig::default())
            .await
            .expect("raw server");
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
    let payload = raw_payload();
    // One clock for both sides: latency is receive time minus send time.
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(events);
        while lat.len() < events {
            if rx.recv().await.is_err() {
                break;
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
        if let Ok(Some(c)) = publisher
            .publish("bench/metric", payload.as_slice().into(), qos)
            .await
        {
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
    drop(publisher);
    drop(subscriber);
    drop(rx);
    recv.iter()
        .zip(sent_at)
        .map(|(r, s)| (r - s).max(0.0) * 1e6)
        .collect()
}

/// Reads `n` events on a blocking thread (each bounded by 30 s) and returns their
/// publish-to-delivery latencies.
fn read_latencies(
    rx: busbridge::queue::Receiver<BusEvent>,
    n: usize,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::task::spawn_blocking(move || {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            // A clock read per event only when the queue is empty, as raw busrt's reader.
            match rx
                .try_recv()
                .or_else(|_| rx.recv_timeout(Duration::from_secs(30)))
            {
                Ok(e) => lat.push(latency_us(&e)),
                Err(_) => break,
            }
        }
        lat
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
    for i in 0..events {
        let _ = pub_bus.publish(bench_event(i), String::new()).await;
    }
    let lat = reader.await.unwrap_or_default();
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
    let (_dir, _broker, uri) = unix_broker("rpc", 100).await;
    let server = RpcNode::connect(&uri, "bench-server")
        .await
        .expect("server");
    server
        .rpc_register_raw("echo", |b| async move { Ok(b) })
        .await
        .expect("register");
    let client = Arc::new(
        RpcNode::connect(&uri, "bench-client")
            .await
            .expect("client"),
    );
    let callers = concurrency.max(1);
    let mut tasks = Vec::new();
    for c in 0..callers {
        // Every call is made: the first `calls % callers` callers make one more.
        let per = calls / callers + usize::from(c < calls % callers);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                if client
                    .rpc_call_to("bench-server", "echo", b"{}".to_vec())
                    .await
                    .is_ok()
                {
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
    // Clients go before the broker, so none of them sees (and logs) a lost connection.
    drop(client);
    for s in servers {
        s.shutdown().await;
    }
    broker.shutdown_within(Duration::from_secs(1)).await;
    lat
}

/// A steady 10,000 events/s over a Unix socket (no batching): latency and CPU.
pub async fn steady(secs: u64) -> Steady {
    let (_dir, _broker, uri) = unix_broker("steady", 10).await;
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
    let rx = s
        .event_bus(Default::default())
        .subscribe(all())
        .await
        .expect("subscribe");
    let pub_bus = p.event_bus(Default::default());
    let total = (secs * 10_000) as usize;
    let reader = read_latencies(rx, total);
    let (cpu0, _) = rusage();
    let start = Instant::now();
    // 10 events each millisecond: the timer is the pace of the load, not a synchronisation.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        for _ in 0..10 {
            let _ = pub_bus.publish(bench_event(sent), String::new()).await;
            sent += 1;
        }
    }
    let mut lat = reader.await.unwrap_or_default();
    let wall = start.elapsed().as_secs_f64();
    let (cpu1, _) = rusage();
    lat.sort_by(|a, b| a.total_cmp(b));
    p.shutdown().await;
    s.shutdown().await;
    let cpu = (cpu1 - cpu0) / wall;
    let (raw0, _) = rusage();
    let raw_start = Instant::now();
    raw_busrt(total, true, 256, Some(10)).await;
    let raw = (rusage().0 - raw0) / raw_start.elapsed().as_secs_f64();
    Steady {
        rate_per_sec: 10_000,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        cpu_fraction_of_core: cpu,
        raw_busrt_cpu_fraction_of_core: raw,
        bridge_cpu_fraction_of_core: ((cpu - raw) / 2.0).max(0.0),
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

/// One path of the run.
#[cfg(feature = "legacy")]
enum Path {
    Reference,
    Phase0,
    /// Over a Unix socket (else in process), acknowledgements in flight (0 = `QoS::No`).
    Raw(bool, usize),
    /// Transport, batching, QoS.
    Phase2(Transport, bool, QoS),
    /// Calls in flight.
    Rpc(usize),
    /// Phase-5 tasks in flight, and a pace in tasks per second.
    Tasks(usize, Option<usize>),
}

#[cfg(feature = "legacy")]
impl Path {
    async fn run(&self, n: usize) -> Vec<f64> {
        match *self {
            Path::Reference => reference_router(n).await,
            Path::Phase0 => phase0(n).await,
            Path::Raw(unix, window) => raw_busrt(n, unix, window, None).await,
            Path::Phase2(transport, batch, qos) => phase2(n, transport, batch, qos).await,
            Path::Rpc(concurrency) => rpc_calls(n, concurrency).await,
            Path::Tasks(in_flight, pace) => task_round_trips(n, in_flight, pace).await,
        }
    }
}

fn ratio(name: &str, num: &Measurement, den: &Measurement, target: f64) -> Ratio {
    let value = num.events_per_sec / den.events_per_sec;
    Ratio {
        name: name.into(),
        value,
        target,
        met: value >= target,
    }
}

/// Runs every measurement and computes the ratios.
#[cfg(feature = "legacy")]
pub async fn run(opts: &BenchOptions) -> Report {
    let n = opts.events;
    let calls = opts.calls;
    let wanted = |name: &str| opts.only.as_deref().is_none_or(|o| name.contains(o));
    let (rt, pr) = (QoS::Realtime, QoS::Processed);
    let paths: Vec<(&str, usize, Path)> = vec![
        ("reference crossbeam router", n, Path::Reference),
        ("busbridge phase 0", n, Path::Phase0),
        ("raw busrt in-process, QoS::No", n, Path::Raw(false, 0)),
        ("raw busrt unix, QoS::No", n, Path::Raw(true, 0)),
        ("raw busrt unix, Processed x256", n, Path::Raw(true, 256)),
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
        ("rpc calls, 16 in flight", calls, Path::Rpc(16)),
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
    let paths: Vec<_> = paths
        .into_iter()
        .filter(|(name, ..)| wanted(name))
        .collect();
    // Rounds interleave the paths so a noisy moment hits all of them alike; each path
    // reports its median round.
    let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); paths.len()];
    for _ in 0..opts.rounds.max(1) {
        for ((name, count, path), seen) in paths.iter().zip(&mut rounds) {
            seen.push(measure(name, *count, || path.run(*count)).await);
        }
    }
    let m: Vec<Measurement> = rounds
        .into_iter()
        .map(|mut seen| {
            seen.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
            seen.swap_remove(seen.len() / 2)
        })
        .collect();
    let by = |name: &str| m.iter().find(|x| x.name == name);
    let ratios = [
        (
            "phase 0 / reference crossbeam router",
            "busbridge phase 0",
            "reference crossbeam router",
            0.95,
        ),
        (
            "phase 2 unix batched / raw busrt unix QoS::No",
            "busbridge phase 2 unix, realtime, batched",
            "raw busrt unix, QoS::No",
            2.0,
        ),
        (
            "phase 2 unix unbatched / raw busrt unix QoS::No",
            "busbridge phase 2 unix, realtime",
            "raw busrt unix, QoS::No",
            0.8,
        ),
        (
            "phase 2 unix processed / raw busrt unix Processed x256",
            "busbridge phase 2 unix, processed",
            "raw busrt unix, Processed x256",
            0.8,
        ),
    ]
    .into_iter()
    .filter_map(|(name, num, den, target)| Some(ratio(name, by(num)?, by(den)?, target)))
    .chain(
        by("tasks one-of, 4 collectors unix, 64 in flight")
            .zip(by("rpc calls, 16 in flight"))
            .map(|(t, r)| ratio("tasks 64 in flight / rpc 16 in flight", t, r, 0.5)),
    )
    .chain(
        // A latency target as a ratio: 2 ms over the measured p99 must be at least 1.
        by("tasks one-of, 4 collectors unix, 1,000/s").map(|t| {
            let value = 2000.0 / t.p99_us.max(f64::MIN_POSITIVE);
            Ratio {
                name: "task round trip at 1,000/s: 2 ms / p99".into(),
                value,
                target: 1.0,
                met: value >= 1.0,
            }
        }),
    )
    .collect();
    let steady = if wanted("steady") {
        Some(steady(opts.steady_secs).await)
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
        measurements: m,
        ratios,
        steady,
        stall,
    }
}
