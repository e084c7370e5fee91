//! Every `[bus]` setting of the configuration acts on a bus bridged from it.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bridge::Bridged;
use busbridge::codec::{Codec, Envelope};
use busbridge::config::Config;
use busbridge::legacy::crossbeam::{
    BackpressureStrategy, HighPerformanceEventBus, HighPerformanceEventBusConfig,
};
use busbridge::legacy::tokio::{EventBus as _, EventBusConfig};
use busbridge::{AsyncClient, QoS};
use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

/// A phase-2 bus with an embedded broker on its own socket, from `[bus]` settings.
async fn bus_with(dir: &tempfile::TempDir, bus_toml: &str) -> Bridged {
    let socket = dir.path().join("b.sock");
    let config = Config::from_toml_str(&format!(
        "phase = 2\n[transport]\nsocket_path = {socket:?}\n[bus]\n{bus_toml}"
    ))
    .unwrap();
    let mut builder = busbridge::bridge::BridgeBuilder::from_config(&config).unwrap();
    builder = builder.name(format!("settings-{}", uuid::Uuid::new_v4().simple()));
    builder.build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_capacity_and_backpressure_apply_to_every_facade() {
    let dir = tempfile::tempdir().unwrap();
    let bridged = bus_with(
        &dir,
        "channel_capacity = 2\nbackpressure_strategy = \"DropNewest\"",
    )
    .await;
    // The code asks for a huge blocking queue; the bus's configuration wins.
    let crossbeam = bridged.crossbeam(HighPerformanceEventBusConfig {
        channel_capacity: 1_000_000,
        backpressure_strategy: BackpressureStrategy::Blocking,
        ..Default::default()
    });
    let rx = crossbeam.subscribe(sub_all("c")).await.unwrap();
    let mut tokio = bridged.tokio(EventBusConfig {
        max_buffer_size: 1_000,
        ..Default::default()
    });
    let mut trx = tokio
        .subscribe(busbridge::legacy::tokio::EventSubscription {
            subscriber_id: "t".into(),
            capabilities: busbridge::event::SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
        })
        .await
        .unwrap();
    for i in 0..5 {
        crossbeam.publish(process(i), "c".into()).await.unwrap();
    }
    tokio::time::timeout(LIMIT, bridged.link().settled())
        .await
        .unwrap();
    assert_eq!(rx.len(), 2, "crossbeam queue of 2");
    let mut got = 0;
    while trx.try_recv().is_ok() {
        got += 1;
    }
    assert_eq!(got, 2, "tokio queue of 2");
    let s = bridged.core().stats().snapshot();
    assert_eq!(s.dropped_full, 6, "3 dropped per subscriber, none waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscribers_limits_the_whole_bus() {
    let dir = tempfile::tempdir().unwrap();
    let bridged = bus_with(&dir, "max_subscribers = 2").await;
    let a = bridged.crossbeam(Default::default());
    let b = bridged.crossbeam(Default::default());
    let _r1 = a.subscribe(sub_all("1")).await.unwrap();
    let _r2 = b.subscribe(sub_all("2")).await.unwrap();
    let err = a.subscribe(sub_all("3")).await.unwrap_err();
    assert!(err.to_string().contains("limit of 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_limit_drops_events_that_travelled_too_far() {
    let dir = tempfile::tempdir().unwrap();
    let bridged = bus_with(&dir, "hop_limit = 1").await;
    let bus = bridged.crossbeam(Default::default());
    let rx = bus.subscribe(sub_all("all")).await.unwrap();
    let client = AsyncClient::connect(&format!("ipc://{}", dir.path().join("b.sock").display()))
        .await
        .unwrap();
    let codec = Codec::default();
    for (i, hops) in [(1u64, 2u32), (2, 1)] {
        let mut env = Envelope::new(process(i as u32), "c", "elsewhere");
        env.origin = "elsewhere#1".into();
        env.seq = i;
        env.hops = hops;
        client
            .publish(
                "events.process.new",
                codec.encode(&env).unwrap(),
                QoS::Processed,
            )
            .await
            .unwrap();
    }
    let got = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(got.event, process(2), "one hop is within the limit");
    assert_eq!(bridged.core().stats().snapshot().bridge_hop_limited, 1);
}

#[test]
fn unknown_and_invalid_settings_are_refused_by_name() {
    for (toml, key) in [
        ("[bus]\nchannel_capacity = 0", "bus.channel_capacity"),
        ("[bus]\nhop_limit = 0", "bus.hop_limit"),
        ("[bus]\nparity_window = \"0s\"", "bus.parity_window"),
        ("[bus]\nno_such_key = 1", "no_such_key"),
    ] {
        let e = Config::from_toml_str(toml).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
    let c = Config::from_toml_str("[bus]\nhop_limit = 3\nparity_window = \"1s\"").unwrap();
    assert_eq!(
        (c.bus.hop_limit, c.bus.parity_window),
        (3, Duration::from_secs(1))
    );
}

/// A second bus on the same broker, from `[bus]` settings, as a durable subscriber that
/// resumes from the start of `origin`'s stream (so it asks for all of it).
async fn durable_subscriber(dir: &tempfile::TempDir, bus_toml: &str, origin: &str) -> Bridged {
    let socket = dir.path().join("b.sock");
    let config = Config::from_toml_str(&format!(
        "phase = 2\n[client]\nconnect = \"ipc://{}\"\n[bus]\n{bus_toml}",
        socket.display()
    ))
    .unwrap();
    busbridge::bridge::BridgeBuilder::from_config(&config)
        .unwrap()
        .name(format!("durable-{}", uuid::Uuid::new_v4().simple()))
        .resume({
            let mut at_start = busbridge::durable::Positions::new();
            let mut env = Envelope::new(process(0), "c", "p");
            env.origin = origin.to_owned();
            env.seq = 0;
            at_start.advance(&env);
            at_start
        })
        .build()
        .await
        .unwrap()
}

/// `replay_buffer` bounds what a publisher can resend; `gap_wait` is how long the receiver
/// waits for what cannot come before delivering the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_buffer_bounds_resends_and_gap_wait_gives_up() {
    for (replay, want) in [(5u64, 16..=20u64), (100_000, 1..=20)] {
        let dir = tempfile::tempdir().unwrap();
        let publisher = bus_with(&dir, &format!("replay_buffer = {replay}")).await;
        let bus = publisher.crossbeam(Default::default());
        for i in 0..20 {
            bus.publish(process(i), "c".into()).await.unwrap();
        }
        tokio::time::timeout(LIMIT, publisher.link().flushed())
            .await
            .unwrap();
        let subscriber =
            durable_subscriber(&dir, "gap_wait = \"200ms\"", publisher.link().origin()).await;
        let rx = subscriber
            .event_bus(Default::default())
            .subscribe_envelopes(busbridge::EventSubscription {
                subscriber_id: "d".into(),
                capabilities: busbridge::event::SourceCaps::all(),
                event_filter: None,
                correlation_filter: None,
            })
            .await
            .unwrap();
        for seq in want.clone() {
            let env = tokio::time::timeout(LIMIT, rx.recv_async())
                .await
                .unwrap_or_else(|_| panic!("replay_buffer {replay}: no event {seq}"))
                .unwrap();
            assert_eq!(env.seq, seq, "replay_buffer {replay}");
        }
        let lost = 20 - (want.end() - want.start() + 1);
        let stats = subscriber.core().stats();
        tokio::time::timeout(LIMIT, async {
            while stats.snapshot().bridge_gaps_lost < lost {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            stats.snapshot().bridge_gaps_lost,
            lost,
            "replay_buffer {replay}"
        );
        subscriber.shutdown().await;
        publisher.shutdown().await;
    }
}

/// `batch_max` is the most events per busrt frame: 1 sends one legacy record a frame; above,
/// frames carry up to that many (the sender batches what waits while a frame is in flight,
/// which `publish_window = 1` makes sure of).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_max_sets_events_per_frame() {
    for batch_max in [1usize, 4] {
        let dir = tempfile::tempdir().unwrap();
        let bridged = bus_with(
            &dir,
            &format!("batch_max = {batch_max}\npublish_window = 1"),
        )
        .await;
        let mut raw =
            AsyncClient::connect(&format!("ipc://{}", dir.path().join("b.sock").display()))
                .await
                .unwrap();
        raw.subscribe("events.#", QoS::Processed).await.unwrap();
        let bus = bridged.crossbeam(Default::default());
        const N: usize = 400;
        for i in 0..N {
            bus.publish(process(i as u32), "c".into()).await.unwrap();
        }
        let codec = Codec::default();
        let (mut events, mut most) = (0, 0);
        while events < N {
            let m = tokio::time::timeout(LIMIT, raw.recv())
                .await
                .unwrap()
                .unwrap();
            let n = codec.decode_frame(m.payload()).unwrap().len();
            most = most.max(n);
            events += n;
        }
        assert_eq!(events, N);
        if batch_max == 1 {
            assert_eq!(most, 1, "one event a frame");
        } else {
            assert!(most > 1 && most <= batch_max, "at most {batch_max}: {most}");
        }
        bridged.shutdown().await;
    }
}
