//! Observers around routing: who watches what the legacy path and busrt deliver.
//!
//! The core reports each step of an event to its [`Observers`]: a subscription, a publish, a
//! delivery on the control path (the legacy router's answer) and one on the candidate path
//! (busrt's). Two observers exist: the parity engine ([`crate::parity::Parity`]) compares
//! control with candidate, the trace recorder ([`crate::trace::Recorder`]) writes the control
//! path to a file for phase 4's replay. [`Observers`] is the one place that decides which of
//! them is told what.

use crate::codec::Envelope;
use crate::parity::Parity;
use crate::router::Filter;
use crate::trace::Recorder;
use parking_lot::RwLock;
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Release},
};
use std::sync::Arc;

/// Something told about routing. Every method defaults to doing nothing.
pub trait Observer: Send + Sync {
    /// A subscriber was added.
    fn subscribed(&self, _id: &str, _filter: &Filter) {}
    /// An event was accepted for publishing.
    fn published(&self, _env: &Envelope) {}
    /// The control path (the legacy router) delivered, or would have delivered, `env` to
    /// `subscriber`.
    fn control(&self, _subscriber: &str, _env: &Envelope) {}
    /// The candidate path (busrt, or the legacy router again in A/A mode) delivered `env` to
    /// `subscriber`.
    fn candidate(&self, _subscriber: &str, _env: &Envelope) {}
}

impl Observer for Parity {
    fn control(&self, subscriber: &str, env: &Envelope) {
        self.record_control(subscriber, env);
    }
    fn candidate(&self, subscriber: &str, env: &Envelope) {
        self.record_candidate(subscriber, env);
    }
}

impl Observer for Recorder {
    fn subscribed(&self, id: &str, filter: &Filter) {
        self.record_subscribe(id, filter);
    }
    fn published(&self, env: &Envelope) {
        self.record_publish(env);
    }
    fn control(&self, subscriber: &str, env: &Envelope) {
        self.record_delivery(subscriber, env);
    }
}

/// The core's observers: the parity engine, and a recorder while one is attached.
pub struct Observers {
    parity: Arc<Parity>,
    recorder: RwLock<Option<Arc<Recorder>>>,
    /// Whether `recorder` is set: asked for every event, so read without the lock (whose
    /// reader count is a line every publishing and receiving thread would write).
    recording: AtomicBool,
}

impl Observers {
    /// Observers with this parity engine and no recorder.
    pub fn new(parity: Arc<Parity>) -> Self {
        Self {
            parity,
            recorder: RwLock::new(None),
            recording: AtomicBool::new(false),
        }
    }

    /// The parity engine (always present; it can be switched off).
    pub fn parity(&self) -> &Arc<Parity> {
        &self.parity
    }

    /// Attaches (or with `None` detaches) a recorder.
    pub fn record_to(&self, recorder: Option<Arc<Recorder>>) {
        let mut slot = self.recorder.write();
        self.recording.store(recorder.is_some(), Release);
        *slot = recorder;
    }

    /// Whether a recorder is attached.
    pub fn is_recording(&self) -> bool {
        self.recording.load(Acquire)
    }

    /// The recorder, if one is attached.
    fn recorder(&self) -> Option<Arc<Recorder>> {
        if self.is_recording() {
            self.recorder.read().clone()
        } else {
            None
        }
    }

    /// A/A mode: the candidate is the control path run again.
    pub fn aa(&self) -> bool {
        self.parity.config().aa && self.parity.is_enabled()
    }

    /// Whether the legacy path's answer is being compared with busrt's (in a phase that has
    /// both): parity is on, or a trace is recorded, and not in A/A mode.
    pub fn comparing(&self) -> bool {
        (self.parity.is_enabled() || self.is_recording()) && !self.aa()
    }

    /// Whether anyone needs to know who received a direct delivery.
    pub fn watching_direct(&self, compare: bool) -> bool {
        compare || self.aa() || self.is_recording()
    }

    /// A subscriber was added.
    pub fn subscribed(&self, id: &str, filter: &Filter) {
        if let Some(r) = self.recorder() {
            r.subscribed(id, filter);
        }
    }

    /// An event was accepted.
    pub fn published(&self, env: &Envelope) {
        if let Some(r) = self.recorder() {
            r.published(env);
        }
    }

    /// The legacy router delivered `env` to `ids` now. `compare`: busrt's answer will follow
    /// for parity. In A/A mode the control path is also its own candidate (`matching`, the
    /// subscribers it would deliver to, computed only then).
    pub fn delivered_direct(
        &self,
        ids: &[String],
        env: &Envelope,
        compare: bool,
        matching: impl FnOnce() -> Vec<String>,
    ) {
        let aa = self.aa();
        if compare || aa {
            for id in ids {
                self.parity.control(id, env);
            }
        }
        if aa {
            for id in matching() {
                self.parity.candidate(&id, env);
            }
        }
        if let Some(r) = self.recorder() {
            for id in ids {
                r.control(id, env);
            }
        }
    }

    /// busrt serves; the legacy router would have delivered `env` to `ids` (the shadow
    /// control path).
    pub fn shadow_control(&self, ids: &[String], env: &Envelope) {
        let recorder = self.recorder();
        for id in ids {
            self.parity.control(id, env);
            if let Some(r) = recorder.as_ref() {
                r.control(id, env);
            }
        }
    }

    /// busrt delivered `env` to `ids` (the candidate path).
    pub fn candidate(&self, ids: &[String], env: &Envelope) {
        for id in ids {
            self.parity.candidate(id, env);
        }
    }
}
