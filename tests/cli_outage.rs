//! `busbridge pub` across a broker outage: it keeps reconnecting until its deadline, hands
//! over everything it accepted once the broker is back, and otherwise says exactly how many
//! messages it could not hand over. With `--bridged`, `pub` and `sub` deliver every event
//! exactly once, in order, across a broker killed and restarted mid-stream.

#![cfg(feature = "cli")]

mod common;

use common::procs;
use std::process::{Command, Stdio};

/// Enough that the stream is still running when the broker is killed.
const N: &str = "200000";

/// A subscriber that prints once the first message arrived: the publisher is mid-stream.
fn first_message(uri: &str) -> procs::Proc {
    procs::spawn(
        &["sub", "events.outage", "--connect", uri, "--count", "1"],
        &[],
    )
}

#[test]
fn pub_hands_everything_over_across_a_broker_restart() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let uri = format!("ipc://{}", socket.display());
    let broker = procs::broker(&socket, &[]);
    let sub = first_message(&uri);
    let mut publisher = procs::spawn(
        &[
            "pub",
            "events.outage",
            "x",
            "--connect",
            &uri,
            "--count",
            N,
            "--deadline",
            "60s",
        ],
        &[],
    );
    sub.lines_until("");
    broker.signal(libc::SIGKILL);
    drop(broker);
    let _again = procs::broker(&socket, &[]);
    assert_eq!(
        publisher.wait_exit(),
        0,
        "every message handed over after the restart"
    );
}

#[test]
fn pub_counts_what_it_could_not_hand_over_by_its_deadline() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let uri = format!("ipc://{}", socket.display());
    let broker = procs::broker(&socket, &[]);
    let sub = first_message(&uri);
    let publisher = Command::new(procs::BIN)
        .args([
            "pub",
            "events.outage",
            "x",
            "--connect",
            &uri,
            "--count",
            N,
            "--deadline",
            "2s",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sub.lines_until("");
    broker.signal(libc::SIGKILL);
    drop(broker); // and never restarted
    let out = publisher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Everything was confirmed before the kill landed: nothing to count.
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("could not be handed to the broker"))
        .unwrap_or_else(|| panic!("no count: {stderr}"));
    let n: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number: {line}"));
    assert!(n > 0 && n <= N.parse::<u64>().unwrap(), "{line}");
}

#[test]
fn bridged_pub_and_sub_deliver_every_event_once_in_order_across_a_broker_kill() {
    const EVENTS: usize = 6000;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let uri = format!("ipc://{}", socket.display());
    let mut broker = procs::broker(&socket, &[]);
    let count = EVENTS.to_string();
    let sub = procs::spawn_both(&[
        "sub",
        "--bridged",
        "events.process.#",
        "--connect",
        &uri,
        "--count",
        &count,
    ]);
    sub.wait_line("subscribed");
    // Paced (about 1.2 s of stream), so the kill below lands mid-stream.
    let mut publisher = procs::spawn(
        &[
            "pub",
            "--bridged",
            "events.process.new",
            "--connect",
            &uri,
            "--count",
            &count,
            "--rate",
            "5000",
            "--deadline",
            "60s",
        ],
        &[],
    );
    let event = |line: String| -> Option<usize> {
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        assert_eq!(v["topic"], "events.process.new", "{line}");
        Some(v["correlation_id"].as_str()?.parse().unwrap())
    };
    let mut got = Vec::with_capacity(EVENTS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while got.len() < EVENTS {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = sub
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{} of {EVENTS} events: {e}", got.len()));
        got.extend(event(line));
        if got.len() == EVENTS / 6 {
            broker.signal(libc::SIGKILL);
            broker.wait_exit();
            broker = procs::broker(&socket, &[]);
        }
    }
    assert_eq!(
        got,
        (0..EVENTS).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(publisher.wait_exit(), 0, "every event confirmed");
    drop(broker);
}
