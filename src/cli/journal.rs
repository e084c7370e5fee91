//! `busbridge journal FILE`: a durable subscriber. Every event goes to FILE as a JSON line
//! (the envelope, with its origin and sequence number); restarted after a crash, it resumes
//! exactly after the last line written, so FILE holds each event once, in order per
//! publisher. With `--embedded SOCKET` it also hosts the broker, as an agent does.

use busbridge::bridge::BridgeBuilder;
use busbridge::client::ClientOptions;
use busbridge::durable::Journal;
use busbridge::phase::Phase;
use busbridge::subscription::EventSubscription;
use busbridge::Broker;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A durable subscriber: append every event to FILE (JSON lines with origin and sequence);
/// restarted, it resumes after the last line, so FILE holds each event once.
#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// Host the broker on this Unix socket instead of connecting to one.
    #[arg(long)]
    embedded: Option<PathBuf>,
    /// Exit once FILE holds this many events.
    #[arg(long)]
    count: Option<u64>,
    /// How long events behind a sequence gap wait for the resend (a durable subscriber
    /// would rather wait than lose).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    gap_wait: Duration,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut journal = Journal::open(&a.file)?;
    // busrt only: the journal has no legacy subscribers to compare with. A fresh journal
    // joins the stream live; one with history resumes after it.
    let mut builder = BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .gap_wait(a.gap_wait)
        .resume(journal.positions().clone())
        .client_options(ClientOptions {
            reconnect_initial: Duration::from_millis(50),
            ..Default::default()
        });
    builder = match &a.embedded {
        Some(socket) => {
            let mut broker = Broker::new();
            broker.spawn_ipc_server(socket, 100)?;
            builder.embedded(broker)
        }
        None => builder.connect(&a.connect),
    };
    let bridged = builder.build().await?;
    let rx = bridged
        .event_bus(Default::default())
        .subscribe_envelopes(EventSubscription::everything("journal"))
        .await?;
    // Before `ready`: a signal sent as soon as it is read must be heard.
    let mut stop = super::Interrupts::new()?;
    println!("ready {}", journal.len());
    std::io::stdout().flush()?;
    loop {
        if a.count.is_some_and(|n| journal.len() >= n) {
            break;
        }
        tokio::select! {
            next = rx.recv_async() => {
                let Some(envelope) = next else { break };
                journal.append(&envelope)?;
                if rx.is_empty() {
                    journal.flush()?;
                }
            }
            _ = stop.recv() => break,
        }
    }
    journal.flush()?;
    bridged.shutdown().await;
    println!("stopped {}", journal.len());
    Ok(ExitCode::SUCCESS)
}
