//! `busbridge peer`: a legacy-facade program in its own process, bridged to a broker. It
//! subscribes to everything, waits for `go` on stdin, publishes the sample events, and prints
//! every event it receives as a JSON line: the multi-process tests and the demo drive it.

use busbridge::bridge::BridgeBuilder;
use busbridge::codec::CodecKind;
use busbridge::legacy::crossbeam::{
    EventSubscription, HighPerformanceEventBus, HighPerformanceEventBusConfig, SourceCaps,
};
use busbridge::legacy::tokio::EventBus as _;
use busbridge::phase::Phase;
use busbridge::scenario::sample_event;
use serde_json::json;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A bridged legacy-facade program: subscribe to everything, wait for `go` on stdin,
/// publish the sample events, print what arrives (JSON lines).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// busrt client name, also the sample seed and publisher id.
    #[arg(long)]
    name: String,
    /// Events to publish.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Events to wait for before exiting.
    #[arg(long, default_value_t = 10)]
    expect: usize,
    #[arg(long, default_value = "2", value_parser = super::parse_phase)]
    phase: Phase,
    #[arg(long, default_value = "protobuf", value_parser = super::parse_codec)]
    codec: CodecKind,
    /// Publish through the tokio facade instead of the crossbeam one.
    #[arg(long = "tokio")]
    tokio_facade: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Publish the sample envelopes with their deterministic event ids (for parity runs).
    #[arg(long)]
    exact_ids: bool,
}

fn line(v: serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let bridged = BridgeBuilder::new()
        .connect(&a.connect)
        .name(&a.name)
        .phase(a.phase)
        .codec(a.codec)
        .build()
        .await?;
    let all = EventSubscription {
        subscriber_id: "all".into(),
        capabilities: SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
    };
    let crossbeam = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    let rx = crossbeam.subscribe(all).await?;
    let mut tokio_bus = bridged.tokio(Default::default());
    tokio_bus.start().await?;
    println!("ready");
    std::io::stdout().flush()?;
    let go = tokio::task::spawn_blocking(|| {
        let mut l = String::new();
        std::io::stdin().lock().read_line(&mut l).map(|_| l)
    })
    .await??;
    if go.trim() != "go" {
        anyhow::bail!("expected `go` on stdin, got {go:?}");
    }
    for i in 0..a.count {
        if a.exact_ids {
            let env = busbridge::scenario::sample_envelope(&a.name, i, &a.name);
            bridged.core().publish(env).await?;
            continue;
        }
        let event = sample_event(&a.name, i);
        let correlation = format!("{}-{i}", a.name);
        if a.tokio_facade {
            tokio_bus.publish(event, correlation).await?;
        } else {
            crossbeam.publish(event, correlation).await?;
        }
    }
    let deadline = Instant::now() + a.timeout;
    let mut received = 0;
    while received < a.expect {
        let left = deadline.saturating_duration_since(Instant::now());
        let rx = rx.clone();
        let next = tokio::task::spawn_blocking(move || rx.recv_timeout(left)).await?;
        let Ok(e) = next else { break };
        received += 1;
        line(json!({
            "publisher_id": e.publisher_id,
            "event_id": e.event_id,
            "correlation_id": e.correlation_id,
            "event": e.event,
        }))?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), bridged.link().settled()).await;
    let stats = bridged.core().stats().snapshot();
    line(json!({"done": received, "stats": stats}))?;
    bridged.shutdown().await;
    Ok(if received == a.expect {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
