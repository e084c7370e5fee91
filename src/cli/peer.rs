//! `busbridge peer`: a legacy-facade program in its own process, bridged to a broker. It
//! subscribes to everything, waits for `go` on stdin, publishes the sample events, and prints
//! every event it receives as a JSON line: the multi-process tests and the demo drive it.

use busbridge::bridge::BridgeBuilder;
use busbridge::codec::CodecKind;
use busbridge::legacy::crossbeam::{
    CollectionEvent, EventSubscription, HighPerformanceEventBus, HighPerformanceEventBusConfig,
    HighPerformanceEventBusImpl, SourceCaps,
};
use busbridge::legacy::{crossbeam_2026_04 as v2026_04, tokio_2025_10 as v2025_10};
use busbridge::phase::Phase;
use busbridge::scenario::sample_event;
use serde_json::json;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

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
    /// The legacy facade (and version) that publishes and subscribes.
    #[arg(long, value_enum, default_value = "crossbeam")]
    facade: Facade,
    /// Shorthand for `--facade tokio`.
    #[arg(long = "tokio", conflicts_with = "facade")]
    tokio_facade: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Publish the sample envelopes with their deterministic event ids (for parity runs).
    #[arg(long)]
    exact_ids: bool,
    /// Also serve phase-5 trigger requests as a collector of this type: a trigger dispatched
    /// to this instance reaches its subscribers like any other event.
    #[arg(long, value_name = "TYPE")]
    serve_triggers: Option<String>,
}

/// One facade of one legacy version.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Facade {
    /// `legacy::crossbeam` (2025-09).
    Crossbeam,
    /// `legacy::tokio` (2025-09).
    Tokio,
    /// `legacy::crossbeam_2026_04` (final).
    #[value(name = "crossbeam-2026-04")]
    Crossbeam202604,
    /// `legacy::tokio_2025_10`.
    #[value(name = "tokio-2025-10")]
    Tokio202510,
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
    let facade = if a.tokio_facade {
        Facade::Tokio
    } else {
        a.facade
    };
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut publisher = Publisher::subscribe(&bridged, facade, lines_tx).await?;
    let triggers = match &a.serve_triggers {
        Some(kind) => Some(
            // The bridged bus holds `name`: the task server is its secondary.
            busbridge::task::TaskServer::builder(&a.name, kind)
                .shares_name()
                .heartbeat(Duration::from_millis(200))
                .triggers(bridged.core().clone())
                .serve(&a.connect)
                .await?,
        ),
        None => None,
    };
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
        publisher
            .publish(sample_event(&a.name, i), format!("{}-{i}", a.name))
            .await?;
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    let mut received = 0;
    while received < a.expect {
        let Ok(Some(v)) = tokio::time::timeout_at(deadline, lines_rx.recv()).await else {
            break;
        };
        received += 1;
        line(v)?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), bridged.link().settled()).await;
    let stats = bridged.core().stats().snapshot();
    line(json!({"done": received, "stats": stats}))?;
    if let Some(t) = triggers {
        t.shutdown().await;
    }
    bridged.shutdown().await;
    Ok(if received == a.expect {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The facade a peer publishes through; what it receives goes out as JSON lines, each event
/// in that version's own types (so a field a version lacks is absent from its lines).
enum Publisher {
    Crossbeam(HighPerformanceEventBusImpl),
    Tokio(busbridge::legacy::tokio::LocalEventBus),
    Crossbeam202604(v2026_04::HighPerformanceEventBusImpl),
    Tokio202510(v2025_10::LocalEventBus),
}

type Lines = tokio::sync::mpsc::UnboundedSender<serde_json::Value>;

/// A received event as a JSON line, in its facade's own types (every version's `BusEvent`
/// has these fields).
macro_rules! event_line {
    ($e:expr) => {
        json!({
            "publisher_id": $e.publisher_id,
            "event_id": $e.event_id,
            "correlation_id": $e.correlation_id,
            "event": $e.event,
        })
    };
}

impl Publisher {
    /// The facade, subscribed to everything; received events go to `lines`.
    async fn subscribe(
        bridged: &busbridge::bridge::Bridged,
        facade: Facade,
        lines: Lines,
    ) -> anyhow::Result<Self> {
        let caps = SourceCaps::all();
        Ok(match facade {
            Facade::Crossbeam => {
                let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
                let rx = bus
                    .subscribe(EventSubscription {
                        subscriber_id: "all".into(),
                        capabilities: caps,
                        event_filter: None,
                        correlation_filter: None,
                    })
                    .await?;
                std::thread::spawn(move || {
                    for e in rx {
                        if lines.send(event_line!(e)).is_err() {
                            break;
                        }
                    }
                });
                Self::Crossbeam(bus)
            }
            Facade::Crossbeam202604 => {
                let bus = bridged.crossbeam_2026_04(Default::default());
                let rx = v2026_04::HighPerformanceEventBus::subscribe(
                    &bus,
                    v2026_04::EventSubscription {
                        subscriber_id: "all".into(),
                        capabilities: caps,
                        event_filter: None,
                        correlation_filter: None,
                        backpressure_strategy: v2026_04::BackpressureStrategy::Blocking,
                    },
                )
                .await?;
                std::thread::spawn(move || {
                    for e in rx {
                        if lines.send(event_line!(e)).is_err() {
                            break;
                        }
                    }
                });
                Self::Crossbeam202604(bus)
            }
            Facade::Tokio => {
                use busbridge::legacy::tokio as v2025_09;
                let mut bus = bridged.tokio(Default::default());
                bus.start().await?;
                let mut rx = v2025_09::EventBus::subscribe(
                    &mut bus,
                    v2025_09::EventSubscription {
                        subscriber_id: "all".into(),
                        capabilities: caps,
                        event_filter: None,
                        correlation_filter: None,
                    },
                )
                .await?;
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        if lines.send(event_line!(e)).is_err() {
                            break;
                        }
                    }
                });
                Self::Tokio(bus)
            }
            Facade::Tokio202510 => {
                let mut bus = bridged.tokio_2025_10(Default::default());
                bus.start().await?;
                let mut rx = v2025_10::EventBus::subscribe(
                    &mut bus,
                    v2025_10::EventSubscription {
                        subscriber_id: "all".into(),
                        capabilities: caps,
                        event_filter: None,
                        correlation_filter: None,
                        topic_patterns: Some(vec!["events.#".into(), "tasks.#".into()]),
                        enable_wildcards: true,
                    },
                )
                .await?;
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        if lines.send(event_line!(e)).is_err() {
                            break;
                        }
                    }
                });
                Self::Tokio202510(bus)
            }
        })
    }

    /// Publishes a sample event through the facade, in its version's types (the 2026-04
    /// facade's process events name their hash algorithm).
    async fn publish(&mut self, event: CollectionEvent, correlation: String) -> anyhow::Result<()> {
        match self {
            Self::Crossbeam(bus) => bus.publish(event, correlation).await,
            Self::Tokio(bus) => {
                busbridge::legacy::tokio::EventBus::publish(bus, event, correlation).await
            }
            Self::Crossbeam202604(bus) => {
                let mut event = v2026_04::CollectionEvent::from_core(event, &Default::default());
                if let v2026_04::CollectionEvent::Process(p) = &mut event {
                    p.hash_algorithm = p.executable_hash.as_ref().map(|_| "sha256".into());
                }
                v2026_04::HighPerformanceEventBus::publish(bus, event, correlation).await
            }
            Self::Tokio202510(bus) => v2025_10::EventBus::publish(bus, event, correlation).await,
        }
    }
}
