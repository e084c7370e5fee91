//! `busbridge collectors`: the phase-5 collector registry as an agent sees it.

use busbridge::task::{Entry, TaskClient, TaskClientOptions};
use std::process::ExitCode;
use std::time::Duration;

/// List the collectors on a broker: type, capabilities, operations, load, liveness.
#[derive(clap::Args)]
pub struct Args {
    /// Broker address.
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// How long to listen for announcements.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// A JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Print again at every change, until interrupted.
    #[arg(long)]
    watch: bool,
}

/// Runs `busbridge collectors`.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let tasks = match TaskClient::connect(&a.connect, TaskClientOptions::default()).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(ExitCode::from(super::EXIT_CONNECT));
        }
    };
    let mut stop = super::Interrupts::new()?;
    tokio::time::sleep(a.wait).await;
    let mut last = Vec::new();
    loop {
        let now = tasks.collectors();
        if now != last || !a.watch {
            print(&now, a.json)?;
            last = now;
        }
        if !a.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tasks.wait_for(|c| c != last.as_slice(), Duration::from_secs(3600)) => {}
            _ = stop.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print(entries: &[Entry], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(entries)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<12} {:<8} {:>9}  {:<32} operations",
        "name", "type", "state", "load", "capabilities"
    );
    for e in entries {
        println!(
            "{:<24} {:<12} {:<8} {:>9}  {:<32} {}",
            e.info.name,
            e.info.kind,
            format!("{:?}", e.state).to_lowercase(),
            format!("{}/{}", e.info.load, e.info.capacity),
            format!("{:?}", e.info.capabilities),
            e.info.operations.join(", ")
        );
    }
    Ok(())
}
