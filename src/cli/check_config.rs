//! `busbridge check-config FILE`: validate a configuration and print it resolved.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Validate a configuration file and print it resolved.
#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    /// Print the resolved configuration as JSON instead of TOML.
    #[arg(long)]
    json: bool,
}

/// `busbridge check-config FILE`: validates and prints the resolved configuration.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args { file, json } = a;
    let config = match super::load_config(&file) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
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
