// The scenarios every crossbeam facade version shares, included by `scenarios.rs` (2025-09)
// and `scenarios_2026_04.rs` (final), each of which brings its version's types, `sub`, and
// the back-pressure scenarios its version has.

/// Upper bound for any wait; never a synchronisation sleep.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A bus implementation under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A fresh bus with this configuration.
    async fn bus(&self, config: HighPerformanceEventBusConfig) -> Box<dyn HighPerformanceEventBus>;
    /// Waits until everything published so far has reached local subscribers.
    async fn settle(&self, _bus: &dyn HighPerformanceEventBus) {}
}

pub fn all_caps() -> SourceCaps {
    SourceCaps::all()
}

/// Receives exactly `n` events (upper-bounded wait).
pub fn recv_n(rx: &Receiver<BusEvent>, n: usize) -> Vec<BusEvent> {
    let deadline = Instant::now() + LIMIT;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(e) => out.push(e),
            Err(e) => panic!("got {} of {n} events: {e}", out.len()),
        }
    }
    out
}

/// Asserts nothing more is queued, after the backend settled.
pub async fn assert_quiet(
    b: &dyn Backend,
    bus: &dyn HighPerformanceEventBus,
    rx: &Receiver<BusEvent>,
) {
    b.settle(bus).await;
    let extra: Vec<_> = rx.try_iter().collect();
    assert!(extra.is_empty(), "unexpected extra events: {extra:?}");
}

fn events(rx: &[BusEvent]) -> Vec<CollectionEvent> {
    rx.iter().map(|e| e.event.clone()).collect()
}

pub async fn every_kind_arrives_with_every_field(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let rx = bus.subscribe(sub("all", all_caps())).await.unwrap();
    for (i, e) in every_kind().into_iter().enumerate() {
        bus.publish(e, format!("corr-{i}")).await.unwrap();
    }
    let got = recv_n(&rx, 5);
    assert_eq!(events(&got), every_kind());
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.correlation_id, format!("corr-{i}"));
        assert_eq!(
            e.priority,
            busbridge::legacy::crossbeam::PRIORITY,
            "5, as the legacy bus"
        );
        assert!(!e.event_id.is_empty());
    }
    assert_quiet(b, bus.as_ref(), &rx).await;
}

pub async fn capability_routing(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let caps = [
        SourceCaps::PROCESS,
        SourceCaps::NETWORK,
        SourceCaps::FILESYSTEM,
        SourceCaps::PERFORMANCE,
        SourceCaps::REALTIME,
    ];
    let mut rxs = Vec::new();
    for (i, c) in caps.iter().enumerate() {
        rxs.push(bus.subscribe(sub(&format!("s{i}"), *c)).await.unwrap());
    }
    let none = bus
        .subscribe(sub("none", SourceCaps::KERNEL_LEVEL))
        .await
        .unwrap();
    let kinds = every_kind();
    for e in kinds.iter().chain(kinds.iter()) {
        bus.publish(e.clone(), String::new()).await.unwrap();
    }
    for (rx, e) in rxs.iter().zip(kinds.iter()) {
        assert_eq!(events(&recv_n(rx, 2)), vec![e.clone(), e.clone()]);
    }
    for rx in rxs.iter().chain(std::iter::once(&none)) {
        assert_quiet(b, bus.as_ref(), rx).await;
    }
}

pub async fn event_type_filter(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let mut s = sub("net-only", all_caps());
    s.event_filter = Some(EventFilter {
        event_types: vec!["network".into(), "filesystem".into()],
        ..Default::default()
    });
    let rx = bus.subscribe(s).await.unwrap();
    for e in every_kind() {
        bus.publish(e, String::new()).await.unwrap();
    }
    assert_eq!(events(&recv_n(&rx, 2)), vec![network(11), filesystem(12)]);
    assert_quiet(b, bus.as_ref(), &rx).await;
}

pub async fn min_priority_filter(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let mut s = sub("urgent", SourceCaps::REALTIME | SourceCaps::PROCESS);
    s.event_filter = Some(EventFilter {
        min_priority: Some(TriggerPriority::High as u8),
        ..Default::default()
    });
    let rx = bus.subscribe(s).await.unwrap();
    for p in [
        TriggerPriority::Low,
        TriggerPriority::Critical,
        TriggerPriority::Normal,
        TriggerPriority::High,
    ] {
        bus.publish(trigger(1, p), String::new()).await.unwrap();
    }
    // Non-trigger events are not subject to min_priority.
    bus.publish(process(2), String::new()).await.unwrap();
    assert_eq!(
        events(&recv_n(&rx, 3)),
        vec![
            trigger(1, TriggerPriority::Critical),
            trigger(1, TriggerPriority::High),
            process(2)
        ]
    );
    assert_quiet(b, bus.as_ref(), &rx).await;
}

pub async fn source_filter(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let probe = bus.subscribe(sub("probe", all_caps())).await.unwrap();
    bus.publish(process(1), String::new()).await.unwrap();
    let publisher = recv_n(&probe, 1)[0].publisher_id.clone();
    let mut mine = sub("mine", all_caps());
    mine.event_filter = Some(EventFilter {
        source_filter: Some(publisher),
        ..Default::default()
    });
    let mut other = sub("other", all_caps());
    other.event_filter = Some(EventFilter {
        source_filter: Some("someone-else".into()),
        ..Default::default()
    });
    let (mine, other) = (
        bus.subscribe(mine).await.unwrap(),
        bus.subscribe(other).await.unwrap(),
    );
    bus.publish(process(2), String::new()).await.unwrap();
    assert_eq!(events(&recv_n(&mine, 1)), vec![process(2)]);
    assert_quiet(b, bus.as_ref(), &other).await;
}

pub async fn correlation_filter(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let mut s = sub("corr", all_caps());
    s.correlation_filter = Some("wanted".into());
    let rx = bus.subscribe(s).await.unwrap();
    for (i, c) in ["x", "wanted", "wanted-not", "wanted"].iter().enumerate() {
        bus.publish(process(i as u32), (*c).into()).await.unwrap();
    }
    let got = recv_n(&rx, 2);
    assert_eq!(events(&got), vec![process(1), process(3)]);
    assert!(got.iter().all(|e| e.correlation_id == "wanted"));
    assert_quiet(b, bus.as_ref(), &rx).await;
}

pub async fn several_subscribers_in_order(b: &dyn Backend) {
    let bus = b.bus(Default::default()).await;
    let mut rxs = Vec::new();
    for i in 0..3 {
        rxs.push(
            bus.subscribe(sub(&format!("s{i}"), all_caps()))
                .await
                .unwrap(),
        );
    }
    // Published before anyone reads: within every version's default queue.
    const N: u32 = BURST;
    for i in 0..N {
        bus.publish(process(i), String::new()).await.unwrap();
    }
    for rx in &rxs {
        let pids: Vec<u32> = recv_n(rx, N as usize)
            .iter()
            .map(|e| e.event.pid().unwrap())
            .collect();
        assert_eq!(pids, (0..N).collect::<Vec<_>>());
    }
    let stats = bus.get_statistics().await;
    assert!(stats.events_published >= u64::from(N));
    assert!(stats.events_delivered >= u64::from(3 * N));
    assert_eq!(stats.events_dropped, 0);
    assert_eq!(stats.active_subscribers, 3);
}

pub async fn blocking_waits_and_loses_nothing(b: &dyn Backend) {
    let bus: std::sync::Arc<dyn HighPerformanceEventBus> =
        b.bus(small(BackpressureStrategy::Blocking)).await.into();
    let rx = bus.subscribe(sub("slow", all_caps())).await.unwrap();
    const N: u32 = 200;
    let reader = std::thread::spawn(move || {
        (0..N)
            .map(|_| rx.recv_timeout(LIMIT).unwrap().event.pid().unwrap())
            .collect::<Vec<_>>()
    });
    for i in 0..N {
        bus.publish(process(i), String::new()).await.unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..N).collect::<Vec<_>>());
    assert_eq!(bus.get_statistics().await.events_dropped, 0);
}

pub async fn dropped_receiver_is_removed_and_counted(b: &dyn Backend) {
    let bus = b.bus(small(BackpressureStrategy::DropNewest)).await;
    let keep = bus.subscribe(sub("keep", all_caps())).await.unwrap();
    let gone = bus.subscribe(sub("gone", all_caps())).await.unwrap();
    drop(gone);
    bus.publish(process(1), String::new()).await.unwrap();
    assert_eq!(events(&recv_n(&keep, 1)), vec![process(1)]);
    b.settle(bus.as_ref()).await;
    let stats = bus.get_statistics().await;
    assert_eq!(stats.active_subscribers, 1);
    assert!(stats.events_dropped >= 1);
}

pub async fn max_subscribers_is_enforced(b: &dyn Backend) {
    let bus = b
        .bus(HighPerformanceEventBusConfig {
            max_subscribers: 2,
            ..Default::default()
        })
        .await;
    let _a = bus.subscribe(sub("a", all_caps())).await.unwrap();
    let _b = bus.subscribe(sub("b", all_caps())).await.unwrap();
    let err = bus.subscribe(sub("c", all_caps())).await.unwrap_err();
    assert!(err.to_string().contains("subscriber limit"), "{err}");
}

pub async fn shutdown_disconnects_and_refuses(b: &dyn Backend) {
    let mut bus = b.bus(Default::default()).await;
    let rx = bus.subscribe(sub("s", all_caps())).await.unwrap();
    bus.publish(process(1), String::new()).await.unwrap();
    assert_eq!(events(&recv_n(&rx, 1)), vec![process(1)]);
    bus.shutdown().await.unwrap();
    assert!(bus.publish(process(2), String::new()).await.is_err());
    assert!(
        rx.recv_timeout(LIMIT).is_err(),
        "receiver disconnects after shutdown"
    );
}

