//! `busbridge`: the command-line tool.

mod cli;

// Events are many small allocations crossing threads; glibc's malloc spent a quarter of the
// bridge's CPU in `busbridge bench` profiles, mimalloc a fraction of that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use cli::*;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "busbridge",
    version,
    about = "Legacy event bus over busrt: demo, broker, tools"
)]
struct Cli {
    /// Log lines on stderr as text or as JSON objects (with the spans: connect, reconnect,
    /// resend, rpc_call, and their client, endpoint and topic fields).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Every subcommand is `Name(name::Args)`, run by `name::run(args)`.
#[derive(Subcommand)]
enum Command {
    #[cfg(feature = "legacy")]
    Demo(demo::Args),
    Agent(agent::Args),
    Broker(broker::Args),
    #[command(name = "pub")]
    Publish(publish::Args),
    #[command(name = "sub")]
    Subscribe(subscribe::Args),
    #[cfg(feature = "legacy")]
    Peer(peer::Args),
    #[cfg(feature = "legacy")]
    Parity(parity::Args),
    Rpc(rpc::Args),
    Journal(journal::Args),
    Stats(stats::Args),
    Top(top::Args),
    Collector(collector::Args),
    Collectors(collectors::Args),
    Task(task::Args),
    #[cfg(feature = "legacy")]
    Bench(bench::Args),
    CheckConfig(check_config::Args),
    #[cfg(feature = "nats")]
    Uplink(uplink::Args),
    #[cfg(feature = "nats")]
    Fleet(fleet::Args),
}

/// Runs a command as a task on the runtime's worker threads; a panic stays a panic.
async fn on_worker<F>(command: F) -> anyhow::Result<ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>> + Send + 'static,
{
    match tokio::spawn(command).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the command's task ended: {e}")),
    }
}

fn main() -> ExitCode {
    let args = Cli::parse();
    // `top` owns the terminal: a warning written to stderr would draw over its screen, so it
    // logs nothing unless RUST_LOG asks.
    let quiet = if matches!(args.command, Command::Top(_)) {
        "off"
    } else {
        "warn"
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| quiet.into()),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("busbridge: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            #[cfg(feature = "legacy")]
            Command::Demo(a) => demo::run(a).await,
            Command::Agent(a) => agent::run(a).await,
            Command::Broker(a) => broker::run(a).await,
            // A paced publisher and a subscriber mostly wait (a timer, the next message):
            // run on a worker, each wait ends without a wake-up across threads (README,
            // Performance: half the CPU of a steady stream). Unpaced, `pub` keeps the main
            // thread, a third one beside the workers.
            Command::Publish(a) if a.paced() => on_worker(publish::run(a)).await,
            Command::Publish(a) => publish::run(a).await,
            Command::Subscribe(a) => on_worker(subscribe::run(a)).await,
            #[cfg(feature = "legacy")]
            Command::Peer(a) => peer::run(a).await,
            #[cfg(feature = "legacy")]
            Command::Parity(a) => parity::run(a).await,
            Command::Rpc(a) => rpc::run(a).await,
            Command::Journal(a) => journal::run(a).await,
            Command::Stats(a) => stats::run(a).await,
            Command::Top(a) => top::run(a).await,
            Command::Collector(a) => collector::run(a).await,
            Command::Collectors(a) => collectors::run(a).await,
            Command::Task(a) => task::run(a).await,
            #[cfg(feature = "legacy")]
            Command::Bench(a) => bench::run(a).await,
            Command::CheckConfig(a) => check_config::run(a).await,
            #[cfg(feature = "nats")]
            Command::Uplink(a) => uplink::run(a).await,
            #[cfg(feature = "nats")]
            Command::Fleet(a) => fleet::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("busbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}
