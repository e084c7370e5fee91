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
