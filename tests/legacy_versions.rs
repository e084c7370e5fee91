//! Every version of the legacy buses, as its code relies on it: duplicate subscriber ids, the
//! behaviour of the 2025-09 surfaces, the final crossbeam bus (2026-04) and the 2025-10 tokio
//! bus.

#![cfg(feature = "legacy")]

mod common;

use busbridge::legacy::{crossbeam, crossbeam_2026_04 as v2026, tokio as v2025_09};
use busbridge::legacy::{tokio::EventBus as _, tokio_2025_10 as v2025_10};
use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);
const DUPLICATE: &str = "Subscriber 'a' already exists";

fn tokio_sub(id: &str) -> v2025_09::EventSubscription {
    v2025_09::EventSubscription {
        subscriber_id: id.into(),
        capabilities: v2025_09::SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
    }
}

fn sub_2026(id: &str, strategy: v2026::BackpressureStrategy) -> v2026::EventSubscription {
    v2026::EventSubscription {
        subscriber_id: id.into(),
        capabilities: v2026::SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
        backpressure_strategy: strategy,
    }
}

fn sub_2025_10(
    id: &str,
    patterns: Option<&[&str]>,
    wildcards: bool,
) -> v2025_10::EventSubscription {
    v2025_10::EventSubscription {
        subscriber_id: id.into(),
        capabilities: v2025_10::SourceCaps::all(),
        event_filter: None,
        correlation_filter: None,
        topic_patterns: patterns.map(|p| p.iter().map(|s| s.to_string()).collect()),
        enable_wildcards: wildcards,
    }
}

/// A second subscriber with an id already subscribed is an error with the legacy message, on
/// every facade; the first keeps receiving; `resubscribe` is the deliberate replace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_subscriber_ids_are_refused_on_every_facade() {
    use crossbeam::HighPerformanceEventBus as _;
    use v2026::HighPerformanceEventBus as _;
    // crossbeam, 2025-09
    let bus = crossbeam::HighPerformanceEventBusImpl::new(Default::default())
        .await
        .unwrap();
    let first = bus.subscribe(sub_all("a")).await.unwrap();
    let e = bus.subscribe(sub_all("a")).await.unwrap_err();
    assert_eq!(e.to_string(), DUPLICATE);
    bus.publish(process(1), "c".into()).await.unwrap();
    assert_eq!(first.recv_timeout(LIMIT).unwrap().event, process(1));
    let second = bus.resubscribe(sub_all("a")).await.unwrap();
    bus.publish(process(2), "c".into()).await.unwrap();
    assert_eq!(second.recv_timeout(LIMIT).unwrap().event, process(2));
    assert!(first.recv_timeout(LIMIT).is_err(), "replaced: disconnected");

    // tokio, 2025-09
    let mut bus = v2025_09::LocalEventBus::new(Default::default())
        .await
        .unwrap();
    bus.start().await.unwrap();
    let mut first = bus.subscribe(tokio_sub("a")).await.unwrap();
    let e = bus.subscribe(tokio_sub("a")).await.unwrap_err();
    assert_eq!(e.to_string(), DUPLICATE);
    bus.publish(process(1), "c".into()).await.unwrap();
    assert_eq!(first.recv().await.unwrap().event, process(1));
    let _second = bus.resubscribe(tokio_sub("a")).await.unwrap();
    assert!(first.recv().await.is_none(), "replaced: disconnected");

    // the phase-4 EventBus
    let bus = busbridge::EventBus::new(Default::default());
    let _first = bus.subscribe(sub_all("a")).await.unwrap();
    let e = bus.subscribe(sub_all("a")).await.unwrap_err();
    assert_eq!(e.to_string(), DUPLICATE);
    bus.resubscribe(sub_all("a")).await.unwrap();

    // crossbeam, 2026-04
    let bus = v2026::HighPerformanceEventBusImpl::new(Default::default())
        .await
        .unwrap();
    let _first = bus
        .subscribe(sub_2026("a", Default::default()))
        .await
        .unwrap();
    let e = bus
        .subscribe(sub_2026("a", Default::default()))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), DUPLICATE);
    bus.resubscribe(sub_2026("a", Default::default()))
        .await
        .unwrap();

    // tokio, 2025-10
    let mut bus = v2025_10::LocalEventBus::new(Default::default())
        .await
        .unwrap();
    bus.start().await.unwrap();
    use v2025_10::EventBus as _;
    let _first = bus.subscribe(sub_2025_10("a", None, true)).await.unwrap();
    let e = bus
        .subscribe(sub_2025_10("a", None, true))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), DUPLICATE);
    bus.resubscribe(sub_2025_10("a", None, true)).await.unwrap();
}

/// `publisher_id` and `priority` as the legacy buses set them (unbridged: the legacy
/// situation); a bridged bus names the publishing process, and a crossbeam `source_filter`
/// on the old constant is refused there rather than matching nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_ids_and_priority_as_the_legacy_buses_set_them() {
    use crossbeam::HighPerformanceEventBus as _;
    let bus = crossbeam::HighPerformanceEventBusImpl::new(Default::default())
        .await
        .unwrap();
    let rx = bus.subscribe(sub_all("a")).await.unwrap();
    bus.publish(
        trigger(1, busbridge::event::TriggerPriority::Critical),
        "c".into(),
    )
    .await
    .unwrap();
    let got = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(got.publisher_id, "high-performance-bus");
    assert_eq!(got.priority, 5);

    let mut bus = v2025_09::LocalEventBus::new(Default::default())
        .await
        .unwrap();
    bus.start().await.unwrap();
    let mut rx = bus.subscribe(tokio_sub("a")).await.unwrap();
    bus.publish(process(1), "c".into()).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().publisher_id, "local-publisher");

    let dir = tempfile::tempdir().unwrap();
    let mut config = busbridge::config::Config {
        phase: busbridge::phase::Phase::Topics,
        ..Default::default()
    };
    config.transport.socket_path = dir.path().join("b.sock");
    let bridged = busbridge::bridge::Bridged::start(&config).await.unwrap();
    let bus = bridged.crossbeam(Default::default());
    let mut s = sub_all("old-source");
    s.event_filter = Some(crossbeam::EventFilter {
        source_filter: Some("high-performance-bus".into()),
        ..Default::default()
    });
    let e = bus.subscribe(s).await.unwrap_err().to_string();
    assert!(
        e.contains("source_filter") && e.contains(bridged.link().name()),
        "{e}"
    );
    bridged.shutdown().await;
}

/// The tokio bus's `min_priority` refuses every event that is not a trigger request, and
/// `pids` refuses events without a pid.
#[tokio::test]
async fn tokio_min_priority_and_pids_as_the_legacy_bus() {
    let mut bus = v2025_09::LocalEventBus::new(Default::default())
        .await
        .unwrap();
    bus.start().await.unwrap();
    let mut s = tokio_sub("urgent");
    s.event_filter = Some(v2025_09::EventFilter {
        min_priority: Some(v2025_09::TriggerPriority::High),
        ..Default::default()
    });
    let mut urgent = bus.subscribe(s).await.unwrap();
    let mut s = tokio_sub("pid-7");
    s.event_filter = Some(v2025_09::EventFilter {
        pids: vec![7],
        ..Default::default()
    });
    let mut pid7 = bus.subscribe(s).await.unwrap();
    use busbridge::event::TriggerPriority::*;
    for e in [
        process(7),
        trigger(7, Normal),
        trigger(7, Critical),
        performance(1), // pid 1
        network(7),
    ] {
        bus.publish(e, "c".into()).await.unwrap();
    }
    let mut perf = performance(1);
    if let busbridge::event::CollectionEvent::Performance(p) = &mut perf {
        p.pid = None;
    }
    bus.publish(perf, "c".into()).await.unwrap();
    let drain = |rx: &mut tokio::sync::mpsc::Receiver<v2025_09::BusEvent>| {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e.event);
        }
        v
    };
    assert_eq!(drain(&mut urgent), [trigger(7, Critical)]);
    assert_eq!(
        drain(&mut pid7),
        [
            process(7),
            trigger(7, Normal),
            trigger(7, Critical),
            network(7)
        ]
    );
}

/// The final crossbeam bus: `Arc<BusEvent>`, every field including `hash_algorithm`, a queue
/// per subscriber of `per_subscriber_channel_capacity`, `DropNewest` per subscription, and a
/// publish into a full `Blocking` subscriber that fails after `publish_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossbeam_2026_04_surface() {
    use v2026::HighPerformanceEventBus as _;
    let config = v2026::HighPerformanceEventBusConfig::default();
    assert_eq!(
        (
            config.channel_capacity,
            config.per_subscriber_channel_capacity
        ),
        (8192, 1024)
    );
    assert_eq!(config.publish_timeout, Duration::from_secs(5));
    let bus = v2026::HighPerformanceEventBusImpl::new(v2026::HighPerformanceEventBusConfig {
        per_subscriber_channel_capacity: 3,
        publish_timeout: Duration::from_millis(200),
        ..config
    })
    .await
    .unwrap();
    assert!(bus.blocking_limit() <= Duration::from_millis(200));
    let drop_newest = bus
        .subscribe(sub_2026("lossy", v2026::BackpressureStrategy::DropNewest))
        .await
        .unwrap();
    let events: Vec<v2026::CollectionEvent> = every_kind()
        .into_iter()
        .map(|e| {
            let mut e = v2026::CollectionEvent::from_core(e, &Default::default());
            if let v2026::CollectionEvent::Process(p) = &mut e {
                p.hash_algorithm = Some("sha256".into());
            }
            e
        })
        .collect();
    for (i, e) in events.iter().take(3).enumerate() {
        bus.publish(e.clone(), format!("c{i}")).await.unwrap();
    }
    bus.publish(events[3].clone(), "dropped".into())
        .await
        .unwrap();
    let got: Vec<std::sync::Arc<v2026::BusEvent>> = drop_newest.try_iter().collect();
    assert_eq!(
        got.len(),
        3,
        "a queue of 3; the fourth dropped for this subscriber"
    );
    assert_eq!(
        got.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        events[..3]
    );
    assert_eq!(got[0].priority, 5);
    assert_eq!(bus.stats().dropped_full, 1);

    let blocking = bus
        .subscribe(sub_2026("slow", v2026::BackpressureStrategy::Blocking))
        .await
        .unwrap();
    for i in 0..3 {
        bus.publish(events[4].clone(), format!("fill-{i}"))
            .await
            .unwrap();
    }
    let e = bus
        .publish(events[0].clone(), "full".into())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    // Room again: the publish goes through.
    blocking.try_recv().unwrap();
    bus.publish(events[0].clone(), "room".into()).await.unwrap();
}

/// The 2025-10 tokio bus: topic patterns replace capabilities, `*` and `#` as busbridge's
/// dotted topics, literal without wildcards; `topic_filters` and `source_collectors` narrow.
#[tokio::test]
async fn tokio_2025_10_topic_patterns() {
    use v2025_10::EventBus as _;
    let mut bus = v2025_10::LocalEventBus::new(Default::default())
        .await
        .unwrap();
    bus.start().await.unwrap();
    let mut wild = bus
        .subscribe(sub_2025_10(
            "wild",
            Some(&["events.*.new", "tasks.#"]),
            true,
        ))
        .await
        .unwrap();
    let mut literal = bus
        .subscribe(sub_2025_10("literal", Some(&["events.*.new"]), false))
        .await
        .unwrap();
    let mut exact = bus
        .subscribe(sub_2025_10(
            "exact",
            Some(&["events.network.connection"]),
            false,
        ))
        .await
        .unwrap();
    let mut s = sub_2025_10("narrow", None, true);
    s.event_filter = Some(v2025_10::EventFilter {
        topic_filters: vec!["events.process.*".into()],
        source_collectors: vec!["local-publisher".into()],
        ..Default::default()
    });
    let mut narrow = bus.subscribe(s).await.unwrap();
    let mut s = sub_2025_10("elsewhere", None, true);
    s.event_filter = Some(v2025_10::EventFilter {
        source_collectors: vec!["someone-else".into()],
        ..Default::default()
    });
    let mut elsewhere = bus.subscribe(s).await.unwrap();
    use busbridge::event::TriggerPriority::*;
    for e in [process(1), network(2), trigger(3, High)] {
        bus.publish(e, "c".into()).await.unwrap();
    }
    let drain = |rx: &mut tokio::sync::mpsc::Receiver<v2025_10::BusEvent>| {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e.event);
        }
        v
    };
    assert_eq!(drain(&mut wild), [process(1), trigger(3, High)]);
    assert!(
        drain(&mut literal).is_empty(),
        "no topic is spelled `events.*.new`"
    );
    assert_eq!(drain(&mut exact), [network(2)]);
    assert_eq!(drain(&mut narrow), [process(1)]);
    assert!(drain(&mut elsewhere).is_empty());
    let e = bus
        .subscribe(sub_2025_10("bad", Some(&["events..x"]), true))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("events..x"), "{e}");
}
