//! `busbridge collector`: a real process collector in its own process, serving the
//! lifecycle operations.

use busbridge::bridge::BridgeBuilder;
use busbridge::client::ClientOptions;
use busbridge::collector::ProcessCollector;
use busbridge::config::Config;
use busbridge::phase::Phase;
use busbridge::rpc::{serve_control, CollectorSettings, RpcNode};
use busbridge::task::ops::serve_builtin;
use busbridge::task::TaskServer;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run a process collector that serves the lifecycle operations over RPC.
#[derive(clap::Args)]
pub struct Args {
    /// busrt name of its RPC server; its bridged bus is `<name>.events`. Default: the
    /// configuration's `client.name`, else `procmond`.
    #[arg(long)]
    name: Option<String>,
    /// Default: the configuration's `client.connect`, else its `transport.socket_path`.
    #[arg(long)]
    connect: Option<String>,
    /// Configuration file (TOML): phase, codec, client settings, name and address.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Time between scans.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Also serve phase-5 tasks as a collector of this type (`process`, `network`,
    /// `filesystem`, `performance` or your own), with the operations of that type
    /// (`busbridge::task::ops`). Its task connection is `<name>%%tasks`.
    #[arg(long = "type")]
    kind: Option<String>,
    /// Tasks it runs at once (with `--type`).
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// Heartbeat interval of its task server (with `--type`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
}

/// `busbridge collector`: scans this machine's processes when told to, publishes them on
/// `events.process.new`, and serves the lifecycle operations under `--name`.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        name,
        connect,
        config,
        interval,
        kind,
        capacity,
        heartbeat,
    } = a;
    let config = match config.map(|p| super::load_config(&p)) {
        Some(Ok(c)) => c,
        Some(Err(code)) => return Ok(code),
        None => Config {
            phase: Phase::BusrtOnly,
            ..Config::default()
        },
    };
    let name = name
        .or_else(|| config.client.name.clone())
        .unwrap_or_else(|| "procmond".into());
    // An agent's file (no `client.connect`) still says where its socket is.
    let connect = connect
        .or_else(|| config.client.connect.clone())
        .unwrap_or_else(|| format!("ipc://{}", config.transport.socket_path.display()));
    if !config.phase.uses_busrt() {
        eprintln!(
            "busbridge: a collector in its own process needs phase 1 or later: at phase 0 \
             nothing is sent to busrt, so its events would reach no one"
        );
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }
    if config.phase.legacy_authoritative() {
        tracing::warn!(
            "phase {}: an agent at this phase counts events from other processes \
             (shadow_remote) but does not deliver them; collectors move out of the agent at phase 2",
            config.phase as u8
        );
    }
    // A bad address is an error at once; an absent broker is waited for below.
    if let Err(e) = busbridge::endpoint::Endpoint::parse(&connect) {
        eprintln!("busbridge: {e}");
        return Ok(ExitCode::from(super::EXIT_USAGE));
    }
    let opts = ClientOptions::from_config(&config.client, config.broker.max_message_size);
    // Events go out on their own connection; RPC has its own (busrt's RPC client owns one).
    // Every `bus.*` setting of the file applies; the broker is the agent's, never our own.
    let mut bus_config = config.clone();
    bus_config.client.connect = Some(connect.clone());
    bus_config.client.name = Some(format!("{name}.events"));
    let bridged = BridgeBuilder::from_config(&bus_config)?.build().await?;
    let mut settings = CollectorSettings::default();
    if let Some(i) = interval {
        settings.interval = i;
    }
    settings.validate().map_err(anyhow::Error::msg)?;
    let collector = ProcessCollector::new(&name, bridged.core().clone(), settings);
    // Start in any order: wait for the broker (with back-off) rather than fail.
    let mut backoff = busbridge::client::Backoff::new(opts.reconnect_initial, opts.reconnect_max);
    let node = loop {
        match RpcNode::connect_with(&connect, opts.clone().name(&name)).await {
            Ok(node) => break node,
            Err(e @ busbridge::rpc::RpcCallError::Connect(_)) => {
                tracing::warn!("waiting for the broker: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    serve_control(&node, collector.clone()).await?;
    let tasks = match kind {
        Some(kind) => {
            // Its RPC node holds `name`: the task server is its secondary.
            let builder = TaskServer::builder(&name, &kind)
                .shares_name()
                .capacity(capacity)
                .heartbeat(heartbeat)
                .client_options(opts.clone())
                .events(bridged.core().clone());
            Some(serve_builtin(builder, &kind).serve(&connect).await?)
        }
        None => None,
    };
    let scan = tokio::spawn(collector.clone().run());
    // Before `ready`: a signal sent as soon as it is read must be heard.
    let mut stop = super::Interrupts::new()?;
    println!("ready");
    std::io::stdout().flush()?;
    tokio::select! {
        _ = collector.stopped() => {}
        _ = stop.recv() => {}
    }
    // Registries take a collector that says goodbye out at once.
    if let Some(tasks) = tasks {
        tasks.shutdown().await;
    }
    // The shutdown reply is written before the connection goes: close flushes with a ping.
    node.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), bridged.link().flushed()).await;
    bridged.shutdown().await;
    scan.abort();
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
