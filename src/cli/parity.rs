//! `busbridge parity`: the built-in scenarios for a phase, or a trace replayed on phase 4.

use anyhow::Context;
use busbridge::bridge::{BridgeBuilder, Bridged};
use busbridge::codec::Envelope;
use busbridge::config::Config;
use busbridge::legacy::crossbeam::*;
use busbridge::parity::{Parity, ParityConfig, ParityReport, Verdict};
use busbridge::phase::Phase;
use busbridge::router::{Policy, QueueSink};
use busbridge::scenario::{sample_envelope, sample_event, sample_subscriptions};
use busbridge::trace::{Recorder, Trace};
use busbridge::Broker;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Run the built-in parity scenarios for a phase (or replay a recorded trace on phase 4);
/// exits non-zero on any mismatch.
#[derive(clap::Args)]
pub struct Args {
    /// Phase to verify: 1, 2 or 3 (4 with --replay).
    #[arg(long)]
    phase: Option<u8>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Record the control path to this trace file (JSON lines).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Replay this trace on the phase-4 path and compare.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Local events to publish.
    #[arg(long, default_value_t = 500)]
    events: usize,
    /// Events the remote publisher process sends.
    #[arg(long, default_value_t = 100)]
    remote: usize,
}

const AGENT: &str = "parity-agent";
const REMOTE: &str = "parity-remote";
const LIMIT: Duration = Duration::from_secs(60);

fn as_envelope(e: &BusEvent) -> Envelope {
    let mut env = Envelope::new(
        e.event.clone(),
        e.correlation_id.clone(),
        e.publisher_id.clone(),
    );
    env.event_id = e.event_id.clone();
    env.timestamp = e.timestamp;
    env.priority = e.priority;
    env
}

/// Outcome of one run, printed as a table or JSON.
struct Outcome {
    phase: Phase,
    rpc: Option<(u64, Vec<String>)>,
    local: ParityReport,
    remote: Option<ParityReport>,
    received: BTreeMap<String, usize>,
    shadow_remote: u64,
    verdict: Verdict,
}

fn print(o: &Outcome, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({
                "phase": o.phase as u8,
                "ok": o.verdict.passed(),
                "reasons": o.verdict.reasons,
                "local": o.local,
                "remote": o.remote,
                "received": o.received,
                "shadow_remote": o.shadow_remote,
                "rpc": o.rpc.as_ref().map(|(c, m)| json!({"compared": c, "mismatches": m})),
            })
        );
        return;
    }
    println!("parity, phase {}", o.phase);
    println!(
        "  local events:  compared {:>6}  matched {:>6}  mismatches {}",
        o.local.compared, o.local.matched, o.local.mismatch_count
    );
    if let Some(r) = &o.remote {
        println!(
            "  remote events: compared {:>6}  matched {:>6}  mismatches {}",
            r.compared, r.matched, r.mismatch_count
        );
    } else {
        println!(
            "  remote events: {} kept in the shadow path (phase 1)",
            o.shadow_remote
        );
    }
    if let Some((c, m)) = &o.rpc {
        println!("  control (rpc): compared {c:>6}  mismatches {}", m.len());
    }
    for (s, n) in &o.received {
        println!("  subscriber {s:<12} received {n}");
    }
    for m in o
        .local
        .mismatches
        .iter()
        .chain(o.remote.iter().flat_map(|r| &r.mismatches))
        .take(10)
    {
        println!(
            "  MISMATCH {}",
            serde_json::to_string(m).unwrap_or_default()
        );
    }
    for reason in &o.verdict.reasons {
        println!("  FAILED {reason}");
    }
    println!(
        "{}",
        if o.verdict.passed() {
            "parity: OK"
        } else {
            "parity: MISMATCH"
        }
    );
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(trace) = &a.replay {
        let report = replay(trace).await?;
        let verdict = Verdict::new().report("replay", &report);
        let ok = verdict.passed();
        if a.json {
            println!(
                "{}",
                json!({"phase": 4, "replay": trace, "ok": ok, "reasons": verdict.reasons, "report": report})
            );
        } else {
            println!(
                "replay on phase 4: compared {} matched {} mismatches {}",
                report.compared, report.matched, report.mismatch_count
            );
            for m in report.mismatches.iter().take(10) {
                println!(
                    "  MISMATCH {}",
                    serde_json::to_string(m).unwrap_or_default()
                );
            }
            println!("{}", if ok { "parity: OK" } else { "parity: MISMATCH" });
        }
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let phase = Phase::try_from(
        a.phase
            .context("--phase is required (1, 2 or 3), or --replay FILE")?,
    )?;
    if !phase.has_control() {
        anyhow::bail!(
            "phase {phase} has no legacy control path here; phase 4 is verified with --replay FILE"
        );
    }
    let dir = tempfile::tempdir()?;
    let mut config = match &a.config {
        Some(p) => match super::load_config(p) {
            Ok(c) => c,
            Err(code) => return Ok(code),
        },
        None => Config::default(),
    };
    config.phase = phase;
    config.broker.embedded = true;
    config.client.connect = None;
    config.client.name = Some(AGENT.into());
    config.transport.socket_path = dir.path().join("parity.sock");
    let bridged = BridgeBuilder::from_config(&config)?.build().await?;
    let outcome = scenarios(&a, &bridged, phase).await;
    bridged.shutdown().await;
    let outcome = outcome?;
    print(&outcome, a.json);
    Ok(if outcome.verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn scenarios(a: &Args, bridged: &Bridged, phase: Phase) -> anyhow::Result<Outcome> {
    let recorder = match &a.record {
        Some(p) => Some(Arc::new(Recorder::create(p)?)),
        None => None,
    };
    bridged.core().record_to(recorder.clone());
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    // The control for events from the other process: the legacy router alone, same subscribers.
    let control =
        HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default()).await?;
    let subscriptions = sample_subscriptions(AGENT, "case-1");
    let mut receivers = Vec::new();
    for s in &subscriptions {
        receivers.push((
            s.subscriber_id.clone(),
            bus.subscribe(s.clone()).await?,
            control.subscribe(s.clone()).await?,
        ));
    }
    // The remote publisher: a real process on the broker's Unix socket.
    let socket = bridged.broker_socket_paths().await;
    let socket = socket
        .first()
        .context("the embedded broker has no socket")?;
    let mut peer = std::process::Command::new(std::env::current_exe()?)
        .args(["peer", "--connect", &format!("ipc://{}", socket.display())])
        .args([
            "--name",
            REMOTE,
            "--count",
            &a.remote.to_string(),
            "--expect",
            "0",
        ])
        .args(["--phase", &(phase as u8).to_string(), "--exact-ids"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the remote publisher")?;
    let mut lines = BufReader::new(peer.stdout.take().context("peer stdout")?).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let ok = lines.any(|l| l.is_ok_and(|l| l == "ready"));
        (ok, lines)
    });
    let (ok, lines) = ready.await?;
    anyhow::ensure!(ok, "the remote publisher did not start");

    for i in 0..a.events {
        bus.publish(sample_event("local", i), format!("case-{}", i % 3))
            .await?;
    }
    writeln!(peer.stdin.as_mut().context("peer stdin")?, "go")?;
    let status = tokio::task::spawn_blocking(move || {
        let _drain = lines.count();
        peer.wait()
    })
    .await??;
    anyhow::ensure!(status.success(), "the remote publisher failed: {status}");
    for i in 0..a.remote {
        control
            .core()
            .publish(sample_envelope(REMOTE, i, REMOTE))
            .await?;
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .context("own events did not come back from busrt")?;
    let stats = bridged.core().stats().clone();
    let want = (a.events + a.remote) as u64;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while stats.snapshot().bridge_received + bridged.link().shadow_remote() < want
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await; // bounded wait for remote frames
    }
    if let Some(r) = &recorder {
        r.flush()?;
    }
    let remote_parity = Parity::new(ParityConfig::default());
    let mut received = BTreeMap::new();
    for (id, candidate, control) in &receivers {
        let mut n = 0;
        for e in candidate.try_iter() {
            n += 1;
            if e.publisher_id == REMOTE {
                remote_parity.record_candidate(id, &as_envelope(&e));
            }
        }
        received.insert(id.clone(), n);
        if phase >= Phase::Topics {
            for e in control.try_iter() {
                remote_parity.record_control(id, &as_envelope(&e));
            }
        }
    }
    let local = bridged.core().parity().finish();
    let remote = (phase >= Phase::Topics).then(|| remote_parity.finish());
    let shadow_remote = bridged.link().shadow_remote();
    let rpc = if phase.rpc_over_busrt() {
        Some(
            super::rpc_parity(
                &format!("ipc://{}", socket.display()),
                bridged.core().clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let mut verdict = Verdict::new().report("local events", &local);
    if let Some(r) = &remote {
        verdict = verdict.report("remote events", r);
    } else {
        verdict = verdict.count(
            "remote events in the shadow path",
            shadow_remote,
            a.remote as u64,
        );
    }
    if let Some((c, m)) = &rpc {
        verdict = verdict.answers("control (rpc)", *c, m);
    }
    Ok(Outcome {
        phase,
        rpc,
        local,
        remote,
        received,
        shadow_remote,
        verdict,
    })
}

/// Replays a trace on a phase-4 bus and compares with the recorded control deliveries.
pub async fn replay(path: &PathBuf) -> anyhow::Result<ParityReport> {
    let trace = Trace::load(path)?;
    let mut broker = Broker::new();
    broker.set_name(format!("replay-{}", uuid::Uuid::new_v4().simple()));
    let bridged = BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .embedded(broker)
        .build()
        .await?;
    let core = bridged.core();
    let mut receivers = Vec::new();
    for (id, filter) in &trace.subscriptions {
        let (tx, rx) = busbridge::queue::channel(trace.publishes.len().max(1));
        core.subscribe(
            id.clone(),
            filter.clone(),
            Policy::Block,
            Box::new(QueueSink(tx, |e: &Envelope| e.clone())),
        )
        .await?;
        receivers.push((id.clone(), rx));
    }
    for env in &trace.publishes {
        core.publish(env.clone()).await?;
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .context("replayed events did not come back from busrt")?;
    // The phase-4 path stamps its own origin and sequence; everything else must be equal.
    let parity = Parity::new(ParityConfig {
        ignore_fields: vec!["origin".into(), "seq".into(), "hops".into()],
        ..Default::default()
    });
    let by_id: std::collections::HashMap<&str, &Envelope> = trace
        .publishes
        .iter()
        .map(|e| (e.event_id.as_str(), e))
        .collect();
    for (sub, event_id) in &trace.deliveries {
        if let Some(env) = by_id.get(event_id.as_str()) {
            parity.record_control(sub, env);
        }
    }
    for (id, rx) in &receivers {
        for env in rx.try_iter() {
            parity.record_candidate(id, &env);
        }
    }
    bridged.shutdown().await;
    Ok(parity.finish())
}
