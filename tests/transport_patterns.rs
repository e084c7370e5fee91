//! The integration patterns, written as users wrote them, against the real busrt broker.

use busbridge::client::{ClientOptions, ConnectionState};
use busbridge::{connect_with_retry, AsyncClient, Broker, QoS};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn sock(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn embedded_broker_ipc_pubsub_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir, "daemoneye.sock");
    let mut broker = Broker::new();
    broker.set_name(unique_name("b"));
    broker.spawn_ipc_server(&path, 100).unwrap();
    broker.set_timeout(Duration::from_secs(30));
    broker.spawn().await.unwrap();

    let mut sub = AsyncClient::connect(&format!("ipc://{path}"))
        .await
        .unwrap();
    sub.subscribe("events.process.*", QoS::Processed)
        .await
        .unwrap();
    let publisher = connect_with_retry(&format!("ipc://{path}"), 3)
        .await
        .unwrap();
    publisher
        .publish("events.process.new", b"hello".to_vec(), QoS::Processed)
        .await
        .unwrap();
    publisher
        .publish(
            "events.network.connection",
            b"not for you".to_vec(),
            QoS::Processed,
        )
        .await
        .unwrap();
    publisher
        .publish("events.process.exit", b"bye".to_vec(), QoS::Realtime)
        .await
        .unwrap();
    let m = timeout(LIMIT, sub.recv()).await.unwrap().unwrap();
    assert_eq!(
        (m.topic(), m.payload()),
        ("events.process.new", &b"hello"[..])
    );
    assert_eq!(m.sender(), publisher.name());
    let m = timeout(LIMIT, sub.recv()).await.unwrap().unwrap();
    assert_eq!(
        (m.topic(), m.payload()),
        ("events.process.exit", &b"bye"[..])
    );
    timeout(Duration::from_secs(5), sub.disconnect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*sub.state().borrow(), ConnectionState::Closed);

    // Socket 0600, directory 0700 not required for a tempdir, but never group/other-writable.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    broker.shutdown().await;
    assert!(
        !std::path::Path::new(&path).exists(),
        "socket removed on shutdown"
    );
}

#[tokio::test]
async fn inproc_and_tcp_clients_share_the_broker() {
    let name = unique_name("inproc");
    let mut broker = Broker::new();
    broker.set_name(&name);
    broker.spawn_tcp_server("127.0.0.1:0", 10).unwrap();
    broker.spawn().await.unwrap();
    let addr = broker.tcp_addrs()[0];

    let mut local = AsyncClient::connect(&format!("inproc://{name}"))
        .await
        .unwrap();
    local.subscribe("health.#", QoS::Processed).await.unwrap();
    let remote = AsyncClient::connect(&format!("tcp://{addr}"))
        .await
        .unwrap();
    remote
        .publish("health.procmond.status", b"ok".to_vec(), QoS::Processed)
        .await
        .unwrap();
    let m = timeout(LIMIT, local.recv()).await.unwrap().unwrap();
    assert_eq!(
        (m.topic(), m.payload()),
        ("health.procmond.status", &b"ok"[..])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let name = unique_name("bad");
    let mut broker = Broker::new();
    broker.set_name(&name);
    broker.spawn().await.unwrap();
    let c = AsyncClient::connect_with(
        &format!("inproc://{name}"),
        ClientOptions {
            max_message_size: 16,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        c.publish("events..x", vec![], QoS::Realtime).await,
        Err(busbridge::client::ClientError::Topic(_))
    ));
    assert!(matches!(
        c.publish("events.x", vec![0; 17], QoS::Realtime).await,
        Err(busbridge::client::ClientError::TooLarge {
            size: 17,
            limit: 16
        })
    ));
    assert!(matches!(
        AsyncClient::connect("daemoneye.sock").await,
        Err(busbridge::client::ClientError::Endpoint(_))
    ));
    assert!(AsyncClient::connect("inproc://nobody-here").await.is_err());
    broker.shutdown().await;
}
