//! Deterministic sample events and subscriptions: the built-in parity scenarios, the demo's
//! remote collector, and the multi-process tests all use the same ones.

use crate::codec::Envelope;
use crate::event::*;
use crate::subscription::{EventFilter, EventSubscription};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `n` events cycling through every kind, every field set (nanosecond timestamps, platform
/// metadata, trigger metadata), distinct per `seed`.
pub fn sample_events(seed: &str, n: usize) -> Vec<CollectionEvent> {
    (0..n).map(|i| sample_event(seed, i)).collect()
}

/// The `i`-th sample event of `seed`.
pub fn sample_event(seed: &str, i: usize) -> CollectionEvent {
    let k = i as u32;
    let at = UNIX_EPOCH + Duration::new(1_750_000_000 + u64::from(k), 123_456_789 + k % 1000);
    match i % 5 {
        0 => CollectionEvent::Process(ProcessEvent {
            pid: 1000 + k,
            ppid: Some(1),
            name: format!("{seed}-proc-{i}"),
            executable_path: Some(format!("/usr/bin/{seed}")),
            command_line: vec![seed.into(), "--index".into(), i.to_string(), String::new()],
            start_time: Some(at - Duration::new(60, 7)),
            cpu_usage: Some(0.25 + f64::from(k)),
            memory_usage: Some(4096 * u64::from(k)),
            executable_hash: Some(format!("{:064x}", k)),
            user_id: Some("1000".into()),
            accessible: i.is_multiple_of(2),
            file_exists: true,
            timestamp: at,
            platform_metadata: Some(serde_json::json!({"seed": seed, "i": i, "cgroup": "/svc"})),
        }),
        1 => CollectionEvent::Network(NetworkEvent {
            connection_id: format!("{seed}-conn-{i}"),
            source_addr: "10.1.2.3:40000".into(),
            dest_addr: "192.0.2.7:443".into(),
            protocol: "tcp".into(),
            state: "ESTABLISHED".into(),
            pid: Some(1000 + k),
            bytes_sent: u64::from(k) * 10,
            bytes_received: u64::MAX - u64::from(k),
            timestamp: at,
        }),
        2 => CollectionEvent::Filesystem(FilesystemEvent {
            path: format!("/var/lib/{seed}/{i}"),
            operation: "write".into(),
            pid: Some(1000 + k),
            size: Some(u64::from(k)),
            permissions: Some("0640".into()),
            file_hash: Some(format!("{k:08x}")),
            timestamp: at,
        }),
        3 => CollectionEvent::Performance(PerformanceEvent {
            metric_name: "cpu".into(),
            value: f64::from(k) / 3.0,
            unit: "percent".into(),
            pid: Some(1000 + k),
            component: seed.into(),
            timestamp: at,
        }),
        _ => CollectionEvent::TriggerRequest(TriggerRequest {
            trigger_id: format!("{seed}-trigger-{i}"),
            target_collector: "procmond".into(),
            analysis_type: if i.is_multiple_of(2) {
                AnalysisType::YaraScan
            } else {
                AnalysisType::Custom("entropy".into())
            },
            priority: TriggerPriority::from_u8((i / 5 % 4) as u8),
            target_pid: Some(1000 + k),
            target_path: Some(format!("/tmp/{i}")),
            correlation_id: format!("{seed}-case"),
            metadata: HashMap::from([("rule".to_string(), format!("r{}", i % 3))]),
            timestamp: at,
        }),
    }
}

/// The envelope a sample publisher sends: deterministic event id `seed-i`, so another process
/// can tell exactly what it should have received.
pub fn sample_envelope(seed: &str, i: usize, publisher_id: &str) -> Envelope {
    let event = sample_event(seed, i);
    let mut env = Envelope::new(event, format!("{seed}-case-{}", i % 3), publisher_id);
    env.event_id = format!("{seed}-{i}");
    env.timestamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000 + i as u64);
    env
}

/// Subscribers exercising every filter: all, by capability, by event type, by priority, by
/// source, by correlation id.
pub fn sample_subscriptions(source: &str, correlation: &str) -> Vec<EventSubscription> {
    let sub = |id: &str, caps: SourceCaps, filter: Option<EventFilter>, corr: Option<&str>| {
        EventSubscription {
            subscriber_id: id.into(),
            capabilities: caps,
            event_filter: filter,
            correlation_filter: corr.map(str::to_owned),
        }
    };
    vec![
        sub("all", SourceCaps::all(), None, None),
        sub("processes", SourceCaps::PROCESS, None, None),
        sub(
            "net-and-fs",
            SourceCaps::all(),
            Some(EventFilter {
                event_types: vec!["network".into(), "filesystem".into()],
                ..Default::default()
            }),
            None,
        ),
        sub(
            "urgent",
            SourceCaps::REALTIME,
            Some(EventFilter {
                min_priority: Some(TriggerPriority::High as u8),
                ..Default::default()
            }),
            None,
        ),
        sub(
            "from-source",
            SourceCaps::all(),
            Some(EventFilter {
                source_filter: Some(source.into()),
                ..Default::default()
            }),
            None,
        ),
        sub("one-case", SourceCaps::all(), None, Some(correlation)),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic() {
        assert_eq!(super::sample_events("a", 12), super::sample_events("a", 12));
        assert_ne!(super::sample_events("a", 1), super::sample_events("b", 1));
    }
}
