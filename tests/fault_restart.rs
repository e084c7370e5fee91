//! Restarts with exact end-to-end counts: a durable subscriber process (`busbridge journal`)
//! killed with SIGKILL and restarted mid-stream, and an agent process hosting the embedded
//! broker killed and restarted while its collectors keep publishing. The journal is the
//! subscriber's output and its checkpoint; at the end it must hold every published event
//! exactly once, in publish order per collector.
#![cfg(feature = "cli")]

mod common;

use busbridge::bridge::{BridgeBuilder, Bridged};
use busbridge::codec::{Codec, CodecKind, Envelope};
use busbridge::phase::Phase;
use busbridge::scenario::sample_envelope;
use common::procs::{self, Proc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Events per collector.
const PER_COLLECTOR: usize = 3000;
const COLLECTORS: usize = 2;
const TOTAL: usize = PER_COLLECTOR * COLLECTORS;

async fn collector(uri: &str, name: &str) -> Bridged {
    BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .connect(uri)
        .client_options(common::fast_client(name))
        .build()
        .await
        .unwrap()
}

fn journal(file: &Path, target: &[String]) -> Proc {
    let f = file.to_string_lossy().into_owned();
    let total = TOTAL.to_string();
    let mut args = vec!["journal", &f, "--count", &total];
    args.extend(target.iter().map(String::as_str));
    let p = procs::spawn(&args, &[]);
    p.wait_line("ready");
    p
}

/// Publishes every collector's events, a few thousand a second (one from each collector every
/// millisecond tick), while `fault` runs once a third of them are out: the collectors keep
/// publishing through the fault. Returns the collectors.
async fn stream(
    collectors: Vec<Bridged>,
    fault: impl FnOnce(&dyn Fn(usize)) + Send + 'static,
) -> Vec<Bridged> {
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..PER_COLLECTOR {
            tick.tick().await;
            for c in &collectors {
                let name = c.link().name().to_owned();
                c.core()
                    .publish(sample_envelope(&name, i, &name))
                    .await
                    .unwrap();
            }
            progress.send_replace(i + 1);
        }
        collectors
    });
    seen.wait_for(|n| *n >= PER_COLLECTOR / 3).await.unwrap();
    let rt = tokio::runtime::Handle::current();
    let progress = seen.clone();
    // Lets the fault wait until `n` more events of each collector are out.
    let wait_more = move |n: usize| {
        let mut p = progress.clone();
        let target = (*p.borrow() + n).min(PER_COLLECTOR);
        rt.block_on(p.wait_for(|i| *i >= target)).unwrap();
    };
    tokio::task::spawn_blocking(move || fault(&wait_more))
        .await
        .unwrap();
    let during = *seen.borrow();
    let collectors = publishing.await.unwrap();
    assert!(
        during > PER_COLLECTOR / 3,
        "the collectors published while the subscriber was down"
    );
    collectors
}

/// Reads the journal and checks: every event once, in publish order per collector.
fn check_journal(file: &Path, collectors: &[Bridged]) {
    let codec = Codec::new(CodecKind::Json, 1 << 20);
    let text = std::fs::read_to_string(file).unwrap();
    let envelopes: Vec<Envelope> = text
        .lines()
        .map(|l| codec.decode(l.as_bytes()).unwrap())
        .collect();
    let mut per_origin: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &envelopes {
        per_origin.entry(&e.origin).or_default().push(e.seq);
    }
    let ids: BTreeSet<&str> = envelopes.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), envelopes.len(), "no duplicates");
    assert_eq!(envelopes.len(), TOTAL, "received == published");
    for c in collectors {
        let seqs = per_origin
            .get(c.link().origin())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let expected: Vec<u64> = (1..=PER_COLLECTOR as u64).collect();
        assert_eq!(
            seqs,
            expected.as_slice(),
            "publish order of {}",
            c.link().name()
        );
    }
}

/// Starts the journal (`target` says where its broker is), then the collectors on `uri`;
/// once a third of the stream is out, freezes the journal process (so events pile up in its
/// queues and sockets), kills it with SIGKILL and starts it again on the same file, while the
/// collectors keep publishing. Returns when the journal holds every event, and checks it.
async fn restart_mid_stream(file: &Path, uri: &str, target: Vec<String>) -> Vec<Bridged> {
    let first = journal(file, &target);
    let mut collectors = Vec::new();
    for k in 0..COLLECTORS {
        collectors.push(collector(uri, &format!("procmond-{k}")).await);
    }
    let f = file.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let collectors = stream(collectors, move |wait_more| {
        let mut first = first;
        first.freeze();
        wait_more(100);
        first.signal(libc::SIGKILL);
        first.wait_exit();
        tx.send(journal(&f, &target)).unwrap();
    })
    .await;
    let mut second = rx.recv().unwrap();
    assert_eq!(second.wait_exit(), 0, "the journal filled up");
    check_journal(file, &collectors);
    collectors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_killed_and_restarted_gets_every_event_once() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let uri = format!("ipc://{}", socket.display());
    let target = vec!["--connect".to_owned(), uri.clone()];
    let collectors = restart_mid_stream(&dir.path().join("journal.jsonl"), &uri, target).await;
    let resent: u64 = collectors
        .iter()
        .map(|c| c.core().stats().snapshot().bridge_resent)
        .sum();
    assert!(resent > 0, "what the dead subscriber missed was resent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_host_restarted_under_running_collectors() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "agent.sock")
        .to_string_lossy()
        .into_owned();
    let uri = format!("ipc://{socket}");
    let target = vec!["--embedded".to_owned(), socket];
    restart_mid_stream(&dir.path().join("journal.jsonl"), &uri, target).await;
}
