//! Bad input from outside: every case gets a typed error or a counted drop, and the bus keeps
//! serving everyone else.

#![cfg(all(feature = "legacy", feature = "cli"))]

use busbridge::bridge::BridgeBuilder;
use busbridge::codec::{Codec, CodecKind};
use busbridge::legacy::crossbeam::*;
use busbridge::phase::Phase;
use busbridge::{AsyncClient, Broker, QoS};
use busrt::client::AsyncClient as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

async fn broker_on(dir: &tempfile::TempDir) -> (Broker, String) {
    let socket = dir.path().join("b.sock");
    let mut broker = Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn_ipc_server(&socket, 100).unwrap();
    broker.spawn().await.unwrap();
    (broker, socket.to_string_lossy().into_owned())
}

async fn plain(path: &str, name: &str) -> busrt::ipc::Client {
    busrt::ipc::Client::connect(&busrt::ipc::Config::new(path, name))
        .await
        .unwrap()
}

/// busrt's client handshake by hand, to send what no well-behaved client would.
/// Waits (bounded) until the broker closes `s`.
async fn closed_by_broker(mut s: tokio::net::UnixStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("the broker closed the connection")
        .ok();
}

/// Everyone else is still served: a publish on `topic` reaches a subscriber of `pattern`.
async fn still_serves(path: &str, pattern: &str, topic: &str) {
    let mut sub = AsyncClient::connect(&format!("ipc://{path}"))
        .await
        .unwrap();
    sub.subscribe(pattern, QoS::Processed).await.unwrap();
    let p = AsyncClient::connect(&format!("ipc://{path}"))
        .await
        .unwrap();
    p.publish(topic, b"fine".to_vec(), QoS::Processed)
        .await
        .unwrap();
    let m = tokio::time::timeout(LIMIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), b"fine");
}

async fn raw_client(path: &str, name: &[u8]) -> tokio::net::UnixStream {
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    let mut greeting = [0u8; 3];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_all(&greeting).await.unwrap();
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok).await.unwrap();
    s.write_all(&(name.len() as u16).to_le_bytes())
        .await
        .unwrap();
    s.write_all(name).await.unwrap();
    s.read_exact(&mut ok).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_far_beyond_the_limit_is_refused_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, path) = broker_on(&dir).await;
    // A frame header that declares ~4 GiB.
    let mut s = raw_client(&path, b"attacker").await;
    let mut header = vec![1, 0, 0, 0, busrt::OP_PUBLISH];
    header.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    s.write_all(&header).await.unwrap();
    // The broker drops the connection instead of allocating.
    closed_by_broker(s).await;
    still_serves(&path, "health.*", "health.ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_bridged_topics_is_counted_and_the_bridge_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, path) = broker_on(&dir).await;
    let bridged = BridgeBuilder::new()
        .phase(Phase::Topics)
        .connect(format!("ipc://{path}"))
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(Default::default());
    let rx = bus
        .subscribe(EventSubscription {
            subscriber_id: "all".into(),
            capabilities: SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
        })
        .await
        .unwrap();
    let mut attacker = plain(&path, "garbage").await;
    let good = Codec::default()
        .encode(&busbridge::scenario::sample_envelope("x", 0, "x"))
        .unwrap();
    let deep = format!("{{\"v\":1,\"x\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
    let mut frames: Vec<Vec<u8>> = vec![
        good[..good.len() / 2].to_vec(),     // truncated
        b"{\"v\":99,\"event\":{}}".to_vec(), // unknown envelope version
        vec![0xff, 0xfe, 0xfd],              // invalid UTF-8, not protobuf either
        deep.into_bytes(),                   // deeply nested JSON
        vec![0x0a; busbridge::codec::DEFAULT_MAX_MESSAGE_SIZE + 10], // over the codec limit
        Vec::new(),                          // empty
    ];
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..200 {
        let len = (seed % 300) as usize;
        let mut f = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            f.push(seed as u8);
        }
        frames.push(f);
    }
    for f in &frames {
        let c = attacker
            .publish(
                "events/process/new",
                f.as_slice().into(),
                busrt::QoS::Processed,
            )
            .await
            .unwrap();
        c.unwrap().await.unwrap().unwrap();
    }
    bus.publish(busbridge::scenario::sample_event("ok", 0), "after".into())
        .await
        .unwrap();
    let got = tokio::task::spawn_blocking(move || rx.recv_timeout(LIMIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.correlation_id, "after",
        "garbage never reached a subscriber"
    );
    let s = bridged.core().stats().snapshot();
    // Random bytes can, rarely, form a valid protobuf with a header; nothing else may pass.
    assert!(s.bridge_decode_errors >= frames.len() as u64 - 2, "{s:?}");
    bridged.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_topic_drops_only_that_client() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, path) = broker_on(&dir).await;
    let mut bad = raw_client(&path, b"bad-topic").await;
    let topic = [0x66u8, 0xff, 0x6f];
    let mut frame = vec![1, 0, 0, 0, busrt::OP_SUBSCRIBE];
    frame.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    frame.extend_from_slice(&topic);
    bad.write_all(&frame).await.unwrap();
    closed_by_broker(bad).await;
    still_serves(&path, "results.#", "results.scan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_starve_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, path) = broker_on(&dir).await;
    let flood_path = path.clone();
    let flood = tokio::spawn(async move {
        let mut f = plain(&flood_path, "flooder").await;
        for _ in 0..200_000 {
            if f.publish(
                "events/performance/metric",
                vec![0u8; 64].into(),
                busrt::QoS::No,
            )
            .await
            .is_err()
            {
                break;
            }
        }
    });
    let mut sub = AsyncClient::connect(&format!("ipc://{path}"))
        .await
        .unwrap();
    sub.subscribe("control.#", QoS::Processed).await.unwrap();
    let p = AsyncClient::connect(&format!("ipc://{path}"))
        .await
        .unwrap();
    for i in 0..100u32 {
        p.publish("control.procmond", i.to_le_bytes().to_vec(), QoS::Processed)
            .await
            .unwrap();
    }
    for i in 0..100u32 {
        let m = tokio::time::timeout(LIMIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload(), i.to_le_bytes());
    }
    flood.await.unwrap();
}

#[test]
fn json_codec_refuses_what_json_cannot_carry() {
    let mut env = busbridge::scenario::sample_envelope("x", 3, "x");
    if let busbridge::event::CollectionEvent::Performance(p) = &mut env.event {
        p.value = f64::INFINITY;
    }
    assert!(Codec::new(CodecKind::Json, 1 << 20).encode(&env).is_err());
    assert!(Codec::new(CodecKind::Protobuf, 1 << 20)
        .encode(&env)
        .is_ok());
}
