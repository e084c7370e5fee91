//! `busbridge rpc` (call a method from a script) and `busbridge collector` (a real process
//! collector in its own process, serving the lifecycle operations).

use super::{EXIT_CONNECT, EXIT_USAGE};
use busbridge::bridge::BridgeBuilder;
use busbridge::client::ClientOptions;
use busbridge::collector::ProcessCollector;
use busbridge::config::Config;
use busbridge::phase::Phase;
use busbridge::rpc::{serve_control, CollectorSettings, RpcCallError, RpcNode};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

/// Exit code: no reply within the timeout.
pub const EXIT_TIMEOUT: u8 = 4;
/// Exit code: no such method, target or provider.
pub const EXIT_NOT_FOUND: u8 = 5;
/// Exit code: the remote handler refused or failed.
pub const EXIT_REMOTE: u8 = 6;

fn exit_for(e: &RpcCallError) -> u8 {
    match e {
        RpcCallError::Timeout(_) => EXIT_TIMEOUT,
        RpcCallError::MethodNotFound(_)
        | RpcCallError::NoSuchTarget(_)
        | RpcCallError::NoProvider(_)
        | RpcCallError::Ambiguous { .. } => EXIT_NOT_FOUND,
        RpcCallError::InvalidParams(_) | RpcCallError::Handler(_) | RpcCallError::Remote { .. } => {
            EXIT_REMOTE
        }
        RpcCallError::Connect(_) | RpcCallError::Disconnected(_) => EXIT_CONNECT,
        RpcCallError::Codec(_) => EXIT_USAGE,
    }
}

/// `busbridge rpc TARGET METHOD [JSON]`; TARGET `-` finds the method's one provider.
pub async fn call(
    target: String,
    method: String,
    params: Option<String>,
    connect: String,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let params = params.unwrap_or_else(|| "{}".into());
    if serde_json::from_str::<serde_json::Value>(&params).is_err() {
        eprintln!("busbridge: the parameters are not JSON: {params}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let opts = ClientOptions {
        timeout,
        ..ClientOptions::default().name(format!("busbridge-rpc-{}", std::process::id()))
    };
    let node = match RpcNode::connect_with(&connect, opts).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(ExitCode::from(EXIT_CONNECT));
        }
    };
    let result = if target == "-" {
        node.rpc_call(&method, params.into_bytes()).await
    } else {
        node.rpc_call_to(&target, &method, params.into_bytes())
            .await
    };
    node.close().await;
    match result {
        Ok(reply) => {
            match serde_json::from_slice::<serde_json::Value>(&reply) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
                Err(_) => println!("{}", String::from_utf8_lossy(&reply)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("busbridge: {method} on {target}: {e}");
            Ok(ExitCode::from(exit_for(&e)))
        }
    }
}

/// `busbridge collector`: scans this machine's processes when told to, publishes them on
/// `events.process.new`, and serves the lifecycle operations under `--name`.
pub async fn collector(
    name: String,
    connect: String,
    config: Option<PathBuf>,
    interval: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(p) => Config::load(&p)?,
        None => Config::default(),
    };
    let opts = ClientOptions::from_config(&config.client, config.broker.max_message_size);
    // Events go out on their own connection; RPC has its own (busrt's RPC client owns one).
    let bridged = BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .connect(&connect)
        .codec(config.codec)
        .client_options(opts.clone().name(format!("{name}.events")))
        .build()
        .await?;
    let mut settings = CollectorSettings::default();
    if let Some(i) = interval {
        settings.interval = i;
    }
    settings.validate().map_err(anyhow::Error::msg)?;
    let collector = ProcessCollector::new(&name, bridged.core().clone(), settings);
    let node = RpcNode::connect_with(&connect, opts.name(&name)).await?;
    serve_control(&node, collector.clone()).await?;
    let scan = tokio::spawn(collector.clone().run());
    println!("ready");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = collector.stopped() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // The shutdown reply is written before the connection goes: close flushes with a ping.
    node.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), bridged.link().flushed()).await;
    bridged.shutdown().await;
    scan.abort();
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
