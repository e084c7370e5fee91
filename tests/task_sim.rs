//! The phase-5 state machines (registry, dispatcher, worker) on a simulated clock, without a
//! broker: every retry, deadline and dedup path, deterministically.

use busbridge::event::SourceCaps;
use busbridge::task::proto::{Presence, PresenceReason, TaskOffer, ToCollector, ToRequester};
use busbridge::task::registry::Change;
use busbridge::task::worker::{Decision, Worker};
use busbridge::task::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const HEARTBEAT: Duration = Duration::from_millis(100);

fn info(name: &str, kind: &str, capacity: u32) -> CollectorInfo {
    CollectorInfo {
        name: name.into(),
        kind: kind.into(),
        capabilities: if kind == "network" {
            SourceCaps::NETWORK
        } else {
            SourceCaps::PROCESS
        },
        operations: vec!["echo".into(), format!("{kind}_op")],
        capacity,
        load: 0,
        version: "test".into(),
    }
}

fn presence(info: CollectorInfo, reason: PresenceReason) -> Vec<u8> {
    serde_json::to_vec(&Presence {
        reason,
        collector: info,
        heartbeat_ms: HEARTBEAT.as_millis() as u64,
    })
    .unwrap()
}

struct Sim {
    now: Instant,
    registry: Registry,
    dispatcher: Dispatcher,
    /// Offers sent, per collector, in order.
    offers: HashMap<String, Vec<TaskOffer>>,
    cancels: Vec<(String, String)>,
    events: HashMap<String, Vec<TaskEvent>>,
}

impl Sim {
    fn new(config: TasksConfig) -> Self {
        Self {
            now: Instant::now(),
            registry: Registry::new(RegistryConfig::default()),
            dispatcher: Dispatcher::new(config, "results.me"),
            offers: HashMap::new(),
            cancels: Vec::new(),
            events: HashMap::new(),
        }
    }

    fn join(&mut self, c: CollectorInfo) {
        let name = c.name.clone();
        let change = self
            .registry
            .receive(&name, &presence(c, PresenceReason::Start), self.now)
            .unwrap();
        if let Some(change) = change {
            self.dispatcher
                .registry_changed(&change, &self.registry, self.now);
        }
        self.drain();
    }

    fn submit(&mut self, spec: TaskSpec) -> Result<String, DispatchError> {
        let r = self.dispatcher.submit(spec, &self.registry, self.now);
        self.drain();
        r
    }

    fn reply(&mut self, sender: &str, m: ToRequester) {
        self.dispatcher.receive(sender, m, &self.registry, self.now);
        self.drain();
    }

    fn done(&mut self, collector: &str, task: &str, value: serde_json::Value) {
        self.reply(
            collector,
            ToRequester::Done {
                task_id: task.into(),
                collector: collector.into(),
                correlation_id: task.into(),
                outcome: Ok(value),
            },
        );
    }

    fn accept(&mut self, collector: &str, task: &str) {
        self.reply(
            collector,
            ToRequester::Accepted {
                task_id: task.into(),
                collector: collector.into(),
            },
        );
    }

    /// Advances the clock; heartbeats arrive from `alive` collectors on the way.
    fn advance(&mut self, by: Duration, alive: &[CollectorInfo]) {
        let end = self.now + by;
        while self.now < end {
            self.now += HEARTBEAT / 2;
            for c in alive {
                let _ = self.registry.receive(
                    &c.name,
                    &presence(c.clone(), PresenceReason::Heartbeat),
                    self.now,
                );
            }
            for change in self.registry.tick(self.now) {
                self.dispatcher
                    .registry_changed(&change, &self.registry, self.now);
            }
            self.dispatcher.tick(&self.registry, self.now);
            self.drain();
        }
    }

    fn drain(&mut self) {
        for o in self.dispatcher.take_output() {
            match o {
                Output::Send {
                    to,
                    message: ToCollector::Offer(offer),
                } => self.offers.entry(to).or_default().push(offer),
                Output::Send {
                    to,
                    message: ToCollector::Cancel { task_id },
                } => self.cancels.push((to, task_id)),
                Output::Event { task_id, event } => {
                    self.events.entry(task_id).or_default().push(event)
                }
            }
        }
    }

    fn status(&self, task: &str) -> Option<&Status> {
        self.events.get(task)?.iter().find_map(|e| match e {
            TaskEvent::Finished(s) => Some(s),
            _ => None,
        })
    }

    fn results(&self, task: &str) -> Vec<String> {
        self.events
            .get(task)
            .map(|v| {
                v.iter()
                    .filter_map(|e| match e {
                        TaskEvent::Result { collector, .. } => Some(collector.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn echo(id: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("echo", json!({"n": id}));
    spec.id = id.into();
    spec
}

#[test]
fn least_loaded_spreads_one_of_tasks_and_each_gets_one_result() {
    let mut sim = Sim::new(TasksConfig::default());
    let cs: Vec<_> = (1..=3)
        .map(|i| info(&format!("p{i}"), "process", 4))
        .collect();
    for c in &cs {
        sim.join(c.clone());
    }
    for i in 0..12 {
        sim.submit(echo(&format!("t{i}"))).unwrap();
    }
    // Four each: capacity 4, equal loads rotate.
    for c in &cs {
        assert_eq!(sim.offers[&c.name].len(), 4, "{:?}", sim.offers);
    }
    // A 13th waits for room, then goes where room appears.
    sim.submit(echo("t12")).unwrap();
    assert_eq!(sim.dispatcher.stats().queued, 1);
    let first = sim.offers["p2"][0].task_id.clone();
    sim.done("p2", &first, json!(1));
    assert_eq!(sim.offers["p2"].last().unwrap().task_id, "t12");
    // A repeated result is dropped; the task finished once.
    sim.done("p2", &first, json!(1));
    assert_eq!(sim.results(&first), vec!["p2"]);
    assert_eq!(sim.status(&first), Some(&Status::Complete));
    assert_eq!(sim.dispatcher.stats().late, 1);
}

#[test]
fn round_robin_takes_each_in_turn() {
    let mut sim = Sim::new(TasksConfig {
        strategy: Strategy::RoundRobin,
        ..TasksConfig::default()
    });
    for i in 1..=3 {
        sim.join(info(&format!("p{i}"), "process", 100));
    }
    for i in 0..9 {
        let id = format!("t{i}");
        sim.submit(echo(&id)).unwrap();
    }
    let order: Vec<_> = (0..9)
        .map(|i| {
            let id = format!("t{i}");
            sim.offers
                .iter()
                .find(|(_, o)| o.iter().any(|o| o.task_id == id))
                .unwrap()
                .0
                .clone()
        })
        .collect();
    assert_eq!(
        order,
        ["p1", "p2", "p3", "p1", "p2", "p3", "p1", "p2", "p3"]
    );
}

#[test]
fn priority_aware_keeps_the_last_slot_for_urgent_tasks() {
    let mut sim = Sim::new(TasksConfig {
        strategy: Strategy::PriorityAware,
        when_none_capable: WhenNoneCapable::Queue,
        ..TasksConfig::default()
    });
    sim.join(info("p1", "process", 2));
    sim.submit(echo("normal-1")).unwrap();
    sim.submit(echo("normal-2")).unwrap();
    assert_eq!(sim.offers["p1"].len(), 1, "the second normal task waits");
    let mut urgent = echo("urgent");
    urgent.priority = Priority::Critical;
    sim.submit(urgent).unwrap();
    assert_eq!(sim.offers["p1"][1].task_id, "urgent");
}

#[test]
fn no_acceptance_moves_the_task_and_exhaustion_names_every_attempt() {
    let mut sim = Sim::new(TasksConfig {
        accept_timeout: Duration::from_millis(200),
        max_attempts: 2,
        ..TasksConfig::default()
    });
    let cs = [
        info("p1", "process", 4),
        info("p2", "process", 4),
        info("p3", "process", 4),
    ];
    for c in &cs {
        sim.join(c.clone());
    }
    let mut spec = echo("t");
    spec.timeout = Duration::from_secs(10);
    sim.submit(spec).unwrap();
    sim.advance(Duration::from_millis(250), &cs);
    let offered: Vec<_> = cs
        .iter()
        .filter(|c| sim.offers.get(&c.name).is_some_and(|o| !o.is_empty()))
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(offered.len(), 2, "moved to a second collector: {offered:?}");
    assert_eq!(sim.cancels.len(), 1, "the silent one is told to stop");
    sim.advance(Duration::from_millis(250), &cs);
    match sim.status("t") {
        Some(Status::Failed { attempts }) => {
            assert_eq!(attempts.len(), 2);
            assert!(attempts[0].reason.contains("no acceptance"), "{attempts:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_collector_that_dies_in_flight_loses_its_task_to_another_and_its_late_result_is_ignored() {
    let mut sim = Sim::new(TasksConfig::default());
    let p1 = info("p1", "process", 4);
    let p2 = info("p2", "process", 4);
    sim.join(p1.clone());
    sim.join(p2.clone());
    sim.submit(echo("t")).unwrap();
    let first = sim.offers.keys().next().unwrap().clone();
    sim.accept(&first, "t");
    let survivor = if first == "p1" {
        p2.clone()
    } else {
        p1.clone()
    };
    // Only the survivor keeps sending heartbeats: the first goes suspect, then gone.
    sim.advance(HEARTBEAT * 5, std::slice::from_ref(&survivor));
    assert_eq!(sim.registry.get(&first).unwrap().state, Liveness::Gone);
    assert_eq!(sim.offers[&survivor.name][0].attempt, 2);
    sim.done(&survivor.name, "t", json!("ok"));
    sim.done(&first, "t", json!("late"));
    assert_eq!(sim.results("t"), vec![survivor.name.clone()]);
    assert_eq!(sim.status("t"), Some(&Status::Complete));
}

#[test]
fn nothing_capable_is_refused_with_what_was_required_and_what_is_there() {
    let mut sim = Sim::new(TasksConfig::default());
    sim.join(info("p1", "process", 4));
    let mut spec = echo("t");
    spec.capabilities = SourceCaps::NETWORK;
    match sim.submit(spec) {
        Err(DispatchError::NothingCapable { required, registry }) => {
            assert!(required.contains("NETWORK"), "{required}");
            assert!(registry.contains("p1 (type process"), "{registry}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn queued_tasks_wait_for_a_capable_collector_run_once_and_respect_deadlines_and_capacity() {
    let mut sim = Sim::new(TasksConfig {
        when_none_capable: WhenNoneCapable::Queue,
        queue_capacity: 2,
        ..TasksConfig::default()
    });
    let mut spec = TaskSpec::new("network_op", json!({}));
    spec.id = "net".into();
    spec.timeout = Duration::from_secs(10);
    sim.submit(spec.clone()).unwrap();
    let mut short = spec.clone();
    short.id = "short".into();
    short.timeout = Duration::from_millis(100);
    sim.submit(short).unwrap();
    let mut third = spec.clone();
    third.id = "third".into();
    assert_eq!(
        sim.submit(third),
        Err(DispatchError::QueueFull { capacity: 2 })
    );
    sim.advance(Duration::from_millis(200), &[]);
    assert!(matches!(sim.status("short"), Some(Status::TimedOut { .. })));
    let n = info("n1", "network", 4);
    sim.join(n.clone());
    sim.advance(Duration::from_millis(200), std::slice::from_ref(&n));
    assert_eq!(sim.offers["n1"].len(), 1, "offered once: {:?}", sim.offers);
    assert_eq!(sim.offers["n1"][0].task_id, "net");
}

#[test]
fn scatter_completes_with_every_result_or_ends_partial_naming_who_is_missing() {
    let mut sim = Sim::new(TasksConfig::default());
    let cs = [
        info("p1", "process", 4),
        info("p2", "process", 4),
        info("n1", "network", 4),
    ];
    for c in &cs {
        sim.join(c.clone());
    }
    let mut all = echo("all");
    all.mode = Mode::AllOf;
    sim.submit(all.clone()).unwrap();
    for c in &cs {
        sim.accept(&c.name, "all");
        sim.done(&c.name, "all", json!(c.name));
        sim.done(&c.name, "all", json!("again"));
    }
    assert_eq!(sim.results("all").len(), 3);
    assert_eq!(sim.status("all"), Some(&Status::Complete));

    let mut part = all;
    part.id = "part".into();
    part.timeout = Duration::from_millis(300);
    sim.submit(part).unwrap();
    for c in &cs[..2] {
        sim.accept(&c.name, "part");
        sim.done(&c.name, "part", json!(1));
    }
    sim.accept("n1", "part");
    sim.advance(Duration::from_millis(400), &cs);
    match sim.status("part") {
        Some(Status::Partial { missing }) => {
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].collector, "n1");
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.cancels.contains(&("n1".into(), "part".into())));
}

#[test]
fn nobody_speaks_for_another_collector() {
    let mut sim = Sim::new(TasksConfig::default());
    sim.join(info("p1", "process", 4));
    let e = sim
        .registry
        .receive(
            "mallory",
            &presence(info("p1", "process", 99), PresenceReason::Change),
            sim.now,
        )
        .unwrap_err();
    assert!(e.to_string().contains("mallory"), "{e}");
    assert_eq!(sim.registry.stats().spoofed, 1);
    assert_eq!(sim.registry.get("p1").unwrap().info.capacity, 4);
    sim.submit(echo("t")).unwrap();
    sim.done("mallory", "t", json!("forged"));
    let forged = ToRequester::Done {
        task_id: "t".into(),
        collector: "p1".into(),
        correlation_id: "t".into(),
        outcome: Ok(json!("forged")),
    };
    sim.reply("mallory", forged);
    assert_eq!(sim.dispatcher.stats().spoofed, 2);
    assert!(sim.status("t").is_none());
}

#[test]
fn a_leave_removes_a_collector_at_once() {
    let mut sim = Sim::new(TasksConfig::default());
    let p1 = info("p1", "process", 4);
    sim.join(p1.clone());
    let change = sim
        .registry
        .receive("p1", &presence(p1, PresenceReason::Leave), sim.now)
        .unwrap();
    assert_eq!(change, Some(Change::Gone("p1".into())));
    assert!(sim.submit(echo("t")).is_err());
}

#[test]
fn invalid_tasks_are_refused() {
    let mut sim = Sim::new(TasksConfig {
        max_payload: 100,
        ..TasksConfig::default()
    });
    sim.join(info("p1", "process", 4));
    let big = TaskSpec::new("echo", json!("x".repeat(200)));
    assert!(matches!(sim.submit(big), Err(DispatchError::Invalid(m)) if m.contains("larger")));
    assert!(matches!(
        sim.submit(TaskSpec::new("", json!(null))),
        Err(DispatchError::Invalid(_))
    ));
    sim.submit(echo("same")).unwrap();
    assert_eq!(
        sim.submit(echo("same")),
        Err(DispatchError::DuplicateId("same".into()))
    );
}

#[test]
fn a_worker_runs_each_task_id_once_and_refuses_beyond_capacity() {
    let now = Instant::now();
    let mut w = Worker::new("p1", 1);
    let offer = TaskOffer {
        task_id: "t".into(),
        correlation_id: "c".into(),
        operation: "echo".into(),
        payload: json!(1),
        priority: Priority::Normal,
        deadline_ms: 1000,
        reply_to: "results.me".into(),
        attempt: 1,
        accept_ms: 0,
    };
    assert_eq!(w.offer("me", &offer, now), Decision::Start);
    assert_eq!(w.offer("me", &offer, now), Decision::Running);
    let mut other = offer.clone();
    other.task_id = "u".into();
    assert!(matches!(w.offer("me", &other, now), Decision::Refuse(r) if r.contains("1 of 1")));
    let (topic, done) = w.finished("me", "t", "c", Ok(json!(2))).unwrap();
    assert_eq!(topic, "results.me");
    assert_eq!(w.offer("me", &offer, now), Decision::Repeat(done));
    // The same id from another requester is another task.
    assert_eq!(w.offer("you", &offer, now), Decision::Start);
    assert_eq!(
        w.expired(now + Duration::from_secs(2)),
        vec![("you".into(), "t".into())]
    );
}

#[test]
fn a_reply_shows_a_suspect_collector_alive() {
    let mut sim = Sim::new(TasksConfig::default());
    let p1 = info("p1", "process", 4);
    sim.join(p1);
    sim.submit(echo("t")).unwrap();
    // Its heartbeats are late (queued behind its replies on a loaded machine).
    sim.advance(HEARTBEAT * 3, &[]);
    assert_eq!(sim.registry.get("p1").unwrap().state, Liveness::Suspect);
    assert_eq!(
        sim.registry.touch("p1", sim.now),
        Some(Change::Updated("p1".into()))
    );
    assert_eq!(sim.registry.get("p1").unwrap().state, Liveness::Alive);
    assert_eq!(sim.registry.touch("nobody", sim.now), None);
}
