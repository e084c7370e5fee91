//! The migration phase switch: one enum, one place that decides the route.
//!
//! | phase | who routes local events | busrt side | parity |
//! |---|---|---|---|
//! | 0 legacy | legacy router | untouched | none (baseline) |
//! | 1 shadow | legacy router (authoritative) | every event mirrored to its topic | legacy = control, busrt = candidate |
//! | 2 topics | busrt subscriptions (authoritative) | both directions live | busrt = served, legacy = shadow control |
//! | 3 rpc | as 2 | lifecycle control over busrt RPC | RPC answers vs in-process answers |
//! | 4 busrt only | busrt | as 3 | against recorded traces |
//! | 5 tasks | busrt | as 4; trigger requests dispatched to one capable collector as tasks | exactly one result per task |
//!
//! Cargo features only add code; the phase is chosen at run time. Phases 0–3 need the `legacy`
//! feature (the legacy router is their control path).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A migration phase: which path delivers local events and what is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Phase {
    /// 0: legacy router only.
    Legacy = 0,
    /// 1: legacy authoritative, busrt mirrored as the candidate.
    Shadow = 1,
    /// 2: busrt topics authoritative, legacy router as the shadow control.
    Topics = 2,
    /// 3: as 2, plus lifecycle control over busrt RPC.
    Rpc = 3,
    /// 4: busrt only; no crossbeam.
    BusrtOnly = 4,
    /// 5: as 4, and trigger requests go to one capable collector instance as tasks
    /// (`busbridge::task`) instead of to every subscriber of `tasks.<target_collector>`.
    Tasks = 5,
}

/// The phase number is outside 0–5, or the build cannot serve it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhaseError {
    #[error("unknown phase {0}: phases are 0 (legacy) to 5 (tasks)")]
    /// The phase number is not 0 to 5.
    Unknown(u8),
    #[error("phase {0} needs the legacy router, but this build has no `legacy` feature; use phase 4 or rebuild with `--features legacy`")]
    /// The phase needs the legacy router, which this build leaves out.
    NeedsLegacy(u8),
    #[error("phase {0} needs busrt, but this build has no `busrt` feature")]
    /// The phase needs busrt, which this build leaves out.
    NeedsBusrt(u8),
    #[error(
        "phase {0} needs a bridged bus (built with a busrt connection); this bus is legacy-only"
    )]
    /// The phase needs a bridged bus.
    NeedsBridge(u8),
    #[error(
        "phase 5 needs a task dispatcher on this bus: build it at phase 5, or with `tasks.dispatch_triggers = true` to switch into phase 5 later"
    )]
    /// Phase 5 needs the bus's task dispatcher, which was not started.
    NeedsTasks,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 6] = [
        Phase::Legacy,
        Phase::Shadow,
        Phase::Topics,
        Phase::Rpc,
        Phase::BusrtOnly,
        Phase::Tasks,
    ];

    /// The default: the legacy path, until a user opts in.
    pub const fn default_for_build() -> Self {
        if cfg!(feature = "legacy") {
            Phase::Legacy
        } else {
            Phase::BusrtOnly
        }
    }

    /// Whether the legacy router delivers to local subscribers.
    pub fn legacy_authoritative(self) -> bool {
        matches!(self, Phase::Legacy | Phase::Shadow)
    }

    /// Whether events go to busrt at all.
    pub fn uses_busrt(self) -> bool {
        self != Phase::Legacy
    }

    /// Whether the legacy router runs (as authority or as shadow control).
    pub fn uses_legacy(self) -> bool {
        self < Phase::BusrtOnly
    }

    /// Whether trigger requests are dispatched as tasks (phase 5) rather than broadcast.
    pub fn dispatches_triggers(self) -> bool {
        self == Phase::Tasks
    }

    /// Whether the legacy router's answer is there to compare with (phases 1–3).
    pub fn has_control(self) -> bool {
        matches!(self, Phase::Shadow | Phase::Topics | Phase::Rpc)
    }

    /// Whether lifecycle control goes over busrt RPC.
    pub fn rpc_over_busrt(self) -> bool {
        self >= Phase::Rpc
    }

    /// Checks that this build can serve the phase.
    pub fn check_build(self) -> Result<(), PhaseError> {
        if self.uses_legacy() && !cfg!(feature = "legacy") {
            return Err(PhaseError::NeedsLegacy(self as u8));
        }
        if self.uses_busrt() && !cfg!(feature = "busrt") {
            return Err(PhaseError::NeedsBusrt(self as u8));
        }
        Ok(())
    }
}

impl Default for Phase {
    fn default() -> Self {
        Self::default_for_build()
    }
}

impl TryFrom<u8> for Phase {
    type Error = PhaseError;
    fn try_from(n: u8) -> Result<Self, Self::Error> {
        Phase::ALL
            .get(n as usize)
            .copied()
            .ok_or(PhaseError::Unknown(n))
    }
}

impl From<Phase> for u8 {
    fn from(p: Phase) -> u8 {
        p as u8
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Phase::Legacy => "legacy",
            Phase::Shadow => "shadow",
            Phase::Topics => "topics",
            Phase::Rpc => "rpc",
            Phase::BusrtOnly => "busrt-only",
            Phase::Tasks => "tasks",
        };
        write!(f, "{} ({name})", *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::try_from(p as u8), Ok(p));
        }
        assert_eq!(Phase::try_from(6), Err(PhaseError::Unknown(6)));
    }

    #[test]
    fn routes() {
        assert!(Phase::Shadow.legacy_authoritative());
        assert!(!Phase::Topics.legacy_authoritative());
        assert!(Phase::Rpc.rpc_over_busrt());
        assert!(!Phase::BusrtOnly.uses_legacy());
        assert!(!Phase::Tasks.uses_legacy());
        assert!(Phase::Tasks.rpc_over_busrt());
        assert!(Phase::Tasks.dispatches_triggers() && !Phase::BusrtOnly.dispatches_triggers());
    }
}
