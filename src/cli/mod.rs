//! Subcommands. `anyhow` is used here, at the edge, and nowhere in the library.

//!
//! One convention: every subcommand is a module `name` with `name::Args` (its clap
//! arguments) and `name::run(args)`.

pub mod agent;
#[cfg(feature = "legacy")]
pub mod bench;
pub mod broker;
pub mod check_config;
pub mod collector;
pub mod collectors;
#[cfg(feature = "legacy")]
pub mod demo;
#[cfg(feature = "nats")]
pub mod fleet;
#[cfg(feature = "nats")]
pub mod fleet_bench;
pub mod journal;
#[cfg(feature = "legacy")]
pub mod measure;
#[cfg(feature = "legacy")]
pub mod parity;
#[cfg(feature = "legacy")]
pub mod peer;
pub mod publish;
pub mod rpc;
pub mod stats;
pub mod subscribe;
pub mod task;
pub mod top;
#[cfg(feature = "nats")]
pub mod uplink;

use busbridge::client::{AsyncClient, ClientError, ClientOptions};
use std::process::ExitCode;

/// Without `--connect`: the default socket of `busbridge broker`.
pub const DEFAULT_CONNECT: &str = "ipc://daemoneye.sock";

/// SIGINT and SIGTERM, heard from the moment this is made, so make it before saying
/// `ready`. One sent while the command is busy is kept for its next wait: a
/// `tokio::signal::ctrl_c()` future made anew at each wait only hears what arrives while it
/// is polled (tokio's handler, installed at the first one, swallows the rest), and before the
/// first one the default action kills the process.
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Either signal, now or since the last call.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Exit code for an invalid configuration or invalid arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the broker cannot be reached.
pub const EXIT_CONNECT: u8 = 3;

/// A client for `pub`/`sub`; a failure is printed and becomes its exit code.
pub async fn connect(uri: &str) -> Result<AsyncClient, ExitCode> {
    AsyncClient::connect_with(uri, ClientOptions::default())
        .await
        .map_err(|e| {
            eprintln!("busbridge: {e}");
            match e {
                ClientError::Endpoint(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_CONNECT),
            }
        })
}

/// A bridged bus for `pub --bridged` / `sub --bridged`, named `busbridge-ROLE-PID`: phase 4
/// (busrt only; the tools have no legacy subscribers, and it builds without `legacy`).
pub fn bridged_builder(uri: &str, role: &str) -> busbridge::bridge::BridgeBuilder {
    busbridge::bridge::BridgeBuilder::new()
        .phase(busbridge::phase::Phase::BusrtOnly)
        .connect(uri)
        .name(format!("busbridge-{role}-{}", std::process::id()))
}

/// Loads a configuration file; a bad one is printed and becomes exit code 2.
pub fn load_config(path: &std::path::Path) -> Result<busbridge::config::Config, ExitCode> {
    busbridge::config::Config::load(path).map_err(|e| {
        eprintln!("busbridge: {}: {e}", path.display());
        ExitCode::from(EXIT_USAGE)
    })
}

/// A broker that would not start, printed: exit 2 when the configuration is at fault, else 1.
pub fn broker_failed(e: &busbridge::broker::BrokerError) -> ExitCode {
    eprintln!("busbridge: {e}");
    ExitCode::from(if e.is_configuration() { EXIT_USAGE } else { 1 })
}

/// A bridged bus that would not start, printed: 2 for configuration, 3 for an unreachable
/// broker (only when asked not to wait for it), else 1.
pub fn bridge_failed(e: &busbridge::bridge::BridgeError) -> ExitCode {
    use busbridge::bridge::BridgeError;
    match e {
        BridgeError::Broker(b) => broker_failed(b),
        BridgeError::Config(_) | BridgeError::Client(ClientError::Endpoint(_)) => {
            eprintln!("busbridge: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        BridgeError::Client(_) => {
            eprintln!("busbridge: {e}");
            ExitCode::from(EXIT_CONNECT)
        }
        BridgeError::Bus(_) | BridgeError::Metrics(_) => {
            eprintln!("busbridge: {e}");
            ExitCode::from(1)
        }
    }
}

/// Parses a phase number for clap.
#[cfg(feature = "legacy")]
pub fn parse_phase(s: &str) -> Result<busbridge::phase::Phase, String> {
    let n: u8 = s.parse().map_err(|e| format!("{e}"))?;
    busbridge::phase::Phase::try_from(n).map_err(|e| e.to_string())
}

/// Parses a codec name (`protobuf`, `json`) for clap.
#[cfg(feature = "legacy")]
pub fn parse_codec(s: &str) -> Result<busbridge::codec::CodecKind, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

/// Phase-3 control parity: an in-process collector served over busrt RPC at `uri`, asked
/// directly and through RPC for the read-only operations. Returns (compared, mismatches).
#[cfg(feature = "legacy")]
pub async fn rpc_parity(
    uri: &str,
    core: std::sync::Arc<busbridge::bus::Core>,
) -> anyhow::Result<(u64, Vec<String>)> {
    use busbridge::collector::ProcessCollector;
    use busbridge::rpc::*;
    use std::sync::Arc;
    let collector = ProcessCollector::new("procmond", core, CollectorSettings::default());
    let server = RpcNode::connect(uri, "procmond").await?;
    serve_control(&server, collector.clone()).await?;
    let agent = Arc::new(RpcNode::connect(uri, "parity-rpc-agent").await?);
    let phased = PhasedControl::new(
        busbridge::phase::Phase::Rpc,
        collector,
        Arc::new(RemoteCollector::new(agent, "procmond")),
    );
    for _ in 0..3 {
        phased.health_check().await?;
        phased.get_capabilities().await?;
    }
    server.close().await;
    Ok(phased.parity())
}
