//! RPC for collector lifecycle: each operation over every transport, timeouts, concurrency,
//! panics, discovery, and phase-3 parity of the control path.
#![cfg(feature = "cli")]

use busbridge::bus::{Core, CoreOptions};
use busbridge::collector::ProcessCollector;
use busbridge::event::SourceCaps;
use busbridge::phase::Phase;
use busbridge::rpc::*;
use busbridge::Broker;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

struct Net {
    uri: String,
    _broker: Broker,
    _dir: tempfile::TempDir,
}

async fn net(kind: &str) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new();
    let name = uuid::Uuid::new_v4().to_string();
    broker.set_name(&name);
    let socket = dir.path().join("b.sock");
    broker.spawn_ipc_server(&socket, 100).unwrap();
    broker.spawn_tcp_server("127.0.0.1:0", 100).unwrap();
    broker.spawn().await.unwrap();
    let uri = match kind {
        "inproc" => format!("inproc://{name}"),
        "ipc" => format!("ipc://{}", socket.display()),
        _ => format!("tcp://{}", broker.tcp_addrs()[0]),
    };
    Net {
        uri,
        _broker: broker,
        _dir: dir,
    }
}

fn local_collector() -> Arc<ProcessCollector> {
    ProcessCollector::new(
        "procmond",
        Arc::new(Core::new(CoreOptions::default())),
        CollectorSettings::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_over_every_transport() {
    for kind in ["inproc", "ipc", "tcp"] {
        let net = net(kind).await;
        let server = RpcNode::connect(&net.uri, "procmond").await.unwrap();
        let collector = local_collector();
        serve_control(&server, collector.clone()).await.unwrap();
        let agent = Arc::new(RpcNode::connect(&net.uri, "agent").await.unwrap());
        let remote = RemoteCollector::new(agent.clone(), "procmond");

        let h = remote.health_check().await.unwrap();
        assert_eq!(
            (h.status.as_str(), h.collecting),
            ("healthy", false),
            "{kind}"
        );
        let s = remote.start_collection().await.unwrap();
        assert_eq!((s.collecting, s.changed), (true, true));
        assert!(!remote.start_collection().await.unwrap().changed);
        assert!(remote.health_check().await.unwrap().collecting);
        let s = remote.stop_collection().await.unwrap();
        assert_eq!((s.collecting, s.changed), (false, true));

        let caps = remote.get_capabilities().await.unwrap();
        assert_eq!(
            caps.capabilities,
            SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE
        );
        assert_eq!(caps.topics, vec!["events.process.new".to_string()]);
        // Capabilities follow the configuration, never a constant.
        let narrow = CollectorSettings {
            name_contains: Some("sshd".into()),
            ..Default::default()
        };
        assert_eq!(
            remote.update_config(narrow.clone()).await.unwrap().config,
            narrow
        );
        assert_eq!(
            remote.get_capabilities().await.unwrap().capabilities,
            SourceCaps::PROCESS
        );
        // A bad configuration is refused with the reason; the old one stays.
        let bad = CollectorSettings {
            interval: Duration::from_millis(1),
            ..Default::default()
        };
        let err = remote.update_config(bad).await.unwrap_err();
        assert!(
            matches!(&err, RpcCallError::InvalidParams(m) if m.contains("interval")),
            "{err:?}"
        );
        assert_eq!(
            remote.get_capabilities().await.unwrap().capabilities,
            SourceCaps::PROCESS
        );

        let bye = remote.shutdown(ShutdownRequest::default()).await.unwrap();
        assert!(bye.flushed);
        assert_eq!(remote.health_check().await.unwrap().status, "stopping");
        assert!(remote.start_collection().await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_vanished_or_silent_target_return_within_their_timeout() {
    let net = net("ipc").await;
    let mut agent = RpcNode::connect(&net.uri, "agent").await.unwrap();
    agent.set_timeout(Duration::from_millis(300));
    let gone = RpcNode::connect(&net.uri, "gone").await.unwrap();
    gone.rpc_register_raw("ping", |_| async { Ok(b"pong".to_vec()) })
        .await
        .unwrap();
    assert_eq!(
        agent.rpc_call_to("gone", "ping", vec![]).await.unwrap(),
        b"pong"
    );
    gone.close().await;
    let r = tokio::time::timeout(LIMIT, agent.rpc_call_to("gone", "ping", vec![])).await;
    let err = r.expect("returned within the call timeout").unwrap_err();
    // Depending on how far the broker got with the departure: no such target, the broker
    // could not deliver (also "no such target"), or no answer within the timeout.
    assert!(
        matches!(
            err,
            RpcCallError::NoSuchTarget(_)
                | RpcCallError::Timeout(_)
                | RpcCallError::Disconnected(_)
        ),
        "{err:?}"
    );
    // A target that never answers: the timeout ends the wait.
    let silent = RpcNode::connect(&net.uri, "silent").await.unwrap();
    silent
        .rpc_register_raw("hang", |_| async {
            std::future::pending::<()>().await;
            Ok(vec![])
        })
        .await
        .unwrap();
    let err = tokio::time::timeout(LIMIT, agent.rpc_call_to("silent", "hang", vec![]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, RpcCallError::Timeout(Duration::from_millis(300)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_calls() {
    let net = net("ipc").await;
    let server = RpcNode::connect(&net.uri, "echo").await.unwrap();
    server
        .rpc_register("double", |n: u64| async move { Ok(n * 2) })
        .await
        .unwrap();
    let agent = Arc::new(RpcNode::connect(&net.uri, "agent").await.unwrap());
    let calls: Vec<_> = (0..64u64)
        .map(|i| {
            let agent = agent.clone();
            tokio::spawn(async move { agent.call_to::<u64, u64>("echo", "double", &i).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().unwrap(), 2 * i as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_distinct_and_a_panic_does_not_kill_the_server() {
    let net = net("inproc").await;
    let server = RpcNode::connect(&net.uri, "srv").await.unwrap();
    server
        .rpc_register("boom", |_: serde_json::Value| async move {
            if true {
                panic!("handler bug");
            }
            Ok(0u8)
        })
        .await
        .unwrap();
    server
        .rpc_register("fail", |_: serde_json::Value| async move {
            Err::<u8, _>(HandlerError::Failed("disk full".into()))
        })
        .await
        .unwrap();
    server
        .rpc_register("typed", |n: u32| async move { Ok(n + 1) })
        .await
        .unwrap();
    let agent = RpcNode::connect(&net.uri, "agent").await.unwrap();
    let err = agent
        .rpc_call_to("srv", "boom", b"{}".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcCallError::Handler(m) if m.contains("handler bug")),
        "{err:?}"
    );
    let err = agent
        .rpc_call_to("srv", "fail", b"{}".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err, RpcCallError::Handler("disk full".into()));
    let err = agent
        .rpc_call_to("srv", "typed", b"\"nan\"".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, RpcCallError::InvalidParams(_)), "{err:?}");
    let err = agent
        .rpc_call_to("srv", "missing", vec![])
        .await
        .unwrap_err();
    assert_eq!(err, RpcCallError::MethodNotFound("missing".into()));
    let err = agent
        .rpc_call_to("nobody", "typed", vec![])
        .await
        .unwrap_err();
    assert_eq!(err, RpcCallError::NoSuchTarget("nobody".into()));
    // Still serving after the panic.
    assert_eq!(
        agent
            .call_to::<u32, u32>("srv", "typed", &41)
            .await
            .unwrap(),
        42
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_discovered_and_ambiguity_is_reported() {
    let net = net("ipc").await;
    let a = RpcNode::connect(&net.uri, "collector-a").await.unwrap();
    a.rpc_register("only_a", |_: serde_json::Value| async { Ok("a") })
        .await
        .unwrap();
    a.rpc_register("both", |_: serde_json::Value| async { Ok("a") })
        .await
        .unwrap();
    let b = RpcNode::connect(&net.uri, "collector-b").await.unwrap();
    b.rpc_register("both", |_: serde_json::Value| async { Ok("b") })
        .await
        .unwrap();
    // A node that arrives later learns the providers by asking.
    let mut agent = RpcNode::connect(&net.uri, "agent").await.unwrap();
    agent.set_timeout(Duration::from_secs(2));
    let who: String = agent.call("only_a", &serde_json::json!({})).await.unwrap();
    assert_eq!(who, "a");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while agent.providers("both").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            agent.providers("both")
        );
        let _ = agent.resolve("both").await;
        tokio::task::yield_now().await;
    }
    let err = agent.rpc_call("both", b"{}".to_vec()).await.unwrap_err();
    assert_eq!(
        err,
        RpcCallError::Ambiguous {
            method: "both".into(),
            providers: vec!["collector-a".into(), "collector-b".into()]
        }
    );
    assert_eq!(
        agent
            .rpc_call_to("collector-b", "both", b"{}".to_vec())
            .await
            .unwrap(),
        b"\"b\""
    );
    let err = agent.rpc_call("nobody_has_this", vec![]).await.unwrap_err();
    assert_eq!(err, RpcCallError::NoProvider("nobody_has_this".into()));
}

/// Counts the calls that reach an implementation.
struct Counting {
    inner: Arc<ProcessCollector>,
    writes: AtomicUsize,
}

#[async_trait::async_trait]
impl CollectorControl for Counting {
    async fn health_check(&self) -> Result<HealthCheckResponse, RpcCallError> {
        self.inner.health_check().await
    }
    async fn start_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.start_collection().await
    }
    async fn stop_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.stop_collection().await
    }
    async fn update_config(
        &self,
        c: CollectorSettings,
    ) -> Result<UpdateConfigResponse, RpcCallError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.update_config(c).await
    }
    async fn get_capabilities(&self) -> Result<CapabilitiesResponse, RpcCallError> {
        self.inner.get_capabilities().await
    }
    async fn shutdown(&self, r: ShutdownRequest) -> Result<ShutdownResponse, RpcCallError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.shutdown(r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_three_compares_reads_and_sends_writes_once() {
    let net = net("ipc").await;
    let collector = local_collector();
    let counted = Arc::new(Counting {
        inner: collector.clone(),
        writes: AtomicUsize::new(0),
    });
    let server = RpcNode::connect(&net.uri, "procmond").await.unwrap();
    serve_control(&server, counted.clone()).await.unwrap();
    let agent = Arc::new(RpcNode::connect(&net.uri, "agent").await.unwrap());
    let local = Arc::new(Counting {
        inner: collector,
        writes: AtomicUsize::new(0),
    });
    let phased = PhasedControl::new(
        Phase::Rpc,
        local.clone(),
        Arc::new(RemoteCollector::new(agent, "procmond")),
    );
    assert_eq!(phased.authoritative(), ControlPath::Rpc);
    phased.health_check().await.unwrap();
    phased.get_capabilities().await.unwrap();
    phased.start_collection().await.unwrap();
    phased
        .update_config(CollectorSettings::default())
        .await
        .unwrap();
    phased.health_check().await.unwrap();
    let (compared, mismatches) = phased.parity();
    assert_eq!(compared, 3);
    assert!(mismatches.is_empty(), "{mismatches:?}");
    assert_eq!(
        counted.writes.load(Ordering::SeqCst),
        2,
        "writes went over RPC once each"
    );
    assert_eq!(
        local.writes.load(Ordering::SeqCst),
        0,
        "and never in process"
    );
}
