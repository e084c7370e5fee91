//! `busbridge rpc TARGET METHOD [JSON]`: call an RPC method from a script.

use super::{EXIT_CONNECT, EXIT_USAGE};
use busbridge::client::ClientOptions;
use busbridge::rpc::{RpcCallError, RpcNode};
use std::process::ExitCode;
use std::time::Duration;

/// Call an RPC method and print the JSON reply. TARGET `-` finds the method's provider.
/// Exit codes: 0 ok, 3 unreachable, 4 timeout, 5 not found, 6 remote error.
#[derive(clap::Args)]
pub struct Args {
    target: String,
    method: String,
    /// Parameters as JSON (default `{}`).
    params: Option<String>,
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// busrt client name (what the broker's access rules see). Default: `busbridge-rpc-<pid>`.
    #[arg(long)]
    name: Option<String>,
}

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
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        target,
        method,
        params,
        connect,
        timeout,
        name,
    } = a;
    let params = params.unwrap_or_else(|| "{}".into());
    if serde_json::from_str::<serde_json::Value>(&params).is_err() {
        eprintln!("busbridge: the parameters are not JSON: {params}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let opts = ClientOptions {
        timeout,
        ..ClientOptions::default()
            .name(name.unwrap_or_else(|| format!("busbridge-rpc-{}", std::process::id())))
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
