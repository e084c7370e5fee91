//! Several facades over one core: each keeps its own settings, all go through the same core
//! path (phase routing, recording).

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bus::{Core, CoreOptions};
use busbridge::legacy::crossbeam::{
    HighPerformanceEventBus, HighPerformanceEventBusConfig, HighPerformanceEventBusImpl,
};
use busbridge::legacy::tokio::{self as tokio_bus, EventBus as _, LocalEventBus};
use busbridge::trace::{Recorder, Trace};
use common::*;
use std::sync::Arc;

fn crossbeam_sub(id: &str) -> busbridge::legacy::crossbeam::EventSubscription {
    busbridge::legacy::crossbeam::EventSubscription {
        subscriber_id: id.into(),
        capabilities: busbridge::event::SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
    }
}

fn tokio_sub(id: &str) -> tokio_bus::EventSubscription {
    tokio_bus::EventSubscription {
        subscriber_id: id.into(),
        capabilities: busbridge::event::SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
    }
}

#[tokio::test]
async fn two_facades_on_one_core_keep_their_own_subscriber_limits() {
    let core = Arc::new(Core::new(CoreOptions::default()));
    let crossbeam = HighPerformanceEventBusImpl::with_core(
        core.clone(),
        HighPerformanceEventBusConfig {
            max_subscribers: 3,
            ..Default::default()
        },
    );
    // Built second: it used to set the limit for the whole core.
    let mut tokio = LocalEventBus::with_core(
        core.clone(),
        tokio_bus::EventBusConfig {
            max_subscribers: 1,
            ..Default::default()
        },
    );
    let mut keep = Vec::new();
    for i in 0..3 {
        keep.push(
            crossbeam
                .subscribe(crossbeam_sub(&format!("c{i}")))
                .await
                .unwrap(),
        );
    }
    let err = crossbeam.subscribe(crossbeam_sub("c3")).await.unwrap_err();
    assert!(err.to_string().contains("limit of 3"), "{err}");
    let _t = tokio.subscribe(tokio_sub("t0")).await.unwrap();
    let err = tokio.subscribe(tokio_sub("t1")).await.unwrap_err();
    assert!(err.to_string().contains("limit of 1"), "{err}");
    // Unsubscribing frees the tokio facade's own place, not the crossbeam one's.
    tokio.unsubscribe("t0").await.unwrap();
    let _t1 = tokio.subscribe(tokio_sub("t1")).await.unwrap();
    assert!(crossbeam.subscribe(crossbeam_sub("c4")).await.is_err());
    assert_eq!(core.router().len(), 4);
}

#[tokio::test]
async fn the_tokio_facade_is_recorded_through_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    let mut bus = LocalEventBus::new(tokio_bus::EventBusConfig {
        enable_persistence: true,
        ..Default::default()
    })
    .await
    .unwrap();
    bus.start().await.unwrap();
    let recorder = Arc::new(Recorder::create(&path).unwrap());
    bus.core().record_to(Some(recorder.clone()));
    let mut rx = bus.subscribe(tokio_sub("all")).await.unwrap();
    bus.publish(process(7), "case-1".into()).await.unwrap();
    rx.recv().await.unwrap();
    // A replay is a control-path delivery like any other.
    bus.replay_events("case-1", "all").await.unwrap();
    let replayed = rx.recv().await.unwrap();
    assert_eq!(
        replayed.routing_metadata.get("replay").map(String::as_str),
        Some("true")
    );
    bus.core().record_to(None);
    recorder.close().unwrap();
    assert_eq!(recorder.dropped(), 0);
    let trace = Trace::load(&path).unwrap();
    assert_eq!(trace.subscriptions.len(), 1);
    assert_eq!(trace.publishes.len(), 1);
    assert_eq!(trace.deliveries.len(), 2);
}

#[tokio::test]
async fn a_closed_recorder_counts_what_it_could_not_keep() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::new(CoreOptions::default());
    let recorder = Arc::new(Recorder::create(dir.path().join("t.jsonl")).unwrap());
    core.record_to(Some(recorder.clone()));
    recorder.close().unwrap();
    let env = core.envelope(process(1), "c".into());
    core.publish(env).await.unwrap();
    assert_eq!(
        recorder.dropped(),
        1,
        "the publish line could not be recorded"
    );
}
