//! The broker and client against the real world: a standalone broker process, plain busrt
//! peers, a broker killed mid-stream, bursts, idleness, permissions, access rules, limits.
#![cfg(feature = "cli")]

mod common;

use busbridge::client::{ClientOptions, ConnectionState};
use busbridge::config::{AccessRule, Config};
use busbridge::{AsyncClient, Broker, QoS};
use common::procs;
use common::proxy::{Gate, Proxy};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

fn uri(path: &std::path::Path) -> String {
    format!("ipc://{}", path.display())
}

fn fast() -> ClientOptions {
    ClientOptions {
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..Default::default()
    }
}

async fn wait_state(client: &AsyncClient, want: impl Fn(ConnectionState) -> bool) {
    let mut state = client.state();
    timeout(LIMIT, state.wait_for(|s| want(*s)))
        .await
        .expect("state reached within the limit")
        .unwrap();
}

async fn embedded(socket: &std::path::Path, tune: impl FnOnce(&mut Broker)) -> Broker {
    let mut b = Broker::new();
    b.set_name(uuid::Uuid::new_v4().to_string());
    b.spawn_ipc_server(socket, 1000).unwrap();
    tune(&mut b);
    b.spawn().await.unwrap();
    b
}

#[tokio::test]
async fn standalone_broker_with_pub_and_sub_processes() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut broker = procs::broker(&socket, &[]);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let connect = uri(&socket);
    let mut sub = std::process::Command::new(procs::BIN)
        .args([
            "sub",
            "events.process.*",
            "--count",
            "3",
            "--json",
            "--connect",
            &connect,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "subscribed" on stderr before publishing.
    let stderr = sub.stderr.take().unwrap();
    let ready = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("subscribed"))
    });
    assert!(ready.join().unwrap());
    let status = std::process::Command::new(procs::BIN)
        .args([
            "pub",
            "events.process.new",
            "payload-1",
            "--count",
            "3",
            "--connect",
            &connect,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["topic"], "events.process.new");
        assert_eq!(l["payload"], "payload-1");
    }
    // Exit codes scripts can trust.
    let bad_topic = std::process::Command::new(procs::BIN)
        .args(["pub", "events..x", "p", "--connect", &connect])
        .status()
        .unwrap();
    assert_eq!(bad_topic.code(), Some(2));
    let no_broker = std::process::Command::new(procs::BIN)
        .args([
            "pub",
            "a.b",
            "p",
            "--connect",
            "ipc:///nonexistent/dir/x.sock",
        ])
        .status()
        .unwrap();
    assert_eq!(no_broker.code(), Some(3));

    broker.signal(libc::SIGTERM);
    assert_eq!(broker.wait_exit(), 0);
    assert!(!socket.exists(), "socket removed on SIGTERM");
}

#[tokio::test]
async fn relative_socket_goes_to_a_private_runtime_dir() {
    let dir = procs::sock_dir();
    let runtime = dir.path().join("rt");
    let p = procs::spawn(
        &["broker", "--socket", "agent.sock"],
        &[("BUSBRIDGE_RUNTIME_DIR", &runtime)],
    );
    let line = p.wait_line("listening on ipc://");
    assert!(
        line.ends_with(&format!("{}/agent.sock", runtime.display())),
        "{line}"
    );
    assert_eq!(
        std::fs::metadata(&runtime).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(runtime.join("agent.sock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A directory others can write is refused with a clear error.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(procs::BIN)
        .args(["broker", "--socket"])
        .arg(open.join("x.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group or others write"));
}

#[tokio::test]
async fn plain_busrt_client_talks_to_busbridge_broker() {
    use busrt::client::AsyncClient as _;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let broker = embedded(&socket, |_| {}).await;
    let mut plain = busrt::ipc::Client::connect(&busrt::ipc::Config::new(
        &socket.to_string_lossy(),
        "plain-busrt",
    ))
    .await
    .unwrap();
    let plain_rx = plain.take_event_channel().unwrap();
    let op = plain
        .subscribe("results/#", busrt::QoS::Processed)
        .await
        .unwrap();
    op.unwrap().await.unwrap().unwrap();
    let mut ours = AsyncClient::connect(&uri(&socket)).await.unwrap();
    ours.subscribe("control.*", QoS::Processed).await.unwrap();

    ours.publish(
        "results.scan.done",
        b"from busbridge".to_vec(),
        QoS::Processed,
    )
    .await
    .unwrap();
    let frame = timeout(LIMIT, plain_rx.recv()).await.unwrap().unwrap();
    assert_eq!(frame.topic(), Some("results/scan/done"));
    assert_eq!(frame.payload(), b"from busbridge");

    let op = plain
        .publish(
            "control/procmond",
            b"from busrt".as_slice().into(),
            busrt::QoS::Processed,
        )
        .await
        .unwrap();
    op.unwrap().await.unwrap().unwrap();
    let m = timeout(LIMIT, ours.recv()).await.unwrap().unwrap();
    assert_eq!(
        (m.topic(), m.payload(), m.sender()),
        ("control.procmond", &b"from busrt"[..], "plain-busrt")
    );
    drop(broker);
}

#[tokio::test]
async fn busbridge_client_talks_to_plain_busrt_broker() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "plain.sock");
    let mut plain = busrt::broker::Broker::new();
    plain
        .spawn_unix_server(
            &socket.to_string_lossy(),
            busrt::broker::ServerConfig::default(),
        )
        .await
        .unwrap();
    let mut sub = AsyncClient::connect(&uri(&socket)).await.unwrap();
    sub.subscribe("tasks.#", QoS::Processed).await.unwrap();
    let publisher = AsyncClient::connect(&uri(&socket)).await.unwrap();
    publisher
        .publish("tasks.procmond", b"scan".to_vec(), QoS::Processed)
        .await
        .unwrap();
    let m = timeout(LIMIT, sub.recv()).await.unwrap().unwrap();
    assert_eq!((m.topic(), m.payload()), ("tasks.procmond", &b"scan"[..]));
}

#[tokio::test]
async fn broker_killed_and_restarted_loses_nothing_within_the_outbox() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut broker = procs::broker(&socket, &[]);
    // The publisher reaches the broker through a gate the test controls, so the test can
    // let the subscriber come back first (a busrt broker keeps nothing for absent clients).
    let gate = Proxy::unix(dir.path().join("gate.sock"), socket.clone());
    let mut sub = AsyncClient::connect_with(&uri(&socket), fast())
        .await
        .unwrap();
    sub.subscribe("events.#", QoS::Processed).await.unwrap();
    let publisher = AsyncClient::connect_with(&gate.listen, fast())
        .await
        .unwrap();

    let mut next = 0u32;
    let mut publish_batch = |n: u32| {
        let p = publisher.publisher();
        let start = next;
        next += n;
        async move {
            for i in start..start + n {
                p.publish(
                    "events.process.new",
                    i.to_be_bytes().to_vec(),
                    QoS::Processed,
                )
                .await
                .unwrap();
            }
        }
    };
    let mut received = Vec::new();
    publish_batch(1000).await;
    while received.len() < 1000 {
        let m = timeout(LIMIT, sub.recv()).await.unwrap().unwrap();
        received.push(u32::from_be_bytes(m.payload().try_into().unwrap()));
    }

    broker.signal(libc::SIGKILL);
    broker.wait_exit();
    gate.set(Gate::Closed);
    wait_state(&sub, |s| matches!(s, ConnectionState::Reconnecting(_))).await;
    publish_batch(1000).await; // all accepted into the outbox
    assert!(publisher.stats().outbox_len > 0);

    let _broker = procs::broker(&socket, &[]);
    wait_state(&sub, |s| s == ConnectionState::Connected).await;
    gate.set(Gate::Open);
    publish_batch(500).await;
    while received.len() < 2500 {
        let m = timeout(LIMIT, sub.recv()).await.unwrap().unwrap();
        received.push(u32::from_be_bytes(m.payload().try_into().unwrap()));
    }
    assert_eq!(
        received,
        (0..2500).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let stats = publisher.stats();
    assert!(stats.outbox_resent >= 1000, "{stats:?}");
    assert_eq!(stats.outbox_dropped, 0);
    assert!(sub.stats().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_200k_does_not_disconnect_the_subscriber() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    const N: u32 = 200_000;
    // busrt has no backpressure from a subscriber to a publisher: its broker drops a client
    // whose queue fills. Both queues are sized for the burst, as the README tells users to.
    let _broker = embedded(&socket, |b| b.set_queue_size(N as usize + 1024)).await;
    let mut sub = AsyncClient::connect_with(
        &uri(&socket),
        ClientOptions {
            queue_size: 262_144,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sub.subscribe("events.#", QoS::Processed).await.unwrap();
    let publisher = AsyncClient::connect(&uri(&socket)).await.unwrap();
    let p = publisher.publisher();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            p.publish(
                "events.performance.metric",
                i.to_le_bytes().to_vec(),
                QoS::Realtime,
            )
            .await
            .unwrap();
        }
    });
    let mut expected = 0u32;
    while expected < N {
        let m = timeout(LIMIT, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("at {expected}: {:?}", sub.stats()))
            .unwrap();
        assert_eq!(
            u32::from_le_bytes(m.payload().try_into().unwrap()),
            expected
        );
        expected += 1;
    }
    sender.await.unwrap();
    let s = sub.stats();
    assert_eq!((s.reconnects, s.dropped_inbox), (0, 0), "{s:?}");
    assert!(sub.is_connected());
}

#[tokio::test]
async fn idle_client_stays_connected_past_three_timeouts() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = embedded(&socket, |b| b.set_timeout(Duration::from_millis(300))).await;
    let mut c = AsyncClient::connect_with(
        &uri(&socket),
        ClientOptions {
            keepalive: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.subscribe("health.*", QoS::Processed).await.unwrap();
    let mut state = c.state();
    // busrt drops an idle client after 1.25 x 300 ms; nothing may change for 3 x 300 ms.
    assert!(
        timeout(Duration::from_millis(900), state.changed())
            .await
            .is_err(),
        "state changed: {:?}",
        *state.borrow()
    );
    c.publish("health.agent", b"still here".to_vec(), QoS::Processed)
        .await
        .unwrap();
    let m = timeout(LIMIT, c.recv()).await.unwrap().unwrap();
    assert_eq!(m.payload(), b"still here");
    assert_eq!(c.stats().reconnects, 0);
}

#[tokio::test]
async fn access_rules_are_enforced_per_client() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut config = Config::default();
    config.transport.socket_path = socket.clone();
    config.access.insert(
        "procmond".into(),
        AccessRule {
            publish: vec!["events.process.*".into()],
            subscribe: vec!["control.*".into(), "tasks.procmond.*".into()],
        },
    );
    config.access.insert(
        "agent".into(),
        AccessRule {
            publish: vec!["#".into()],
            subscribe: vec!["#".into()],
        },
    );
    let mut broker = Broker::from_config(&config).unwrap();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn().await.unwrap();
    let mut agent =
        AsyncClient::connect_with(&uri(&socket), ClientOptions::default().name("agent"))
            .await
            .unwrap();
    agent.subscribe("events.#", QoS::Processed).await.unwrap();
    let procmond =
        AsyncClient::connect_with(&uri(&socket), ClientOptions::default().name("procmond"))
            .await
            .unwrap();

    procmond
        .publish("events.process.new", b"ok".to_vec(), QoS::Processed)
        .await
        .unwrap();
    let denied = procmond
        .publish("events.network.connection", b"no".to_vec(), QoS::Processed)
        .await;
    assert!(
        matches!(denied, Err(busbridge::client::ClientError::Denied(_))),
        "{denied:?}"
    );
    procmond
        .subscribe("control.*", QoS::Processed)
        .await
        .unwrap();
    let denied = procmond.subscribe("events.#", QoS::Processed).await;
    assert!(
        matches!(denied, Err(busbridge::client::ClientError::Denied(_))),
        "{denied:?}"
    );
    let m = timeout(LIMIT, agent.recv()).await.unwrap().unwrap();
    assert_eq!(m.topic(), "events.process.new");
    assert!(
        agent.try_recv().is_none(),
        "the denied publish never arrived"
    );
    // A client the rules do not name cannot connect at all.
    assert!(
        AsyncClient::connect_with(&uri(&socket), ClientOptions::default().name("intruder"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_at_once() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = embedded(&socket, |_| {}).await;
    let connect = uri(&socket);
    let mut clients = Vec::new();
    for i in 0..100 {
        let connect = connect.clone();
        clients.push(tokio::spawn(async move {
            let c = AsyncClient::connect(&connect).await.unwrap();
            c.subscribe(&format!("results.c{i}"), QoS::Processed)
                .await
                .unwrap();
            c
        }));
    }
    let mut connected = Vec::new();
    for c in clients {
        connected.push(c.await.unwrap());
    }
    let publisher = AsyncClient::connect(&connect).await.unwrap();
    for i in 0..100 {
        publisher
            .publish(&format!("results.c{i}"), vec![i as u8], QoS::Processed)
            .await
            .unwrap();
    }
    for (i, c) in connected.iter_mut().enumerate() {
        let m = timeout(LIMIT, c.recv()).await.unwrap().unwrap();
        assert_eq!(m.payload(), &[i as u8]);
    }
}

#[tokio::test]
async fn connection_limit_holds() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut broker = Broker::new();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn_ipc_server(&socket, 3).unwrap();
    broker.spawn().await.unwrap();
    let connect = uri(&socket);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(AsyncClient::connect(&connect).await.unwrap());
    }
    assert!(
        AsyncClient::connect(&connect).await.is_err(),
        "fourth connection refused"
    );
    assert_eq!(broker.stats().await.refused_connection_limit, 1);
    assert_eq!(broker.stats().await.connections_active, 3);
    let mut first = clients.remove(0);
    first.disconnect().await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while broker.stats().await.connections_active > 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a counter, bounded
    }
    AsyncClient::connect(&connect).await.unwrap();
}

#[tokio::test]
async fn another_uid_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let dir = procs::sock_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = procs::sock_path(&dir, "b.sock");
    let broker = embedded(&socket, |_| {}).await;
    // Open the file permissions so only the peer-credential check stands in the way.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The other user runs its own copy of the binary: the checkout may live where that
    // user cannot enter (under root's 0700 home, for example).
    let bin = dir.path().join("busbridge");
    std::fs::copy(procs::BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The copy's descriptor may still be open in a child another test is forking right now
    // (it inherits it until it execs): the exec then fails with "text file busy" for a moment.
    let mut tries = 0;
    let status = loop {
        let run = tokio::process::Command::new(&bin)
            .args(["pub", "events.process.new", "x", "--connect", &uri(&socket)])
            .current_dir(dir.path())
            .uid(65534)
            .gid(65534)
            .status()
            .await;
        match run {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await; // a retry's pause
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(
        status.code(),
        Some(3),
        "connection from uid 65534 must fail"
    );
    assert_eq!(broker.stats().await.refused_peer_credentials, 1);
    // The broker's own uid still gets in.
    AsyncClient::connect(&uri(&socket)).await.unwrap();
}

/// Waits (bounded) until the broker counts `n` open connections.
async fn wait_active(broker: &Broker, n: usize) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while broker.stats().await.connections_active != n {
        assert!(tokio::time::Instant::now() < deadline, "{n} connections");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a counter, bounded
    }
}

/// Unix connections go to busrt itself, with a watching duplicate on our side: when busrt
/// closes one (here: a bad greeting), the client still reads the end of the stream, and the
/// slot is freed once the client lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_busrt_closes_ends_for_the_client_and_frees_its_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let broker = embedded(&socket, |_| {}).await;
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut greeting = [0u8; 3];
    timeout(LIMIT, raw.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    wait_active(&broker, 1).await;
    raw.write_all(&[0, 0, 0]).await.unwrap(); // not busrt's greeting
    let mut rest = Vec::new();
    timeout(LIMIT, raw.read_to_end(&mut rest))
        .await
        .expect("busrt's close reaches the client")
        .unwrap();
    assert_eq!(
        rest.len(),
        1,
        "busrt's one-byte refusal, then the end: {rest:?}"
    );
    assert_eq!(
        broker.stats().await.connections_active,
        1,
        "the client still holds it"
    );
    drop(raw);
    wait_active(&broker, 0).await;
}

/// Shutdown closes the connections that did not leave within the drain, handed to busrt or
/// not: the clients see the connection lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_force_closes_connections_left_open() {
    use tokio::io::AsyncReadExt;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let mut broker = embedded(&socket, |b| b.set_timeout(Duration::from_secs(600))).await;
    let client = AsyncClient::connect_with(&uri(&socket), fast())
        .await
        .unwrap();
    // Half-way through busrt's handshake: busrt itself would wait its 600 s timeout.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut greeting = [0u8; 3];
    raw.read_exact(&mut greeting).await.unwrap();
    wait_active(&broker, 2).await;
    broker.shutdown_within(Duration::ZERO).await;
    let mut rest = Vec::new();
    timeout(LIMIT, raw.read_to_end(&mut rest))
        .await
        .expect("force-closed")
        .unwrap();
    wait_state(&client, |s| s != ConnectionState::Connected).await;
}
