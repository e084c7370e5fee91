// The tokio facade's scenarios, included once per version of the tokio bus (see
// `legacy_tokio.rs`): the including module brings that version's types and `sub`.

async fn started(config: EventBusConfig) -> LocalEventBus {
    let mut bus = LocalEventBus::new(config).await.unwrap();
    bus.start().await.unwrap();
    bus
}

async fn recv(rx: &mut Receiver<BusEvent>) -> BusEvent {
    timeout(LIMIT, rx.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn publishing_before_start_is_an_error() {
    let mut bus = LocalEventBus::new(EventBusConfig::default()).await.unwrap();
    let err = bus.publish(process(1), "c".into()).await.unwrap_err();
    assert!(err.to_string().contains("not started"), "{err}");
    bus.start().await.unwrap();
    bus.publish(process(1), "c".into()).await.unwrap();
}

#[tokio::test]
async fn every_kind_arrives_with_every_field() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut rx = bus.subscribe(sub("all")).await.unwrap();
    for e in every_kind() {
        bus.publish(e, "c".into()).await.unwrap();
    }
    for e in every_kind() {
        let got = recv(&mut rx).await;
        assert_eq!(got.event, e);
        assert_eq!(got.correlation_id, "c");
        assert!(got.routing_metadata.is_empty());
    }
    assert!(rx.try_recv().is_err());
}

/// Every subscriber but the last gets a copy, the last the published event's own fields:
/// both must read the same.
#[tokio::test]
async fn every_subscriber_gets_the_same_event() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut first = bus.subscribe(sub("first")).await.unwrap();
    let mut last = bus.subscribe(sub("last")).await.unwrap();
    for e in every_kind() {
        bus.publish(e, "c".into()).await.unwrap();
    }
    for e in every_kind() {
        let (a, b) = (recv(&mut first).await, recv(&mut last).await);
        assert_eq!(a.event, e);
        assert_eq!(a, b);
    }
}

#[tokio::test]
// `..Default::default()` fills the 2025-10 fields; the 2025-09 filter has none left.
#[allow(clippy::needless_update)]
async fn pid_metadata_and_priority_filters() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut s = sub("f");
    s.event_filter = Some(EventFilter {
        event_types: vec![],
        pids: vec![14, 99],
        min_priority: Some(TriggerPriority::High),
        metadata_filters: HashMap::from([("rule".into(), "r1".into())]),
        ..Default::default()
    });
    let mut rx = bus.subscribe(s).await.unwrap();
    bus.publish(trigger(14, TriggerPriority::Low), String::new())
        .await
        .unwrap(); // priority
    bus.publish(trigger(15, TriggerPriority::High), String::new())
        .await
        .unwrap(); // pid
    bus.publish(process(14), String::new()).await.unwrap(); // no metadata
    bus.publish(trigger(14, TriggerPriority::Critical), String::new())
        .await
        .unwrap(); // passes
    assert_eq!(
        recv(&mut rx).await.event,
        trigger(14, TriggerPriority::Critical)
    );
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn correlation_ids_and_patterns() {
    // Ids alone (the legacy rule), patterns alone (busbridge's addition), both: each must
    // hold; patterns narrow what passes, never widen it.
    let cases: [(&[&str], &[&str], &[&str]); 3] = [
        (&["exact", "scan-x"], &[], &["exact", "scan-x"]),
        (&[], &["^scan-[0-9]+$"], &["scan-12", "scan-7"]),
        (
            &["exact", "scan-12", "scan-x"],
            &["^scan-[0-9]+$"],
            &["scan-12"],
        ),
    ];
    for (ids, patterns, want) in cases {
        let mut bus = started(EventBusConfig::default()).await;
        let mut s = sub("c");
        s.correlation_filter = Some(CorrelationFilter {
            correlation_ids: ids.iter().map(|s| s.to_string()).collect(),
            correlation_patterns: patterns.iter().map(|s| s.to_string()).collect(),
        });
        let mut rx = bus.subscribe(s).await.unwrap();
        for (i, c) in ["exact", "scan-12", "scan-x", "exactly", "scan-7"]
            .iter()
            .enumerate()
        {
            bus.publish(process(i as u32), (*c).into()).await.unwrap();
        }
        bus.publish(process(99), "end".into()).await.unwrap();
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e.correlation_id);
        }
        assert_eq!(got, want, "ids {ids:?} patterns {patterns:?}");
    }
}

#[tokio::test]
async fn bad_correlation_pattern_is_a_clear_error() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut s = sub("bad");
    s.correlation_filter = Some(CorrelationFilter {
        correlation_ids: vec![],
        correlation_patterns: vec!["(unclosed".into()],
    });
    let err = bus.subscribe(s).await.unwrap_err();
    assert!(err.to_string().contains("(unclosed"), "{err}");
    assert_eq!(bus.statistics().await.active_subscribers, 0);
}

#[tokio::test]
async fn unsubscribe_and_unknown_id() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut rx = bus.subscribe(sub("a")).await.unwrap();
    bus.unsubscribe("a").await.unwrap();
    assert!(timeout(LIMIT, rx.recv()).await.unwrap().is_none());
    let err = bus.unsubscribe("a").await.unwrap_err();
    assert!(err.to_string().contains("unknown subscriber"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn full_queue_waits_delivery_timeout_then_drops_and_counts() {
    let mut bus = started(EventBusConfig {
        max_buffer_size: 2,
        delivery_timeout: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let mut rx = bus.subscribe(sub("slow")).await.unwrap();
    for i in 0..3 {
        bus.publish(process(i), String::new()).await.unwrap();
    }
    let stats = bus.statistics().await;
    assert_eq!((stats.events_delivered, stats.events_dropped), (2, 1));
    assert_eq!(recv(&mut rx).await.event, process(0));
    assert_eq!(recv(&mut rx).await.event, process(1));
}

#[tokio::test]
async fn replay_resends_persisted_events_marked_as_replay() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut live = bus.subscribe(sub("live")).await.unwrap();
    bus.publish(process(1), "case-1".into()).await.unwrap();
    bus.publish(process(2), "case-2".into()).await.unwrap();
    bus.publish(network(3), "case-1".into()).await.unwrap();
    for _ in 0..3 {
        recv(&mut live).await;
    }
    let mut late = bus.subscribe(sub("late")).await.unwrap();
    bus.replay_events("case-1", "late").await.unwrap();
    for e in [process(1), network(3)] {
        let got = recv(&mut late).await;
        assert_eq!(got.event, e);
        assert_eq!(
            got.routing_metadata.get("replay").map(String::as_str),
            Some("true")
        );
    }
    assert!(late.try_recv().is_err());
    assert!(
        live.try_recv().is_err(),
        "replay goes to one subscriber only"
    );
    assert_eq!(bus.statistics().await.events_persisted, 3);
    assert!(bus.replay_events("case-1", "nobody").await.is_err());
}

#[tokio::test]
async fn shutdown_closes_receivers() {
    let mut bus = started(EventBusConfig::default()).await;
    let mut rx = bus.subscribe(sub("a")).await.unwrap();
    bus.shutdown().await.unwrap();
    assert!(timeout(LIMIT, rx.recv()).await.unwrap().is_none());
    assert!(bus.publish(process(1), String::new()).await.is_err());
}
