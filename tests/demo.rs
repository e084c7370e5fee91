//! The README's first command, as a user runs it.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

#[test]
fn demo_runs_every_phase_and_parity_holds() {
    let out = std::process::Command::new(common::procs::BIN)
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(
        phases
            .iter()
            .map(|p| p["phase"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for p in phases {
        let processes = p["published"]["processes"].as_u64().unwrap();
        assert!(processes > 0);
        assert_eq!(p["received"]["all-processes"].as_u64().unwrap(), processes);
        if p["phase"] != 0 {
            assert_eq!(p["external_subscriber"].as_u64().unwrap(), processes);
            assert_eq!(p["parity"]["mismatches"], 0);
        }
        if p["phase"] == 3 {
            assert!(p["rpc_parity"]["compared"].as_u64().unwrap() > 0);
            assert_eq!(p["rpc_parity"]["mismatches"], 0);
        }
    }
    // Phase 5: a task to the collector process, answered and correlated.
    let task = &v["phase5_task"];
    assert_eq!(task["collector"], "procmond-1", "{task}");
    assert_eq!(task["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(task["hash_matches"], true);
    assert_eq!(task["event_correlated"], true);
}
