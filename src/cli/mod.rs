//! Subcommands. `anyhow` is used here, at the edge, and nowhere in the library.

#[cfg(feature = "legacy")]
pub mod bench;
pub mod broker;
#[cfg(feature = "legacy")]
pub mod demo;
pub mod journal;
#[cfg(feature = "legacy")]
pub mod parity;
#[cfg(feature = "legacy")]
pub mod peer;
pub mod pubsub;
pub mod rpc;

use anyhow::Context;
use busbridge::config::Config;
use std::path::Path;
use std::process::ExitCode;

/// Exit code for an invalid configuration or invalid arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the broker cannot be reached.
pub const EXIT_CONNECT: u8 = 3;

/// `busbridge check-config FILE`: validates and prints the resolved configuration.
pub fn check_config(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    match Config::load(file) {
        Ok(config) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&config).context("render")?
                );
            } else {
                print!("{}", config.to_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("busbridge: {}: {e}", file.display());
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
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
