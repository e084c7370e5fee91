//! `busbridge pub TOPIC [PAYLOAD|@FILE]`: publish a payload to a topic.

use super::{connect, EXIT_USAGE};
use busbridge::client::ClientError;
use busbridge::QoS;
use std::process::ExitCode;
use std::time::Duration;

/// Publish a payload to a topic.
#[derive(clap::Args)]
pub struct Args {
    /// Dotted topic, e.g. events.process.new.
    topic: String,
    /// The payload, or @FILE to read it from a file.
    payload: Option<String>,
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    #[arg(long, default_value = "processed")]
    qos: QoS,
    /// Publish the payload this many times.
    #[arg(long, default_value_t = 1)]
    count: u64,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        topic,
        payload,
        connect: connect_uri,
        qos,
        count,
    } = a;
    let bytes = match payload.as_deref() {
        Some(p) if p.starts_with('@') => std::fs::read(&p[1..])?,
        Some(p) => p.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let mut client = match connect(&connect_uri).await {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    for _ in 0..count {
        if let Err(e) = client.publish(&topic, bytes.clone(), qos).await {
            eprintln!("busbridge: publish: {e}");
            return Ok(ExitCode::from(match e {
                ClientError::Topic(_) | ClientError::TooLarge { .. } => EXIT_USAGE,
                _ => 1,
            }));
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), client.disconnect()).await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        _ => {
            eprintln!("busbridge: could not hand every message to the broker");
            Ok(ExitCode::from(1))
        }
    }
}
