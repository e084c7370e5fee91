//! `busbridge bench`: every path measured in one run, with the ratios the targets name.

use super::measure::{self as bench, BenchOptions};
use std::process::ExitCode;

/// Measure every path in one run (legacy crossbeam router, phase 0, raw busrt, phase 2,
/// RPC) and print the ratios against the targets.
#[derive(clap::Args)]
pub struct Args {
    /// One JSON object on stdout (every path, every target as a named ratio); progress stays
    /// on stderr.
    #[arg(long)]
    json: bool,
    /// Smaller samples: under a minute.
    #[arg(long)]
    quick: bool,
    /// Only the paths whose name contains this text, or the one path whose whole name it
    /// is ("steady" and "stall" name the last two runs); `|` separates alternatives
    /// ("reference crossbeam router|busbridge phase 0" runs one ratio's two paths). Ratios
    /// whose two paths both ran are still printed.
    #[arg(long)]
    only: Option<String>,
    /// Events per run of each event path (default: 300,000; 100,000 with `--quick`).
    #[arg(long)]
    events: Option<usize>,
    /// Interleaved rounds; each path reports its median round (default: 5; 7 with `--quick`).
    #[arg(long)]
    rounds: Option<usize>,
    /// Return the memory each run freed to the system before the next, so that every run
    /// starts from fresh pages as a process starting up. By default freed memory stays with
    /// the process, as in a long-running agent whose queues have grown once.
    #[arg(long)]
    cold: bool,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        json,
        quick,
        only,
        events,
        rounds,
        cold,
    } = a;
    let mut opts = if quick {
        BenchOptions::quick()
    } else {
        BenchOptions::full()
    };
    opts.only = only;
    opts.events = events.unwrap_or(opts.events).max(1);
    opts.rounds = rounds.unwrap_or(opts.rounds).max(1);
    if cold {
        opts.memory = bench::Memory::Returned;
    }
    let report = bench::run(&opts).await;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let load = |l: [f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
    println!(
        "busbridge bench ({}), {} events per run, median of {} rounds, freed memory {}\nload average at start {}, at end {}\n",
        report.machine,
        opts.events,
        report.rounds,
        match report.memory {
            bench::Memory::Kept => "kept between runs",
            bench::Memory::Returned => "returned before each run (--cold)",
        },
        load(report.load_average_start),
        load(report.load_average_end)
    );
    println!(
        "{:<48} {:>12} {:>9} {:>9} {:>9} {:>12} {:>9}",
        "path", "events/s", "p50 us", "p99 us", "p999 us", "cpu s/M ev", "rss MiB"
    );
    for m in &report.measurements {
        println!(
            "{:<48} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>12.2} {:>9.1}",
            m.name,
            m.events_per_sec,
            m.p50_us,
            m.p99_us,
            m.p999_us,
            m.cpu_secs_per_million,
            m.peak_rss_mib
        );
    }
    for m in report
        .measurements
        .iter()
        .filter(|m| m.delivered < m.events)
    {
        println!(
            "note: {} delivered {} of {} (the rest were lost on that path)",
            m.name, m.delivered, m.events
        );
    }
    println!("\ntargets (same run; ratios are medians of each round's ratio)");
    for r in &report.ratios {
        println!(
            "  {:<76} {:>7.2}  target {} {:<5} {}",
            r.name,
            r.value,
            match r.bound {
                bench::Bound::AtLeast => ">=",
                bench::Bound::AtMost => "<=",
            },
            r.target,
            if r.met { "met" } else { "MISSED" }
        );
    }
    if let Some(s) = &report.steady {
        println!(
        "\nsteady {} events/s over a Unix socket: p50 {:.0} us, p99 {:.0} us (median of segments {:.0} us), p999 {:.0} us (raw busrt, same stream: p50 {:.0} us, p99 {:.0} us, median of segments {:.0} us); process CPU {:.1}% of a core (raw busrt, same stream: {:.1}%; each bridge adds {:.1}%)",
        s.rate_per_sec,
        s.p50_us,
        s.p99_us,
        s.segment_p99_us,
        s.p999_us,
        s.raw_busrt_p50_us,
        s.raw_busrt_p99_us,
        s.raw_busrt_segment_p99_us,
        s.cpu_fraction_of_core * 100.0,
        s.raw_busrt_cpu_fraction_of_core * 100.0,
        s.bridge_cpu_fraction_of_core * 100.0
    );
    }
    if let Some(st) = &report.stall {
        println!(
        "subscriber stalled {} s under 100,000 events/s (DropOldest, queue {}): max queue {}, dropped and counted {}, slowest publish {:.0} us, RSS growth {:.1} MiB",
        st.stall_secs, st.queue_capacity, st.max_queue_len, st.dropped_counted, st.slowest_publish_us, st.rss_growth_mib
    );
    }
    Ok(ExitCode::SUCCESS)
}
