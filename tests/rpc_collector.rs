//! A collector in its own process, driven through its whole lifecycle with `busbridge rpc`.
#![cfg(feature = "cli")]

mod common;

use busbridge::{AsyncClient, QoS};
use common::procs;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

fn rpc(connect: &str, method: &str, params: &str) -> (i32, serde_json::Value) {
    let out = Command::new(procs::BIN)
        .args([
            "rpc",
            "procmond",
            method,
            params,
            "--connect",
            connect,
            "--timeout",
            "5s",
        ])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), v)
}

async fn process_names(sub: &mut AsyncClient, n: usize) -> Vec<String> {
    let codec = busbridge::codec::Codec::default();
    let mut names = Vec::new();
    while names.len() < n {
        let m = tokio::time::timeout(LIMIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        match codec.decode(m.payload()).unwrap().event {
            busbridge::event::CollectionEvent::Process(p) => names.push(p.name),
            other => panic!("unexpected {other:?}"),
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_process_lifecycle_driven_from_outside() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let connect = format!("ipc://{}", socket.display());
    let mut collector = procs::spawn(
        &[
            "collector",
            "--name",
            "procmond",
            "--connect",
            &connect,
            "--interval",
            "50ms",
        ],
        &[],
    );
    collector.wait_line("ready");
    let mut sub = AsyncClient::connect(&connect).await.unwrap();
    sub.subscribe("events.process.*", QoS::Processed)
        .await
        .unwrap();

    let (code, h) = rpc(&connect, "health_check", "{}");
    assert_eq!(code, 0);
    assert_eq!(
        (h["status"].as_str(), h["collecting"].as_bool()),
        (Some("healthy"), Some(false))
    );
    let (code, caps) = rpc(&connect, "get_capabilities", "{}");
    assert_eq!(code, 0);
    assert_eq!(caps["topics"][0], "events.process.new");

    // start: this machine's processes arrive as process events.
    assert_eq!(rpc(&connect, "start_collection", "{}").0, 0);
    let names = process_names(&mut sub, 5).await;
    assert!(!names.is_empty());

    // update_config changes what it publishes: only processes named like the collector.
    assert_eq!(rpc(&connect, "stop_collection", "{}").0, 0);
    let (code, _) = rpc(
        &connect,
        "update_config",
        r#"{"config":{"interval":"50ms","name_contains":"busbridge"}}"#,
    );
    assert_eq!(code, 0);
    let (code, caps) = rpc(&connect, "get_capabilities", "{}");
    assert_eq!((code, caps["capabilities"].as_str()), (0, Some("PROCESS")));
    let (code, _) = rpc(
        &connect,
        "update_config",
        r#"{"config":{"interval":"1ms"}}"#,
    );
    assert_eq!(code, 6, "a bad configuration is a remote error");
    // Drain what the first configuration published before the stop was answered.
    let published_before = rpc(&connect, "health_check", "{}").1["events_published"]
        .as_u64()
        .unwrap();
    let already = names.len() as u64;
    process_names(&mut sub, (published_before - already) as usize).await;
    assert_eq!(rpc(&connect, "start_collection", "{}").0, 0);
    for name in process_names(&mut sub, 3).await {
        assert!(name.contains("busbridge"), "{name}");
    }

    // stop, then shutdown: it flushes, answers, disconnects and exits 0; every event arrives.
    assert_eq!(rpc(&connect, "stop_collection", "{}").0, 0);
    let (code, bye) = rpc(&connect, "shutdown", r#"{"deadline":"5s"}"#);
    assert_eq!(code, 0);
    assert_eq!(bye["flushed"], true);
    assert_eq!(collector.wait_exit(), 0);
    let total = bye["events_published"].as_u64().unwrap();
    let received_so_far = published_before + 3;
    let rest = total - received_so_far;
    let last = process_names(&mut sub, rest as usize).await;
    assert_eq!(last.len() as u64, rest);
    assert!(last.iter().all(|n| n.contains("busbridge")));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_err(),
        "nothing more"
    );

    // A call to the vanished collector fails fast with "not found".
    let (code, _) = rpc(&connect, "health_check", "{}");
    assert_eq!(code, 5);
}
