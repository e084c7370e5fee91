//! Every example configuration in `migration/` loads, validates and names its phase.
#![cfg(feature = "cli")]

mod common;

use busbridge::config::Config;
use busbridge::phase::Phase;

#[test]
fn the_fleet_example_loads_with_its_uplink() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    let config = Config::load(root.join("fleet.toml")).unwrap();
    let uplink = config.uplink.expect("an [uplink] section");
    assert_eq!(
        uplink.subject("events.process.new"),
        "busbridge.web-01.events.process.new"
    );
    assert_eq!(uplink.stream_subjects(), ["busbridge.*.events.>"]);
    assert!(uplink.tls.is_some() && !uplink.create_stream);
    assert!(root.join("fleet.md").exists());
}

#[test]
fn every_phase_example_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    for n in 0..=5u8 {
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
        // A collector runs its bridge and its RPC server as two connections; its bridge has a
        // local subscriber (so it subscribes to the event roots), as a collector taking
        // triggers does.
        let collector = bridge("procmond.events")
            .await
            .unwrap_or_else(|e| panic!("phase-{n}.toml refuses a bridged procmond: {e}"));
        let at_collector = collector
            .crossbeam(Default::default())
            .subscribe(common::sub_all("triggers"))
            .await
            .unwrap_or_else(|e| panic!("phase-{n}.toml: the collector cannot subscribe: {e}"));
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
        agent
            .crossbeam(Default::default())
            .publish(
                common::trigger(7, busbridge::event::TriggerPriority::High),
                "t".into(),
            )
            .await
            .unwrap();
        let got = tokio::task::spawn_blocking(move || loop {
            // The collector's own event comes back to its subscriber too; wait for the trigger.
            let e = at_collector.recv_timeout(Duration::from_secs(10))?;
            if e.correlation_id == "t" {
                return Ok::<_, crossbeam_channel::RecvTimeoutError>(e);
            }
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("phase-{n}: the collector got no trigger: {e}"));
        assert_eq!(got.correlation_id, "t");
        {
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

/// The agent and collector example configurations, used as given (only the socket moved to a
/// temp dir) by separate `busbridge agent` and `busbridge collector` processes: the collector
/// starts first and waits; the agent starts it over RPC and receives its events.
#[test]
fn example_agent_and_collector_processes_work_together() {
    use common::procs;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    for n in 2..=4u8 {
        if Phase::try_from(n).unwrap().check_build().is_err() {
            continue;
        }
        let dir = procs::sock_dir();
        let socket = dir.path().join("run/agent.sock");
        let mut agent = Config::load(root.join(format!("phase-{n}.toml"))).unwrap();
        agent.transport.socket_path = socket.clone();
        let mut collector = Config::load(root.join(format!("collector/phase-{n}.toml"))).unwrap();
        assert_eq!(collector.phase, agent.phase, "phase {n}");
        assert_eq!(
            collector.client.connect.as_deref(),
            Some(
                format!(
                    "ipc://{}",
                    Config::load(root.join(format!("phase-{n}.toml")))
                        .unwrap()
                        .transport
                        .socket_path
                        .display()
                )
                .as_str()
            ),
            "phase {n}: the collector connects where the agent listens"
        );
        collector.client.connect = Some(format!("ipc://{}", socket.display()));
        let (agent_file, collector_file) = (
            dir.path().join("agent.toml"),
            dir.path().join("collector.toml"),
        );
        std::fs::write(&agent_file, agent.to_toml()).unwrap();
        std::fs::write(&collector_file, collector.to_toml()).unwrap();

        // Started first: it waits for the agent's broker.
        let mut c = procs::spawn(
            &[
                "collector",
                "--config",
                collector_file.to_str().unwrap(),
                "--interval",
                "100ms",
            ],
            &[],
        );
        let a = procs::spawn(
            &[
                "agent",
                "--config",
                agent_file.to_str().unwrap(),
                "--collector",
                "procmond",
                "--count",
                "1",
            ],
            &[],
        );
        c.wait_line("ready"); // once the agent's broker is there
        let lines = a.lines_until("\"stopped\"");
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(
            parsed.iter().any(|v| v["started"] == "procmond"),
            "phase {n}: the agent did not start the collector: {lines:?}"
        );
        let event = parsed
            .iter()
            .find(|v| v.get("event").is_some())
            .unwrap_or_else(|| panic!("phase {n}: no event: {lines:?}"));
        assert!(
            event["correlation_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("procmond-scan-")),
            "phase {n}: {event}"
        );
        c.signal(libc::SIGTERM);
        assert_eq!(c.wait_exit(), 0, "phase {n}: collector exit");
    }
}

#[cfg(feature = "legacy")]
#[test]
fn a_collector_refuses_phase_0_with_the_reason() {
    let dir = common::procs::sock_dir();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "phase = 0\n[broker]\nembedded = false\n").unwrap();
    let out = std::process::Command::new(common::procs::BIN)
        .args(["collector", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("phase 1 or later"));
}
