//! Every example configuration in `migration/` loads, validates and names its phase.

mod common;

use busbridge::config::Config;
use busbridge::phase::Phase;

#[test]
fn every_phase_example_loads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration");
    for n in 1..=4u8 {
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
