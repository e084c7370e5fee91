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
