//! `busbridge broker`: the embedded broker, run as its own process.

use busbridge::config::Config;
use busbridge::Broker;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the broker as its own process until SIGINT/SIGTERM.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket path (relative: in the private runtime directory).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also listen on TCP, host:port (loopback unless the configuration allows more).
    #[arg(long)]
    tcp: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        config,
        socket,
        tcp,
    } = a;
    let mut config = match config {
        Some(path) => match super::load_config(&path) {
            Ok(c) => c,
            Err(code) => return Ok(code),
        },
        None => Config::default(),
    };
    if let Some(socket) = socket {
        config.transport.socket_path = socket;
    }
    if tcp.is_some() {
        config.transport.tcp_listen = tcp;
    }
    if let Err(e) = config.validate() {
        eprintln!("busbridge: {e}");
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }
    let mut broker = match Broker::from_config(&config) {
        Ok(b) => b,
        Err(e) => return Ok(super::broker_failed(&e)),
    };
    if let Err(e) = broker.spawn().await {
        return Ok(super::broker_failed(&e));
    }
    // `[metrics] listen`: the broker's counters on /metrics.
    let metrics = match (config.metrics.addr()?, broker.status_handle()) {
        (Some(addr), Some(handle)) => {
            let source: busbridge::metrics::Source = std::sync::Arc::new(move || {
                let handle = handle.clone();
                Box::pin(async move {
                    busbridge::metrics::Snapshot {
                        buses: Vec::new(),
                        brokers: handle.status().await.into_iter().collect(),
                        ..Default::default()
                    }
                })
            });
            Some(busbridge::metrics::MetricsServer::start(addr, source).await?)
        }
        _ => None,
    };
    // Before `ready`: a signal sent as soon as it is read must be heard.
    let mut stop = super::Interrupts::new()?;
    {
        // One line per listener, then "ready": scripts and tests wait for it.
        let mut out = std::io::stdout().lock();
        for p in broker.socket_paths() {
            writeln!(out, "listening on ipc://{}", p.display())?;
        }
        for a in broker.tcp_addrs() {
            writeln!(out, "listening on tcp://{a}")?;
        }
        for a in broker.tls_addrs() {
            writeln!(out, "listening on tls://{a}")?;
        }
        if let Some(m) = &metrics {
            writeln!(out, "metrics on http://{}/metrics", m.addr())?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
    }
    stop.recv().await;
    tracing::info!("signal received; draining");
    broker.shutdown().await;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
