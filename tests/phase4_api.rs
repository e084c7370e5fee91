//! The phase-4 API: `busbridge::EventBus` with busbridge's own `Receiver`, over busrt only.
//! Runs in the default build and in the build without `legacy` (no crossbeam-channel).
#![cfg(feature = "cli")]

use busbridge::bridge::BridgeBuilder;
use busbridge::event::SourceCaps;
use busbridge::phase::{Phase, PhaseError};
use busbridge::queue::{RecvTimeoutError, TryRecvError};
use busbridge::scenario::sample_events;
use busbridge::{Broker, EventBusConfig, EventSubscription};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

/// A phase-4 bridged bus on an embedded broker of its own.
async fn bridged_on_an_embedded_broker() -> busbridge::bridge::Bridged {
    let mut broker = Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .embedded(broker)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_four_bus_serves_the_crossbeam_call_sites() {
    let bridged = bridged_on_an_embedded_broker().await;
    let mut bus = bridged.event_bus(EventBusConfig::default());
    let rx = bus
        .subscribe(EventSubscription {
            subscriber_id: "all".into(),
            capabilities: SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
        })
        .await
        .unwrap();
    assert!(rx.is_empty());
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    let events = sample_events("p4", 10);
    for e in &events {
        bus.publish(e.clone(), "c".into()).await.unwrap();
    }
    // recv (blocking), recv_timeout, recv_async, iter/try_iter, len: the same call sites.
    let first = tokio::task::block_in_place(|| rx.recv().unwrap());
    assert_eq!(first.event, events[0]);
    let second = tokio::task::block_in_place(|| rx.recv_timeout(LIMIT).unwrap());
    assert_eq!(second.event, events[1]);
    let third = tokio::time::timeout(LIMIT, rx.recv_async())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.event, events[2]);
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .unwrap();
    assert_eq!(rx.len(), 7);
    let rest: Vec<_> = rx.try_iter().map(|e| e.event).collect();
    assert_eq!(rest, events[3..].to_vec());
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(1)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    let stats = bus.get_statistics().await;
    assert_eq!((stats.events_published, stats.events_delivered), (10, 10));
    bus.shutdown().await.unwrap();
    let drained: Vec<_> = tokio::task::block_in_place(|| rx.iter().collect());
    assert!(drained.is_empty(), "iter ends once the bus is shut down");
}

#[test]
fn phases_the_build_cannot_serve_are_clear_errors() {
    if cfg!(feature = "legacy") {
        assert_eq!(Phase::Topics.check_build(), Ok(()));
    } else {
        assert_eq!(Phase::Topics.check_build(), Err(PhaseError::NeedsLegacy(2)));
        let e = busbridge::config::Config::from_toml_str("phase = 1").unwrap_err();
        assert!(e.to_string().contains("no `legacy` feature"), "{e}");
        assert_eq!(busbridge::config::Config::default().phase, Phase::BusrtOnly);
    }
    assert_eq!(Phase::BusrtOnly.check_build(), Ok(()));
}

/// A bus whose subscriber wants process events publishes events of every kind:
/// the subscriber gets its events once and in order, the others come back from busrt
/// undecoded (nobody here wanted them), and everything settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_returns_nobody_matched_are_settled_without_decoding() {
    let bridged = bridged_on_an_embedded_broker().await;
    let bus = bridged.event_bus(EventBusConfig::default());
    let rx = bus
        .subscribe(EventSubscription {
            subscriber_id: "processes".into(),
            capabilities: SourceCaps::PROCESS,
            event_filter: None,
            correlation_filter: None,
        })
        .await
        .unwrap();
    // sample_events cycles through the kinds: one in five is a process event.
    let events = sample_events("undecoded", 100);
    let is_process = |e: &busbridge::event::CollectionEvent| e.capability() == SourceCaps::PROCESS;
    for e in &events {
        bus.publish(e.clone(), "c".into()).await.unwrap();
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .unwrap();
    assert_eq!(bridged.link().in_flight(), 0);
    let got: Vec<_> = rx.try_iter().map(|e| e.event).collect();
    let want: Vec<_> = events.iter().filter(|e| is_process(e)).cloned().collect();
    assert_eq!(got, want);
    let stats = bridged.core().snapshot();
    let unmatched = events.iter().filter(|e| !is_process(e)).count() as u64;
    assert_eq!(stats.bridge_returns_undecoded, unmatched);
    assert_eq!(stats.bridge_received, 100);
    assert_eq!(stats.bridge_decode_errors, 0);
}
