//! The collector's side of a task, without I/O: capacity, exactly-once execution per task id,
//! deadlines. The driver ([`super::TaskServer`]) runs what it says to start.

use super::proto::{TaskFailure, TaskOffer, ToRequester};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Finished tasks remembered to answer a repeated offer with the same result.
pub const REMEMBERED: usize = 4096;

/// What to do with an offer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run it (the slot is taken; call [`Worker::finished`] when it ends).
    Start,
    /// It is running already (an offer repeated): acknowledge again, run nothing.
    Running,
    /// It ran already: send this result again, run nothing.
    Repeat(ToRequester),
    /// No room: refuse, so the requester offers it elsewhere.
    Refuse(String),
}

#[derive(Debug)]
struct Running {
    deadline: Instant,
    reply_to: String,
}

/// Exactly-once bookkeeping for one collector.
#[derive(Debug)]
pub struct Worker {
    name: String,
    capacity: u32,
    running: HashMap<(String, String), Running>,
    done: HashMap<(String, String), ToRequester>,
    done_order: VecDeque<(String, String)>,
    /// The earliest deadline of the tasks started since the last
    /// [`take_added_deadline`](Worker::take_added_deadline).
    added_deadline: Option<Instant>,
}

impl Worker {
    /// A worker for collector `name` running at most `capacity` tasks at once.
    pub fn new(name: impl Into<String>, capacity: u32) -> Self {
        Self {
            name: name.into(),
            capacity: capacity.max(1),
            running: HashMap::new(),
            done: HashMap::new(),
            done_order: VecDeque::new(),
            added_deadline: None,
        }
    }

    /// Tasks running now.
    pub fn load(&self) -> u32 {
        self.running.len() as u32
    }

    /// Tasks at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Decides on an offer from `requester` (the busrt sender: task ids are unique per
    /// requester).
    pub fn offer(&mut self, requester: &str, offer: &TaskOffer, now: Instant) -> Decision {
        let key = (requester.to_owned(), offer.task_id.clone());
        if self.running.contains_key(&key) {
            return Decision::Running;
        }
        if let Some(done) = self.done.get(&key) {
            return Decision::Repeat(done.clone());
        }
        if self.load() >= self.capacity {
            return Decision::Refuse(format!(
                "over capacity: {} of {} running",
                self.load(),
                self.capacity
            ));
        }
        let deadline = now + Duration::from_millis(offer.deadline_ms);
        super::keep_earliest(&mut self.added_deadline, deadline);
        self.running.insert(
            key,
            Running {
                deadline,
                reply_to: offer.reply_to.clone(),
            },
        );
        Decision::Start
    }

    /// A task ended with `outcome`: the slot is free, the result remembered. Returns the
    /// result message and its topic, or `None` if the task was not running (cancelled).
    pub fn finished(
        &mut self,
        requester: &str,
        task_id: &str,
        correlation_id: &str,
        outcome: Result<serde_json::Value, TaskFailure>,
    ) -> Option<(String, ToRequester)> {
        let key = (requester.to_owned(), task_id.to_owned());
        let running = self.running.remove(&key)?;
        let message = ToRequester::Done {
            task_id: task_id.to_owned(),
            collector: self.name.clone(),
            correlation_id: correlation_id.to_owned(),
            outcome,
        };
        self.remember(key, message.clone());
        Some((running.reply_to, message))
    }

    /// Drops a running task (cancelled): true if it was running. It is remembered as
    /// cancelled, so a late repeat of the offer does not run it.
    pub fn cancel(&mut self, requester: &str, task_id: &str) -> bool {
        let key = (requester.to_owned(), task_id.to_owned());
        let was = self.running.remove(&key).is_some();
        if was {
            let message = ToRequester::Done {
                task_id: task_id.to_owned(),
                collector: self.name.clone(),
                correlation_id: String::new(),
                outcome: Err(TaskFailure::Cancelled),
            };
            self.remember(key, message);
        }
        was
    }

    /// Running tasks whose deadline passed: `(requester, task id)`.
    pub fn expired(&self, now: Instant) -> Vec<(String, String)> {
        self.running
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The earliest deadline of the tasks started since the last call: what a driver whose
    /// timer is armed by [`next_deadline`](Self::next_deadline) needs after each offer.
    pub fn take_added_deadline(&mut self) -> Option<Instant> {
        self.added_deadline.take()
    }

    /// The earliest deadline of a running task.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running.values().map(|r| r.deadline).min()
    }

    fn remember(&mut self, key: (String, String), message: ToRequester) {
        if self.done.insert(key.clone(), message).is_none() {
            self.done_order.push_back(key);
        }
        while self.done_order.len() > REMEMBERED {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
    }
}
