//! The bridge protocol without a broker: simulated bridges on a simulated clock exchange
//! frames through a simulated broker that loses, duplicates and reorders them. No socket, no
//! tokio, no wall clock; every randomized case is reproducible from its seed.

use busbridge::bridge::protocol::{
    Delivery, Output, Protocol, Settings, Transmit, HELLO_TOPIC, RESEND_TOPIC,
};
use busbridge::codec::{Codec, Envelope};
use busbridge::event::{CollectionEvent, PerformanceEvent};
use busbridge::phase::Phase;
use busbridge::stats::{Stats, StatsSnapshot};
use busbridge::topic::topic_for_event;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GAP_WAIT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(500);

fn event(publisher: &str, i: usize) -> Envelope {
    let mut env = Envelope::new(
        CollectionEvent::Performance(PerformanceEvent {
            metric_name: format!("m{i}"),
            value: i as f64,
            unit: "n".into(),
            pid: Some(i as u32),
            component: publisher.into(),
            timestamp: std::time::SystemTime::UNIX_EPOCH,
        }),
        "corr",
        publisher,
    );
    env.event_id = format!("{publisher}-{i}");
    env
}

/// One frame on its way from the broker to one bridge.
#[derive(Clone)]
struct Frame {
    to: usize,
    topic: String,
    sender: String,
    payload: Vec<u8>,
    /// A first transmission of events (the kind a broker fault loses).
    events: bool,
}

struct Node {
    name: String,
    proto: Protocol,
    stats: Arc<Stats>,
    phase: Phase,
    /// The bus has a local subscriber (so the bridge listens).
    listening: bool,
    /// The bus has a local subscriber when it publishes (else its returns owe nothing and
    /// are taken in undecoded).
    subscribed: bool,
    /// What the local subscriber got: event ids, in order.
    local: Vec<String>,
    /// Remote events delivered: (origin, seq), in order.
    remote: Vec<(String, u64)>,
    published: usize,
}

#[derive(Clone, Copy)]
struct Faults {
    loss: f64,
    dup: f64,
    reorder: bool,
    /// Control messages and resends may be lost too.
    lose_everything: bool,
}

const RELIABLE: Faults = Faults {
    loss: 0.0,
    dup: 0.0,
    reorder: false,
    lose_everything: false,
};

struct Sim {
    nodes: Vec<Node>,
    net: Vec<Frame>,
    now: Instant,
    rng: StdRng,
    faults: Faults,
    codec: Codec,
}

impl Sim {
    fn new(n: usize, seed: u64, faults: Faults) -> Self {
        let mut sim = Self {
            nodes: Vec::new(),
            net: Vec::new(),
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            faults,
            codec: Codec::default(),
        };
        for i in 0..n {
            sim.add(&format!("bridge-{i}"), None);
        }
        sim
    }

    fn add(&mut self, name: &str, resume: Option<Vec<(String, u64)>>) -> usize {
        let stats = Arc::new(Stats::default());
        let settings = Settings {
            origin: format!("{name}#origin"),
            name: name.into(),
            codec: self.codec,
            hop_limit: 8,
            gap_wait: GAP_WAIT,
            heartbeat: HEARTBEAT,
            replay: 100_000,
            resume,
        };
        self.nodes.push(Node {
            name: name.into(),
            proto: Protocol::new(settings, stats.clone()),
            stats,
            phase: Phase::Topics,
            listening: false,
            subscribed: true,
            local: Vec::new(),
            remote: Vec::new(),
            published: 0,
        });
        self.nodes.len() - 1
    }

    fn listen(&mut self, i: usize) {
        self.nodes[i].listening = true;
        if let Some(hello) = self.nodes[i].proto.listening() {
            self.broadcast(i, HELLO_TOPIC, hello, false);
        }
    }

    /// The broker: a frame goes to every bridge subscribed to its topic.
    fn broadcast(&mut self, from: usize, topic: &str, payload: Vec<u8>, events: bool) {
        let sender = self.nodes[from].name.clone();
        for to in 0..self.nodes.len() {
            // Resend requests and hellos are subscribed at build; the rest from listening on.
            let subscribed =
                topic == RESEND_TOPIC || topic == HELLO_TOPIC || self.nodes[to].listening;
            if subscribed {
                self.net.push(Frame {
                    to,
                    topic: topic.to_owned(),
                    sender: sender.clone(),
                    payload: payload.clone(),
                    events,
                });
            }
        }
    }

    fn publish(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut env = event(&n.name, n.published);
        n.published += 1;
        let route = n.proto.publish(n.phase, false, n.subscribed, &mut env);
        if route.deliver_now && n.listening {
            n.local.push(env.event_id.clone());
        }
        if route.send {
            let frame = self.codec.encode(&env).unwrap();
            let topic = topic_for_event(&env.event).to_busrt();
            n.proto
                .remember(env.seq, topic.clone().into(), frame.clone().into());
            n.proto.handed(env.seq, self.now);
            n.proto.confirmed(env.seq);
            self.broadcast(i, &topic, frame, true);
        }
    }

    /// Carries out what node `i`'s protocol asks for.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].proto.poll() {
            match out {
                Output::Deliver(
                    Delivery::Returned { env, owed } | Delivery::Refused { env, owed },
                ) => {
                    let n = &mut self.nodes[i];
                    if owed.deliver {
                        n.local.push(env.event_id.clone());
                    }
                    n.proto.settle(env.seq);
                }
                Output::Deliver(Delivery::Remote(env)) => {
                    self.nodes[i].remote.push((env.origin.clone(), env.seq));
                }
                Output::Deliver(Delivery::Settle(seq)) => self.nodes[i].proto.settle(seq),
                Output::Transmit(Transmit::Control { topic, body }) => {
                    self.broadcast(i, topic, body, false)
                }
                Output::Transmit(Transmit::Resend(frames)) => {
                    for (topic, frame) in frames {
                        self.broadcast(i, &topic, frame.to_vec(), false);
                    }
                }
            }
        }
    }

    /// Delivers one frame from the network, with the configured faults. Like busrt, the
    /// network keeps the order of frames between one sender and one receiver; "reorder"
    /// interleaves the pairs at random.
    fn step(&mut self) -> bool {
        if self.net.is_empty() {
            return false;
        }
        let k = if self.faults.reorder {
            let pick = self.rng.gen_range(0..self.net.len());
            let (to, sender) = (self.net[pick].to, self.net[pick].sender.clone());
            self.net
                .iter()
                .position(|f| f.to == to && f.sender == sender)
                .unwrap_or(0)
        } else {
            0
        };
        let frame = self.net.remove(k);
        let lossy = frame.events || self.faults.lose_everything;
        if lossy && self.rng.gen_bool(self.faults.loss) {
            return true;
        }
        if self.rng.gen_bool(self.faults.dup) {
            // Sent again later (an outbox replayed after a reconnect).
            self.net.push(frame.clone());
        }
        let n = &mut self.nodes[frame.to];
        n.proto.on_message(
            &frame.topic,
            &frame.sender,
            &frame.payload,
            n.phase,
            self.now,
        );
        self.drain(frame.to);
        true
    }

    /// Runs the network dry, then the clock to the next deadline, until nothing is left.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            while self.step() {}
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.proto.poll_timeout())
                .min();
            let Some(t) = next else { return };
            self.now = self.now.max(t);
            for i in 0..self.nodes.len() {
                let phase = self.nodes[i].phase;
                self.nodes[i].proto.handle_timeout(self.now, phase);
                self.drain(i);
            }
        }
        panic!("the simulation did not settle");
    }

    fn stats(&self, i: usize) -> StatsSnapshot {
        self.nodes[i].stats.snapshot()
    }

    fn origin(&self, i: usize) -> String {
        format!("{}#origin", self.nodes[i].name)
    }

    /// Remote events node `i` got from node `from`, as sequence numbers.
    fn remote_from(&self, i: usize, from: usize) -> Vec<u64> {
        let origin = self.origin(from);
        self.nodes[i]
            .remote
            .iter()
            .filter(|(o, _)| *o == origin)
            .map(|(_, s)| *s)
            .collect()
    }
}

fn ids(publisher: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{publisher}-{i}")).collect()
}

#[test]
fn own_events_return_and_are_delivered_once_in_phase_2() {
    let mut sim = Sim::new(2, 1, RELIABLE);
    sim.listen(0);
    sim.listen(1);
    for _ in 0..5 {
        sim.publish(0);
    }
    // Nothing delivered locally before the return: busrt is the route in phase 2.
    assert!(sim.nodes[0].local.is_empty());
    assert_eq!(sim.nodes[0].proto.in_flight(), 5);
    sim.settle();
    assert_eq!(sim.nodes[0].local, ids("bridge-0", 5));
    assert_eq!(sim.remote_from(1, 0), vec![1, 2, 3, 4, 5]);
    assert_eq!(sim.nodes[0].proto.in_flight(), 0);
}

#[test]
fn a_loop_is_dropped_and_counted() {
    let mut sim = Sim::new(2, 2, RELIABLE);
    sim.listen(0);
    let mut env = event("bridge-0", 0);
    let route = sim.nodes[0]
        .proto
        .publish(Phase::Topics, false, true, &mut env);
    assert!(route.send && !route.deliver_now);
    let frame = sim.codec.encode(&env).unwrap();
    // Our own event, relayed back by another client: a loop, not a return.
    sim.nodes[0].proto.on_message(
        "events/performance/metric",
        "relay",
        &frame,
        Phase::Topics,
        sim.now,
    );
    sim.drain(0);
    assert_eq!(sim.stats(0).bridge_echo_suppressed, 1);
    assert!(sim.nodes[0].local.is_empty(), "a loop is not delivered");
    // The real return (from our own client name) is.
    sim.nodes[0].proto.on_message(
        "events/performance/metric",
        "bridge-0",
        &frame,
        Phase::Topics,
        sim.now,
    );
    sim.drain(0);
    assert_eq!(sim.nodes[0].local, ids("bridge-0", 1));
}

#[test]
fn duplicates_are_dropped() {
    let mut sim = Sim::new(2, 3, RELIABLE);
    sim.listen(1);
    sim.publish(0);
    let frame = sim.net[0].clone();
    sim.net.push(frame);
    sim.settle();
    assert_eq!(sim.remote_from(1, 0), vec![1]);
    assert_eq!(sim.stats(1).bridge_duplicates, 1);
}

/// Three events from bridge 0 to a listening bridge 1, the second lost at the broker; both
/// delivered frames handled (3 is then held behind the gap).
fn second_of_three_lost(seed: u64) -> Sim {
    let mut sim = Sim::new(2, seed, RELIABLE);
    sim.listen(1);
    for _ in 0..3 {
        sim.publish(0);
    }
    sim.net.remove(1);
    sim.step();
    sim.step();
    sim
}

#[test]
fn a_gap_is_held_until_the_resend_fills_it() {
    let mut sim = second_of_three_lost(4);
    // 3 is held behind the gap at 2, and a resend request is on its way.
    assert_eq!(sim.remote_from(1, 0), vec![1]);
    assert_eq!(sim.stats(1).bridge_gaps, 1);
    assert!(!sim.net.is_empty() && sim.net.iter().all(|f| f.topic == RESEND_TOPIC));
    sim.settle();
    assert_eq!(sim.remote_from(1, 0), vec![1, 2, 3]);
    assert_eq!(sim.stats(1).bridge_gaps_filled, 1);
    assert_eq!(
        sim.stats(0).bridge_resent,
        0,
        "the driver counts confirmed resends"
    );
    assert_eq!(sim.stats(1).bridge_gaps_lost, 0);
}

#[test]
fn an_unfilled_gap_is_given_up_after_the_gap_wait_and_counted() {
    let mut sim = second_of_three_lost(5);
    // The resend request is lost, and so is every request made again.
    let deadline = sim.now + GAP_WAIT;
    let mut asked = 0;
    loop {
        asked += sim.net.len();
        sim.net.clear();
        let next = sim.nodes[1].proto.poll_timeout().unwrap();
        if next >= deadline {
            break;
        }
        sim.nodes[1].proto.handle_timeout(next, Phase::Topics);
        sim.drain(1);
    }
    assert!(asked >= 3, "asked again while waiting: {asked} requests");
    assert_eq!(
        sim.remote_from(1, 0),
        vec![1],
        "still held until the wait ends"
    );
    sim.nodes[1].proto.handle_timeout(deadline, Phase::Topics);
    sim.drain(1);
    assert_eq!(sim.remote_from(1, 0), vec![1, 3]);
    assert_eq!(sim.stats(1).bridge_gaps_lost, 1);
}

#[test]
fn a_lost_resend_request_is_asked_again() {
    let mut sim = second_of_three_lost(9);
    // The first request is lost (the publisher was reconnecting, say).
    sim.net.clear();
    sim.settle();
    assert_eq!(sim.remote_from(1, 0), vec![1, 2, 3]);
    assert_eq!(sim.stats(1).bridge_gaps_lost, 0);
    assert!(sim.stats(1).bridge_resend_requests >= 2);
}

#[test]
fn a_lost_tail_is_found_by_the_heartbeat() {
    let mut sim = Sim::new(2, 6, RELIABLE);
    sim.listen(1);
    for _ in 0..10 {
        sim.publish(0);
    }
    // The last three never reach the subscriber: no later event reveals the gap.
    sim.net.truncate(7);
    while sim.step() {}
    assert_eq!(sim.remote_from(1, 0), (1..=7).collect::<Vec<_>>());
    // Idle for the heartbeat interval, the publisher announces 10.
    assert_eq!(sim.nodes[0].proto.poll_timeout(), Some(sim.now + HEARTBEAT));
    sim.settle();
    assert_eq!(sim.remote_from(1, 0), (1..=10).collect::<Vec<_>>());
    assert!(sim.stats(1).bridge_resend_requests >= 1);
}

#[test]
fn a_resuming_subscriber_says_hello_and_gets_what_it_missed() {
    let mut sim = Sim::new(1, 7, RELIABLE);
    for _ in 0..8 {
        sim.publish(0);
    }
    sim.settle();
    // A durable subscriber that processed 1..=3 of bridge-0 before it was restarted.
    let origin = sim.origin(0);
    let sub = sim.add("journal", Some(vec![(origin, 3)]));
    sim.listen(sub);
    sim.settle();
    assert_eq!(sim.remote_from(sub, 0), vec![4, 5, 6, 7, 8]);
}

#[test]
fn phase_switches_keep_local_delivery_exactly_once_in_order() {
    let mut sim = Sim::new(2, 8, RELIABLE);
    sim.listen(0);
    sim.listen(1);
    let phases = [
        Phase::Legacy,
        Phase::Topics,
        Phase::Shadow,
        Phase::BusrtOnly,
        Phase::Legacy,
    ];
    for phase in phases {
        sim.nodes[0].phase = phase;
        for _ in 0..4 {
            sim.publish(0);
        }
        // Half the frames in flight when the phase changes again.
        sim.step();
    }
    sim.settle();
    assert_eq!(sim.nodes[0].local, ids("bridge-0", 20));
    assert_eq!(sim.nodes[0].proto.in_flight(), 0);
}

fn run_random(seed: u64, nodes: usize, events: usize, faults: Faults, switch: bool) -> Sim {
    let mut sim = Sim::new(nodes, seed, faults);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for i in 0..nodes {
        sim.listen(i);
        // Without switches, some buses publish with no local subscriber: their returns go
        // through the undecoded path under the same faults.
        sim.nodes[i].subscribed = switch || rng.gen_bool(0.5);
    }
    let phases = [
        Phase::Legacy,
        Phase::Shadow,
        Phase::Topics,
        Phase::Rpc,
        Phase::BusrtOnly,
    ];
    for _ in 0..events * nodes {
        let i = rng.gen_range(0..nodes);
        if switch && rng.gen_bool(0.1) {
            sim.nodes[i].phase = phases[rng.gen_range(0..phases.len())];
        }
        sim.publish(i);
        for _ in 0..rng.gen_range(0..3) {
            sim.step();
        }
    }
    // Back to a phase where everything is sent, so every stream is complete.
    sim.settle();
    sim
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Event frames lost, duplicated and reordered; control and resends arrive: every bridge
    /// gets every other bridge's events once and in order from the first one it heard of
    /// (a bus joins a stream live), its own local deliveries once and in order, with nothing
    /// counted lost and nothing left owed.
    #[test]
    fn lossy_event_frames_are_recovered_exactly_once_in_order(
        seed in any::<u64>(),
        nodes in 2usize..=3,
        events in 1usize..40,
        loss in 0.0f64..0.3,
        dup in 0.0f64..0.2,
    ) {
        let faults = Faults { loss, dup, reorder: true, lose_everything: false };
        let sim = run_random(seed, nodes, events, faults, false);
        for i in 0..nodes {
            let n = &sim.nodes[i];
            let want = if n.subscribed { ids(&n.name, n.published) } else { Vec::new() };
            prop_assert_eq!(&n.local, &want, "node {} local", i);
            prop_assert_eq!(n.proto.in_flight(), 0);
            prop_assert_eq!(sim.stats(i).bridge_gaps_lost, 0);
            for j in (0..nodes).filter(|j| *j != i) {
                // A bus that never heard of an origin has nothing to compare with: joining
                // live, it expects the stream from the first event that reaches it.
                let got = sim.remote_from(i, j);
                if let Some(&first) = got.first() {
                    let want: Vec<u64> = (first..=sim.nodes[j].published as u64).collect();
                    prop_assert_eq!(got, want, "node {} from {}", i, j);
                }
            }
        }
    }

    /// The same with run-time phase switches on every bridge: local subscribers still get
    /// each local event once and in publish order.
    #[test]
    fn phase_switches_under_faults_lose_and_repeat_nothing(
        seed in any::<u64>(),
        events in 1usize..40,
        loss in 0.0f64..0.3,
        dup in 0.0f64..0.2,
    ) {
        let faults = Faults { loss, dup, reorder: true, lose_everything: false };
        let sim = run_random(seed, 2, events, faults, true);
        for n in &sim.nodes {
            prop_assert_eq!(&n.local, &ids(&n.name, n.published));
            prop_assert_eq!(n.proto.in_flight(), 0);
        }
    }

    /// Everything may be lost, control and resends included: what is delivered is never
    /// duplicated, never out of order, never invented.
    #[test]
    fn under_total_loss_nothing_is_duplicated_reordered_or_invented(
        seed in any::<u64>(),
        events in 1usize..40,
        loss in 0.0f64..0.5,
        dup in 0.0f64..0.3,
    ) {
        let faults = Faults { loss, dup, reorder: true, lose_everything: true };
        let sim = run_random(seed, 3, events, faults, false);
        for i in 0..3 {
            for j in (0..3).filter(|j| *j != i) {
                let got = sim.remote_from(i, j);
                prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once: {:?}", got);
                prop_assert!(got.iter().all(|s| *s >= 1 && *s <= sim.nodes[j].published as u64));
            }
        }
    }
}
