//! `busbridge`: the command-line tool.

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "busbridge",
    version,
    about = "Legacy event bus over busrt: demo, broker, tools"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish this machine's processes through the legacy bus and show what subscribers got.
    Demo {
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file and print it resolved.
    CheckConfig {
        file: PathBuf,
        /// Print the resolved configuration as JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("busbridge: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Demo { json } => cli::demo::run(json).await,
            Command::CheckConfig { file, json } => cli::check_config(&file, json),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("busbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}
