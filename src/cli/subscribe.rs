//! `busbridge sub PATTERN…`: print messages on topics matching patterns, or with `--bridged`
//! the events of bridged origins, each once, in order, with gaps filled.

use super::{connect, EXIT_USAGE};
use busbridge::codec::{Codec, CodecKind};
use busbridge::queue::TryRecvError;
use busbridge::topic::{topic_for_event, Pattern};
use busbridge::{EventSubscription, QoS};
use serde_json::{json, Value};
use std::future::Future;
use std::io::Write;
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
    /// Receive as a bridged bus: events from bridge origins (`pub --bridged`, bridged
    /// processes), duplicates dropped, gaps asked for again and waited for up to
    /// `--gap-wait`, each origin's events in order. One JSON object a line.
    #[arg(long)]
    bridged: bool,
    /// With `--bridged`: how long to hold events behind a gap for it to fill.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    gap_wait: Duration,
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

/// Lines to stdout through one buffer, flushed whenever nothing more is waiting: an idle
/// stream's line goes out at once, a busy one costs a write per buffer. (`println!` of a
/// `Value` went through the formatter piece by piece into stdout's line buffer, which
/// looked for a newline in each piece: over a third of `sub --bridged`'s CPU.)
///
/// Writes fail once stdout is closed (`sub … | head`): the caller stops reading, and
/// [`Lines::finish`] treats that as the normal end.
struct Lines {
    out: std::io::BufWriter<std::io::Stdout>,
    closed: bool,
}

impl Lines {
    fn new() -> Self {
        Self {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            closed: false,
        }
    }

    fn json(&mut self, value: &Value) -> std::io::Result<()> {
        let r = serde_json::to_writer(&mut self.out, value)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.note(r)
    }

    fn text(&mut self, line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
        let r = writeln!(self.out, "{line}");
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.out.flush();
        self.note(r)
    }

    fn note(&mut self, r: std::io::Result<()>) -> std::io::Result<()> {
        if let Err(e) = &r {
            self.closed |= e.kind() == std::io::ErrorKind::BrokenPipe;
        }
        r
    }

    /// Waits for the next item once nothing is queued: flushes first, then waits for `next` or
    /// SIGINT or SIGTERM. `None` to stop: a signal, stdout closed, or `next` found the stream
    /// ended.
    async fn wait<T>(
        &mut self,
        next: impl Future<Output = anyhow::Result<Option<T>>>,
        stop: &mut super::Interrupts,
    ) -> anyhow::Result<Option<T>> {
        if self.flush().is_err() {
            return Ok(None);
        }
        tokio::select! {
            item = next => item,
            _ = stop.recv() => Ok(None),
        }
    }

    /// Flushes what is left; a reader that went away is not an error.
    fn finish(mut self) -> std::io::Result<()> {
        match self.flush() {
            Err(_) if self.closed => Ok(()),
            r => r,
        }
    }
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.bridged {
        return run_bridged(a).await;
    }
    let Args {
        patterns,
        connect: connect_uri,
        count,
        json: json_out,
        ..
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
    let mut stop = super::Interrupts::new()?;
    // Readiness for scripts: the subscription is in place from here on.
    eprintln!("subscribed");
    let mut out = Lines::new();
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let next = match client.try_recv() {
            Some(m) => Some(m),
            None => {
                let recv = async { Ok(Some(client.recv().await?)) };
                out.wait(recv, &mut stop).await?
            }
        };
        let Some(message) = next else { break };
        seen += 1;
        let line = message_json(message.topic(), message.sender(), message.payload());
        let written = if json_out {
            out.json(&line)
        } else {
            let body = line
                .get("envelope")
                .or_else(|| line.get("envelopes"))
                .or_else(|| line.get("payload"))
                .or_else(|| line.get("payload_hex"))
                .unwrap_or(&Value::Null);
            out.text(format_args!(
                "{} {} {}",
                message.topic(),
                message.sender(),
                body
            ))
        };
        if written.is_err() {
            break;
        }
    }
    out.finish()?;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
    Ok(ExitCode::SUCCESS)
}

/// `sub --bridged`: a bridged bus (phase 4) with one subscriber to every event; prints those on
/// topics matching the patterns.
async fn run_bridged(a: Args) -> anyhow::Result<ExitCode> {
    let mut patterns = Vec::new();
    for p in &a.patterns {
        match Pattern::parse(p) {
            Ok(p) => patterns.push(p),
            Err(e) => {
                eprintln!("busbridge: subscribe {p}: {e}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        }
    }
    let builder = super::bridged_builder(&a.connect, "sub").gap_wait(a.gap_wait);
    let bridged = match builder.build().await {
        Ok(b) => b,
        Err(e) => return Ok(super::bridge_failed(&e)),
    };
    let rx = bridged
        .event_bus(Default::default())
        .subscribe_envelopes(EventSubscription::everything("sub"))
        .await?;
    let mut stop = super::Interrupts::new()?;
    eprintln!("subscribed");
    let mut out = Lines::new();
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let next = match rx.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Disconnected) => None,
            Err(TryRecvError::Empty) => {
                let recv = async { Ok(rx.recv_async().await) };
                out.wait(recv, &mut stop).await?
            }
        };
        let Some(env) = next else { break };
        let topic = topic_for_event(&env.event);
        if !patterns.iter().any(|p| p.matches(&topic)) {
            continue;
        }
        seen += 1;
        // Keys sorted as before: a `Value`'s maps are ordered, so equal events print alike.
        let line = json!({
            "topic": topic.to_string(),
            "origin": env.origin,
            "seq": env.seq,
            "correlation_id": env.correlation_id,
            "event": env.event,
        });
        if out.json(&line).is_err() {
            break;
        }
    }
    out.finish()?;
    bridged.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
