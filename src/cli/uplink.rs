//! `busbridge uplink --config FILE`: this host's broker into NATS JetStream, and the fleet's
//! tasks into this host's collectors (see [`busbridge::fleet`]).

use busbridge::config::UplinkConfig;
use busbridge::fleet::NatsUplink;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Forward this host's events to NATS JetStream and serve the fleet's tasks here.
#[derive(clap::Args)]
pub struct Args {
    /// A configuration with an `[uplink]` section (NATS servers, subjects, stream, spool,
    /// credentials and TLS files).
    #[arg(long)]
    config: PathBuf,
    /// The host's broker (default: `client.connect` of the configuration, else the
    /// default socket).
    #[arg(long)]
    connect: Option<String>,
    /// Print the counters as a JSON line this often (they are printed on exit too).
    #[arg(long, value_parser = humantime::parse_duration)]
    stats_every: Option<Duration>,
}

/// Runs `busbridge uplink` until SIGINT or SIGTERM.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let config = match super::load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(uplink_config) = config.uplink.clone() else {
        eprintln!(
            "busbridge: {}: no [uplink] section (see migration/fleet.md)",
            a.config.display()
        );
        return Ok(ExitCode::from(super::EXIT_USAGE));
    };
    let broker = a
        .connect
        .or(config.client.connect.clone())
        .unwrap_or_else(|| super::DEFAULT_CONNECT.to_owned());
    let uplink = match NatsUplink::start(uplink_config.clone(), &broker).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(ExitCode::from(match e {
                busbridge::fleet::FleetError::Config(_) => super::EXIT_USAGE,
                _ => 1,
            }));
        }
    };
    // `[metrics] listen`: the uplink's counters and its bus's on /metrics.
    let metrics = match config.metrics.addr()? {
        Some(addr) => {
            let read = uplink.stats_reader();
            let (link, core) = (
                uplink.bridged().link().clone(),
                uplink.bridged().core().clone(),
            );
            let source: busbridge::metrics::Source = std::sync::Arc::new(move || {
                let snapshot = busbridge::metrics::Snapshot {
                    buses: vec![link.status(&core)],
                    extra: vec![std::sync::Arc::new(vec![read()])],
                    ..Default::default()
                };
                Box::pin(std::future::ready(snapshot))
            });
            Some(busbridge::metrics::MetricsServer::start(addr, source).await?)
        }
        None => None,
    };
    // Before `ready`: a signal sent as soon as it is read must be heard.
    let mut stop = super::Interrupts::new()?;
    announce(&uplink_config);
    if let Some(m) = &metrics {
        println!("metrics on http://{}/metrics", m.addr());
    }
    let mut every = tokio::time::interval(a.stats_every.unwrap_or(Duration::from_secs(3600)));
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            _ = every.tick(), if a.stats_every.is_some() => print_stats(&uplink.stats()),
        }
    }
    drop(metrics);
    let stats = uplink.shutdown().await?;
    print_stats(&stats);
    Ok(ExitCode::SUCCESS)
}

fn announce(config: &UplinkConfig) {
    println!(
        "ready host={} stream={} spool={}",
        config.host_name(),
        config.stream,
        config.spool_path().display()
    );
    let _ = std::io::stdout().flush();
}

fn print_stats(stats: &busbridge::fleet::UplinkStats) {
    println!("{}", serde_json::json!({ "stats": stats }));
    let _ = std::io::stdout().flush();
}
