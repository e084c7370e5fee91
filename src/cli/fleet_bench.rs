//! `busbridge fleet bench`: events/s from one host into JetStream, acknowledged, through the
//! uplink (a bridged publisher on a busbridge broker, the uplink's bridge, spool and
//! pipelined publishes), against a plain `async-nats` JetStream publisher of the same encoded
//! envelopes with the same window, in the same run, on the same server.

use busbridge::bridge::BridgeBuilder;
use busbridge::codec::{Codec, CodecKind, Envelope, DEFAULT_MAX_MESSAGE_SIZE};
use busbridge::config::UplinkConfig;
use busbridge::event::CollectionEvent;
use busbridge::fleet::NatsUplink;
use busbridge::phase::Phase;
use busbridge::Broker;
use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The ratio the issue asks of the uplink against a plain publisher.
const TARGET: f64 = 0.8;
/// Publishes awaiting acknowledgement, for both paths.
const WINDOW: usize = 1024;

/// Measure the uplink into JetStream against a plain async-nats publisher.
#[derive(clap::Args)]
pub struct Args {
    /// A NATS server with JetStream (streams `BENCH_RAW` and `BENCH_UPLINK` are recreated).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Events per round and path.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Rounds (the ratio is the median of the rounds').
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The sample events of the demo and the parity scenarios that go to `events.*` topics (the
/// uplink's default subjects): process, network, filesystem and performance events in turn.
fn events(n: usize) -> Vec<CollectionEvent> {
    (0..)
        .map(|i| busbridge::scenario::sample_event("fleet-bench", i))
        .filter(|e| {
            busbridge::topic::topic_for_event(e)
                .as_str()
                .starts_with("events.")
        })
        .take(n)
        .collect()
}

async fn fresh_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subject: &str,
) -> anyhow::Result<()> {
    let _ = js.delete_stream(name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The plain publisher: the same envelopes, pipelined with message ids.
async fn raw(url: &str, events: &[CollectionEvent]) -> anyhow::Result<Run> {
    let n = events.len();
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(WINDOW)
        .build(client);
    fresh_stream(&js, "BENCH_RAW", "benchraw.>").await?;
    let codec = Codec::new(CodecKind::Protobuf, DEFAULT_MAX_MESSAGE_SIZE);
    let payloads: Vec<bytes::Bytes> = (0..n)
        .map(|i| {
            let mut e = Envelope::new(events[i].clone(), i.to_string(), "bench");
            e.origin = "raw".into();
            e.seq = i as u64 + 1;
            codec.encode(&e).map(Into::into)
        })
        .collect::<Result<_, _>>()?;
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut acks = VecDeque::with_capacity(WINDOW);
    for (i, p) in payloads.into_iter().enumerate() {
        if acks.len() >= WINDOW {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                acks.pop_front().expect("full");
            ack.await?;
        }
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(p)
            .message_id(format!("raw:{}", i + 1));
        acks.push_back(
            js.send_publish("benchraw.h.events.performance.metric", publish)
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(Run::since(start, cpu, n))
}

/// The uplink: events published on a host's broker until JetStream acknowledged them all.
async fn uplink(url: &str, events: &[CollectionEvent]) -> anyhow::Result<Run> {
    let n = events.len();
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("host.sock");
    let mut broker = Broker::new();
    broker.spawn_ipc_server(&socket, 16)?;
    broker.spawn().await?;
    let connect = format!("ipc://{}", socket.display());
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream("BENCH_UPLINK").await;
    let up = NatsUplink::start(
        UplinkConfig {
            nats: url.into(),
            host: Some("h".into()),
            prefix: "benchup".into(),
            stream: "BENCH_UPLINK".into(),
            spool_dir: Some(dir.path().join("spool")),
            in_flight: WINDOW,
            tasks: false,
            ..UplinkConfig::default()
        },
        &connect,
    )
    .await?;
    let publisher = BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .connect(&connect)
        .build()
        .await?;
    let bus = publisher.event_bus(Default::default());
    // One event first: the uplink's subscription is in place and the stream exists.
    bus.publish(events[0].clone(), "warm-up".into()).await?;
    wait(|| up.stats().acked >= 1).await?;
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for (i, e) in events.iter().enumerate() {
        bus.publish(e.clone(), i.to_string()).await?;
    }
    wait(|| up.stats().acked > n as u64).await?;
    let run = Run::since(start, cpu, n);
    let stats = up.shutdown().await?;
    anyhow::ensure!(
        stats.spool_overflow == 0 && stats.duplicates == 0,
        "{stats:?}"
    );
    publisher.shutdown().await;
    Ok(run)
}

async fn wait(done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "no progress for 300 s");
        tokio::time::sleep(Duration::from_millis(1)).await; // polling a counter
    }
    Ok(())
}

/// This process's CPU time so far (user and system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Events per second and this process's CPU microseconds per event.
struct Run {
    rate: f64,
    cpu_us: f64,
}

impl Run {
    fn since(start: Instant, cpu: f64, n: usize) -> Self {
        Self {
            rate: n as f64 / start.elapsed().as_secs_f64(),
            cpu_us: (cpu_seconds() - cpu) * 1e6 / n as f64,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `busbridge fleet bench`.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (mut raws, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpu, mut our_cpu) = (Vec::new(), Vec::new());
    let sample = events(a.events);
    for round in 1..=a.rounds.max(1) {
        let r = raw(&a.nats, &sample).await?;
        let u = uplink(&a.nats, &sample).await?;
        eprintln!(
            "round {round}: async-nats {:.0}/s ({:.1} µs CPU/event), uplink {:.0}/s ({:.1} µs CPU/event, broker and publisher included), ratio {:.2}",
            r.rate, r.cpu_us, u.rate, u.cpu_us, u.rate / r.rate
        );
        raws.push(r.rate);
        ours.push(u.rate);
        ratios.push(u.rate / r.rate);
        raw_cpu.push(r.cpu_us);
        our_cpu.push(u.cpu_us);
    }
    let ratio = median(ratios);
    println!(
        "{}",
        serde_json::json!({
            "events": a.events,
            "rounds": a.rounds,
            "async_nats_per_sec": median(raws).round(),
            "uplink_per_sec": median(ours).round(),
            "async_nats_cpu_us_per_event": (median(raw_cpu) * 10.0).round() / 10.0,
            "uplink_cpu_us_per_event": (median(our_cpu) * 10.0).round() / 10.0,
            "ratio": (ratio * 100.0).round() / 100.0,
            "target": TARGET,
            "met": ratio >= TARGET,
        })
    );
    Ok(ExitCode::SUCCESS)
}
