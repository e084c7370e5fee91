//! Load tests, ignored by default: `cargo test --release -- --ignored`.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bridge::BridgeBuilder;
use busbridge::legacy::crossbeam::*;
use busbridge::phase::Phase;
use busbridge::{AsyncClient, Broker, QoS};
use std::time::{Duration, Instant};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|p| p * 4096.0 / 1048576.0)
        .unwrap_or(0.0)
}

/// 100 clients publish 100 events/s each (10,000/s in all) for 60 s; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: 60 s"]
async fn ten_thousand_per_second_for_a_minute_across_100_clients() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("load.sock");
    let mut broker = Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn_ipc_server(&socket, 200).unwrap();
    broker.spawn().await.unwrap();
    let uri = format!("ipc://{}", socket.display());
    let mut sub = AsyncClient::connect_with(
        &uri,
        busbridge::client::ClientOptions {
            queue_size: 1 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sub.subscribe("events.#", QoS::Processed).await.unwrap();
    const SECS: u64 = 60;
    let mut tasks = Vec::new();
    for c in 0..100u32 {
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            let client = AsyncClient::connect(&uri).await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..(SECS * 100) as u32 {
                tick.tick().await;
                let mut payload = c.to_le_bytes().to_vec();
                payload.extend(i.to_le_bytes());
                client
                    .publish("events.performance.metric", payload, QoS::Processed)
                    .await
                    .unwrap();
            }
        }));
    }
    let expected = 100 * SECS * 100;
    let mut last = vec![None::<u32>; 100];
    let mut received = 0u64;
    let start = Instant::now();
    while received < expected {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .unwrap()
            .unwrap();
        let p = m.payload();
        let c = u32::from_le_bytes(p[..4].try_into().unwrap()) as usize;
        let i = u32::from_le_bytes(p[4..8].try_into().unwrap());
        assert_eq!(
            last[c].map_or(0, |l| l + 1),
            i,
            "client {c}: in order, no gap"
        );
        last[c] = Some(i);
        received += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(received, expected);
    assert_eq!(sub.stats().dropped_inbox, 0);
    eprintln!(
        "{received} events in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// A bridged stream at 10,000 events/s for 10 minutes: memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: 10 minutes"]
async fn ten_minute_soak_keeps_memory_flat() {
    let mut broker = Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    let bridged = BridgeBuilder::new()
        .phase(Phase::Topics)
        .embedded(broker)
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    bridged.core().parity().set_enabled(false);
    let rx = bus.subscribe(common::sub_all("soak")).await.unwrap();
    let reader = std::thread::spawn(move || rx.iter().count());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(600) {
        tick.tick().await;
        for _ in 0..10 {
            bus.publish(
                busbridge::scenario::sample_event("soak", sent % 1000),
                String::new(),
            )
            .await
            .unwrap();
            sent += 1;
        }
        if sent.is_multiple_of(300_000) {
            samples.push(rss_mib());
        }
    }
    let first = samples[1];
    let last = *samples.last().unwrap();
    assert!(last <= first * 1.25 + 16.0, "memory grew: {samples:?}");
    tokio::time::timeout(Duration::from_secs(60), bridged.link().settled())
        .await
        .unwrap();
    bridged.core().shutdown();
    assert_eq!(reader.join().unwrap(), sent);
}
