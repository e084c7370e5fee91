//! Subcommands. `anyhow` is used here, at the edge, and nowhere in the library.

pub mod broker;
#[cfg(feature = "legacy")]
pub mod demo;
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
