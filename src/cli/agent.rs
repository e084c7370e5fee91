//! `busbridge agent`: a reference agent process, run from a configuration file as given. It
//! hosts the embedded broker the file describes (or connects to a standalone one), runs a
//! bridged bus at the file's phase with one subscriber to every event, and prints each event
//! it receives as a JSON line. With `--collector NAME` it also controls that collector over
//! RPC, as phase 3 does: `start_collection` once it answers, then `health_check` every
//! `--health-every`. The systemd example unit and the migration tests run it; a real agent
//! does the same through the library.

use busbridge::bridge::BridgeBuilder;
use busbridge::client::{Backoff, ClientOptions};
use busbridge::rpc::{
    CollectionStateResponse, HealthCheckRequest, HealthCheckResponse, RpcNode,
    StartCollectionRequest,
};
use busbridge::subscription::EventSubscription;
use busbridge::Broker;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run an agent from a configuration file: the embedded broker it describes, a bridged bus
/// at its phase, every received event printed as a JSON line.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Start this collector over RPC once it answers, then check its health every
    /// `--health-every`, printing each reply (the RPC connection is `<client.name>.rpc`).
    #[arg(long)]
    collector: Option<String>,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    health_every: Duration,
}

/// Name of the embedded broker for this process's own in-process clients.
const INPROC: &str = "agent";

fn line(v: serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let config = match super::load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let name = config
        .client
        .name
        .clone()
        .unwrap_or_else(|| "daemoneye-agent".into());
    let mut builder = match BridgeBuilder::from_config(&config) {
        Ok(b) => b.name(&name),
        Err(e) => return Ok(super::bridge_failed(&e)),
    };
    // The broker is ours when the file embeds one and names no other to connect to.
    let rpc_uri = match &config.client.connect {
        Some(uri) => uri.clone(),
        None if config.broker.embedded => {
            let mut broker = match Broker::from_config(&config) {
                Ok(b) => b,
                Err(e) => return Ok(super::broker_failed(&e)),
            };
            broker.set_name(INPROC);
            builder = builder.embedded(broker);
            format!("inproc://{INPROC}")
        }
        None => super::DEFAULT_CONNECT.to_owned(),
    };
    let bridged = match builder.build().await {
        Ok(b) => b,
        Err(e) => return Ok(super::bridge_failed(&e)),
    };
    for path in bridged.broker_socket_paths().await {
        println!("listening on {}", path.display());
    }
    if let Some(addr) = bridged.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    let rx = bridged
        .event_bus(Default::default())
        .subscribe_envelopes(EventSubscription::everything("agent"))
        .await?;
    let health = a.collector.map(|collector| {
        let opts = ClientOptions::from_config(&config.client, config.broker.max_message_size)
            .name(format!("{name}.rpc"));
        tokio::spawn(control(rpc_uri, opts, collector, a.health_every))
    });
    // Before `ready`: a signal sent as soon as it is read must be heard.
    let mut stop = super::Interrupts::new()?;
    line(json!({"ready": name, "phase": bridged.phase() as u8}))?;
    let mut received = 0u64;
    while a.count.is_none_or(|n| received < n) {
        let env = tokio::select! {
            e = rx.recv_async() => match e { Some(e) => e, None => break },
            _ = stop.recv() => break,
        };
        received += 1;
        line(json!({
            "origin": env.origin,
            "seq": env.seq,
            "publisher_id": env.publisher_id,
            "correlation_id": env.correlation_id,
            "event": env.event,
        }))?;
    }
    if let Some(h) = health {
        h.abort();
    }
    bridged.shutdown().await;
    line(json!({"stopped": name, "received": received}))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts `collector` and checks its health for as long as the agent runs; waits for the
/// broker and the collector with back-off, as a collector waits for its agent.
async fn control(uri: String, opts: ClientOptions, collector: String, every: Duration) {
    let mut backoff = Backoff::new(opts.reconnect_initial, opts.reconnect_max);
    let node = loop {
        match RpcNode::connect_with(&uri, opts.clone()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!("collector control: waiting for the broker: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    loop {
        let started: Result<CollectionStateResponse, _> = node
            .call_to(&collector, "start_collection", &StartCollectionRequest {})
            .await;
        match started {
            Ok(r) => {
                let _ = line(json!({"started": collector, "collecting": r.collecting}));
                break;
            }
            Err(e) => {
                tracing::warn!("start_collection on {collector}: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    loop {
        tokio::time::sleep(every).await;
        let reply: Result<HealthCheckResponse, _> = node
            .call_to(&collector, "health_check", &HealthCheckRequest {})
            .await;
        match reply {
            Ok(r) => {
                let _ = line(json!({"health": collector, "status": r.status,
                    "events_published": r.events_published}));
            }
            Err(e) => tracing::warn!("health_check on {collector}: {e}"),
        }
    }
}
