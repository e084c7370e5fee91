//! `busbridge sub PATTERN…`: print messages on topics matching patterns.

use super::{connect, EXIT_USAGE};
use busbridge::codec::{Codec, CodecKind};
use busbridge::QoS;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// Print messages on topics matching patterns.
#[derive(clap::Args)]
pub struct Args {
    /// Dotted patterns, e.g. events.process.* or events.#.
    #[arg(required = true)]
    patterns: Vec<String>,
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
}

/// One message as a JSON object: the envelope (or a batch's envelopes) decoded when it is
/// busbridge's, else the payload as text or hex.
pub fn message_json(topic: &str, sender: &str, payload: &[u8]) -> Value {
    let codec = Codec::new(CodecKind::Json, usize::MAX);
    let mut out = json!({ "topic": topic, "sender": sender });
    let as_json = |envelope| {
        codec
            .encode(envelope)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null)
    };
    match Codec::default().decode_frame(payload) {
        Ok(envelopes) if envelopes.len() == 1 => out["envelope"] = as_json(&envelopes[0]),
        // A batch frame: every envelope, in order.
        Ok(envelopes) => out["envelopes"] = Value::Array(envelopes.iter().map(as_json).collect()),
        Err(_) => match std::str::from_utf8(payload) {
            Ok(s) => out["payload"] = Value::String(s.to_owned()),
            Err(_) => {
                out["payload_hex"] =
                    Value::String(payload.iter().map(|b| format!("{b:02x}")).collect())
            }
        },
    }
    out
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        patterns,
        connect: connect_uri,
        count,
        json: json_out,
    } = a;
    let mut client = match connect(&connect_uri).await {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    for p in &patterns {
        if let Err(e) = client.subscribe(p, QoS::Processed).await {
            eprintln!("busbridge: subscribe {p}: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    }
    // Readiness for scripts: the subscription is in place from here on.
    eprintln!("subscribed");
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let message = tokio::select! {
            m = client.recv() => m?,
            _ = tokio::signal::ctrl_c() => break,
        };
        seen += 1;
        let line = message_json(message.topic(), message.sender(), message.payload());
        if json_out {
            println!("{line}");
        } else {
            let body = line
                .get("envelope")
                .or_else(|| line.get("envelopes"))
                .or_else(|| line.get("payload"))
                .or_else(|| line.get("payload_hex"))
                .cloned()
                .unwrap_or(Value::Null);
            println!("{} {} {}", message.topic(), message.sender(), body);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
    Ok(ExitCode::SUCCESS)
}
