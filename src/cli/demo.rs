//! `busbridge demo`: the showcase. This machine's real processes go through the legacy
//! crossbeam facade, first on the legacy router alone (phase 0), then bridged to an embedded
//! busrt broker in phases 1, 2 and 3, with a subscriber in a separate process on the broker's
//! Unix socket, and parity checked in every phase; then phase 5: a collector in its own
//! process (`busbridge collector --type process`) is dispatched `hash_executable` of the demo
//! itself. Exits 0 only if every count, every parity check and the task's answer hold.

use anyhow::Context;
use busbridge::config::Config;
use busbridge::legacy::crossbeam::*;
use busbridge::phase::Phase;
use busbridge::procscan::ProcessScanner;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const LIMIT: Duration = Duration::from_secs(30);

fn subscription(id: &str, caps: SourceCaps, filter: Option<EventFilter>) -> EventSubscription {
    EventSubscription {
        subscriber_id: id.into(),
        capabilities: caps,
        event_filter: filter,
        correlation_filter: None,
    }
}

/// The local subscribers: every process, urgent triggers, the scan metric.
async fn subscribe_all(
    bus: &HighPerformanceEventBusImpl,
) -> anyhow::Result<Vec<(&'static str, crossbeam_channel::Receiver<BusEvent>)>> {
    Ok(vec![
        (
            "all-processes",
            bus.subscribe(subscription("all-processes", SourceCaps::PROCESS, None))
                .await?,
        ),
        (
            "urgent-triggers",
            bus.subscribe(subscription(
                "urgent-triggers",
                SourceCaps::REALTIME,
                Some(EventFilter {
                    min_priority: Some(TriggerPriority::High as u8),
                    ..Default::default()
                }),
            ))
            .await?,
        ),
        (
            "metrics",
            bus.subscribe(subscription(
                "metrics",
                SourceCaps::PERFORMANCE,
                Some(EventFilter {
                    event_types: vec!["performance".into()],
                    ..Default::default()
                }),
            ))
            .await?,
        ),
    ])
}

/// What one scan published.
#[derive(Clone, Copy)]
struct Published {
    processes: usize,
    /// Trigger requests, urgent or routine.
    triggers: usize,
    /// The urgent ones (`High`): what the `urgent-triggers` subscriber must receive.
    urgent: usize,
    metrics: usize,
}

impl Published {
    /// What each of [`subscribe_all`]'s subscribers must receive, in its order.
    fn want(&self) -> [usize; 3] {
        [self.processes, self.urgent, self.metrics]
    }
}

/// Trigger requests per scan: the largest memory users get an urgent one, the next a routine
/// one, so the `min_priority` filter has something to keep and something to refuse.
const URGENT: usize = 2;
const ROUTINE: usize = 3;

/// One scan published through the facade: every process, a memory-analysis trigger for each
/// of the largest memory users (urgent for the first [`URGENT`], routine for the next
/// [`ROUTINE`]), a metric.
async fn publish_scan(
    bus: &HighPerformanceEventBusImpl,
    scanner: &mut ProcessScanner,
    phase: u8,
) -> anyhow::Result<Published> {
    let processes = scanner.scan();
    let n = processes.len();
    let mut by_memory: Vec<(u64, u32, String)> = processes
        .iter()
        .map(|p| (p.memory_usage.unwrap_or(0), p.pid, p.name.clone()))
        .collect();
    by_memory.sort_by(|a, b| b.cmp(a));
    for p in processes {
        bus.publish(CollectionEvent::Process(p), format!("scan-{phase}"))
            .await?;
    }
    let mut urgent = 0;
    let mut triggers = 0;
    for (rank, (memory, pid, name)) in by_memory.into_iter().take(URGENT + ROUTINE).enumerate() {
        let priority = if rank < URGENT {
            urgent += 1;
            TriggerPriority::High
        } else {
            TriggerPriority::Normal
        };
        triggers += 1;
        bus.publish(
            CollectionEvent::TriggerRequest(TriggerRequest {
                trigger_id: format!("mem-{phase}-{pid}"),
                target_collector: "procmond".into(),
                analysis_type: AnalysisType::MemoryAnalysis,
                priority,
                target_pid: Some(pid),
                target_path: None,
                correlation_id: format!("scan-{phase}"),
                metadata: [(
                    "reason".to_string(),
                    format!("{name}: memory rank {} ({memory} bytes)", rank + 1),
                )]
                .into(),
                timestamp: SystemTime::now(),
            }),
            format!("scan-{phase}"),
        )
        .await?;
    }
    bus.publish(
        CollectionEvent::Performance(PerformanceEvent {
            metric_name: "processes_scanned".into(),
            value: n as f64,
            unit: "count".into(),
            pid: Some(std::process::id()),
            component: "busbridge-demo".into(),
            timestamp: SystemTime::now(),
        }),
        format!("scan-{phase}"),
    )
    .await?;
    Ok(Published {
        processes: n,
        triggers,
        urgent,
        metrics: 1,
    })
}

/// Receives exactly `n` events (bounded wait).
fn take(rx: &crossbeam_channel::Receiver<BusEvent>, n: usize) -> Vec<BusEvent> {
    let deadline = Instant::now() + LIMIT;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
    }
    out
}

struct Row {
    phase: u8,
    published: Published,
    received: Vec<(&'static str, usize)>,
    external: usize,
    parity: Option<(u64, u64)>,
    /// Phase 3: lifecycle control, in process vs over RPC (compared, mismatches).
    rpc: Option<(u64, usize)>,
    ok: bool,
}

/// The subscriber in a separate process: `busbridge sub events.process.* --json`.
struct External {
    child: std::process::Child,
    lines: Arc<AtomicUsize>,
}

impl External {
    fn start(socket: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["sub", "events.process.*", "--json", "--connect"])
            .arg(format!("ipc://{}", socket.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start the subscriber process")?;
        let stderr = child.stderr.take().context("stderr")?;
        let ready = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("subscribed"));
        anyhow::ensure!(ready, "the subscriber process did not subscribe");
        let lines = Arc::new(AtomicUsize::new(0));
        let counter = lines.clone();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits (bounded) until it has printed `n` lines in all.
    async fn wait_for(&self, n: usize) -> usize {
        let deadline = Instant::now() + LIMIT;
        while self.lines.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await; // bounded wait on a counter
        }
        self.lines.load(Ordering::Relaxed)
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Phase 5: a task handed to a collector in its own process.
struct TaskStep {
    collector: String,
    sha256: String,
    /// The collector's hash of this program equals the one computed here.
    hash_ok: bool,
    /// The event the collector published for the task reached this bus with the task's
    /// correlation id.
    correlated: bool,
}

/// Starts `busbridge collector --type process` as its own process, dispatches
/// `hash_executable` of this program to it, and checks the answer and the correlated event.
async fn phase5(
    socket: &std::path::Path,
    all: &crossbeam_channel::Receiver<BusEvent>,
) -> anyhow::Result<TaskStep> {
    use busbridge::task::{Liveness, TaskClient, TaskClientOptions, TaskEvent, TaskSpec};
    let uri = format!("ipc://{}", socket.display());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["collector", "--name", "procmond-1", "--type", "process"])
        .args(["--heartbeat", "1s", "--connect", &uri])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the collector process")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    // Keep reading its output to the end, so its last line is never written to a closed pipe.
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "ready" {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    let step = async {
        tokio::time::timeout(LIMIT, ready_rx)
            .await
            .context("the collector process did not start")??;
        // Queue, not refuse: on a loaded machine a late heartbeat must not fail the demo.
        let mut opts = TaskClientOptions::default();
        opts.dispatch.when_none_capable = busbridge::task::WhenNoneCapable::Queue;
        let tasks = TaskClient::connect(&uri, opts).await?;
        let alive = |c: &[busbridge::task::Entry]| {
            c.iter()
                .any(|e| e.info.name == "procmond-1" && e.state == Liveness::Alive)
        };
        anyhow::ensure!(
            tasks.wait_for(alive, LIMIT).await,
            "the collector did not announce itself"
        );
        let mut spec = TaskSpec::new("hash_executable", json!({ "pid": std::process::id() }));
        spec.capabilities = SourceCaps::PROCESS;
        spec.timeout = LIMIT;
        let handle = tasks.submit(spec).await?;
        let id = handle.id().to_owned();
        let (results, status) = handle.results().await;
        let Some(TaskEvent::Result {
            collector,
            outcome: Ok(value),
            ..
        }) = results.first()
        else {
            anyhow::bail!("the task ended {status:?} with {results:?}");
        };
        let sha256 = value["sha256"].as_str().unwrap_or_default().to_owned();
        let (mine, _) = busbridge::task::ops::sha256_file(&std::env::current_exe()?)?;
        let deadline = Instant::now() + LIMIT;
        let mut correlated = false;
        while let Ok(e) = all.recv_deadline(deadline) {
            if e.correlation_id == id {
                correlated = true;
                break;
            }
        }
        Ok(TaskStep {
            collector: collector.clone(),
            hash_ok: sha256 == mine,
            sha256,
            correlated,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    step
}

/// Publish this machine's processes through the legacy bus and show what subscribers got.
#[derive(clap::Args)]
pub struct Args {
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let json_out = a.json;
    let started = Instant::now();
    let mut scanner = ProcessScanner::new();
    let mut rows = Vec::new();

    // Phase 0: the legacy router alone, as legacy code had it.
    {
        let mut bus =
            HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default()).await?;
        let subs = subscribe_all(&bus).await?;
        let published = publish_scan(&bus, &mut scanner, 0).await?;
        let want = published.want();
        let received: Vec<_> = subs
            .iter()
            .zip(want)
            .map(|((id, rx), n)| (*id, take(rx, n).len()))
            .collect();
        let ok = received.iter().zip(want).all(|((_, got), n)| *got == n);
        rows.push(Row {
            phase: 0,
            published,
            received,
            external: 0,
            parity: None,
            rpc: None,
            ok,
        });
        bus.shutdown().await?;
    }

    // Phases 1-3: the same facade, bridged to an embedded broker on a private Unix socket.
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("daemoneye.sock");
    let mut config = Config {
        phase: Phase::Shadow,
        ..Config::default()
    };
    config.transport.socket_path = socket.clone();
    config.client.name = Some("daemoneye-agent".into());
    let mut bus =
        HighPerformanceEventBusImpl::bridged(HighPerformanceEventBusConfig::default(), &config)
            .await?;
    let bridge = bus.bridge().context("bridged")?.clone();
    let subs = subscribe_all(&bus).await?;
    let external = External::start(&socket)?;
    let mut external_expected = 0;
    for phase in [Phase::Shadow, Phase::Topics, Phase::Rpc] {
        bridge.set_phase(phase)?;
        let published = publish_scan(&bus, &mut scanner, phase as u8).await?;
        let want = published.want();
        let received: Vec<_> = subs
            .iter()
            .zip(want)
            .map(|((id, rx), n)| (*id, take(rx, n).len()))
            .collect();
        let _ = tokio::time::timeout(LIMIT, bridge.link().settled()).await;
        external_expected += published.processes;
        let external_seen = external.wait_for(external_expected).await;
        let report = bridge.core().parity().finish();
        let rpc = if phase.rpc_over_busrt() {
            let uri = format!("ipc://{}", socket.display());
            let (compared, mismatches) = super::rpc_parity(&uri, bridge.core().clone()).await?;
            for m in &mismatches {
                eprintln!("control parity mismatch: {m}");
            }
            Some((compared, mismatches.len()))
        } else {
            None
        };
        let ok = received.iter().zip(want).all(|((_, got), n)| *got == n)
            && external_seen == external_expected
            && report.is_clean()
            && report.compared > 0
            && rpc.is_none_or(|(c, m)| c > 0 && m == 0);
        for m in report.mismatches.iter().take(5) {
            eprintln!(
                "parity mismatch: {}",
                serde_json::to_string(m).unwrap_or_default()
            );
        }
        rows.push(Row {
            phase: phase as u8,
            published,
            received,
            external: external_seen - (external_expected - published.processes),
            parity: Some((report.compared, report.mismatch_count)),
            rpc,
            ok,
        });
    }
    // Phase 5: the bus stays as it is; a collector process serves a task.
    let all = &subs
        .iter()
        .find(|(id, _)| *id == "all-processes")
        .context("subscriber")?
        .1;
    let task = phase5(&socket, all).await;
    let stats = bus.stats();
    bus.shutdown().await?;
    bridge.shutdown().await;
    drop(external);

    let task_ok = task.as_ref().is_ok_and(|t| t.hash_ok && t.correlated);
    let ok = rows.iter().all(|r| r.ok) && task_ok;
    let task_json = match &task {
        Ok(t) => {
            json!({"collector": t.collector, "sha256": t.sha256, "hash_matches": t.hash_ok, "event_correlated": t.correlated, "ok": task_ok})
        }
        Err(e) => json!({"error": e.to_string(), "ok": false}),
    };
    if json_out {
        let phases: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "phase": r.phase,
                    "published": {"processes": r.published.processes, "triggers": r.published.triggers, "urgent": r.published.urgent, "metrics": r.published.metrics},
                    "received": r.received.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "external_subscriber": r.external,
                    "parity": r.parity.map(|(c, m)| json!({"compared": c, "mismatches": m})),
                    "rpc_parity": r.rpc.map(|(c, m)| json!({"compared": c, "mismatches": m})),
                    "ok": r.ok,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"phases": phases, "phase5_task": task_json, "statistics": stats, "seconds": started.elapsed().as_secs_f64(), "ok": ok})
        );
    } else {
        println!("busbridge demo: this machine's processes through the legacy crossbeam facade");
        println!(
            "  phase 0: legacy router only; phases 1-3: bridged to an embedded busrt broker at"
        );
        println!(
            "  {} with a subscriber in a separate process (busbridge sub)\n",
            socket.display()
        );
        println!("phase  processes  triggers  all-processes  urgent  metrics  external-sub  parity (compared/mismatches)  ok");
        for r in &rows {
            let get = |id: &str| {
                r.received
                    .iter()
                    .find(|(k, _)| *k == id)
                    .map_or(0, |(_, v)| *v)
            };
            println!(
                "{:>5}  {:>9}  {:>8}  {:>13}  {:>6}  {:>7}  {:>12}  {:>29}  {}",
                r.phase,
                r.published.processes,
                r.published.triggers,
                get("all-processes"),
                get("urgent-triggers"),
                get("metrics"),
                if r.phase == 0 {
                    "-".to_string()
                } else {
                    r.external.to_string()
                },
                r.parity
                    .map_or("-".to_string(), |(c, m)| format!("{c}/{m}")),
                if r.ok { "yes" } else { "NO" }
            );
        }
        for r in rows.iter().filter(|r| r.rpc.is_some()) {
            let (c, m) = r.rpc.unwrap_or_default();
            println!(
                "phase {}: lifecycle control in process vs over busrt RPC: {c} compared, {m} mismatches",
                r.phase
            );
        }
        match &task {
            Ok(t) => println!(
                "phase 5: hash_executable of this program by collector process {}: {}; matches ours: {}; its event reached this bus with the task's correlation id: {}",
                t.collector,
                t.sha256,
                if t.hash_ok { "yes" } else { "NO" },
                if t.correlated { "yes" } else { "NO" }
            ),
            Err(e) => println!("phase 5: the task failed: {e:#}"),
        }
        println!(
            "\nbus statistics: published {}, delivered {}, dropped {}, sent to busrt {}, received from busrt {}",
            stats.events_published,
            stats.events_delivered,
            stats.events_dropped(),
            stats.bridge_sent,
            stats.bridge_received
        );
        println!("finished in {:.1} s", started.elapsed().as_secs_f64());
        println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
