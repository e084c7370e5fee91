//! `busbridge parity`: the built-in scenarios per phase, record and replay, and a broken
//! candidate that must fail.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use common::procs::BIN;
use std::process::Command;

fn parity(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .arg("parity")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (out.status.code().unwrap(), v)
}

#[test]
fn every_phase_passes_its_parity_scenarios() {
    for phase in ["1", "2", "3"] {
        let (code, v) = parity(&["--phase", phase, "--events", "200", "--remote", "40"]);
        assert_eq!(code, 0, "phase {phase}: {v}");
        assert_eq!(v["ok"], true);
        assert!(v["local"]["compared"].as_u64().unwrap() > 200);
        if phase == "3" {
            assert!(v["rpc"]["compared"].as_u64().unwrap() > 0, "{v}");
            assert_eq!(v["rpc"]["mismatches"].as_array().unwrap().len(), 0);
        }
        if phase != "1" {
            assert!(v["remote"]["compared"].as_u64().unwrap() > 0, "{v}");
        } else {
            assert_eq!(v["shadow_remote"], 40);
        }
    }
}

#[test]
fn recorded_trace_replays_clean_on_phase_four_and_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let t = trace.to_str().unwrap();
    let (code, _) = parity(&[
        "--phase", "2", "--events", "100", "--remote", "10", "--record", t,
    ]);
    assert_eq!(code, 0);
    let (code, v) = parity(&["--replay", t]);
    assert_eq!(code, 0, "{v}");
    assert!(v["report"]["compared"].as_u64().unwrap() > 100);

    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let delivers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"deliver\"") && l.contains("\"subscriber\":\"all\""))
        .map(|(i, _)| i)
        .collect();
    let write = |name: &str, ls: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, ls.join("\n")).unwrap();
        p.to_string_lossy().into_owned()
    };
    // The control recorded one delivery fewer: the candidate has an extra event.
    let mut fewer = lines.clone();
    fewer.remove(delivers[3]);
    let (code, v) = parity(&["--replay", &write("fewer.jsonl", &fewer)]);
    assert_eq!(code, 1);
    assert_eq!(v["report"]["mismatches"][0]["kind"], "extra", "{v}");
    // The control recorded a different order.
    let mut swapped = lines.clone();
    swapped.swap(delivers[1], delivers[2]);
    let (code, v) = parity(&["--replay", &write("swapped.jsonl", &swapped)]);
    assert_eq!(code, 1);
    assert_eq!(v["report"]["mismatches"][0]["kind"], "reordered", "{v}");
    // The control recorded a delivery to a subscriber that does not receive it: missing.
    let mut more = lines.clone();
    let extra = more[delivers[0]].replace("\"subscriber\":\"all\"", "\"subscriber\":\"urgent\"");
    more.push(extra);
    let (code, v) = parity(&["--replay", &write("more.jsonl", &more)]);
    assert_eq!(code, 1);
    assert!(
        v["report"]["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "missing"),
        "{v}"
    );
    // Garbage is a clear error, not a pass.
    let out = Command::new(BIN)
        .args([
            "parity",
            "--replay",
            &write("bad.jsonl", &["{not json".to_string()]),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trace line 1"));
}

/// The user's own traffic: a recorder attached to a bus that is already running (its
/// subscribers written first), then replayed on the phase-4 path by `busbridge parity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_of_a_running_bus_replays_clean() {
    use busbridge::legacy::crossbeam::HighPerformanceEventBus;
    use busbridge::trace::Recorder;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut config = busbridge::config::Config {
        phase: busbridge::phase::Phase::Topics,
        ..Default::default()
    };
    config.transport.socket_path = dir.path().join("b.sock");
    let bridged = busbridge::bridge::Bridged::start(&config).await.unwrap();
    let bus = bridged.crossbeam(Default::default());
    let all = bus.subscribe(common::sub_all("all")).await.unwrap();
    let mut procs = common::sub_all("processes");
    procs.capabilities = busbridge::event::SourceCaps::PROCESS;
    let _only = bus.subscribe(procs).await.unwrap();
    bus.publish(common::process(1), "before".into())
        .await
        .unwrap();

    let trace = dir.path().join("trace.jsonl");
    let recorder = Arc::new(Recorder::create(&trace).unwrap());
    bridged.core().record_to(Some(recorder.clone()));
    for (i, e) in common::every_kind().into_iter().enumerate() {
        bus.publish(e, format!("c{i}")).await.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), bridged.link().settled())
        .await
        .unwrap();
    bridged.core().record_to(None);
    recorder.close().unwrap();
    assert_eq!(all.len(), 1 + common::every_kind().len());
    bridged.shutdown().await;

    let t = trace.to_str().unwrap().to_owned();
    let (code, v) = tokio::task::spawn_blocking(move || parity(&["--replay", &t]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{v}");
    // Every kind reaches `all`, the process events `processes` too.
    let kinds = common::every_kind().len() as u64;
    assert!(v["report"]["compared"].as_u64().unwrap() > kinds, "{v}");
}
