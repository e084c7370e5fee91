//! Bridged legacy-facade programs in separate processes, through a standalone broker.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

use busbridge::event::CollectionEvent;
use busbridge::scenario::sample_events;
use common::procs;
use std::collections::HashMap;

struct Received {
    publisher: String,
    event: CollectionEvent,
}

fn parse(lines: &[String]) -> (Vec<Received>, serde_json::Value) {
    let mut events = Vec::new();
    let mut done = serde_json::Value::Null;
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v.get("done").is_some() {
            done = v;
        } else if v.get("event").is_some() {
            events.push(Received {
                publisher: v["publisher_id"].as_str().unwrap().to_owned(),
                event: serde_json::from_value(v["event"].clone()).unwrap(),
            });
        }
    }
    (events, done)
}

#[test]
fn three_bridged_processes_exchange_every_event_once_without_echoes() {
    const K: usize = 50;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let connect = format!("ipc://{}", socket.display());
    let names = ["collector-a", "collector-b", "collector-c"];
    let extra: [&[&str]; 3] = [&[], &["--codec", "json"], &["--tokio"]];
    let mut peers: Vec<procs::Proc> = names
        .iter()
        .zip(extra)
        .map(|(name, extra)| {
            let count = K.to_string();
            let expect = (K * names.len()).to_string();
            let mut args = vec![
                "peer",
                "--connect",
                &connect,
                "--name",
                name,
                "--count",
                &count,
                "--expect",
                &expect,
            ];
            args.extend_from_slice(extra);
            procs::spawn_piped(&args)
        })
        .collect();
    for p in &peers {
        p.wait_line("ready");
    }
    for p in &mut peers {
        p.say("go");
    }
    for (p, name) in peers.iter_mut().zip(names) {
        let (events, done) = parse(&p.lines_until("\"done\""));
        assert_eq!(done["done"], K * names.len(), "{name}: {done}");
        let stats = &done["stats"];
        assert_eq!(stats["bridge_duplicates"], 0, "{name}");
        assert_eq!(stats["bridge_decode_errors"], 0, "{name}");
        // Every publisher's events, every field equal, once each, in publish order.
        let mut by_publisher: HashMap<&str, Vec<&CollectionEvent>> = HashMap::new();
        for r in &events {
            by_publisher.entry(&r.publisher).or_default().push(&r.event);
        }
        assert_eq!(by_publisher.len(), names.len(), "{name}");
        for publisher in names {
            let expected = sample_events(publisher, K);
            let got: Vec<CollectionEvent> = by_publisher[publisher]
                .iter()
                .map(|e| (*e).clone())
                .collect();
            assert_eq!(got, expected, "{name} from {publisher}");
        }
        assert_eq!(p.wait_exit(), 0, "{name}");
    }
}

#[test]
fn two_bridges_with_one_name_is_a_reported_error() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let connect = format!("ipc://{}", socket.display());
    let first = procs::spawn_piped(&["peer", "--connect", &connect, "--name", "twin"]);
    first.wait_line("ready");
    let out = std::process::Command::new(procs::BIN)
        .args(["peer", "--connect", &connect, "--name", "twin"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`twin` is already in use"), "{stderr}");
}

/// A final-crossbeam (2026-04) process, a 2025-10-tokio process and a second 2026-04 process
/// on one Unix socket: each receives every event of the others, every field intact in its own
/// version's types. `hash_algorithm`, which only the 2026-04 types have, reaches the other
/// 2026-04 process whole (it travels beside the event) and is simply absent for the tokio one.
#[test]
fn buses_of_different_versions_exchange_every_field() {
    use busbridge::legacy::crossbeam_2026_04 as v2026;
    const K: usize = 30;
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let connect = format!("ipc://{}", socket.display());
    let peers_spec = [
        ("final-a", "crossbeam-2026-04"),
        ("tokio-b", "tokio-2025-10"),
        ("final-c", "crossbeam-2026-04"),
    ];
    let count = K.to_string();
    let expect = (K * peers_spec.len()).to_string();
    let mut peers: Vec<procs::Proc> = peers_spec
        .iter()
        .map(|(name, facade)| {
            procs::spawn_piped(&[
                "peer",
                "--connect",
                &connect,
                "--name",
                name,
                "--count",
                &count,
                "--expect",
                &expect,
                "--facade",
                facade,
            ])
        })
        .collect();
    for p in &peers {
        p.wait_line("ready");
    }
    for p in &mut peers {
        p.say("go");
    }
    // What a 2026-04 publisher sent: the sample events, process events naming their hash.
    let sent_2026 = |publisher: &str| -> Vec<v2026::CollectionEvent> {
        sample_events(publisher, K)
            .into_iter()
            .map(|e| {
                let mut e = v2026::CollectionEvent::from_core(e, &Default::default());
                if let v2026::CollectionEvent::Process(p) = &mut e {
                    p.hash_algorithm = p.executable_hash.as_ref().map(|_| "sha256".into());
                }
                e
            })
            .collect()
    };
    assert!(
        sent_2026("final-a").iter().any(|e| matches!(e,
            v2026::CollectionEvent::Process(p) if p.hash_algorithm.is_some())),
        "the samples exercise hash_algorithm"
    );
    for (p, (name, facade)) in peers.iter_mut().zip(peers_spec) {
        let lines = p.lines_until("\"done\"");
        let mut by_publisher: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(e) = v.get("event") {
                by_publisher
                    .entry(v["publisher_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(e.clone());
            }
        }
        assert_eq!(by_publisher.len(), peers_spec.len(), "{name}");
        for (publisher, publisher_facade) in peers_spec {
            let got = &by_publisher[publisher];
            if facade == "crossbeam-2026-04" {
                let got: Vec<v2026::CollectionEvent> = got
                    .iter()
                    .map(|e| serde_json::from_value(e.clone()).unwrap())
                    .collect();
                let want = if publisher_facade == "crossbeam-2026-04" {
                    sent_2026(publisher)
                } else {
                    sample_events(publisher, K)
                        .into_iter()
                        .map(|e| v2026::CollectionEvent::from_core(e, &Default::default()))
                        .collect()
                };
                assert_eq!(got, want, "{name} from {publisher}");
            } else {
                let got: Vec<CollectionEvent> = got
                    .iter()
                    .map(|e| serde_json::from_value(e.clone()).unwrap())
                    .collect();
                assert_eq!(got, sample_events(publisher, K), "{name} from {publisher}");
            }
        }
        assert_eq!(p.wait_exit(), 0, "{name}");
    }
}
