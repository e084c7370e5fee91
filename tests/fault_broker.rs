//! Faults with exact end-to-end counts: the standalone broker killed with SIGKILL and
//! restarted mid-stream between two bridged buses, and a slow subscriber. Whatever the
//! broker lost is detected as a sequence gap, asked for again and sent from the publisher's
//! replay buffer: the subscriber gets every event exactly once.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bridge::BridgeBuilder;
use busbridge::client::ClientOptions;
use busbridge::legacy::crossbeam::*;
use busbridge::phase::Phase;
use common::procs;
use std::collections::BTreeSet;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A phase-2 bridged bus on `uri`. These tests check exact counts, so receivers wait longer
/// for a gap than the default 2 s: on a loaded 2-core machine, a publisher's reconnect and
/// outbox flush after a broker restart can take longer than that (the wait a subscriber that
/// would rather wait than lose chooses, as `busbridge journal` does).
async fn bridge(uri: &str, opts: ClientOptions) -> busbridge::bridge::Bridged {
    BridgeBuilder::new()
        .phase(Phase::Topics)
        .connect(uri)
        .gap_wait(Duration::from_secs(10))
        .client_options(opts)
        .build()
        .await
        .unwrap()
}

/// Subscribes to everything on `bus` and reads `n` numbered events on a thread.
async fn read_all(
    bus: &busbridge::bridge::Bridged,
    n: usize,
) -> std::thread::JoinHandle<(Vec<usize>, bool)> {
    let rx = bus
        .crossbeam(Default::default())
        .subscribe(common::sub_all("all"))
        .await
        .unwrap();
    common::read_numbered(rx, n, LIMIT)
}

/// An in-process TCP broker, a publisher's bridged bus straight to it and a subscriber's
/// through a proxy the test controls (its side of the network), both quick to notice a cut.
async fn partitionable(
    tag: &str,
) -> (
    busbridge::Broker,
    String,
    common::proxy::Proxy,
    busbridge::bridge::Bridged,
    busbridge::bridge::Bridged,
) {
    let mut broker = busbridge::Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.set_timeout(Duration::from_secs(1));
    broker.spawn_tcp_server("127.0.0.1:0", 10).unwrap();
    broker.spawn().await.unwrap();
    let target = broker.tcp_addrs()[0].to_string();
    let proxy = common::proxy::Proxy::tcp(target.clone()).await;
    let opts = |name: String| ClientOptions {
        keepalive: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
        ..common::fast_client(&name)
    };
    let publisher = bridge(&format!("tcp://{target}"), opts(format!("{tag}-pub"))).await;
    let subscriber = bridge(&proxy.listen, opts(format!("{tag}-sub"))).await;
    (broker, target, proxy, publisher, subscriber)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_every_event_arrives_once() {
    const N: usize = 6000;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut broker = procs::broker(&socket, &[]);
    let uri = format!("ipc://{}", socket.display());
    let (publisher, subscriber) = (
        bridge(&uri, common::fast_client("fault-pub")).await,
        bridge(&uri, common::fast_client("fault-sub")).await,
    );
    let pub_bus = publisher.crossbeam(Default::default());
    let reader = read_all(&subscriber, N).await;
    // A few thousand events a second: 5 every millisecond tick.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..N {
        if i % 5 == 0 {
            tick.tick().await;
        }
        if i == N / 3 {
            broker.signal(libc::SIGKILL);
            broker.wait_exit();
            broker = procs::broker(&socket, &[]);
        }
        pub_bus
            .publish(
                busbridge::scenario::sample_event("fault", i % 1000),
                i.to_string(),
            )
            .await
            .unwrap();
    }
    let (got, extra) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let unique: BTreeSet<usize> = got.iter().copied().collect();
    let s = subscriber.core().stats().snapshot();
    eprintln!(
        "subscriber {s:?}\npublisher {:?}",
        publisher.core().stats().snapshot()
    );
    assert_eq!(got.len(), N, "received == published; stats {s:?}");
    assert_eq!(unique.len(), N, "no duplicates");
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "in publish order");
    assert!(!extra, "nothing beyond the published events");
    assert_eq!(s.bridge_resend_unavailable, 0);
    assert_eq!(
        publisher
            .core()
            .stats()
            .snapshot()
            .bridge_resend_unavailable,
        0
    );
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_with_blocking_loses_nothing() {
    const N: usize = 20_000;
    let mut broker = busbridge::Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    let bridged = BridgeBuilder::new()
        .phase(Phase::Topics)
        .embedded(broker)
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig {
        channel_capacity: 16,
        backpressure_strategy: BackpressureStrategy::Blocking,
        ..Default::default()
    });
    let rx = bus.subscribe(common::sub_all("slow")).await.unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            match rx.recv_timeout(LIMIT) {
                Ok(e) => got.push(e.correlation_id.parse::<usize>().unwrap()),
                Err(_) => break,
            }
            if got.len() % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(20)); // the slowness under test
            }
        }
        got
    });
    for i in 0..N {
        bus.publish(
            busbridge::scenario::sample_event("slow", i % 1000),
            i.to_string(),
        )
        .await
        .unwrap();
    }
    let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let s = bridged.core().stats().snapshot();
    assert_eq!((s.events_dropped(), s.bridge_gaps), (0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_partition_then_heal_every_event_arrives_once() {
    use common::proxy::Gate;
    const N: usize = 3000;
    let (_broker, _, proxy, publisher, subscriber) = partitionable("part").await;
    let pub_bus = publisher.crossbeam(Default::default());
    let reader = read_all(&subscriber, N).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..N {
        if i % 5 == 0 {
            tick.tick().await;
        }
        if i == N / 3 {
            proxy.set(Gate::Blackhole);
        }
        if i == N / 2 {
            // Keep the partition until the subscriber's bridge has noticed it (keepalive).
            let mut state = subscriber.link().state();
            tokio::time::timeout(
                LIMIT,
                state
                    .wait_for(|s| matches!(s, busbridge::client::ConnectionState::Reconnecting(_))),
            )
            .await
            .expect("the partition was detected")
            .unwrap();
            proxy.set(Gate::Open);
            // The rest of the stream may well be published before the subscriber is back: the
            // publisher's heartbeat then reveals the lost tail, which is sent again.
        }
        pub_bus
            .publish(
                busbridge::scenario::sample_event("part", i % 1000),
                i.to_string(),
            )
            .await
            .unwrap();
    }
    let (got, extra) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let s = subscriber.core().stats().snapshot();
    let unique: BTreeSet<usize> = got.iter().copied().collect();
    assert_eq!(got.len(), N, "received == published; stats {s:?}");
    assert_eq!(unique.len(), N, "no duplicates");
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "in publish order");
    assert!(!extra);
    assert_eq!(s.bridge_resend_unavailable, 0);
}

/// Phase 2 with the broker gone and the client's outbox full: every publish returned `Ok`, so
/// every event reaches the local subscriber — the ones busrt refused from the kept copy at
/// once, the ones in the outbox when the broker is back. None is lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_loses_no_accepted_event() {
    const BEFORE: usize = 5;
    const DURING: usize = 50;
    const OUTBOX: usize = 8;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut broker = procs::broker(&socket, &[]);
    let uri = format!("ipc://{}", socket.display());
    let bridged = bridge(
        &uri,
        ClientOptions {
            outbox_capacity: OUTBOX,
            ..common::fast_client("outbox-full")
        },
    )
    .await;
    let bus = bridged.crossbeam(Default::default());
    let reader = read_all(&bridged, BEFORE + DURING).await;
    let publish = |i: usize| {
        bus.publish(
            busbridge::scenario::sample_event("outbox", i),
            i.to_string(),
        )
    };
    for i in 0..BEFORE {
        publish(i).await.unwrap();
    }
    // Acknowledged as well as back: an event whose return arrived but whose acknowledgement
    // had not when the broker died goes back to the outbox (at least once), taking a slot.
    tokio::time::timeout(LIMIT, async {
        bridged.link().flushed().await;
        bridged.link().settled().await;
    })
    .await
    .unwrap();
    broker.signal(libc::SIGKILL);
    broker.wait_exit();
    let mut state = bridged.link().state();
    tokio::time::timeout(
        LIMIT,
        state.wait_for(|s| !matches!(s, busbridge::client::ConnectionState::Connected)),
    )
    .await
    .unwrap()
    .unwrap();
    for i in BEFORE..BEFORE + DURING {
        publish(i).await.expect("accepted");
    }
    // The refused ones are delivered without the broker.
    let refused = (DURING - OUTBOX) as u64;
    tokio::time::timeout(LIMIT, async {
        while bridged.core().stats().snapshot().bridge_send_errors < refused {
            tokio::time::sleep(Duration::from_millis(5)).await; // bounded by LIMIT
        }
    })
    .await
    .expect("busrt refused what did not fit in the outbox");
    let _broker = procs::broker(&socket, &[]);
    let (got, extra) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let unique: BTreeSet<usize> = got.iter().copied().collect();
    let s = bridged.core().stats().snapshot();
    assert_eq!(
        got.len(),
        BEFORE + DURING,
        "every accepted event delivered; {s:?}"
    );
    assert_eq!(unique.len(), BEFORE + DURING, "none twice");
    assert!(!extra);
    assert_eq!(s.bridge_send_errors, refused, "{s:?}");
}

/// A subscriber cut off while an origin sends the end of its stream and then goes quiet: the
/// origin's one announcement of that tail is lost with the subscriber's connection, so only
/// the subscriber's hello after reconnecting (answered with how far the origin got) reveals
/// the tail, which is then sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_sent_while_a_subscriber_was_cut_off_reaches_it_after_it_reconnects() {
    use busbridge::bridge::HEARTBEAT_TOPIC;
    use busbridge::client::{AsyncClient, ConnectionState};
    use common::proxy::Gate;
    const FIRST: usize = 10;
    const N: usize = 60;
    let (_broker, target, proxy, publisher, subscriber) = partitionable("tail").await;
    // Watches the origin's announcements on the broker itself.
    let mut watch = AsyncClient::connect_with(
        &format!("tcp://{target}"),
        ClientOptions::default().name("tail-watch"),
    )
    .await
    .unwrap();
    watch
        .subscribe(HEARTBEAT_TOPIC, busbridge::QoS::Processed)
        .await
        .unwrap();
    let rx = subscriber
        .crossbeam(Default::default())
        .subscribe(common::sub_all("all"))
        .await
        .unwrap();
    let pub_bus = publisher.crossbeam(Default::default());
    let event = |i: usize| busbridge::scenario::sample_event("tail", i);
    for i in 0..FIRST {
        pub_bus.publish(event(i), i.to_string()).await.unwrap();
    }
    // The subscriber knows the origin before it is cut off.
    let first = tokio::task::spawn_blocking({
        let rx = rx.clone();
        move || {
            (0..FIRST)
                .map(|_| rx.recv_timeout(LIMIT).unwrap().correlation_id)
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert_eq!(first.len(), FIRST);

    proxy.set(Gate::Blackhole);
    let mut state = subscriber.link().state();
    tokio::time::timeout(
        LIMIT,
        state.wait_for(|s| matches!(s, ConnectionState::Reconnecting(_))),
    )
    .await
    .expect("the cut was detected")
    .unwrap();
    for i in FIRST..N {
        pub_bus.publish(event(i), i.to_string()).await.unwrap();
    }
    // The origin, now idle, announces its tail once, while the subscriber cannot hear it.
    let origin = publisher.link().origin().to_owned();
    tokio::time::timeout(LIMIT, async {
        loop {
            let m = watch.recv().await.unwrap();
            let beat: serde_json::Value = serde_json::from_slice(m.payload()).unwrap();
            if beat["origin"] == origin.as_str() && beat["highest"].as_u64() >= Some(N as u64) {
                return;
            }
        }
    })
    .await
    .expect("the origin announced its tail");
    proxy.set(Gate::Open);
    let (got, extra) = tokio::task::spawn_blocking(move || {
        common::read_numbered(rx, N - FIRST, LIMIT).join().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        (FIRST..N).collect::<Vec<_>>(),
        "the tail, once, in order"
    );
    assert!(!extra);
}
