//! The collector registry: what every agent learns from the collectors' presence messages.
//! Pure state, no I/O: it is told the time.
//!
//! A collector is **alive** while it is heard from, **suspect** once `suspect_after`
//! heartbeat intervals pass in silence (no new task goes to it), and **gone** after
//! `gone_after` intervals or at once when it leaves. Gone entries stay listed for
//! `forget_after`, then are dropped.

use super::proto::{CollectorInfo, Presence, PresenceReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A collector's state in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Heard from within its heartbeat allowance.
    Alive,
    /// Missed heartbeats: kept, but given no new tasks.
    Suspect,
    /// Left, or silent for too long.
    Gone,
}

/// How long silence is tolerated, in heartbeat intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegistryConfig {
    /// Intervals of silence before a collector is suspect.
    pub suspect_after: u32,
    /// Intervals of silence before it is gone.
    pub gone_after: u32,
    /// How long a gone collector stays listed.
    pub forget_after: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            suspect_after: 2,
            gone_after: 4,
            forget_after: Duration::from_secs(60),
        }
    }
}

/// One collector as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// What it announced last.
    #[serde(flatten)]
    pub info: CollectorInfo,
    /// Alive, suspect or gone.
    pub state: Liveness,
    /// Its heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Time since it was last heard from, at the last [`Registry::tick`] or update.
    #[serde(with = "humantime_serde")]
    pub silent_for: Duration,
    #[serde(skip)]
    last_heard: Instant,
}

/// What changed in the registry, for the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A collector is new, or back after being gone.
    Joined(String),
    /// Its record changed (load, capacity, operations).
    Updated(String),
    /// It went silent for longer than `suspect_after` intervals.
    Suspect(String),
    /// It left or is silent for longer than `gone_after` intervals.
    Gone(String),
}

/// Refused presence messages, counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Presence messages accepted.
    pub accepted: u64,
    /// Announcements whose collector name is not the sender's busrt name.
    pub spoofed: u64,
    /// Messages that did not parse.
    pub malformed: u64,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    config: RegistryConfig,
    entries: BTreeMap<String, Entry>,
    stats: RegistryStats,
}

/// A presence message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The collector named in the message is not the sender.
    #[error(
        "announcement for `{claimed}` sent by `{sender}`: a collector may only announce itself"
    )]
    Spoofed {
        /// The name in the message.
        claimed: String,
        /// The busrt sender (primary name).
        sender: String,
    },
    /// The message is not a presence message.
    #[error("malformed presence message: {0}")]
    Malformed(String),
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Takes in a presence message from busrt `sender` (its primary name).
    pub fn receive(
        &mut self,
        sender: &str,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<Change>, PresenceError> {
        let presence: Presence = serde_json::from_slice(payload).map_err(|e| {
            self.stats.malformed += 1;
            PresenceError::Malformed(e.to_string())
        })?;
        if presence.collector.name != sender {
            self.stats.spoofed += 1;
            return Err(PresenceError::Spoofed {
                claimed: presence.collector.name,
                sender: sender.to_owned(),
            });
        }
        self.stats.accepted += 1;
        Ok(self.apply(presence, now))
    }

    /// Applies a presence message already checked against its sender.
    pub fn apply(&mut self, presence: Presence, now: Instant) -> Option<Change> {
        let name = presence.collector.name.clone();
        let heartbeat = Duration::from_millis(presence.heartbeat_ms.max(1));
        if presence.reason == PresenceReason::Leave {
            let entry = self.entries.get_mut(&name)?;
            entry.info = presence.collector;
            entry.last_heard = now;
            entry.silent_for = Duration::ZERO;
            return (std::mem::replace(&mut entry.state, Liveness::Gone) != Liveness::Gone)
                .then_some(Change::Gone(name));
        }
        let entry = Entry {
            info: presence.collector,
            state: Liveness::Alive,
            heartbeat,
            silent_for: Duration::ZERO,
            last_heard: now,
        };
        match self.entries.insert(name.clone(), entry) {
            None => Some(Change::Joined(name)),
            Some(old) if old.state == Liveness::Gone => Some(Change::Joined(name)),
            Some(old) if old.info != self.entries[&name].info || old.state != Liveness::Alive => {
                Some(Change::Updated(name))
            }
            Some(_) => None,
        }
    }

    /// Any message from a collector (an acceptance, a result) shows it alive as well as a
    /// heartbeat does: under load, heartbeats wait in the same queues as replies. A gone
    /// collector comes back only by announcing itself.
    pub fn touch(&mut self, name: &str, now: Instant) -> Option<Change> {
        let e = self.entries.get_mut(name)?;
        if e.state == Liveness::Gone {
            return None;
        }
        e.last_heard = now;
        e.silent_for = Duration::ZERO;
        (std::mem::replace(&mut e.state, Liveness::Alive) == Liveness::Suspect)
            .then(|| Change::Updated(name.to_owned()))
    }

    /// A collector sent a final result: its load is one less than its last heartbeat said.
    /// Without this a full collector would get nothing until its next heartbeat, however
    /// many tasks it finished in between.
    pub fn finished(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            e.info.load = e.info.load.saturating_sub(1);
        }
    }

    /// Moves silent collectors to suspect and gone, forgets old gone ones.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let config = self.config;
        self.entries.retain(|name, e| {
            e.silent_for = now.saturating_duration_since(e.last_heard);
            let next = if e.state == Liveness::Gone {
                return e.silent_for < config.forget_after;
            } else if e.silent_for >= e.heartbeat * config.gone_after {
                Liveness::Gone
            } else if e.silent_for >= e.heartbeat * config.suspect_after {
                Liveness::Suspect
            } else {
                Liveness::Alive
            };
            if next != e.state {
                e.state = next;
                changes.push(match next {
                    Liveness::Gone => Change::Gone(name.clone()),
                    Liveness::Suspect => Change::Suspect(name.clone()),
                    Liveness::Alive => Change::Updated(name.clone()),
                });
            }
            true
        });
        changes
    }

    /// When the next [`tick`](Self::tick) can change something.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|e| match e.state {
                Liveness::Alive => e.last_heard + e.heartbeat * self.config.suspect_after,
                Liveness::Suspect => e.last_heard + e.heartbeat * self.config.gone_after,
                Liveness::Gone => e.last_heard + self.config.forget_after,
            })
            .min()
    }

    /// A collector by name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Every collector, by name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + Clone {
        self.entries.values()
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// A short description of what the registry holds, for "nothing capable" errors.
    pub fn describe(&self) -> String {
        let alive: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.state != Liveness::Gone)
            .map(|e| {
                format!(
                    "{} (type {}, {:?}, operations [{}]{})",
                    e.info.name,
                    e.info.kind,
                    e.info.capabilities,
                    e.info.operations.join(", "),
                    if e.state == Liveness::Suspect {
                        ", suspect"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        if alive.is_empty() {
            "no collectors".into()
        } else {
            alive.join("; ")
        }
    }
}
