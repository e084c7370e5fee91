//! `busbridge demo`: real process events through the legacy crossbeam facade.

use busbridge::legacy::crossbeam::*;
use busbridge::procscan::ProcessScanner;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

fn subscription(id: &str, caps: SourceCaps, filter: Option<EventFilter>) -> EventSubscription {
    EventSubscription {
        subscriber_id: id.into(),
        capabilities: caps,
        event_filter: filter,
        correlation_filter: None,
    }
}

pub async fn run(json_out: bool) -> anyhow::Result<ExitCode> {
    let mut bus =
        HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default()).await?;
    let all = bus
        .subscribe(subscription("all-processes", SourceCaps::PROCESS, None))
        .await?;
    let metrics = bus
        .subscribe(subscription(
            "metrics",
            SourceCaps::PERFORMANCE,
            Some(EventFilter {
                event_types: vec!["performance".into()],
                ..Default::default()
            }),
        ))
        .await?;
    let urgent = bus
        .subscribe(subscription(
            "urgent-triggers",
            SourceCaps::REALTIME,
            Some(EventFilter {
                min_priority: Some(TriggerPriority::High as u8),
                ..Default::default()
            }),
        ))
        .await?;

    let processes = ProcessScanner::new().scan();
    let scanned = processes.len();
    for p in processes {
        let high_memory = p.memory_usage.unwrap_or(0) > 100 * 1024 * 1024;
        let (pid, name) = (p.pid, p.name.clone());
        bus.publish(CollectionEvent::Process(p), "demo-scan".into())
            .await?;
        if high_memory {
            let trigger = TriggerRequest {
                trigger_id: format!("mem-{pid}"),
                target_collector: "procmond".into(),
                analysis_type: AnalysisType::MemoryAnalysis,
                priority: TriggerPriority::High,
                target_pid: Some(pid),
                target_path: None,
                correlation_id: "demo-scan".into(),
                metadata: [("reason".to_string(), format!("{name} uses over 100 MiB"))].into(),
                timestamp: SystemTime::now(),
            };
            bus.publish(CollectionEvent::TriggerRequest(trigger), "demo-scan".into())
                .await?;
        }
    }
    bus.publish(
        CollectionEvent::Performance(PerformanceEvent {
            metric_name: "processes_scanned".into(),
            value: scanned as f64,
            unit: "count".into(),
            pid: Some(std::process::id()),
            component: "busbridge-demo".into(),
            timestamp: SystemTime::now(),
        }),
        "demo-scan".into(),
    )
    .await?;

    let drain = |rx: &crossbeam_channel::Receiver<BusEvent>| rx.try_iter().collect::<Vec<_>>();
    let (got_all, got_metrics, got_urgent) = (drain(&all), drain(&metrics), drain(&urgent));
    let stats = bus.get_statistics().await;
    bus.shutdown().await?;
    let _ = all.recv_timeout(Duration::from_millis(1));

    let ok = got_all.len() == scanned && got_metrics.len() == 1;
    if json_out {
        println!(
            "{}",
            json!({
                "processes_scanned": scanned,
                "received": {
                    "all-processes": got_all.len(),
                    "metrics": got_metrics.len(),
                    "urgent-triggers": got_urgent.len(),
                },
                "statistics": stats,
                "ok": ok,
            })
        );
    } else {
        println!("busbridge demo: {scanned} processes on this machine, through the legacy crossbeam facade\n");
        println!("subscriber         received");
        println!("all-processes      {:>8}", got_all.len());
        println!("metrics            {:>8}", got_metrics.len());
        println!("urgent-triggers    {:>8}", got_urgent.len());
        println!("\nfirst processes received:");
        for e in got_all.iter().take(5) {
            if let CollectionEvent::Process(p) = &e.event {
                println!(
                    "  pid {:>7}  {:<20} {}",
                    p.pid,
                    p.name,
                    p.command_line
                        .join(" ")
                        .chars()
                        .take(60)
                        .collect::<String>()
                );
            }
        }
        for e in got_urgent.iter().take(3) {
            if let CollectionEvent::TriggerRequest(t) = &e.event {
                println!(
                    "trigger: {} ({:?}) {:?}",
                    t.trigger_id,
                    t.priority,
                    t.metadata.get("reason")
                );
            }
        }
        println!(
            "\nstatistics: published {}, delivered {}, dropped {}, avg latency {:.4} ms",
            stats.events_published,
            stats.events_delivered,
            stats.events_dropped,
            stats.avg_delivery_latency_ms
        );
        println!("{}", if ok { "demo: OK" } else { "demo: MISMATCH" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
