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
    /// How long, from the start, to keep trying (reconnecting across an outage) to hand
    /// everything to the broker before exiting 1 with the number that could not be.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

/// Acknowledged publishes in flight at once: the library's window (`bus.publish_window`).
const WINDOW: usize = 256;

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        topic,
        payload,
        connect: connect_uri,
        qos,
        count,
        deadline,
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
    let busrt_topic = match busbridge::topic::Topic::parse(&topic) {
        Ok(t) => t.to_busrt(),
        Err(e) => {
            eprintln!("busbridge: publish: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    // Pipelined as the bridge does: acknowledgements awaited behind a window, not one by one.
    // A failed acknowledgement put its message back in the outbox; the final disconnect
    // hands it over again, so it is not counted here.
    let publisher = client.publisher();
    let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
    let until = tokio::time::Instant::now() + deadline;
    let mut state = client.state();
    let mut pause = Duration::from_millis(5);
    // Messages never published because the outbox stayed full until the deadline.
    let mut unsent = 0;
    for i in 0..count {
        let more = i + 1 < count;
        let sent = loop {
            match publisher
                .publish_pipelined(busrt_topic.clone(), bytes.clone(), qos, more)
                .await
            {
                // The broker is away and the outbox is full: wait for it to come back (and
                // the outbox to drain) rather than give up, until the deadline.
                Err(ClientError::OutboxFull(_)) if tokio::time::Instant::now() < until => {
                    while let Some(ack) = acks.pop_front() {
                        let _ = ack.await;
                    }
                    // Reconnected, or a moment for the outbox to drain (it has no signal
                    // for room).
                    tokio::select! {
                        _ = state.changed() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        match sent {
            Ok(ack) => acks.push_back(ack),
            Err(ClientError::OutboxFull(_)) => {
                unsent = count - i;
                break;
            }
            Err(e) => {
                eprintln!("busbridge: publish: {e}");
                return Ok(ExitCode::from(match e {
                    ClientError::Topic(_) | ClientError::TooLarge { .. } => EXIT_USAGE,
                    _ => 1,
                }));
            }
        }
        while acks.len() >= WINDOW || (!more && !acks.is_empty()) {
            if let Some(ack) = acks.pop_front() {
                let _ = ack.await;
            }
        }
    }
    while let Some(ack) = acks.pop_front() {
        let _ = ack.await;
    }
    let left = until.saturating_duration_since(tokio::time::Instant::now());
    let unconfirmed = match client.disconnect_within(left).await {
        Ok(()) => 0,
        Err(ClientError::Unflushed { left }) => left as u64,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if unsent + unconfirmed == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "busbridge: {} of {count} messages could not be handed to the broker within {deadline:?} \
         ({unsent} never published: the outbox stayed full; {unconfirmed} never confirmed)",
        unsent + unconfirmed
    );
    Ok(ExitCode::from(1))
}
