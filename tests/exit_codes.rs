//! The exit codes the README states: 2 for bad arguments or configuration, 3 for a broker that
//! cannot be reached, for every command they apply to.

#![cfg(feature = "cli")]

mod common;

use common::procs;
use std::process::Command;

fn code(args: &[&str]) -> Option<i32> {
    let out = Command::new(procs::BIN).args(args).output().unwrap();
    out.status.code()
}

#[test]
fn bad_configuration_exits_2_for_every_command_that_reads_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[bus]\nbatch_max = 0\n").unwrap();
    let bad = bad.to_str().unwrap();
    let socket = dir.path().join("x.sock");
    let connect = format!("ipc://{}", socket.display());
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["check-config", bad],
        vec!["broker", "--config", bad],
        vec!["collector", "--config", bad, "--connect", &connect],
        vec!["agent", "--config", bad],
    ];
    if cfg!(feature = "legacy") {
        commands.push(vec!["parity", "--phase", "1", "--config", bad]);
    }
    for args in commands {
        assert_eq!(code(&args), Some(2), "{args:?}");
    }
    // Valid TOML, but a setting the broker cannot apply here: still the configuration's fault.
    let group = dir.path().join("group.toml");
    std::fs::write(
        &group,
        format!(
            "[transport]\nsocket_path = \"{}\"\nsocket_group = \"no-such-group-busbridge\"\n",
            dir.path().join("g/s.sock").display()
        ),
    )
    .unwrap();
    let group = group.to_str().unwrap();
    for args in [
        vec!["broker", "--config", group],
        vec!["agent", "--config", group],
    ] {
        assert_eq!(code(&args), Some(2), "{args:?}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        vec!["pub"],
        vec!["no-such-command"],
        vec!["collector", "--connect", "gopher://x"],
        vec!["pub", "events.process.new", "x", "--connect", "gopher://x"],
    ] {
        assert_eq!(code(&args), Some(2), "{args:?}");
    }
}

#[test]
fn an_unreachable_broker_exits_3_for_one_shot_commands() {
    let dir = tempfile::tempdir().unwrap();
    let connect = format!("ipc://{}", dir.path().join("nobody.sock").display());
    for args in [
        vec!["pub", "events.process.new", "x", "--connect", &connect],
        vec!["sub", "events.#", "--connect", &connect, "--count", "1"],
        vec!["rpc", "-", "health_check", "--connect", &connect],
    ] {
        assert_eq!(code(&args), Some(3), "{args:?}");
    }
}

/// `sub … | head -n 1`: once its reader has gone, `sub` stops and exits 0, plain and bridged
/// (it used to panic on the closed pipe).
#[test]
fn sub_exits_0_when_its_reader_goes_away() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let uri = format!("ipc://{}", socket.display());
    let _broker = procs::broker(&socket, &[]);
    for bridged in [false, true] {
        let mut args = vec!["sub", "events.#", "--connect", &uri];
        if bridged {
            args.push("--bridged");
        }
        let mut sub = Command::new(procs::BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(sub.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("subscribed") {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "sub ended early");
        }
        drop(sub.stdout.take()); // the reader goes away
        let mut publish = vec!["pub", "events.process.new", "--connect", &uri];
        publish.extend(if bridged {
            ["--bridged", "--count", "3", "--linger", "600ms"]
        } else {
            ["x", "--count", "3", "--qos", "processed"]
        });
        assert_eq!(code(&publish), Some(0), "{publish:?}");
        // Its stdout is already closed: a `Proc` with no lines, for its bounded wait.
        let mut sub = procs::Proc {
            child: sub,
            lines: std::sync::mpsc::channel().1,
        };
        let code = sub.wait_exit();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        assert_eq!(code, 0, "bridged: {bridged}; stderr: {rest}");
    }
}

/// `--log-format json`: one JSON object a line, with the span an event happened in and its
/// client and endpoint fields.
#[test]
fn log_format_json_carries_spans_and_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("ipc://{}", dir.path().join("absent.sock").display());
    let out = Command::new(procs::BIN)
        .args([
            "--log-format",
            "json",
            "pub",
            "events.x",
            "y",
            "--connect",
            &uri,
        ])
        .env("RUST_LOG", "busbridge=debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["span"]["name"] == "connect")
        .unwrap_or_else(|| panic!("no JSON line in the connect span: {stderr}"));
    assert_eq!(line["span"]["endpoint"], uri.as_str());
    assert!(line["span"]["client"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
}
