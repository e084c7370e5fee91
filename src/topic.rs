//! The topic model: dotted names at the API, busrt's `/` names on the wire.
//!
//! | API (dotted)        | busrt             | meaning                                  |
//! |---------------------|-------------------|------------------------------------------|
//! | `events.process.new`| `events/process/new` | one concrete topic                    |
//! | `*` or `+`          | `+`               | exactly one level                        |
//! | `#` (last only)     | `#`               | one or more remaining levels             |
//!
//! `#` needs at least one level, as in busrt: `events.process.#` does not match
//! `events.process`. A level holds ASCII letters, digits, `_` and `-`; no level is empty; at most
//! [`MAX_DEPTH`] levels and [`MAX_LEN`] bytes.
//!
//! Where each event goes ([`topic_for_event`]):
//!
//! | event                 | topic                          |
//! |-----------------------|--------------------------------|
//! | `Process`             | `events.process.new`           |
//! | `Network`             | `events.network.connection`    |
//! | `Filesystem`          | `events.filesystem.operation`  |
//! | `Performance`         | `events.performance.metric`    |
//! | `TriggerRequest`      | `tasks.<target_collector>`     |
//!
//! The other roots of the hierarchy are `control.*` (collector lifecycle), `results.*` (task
//! results) and `health.*` (health and status).
//!
//! ```
//! use busbridge::topic::{Pattern, Topic};
//! let pattern = Pattern::parse("events.process.*").unwrap();
//! assert_eq!(pattern.to_busrt(), "events/process/+");
//! assert!(pattern.matches(&Topic::parse("events.process.new").unwrap()));
//! assert!(!pattern.matches(&Topic::parse("events.network.connection").unwrap()));
//! ```

use crate::event::CollectionEvent;
use std::fmt;

/// Most levels a topic or pattern may have.
pub const MAX_DEPTH: usize = 8;
/// Longest topic or pattern, in bytes.
pub const MAX_LEN: usize = 255;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    /// The topic is empty.
    Empty,
    #[error("topic `{0}` is longer than {MAX_LEN} bytes")]
    /// The topic is longer than 255 bytes.
    TooLong(String),
    #[error("topic `{topic}` has {depth} levels; at most {MAX_DEPTH} are allowed")]
    /// The topic has too many levels.
    TooDeep {
        /// The topic.
        topic: String,
        /// Its number of levels.
        depth: usize,
    },
    #[error("topic `{0}` has an empty level")]
    /// A level is empty (`a..b`).
    EmptyLevel(String),
    #[error("topic `{topic}` has a character `{ch}` that is not allowed (use letters, digits, `_`, `-`)")]
    /// A level holds a character topics may not contain.
    BadChar {
        /// The topic.
        topic: String,
        /// The character.
        ch: char,
    },
    #[error(
        "topic `{0}`: wildcards (`*`, `+`, `#`) are for subscription patterns, not for publishing"
    )]
    /// A wildcard in a topic to publish to (only patterns may have them).
    WildcardInTopic(String),
    #[error("pattern `{0}`: `#` may only be the last level")]
    /// `#` is not the last level of the pattern.
    HashNotLast(String),
}

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Level {
    Exact(String),
    /// `*` or `+`: exactly one level.
    One,
    /// `#`: one or more remaining levels.
    Rest,
}

/// A concrete, validated topic such as `events.process.new`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

/// A validated subscription pattern such as `events.process.*` or `events.#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    levels: Vec<Level>,
}

fn split_levels(s: &str, sep: char) -> Result<Vec<&str>, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(TopicError::TooLong(s.to_owned()));
    }
    let levels: Vec<&str> = s.split(sep).collect();
    if levels.len() > MAX_DEPTH {
        return Err(TopicError::TooDeep {
            topic: s.to_owned(),
            depth: levels.len(),
        });
    }
    if levels.iter().any(|l| l.is_empty()) {
        return Err(TopicError::EmptyLevel(s.to_owned()));
    }
    Ok(levels)
}

fn check_level(topic: &str, level: &str) -> Result<(), TopicError> {
    match level
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(ch) => Err(TopicError::BadChar {
            topic: topic.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

impl Topic {
    /// Parses a dotted topic (`events.process.new`).
    pub fn parse(dotted: &str) -> Result<Self, TopicError> {
        Self::from_levels(dotted, '.')
    }

    /// Parses a busrt topic (`events/process/new`).
    pub fn from_busrt(slashed: &str) -> Result<Self, TopicError> {
        Self::from_levels(slashed, '/')
    }

    fn from_levels(s: &str, sep: char) -> Result<Self, TopicError> {
        let levels = split_levels(s, sep)?;
        for level in &levels {
            if matches!(*level, "*" | "+" | "#") {
                return Err(TopicError::WildcardInTopic(s.to_owned()));
            }
            check_level(s, level)?;
        }
        Ok(Self(levels.join(".")))
    }

    /// The dotted form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The busrt form (`/` separated).
    pub fn to_busrt(&self) -> String {
        self.0.replace('.', "/")
    }

    fn levels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Pattern {
    /// Parses a dotted pattern (`events.process.*`, `events.#`, `events.+.new`).
    pub fn parse(dotted: &str) -> Result<Self, TopicError> {
        Self::from_levels(dotted, '.')
    }

    /// Parses a busrt pattern (`events/process/+`).
    pub fn from_busrt(slashed: &str) -> Result<Self, TopicError> {
        Self::from_levels(slashed, '/')
    }

    fn from_levels(s: &str, sep: char) -> Result<Self, TopicError> {
        let raw = split_levels(s, sep)?;
        let last = raw.len() - 1;
        let mut levels = Vec::with_capacity(raw.len());
        for (i, level) in raw.iter().enumerate() {
            levels.push(match *level {
                "*" | "+" => Level::One,
                "#" if i == last => Level::Rest,
                "#" => return Err(TopicError::HashNotLast(s.to_owned())),
                exact => {
                    check_level(s, exact)?;
                    Level::Exact(exact.to_owned())
                }
            });
        }
        Ok(Self { levels })
    }

    fn render(&self, sep: char, one: &str) -> String {
        let mut out = String::new();
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.push_str(match level {
                Level::Exact(s) => s,
                Level::One => one,
                Level::Rest => "#",
            });
        }
        out
    }

    /// The busrt form: `events/process/+`.
    pub fn to_busrt(&self) -> String {
        self.render('/', "+")
    }

    /// The canonical dotted form: `events.process.*`.
    pub fn to_dotted(&self) -> String {
        self.render('.', "*")
    }

    /// True if the pattern has no wildcard.
    pub fn is_exact(&self) -> bool {
        self.levels.iter().all(|l| matches!(l, Level::Exact(_)))
    }

    /// Whether `topic` matches, with busrt's semantics (`#` takes one or more levels).
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_levels = topic.levels();
        for level in &self.levels {
            match level {
                Level::Rest => return topic_levels.next().is_some(),
                Level::One => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(s) => {
                    if topic_levels.next() != Some(s.as_str()) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_dotted())
    }
}

impl std::str::FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Replaces what a topic level cannot hold, so any collector name makes a valid level.
pub(crate) fn sanitize_level(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".to_owned()
    } else {
        s
    }
}

/// Topic on which a tool (`busbridge stats`) asks every bridged bus and broker for its status
/// (`bridge::Status`, `broker::BrokerStatus`); they answer on [`STATUS_REPLY_TOPIC`].
pub const STATUS_TOPIC: &str = "control.bridge.status";
/// Topic of the answers to [`STATUS_TOPIC`].
pub const STATUS_REPLY_TOPIC: &str = "control.bridge.status.reply";

/// The topic an event is published to (see the table in the module docs).
pub fn topic_for_event(event: &CollectionEvent) -> Topic {
    let name = match event {
        CollectionEvent::Process(_) => "events.process.new".to_owned(),
        CollectionEvent::Network(_) => "events.network.connection".to_owned(),
        CollectionEvent::Filesystem(_) => "events.filesystem.operation".to_owned(),
        CollectionEvent::Performance(_) => "events.performance.metric".to_owned(),
        CollectionEvent::TriggerRequest(t) => {
            format!("tasks.{}", sanitize_level(&t.target_collector))
        }
    };
    Topic(name)
}

/// A busrt topic (`events/process/new`): borrowed for the fixed topics, so sending an event
/// allocates none.
pub type BusrtTopic = std::borrow::Cow<'static, str>;

/// The busrt form of [`topic_for_event`]: a static string for the four event topics.
pub fn busrt_topic_for_event(event: &CollectionEvent) -> BusrtTopic {
    BusrtTopic::Borrowed(match event {
        CollectionEvent::Process(_) => "events/process/new",
        CollectionEvent::Network(_) => "events/network/connection",
        CollectionEvent::Filesystem(_) => "events/filesystem/operation",
        CollectionEvent::Performance(_) => "events/performance/metric",
        CollectionEvent::TriggerRequest(_) => return topic_for_event(event).to_busrt().into(),
    })
}

/// The topics statistics count events by: the four fixed event topics, and `tasks.#` for
/// every trigger target (so the count stays bounded whatever the targets are called).
pub const COUNTED_TOPICS: [&str; 5] = [
    "events.process.new",
    "events.network.connection",
    "events.filesystem.operation",
    "events.performance.metric",
    "tasks.#",
];

/// The index in [`COUNTED_TOPICS`] of an event's topic, without building the topic.
pub fn counted_topic(event: &CollectionEvent) -> usize {
    match event {
        CollectionEvent::Process(_) => 0,
        CollectionEvent::Network(_) => 1,
        CollectionEvent::Filesystem(_) => 2,
        CollectionEvent::Performance(_) => 3,
        CollectionEvent::TriggerRequest(_) => 4,
    }
}

/// Patterns that cover every event topic of [`topic_for_event`].
pub fn all_event_patterns() -> Vec<Pattern> {
    ["events.#", "tasks.#"]
        .iter()
        .map(|p| Pattern::parse(p).expect("static pattern"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_translate() {
        assert_eq!(Pattern::parse("a.*.c").unwrap().to_busrt(), "a/+/c");
        assert_eq!(Pattern::parse("a.+.c").unwrap().to_busrt(), "a/+/c");
        assert_eq!(Pattern::parse("a.#").unwrap().to_busrt(), "a/#");
        assert_eq!(
            Pattern::parse("a.#.c"),
            Err(TopicError::HashNotLast("a.#.c".into()))
        );
    }

    #[test]
    fn hash_needs_a_level() {
        let p = Pattern::parse("events.process.#").unwrap();
        assert!(!p.matches(&Topic::parse("events.process").unwrap()));
        assert!(p.matches(&Topic::parse("events.process.new").unwrap()));
        assert!(p.matches(&Topic::parse("events.process.new.x").unwrap()));
    }

    #[test]
    fn star_is_one_level() {
        let p = Pattern::parse("events.process.*").unwrap();
        assert!(p.matches(&Topic::parse("events.process.new").unwrap()));
        assert!(!p.matches(&Topic::parse("events.process.new.x").unwrap()));
        assert!(!p.matches(&Topic::parse("events.process").unwrap()));
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert!(matches!(
            Topic::parse("a..b"),
            Err(TopicError::EmptyLevel(_))
        ));
        assert!(matches!(
            Topic::parse("a.b c"),
            Err(TopicError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Topic::parse("a.b.c.d.e.f.g.h.i"),
            Err(TopicError::TooDeep { depth: 9, .. })
        ));
        assert!(matches!(
            Topic::parse("a.*"),
            Err(TopicError::WildcardInTopic(_))
        ));
        assert!(matches!(
            Topic::parse("a/b"),
            Err(TopicError::BadChar { .. })
        ));
    }

    #[test]
    fn trigger_topic_is_sanitized() {
        use crate::event::*;
        let t = TriggerRequest {
            trigger_id: "t".into(),
            target_collector: "proc mond/x".into(),
            analysis_type: AnalysisType::YaraScan,
            priority: TriggerPriority::High,
            target_pid: None,
            target_path: None,
            correlation_id: String::new(),
            metadata: Default::default(),
            timestamp: std::time::SystemTime::UNIX_EPOCH,
        };
        let topic = topic_for_event(&CollectionEvent::TriggerRequest(t));
        assert_eq!(topic.as_str(), "tasks.proc_mond_x");
        assert!(Topic::parse(topic.as_str()).is_ok());
    }
}
