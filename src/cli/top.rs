//! `busbridge top`: a full-screen live view of a broker and every bridged bus on it, refreshed
//! every interval from the same answers `busbridge stats` reads (one round per refresh): rates by
//! topic and by client, queue depths, drops, gaps and parity mismatches. `q` (or Esc, Ctrl-C)
//! quits and restores the terminal.

use busbridge::bridge::Status;
use busbridge::broker::BrokerStatus;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;
use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A live view of a broker and its bridged buses.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = super::DEFAULT_CONNECT)]
    connect: String,
    /// busrt client name (it needs to publish `control.bridge.status` and subscribe to
    /// `control.bridge.status.reply`).
    #[arg(long)]
    name: Option<String>,
    /// How often to ask and redraw.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// One round of answers and when it was taken.
struct Round {
    at: Instant,
    buses: Vec<Status>,
    brokers: Vec<BrokerStatus>,
}

/// Per second between two counter readings.
fn rate(now: u64, before: Option<u64>, secs: f64) -> String {
    match before {
        Some(b) if secs > 0.0 => format!("{:.0}", now.saturating_sub(b) as f64 / secs),
        _ => "-".into(),
    }
}

/// Sums a per-topic map over every bus.
fn by_topic<'a>(
    buses: &'a [Status],
    pick: impl Fn(&'a Status) -> &'a BTreeMap<String, u64>,
) -> BTreeMap<&'a str, u64> {
    let mut sums = BTreeMap::new();
    for b in buses {
        for (t, n) in pick(b) {
            *sums.entry(t.as_str()).or_default() += n;
        }
    }
    sums
}

/// A bordered table titled `title` with bold `headers`.
fn table<'a>(
    title: &'a str,
    headers: &[&'a str],
    widths: Vec<Constraint>,
    rows: impl IntoIterator<Item = Row<'a>>,
) -> Table<'a> {
    Table::new(rows, widths)
        .header(Row::new(headers.to_vec()).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(title))
}

/// Column widths: the first `first` parts wide, the other `rest` one part each.
fn widths(first: u16, rest: usize) -> Vec<Constraint> {
    std::iter::once(Constraint::Fill(first))
        .chain(std::iter::repeat_n(Constraint::Fill(1), rest))
        .collect()
}

fn draw(f: &mut Frame, connect: &str, now: Option<&Round>, before: Option<&Round>) {
    let [title, brokers_area, buses_area, topics_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Min(5),
        Constraint::Length(8),
    ])
    .areas(f.area());
    let Some(now) = now else {
        f.render_widget(
            Paragraph::new(format!("busbridge top  {connect}  asking...  (q quits)")),
            title,
        );
        return;
    };
    let secs = before.map_or(0.0, |b| now.at.duration_since(b.at).as_secs_f64());
    f.render_widget(
        Paragraph::new(format!(
            "busbridge top  {connect}  {} buses, {} brokers  (q quits)",
            now.buses.len(),
            now.brokers.len()
        )),
        title,
    );

    let old_brokers: HashMap<&str, &BrokerStatus> = before
        .map(|b| b.brokers.iter().map(|x| (x.broker.as_str(), x)).collect())
        .unwrap_or_default();
    let rows = now.brokers.iter().map(|b| {
        let old = old_brokers.get(b.broker.as_str()).map(|o| &o.stats);
        let s = &b.stats;
        Row::new(vec![
            b.broker.clone(),
            s.connections_active.to_string(),
            s.connections_accepted.to_string(),
            (s.refused_connection_limit + s.refused_peer_credentials + s.refused_tls).to_string(),
            rate(s.frames_received, old.map(|o| o.frames_received), secs),
            rate(s.frames_sent, old.map(|o| o.frames_sent), secs),
            format!("{} s", s.uptime_secs),
        ])
    });
    let headers = [
        "broker",
        "conns",
        "accepted",
        "refused",
        "frames in/s",
        "frames out/s",
        "up",
    ];
    f.render_widget(table("brokers", &headers, widths(2, 6), rows), brokers_area);

    // A bus instance is its origin: a restarted process with the same name starts anew.
    let old_buses: HashMap<&str, &Status> = before
        .map(|b| b.buses.iter().map(|x| (x.origin.as_str(), x)).collect())
        .unwrap_or_default();
    let rows = now.buses.iter().map(|b| {
        let old = old_buses.get(b.origin.as_str()).map(|o| &o.stats);
        let s = &b.stats;
        Row::new(vec![
            b.name.clone(),
            b.phase.to_string(),
            b.connection.clone(),
            rate(s.events_published, old.map(|o| o.events_published), secs),
            rate(s.events_delivered, old.map(|o| o.events_delivered), secs),
            rate(s.bridge_sent, old.map(|o| o.bridge_sent), secs),
            rate(s.bridge_received, old.map(|o| o.bridge_received), secs),
            b.queued.to_string(),
            b.in_flight.to_string(),
            s.events_dropped().to_string(),
            s.bridge_gaps.to_string(),
            s.bridge_gaps_lost.to_string(),
            b.parity.mismatch_count.to_string(),
        ])
    });
    let headers = [
        "bus (client)",
        "phase",
        "connection",
        "pub/s",
        "deliv/s",
        "sent/s",
        "recv/s",
        "queued",
        "in flight",
        "dropped",
        "gaps",
        "lost",
        "mismatch",
    ];
    let mut columns = widths(3, 12);
    (columns[1], columns[2]) = (Constraint::Length(5), Constraint::Length(16));
    f.render_widget(table("buses", &headers, columns, rows), buses_area);

    let published = by_topic(&now.buses, |b| &b.stats.published_by_topic);
    let received = by_topic(&now.buses, |b| &b.stats.received_by_topic);
    let (old_published, old_received) = match before {
        Some(b) => (
            by_topic(&b.buses, |b| &b.stats.published_by_topic),
            by_topic(&b.buses, |b| &b.stats.received_by_topic),
        ),
        None => Default::default(),
    };
    let mut topics: Vec<&str> = published.keys().chain(received.keys()).copied().collect();
    topics.sort_unstable();
    topics.dedup();
    let rows = topics.into_iter().map(|t| {
        let p = published.get(t).copied().unwrap_or(0);
        let r = received.get(t).copied().unwrap_or(0);
        let known = before.is_some();
        Row::new(vec![
            t.to_owned(),
            rate(
                p,
                known.then(|| old_published.get(t).copied().unwrap_or(0)),
                secs,
            ),
            rate(
                r,
                known.then(|| old_received.get(t).copied().unwrap_or(0)),
                secs,
            ),
            p.to_string(),
            r.to_string(),
        ])
    });
    let headers = ["topic", "pub/s", "recv/s", "published", "received"];
    f.render_widget(
        table("topics (all buses)", &headers, widths(3, 4), rows),
        topics_area,
    );
}

/// Reads keys on a thread of its own (crossterm's reads block) until `q`, Esc or Ctrl-C.
fn quit_keys() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => {}
            Ok(false) if tx.is_closed() => return,
            Ok(false) => continue,
            Err(_) => return,
        }
        if let Ok(Event::Key(k)) = event::read() {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if k.kind == KeyEventKind::Press
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
            {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx
}

/// Runs `busbridge top`.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut client = match super::stats::attach(&a.connect, a.name.clone(), "top").await? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("busbridge: top needs a terminal: {e}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    let mut quit = quit_keys();
    let mut before: Option<Round> = None;
    let mut now: Option<Round> = None;
    let result = loop {
        if let Err(e) = terminal.draw(|f| draw(f, &a.connect, now.as_ref(), before.as_ref())) {
            break Err(e.into());
        }
        let started = tokio::time::Instant::now();
        // Answers come within the interval; the rest of it is the pause.
        let round = tokio::select! {
            r = super::stats::round(&mut client, a.interval, None) => r,
            _ = &mut quit => break Ok(()),
        };
        match round {
            Ok((buses, brokers)) => {
                before = now.take();
                now = Some(Round {
                    at: Instant::now(),
                    buses,
                    brokers,
                });
            }
            Err(e) => break Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + a.interval) => {}
            _ = &mut quit => break Ok(()),
        }
    };
    ratatui::restore();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
    result.map(|()| ExitCode::SUCCESS)
}
