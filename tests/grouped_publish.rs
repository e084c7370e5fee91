//! `GroupedPublisher`: one acknowledgement per group of frames to a topic, against a real
//! busrt broker. Groups close at their size, at a change of topic and at the end of a burst;
//! a group cut off with its connection is sent again whole; a denied group is refused whole;
//! a group whose closing message was refused is closed on its own.

mod common;

use busbridge::client::{
    ClientError, ClientOptions, ConnectionState, GroupAck, Grouped, GroupedPublisher,
};
use busbridge::config::{AccessRule, Config};
use busbridge::topic::BusrtTopic;
use busbridge::{AsyncClient, Broker, QoS};
use common::procs;
use common::proxy::{Gate, Proxy};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

/// A broker on a socket in `dir` (its configuration tuned by `tune`), its URI, and a client
/// named `reader` subscribed to every event.
async fn broker_and_reader(
    dir: &tempfile::TempDir,
    tune: impl FnOnce(&mut Config),
    reader: &str,
) -> (Broker, String, AsyncClient) {
    let socket = procs::sock_path(dir, "b.sock");
    let mut config = Config::default();
    config.transport.socket_path = socket.clone();
    tune(&mut config);
    let mut broker = Broker::from_config(&config).unwrap();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn().await.unwrap();
    let uri = format!("ipc://{}", socket.display());
    let sub = client(&uri, reader).await;
    sub.subscribe("events.#", QoS::Processed).await.unwrap();
    (broker, uri, sub)
}

async fn client(uri: &str, name: &str) -> AsyncClient {
    AsyncClient::connect_with(uri, common::fast_client(name))
        .await
        .unwrap()
}

/// Publishes `payloads` in one burst; the acknowledgements of the groups it closed.
async fn burst(
    out: &mut GroupedPublisher,
    payloads: impl IntoIterator<Item = (BusrtTopic, u32)>,
) -> Result<Vec<GroupAck>, ClientError> {
    let mut payloads = payloads.into_iter().peekable();
    let mut acks = Vec::new();
    while let Some((topic, n)) = payloads.next() {
        let next = payloads.peek().map(|(t, _)| t);
        if let Grouped::Closed(ack) = out.publish(topic, n.to_be_bytes().to_vec(), next).await? {
            acks.push(ack);
        }
    }
    Ok(acks)
}

fn number(m: &busbridge::client::Message) -> u32 {
    u32::from_be_bytes(m.payload().try_into().unwrap())
}

#[tokio::test]
async fn groups_close_at_their_size_a_change_of_topic_and_the_end() {
    let dir = procs::sock_dir();
    let (_broker, uri, mut sub) = broker_and_reader(&dir, |_| {}, "sub").await;
    let publisher = client(&uri, "pub").await;
    let mut out = GroupedPublisher::new(publisher.publisher(), 16);
    // Runs of 100 messages, alternating between two topics: 7 groups a run (6 of 16, one of 4).
    let topics: [BusrtTopic; 2] = ["events/process/new".into(), "events/network/x".into()];
    let acks = burst(
        &mut out,
        (0..1000u32).map(|i| (topics[(i / 100) as usize % 2].clone(), i)),
    )
    .await
    .unwrap();
    assert_eq!(out.open(), 0, "the end of the burst closed the last group");
    let sizes: Vec<usize> = acks.iter().map(|a| a.messages).collect();
    let run = [16, 16, 16, 16, 16, 16, 4];
    assert_eq!(sizes, run.repeat(10));
    for a in acks {
        timeout(LIMIT, a.ack).await.unwrap().unwrap();
    }
    assert_eq!(publisher.stats().acked, 1000);
    assert_eq!(publisher.stats().published, 1000);
    for i in 0..1000 {
        let m = timeout(LIMIT, sub.recv()).await.unwrap().unwrap();
        assert_eq!(number(&m), i, "every message once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_cut_off_with_its_connection_is_sent_again_whole() {
    const N: u32 = 3000;
    let dir = procs::sock_dir();
    let (_broker, _, mut sub) = broker_and_reader(&dir, |_| {}, "sub").await;
    // The publisher reaches the broker through a gate that the test closes mid-stream, cutting
    // its connection with frames of an open group written and unacknowledged.
    let socket = procs::sock_path(&dir, "b.sock");
    let gate = Proxy::unix(dir.path().join("gate.sock"), socket);
    let mut publisher = AsyncClient::connect_with(
        &gate.listen,
        ClientOptions {
            outbox_capacity: N as usize,
            ..common::fast_client("pub")
        },
    )
    .await
    .unwrap();
    let mut out = GroupedPublisher::new(publisher.publisher(), 64);
    let topic = BusrtTopic::from("events/process/new");
    let mut acks = Vec::new();
    for i in 0..N {
        if i == 1000 {
            gate.set(Gate::Closed);
            let mut state = publisher.state();
            timeout(
                LIMIT,
                state.wait_for(|s| matches!(s, ConnectionState::Reconnecting(_))),
            )
            .await
            .expect("the cut was noticed")
            .unwrap();
        }
        if i == 2000 {
            gate.set(Gate::Open);
        }
        let next = (i + 1 < N).then_some(&topic);
        let sent = out.publish(topic.clone(), i.to_be_bytes().to_vec(), next);
        if let Grouped::Closed(a) = sent.await.unwrap() {
            acks.push(a);
        }
    }
    let mut confirmed = 0;
    for a in acks {
        // A failed group went back to the outbox: its acknowledgement still succeeds.
        timeout(LIMIT, a.ack).await.unwrap().unwrap();
        confirmed += a.messages;
    }
    timeout(LIMIT, publisher.disconnect_within(LIMIT))
        .await
        .unwrap()
        .expect("the outbox handed over");
    let mut seen = BTreeSet::new();
    while seen.len() < N as usize {
        let m = timeout(LIMIT, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {N} arrived", seen.len()))
            .unwrap();
        seen.insert(number(&m));
    }
    let stats = publisher.stats();
    assert!(confirmed < N as usize, "some went through the outbox");
    assert!(stats.outbox_resent > 0, "{stats:?}");
    assert_eq!(stats.outbox_dropped, 0, "{stats:?}");
}

#[tokio::test]
async fn a_denied_group_is_refused_whole() {
    let dir = procs::sock_dir();
    let rules = |c: &mut Config| {
        c.access.insert(
            "procmond".into(),
            AccessRule {
                publish: vec!["events.process.*".into()],
                subscribe: vec![],
            },
        );
        c.access.insert(
            "agent".into(),
            AccessRule {
                publish: vec![],
                subscribe: vec!["#".into()],
            },
        );
    };
    let (_broker, uri, mut agent) = broker_and_reader(&dir, rules, "agent").await;
    let procmond = client(&uri, "procmond").await;
    let mut out = GroupedPublisher::new(procmond.publisher(), 4);
    let denied = BusrtTopic::from("events/network/x");
    let allowed = BusrtTopic::from("events/process/new");
    let acks = burst(
        &mut out,
        (0..10u32)
            .map(|i| (denied.clone(), i))
            .chain((10..15).map(|i| (allowed.clone(), i))),
    )
    .await
    .unwrap();
    let mut outcome = Vec::new();
    for a in acks {
        let r = timeout(LIMIT, a.ack).await.unwrap();
        outcome.push((a.messages, matches!(r, Err(ClientError::Denied(_)))));
    }
    assert_eq!(
        outcome,
        [(4, true), (4, true), (2, true), (4, false), (1, false)]
    );
    for i in 10..15 {
        let m = timeout(LIMIT, agent.recv()).await.unwrap().unwrap();
        assert_eq!(number(&m), i, "only the allowed topic's messages arrive");
    }
    assert!(agent.try_recv().is_none());
    assert_eq!(procmond.stats().acked, 5);
}

/// The message that was to close a group is refused (too large): the group, written and
/// waiting for an acknowledgement, is closed on its own and every message in it arrives.
#[tokio::test]
async fn an_open_group_closes_without_a_message_of_its_own() {
    let dir = procs::sock_dir();
    let (_broker, uri, mut sub) = broker_and_reader(&dir, |_| {}, "sub").await;
    let publisher = client(&uri, "pub").await;
    let mut out = GroupedPublisher::new(publisher.publisher(), 64);
    let topic: BusrtTopic = "events/process/new".into();
    for i in 0..10u32 {
        let r = out.publish(topic.clone(), i.to_be_bytes().to_vec(), Some(&topic));
        assert!(matches!(r.await.unwrap(), Grouped::Open));
    }
    let huge = vec![0u8; publisher.max_message_size() + 1];
    let refused = out.publish(topic.clone(), huge, None).await;
    assert!(matches!(refused, Err(ClientError::TooLarge { .. })));
    assert_eq!(out.open(), 10, "the refused message leaves the group open");
    let Some(Grouped::Closed(group)) = out.close().await.unwrap() else {
        panic!("the group closes");
    };
    assert_eq!(group.messages, 10);
    timeout(LIMIT, group.ack).await.unwrap().unwrap();
    assert!(out.close().await.unwrap().is_none(), "nothing left open");
    let mut got = Vec::new();
    while got.len() < 10 {
        got.push(number(&timeout(LIMIT, sub.recv()).await.unwrap().unwrap()));
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(publisher.stats().acked, 10);
}
