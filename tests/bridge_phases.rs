//! Phases switched on a running bus: nothing lost, nothing duplicated, order kept, parity
//! clean; the phase-1 shadow path and phase-2 remote delivery.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bridge::BridgeBuilder;
use busbridge::legacy::crossbeam::*;
use busbridge::phase::Phase;
use busbridge::scenario::sample_event;
use busbridge::{AsyncClient, Broker, QoS};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

fn embedded() -> Broker {
    let mut b = Broker::new();
    b.set_name(uuid::Uuid::new_v4().to_string());
    b
}

fn sub(id: &str, caps: SourceCaps) -> EventSubscription {
    EventSubscription {
        subscriber_id: id.into(),
        capabilities: caps,
        event_filter: None,
        correlation_filter: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_phases_during_a_100k_stream_loses_and_duplicates_nothing() {
    const N: usize = 100_000;
    let bridged = BridgeBuilder::new()
        .phase(Phase::Shadow)
        .embedded(embedded())
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    let all = bus.subscribe(sub("all", SourceCaps::all())).await.unwrap();
    let procs = bus
        .subscribe(sub("procs", SourceCaps::PROCESS))
        .await
        .unwrap();
    let cycle = [
        Phase::Shadow,
        Phase::Topics,
        Phase::Rpc,
        Phase::Topics,
        Phase::Shadow,
        Phase::Legacy,
        Phase::Shadow,
        Phase::Topics,
        Phase::BusrtOnly,
        Phase::Topics,
    ];
    for i in 0..N {
        if i % 5_000 == 0 {
            bridged.set_phase(cycle[(i / 5_000) % cycle.len()]).unwrap();
        }
        bus.publish(sample_event("stream", i % 1000), i.to_string())
            .await
            .unwrap();
    }
    if tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .is_err()
    {
        panic!(
            "echoes owed: {} stats {:?}",
            bridged.link().in_flight(),
            bridged.core().stats().snapshot()
        );
    }
    let got: Vec<usize> = all
        .try_iter()
        .map(|e| e.correlation_id.parse().unwrap())
        .collect();
    assert_eq!(got.len(), N, "every event exactly once");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in publish order");
    let got_procs: Vec<usize> = procs
        .try_iter()
        .map(|e| e.correlation_id.parse().unwrap())
        .collect();
    let want_procs: Vec<usize> = (0..N).filter(|i| (i % 1000) % 5 == 0).collect();
    assert_eq!(got_procs, want_procs);
    let report = bridged.core().parity().finish();
    assert!(
        report.is_clean(),
        "{:?}",
        &report.mismatches[..report.mismatches.len().min(5)]
    );
    assert!(report.compared > 0);
    let stats = bridged.core().stats().snapshot();
    assert_eq!(stats.bridge_duplicates, 0);
    assert_eq!(
        stats.bridge_gaps, 0,
        "only events sent to busrt are numbered"
    );
    assert_eq!(stats.events_dropped(), 0);
    bridged.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_one_mirrors_and_compares_but_keeps_remote_events_in_the_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let mut broker = embedded();
    broker.spawn_ipc_server(&socket, 10).unwrap();
    let bridged = BridgeBuilder::new()
        .phase(Phase::Shadow)
        .embedded(broker)
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(Default::default());
    let rx = bus.subscribe(sub("all", SourceCaps::all())).await.unwrap();
    // A process on the busrt side sees what phase 1 mirrors.
    let mut outside = AsyncClient::connect(&format!("ipc://{}", socket.display()))
        .await
        .unwrap();
    outside.subscribe("events.#", QoS::Processed).await.unwrap();
    outside.subscribe("tasks.#", QoS::Processed).await.unwrap();
    for i in 0..10 {
        bus.publish(sample_event("local", i), String::new())
            .await
            .unwrap();
    }
    assert_eq!(
        rx.try_iter().count(),
        10,
        "the legacy router delivered at once"
    );
    for _ in 0..10 {
        let m = tokio::time::timeout(LIMIT, outside.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(busbridge::codec::Codec::default()
            .decode(m.payload())
            .is_ok());
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .unwrap();
    let report = bridged.core().parity().finish();
    assert!(report.is_clean() && report.compared == 10, "{report:?}");

    // A remote event in phase 1 goes to the shadow path only; in phase 2 it is delivered.
    let mut remote = busbridge::scenario::sample_envelope("remote", 0, "remote");
    remote.origin = "remote-origin".into();
    remote.seq = 1;
    let bytes = busbridge::codec::Codec::default().encode(&remote).unwrap();
    outside
        .publish("events.process.new", bytes.clone(), QoS::Processed)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while bridged.link().shadow_remote() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    assert!(rx.try_recv().is_err());
    bridged.set_phase(Phase::Topics).unwrap();
    remote.seq = 2;
    let bytes = busbridge::codec::Codec::default().encode(&remote).unwrap();
    outside
        .publish("events.process.new", bytes, QoS::Processed)
        .await
        .unwrap();
    let got = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(
        (got.event_id.as_str(), got.publisher_id.as_str()),
        ("remote-0", "remote")
    );
    bridged.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_frames_are_counted_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let mut broker = embedded();
    broker.spawn_ipc_server(&socket, 10).unwrap();
    let bridged = BridgeBuilder::new()
        .phase(Phase::Topics)
        .embedded(broker)
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(Default::default());
    let rx = bus.subscribe(sub("all", SourceCaps::all())).await.unwrap();
    let outside = AsyncClient::connect(&format!("ipc://{}", socket.display()))
        .await
        .unwrap();
    outside
        .publish(
            "events.process.new",
            b"\x00\xffgarbage".to_vec(),
            QoS::Processed,
        )
        .await
        .unwrap();
    // Our own origin, sent by someone else: a loop, suppressed.
    let mut forged = busbridge::scenario::sample_envelope("x", 0, "x");
    forged.origin = bridged.link().origin().to_owned();
    forged.seq = 1_000_000;
    outside
        .publish(
            "events.process.new",
            busbridge::codec::Codec::default().encode(&forged).unwrap(),
            QoS::Processed,
        )
        .await
        .unwrap();
    // Too many hops.
    let mut looped = busbridge::scenario::sample_envelope("y", 0, "y");
    looped.origin = "elsewhere".into();
    looped.seq = 1;
    looped.hops = 99;
    outside
        .publish(
            "events.process.new",
            busbridge::codec::Codec::default().encode(&looped).unwrap(),
            QoS::Processed,
        )
        .await
        .unwrap();
    // Then a good one, which must still arrive.
    bus.publish(sample_event("ok", 0), "after".into())
        .await
        .unwrap();
    let got = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(got.correlation_id, "after");
    let s = bridged.core().stats().snapshot();
    assert_eq!(
        (
            s.bridge_decode_errors,
            s.bridge_echo_suppressed,
            s.bridge_hop_limited
        ),
        (1, 1, 1)
    );
    assert!(rx.try_recv().is_err());
    bridged.shutdown().await;
}

#[tokio::test]
async fn legacy_only_bus_refuses_bridged_phases() {
    let bus = HighPerformanceEventBusImpl::new(Default::default())
        .await
        .unwrap();
    let err = bus.core().set_phase(Phase::Topics).unwrap_err();
    assert!(err.to_string().contains("needs a bridged bus"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_bridge_keeps_every_event_once_in_order() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let mut broker = embedded();
    broker.spawn_ipc_server(&socket, 10).unwrap();
    broker.spawn().await.unwrap();
    let bridged = BridgeBuilder::new()
        .phase(Phase::Topics)
        .connect(format!("ipc://{}", socket.display()))
        .send_options(busbridge::bridge::SendOptions {
            batch_max: 500,
            // One acknowledgement at a time, so events queue up behind it and share frames.
            window: 1,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    let all = bus.subscribe(sub("all", SourceCaps::all())).await.unwrap();
    // One kind, so one topic: a frame holds events of one topic only.
    for i in 0..N {
        bus.publish(common::process(i as u32), i.to_string())
            .await
            .unwrap();
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .expect("every echo back");
    assert!(
        bridged.core().stats().snapshot().bridge_batches > 0,
        "events shared frames"
    );
    let got: Vec<usize> = all
        .try_iter()
        .map(|e| e.correlation_id.parse().unwrap())
        .collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let stats = bridged.core().stats().snapshot();
    assert_eq!((stats.bridge_duplicates, stats.bridge_gaps), (0, 0));
    bridged.shutdown().await;
}

/// Phase 1 on a broker that silently drops one kind of event (its access rules refuse the
/// bridge's network events, published unacknowledged): live parity reports each dropped event
/// as missing within the window, while the bus runs, without `finish()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_parity_reports_events_busrt_silently_dropped() {
    use busbridge::config::AccessRule;
    use busbridge::parity::{MismatchKind, ParityConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut config = busbridge::config::Config::default();
    config.transport.socket_path = dir.path().join("b.sock");
    config.access.insert(
        "lossy-agent".into(),
        AccessRule {
            publish: vec![
                "events.process.#".into(),
                "events.performance.#".into(),
                "control.#".into(),
            ],
            subscribe: vec!["#".into()],
        },
    );
    // `busbridge stats` attaches from outside and reads the same verdict.
    config.access.insert(
        "busbridge-stats".into(),
        AccessRule {
            publish: vec!["control.bridge.status".into()],
            subscribe: vec!["control.bridge.status.reply".into()],
        },
    );
    let mut broker = busbridge::Broker::from_config(&config).unwrap();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn().await.unwrap();
    let window = Duration::from_millis(300);
    // Over the socket: the access rules apply to socket clients.
    let bridged = BridgeBuilder::new()
        .phase(Phase::Shadow)
        .connect(format!("ipc://{}", config.transport.socket_path.display()))
        .name("lossy-agent")
        .qos(busbridge::QoS::Realtime)
        .parity(ParityConfig {
            missing_after: Some(window),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    let rx = bus.subscribe(common::sub_all("all")).await.unwrap();
    let (kept, dropped) = (20, 5);
    for i in 0..kept {
        bus.publish(common::process(i), "c".into()).await.unwrap();
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .unwrap();
    let clean = stats_cli(&config.transport.socket_path).await;
    assert_eq!(clean.status.code(), Some(0), "nothing lost yet");
    for i in 0..dropped {
        bus.publish(common::network(i), "c".into()).await.unwrap();
    }
    // Phase 1: the legacy router delivered every event at once.
    for _ in 0..kept + dropped {
        rx.recv_timeout(LIMIT).unwrap();
    }
    let parity = bridged.core().parity().clone();
    let report = tokio::time::timeout(LIMIT, async {
        loop {
            let r = parity.report_so_far();
            if r.mismatch_count >= u64::from(dropped) && r.compared >= u64::from(kept) {
                return r;
            }
            tokio::time::sleep(window / 10).await; // polling a live counter; bounded by LIMIT
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the dropped events are reported while the bus runs: {:?} {:?}",
            parity.report_so_far(),
            bridged.core().snapshot()
        )
    });
    assert_eq!(report.mismatch_count, u64::from(dropped), "{report:?}");
    assert_eq!(report.matched, u64::from(kept));
    assert!(report
        .mismatches
        .iter()
        .all(|m| m.kind == MismatchKind::Missing && m.event_type == "network"));
    assert_eq!(parity.expired(), u64::from(dropped));
    assert_eq!(parity.pending(), 0);

    let out = stats_cli(&config.transport.socket_path).await;
    assert_eq!(out.status.code(), Some(1), "--check fails on the loss");
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = &answers["buses"][0];
    // The broker answers too, with its own counters.
    assert!(answers["brokers"][0]["stats"]["connections_active"].as_u64() >= Some(1));
    assert_eq!(me["name"], "lossy-agent");
    assert_eq!(me["phase"], 1);
    assert_eq!(me["parity"]["mismatch_count"], u64::from(dropped));
    assert_eq!(me["parity_expired"], u64::from(dropped));
    let missing = me["parity"]["mismatches"].as_array().unwrap();
    assert_eq!(missing.len(), dropped as usize);
    assert!(missing.iter().all(|m| m["kind"] == "missing"
        && m["event_type"] == "network"
        && m["subscriber"] == "all"));
    bridged.shutdown().await;
}

/// `busbridge stats --check` on a broker's socket, as the access rule `busbridge-stats`.
async fn stats_cli(socket: &std::path::Path) -> std::process::Output {
    let uri = format!("ipc://{}", socket.display());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::procs::BIN)
            .args(["stats", "--name", "busbridge-stats", "--expect", "1"])
            .args(["--json", "--check", "--wait", "10s", "--connect", &uri])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `bridge_received` counts an event once it was delivered: whoever waits for the counter
/// (`busbridge parity` does) finds the events in its subscribers' queues, however many frames
/// the receiving bridge takes in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_counter_never_runs_ahead_of_delivery() {
    const N: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let mut broker = embedded();
    broker.spawn_ipc_server(&socket, 10).unwrap();
    broker.spawn().await.unwrap();
    let bridge = || {
        BridgeBuilder::new()
            .phase(Phase::Topics)
            .connect(format!("ipc://{}", socket.display()))
            .build()
    };
    let receiving = bridge().await.unwrap();
    let sending = bridge().await.unwrap();
    let bus = receiving.crossbeam(HighPerformanceEventBusConfig::default());
    let all = bus.subscribe(sub("all", SourceCaps::all())).await.unwrap();
    let publisher = sending.crossbeam(HighPerformanceEventBusConfig::default());
    let publish = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish(common::process(i as u32), i.to_string())
                .await
                .unwrap();
        }
        publisher
    });
    let stats = receiving.core().stats().clone();
    let mut delivered = 0u64;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while delivered < N {
        let counted = stats.snapshot().bridge_received;
        delivered += all.try_iter().count() as u64;
        assert!(
            delivered >= counted,
            "counted {counted} received, {delivered} delivered"
        );
        assert!(tokio::time::Instant::now() < deadline, "{delivered} of {N}");
        tokio::task::yield_now().await;
    }
    let _publisher = publish.await.unwrap();
    assert_eq!(stats.snapshot().bridge_received, N);
}
