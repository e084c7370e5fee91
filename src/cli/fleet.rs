//! `busbridge fleet`: the centre of a fleet of uplinked hosts. `fleet sub` reads the stream,
//! `fleet task` sends a task to hosts, `fleet hosts` lists who announced themselves.

use super::task::{describe, exit_code, payload_and_caps, EXIT_NOTHING_CAPABLE};
use busbridge::config::UplinkConfig;
use busbridge::fleet::{FleetError, FleetSubscriber, FleetTask, FleetTasks};
use busbridge::task::{Mode, Priority, TaskEvent, TaskSpec};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The centre of a fleet: read the stream, send tasks, list hosts.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Sub(SubArgs),
    Task(TaskArgs),
    Hosts(Connection),
    Bench(super::fleet_bench::Args),
}

/// Where NATS is: the `[uplink]` section of a configuration (servers, stream, prefix,
/// credentials and TLS files), the servers overridable.
#[derive(clap::Args)]
struct Connection {
    /// A configuration whose `[uplink]` section says how to reach NATS.
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS server URLs (overrides the configuration's).
    #[arg(long)]
    nats: Option<String>,
}

/// Read events from the fleet's stream: every event once per durable name.
#[derive(clap::Args)]
struct SubArgs {
    /// NATS subjects (`busbridge.web-01.events.>`); none: the whole stream.
    subjects: Vec<String>,
    /// A durable consumer: restarted, it goes on after the last event it acknowledged.
    #[arg(long)]
    durable: Option<String>,
    /// One JSON object per event (host, subject, origin, seq, event).
    #[arg(long)]
    json: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

/// Send a phase-5 task to one host or every capable host and gather the results.
#[derive(clap::Args)]
struct TaskArgs {
    /// The operation.
    operation: String,
    /// Its parameters, as JSON.
    #[arg(default_value = "null")]
    payload: String,
    /// Only this host.
    #[arg(long)]
    host: Option<String>,
    /// Required capabilities, comma separated.
    #[arg(long, value_delimiter = ',')]
    caps: Vec<String>,
    /// Only collectors of this type.
    #[arg(long = "type")]
    kind: Option<String>,
    /// Every capable collector on each host instead of one per host.
    #[arg(long)]
    all: bool,
    /// Deadline of the task.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// `low`, `normal`, `high` or `critical`.
    #[arg(long, default_value = "normal")]
    priority: Priority,
    /// One JSON object per line (each event with its host, then the status).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// Runs `busbridge fleet`.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.command {
        Command::Sub(a) => sub(a).await,
        Command::Task(a) => task(a).await,
        Command::Hosts(c) => hosts(c).await,
        Command::Bench(a) => super::fleet_bench::run(a).await,
    }
}

fn uplink_config(c: &Connection) -> Result<UplinkConfig, ExitCode> {
    let mut config = match &c.config {
        Some(path) => super::load_config(path)?.uplink.unwrap_or_default(),
        None => UplinkConfig::default(),
    };
    if let Some(nats) = &c.nats {
        config.nats = nats.clone();
    }
    Ok(config)
}

fn failed(e: &FleetError) -> ExitCode {
    eprintln!("busbridge: {e}");
    ExitCode::from(match e {
        FleetError::Connect { .. } => super::EXIT_CONNECT,
        FleetError::Config(_) => super::EXIT_USAGE,
        FleetError::NoHost(_) => EXIT_NOTHING_CAPABLE,
        _ => 1,
    })
}

async fn sub(a: SubArgs) -> anyhow::Result<ExitCode> {
    let config = match uplink_config(&a.connection) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut events =
        match FleetSubscriber::connect(&config, &a.subjects, a.durable.as_deref()).await {
            Ok(s) => s,
            Err(e) => return Ok(failed(&e)),
        };
    // Before `ready`: a signal sent as soon as it is read must be heard.
    let mut stop = super::Interrupts::new()?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let next = tokio::select! {
            next = events.next() => next,
            _ = stop.recv() => break,
        };
        let event = match next {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Ok(failed(&e)),
            None => break,
        };
        let env = &event.envelope;
        if a.json {
            let line = serde_json::json!({
                "host": event.host,
                "subject": event.subject,
                "stream_seq": event.stream_seq,
                "origin": env.origin,
                "seq": env.seq,
                "correlation_id": env.correlation_id,
                "event": env.event,
            });
            println!("{line}");
        } else {
            println!(
                "{} {} {}:{}",
                event.host, event.subject, env.origin, env.seq
            );
        }
        // Printed before acknowledged: a reader killed in between sees the event again
        // (at least once), never loses it.
        std::io::stdout().flush()?;
        if let Err(e) = event.ack().await {
            return Ok(failed(&e));
        }
        seen += 1;
    }
    Ok(ExitCode::SUCCESS)
}

async fn task(a: TaskArgs) -> anyhow::Result<ExitCode> {
    let config = match uplink_config(&a.connection) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (payload, capabilities) = match payload_and_caps(&a.payload, &a.caps) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let tasks = match FleetTasks::connect(&config).await {
        Ok(t) => t,
        Err(e) => return Ok(failed(&e)),
    };
    let task = FleetTask {
        spec: TaskSpec {
            operation: a.operation,
            payload,
            capabilities,
            collector_type: a.kind,
            mode: if a.all { Mode::AllOf } else { Mode::OneOf },
            priority: a.priority,
            timeout: a.timeout,
            ..TaskSpec::default()
        },
        host: a.host,
    };
    let json = a.json;
    let run = tasks.run(task, |host, event| {
        if json {
            let mut line = serde_json::to_value(event).expect("an event serializes");
            line["host"] = host.into();
            println!("{line}");
        } else if let TaskEvent::Result {
            collector, outcome, ..
        } = event
        {
            match outcome {
                Ok(v) => println!("{host}/{collector}: {v}"),
                Err(e) => println!("{host}/{collector}: error: {e}"),
            }
        }
    });
    let (status, hosts) = match run.await {
        Ok(r) => r,
        Err(e) => return Ok(failed(&e)),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "fleet": status, "hosts": hosts.iter().map(|h| &h.host).collect::<Vec<_>>() })
        );
    } else {
        eprintln!("fleet task: {} ({} hosts)", describe(&status), hosts.len());
    }
    Ok(exit_code(&status))
}

async fn hosts(c: Connection) -> anyhow::Result<ExitCode> {
    let config = match uplink_config(&c) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let tasks = match FleetTasks::connect(&config).await {
        Ok(t) => t,
        Err(e) => return Ok(failed(&e)),
    };
    match tasks.hosts().await {
        Ok(hosts) => {
            for h in hosts {
                println!("{}", serde_json::to_string(&h)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&e)),
    }
}
