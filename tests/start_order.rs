//! Start in any order: a bridged bus or a collector started before its broker keeps trying
//! and joins when the broker appears; phase 0 needs no broker at all.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bridge::BridgeBuilder;
use busbridge::client::ConnectionState;
use busbridge::legacy::crossbeam::HighPerformanceEventBus;
use busbridge::phase::Phase;
use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_bus_started_before_its_broker_joins_when_it_appears() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let uri = format!("ipc://{}", socket.display());
    let bridged = BridgeBuilder::new()
        .phase(Phase::Topics)
        .connect(&uri)
        .client_options(fast_client("early-bird"))
        .build()
        .await
        .expect("starts without a broker");
    assert!(!matches!(
        *bridged.link().state().borrow(),
        ConnectionState::Connected
    ));
    let bus = bridged.crossbeam(Default::default());
    let rx = bus.subscribe(sub_all("all")).await.unwrap();
    // Phase 2: busrt is the route, so these wait in the outbox for the broker.
    for i in 0..10 {
        bus.publish(process(i), "c".into()).await.unwrap();
    }
    assert!(rx.is_empty());
    let _broker = procs::broker(&socket, &[]);
    for i in 0..10 {
        let got = rx
            .recv_timeout(LIMIT)
            .expect("delivered once the broker is up");
        assert_eq!(got.event, process(i));
    }
    let mut state = bridged.link().state();
    tokio::time::timeout(LIMIT, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_0_needs_no_broker() {
    let dir = procs::sock_dir();
    let uri = format!("ipc://{}", procs::sock_path(&dir, "nobody.sock").display());
    let bridged = BridgeBuilder::new()
        .phase(Phase::Legacy)
        .connect(&uri)
        .build()
        .await
        .unwrap();
    let bus = bridged.crossbeam(Default::default());
    let rx = bus.subscribe(sub_all("all")).await.unwrap();
    bus.publish(process(1), "c".into()).await.unwrap();
    assert_eq!(
        rx.try_recv().unwrap().event,
        process(1),
        "delivered at once"
    );
    // Asked to, an unreachable broker is still an error of `build`.
    let strict = BridgeBuilder::new()
        .phase(Phase::Topics)
        .connect(&uri)
        .wait_for_broker(false)
        .build()
        .await;
    assert!(strict.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_before_its_broker_serves_once_it_appears() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let connect = format!("ipc://{}", socket.display());
    let collector = procs::spawn(
        &["collector", "--name", "procmond", "--connect", &connect],
        &[],
    );
    let _broker = procs::broker(&socket, &[]);
    collector.wait_line("ready");
    let out = std::process::Command::new(procs::BIN)
        .args(["rpc", "procmond", "health_check", "--connect", &connect])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["status"], "healthy");
}
