//! `busbridge`: the command-line tool.

mod cli;

// Events are many small allocations crossing threads; glibc's malloc spent a quarter of the
// bridge's CPU in `busbridge bench` profiles, mimalloc a fraction of that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "busbridge",
    version,
    about = "Legacy event bus over busrt: demo, broker, tools"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish this machine's processes through the legacy bus and show what subscribers got.
    #[cfg(feature = "legacy")]
    Demo {
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run the broker as its own process until SIGINT/SIGTERM.
    Broker {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Unix socket path (relative: in the private runtime directory).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Also listen on TCP, host:port (loopback unless the configuration allows more).
        #[arg(long)]
        tcp: Option<String>,
    },
    /// Publish a payload to a topic.
    Pub {
        /// Dotted topic, e.g. events.process.new.
        topic: String,
        /// The payload, or @FILE to read it from a file.
        payload: Option<String>,
        #[arg(long, default_value = cli::pubsub::DEFAULT_CONNECT)]
        connect: String,
        #[arg(long, default_value = "processed")]
        qos: busbridge::QoS,
        /// Publish the payload this many times.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Print messages on topics matching patterns.
    Sub {
        /// Dotted patterns, e.g. events.process.* or events.#.
        #[arg(required = true)]
        patterns: Vec<String>,
        #[arg(long, default_value = cli::pubsub::DEFAULT_CONNECT)]
        connect: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// A bridged legacy-facade program: subscribe to everything, wait for `go` on stdin,
    /// publish the sample events, print what arrives (JSON lines).
    #[cfg(feature = "legacy")]
    Peer {
        #[arg(long, default_value = cli::pubsub::DEFAULT_CONNECT)]
        connect: String,
        /// busrt client name, also the sample seed and publisher id.
        #[arg(long)]
        name: String,
        /// Events to publish.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Events to wait for before exiting.
        #[arg(long, default_value_t = 10)]
        expect: usize,
        #[arg(long, default_value_t = 2)]
        phase: u8,
        #[arg(long, default_value = "protobuf")]
        codec: String,
        /// Publish through the tokio facade instead of the crossbeam one.
        #[arg(long)]
        tokio: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Publish the sample envelopes with deterministic event ids.
        #[arg(long)]
        exact_ids: bool,
    },
    /// Run the built-in parity scenarios for a phase (or replay a recorded trace on phase 4);
    /// exits non-zero on any mismatch.
    #[cfg(feature = "legacy")]
    Parity {
        /// Phase to verify: 1, 2 or 3 (4 with --replay).
        #[arg(long)]
        phase: Option<u8>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Record the control path to this trace file (JSON lines).
        #[arg(long)]
        record: Option<PathBuf>,
        /// Replay this trace on the phase-4 path and compare.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// Local events to publish.
        #[arg(long, default_value_t = 500)]
        events: usize,
        /// Events the remote publisher process sends.
        #[arg(long, default_value_t = 100)]
        remote: usize,
    },
    /// Call an RPC method and print the JSON reply. TARGET `-` finds the method's provider.
    /// Exit codes: 0 ok, 3 unreachable, 4 timeout, 5 not found, 6 remote error.
    Rpc {
        target: String,
        method: String,
        /// Parameters as JSON (default `{}`).
        params: Option<String>,
        #[arg(long, default_value = cli::pubsub::DEFAULT_CONNECT)]
        connect: String,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// A durable subscriber: append every event to FILE (JSON lines with origin and sequence);
    /// restarted, it resumes after the last line, so FILE holds each event once.
    Journal(cli::journal::JournalArgs),
    /// Run a process collector that serves the lifecycle operations over RPC.
    Collector {
        #[arg(long, default_value = "procmond")]
        name: String,
        #[arg(long, default_value = cli::pubsub::DEFAULT_CONNECT)]
        connect: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Time between scans.
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
    },
    /// Measure every path in one run (legacy crossbeam router, phase 0, raw busrt, phase 2,
    /// RPC) and print the ratios against the targets.
    #[cfg(feature = "legacy")]
    Bench {
        #[arg(long)]
        json: bool,
        /// Smaller samples: under a minute.
        #[arg(long)]
        quick: bool,
        /// Only the paths whose name contains this text ("steady" and "stall" name the
        /// last two runs); ratios whose two paths both ran are still printed.
        #[arg(long)]
        only: Option<String>,
    },
    /// Validate a configuration file and print it resolved.
    CheckConfig {
        file: PathBuf,
        /// Print the resolved configuration as JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
            Command::Demo { json } => cli::demo::run(json).await,
            Command::CheckConfig { file, json } => cli::check_config(&file, json),
            Command::Broker {
                config,
                socket,
                tcp,
            } => cli::broker::run(config, socket, tcp).await,
            #[cfg(feature = "legacy")]
            Command::Peer {
                connect,
                name,
                count,
                expect,
                phase,
                codec,
                tokio,
                timeout,
                exact_ids,
            } => {
                cli::peer::run(cli::peer::PeerArgs {
                    connect,
                    name,
                    count,
                    expect,
                    phase: busbridge::phase::Phase::try_from(phase)?,
                    codec: serde_json::from_value(serde_json::Value::String(codec))?,
                    tokio_facade: tokio,
                    timeout,
                    exact_ids,
                })
                .await
            }
            #[cfg(feature = "legacy")]
            Command::Parity {
                phase,
                config,
                json,
                record,
                replay,
                events,
                remote,
            } => {
                cli::parity::run(cli::parity::ParityArgs {
                    phase,
                    config,
                    json,
                    record,
                    replay,
                    events,
                    remote,
                })
                .await
            }
            #[cfg(feature = "legacy")]
            Command::Bench { json, quick, only } => cli::bench::run(json, quick, only).await,
            Command::Rpc {
                target,
                method,
                params,
                connect,
                timeout,
            } => cli::rpc::call(target, method, params, connect, timeout).await,
            Command::Journal(args) => cli::journal::run(args).await,
            Command::Collector {
                name,
                connect,
                config,
                interval,
            } => cli::rpc::collector(name, connect, config, interval).await,
            Command::Pub {
                topic,
                payload,
                connect,
                qos,
                count,
            } => cli::pubsub::publish(topic, payload, connect, qos, count).await,
            Command::Sub {
                patterns,
                connect,
                count,
                json,
            } => cli::pubsub::subscribe(patterns, connect, count, json).await,
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
