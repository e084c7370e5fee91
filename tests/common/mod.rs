//! Shared test helpers: sample events of every kind and proptest strategies.
#![allow(dead_code)]

use busbridge::event::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time with a nanosecond part, so lossy paths show.
pub fn t(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

pub fn process(pid: u32) -> CollectionEvent {
    CollectionEvent::Process(ProcessEvent {
        pid,
        ppid: Some(1),
        name: format!("proc-{pid}"),
        executable_path: Some("/usr/bin/proc".into()),
        command_line: vec!["proc".into(), "--flag".into(), "".into(), "a b".into()],
        start_time: Some(t(1_700_000_000, 123_456_789)),
        cpu_usage: Some(12.345_678_901_234),
        memory_usage: Some(1 << 40),
        executable_hash: Some("ab".repeat(32)),
        user_id: Some("1000".into()),
        accessible: true,
        file_exists: false,
        timestamp: t(1_700_000_100, 987_654_321),
        platform_metadata: Some(serde_json::json!({"cgroup": "/x", "threads": 3, "f": 1.5})),
    })
}

pub fn network(pid: u32) -> CollectionEvent {
    CollectionEvent::Network(NetworkEvent {
        connection_id: format!("conn-{pid}"),
        source_addr: "10.0.0.1:5000".into(),
        dest_addr: "[::1]:443".into(),
        protocol: "tcp".into(),
        state: "ESTABLISHED".into(),
        pid: Some(pid),
        bytes_sent: u64::MAX,
        bytes_received: 7,
        timestamp: t(1_700_000_200, 1),
    })
}

pub fn filesystem(pid: u32) -> CollectionEvent {
    CollectionEvent::Filesystem(FilesystemEvent {
        path: "/etc/passwd".into(),
        operation: "modify".into(),
        pid: Some(pid),
        size: Some(4096),
        permissions: Some("0644".into()),
        file_hash: Some("deadbeef".into()),
        timestamp: t(1_700_000_300, 999_999_999),
    })
}

pub fn performance(pid: u32) -> CollectionEvent {
    CollectionEvent::Performance(PerformanceEvent {
        metric_name: "cpu".into(),
        value: -0.000_001_5,
        unit: "percent".into(),
        pid: Some(pid),
        component: "procmond".into(),
        timestamp: t(1_700_000_400, 500),
    })
}

pub fn trigger(pid: u32, priority: TriggerPriority) -> CollectionEvent {
    CollectionEvent::TriggerRequest(TriggerRequest {
        trigger_id: format!("trig-{pid}"),
        target_collector: "procmond".into(),
        analysis_type: AnalysisType::Custom("entropy".into()),
        priority,
        target_pid: Some(pid),
        target_path: Some("/tmp/x".into()),
        correlation_id: "corr".into(),
        metadata: HashMap::from([("rule".into(), "r1".into()), ("host".into(), "h".into())]),
        timestamp: t(1_700_000_500, 42),
    })
}

/// One event of every kind.
pub fn every_kind() -> Vec<CollectionEvent> {
    vec![
        process(10),
        network(11),
        filesystem(12),
        performance(13),
        trigger(14, TriggerPriority::High),
    ]
}

// ---- proptest strategies -------------------------------------------------------------

pub fn arb_time() -> impl Strategy<Value = SystemTime> {
    (0u64..8_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| t(s, n))
}

fn arb_f64() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        arb_f64().prop_map(serde_json::Value::from),
        arb_string().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(arb_string(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

pub fn arb_event() -> impl Strategy<Value = CollectionEvent> {
    let process = (
        (
            any::<u32>(),
            any::<Option<u32>>(),
            arb_string(),
            prop::option::of(arb_string()),
        ),
        (
            prop::collection::vec(arb_string(), 0..4),
            prop::option::of(arb_time()),
            prop::option::of(arb_f64()),
            any::<Option<u64>>(),
        ),
        (
            prop::option::of(arb_string()),
            prop::option::of(arb_string()),
            any::<bool>(),
            any::<bool>(),
            arb_time(),
            prop::option::of(arb_json()),
        ),
    )
        .prop_map(
            |((pid, ppid, name, exe), (cmd, st, cpu, mem), (h, u, a, f, ts, pm))| {
                CollectionEvent::Process(ProcessEvent {
                    pid,
                    ppid,
                    name,
                    executable_path: exe,
                    command_line: cmd,
                    start_time: st,
                    cpu_usage: cpu,
                    memory_usage: mem,
                    executable_hash: h,
                    user_id: u,
                    accessible: a,
                    file_exists: f,
                    timestamp: ts,
                    platform_metadata: pm,
                })
            },
        );
    let network = (
        (
            arb_string(),
            arb_string(),
            arb_string(),
            arb_string(),
            arb_string(),
        ),
        (any::<Option<u32>>(), any::<u64>(), any::<u64>(), arb_time()),
    )
        .prop_map(|((c, s, d, p, st), (pid, bs, br, ts))| {
            CollectionEvent::Network(NetworkEvent {
                connection_id: c,
                source_addr: s,
                dest_addr: d,
                protocol: p,
                state: st,
                pid,
                bytes_sent: bs,
                bytes_received: br,
                timestamp: ts,
            })
        });
    let filesystem = (
        arb_string(),
        arb_string(),
        any::<Option<u32>>(),
        any::<Option<u64>>(),
        prop::option::of(arb_string()),
        prop::option::of(arb_string()),
        arb_time(),
    )
        .prop_map(|(path, op, pid, size, perm, hash, ts)| {
            CollectionEvent::Filesystem(FilesystemEvent {
                path,
                operation: op,
                pid,
                size,
                permissions: perm,
                file_hash: hash,
                timestamp: ts,
            })
        });
    let performance = (
        arb_string(),
        arb_f64(),
        arb_string(),
        any::<Option<u32>>(),
        arb_string(),
        arb_time(),
    )
        .prop_map(|(m, v, u, pid, c, ts)| {
            CollectionEvent::Performance(PerformanceEvent {
                metric_name: m,
                value: v,
                unit: u,
                pid,
                component: c,
                timestamp: ts,
            })
        });
    let analysis = prop_oneof![
        Just(AnalysisType::BinaryHash),
        Just(AnalysisType::MemoryAnalysis),
        Just(AnalysisType::YaraScan),
        Just(AnalysisType::NetworkAnalysis),
        Just(AnalysisType::BehavioralAnalysis),
        arb_string().prop_map(AnalysisType::Custom),
    ];
    let priority = (0u8..4).prop_map(TriggerPriority::from_u8);
    let trigger = (
        (arb_string(), arb_string(), analysis, priority),
        (
            any::<Option<u32>>(),
            prop::option::of(arb_string()),
            arb_string(),
            prop::collection::hash_map(arb_string(), arb_string(), 0..4),
            arb_time(),
        ),
    )
        .prop_map(|((id, tc, at, pr), (pid, path, corr, meta, ts))| {
            CollectionEvent::TriggerRequest(TriggerRequest {
                trigger_id: id,
                target_collector: tc,
                analysis_type: at,
                priority: pr,
                target_pid: pid,
                target_path: path,
                correlation_id: corr,
                metadata: meta,
                timestamp: ts,
            })
        });
    prop_oneof![process, network, filesystem, performance, trigger]
}

#[cfg(feature = "nats")]
pub mod nats;
pub mod procs;
pub mod proxy;

/// Client options for fault tests: quick reconnects and a short timeout.
pub fn fast_client(name: &str) -> busbridge::client::ClientOptions {
    busbridge::client::ClientOptions {
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        ..busbridge::client::ClientOptions::default().name(name)
    }
}

/// A phase-2 bridged publisher at `connect` that has published process events 0..`n`, each
/// with its number as correlation id; kept alive by the caller (it answers resend requests).
pub async fn publish_processes(connect: &str, n: u64) -> busbridge::bridge::Bridged {
    let publisher = busbridge::bridge::BridgeBuilder::new()
        .phase(busbridge::phase::Phase::BusrtOnly)
        .connect(connect)
        .build()
        .await
        .unwrap();
    let bus = publisher.event_bus(Default::default());
    for i in 0..n {
        bus.publish(process(i as u32), i.to_string()).await.unwrap();
    }
    publisher
}

/// A subscription to every event.
pub fn sub_all(id: &str) -> busbridge::EventSubscription {
    busbridge::EventSubscription {
        subscriber_id: id.into(),
        capabilities: SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
    }
}

/// Reads `n` events on a thread (bounded by `limit`), as their correlation ids parsed as
/// numbers, then whether anything more arrived (a duplicate).
#[cfg(feature = "legacy")]
pub fn read_numbered(
    rx: crossbeam_channel::Receiver<busbridge::BusEvent>,
    n: usize,
    limit: Duration,
) -> std::thread::JoinHandle<(Vec<usize>, bool)> {
    std::thread::spawn(move || {
        let mut got = Vec::with_capacity(n);
        let deadline = std::time::Instant::now() + limit;
        while got.len() < n {
            match rx.recv_deadline(deadline) {
                Ok(e) => got.push(e.correlation_id.parse::<usize>().unwrap()),
                Err(_) => break,
            }
        }
        let extra = rx.recv_timeout(Duration::from_millis(300)).is_ok();
        (got, extra)
    })
}
