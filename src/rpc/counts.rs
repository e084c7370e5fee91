//! RPC calls counted by side, method and outcome, for `/metrics`
//! (`busbridge_rpc_calls_total`). Process-wide: every [`RpcNode`](super::RpcNode) of the
//! process counts into one table, which the process's metrics endpoint reads.
//!
//! Cardinality is bounded: outcomes are a fixed set, and method names beyond the first
//! [`MAX_METHODS`] seen are counted as `other` (a caller cannot grow the table by calling
//! made-up names).

use super::RpcCallError;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Most distinct method names counted; the rest count as `other`.
pub const MAX_METHODS: usize = 64;

/// Which end of a call counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A call this process made.
    Client,
    /// A call this process served.
    Server,
}

impl Side {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallCount {
    /// Which end.
    pub side: Side,
    /// The method (or `other`).
    pub method: String,
    /// `ok` or why not (see [`outcome`]).
    pub outcome: &'static str,
    /// Calls so far.
    pub calls: u64,
}

/// Calls by method, then by side and outcome. Looked up by `&str`, so a method already
/// counted costs no allocation.
type Table = BTreeMap<String, BTreeMap<(Side, &'static str), u64>>;

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

/// Counts one call.
pub(crate) fn count(side: Side, method: &str, outcome: &'static str) {
    let mut t = TABLE.lock();
    // `other` is never a counted name itself, so the limit counts real names only.
    let named = t.len() - usize::from(t.contains_key("other"));
    let method = if t.contains_key(method) || named < MAX_METHODS {
        method
    } else {
        "other"
    };
    if !t.contains_key(method) {
        t.insert(method.to_owned(), BTreeMap::new());
    }
    if let Some(calls) = t.get_mut(method) {
        *calls.entry((side, outcome)).or_default() += 1;
    }
}

/// Every count so far, ordered by method, side and outcome.
pub fn call_counts() -> Vec<CallCount> {
    TABLE
        .lock()
        .iter()
        .flat_map(|(method, calls)| {
            calls.iter().map(|((side, outcome), calls)| CallCount {
                side: *side,
                method: method.clone(),
                outcome,
                calls: *calls,
            })
        })
        .collect()
}

/// The outcome label of a call's result on the calling side.
pub fn outcome<T>(result: &Result<T, RpcCallError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(RpcCallError::MethodNotFound(_)) => "method_not_found",
        Err(RpcCallError::InvalidParams(_)) => "invalid_params",
        Err(RpcCallError::Handler(_)) => "handler_failed",
        Err(RpcCallError::Timeout(_)) => "timeout",
        Err(RpcCallError::NoSuchTarget(_)) => "no_such_target",
        Err(RpcCallError::NoProvider(_)) => "no_provider",
        Err(RpcCallError::Ambiguous { .. }) => "ambiguous",
        Err(RpcCallError::Disconnected(_)) => "disconnected",
        Err(RpcCallError::Codec(_)) => "codec",
        Err(RpcCallError::Remote { .. }) => "remote_error",
        Err(RpcCallError::Connect(_)) => "connect",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_bounded() {
        for i in 0..(MAX_METHODS * 2) {
            count(Side::Client, &format!("bounded-test-{i}"), "ok");
        }
        let rows = call_counts();
        let names: std::collections::BTreeSet<&str> =
            rows.iter().map(|r| r.method.as_str()).collect();
        assert!(names.len() <= MAX_METHODS + 1, "{}", names.len());
        assert!(rows.iter().any(|r| r.method == "other" && r.calls > 0));
    }
}
