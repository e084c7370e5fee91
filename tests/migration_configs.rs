//! Every example configuration in `migration/` loads, validates and names its phase.
#![cfg(feature = "cli")]

mod common;

use busbridge::config::Config;
use busbridge::phase::Phase;

#[test]
fn every_phase_example_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    for n in 0..=4u8 {
        let path = root.join(format!("phase-{n}.toml"));
        let phase = Phase::try_from(n).unwrap();
        match Config::load(&path) {
            Ok(c) => assert_eq!(c.phase, phase, "{}", path.display()),
            Err(e) => {
                assert!(phase.check_build().is_err(), "{}: {e}", path.display());
            }
        }
        assert!(root.join(format!("phase-{n}.md")).exists());
        if phase.check_build().is_ok() {
            let out = std::process::Command::new(common::procs::BIN)
                .arg("check-config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("phase = {n}")));
        }
    }
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[broker]\ntimeout = \"fast\"\n").unwrap();
    let out = std::process::Command::new(common::procs::BIN)
        .arg("check-config")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
}

/// The access rules of the phase-2 and phase-3 examples let a bridged collector do what a
/// bridge does (publish its events, answer resend requests and hellos, send heartbeats), the
/// agent receives its events, and in phase 3 the agent calls the collector over RPC.
#[cfg(feature = "legacy")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_access_rules_admit_a_bridged_collector() {
    use busbridge::bridge::BridgeBuilder;
    use busbridge::client::ClientOptions;
    use busbridge::legacy::crossbeam::HighPerformanceEventBus;
    use busbridge::Broker;
    use std::time::Duration;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    for n in [2u8, 3] {
        let dir = common::procs::sock_dir();
        let mut config = Config::load(root.join(format!("phase-{n}.toml"))).unwrap();
        config.transport.socket_path = dir.path().join("agent.sock");
        let mut broker = Broker::from_config(&config).unwrap();
        broker.set_name(format!("migration-{n}"));
        broker.spawn().await.unwrap();
        let uri = format!("ipc://{}", config.transport.socket_path.display());
        let bridge = |name: &str| {
            BridgeBuilder::new()
                .phase(config.phase)
                .connect(&uri)
                .client_options(ClientOptions::default().name(name))
                .build()
        };
        let agent = bridge("daemoneye-agent").await.unwrap();
        // Phase 3 collectors run their bridge and their RPC server as two connections.
        let events_name = if n == 3 {
            "procmond.events"
        } else {
            "procmond"
        };
        let collector = bridge(events_name)
            .await
            .unwrap_or_else(|e| panic!("phase-{n}.toml refuses a bridged procmond: {e}"));
        let rx = agent
            .crossbeam(Default::default())
            .subscribe(common::sub_all("all"))
            .await
            .unwrap();
        collector
            .crossbeam(Default::default())
            .publish(common::process(42), "c".into())
            .await
            .unwrap();
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("phase-{n}: the agent got nothing: {e}"));
        assert_eq!(got.correlation_id, "c");
        if n == 3 {
            use busbridge::rpc::{HealthCheckRequest, HealthCheckResponse, RpcNode};
            let server = RpcNode::connect(&uri, "procmond").await.unwrap();
            server
                .rpc_register("health_check", |_: HealthCheckRequest| async move {
                    Ok(HealthCheckResponse {
                        status: "healthy".into(),
                        ..Default::default()
                    })
                })
                .await
                .unwrap();
            let client = RpcNode::connect(&uri, "daemoneye-agent.rpc").await.unwrap();
            let reply: HealthCheckResponse = client
                .call("health_check", &HealthCheckRequest {})
                .await
                .unwrap();
            assert_eq!(reply.status, "healthy");
            client.close().await;
            server.close().await;
        }
        collector.shutdown().await;
        agent.shutdown().await;
        broker.shutdown().await;
    }
}
