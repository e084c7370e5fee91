//! Phase 5 on the legacy path: trigger requests published through the crossbeam facade go to
//! one collector instance of the target's type (collector processes: `busbridge peer
//! --serve-triggers`), not to every subscriber; switching 5 → 4 → 5 at run time loses nothing
//! and runs nothing twice.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::bridge::BridgeBuilder;
use busbridge::config::TasksConfig;
use busbridge::legacy::crossbeam::*;
use busbridge::phase::Phase;
use busbridge::task::{Liveness, WhenNoneCapable};
use common::procs::{self, Proc};
use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

fn peer(socket: &std::path::Path, name: &str) -> Proc {
    let connect = format!("ipc://{}", socket.display());
    let mut p = procs::spawn_piped(&[
        "peer",
        "--name",
        name,
        "--connect",
        &connect,
        "--phase",
        "4",
        "--count",
        "0",
        "--expect",
        "1000000",
        "--timeout",
        "120s",
        "--serve-triggers",
        "process",
    ]);
    p.wait_line("ready");
    p.say("go");
    p
}

/// Trigger ids each peer printed, until `total` arrived in all (bounded).
fn collect(peers: &[(&str, &Proc)], total: usize) -> HashMap<String, Vec<String>> {
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.values().map(Vec::len).sum::<usize>() < total {
        assert!(Instant::now() < deadline, "only {got:?} of {total}");
        for (name, p) in peers {
            match p.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    if let Some(id) = v["event"]["TriggerRequest"]["trigger_id"].as_str() {
                        got.entry(name.to_string()).or_default().push(id.to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
    got
}

/// Different trigger ids among what the peers printed.
fn distinct(got: &HashMap<String, Vec<String>>) -> usize {
    got.values()
        .flatten()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn trigger(n: usize) -> CollectionEvent {
    let CollectionEvent::TriggerRequest(mut t) = common::trigger(n as u32, TriggerPriority::High)
    else {
        unreachable!()
    };
    t.trigger_id = format!("trig-{n}");
    CollectionEvent::TriggerRequest(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_go_to_one_instance_at_phase_5_and_to_all_at_phase_4() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let a = peer(&socket, "procmond");
    let b = peer(&socket, "procmond-2");
    let bridged = BridgeBuilder::new()
        .connect(format!("ipc://{}", socket.display()))
        .name("daemoneye-agent")
        .phase(Phase::Tasks)
        .tasks(TasksConfig {
            when_none_capable: WhenNoneCapable::Queue,
            ..TasksConfig::default()
        })
        .build()
        .await
        .unwrap();
    let triggers = bridged.triggers().unwrap().clone();
    assert!(
        triggers
            .tasks()
            .wait_for(
                |c| c.iter().filter(|e| e.state == Liveness::Alive).count() == 2,
                Duration::from_secs(20)
            )
            .await
    );
    let bus = bridged.crossbeam(HighPerformanceEventBusConfig::default());
    let peers = [("procmond", &a), ("procmond-2", &b)];

    // Phase 5: 40 triggers for "procmond": each reaches exactly one instance of its type.
    for n in 0..40 {
        bus.publish(trigger(n), format!("c-{n}")).await.unwrap();
    }
    let got = collect(&peers, 40);
    assert_eq!(distinct(&got), 40, "each trigger once: {got:?}");
    assert!(got.len() == 2, "both instances served: {got:?}");

    // Phase 4: the legacy broadcast, every subscriber of tasks.procmond.
    bridged.set_phase(Phase::BusrtOnly).unwrap();
    for n in 40..50 {
        bus.publish(trigger(n), format!("c-{n}")).await.unwrap();
    }
    let got = collect(&peers, 20);
    for (name, ids) in &got {
        assert_eq!(ids.len(), 10, "{name} got every broadcast trigger: {got:?}");
    }

    // And back: one instance each again.
    bridged.set_phase(Phase::Tasks).unwrap();
    for n in 50..60 {
        bus.publish(trigger(n), format!("c-{n}")).await.unwrap();
    }
    let got = collect(&peers, 10);
    assert_eq!(distinct(&got), 10, "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while triggers.stats().completed < 50 {
        assert!(Instant::now() < deadline, "{:?}", triggers.stats());
        tokio::task::yield_now().await;
    }
    assert_eq!(triggers.stats().failed, 0);
    // The same counts in the bus's status and its Prometheus exposition.
    let status = bridged.link().status(bridged.core());
    assert_eq!(status.triggers, Some(triggers.stats()));
    let text = busbridge::metrics::render(&busbridge::metrics::Snapshot {
        buses: vec![status],
        ..Default::default()
    });
    assert!(
        text.contains(
            r#"busbridge_task_triggers_total{bus="daemoneye-agent",outcome="completed"} 50"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_5_needs_its_dispatcher_and_refuses_a_trigger_nothing_can_take() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let uri = format!("ipc://{}", socket.display());
    // Built at phase 4 without `tasks`: switching to 5 is refused, typed.
    let plain = BridgeBuilder::new()
        .connect(&uri)
        .phase(Phase::BusrtOnly)
        .build()
        .await
        .unwrap();
    let e = plain.set_phase(Phase::Tasks).unwrap_err();
    assert!(e.to_string().contains("task dispatcher"), "{e}");
    // At phase 5 with the refuse policy and no collector: the publish fails, typed.
    let tasks = BridgeBuilder::new()
        .connect(&uri)
        .phase(Phase::Tasks)
        .build()
        .await
        .unwrap();
    let bus = tasks.crossbeam(HighPerformanceEventBusConfig::default());
    let e = bus.publish(trigger(1), "c".into()).await.unwrap_err();
    let source = e
        .chain()
        .find_map(|s| s.downcast_ref::<busbridge::task::DispatchError>());
    assert!(
        matches!(
            source,
            Some(busbridge::task::DispatchError::NothingCapable { .. })
        ),
        "{e:#}"
    );
    // Other events are untouched by phase 5.
    bus.publish(common::process(1), "c".into()).await.unwrap();
}
