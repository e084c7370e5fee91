//! Phase 5 across processes: `busbridge collector --type` processes on a real broker, tasks
//! from a `TaskClient` and from `busbridge task`, a collector SIGKILLed mid-run and one frozen
//! with SIGSTOP, results counted per task id.

#![cfg(feature = "cli")]

mod common;

use busbridge::client::{AsyncClient, QoS};
use busbridge::event::SourceCaps;
use busbridge::task::proto::{self, Presence, PresenceReason, TaskOffer, ToCollector, ToRequester};
use busbridge::task::*;
use common::procs::{self, Proc};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A `busbridge broker` process on a socket of its own (the dir guard keeps the socket).
fn broker(extra: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Proc) {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let broker = procs::broker(&socket, extra);
    (dir, socket, broker)
}

async fn requester(socket: &Path, dispatch: TasksConfig) -> TaskClient {
    let opts = TaskClientOptions {
        dispatch,
        ..TaskClientOptions::default()
    };
    TaskClient::connect(&format!("ipc://{}", socket.display()), opts)
        .await
        .unwrap()
}

async fn wait_alive(tasks: &TaskClient, names: &[&str]) {
    let ok = tasks
        .wait_for(
            |c| {
                names.iter().all(|n| {
                    c.iter()
                        .any(|e| e.info.name == *n && e.state == Liveness::Alive)
                })
            },
            Duration::from_secs(20),
        )
        .await;
    assert!(
        ok,
        "collectors {names:?} not all alive: {:?}",
        tasks.collectors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_one_of_tasks_are_answered_once_each_even_when_a_collector_is_killed() {
    let (_dir, socket, _broker) = broker(&[]);
    let p1 = procs::task_collector(&socket, "p1", "process", "250ms");
    let p2 = procs::task_collector(&socket, "p2", "process", "250ms");
    let p3 = procs::task_collector(&socket, "p3", "process", "250ms");
    let _n1 = procs::task_collector(&socket, "n1", "network", "250ms");
    // Queue rather than refuse: on a loaded machine every collector may look suspect for a
    // moment (late heartbeats); the tasks wait for them instead of failing.
    let tasks = requester(
        &socket,
        TasksConfig {
            when_none_capable: WhenNoneCapable::Queue,
            ..TasksConfig::default()
        },
    )
    .await;
    wait_alive(&tasks, &["p1", "p2", "p3", "n1"]).await;

    let submit = |i: usize| {
        let mut spec = TaskSpec::new("echo", json!({"i": i, "sleep_ms": 1}));
        spec.capabilities = SourceCaps::PROCESS;
        spec.timeout = Duration::from_secs(60);
        tasks.submit(spec)
    };
    let mut by_collector: HashMap<String, usize> = HashMap::new();
    let mut check = |i: usize, (results, status): (Vec<TaskEvent>, Status), id: &str| {
        assert_eq!(status, Status::Complete, "task {i} ({id})");
        assert_eq!(results.len(), 1, "task {i}: {results:?}");
        let TaskEvent::Result {
            collector,
            outcome,
            correlation_id,
        } = &results[0]
        else {
            unreachable!()
        };
        assert_eq!(outcome.as_ref().unwrap()["i"], i, "the answer to this task");
        assert_eq!(correlation_id, id);
        *by_collector.entry(collector.clone()).or_default() += 1;
    };
    // The first 300 run everywhere, p2 included.
    let mut handles = Vec::new();
    for i in 0..300 {
        handles.push(submit(i).await.unwrap());
    }
    for (i, h) in handles.into_iter().enumerate() {
        let id = h.id().to_owned();
        check(i, h.results().await, &id);
    }
    // Mid-run: p2 freezes, still looks alive (it answered a moment ago), so least-loaded
    // offers it its share of the next tasks; then it is killed holding them.
    p2.freeze();
    let mut handles = Vec::new();
    for i in 300..2000 {
        handles.push(submit(i).await.unwrap());
    }
    p2.signal(libc::SIGKILL);
    for (i, h) in handles.into_iter().enumerate() {
        let id = h.id().to_owned();
        check(300 + i, h.results().await, &id);
    }
    let stats = tasks.stats().await;
    assert_eq!(stats.dispatch.complete, 2000, "{stats:?}");
    assert!(
        !by_collector.contains_key("n1"),
        "a network collector got process tasks"
    );
    // Least-loaded spreads: every live process collector did real work.
    for c in ["p1", "p3"] {
        assert!(
            by_collector.get(c).copied().unwrap_or(0) > 200,
            "{by_collector:?}"
        );
    }
    // p2 worked until it was killed; what it held went elsewhere.
    assert!(
        by_collector.get("p2").copied().unwrap_or(0) > 0,
        "{by_collector:?}"
    );
    assert!(stats.dispatch.retries > 0, "{stats:?}");
    drop((p1, p3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_completes_and_a_frozen_collector_makes_it_partial_naming_it() {
    let (_dir, socket, _broker) = broker(&[]);
    // Heartbeats slow enough that a loaded machine never makes them look gone.
    let _p1 = procs::task_collector(&socket, "p1", "process", "500ms");
    let _p2 = procs::task_collector(&socket, "p2", "process", "500ms");
    // A slow heartbeat: frozen, it stays "alive" past the task's deadline.
    let n1 = procs::task_collector(&socket, "n1", "network", "10s");
    let tasks = requester(&socket, TasksConfig::default()).await;
    wait_alive(&tasks, &["p1", "p2", "n1"]).await;

    let mut spec = TaskSpec::new("echo", json!("all"));
    spec.mode = Mode::AllOf;
    let (results, status) = tasks.submit(spec.clone()).await.unwrap().results().await;
    assert_eq!(status, Status::Complete);
    assert_eq!(results.len(), 3);

    n1.freeze();
    spec.timeout = Duration::from_secs(3);
    let (results, status) = tasks.submit(spec).await.unwrap().results().await;
    n1.signal(libc::SIGCONT);
    assert_eq!(results.len(), 2);
    match status {
        Status::Partial { missing } => {
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].collector, "n1");
        }
        other => panic!("{other:?}"),
    }

    // The same through the command line: exit 0 for a complete scatter.
    let connect = format!("ipc://{}", socket.display());
    let mut cli = procs::spawn(
        &[
            "task",
            "echo",
            "1",
            "--all",
            "--connect",
            &connect,
            "--json",
        ],
        &[],
    );
    let lines = cli.lines_until("finished");
    assert_eq!(
        lines.iter().filter(|l| l.contains("\"result\"")).count(),
        3,
        "{lines:?}"
    );
    assert_eq!(cli.wait_exit(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_reaches_a_collector_started_later_once_and_the_queue_is_bounded() {
    let (_dir, socket, _broker) = broker(&[]);
    let tasks = requester(
        &socket,
        TasksConfig {
            when_none_capable: WhenNoneCapable::Queue,
            queue_capacity: 2,
            // Offered once each: no second offer for a slow acceptance on a loaded machine.
            accept_timeout: Duration::from_secs(60),
            ..TasksConfig::default()
        },
    )
    .await;
    let mut spec = TaskSpec::new("tcp_connections", json!({"state": "listen"}));
    spec.capabilities = SourceCaps::NETWORK;
    spec.timeout = Duration::from_secs(30);
    let first = tasks.submit(spec.clone()).await.unwrap();
    let _second = tasks.submit(spec.clone()).await.unwrap();
    assert_eq!(
        tasks.submit(spec).await.err(),
        Some(DispatchError::QueueFull { capacity: 2 })
    );
    // Refused at once without the queue policy, naming what was required.
    let connect = format!("ipc://{}", socket.display());
    let mut cli = procs::spawn(
        &[
            "task",
            "tcp_connections",
            "--caps",
            "network",
            "--discover",
            "100ms",
            "--connect",
            &connect,
        ],
        &[],
    );
    assert_eq!(cli.wait_exit(), 5, "nothing capable");

    let _n1 = procs::task_collector(&socket, "n1", "network", "100ms");
    let (results, status) = first.results().await;
    assert_eq!(status, Status::Complete);
    assert_eq!(results.len(), 1);
    let stats = tasks.stats().await;
    assert_eq!(
        stats.dispatch.offers, 2,
        "each queued task offered once: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofing_unknown_operations_and_bad_payloads_get_typed_answers_and_the_collector_keeps_serving(
) {
    let (_dir, socket, _broker) = broker(&[]);
    let connect = format!("ipc://{}", socket.display());
    let _p1 = procs::task_collector(&socket, "p1", "process", "300ms");
    let tasks = requester(&socket, TasksConfig::default()).await;
    wait_alive(&tasks, &["p1"]).await;

    // Mallory announces herself as p1 with a huge capacity: refused, counted.
    let mut mallory = AsyncClient::connect_with(
        &connect,
        busbridge::client::ClientOptions::default().name("mallory"),
    )
    .await
    .unwrap();
    let mut forged = tasks.collectors()[0].info.clone();
    forged.capacity = 1000;
    let presence = Presence {
        reason: PresenceReason::Change,
        collector: forged,
        heartbeat_ms: 100,
    };
    mallory
        .publish(
            &proto::health_topic("p1"),
            serde_json::to_vec(&presence).unwrap(),
            QoS::Processed,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tasks.stats().await.registry.spoofed == 0 {
        assert!(tokio::time::Instant::now() < deadline, "spoof not seen");
        tokio::task::yield_now().await;
    }
    assert_eq!(tasks.collectors()[0].info.capacity, 8);

    // An offer of an operation the collector does not serve: a typed error result.
    mallory
        .subscribe("results.mallory", QoS::Processed)
        .await
        .unwrap();
    let offer = ToCollector::Offer(TaskOffer {
        task_id: "x1".into(),
        correlation_id: "c1".into(),
        operation: "format_disk".into(),
        payload: json!({}),
        priority: Priority::Normal,
        deadline_ms: 5000,
        reply_to: "results.mallory".into(),
        attempt: 1,
        accept_ms: 0,
    });
    mallory
        .publish(
            &proto::offer_topic("p1"),
            serde_json::to_vec(&offer).unwrap(),
            QoS::Processed,
        )
        .await
        .unwrap();
    let done = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), mallory.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.primary_sender(), "p1");
        if let ToRequester::Done { outcome, .. } = serde_json::from_slice(m.payload()).unwrap() {
            break outcome;
        }
    };
    assert_eq!(
        done,
        Err(TaskFailure::UnknownOperation("format_disk".into()))
    );

    // A malformed payload: a typed failure, and the collector answers the next task.
    let bad = TaskSpec::new("process_details", json!({"pid": "one"}));
    let (results, status) = tasks.submit(bad).await.unwrap().results().await;
    assert!(matches!(status, Status::Failed { .. }), "{status:?}");
    assert!(matches!(
        &results[0],
        TaskEvent::Result {
            outcome: Err(TaskFailure::BadPayload(_)),
            ..
        }
    ));
    let me = std::process::id();
    let (results, status) = tasks
        .submit(TaskSpec::new("process_details", json!({ "pid": me })))
        .await
        .unwrap()
        .results()
        .await;
    assert_eq!(status, Status::Complete);
    let TaskEvent::Result { outcome: Ok(v), .. } = &results[0] else {
        panic!("{results:?}")
    };
    assert_eq!(v["pid"], me);

    // Oversized: refused before it is sent.
    let big = TaskSpec::new("echo", json!("x".repeat(100_000)));
    assert!(matches!(
        tasks.submit(big).await,
        Err(DispatchError::Invalid(_))
    ));
}

/// `migration/phase-5.toml` as given: its broker's access rules let its collectors announce
/// and serve, and keep a collector from announcing as another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phase_5_example_configuration_serves_tasks_and_its_rules_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    let config = busbridge::config::Config::load(root.join("phase-5.toml")).unwrap();
    assert_eq!(config.tasks.when_none_capable, WhenNoneCapable::Queue);
    let file = root.join("phase-5.toml");
    let (_dir, socket, _broker) = broker(&["--config", file.to_str().unwrap()]);
    let _p = procs::task_collector(&socket, "procmond-1", "process", "300ms");
    let _n = procs::task_collector(&socket, "netmond-1", "network", "300ms");
    let opts = TaskClientOptions {
        client: busbridge::client::ClientOptions::default().name("daemoneye-agent"),
        dispatch: config.tasks.clone(),
        ..TaskClientOptions::default()
    };
    let tasks = TaskClient::connect(&format!("ipc://{}", socket.display()), opts)
        .await
        .unwrap();
    wait_alive(&tasks, &["procmond-1", "netmond-1"]).await;
    let mut spec = TaskSpec::new("list_processes", json!({"limit": 5}));
    spec.capabilities = SourceCaps::PROCESS;
    let (results, status) = tasks.submit(spec).await.unwrap().results().await;
    assert_eq!(status, Status::Complete);
    let TaskEvent::Result {
        collector,
        outcome: Ok(list),
        ..
    } = &results[0]
    else {
        panic!("{results:?}")
    };
    assert_eq!(collector, "procmond-1");
    assert!(!list.as_array().unwrap().is_empty());
    // netmond-1 may not publish on procmond-1's health topic.
    let net = AsyncClient::connect_with(
        &format!("ipc://{}", socket.display()),
        busbridge::client::ClientOptions::default().name("netmond-1%%spoof"),
    )
    .await
    .unwrap();
    let denied = net
        .publish(
            &proto::health_topic("procmond-1"),
            b"{}".to_vec(),
            QoS::Processed,
        )
        .await;
    assert!(
        matches!(denied, Err(busbridge::client::ClientError::Denied(_))),
        "{denied:?}"
    );
}

/// A handle whose client goes away ends `failed`, not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_outliving_its_client_ends() {
    let (_dir, socket, _broker) = broker(&[]);
    let _p1 = procs::task_collector(&socket, "p1", "process", "300ms");
    let tasks = requester(&socket, TasksConfig::default()).await;
    wait_alive(&tasks, &["p1"]).await;
    let mut spec = TaskSpec::new("echo", json!({"sleep_ms": 60_000}));
    spec.timeout = Duration::from_secs(120);
    let handle = tasks.submit(spec).await.unwrap();
    drop(tasks);
    let (results, status) = tokio::time::timeout(Duration::from_secs(10), handle.results())
        .await
        .expect("the handle ends");
    assert!(results.is_empty());
    assert!(
        matches!(&status, Status::Failed { attempts } if attempts[0].reason.contains("closed")),
        "{status:?}"
    );
}
