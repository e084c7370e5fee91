//! `busbridge stats`: attaches to a running broker and asks the broker and every bridged bus
//! on it for their status ([`busbridge::broker::BrokerStatus`], [`busbridge::bridge::Status`]):
//! counters, connections, and live parity of the legacy path against busrt on the traffic it
//! really carries. With `--check` it is the
//! parity verdict on real traffic: exit 1 if any bus reports a mismatch or a lost gap.

use busbridge::bridge::{Status, STATUS_REPLY_TOPIC, STATUS_TOPIC};
use busbridge::broker::BrokerStatus;
use busbridge::client::{AsyncClient, ClientOptions};
use busbridge::QoS;
use std::process::ExitCode;
use std::time::Duration;

/// Ask every bridged bus on a broker for its counters and live parity.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// busrt client name (what the broker's access rules see; it needs to publish
    /// `control.bridge.status` and subscribe to `control.bridge.status.reply`).
    #[arg(long)]
    name: Option<String>,
    /// How long to collect answers (buses answer at once; this bounds the wait).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Stop as soon as this many bridged buses have answered (fewer within `--wait`: exit 1);
    /// the broker answers too, as soon as asked.
    #[arg(long)]
    expect: Option<usize>,
    /// One JSON object (`buses`, `brokers`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit 1 if any bus reports a parity mismatch or a lost gap.
    #[arg(long)]
    check: bool,
    /// Ask again every interval (e.g. `1s`) and print each round, until interrupted.
    #[arg(long, value_parser = humantime::parse_duration)]
    watch: Option<Duration>,
}

/// A client attached to the broker at `connect` to ask for status (named `name`, else
/// `busbridge-ROLE-PID`); a connection failure is printed and becomes exit code 3.
pub(super) async fn attach(
    connect: &str,
    name: Option<String>,
    role: &str,
) -> anyhow::Result<Result<AsyncClient, ExitCode>> {
    let name = name.unwrap_or_else(|| format!("busbridge-{role}-{}", std::process::id()));
    let client = match AsyncClient::connect_with(connect, ClientOptions::default().name(name)).await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busbridge: {e}");
            return Ok(Err(ExitCode::from(super::EXIT_CONNECT)));
        }
    };
    client.subscribe(STATUS_REPLY_TOPIC, QoS::Processed).await?;
    Ok(Ok(client))
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut client = match attach(&a.connect, a.name, "stats").await? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(every) = a.watch {
        let mut stop = super::Interrupts::new()?;
        // Until interrupted: one round, its table, the rest of the interval.
        loop {
            let started = tokio::time::Instant::now();
            let (answers, brokers) = round(&mut client, a.wait.min(every), None).await?;
            println!(
                "--- {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            show(&answers, &brokers, a.json)?;
            tokio::select! {
                _ = tokio::time::sleep_until(started + every) => {}
                _ = stop.recv() => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        return Ok(ExitCode::SUCCESS);
    }
    let (answers, brokers) = round(&mut client, a.wait, a.expect).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
    show(&answers, &brokers, a.json)?;
    if let Some(n) = a.expect {
        if answers.len() < n {
            eprintln!(
                "busbridge: {} of {n} buses answered within {:?}",
                answers.len(),
                a.wait
            );
            return Ok(ExitCode::from(1));
        }
    }
    let bad = answers
        .iter()
        .filter(|s| s.parity.mismatch_count > 0 || s.stats.bridge_gaps_lost > 0)
        .count();
    if a.check && bad > 0 {
        eprintln!("busbridge: {bad} bus(es) report parity mismatches or lost events");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks once and collects the answers for `wait` (or until `expect` buses and a broker
/// answered).
pub(super) async fn round(
    client: &mut AsyncClient,
    wait: Duration,
    expect: Option<usize>,
) -> anyhow::Result<(Vec<Status>, Vec<BrokerStatus>)> {
    client
        .publish(STATUS_TOPIC, b"{}".to_vec(), QoS::Processed)
        .await?;
    let mut answers: Vec<Status> = Vec::new();
    let mut brokers: Vec<BrokerStatus> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    // With `--expect`: done once that many buses and the broker have answered.
    while expect.is_none_or(|n| answers.len() < n || brokers.is_empty()) {
        let m = match tokio::time::timeout_at(deadline, client.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        };
        if let Ok(b) = serde_json::from_slice::<BrokerStatus>(m.payload()) {
            brokers.push(b);
            continue;
        }
        match serde_json::from_slice::<Status>(m.payload()) {
            Ok(s) => answers.push(s),
            Err(e) => tracing::warn!("an answer from {} does not parse: {e}", m.sender()),
        }
    }
    answers.sort_by(|x, y| x.name.cmp(&y.name));
    Ok((answers, brokers))
}

/// Prints one round: a table, or one JSON object.
fn show(answers: &[Status], brokers: &[BrokerStatus], json: bool) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({"buses": answers, "brokers": brokers});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(answers);
        for b in brokers {
            let s = &b.stats;
            println!(
                "broker {}: {} connections ({} accepted), refused {} (limit) {} (uid) {} (tls), \
                 frames in {} out {}, up {} s",
                b.broker,
                s.connections_active,
                s.connections_accepted,
                s.refused_connection_limit,
                s.refused_peer_credentials,
                s.refused_tls,
                s.frames_received,
                s.frames_sent,
                s.uptime_secs
            );
        }
    }
    Ok(())
}

fn print_table(answers: &[Status]) {
    println!(
        "{:<24} {:>5} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>8}",
        "bus",
        "phase",
        "published",
        "delivered",
        "dropped",
        "gaps",
        "gap_lost",
        "compared",
        "mismatch"
    );
    for s in answers {
        println!(
            "{:<24} {:>5} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>8}",
            s.name,
            s.phase,
            s.stats.events_published,
            s.stats.events_delivered,
            s.stats.events_dropped(),
            s.stats.bridge_gaps,
            s.stats.bridge_gaps_lost,
            s.parity.compared,
            s.parity.mismatch_count
        );
        for m in &s.parity.mismatches {
            println!(
                "    {} {} at {}: {:?}",
                m.event_type, m.event_id, m.subscriber, m.kind
            );
        }
    }
    if answers.is_empty() {
        println!("(no bridged bus answered)");
    }
}
