//! The systemd units in `migration/systemd/`: each runs a real subcommand on a configuration
//! that is in the repository and valid, keeps its socket in the unit's `RuntimeDirectory=`,
//! restarts on failure and is ordered as documented (the uplink's spool in its state
//! directory); `systemd-analyze verify` accepts them
//! where it is installed.
#![cfg(feature = "cli")]

mod common;

use busbridge::config::Config;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `section -> key -> values` (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_owned());
            unit.entry(name.to_owned()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        let s = section.clone().expect("a key before any section");
        unit.entry(s)
            .or_default()
            .entry(k.trim().to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    unit
}

fn one<'a>(u: &'a Unit, section: &str, key: &str) -> &'a str {
    let v = u
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("[{section}] {key} missing"));
    assert_eq!(v.len(), 1, "[{section}] {key} given twice");
    &v[0]
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migration")
}

fn load(name: &str) -> Unit {
    parse(&std::fs::read_to_string(root().join("systemd").join(name)).unwrap())
}

/// The repository file a unit's `/etc/busbridge/...` configuration is installed from.
fn installed_from(etc: &str) -> PathBuf {
    let rel = etc
        .strip_prefix("/etc/busbridge/")
        .unwrap_or_else(|| panic!("{etc}: configurations live in /etc/busbridge"));
    let direct = root().join(rel);
    if direct.exists() {
        direct
    } else {
        root().join("systemd").join(rel)
    }
}

/// `ExecStart`'s subcommand and configuration (loaded), checking the binary's path.
fn exec(u: &Unit) -> (String, Option<Config>, Vec<String>) {
    let words: Vec<String> = one(u, "Service", "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(words[0], "/usr/local/bin/busbridge");
    let config = words.iter().position(|w| w == "--config").map(|i| {
        let file = installed_from(&words[i + 1]);
        Config::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    });
    (words[1].clone(), config, words[1..].to_vec())
}

/// The subcommand exists and takes every flag the unit gives it.
fn flags_exist(args: &[String]) {
    let out = std::process::Command::new(common::procs::BIN)
        .args([&args[0], "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "busbridge {} --help", args[0]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "busbridge {}: no {flag}",
            args[0]
        );
    }
}

fn socket_in_runtime_dir(u: &Unit, socket: &Path) {
    let dir = Path::new("/run").join(one(u, "Service", "RuntimeDirectory"));
    assert_eq!(socket.parent(), Some(dir.as_path()), "{}", socket.display());
    assert_eq!(one(u, "Service", "RuntimeDirectoryMode"), "0750");
}

#[test]
fn broker_unit() {
    let u = load("busbridge-broker.service");
    assert_eq!(one(&u, "Service", "User"), "busbridge");
    assert_eq!(one(&u, "Service", "Restart"), "on-failure");
    assert_eq!(one(&u, "Install", "WantedBy"), "multi-user.target");
    let (sub, config, args) = exec(&u);
    assert_eq!(sub, "broker");
    flags_exist(&args);
    let config = config.expect("--config");
    assert!(!config.broker.embedded);
    socket_in_runtime_dir(&u, &config.transport.socket_path);
    // The group the socket is shared with is the unit's.
    assert_eq!(
        config.transport.socket_group.as_deref(),
        Some(one(&u, "Service", "Group"))
    );
}

// The agent and collector units run phase 2, which a build without `legacy` refuses.
#[cfg(feature = "legacy")]
#[test]
fn agent_unit_embeds_the_broker() {
    let u = load("daemoneye-agent.service");
    assert_eq!(one(&u, "Service", "User"), "daemoneye");
    assert_eq!(one(&u, "Service", "Restart"), "on-failure");
    let (sub, config, args) = exec(&u);
    assert_eq!(sub, "agent");
    flags_exist(&args);
    let config = config.expect("--config");
    assert!(config.broker.embedded && config.client.connect.is_none());
    socket_in_runtime_dir(&u, &config.transport.socket_path);
}

#[cfg(feature = "legacy")]
#[test]
fn collector_unit_connects_where_the_agent_listens_and_is_ordered_after_it() {
    let u = load("procmond.service");
    let after = one(&u, "Unit", "After");
    assert!(
        after.contains("daemoneye-agent.service") && after.contains("busbridge-broker.service")
    );
    assert_eq!(one(&u, "Service", "Restart"), "on-failure");
    let (sub, config, args) = exec(&u);
    assert_eq!(sub, "collector");
    flags_exist(&args);
    let config = config.expect("--config");
    let (_, agent, _) = exec(&load("daemoneye-agent.service"));
    let agent = agent.unwrap();
    assert_eq!(config.phase, agent.phase, "collector and agent phases");
    assert_eq!(
        config.client.connect,
        Some(format!("ipc://{}", agent.transport.socket_path.display()))
    );
}

#[cfg(feature = "nats")]
#[test]
fn uplink_unit_spools_in_its_state_directory_and_reaches_the_broker() {
    let u = load("busbridge-uplink.service");
    let after = one(&u, "Unit", "After");
    assert!(
        after.contains("busbridge-broker.service") && after.contains("daemoneye-agent.service")
    );
    assert_eq!(one(&u, "Service", "Restart"), "on-failure");
    let (sub, config, args) = exec(&u);
    assert_eq!(sub, "uplink");
    flags_exist(&args);
    let config = config.expect("--config");
    let uplink = config.uplink.expect("[uplink]");
    // The spool outlives restarts and reboots: systemd keeps the state directory.
    assert_eq!(
        uplink.spool_path(),
        Path::new("/var/lib").join(one(&u, "Service", "StateDirectory"))
    );
    // It connects where the broker unit listens, as the user that broker lets in.
    let b = load("busbridge-broker.service");
    let (_, broker, _) = exec(&b);
    let broker = broker.unwrap();
    assert_eq!(
        config.client.connect,
        Some(format!("ipc://{}", broker.transport.socket_path.display()))
    );
    assert_eq!(one(&u, "Service", "User"), one(&b, "Service", "User"));
}

#[test]
fn systemd_analyze_verify_accepts_every_unit() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/usr/local/bin/busbridge", common::procs::BIN);
            let copy = dir.path().join(path.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            files.push(copy);
        }
    }
    assert_eq!(files.len(), 4);
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It warns (exit 0) on a bad value: any line about our files is a failure.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(".service")).collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}
