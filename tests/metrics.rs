//! `/metrics`: scraped with a real HTTP client (hyper's), parsed with a Prometheus text parser
//! (`prometheus-parse`), checked by `promtool check metrics` where it is installed.

#![cfg(feature = "cli")]

mod common;

use busbridge::config::Config;
use busbridge::phase::Phase;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use std::net::SocketAddr;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Where a `busbridge` process serves `/metrics`, from its `metrics on http://…` line.
fn metrics_addr(p: &common::procs::Proc) -> SocketAddr {
    p.wait_line("metrics on http://")
        .trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap()
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` whose label `key` is `value`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, key: &str, label: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(key) == Some(label))
        .unwrap_or_else(|| panic!("no {name}{{{key}={label}}}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

/// Where `promtool` is installed (Debian's `prometheus` package), it must accept a scrape.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: skipped its check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_process_serves_its_bus_and_broker_counters() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        phase: Phase::BusrtOnly,
        ..Default::default()
    };
    config.transport.socket_path = dir.path().join("b.sock");
    config.client.name = Some("metrics-agent".into());
    config.metrics.listen = Some("127.0.0.1:0".into());
    let bridged = busbridge::bridge::Bridged::start(&config).await.unwrap();
    let addr = bridged.metrics_addr().expect("serving /metrics");
    let bus = bridged.event_bus(Default::default());
    let rx = bus.subscribe(common::sub_all("all")).await.unwrap();
    for i in 0..5 {
        bus.publish(common::process(i), "c".into()).await.unwrap();
    }
    for _ in 0..5 {
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    }
    // RPC calls in this process, made and served, counted by method and outcome.
    let uri = format!("ipc://{}", config.transport.socket_path.display());
    let server = busbridge::rpc::RpcNode::connect(&uri, "metrics-rpc-server")
        .await
        .unwrap();
    server
        .rpc_register_raw("metrics_probe", |p| async move { Ok(p) })
        .await
        .unwrap();
    let caller = busbridge::rpc::RpcNode::connect(&uri, "metrics-rpc-caller")
        .await
        .unwrap();
    for _ in 0..3 {
        caller
            .rpc_call_to("metrics-rpc-server", "metrics_probe", b"x".to_vec())
            .await
            .unwrap();
    }
    caller
        .rpc_call_to("metrics-rpc-server", "metrics_absent", Vec::new())
        .await
        .unwrap_err();
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse(&text);
    let rpc = |side: &str, method: &str, outcome: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "busbridge_rpc_calls_total"
                    && s.labels.get("side") == Some(side)
                    && s.labels.get("method") == Some(method)
                    && s.labels.get("outcome") == Some(outcome)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{other:?}"),
            })
            .unwrap_or_else(|| panic!("no rpc_calls_total {side} {method} {outcome}:\n{text}"))
    };
    assert_eq!(rpc("client", "metrics_probe", "ok"), 3.0);
    assert_eq!(rpc("server", "metrics_probe", "ok"), 3.0);
    assert_eq!(rpc("client", "metrics_absent", "method_not_found"), 1.0);
    assert_eq!(rpc("server", "metrics_absent", "method_not_found"), 1.0);
    let bus_label = "metrics-agent";
    assert_eq!(
        value(
            &scrape,
            "busbridge_events_published_total",
            "bus",
            bus_label
        ),
        5.0
    );
    assert_eq!(
        value(
            &scrape,
            "busbridge_events_delivered_total",
            "bus",
            bus_label
        ),
        5.0
    );
    assert_eq!(
        value(&scrape, "busbridge_bus_connected", "bus", bus_label),
        1.0
    );
    // The subscriber takes everything: every return was owed and decoded.
    assert_eq!(
        value(
            &scrape,
            "busbridge_bridge_returns_undecoded_total",
            "bus",
            bus_label
        ),
        0.0
    );
    let broker = scrape
        .samples
        .iter()
        .find(|s| s.metric == "busbridge_broker_connections_accepted_total")
        .expect("the embedded broker's counters");
    assert!(broker.labels.get("broker").is_some());
    // Labels stay bounded: no label holds an event, a pid or a topic.
    for s in &scrape.samples {
        for (k, _) in s.labels.iter() {
            assert!(
                [
                    "bus",
                    "broker",
                    "reason",
                    "outcome",
                    "direction",
                    "queue",
                    "side",
                    "method"
                ]
                .contains(&k.as_str()),
                "unexpected label {k} on {}",
                s.metric
            );
        }
    }
    promtool_accepts(&text);
    assert_eq!(get(addr, "/other").await.0, 404);
    bridged.shutdown().await;
}

#[test]
fn a_non_loopback_address_needs_allow_remote() {
    let e = Config::from_toml_str("[metrics]\nlisten = \"0.0.0.0:9464\"").unwrap_err();
    assert!(e.to_string().contains("metrics.listen"), "{e}");
    Config::from_toml_str("[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_broker_serves_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        format!(
            "[transport]\nsocket_path = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("b.sock").display()
        ),
    )
    .unwrap();
    let broker = common::procs::spawn(&["broker", "--config", file.to_str().unwrap()], &[]);
    let addr = metrics_addr(&broker);
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse(&text);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "busbridge_broker_connections"));
    promtool_accepts(&text);
}

/// The metrics the starter Grafana dashboard queries.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let re = regex::Regex::new(r"busbridge_[a-z_]+").unwrap();
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            used.extend(re.find_iter(expr).map(|m| m.as_str().to_owned()));
        }
    }
    used
}

/// Asserts that a scrape serves each metric of the dashboard whose name `pick`s; how many.
fn dashboard_served_by(text: &str, pick: impl Fn(&str) -> bool) -> usize {
    let served: std::collections::BTreeSet<String> =
        parse(text).samples.into_iter().map(|s| s.metric).collect();
    let wanted: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|m| pick(m))
        .collect();
    for m in &wanted {
        assert!(served.contains(m), "the dashboard queries {m}:\n{text}");
    }
    wanted.len()
}

/// The starter Grafana dashboard queries only metrics that a scrape really has: a bridged
/// process (with an RPC call made) serves all but the uplink's, which
/// `the_uplink_serves_its_counters` checks on the uplink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_uses_only_served_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        phase: Phase::BusrtOnly,
        ..Default::default()
    };
    config.transport.socket_path = dir.path().join("b.sock");
    config.metrics.listen = Some("127.0.0.1:0".into());
    let bridged = busbridge::bridge::Bridged::start(&config).await.unwrap();
    let uri = format!("ipc://{}", config.transport.socket_path.display());
    let caller = busbridge::rpc::RpcNode::connect(&uri, "dashboard-rpc")
        .await
        .unwrap();
    caller
        .rpc_call_to("dashboard-rpc", "absent", Vec::new())
        .await
        .unwrap_err();
    let (_, text) = get(bridged.metrics_addr().unwrap(), "/metrics").await;
    assert!(dashboard_served_by(&text, |m| !m.starts_with("busbridge_uplink_")) > 10);
    bridged.shutdown().await;
}

/// `busbridge stats --watch`: a round every interval, each with the broker's answer, until
/// interrupted (then exit 0).
#[test]
fn stats_watch_repeats_until_interrupted() {
    let dir = common::procs::sock_dir();
    let socket = common::procs::sock_path(&dir, "b.sock");
    let _broker = common::procs::broker(&socket, &[]);
    let uri = format!("ipc://{}", socket.display());
    let mut watch = common::procs::spawn(
        &[
            "stats",
            "--connect",
            &uri,
            "--watch",
            "200ms",
            "--wait",
            "100ms",
        ],
        &[],
    );
    for _ in 0..2 {
        watch.wait_line("---");
        watch.wait_line("broker ");
    }
    watch.signal(libc::SIGINT);
    assert_eq!(watch.wait_exit(), 0);
}

/// `busbridge uplink` with `[metrics] listen` serves its counters (and its bus's) while it
/// forwards a host's events into JetStream.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_serves_its_counters() {
    use std::time::{Duration, Instant};
    const N: u64 = 40;
    let nats = common::nats::NatsServer::start("");
    let dir = common::procs::sock_dir();
    let socket = common::procs::sock_path(&dir, "b.sock");
    let _broker = common::procs::broker(&socket, &[]);
    let config = dir.path().join("uplink.toml");
    std::fs::write(
        &config,
        format!(
            "[uplink]\nnats = {:?}\nhost = \"web-01\"\nspool_dir = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            nats.url(),
            dir.path().join("spool")
        ),
    )
    .unwrap();
    let connect = format!("ipc://{}", socket.display());
    let uplink = common::procs::spawn(
        &[
            "uplink",
            "--config",
            config.to_str().unwrap(),
            "--connect",
            &connect,
        ],
        &[],
    );
    let addr = metrics_addr(&uplink);
    let _publisher = common::publish_processes(&connect, N).await;
    let host =
        |scrape: &prometheus_parse::Scrape, name: &str| value(scrape, name, "host", "web-01");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (scrape, text) = loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let scrape = parse(&text);
        // The spool's gauges follow the acknowledgements a moment later.
        if host(&scrape, "busbridge_uplink_acked_total") >= N as f64
            && value(&scrape, "busbridge_uplink_spool", "what", "pending") == 0.0
        {
            break (scrape, text);
        }
        assert!(Instant::now() < deadline, "never acknowledged:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter, bounded
    };
    assert_eq!(host(&scrape, "busbridge_uplink_acked_total"), N as f64);
    assert_eq!(
        host(&scrape, "busbridge_uplink_events_received_total"),
        N as f64
    );
    assert_eq!(
        host(&scrape, "busbridge_uplink_events_spooled_total"),
        N as f64
    );
    assert_eq!(host(&scrape, "busbridge_uplink_nats_connected"), 1.0);
    assert_eq!(
        value(
            &scrape,
            "busbridge_uplink_events_dropped_total",
            "reason",
            "spool_full"
        ),
        0.0
    );
    assert!(dashboard_served_by(&text, |m| m.starts_with("busbridge_uplink_")) >= 6);
    // The uplink's own bus is on the same page.
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "busbridge_bridge_frames_total"));
    promtool_accepts(&text);
}
