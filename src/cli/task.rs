//! `busbridge task`: dispatches one phase-5 task to the collectors on a broker and prints
//! each result as it arrives, then the final status.

use busbridge::event::SourceCaps;
use busbridge::task::{
    DispatchError, Mode, Priority, Status, TaskClient, TaskClientOptions, TaskEvent, TaskSpec,
};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code: the deadline passed with no result (as `rpc`'s timeout).
pub const EXIT_TIMED_OUT: u8 = 4;
/// Exit code: no collector can run the task (as `rpc`'s "no provider").
pub const EXIT_NOTHING_CAPABLE: u8 = 5;
/// Exit code: the task failed (every attempt, or every result is an error).
pub const EXIT_FAILED: u8 = 6;
/// Exit code: some results, not all (the deadline passed).
pub const EXIT_PARTIAL: u8 = 7;

/// Dispatch a task to one capable collector (or all of them) and print its results.
#[derive(clap::Args)]
pub struct Args {
    /// The operation (`list_processes`, `process_details`, `hash_executable`,
    /// `tcp_connections`, `echo`).
    operation: String,
    /// Its parameters, as JSON.
    #[arg(default_value = "null")]
    payload: String,
    /// Required capabilities, comma separated (`process,network`).
    #[arg(long, value_delimiter = ',')]
    caps: Vec<String>,
    /// Only collectors of this type.
    #[arg(long = "type")]
    kind: Option<String>,
    /// Only this collector (by name).
    #[arg(long)]
    to: Option<String>,
    /// Every capable collector (scatter) instead of one.
    #[arg(long)]
    all: bool,
    /// Deadline of the task.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// `low`, `normal`, `high` or `critical`.
    #[arg(long, default_value = "normal")]
    priority: Priority,
    /// How long to listen for collectors announcing themselves before dispatching.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    discover: Duration,
    /// Queue the task until a capable collector appears (within the timeout) instead of
    /// refusing it.
    #[arg(long)]
    queue: bool,
    /// Broker address.
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// One JSON object per line (each event, then the status).
    #[arg(long)]
    json: bool,
}

fn caps(names: &[String]) -> Result<SourceCaps, String> {
    names.iter().try_fold(SourceCaps::empty(), |acc, n| {
        SourceCaps::from_name(&n.trim().to_ascii_uppercase())
            .map(|c| acc | c)
            .ok_or_else(|| format!("unknown capability `{n}` (process, network, filesystem, performance, realtime, kernel_level, system_wide)"))
    })
}

/// A task's payload (JSON) and capabilities from the command line; a bad one is printed and
/// becomes exit code 2.
pub(super) fn payload_and_caps(
    payload: &str,
    names: &[String],
) -> Result<(serde_json::Value, SourceCaps), ExitCode> {
    let usage = |message: String| {
        eprintln!("busbridge: {message}");
        ExitCode::from(super::EXIT_USAGE)
    };
    let payload = serde_json::from_str(payload)
        .map_err(|e| usage(format!("the payload is not JSON: {e}")))?;
    Ok((payload, caps(names).map_err(usage)?))
}

/// Runs `busbridge task`.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (payload, capabilities) = match payload_and_caps(&a.payload, &a.caps) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let mut opts = TaskClientOptions::default();
    if a.queue {
        opts.dispatch.when_none_capable = busbridge::task::WhenNoneCapable::Queue;
    }
    let tasks = match TaskClient::connect(&a.connect, opts).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(ExitCode::from(super::EXIT_CONNECT));
        }
    };
    let spec = TaskSpec {
        operation: a.operation,
        payload,
        capabilities,
        collector_type: a.kind,
        target: a.to,
        mode: if a.all { Mode::AllOf } else { Mode::OneOf },
        priority: a.priority,
        timeout: a.timeout,
        ..TaskSpec::default()
    };
    // Collectors answer the discovery request at once; a one-of task goes as soon as one
    // capable collector is known, a scatter waits the whole window to know them all.
    if a.all {
        tokio::time::sleep(a.discover).await;
    } else {
        tasks
            .wait_for(|c| spec.candidates(c.iter()).next().is_some(), a.discover)
            .await;
    }
    let mut handle = match tasks.submit(spec).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(ExitCode::from(match e {
                DispatchError::NothingCapable { .. } => EXIT_NOTHING_CAPABLE,
                DispatchError::Invalid(_) => super::EXIT_USAGE,
                _ => EXIT_FAILED,
            }));
        }
    };
    let mut status = Status::Cancelled;
    while let Some(event) = handle.next().await {
        if a.json {
            let mut line = serde_json::to_value(&event)?;
            line["task_id"] = handle.id().into();
            println!("{line}");
        }
        match event {
            TaskEvent::Result {
                collector, outcome, ..
            } if !a.json => match outcome {
                Ok(v) => println!("{collector}: {}", serde_json::to_string_pretty(&v)?),
                Err(e) => println!("{collector}: error: {e}"),
            },
            TaskEvent::Progress { collector, message } if !a.json => {
                eprintln!("{collector}: {message}")
            }
            TaskEvent::Finished(s) => status = s,
            _ => {}
        }
    }
    if !a.json {
        eprintln!("task {}: {}", handle.id(), describe(&status));
    }
    Ok(exit_code(&status))
}

/// The exit code of a task's final status.
pub(super) fn exit_code(status: &Status) -> ExitCode {
    ExitCode::from(match status {
        Status::Complete => 0,
        Status::Partial { .. } => EXIT_PARTIAL,
        Status::TimedOut { .. } => EXIT_TIMED_OUT,
        Status::Failed { .. } | Status::Cancelled => EXIT_FAILED,
    })
}

pub(super) fn describe(status: &Status) -> String {
    let list = |v: &[busbridge::task::Attempt]| {
        v.iter()
            .map(|a| format!("{} ({})", a.collector, a.reason))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match status {
        Status::Complete => "complete".into(),
        Status::Partial { missing } => format!("partial; missing: {}", list(missing)),
        Status::TimedOut { missing } => format!("timed out; waiting on: {}", list(missing)),
        Status::Failed { attempts } => format!("failed: {}", list(attempts)),
        Status::Cancelled => "cancelled".into(),
    }
}
