//! The shared crossbeam scenarios (`body.rs`) through the final crossbeam facade (2026-04):
//! its own types (events with `hash_algorithm`, `Arc<BusEvent>`), a subscription that names
//! its back-pressure, and `DropNewest` per subscriber (the version has no `DropOldest`).
#![allow(dead_code)]

use async_trait::async_trait;
use busbridge::legacy::crossbeam_2026_04::*;
use crossbeam_channel::Receiver;
use std::time::{Duration, Instant};

/// What a subscriber of this version receives.
type BusEvent = std::sync::Arc<busbridge::legacy::crossbeam_2026_04::BusEvent>;

/// The common sample events, in this version's types; process events name their hash
/// algorithm, so the field is carried through every path.
fn v(e: busbridge::event::CollectionEvent) -> CollectionEvent {
    let mut e = CollectionEvent::from_core(e, &Default::default());
    if let CollectionEvent::Process(p) = &mut e {
        p.hash_algorithm = p.executable_hash.as_ref().map(|_| "sha256".into());
    }
    e
}
fn process(pid: u32) -> CollectionEvent {
    v(super::common::process(pid))
}
fn network(pid: u32) -> CollectionEvent {
    v(super::common::network(pid))
}
fn filesystem(pid: u32) -> CollectionEvent {
    v(super::common::filesystem(pid))
}
fn trigger(pid: u32, p: TriggerPriority) -> CollectionEvent {
    v(super::common::trigger(pid, p))
}
fn every_kind() -> Vec<CollectionEvent> {
    super::common::every_kind().into_iter().map(v).collect()
}

fn sub_with(id: &str, caps: SourceCaps, strategy: BackpressureStrategy) -> EventSubscription {
    EventSubscription {
        subscriber_id: id.into(),
        capabilities: caps,
        event_filter: None,
        correlation_filter: None,
        backpressure_strategy: strategy,
    }
}

pub fn sub(id: &str, caps: SourceCaps) -> EventSubscription {
    sub_with(id, caps, BackpressureStrategy::Blocking)
}

/// Queues of 4 per subscriber; the strategy is each subscription's in this version.
fn small(_strategy: BackpressureStrategy) -> HighPerformanceEventBusConfig {
    HighPerformanceEventBusConfig {
        per_subscriber_channel_capacity: 4,
        ..Default::default()
    }
}

pub async fn drop_newest_keeps_the_first(b: &dyn Backend) {
    let bus = b.bus(small(BackpressureStrategy::DropNewest)).await;
    let rx = bus
        .subscribe(sub_with(
            "slow",
            all_caps(),
            BackpressureStrategy::DropNewest,
        ))
        .await
        .unwrap();
    for i in 0..10 {
        bus.publish(process(i), String::new()).await.unwrap();
    }
    b.settle(bus.as_ref()).await;
    let pids: Vec<u32> = rx.try_iter().map(|e| e.event.pid().unwrap()).collect();
    assert_eq!(pids, [0, 1, 2, 3]);
    assert_eq!(bus.get_statistics().await.events_dropped, 6);
}

/// Events published before anyone reads: the default queue holds 1,024 (more would make
/// the publish wait, then fail after `publish_timeout`, as this version does).
const BURST: u32 = 1000;

include!("body.rs");
