//! `transport.socket_group` / `transport.socket_mode`: the socket and its directory get the
//! group and mode, and the broker still checks every peer's uid against `allowed_uids`.
#![cfg(feature = "cli")]

mod common;

use busbridge::config::Config;
use busbridge::Broker;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

// SAFETY (both): no preconditions, cannot fail.
fn egid() -> u32 {
    unsafe { libc::getegid() }
}
fn euid() -> u32 {
    unsafe { libc::geteuid() }
}

fn config(socket: &Path, group: Option<String>, uids: Vec<u32>) -> Config {
    let mut c = Config::default();
    c.transport.socket_path = socket.to_owned();
    c.transport.socket_group = group;
    c.transport.allowed_uids = uids;
    c.validate().unwrap();
    c
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

#[tokio::test]
async fn socket_and_directory_get_the_group_and_mode() {
    let dir = common::procs::sock_dir();
    let socket = dir.path().join("run/busbridge/agent.sock");
    let mut broker =
        Broker::from_config(&config(&socket, Some(egid().to_string()), vec![])).unwrap();
    broker.set_name("socket-access-group");
    broker.spawn().await.unwrap();
    let run = socket.parent().unwrap();
    assert_eq!(mode(run), 0o750, "directory mode");
    assert_eq!(std::fs::metadata(run).unwrap().gid(), egid());
    assert_eq!(mode(&socket), 0o660, "socket mode");
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), egid());
    broker.shutdown().await;

    // Without a group: private, as before.
    let socket = dir.path().join("private/agent.sock");
    let mut broker = Broker::from_config(&config(&socket, None, vec![])).unwrap();
    broker.set_name("socket-access-private");
    broker.spawn().await.unwrap();
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_directory_the_group_cannot_enter_is_refused_with_the_fix() {
    let dir = common::procs::sock_dir();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut broker = Broker::from_config(&config(
        &run.join("agent.sock"),
        Some(egid().to_string()),
        vec![],
    ))
    .unwrap();
    broker.set_name("socket-access-refused");
    let e = broker.spawn().await.unwrap_err().to_string();
    assert!(e.contains("0750"), "{e}");
}

#[test]
fn bad_modes_name_the_key() {
    for (toml, why) in [
        ("socket_mode = \"0666\"", "others"),
        ("socket_mode = \"0660\"", "group"),
        ("socket_mode = \"0400\"", "owner"),
        ("socket_mode = \"rw\"", "octal"),
    ] {
        let e = Config::from_toml_str(&format!("[transport]\n{toml}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("transport.socket_mode") && e.contains(why),
            "{e}"
        );
    }
    let c =
        Config::from_toml_str("[transport]\nsocket_group = \"0\"\nsocket_mode = \"0640\"").unwrap();
    assert_eq!(c.transport.socket_mode.as_deref(), Some("0640"));
}

#[tokio::test]
async fn an_unknown_group_is_named() {
    let dir = common::procs::sock_dir();
    let mut broker = Broker::from_config(&config(
        &dir.path().join("s.sock"),
        Some("no-such-group-busbridge".into()),
        vec![],
    ))
    .unwrap();
    let e = broker.spawn().await.unwrap_err().to_string();
    assert!(e.contains("no-such-group-busbridge"), "{e}");
}

/// `busbridge pub` run as another user (uid/gid 65534): what the file system and the uid
/// check each decide. Needs root to switch users; skipped (and says so) otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_needs_both_the_group_and_an_allowed_uid() {
    const NOBODY: u32 = 65534;
    if euid() != 0 {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let as_nobody = |args: &[&str]| {
        Command::new(common::procs::BIN)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
    };
    match as_nobody(&["--version"]) {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("skipped: uid {NOBODY} cannot run the test binary here: {other:?}");
            return;
        }
    }
    let dir = common::procs::sock_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cases = [
        // (group, allowed uids, publish succeeds, refused by the uid check)
        (Some(NOBODY.to_string()), vec![NOBODY], true, 0),
        (Some(NOBODY.to_string()), vec![], false, 1),
        (None, vec![NOBODY], false, 0), // the file system stops it first
    ];
    for (i, (group, uids, ok, refused)) in cases.into_iter().enumerate() {
        let socket = dir.path().join(format!("run{i}/agent.sock"));
        let mut broker = Broker::from_config(&config(&socket, group.clone(), uids)).unwrap();
        broker.set_name(format!("socket-access-{i}"));
        broker.spawn().await.unwrap();
        let uri = format!("ipc://{}", socket.display());
        let out = tokio::task::spawn_blocking(move || {
            as_nobody(&["pub", "events.test", "x", "--connect", &uri]).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "case {i} ({group:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !ok {
            assert_eq!(
                out.status.code(),
                Some(3),
                "case {i}: unreachable is exit 3"
            );
        }
        assert_eq!(
            broker.stats().await.refused_peer_credentials,
            refused,
            "case {i}"
        );
        broker.shutdown().await;
    }
}
