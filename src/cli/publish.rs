//! `busbridge pub TOPIC [PAYLOAD|@FILE]`: publish a payload to a topic, or with `--bridged`
//! publish events as a bridge origin, which a broker outage cannot make lose.

use super::{connect, EXIT_USAGE};
use busbridge::client::{Ack, ClientError, Grouped, GroupedPublisher};
use busbridge::event::CollectionEvent;
use busbridge::topic::{topic_for_event, Topic};
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
    /// At most this many messages a second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<u64>,
    /// Publish events as a bridge origin (sequence numbers, a replay buffer): the payload is
    /// one event as JSON, or numbered sample events of TOPIC's kind when omitted, each with
    /// its number as correlation id. Exits 0 once every event came back from the broker and
    /// no subscriber asked for one again for `--linger`; else 1, saying how many did not.
    #[arg(long)]
    bridged: bool,
    /// With `--bridged`: how long to stay, after the last event came back, answering
    /// subscribers that ask for what they missed (more than the bridge's heartbeat, 500 ms).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    linger: Duration,
}

impl Args {
    /// True if `--rate` paces the messages.
    pub fn paced(&self) -> bool {
        paced(self.rate).is_some()
    }
}

/// The rate that paces messages: `--rate 0` means unpaced, as no `--rate` does.
fn paced(rate: Option<u64>) -> Option<u64> {
    rate.filter(|r| *r > 0)
}

/// Sleeps until message `i` is due at `rate` a second from `start`.
async fn pace(rate: Option<u64>, start: tokio::time::Instant, i: u64) {
    if let Some(r) = paced(rate) {
        let due = Duration::from_nanos(i.saturating_mul(1_000_000_000) / r);
        tokio::time::sleep_until(start + due).await;
    }
}

/// Acknowledged publishes in flight at most, and the bytes they may hold (each is kept until
/// confirmed, to hand it over again after a reconnect). The bridge's window (256) covers one
/// round trip of frames it batches; the tool sends one message per frame, so it needs more in
/// flight to keep the broker's confirmations from setting its pace.
const WINDOW: usize = 8192;
const WINDOW_BYTES: usize = 32 << 20;
/// Messages confirmed by one acknowledgement at most (see `GroupedPublisher`): enough that
/// the broker's replies cost little, few enough that a failed one resends little.
const GROUP: usize = 64;

/// The window for messages of `len` bytes: [`WINDOW`], fewer for large ones.
fn window(len: usize) -> usize {
    (WINDOW_BYTES / len.max(1)).clamp(16, WINDOW)
}

/// Awaits one acknowledgement: the number of messages it failed for (0 when confirmed).
async fn settle((messages, ack): (usize, Ack)) -> u64 {
    match ack.await {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(messages, "publish not confirmed and not kept: {e}");
            messages as u64
        }
    }
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let bytes = match a.payload.as_deref() {
        Some(p) if p.starts_with('@') => Some(std::fs::read(&p[1..])?),
        Some(p) => Some(p.as_bytes().to_vec()),
        None => None,
    };
    if a.bridged {
        return run_bridged(a, bytes).await;
    }
    let Args {
        topic,
        connect: connect_uri,
        qos,
        count,
        deadline,
        rate,
        ..
    } = a;
    let bytes = bytes.unwrap_or_default();
    let mut client = match connect(&connect_uri).await {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let busrt_topic = match busbridge::topic::Topic::parse(&topic) {
        Ok(t) => busbridge::topic::BusrtTopic::from(t.to_busrt()),
        Err(e) => {
            eprintln!("busbridge: publish: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    // Pipelined as the bridge does: acknowledgements awaited behind a window, not one by one,
    // and one per group of messages (see `GroupedPublisher`). A failed acknowledgement put its
    // messages back in the outbox, and the final disconnect hands them over again; one that
    // comes back as an error could not be kept (the broker denied it, or the outbox was full)
    // and is counted.
    let publisher = client.publisher();
    let window = window(bytes.len());
    let mut grouped = GroupedPublisher::new(publisher.clone(), (window / 8).clamp(1, GROUP));
    let bytes = bytes::Bytes::from(bytes);
    // Acknowledgements in flight, each with the number of messages it confirms.
    let mut acks = std::collections::VecDeque::with_capacity(window);
    let mut in_flight = 0;
    let until = tokio::time::Instant::now() + deadline;
    let mut state = client.state();
    let mut pause = Duration::from_millis(5);
    // Messages never published because the outbox stayed full until the deadline.
    let mut unsent = 0;
    // Messages whose acknowledgement failed and that could not be kept for another try.
    let mut refused = 0u64;
    let start = tokio::time::Instant::now();
    for i in 0..count {
        pace(rate, start, i).await;
        if !acks.is_empty() && !client.is_connected() {
            // The connection is gone: what is in flight comes back to the outbox first, so
            // messages already accepted have room there before new ones take it.
            while let Some(ack) = acks.pop_front() {
                refused += settle(ack).await;
            }
            in_flight = 0;
        }
        let next = (i + 1 < count).then_some(&busrt_topic);
        let sent = loop {
            let sent = match qos {
                QoS::Processed => grouped
                    .publish(busrt_topic.clone(), bytes.clone(), next)
                    .await
                    .map(|g| match g {
                        Grouped::Closed(g) => Some((g.messages, g.ack)),
                        Grouped::Open | Grouped::Queued(_) => None,
                    }),
                QoS::Realtime => publisher
                    .publish_pipelined(busrt_topic.clone(), bytes.clone(), qos, next.is_some())
                    .await
                    .map(|ack| Some((1, ack))),
            };
            match sent {
                // The broker is away and the outbox is full: wait for it to come back (and
                // the outbox to drain) rather than give up, until the deadline.
                Err(ClientError::OutboxFull(_)) if tokio::time::Instant::now() < until => {
                    while let Some(ack) = acks.pop_front() {
                        refused += settle(ack).await;
                    }
                    in_flight = 0;
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
            Ok(Some(ack)) => {
                in_flight += ack.0;
                acks.push_back(ack);
            }
            Ok(None) => {}
            Err(ClientError::OutboxFull(_)) => {
                // This one and the rest, and the open group: written, never confirmed.
                unsent = count - i;
                refused += grouped.open() as u64;
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
        while in_flight >= window || (next.is_none() && !acks.is_empty()) {
            if let Some(ack) = acks.pop_front() {
                in_flight -= ack.0;
                refused += settle(ack).await;
            }
        }
    }
    while let Some(ack) = acks.pop_front() {
        refused += settle(ack).await;
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
    if unsent + unconfirmed + refused == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "busbridge: {} of {count} messages could not be handed to the broker within {deadline:?} \
         ({unsent} never published: the outbox stayed full; {unconfirmed} never confirmed; \
         {refused} refused or not kept after a failed confirmation)",
        unsent + unconfirmed + refused
    );
    Ok(ExitCode::from(1))
}

/// The events `pub --bridged` sends: `payload` (one event as JSON) each time, or sample
/// events of `topic`'s kind. A usage error names what is wrong.
fn bridged_events(
    topic: &str,
    payload: Option<Vec<u8>>,
) -> Result<Box<dyn Fn(u64) -> CollectionEvent + Send>, String> {
    let topic = Topic::parse(topic).map_err(|e| e.to_string())?;
    if let Some(bytes) = payload {
        let event: CollectionEvent = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the payload is not an event: {e}"))?;
        let its = topic_for_event(&event);
        if its != topic {
            return Err(format!("the event's topic is {its}, not {topic}"));
        }
        return Ok(Box::new(move |_| event.clone()));
    }
    // The sample events cycle through five kinds: keep those of the topic's kind.
    let kinds: Vec<Topic> = (0..5)
        .map(|k| topic_for_event(&busbridge::scenario::sample_event("pub", k)))
        .collect();
    let Some(kind) = kinds.iter().position(|t| *t == topic) else {
        let names: Vec<String> = kinds.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no sample events on {topic}: give an event as the payload, or one of {}",
            names.join(", ")
        ));
    };
    Ok(Box::new(move |i| {
        busbridge::scenario::sample_event("pub", i as usize * 5 + kind)
    }))
}

/// `pub --bridged`: a bridged bus (phase 4) publishes numbered events, waits until each came
/// back from the broker (the bridge asks itself again for what the broker lost), then stays
/// to answer the resend requests of subscribers that missed some.
async fn run_bridged(a: Args, payload: Option<Vec<u8>>) -> anyhow::Result<ExitCode> {
    let make = match bridged_events(&a.topic, payload) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("busbridge: publish: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let bridged = match super::bridged_builder(&a.connect, "pub").build().await {
        Ok(b) => b,
        Err(e) => return Ok(super::bridge_failed(&e)),
    };
    let until = tokio::time::Instant::now() + a.deadline;
    let bus = bridged.event_bus(Default::default());
    // The bridge listens, so its own events come back from the broker: that is the
    // confirmation. With no local subscriber to deliver them to, a return is settled from its
    // header and never decoded (a subscriber draining them doubled this command's CPU).
    busbridge::bus::Uplink::listen(bridged.link().as_ref()).await?;
    let start = tokio::time::Instant::now();
    for i in 0..a.count {
        pace(a.rate, start, i).await;
        bus.publish(make(i), i.to_string()).await?;
    }
    let link = bridged.link().clone();
    let stats = bridged.core().stats().clone();
    let settled = tokio::time::timeout_at(until, link.settled()).await.is_ok();
    // Stay while subscribers still ask for events again: quiet for `linger` ends it.
    let resends = || {
        let s = stats.snapshot();
        s.bridge_resent + s.bridge_resend_unavailable
    };
    let mut seen = resends();
    while settled && tokio::time::Instant::now() < until {
        let quiet = tokio::time::Instant::now() + a.linger;
        tokio::time::sleep_until(quiet.min(until)).await;
        let now = resends();
        if now == seen {
            break;
        }
        seen = now;
    }
    let unconfirmed = link.in_flight() as u64;
    let lost = stats.snapshot().bridge_resend_unavailable;
    bridged.shutdown().await;
    if unconfirmed + lost == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "busbridge: {} of {} events not confirmed delivered within {:?} ({unconfirmed} never \
         came back from the broker; {lost} asked for again after leaving the replay buffer)",
        unconfirmed + lost,
        a.count,
        a.deadline
    );
    Ok(ExitCode::from(1))
}
