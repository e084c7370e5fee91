//! Prometheus metrics: `/metrics` of a bridged process or a broker, on the address of
//! `[metrics] listen` (off by default; loopback unless `allow_remote`).
//!
//! Every value comes from the same snapshots `busbridge stats` reads ([`bridge::Status`],
//! [`broker::BrokerStatus`]), encoded with `prometheus-client` at each scrape and served by
//! hyper. Labels are bounded: the bus or broker name, an uplink's host, a drop `reason`, a gap `outcome`, a
//! refusal `reason`, a frame `direction`, an RPC method (at most 64 names) and outcome; never an
//! event, a pid or a topic.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `busbridge_events_published_total` | counter | `bus` |
//! | `busbridge_events_delivered_total` | counter | `bus` |
//! | `busbridge_events_dropped_total` | counter | `bus`, `reason` (`full`, `timeout`, `disconnected`) |
//! | `busbridge_bridge_frames_total` | counter | `bus`, `direction` (`sent`, `received`: counted once delivered) |
//! | `busbridge_bridge_gaps_total` | counter | `bus`, `outcome` (`found`, `filled`, `lost`) |
//! | `busbridge_bridge_resent_total` | counter | `bus` |
//! | `busbridge_bridge_returns_undecoded_total` | counter | `bus` |
//! | `busbridge_bridge_errors_total` | counter | `bus`, `reason` (`send`, `decode`, `hop_limit`) |
//! | `busbridge_parity_compared_total` | counter | `bus` |
//! | `busbridge_parity_mismatches_total` | counter | `bus` |
//! | `busbridge_parity_pending` | gauge | `bus` |
//! | `busbridge_bus_connected` | gauge | `bus` (1 connected, 0 not) |
//! | `busbridge_queue_depth` | gauge | `bus`, `queue` (`subscribers`: events waiting in local subscriber queues; `in_flight`: own events not yet back from busrt) |
//! | `busbridge_subscribers` | gauge | `bus` |
//! | `busbridge_task_triggers_total` | counter | `bus`, `outcome` (`dispatched`, `completed`, `failed`); phase 5, buses with a trigger dispatcher |
//! | `busbridge_rpc_calls_total` | counter | `side` (`client`, `server`), `method` (at most 64 names, then `other`), `outcome` (`ok`, `timeout`, `no_such_target`, `no_provider`, `method_not_found`, `invalid_params`, `handler_failed`, `panicked`, `disconnected`, ...) |
//! | `busbridge_broker_connections` | gauge | `broker` |
//! | `busbridge_broker_connections_accepted_total` | counter | `broker` |
//! | `busbridge_broker_refused_total` | counter | `broker`, `reason` (`limit`, `peer_credentials`, `tls`) |
//! | `busbridge_broker_frames_total` | counter | `broker`, `direction` (`in`, `out`) |
//! | `busbridge_uplink_events_received_total`, `_filtered_total`, `_spooled_total`, `_recovered_total` | counter | `host`; `busbridge uplink` only (through [`Families`]), as the rest of this table |
//! | `busbridge_uplink_events_dropped_total` | counter | `host`, `reason` (`spool_full`) |
//! | `busbridge_uplink_publishes_total`, `busbridge_uplink_acked_total`, `busbridge_uplink_duplicates_total`, `busbridge_uplink_publish_failures_total` | counter | `host` |
//! | `busbridge_uplink_spool` | gauge | `host`, `what` (`bytes`, `pending`: events not yet acknowledged) |
//! | `busbridge_uplink_nats_connected` | gauge | `host` (1 connected, 0 not) |
//! | `busbridge_uplink_tasks_total` | counter | `host`, `outcome` (`received`, `refused`, `malformed`) |
//!
//! [`bridge::Status`]: crate::stats::Status
//! [`broker::BrokerStatus`]: crate::broker::BrokerStatus

use crate::broker::BrokerStatus;
use crate::stats::Status;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// What one scrape reads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bridged buses of this process.
    pub buses: Vec<Status>,
    /// Brokers of this process.
    pub brokers: Vec<BrokerStatus>,
    /// RPC calls this process made and served ([`crate::rpc::call_counts`]; the endpoint
    /// fills it at each scrape).
    pub rpc: Vec<crate::rpc::CallCount>,
    /// Families another part of the crate adds (the fleet uplink's counters).
    pub extra: Vec<Arc<dyn Families>>,
}

/// Metric families a part of the crate adds to a scrape, with their values now (the fleet
/// uplink's: `Vec<fleet::UplinkStats>`). Each registers names of its own, once per scrape.
pub trait Families: std::fmt::Debug + Send + Sync {
    /// Registers the families and their values.
    fn register(&self, registry: &mut Registry);
}

/// Produces a snapshot for each scrape.
pub type Source = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Snapshot> + Send>> + Send + Sync>;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding failed.
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

pub(crate) type Labels = Vec<(String, String)>;

pub(crate) fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

fn with(mut labels: Labels, key: &str, value: &str) -> Labels {
    labels.push((key.to_owned(), value.to_owned()));
    labels
}

/// Adds each `(value, n)` to `family`, labelled `labels` and `key = value`.
pub(crate) fn count_each<const N: usize>(
    family: &Family<Labels, Counter>,
    labels: &Labels,
    key: &str,
    counts: [(&str, u64); N],
) {
    for (value, n) in counts {
        family
            .get_or_create(&with(labels.clone(), key, value))
            .inc_by(n);
    }
}

/// Sets each `(value, n)` of a gauge `family`, labelled `labels` and `key = value`.
pub(crate) fn set_each<const N: usize>(
    family: &Family<Labels, Gauge>,
    labels: &Labels,
    key: &str,
    values: [(&str, i64); N],
) {
    for (value, n) in values {
        family
            .get_or_create(&with(labels.clone(), key, value))
            .set(n);
    }
}

/// A counter family registered under `name` (`_total` is added by the encoder).
pub(crate) fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

pub(crate) fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

/// The snapshot in the Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("busbridge");
    let published = counters(&mut r, "events_published", "Events accepted by publish");
    let delivered = counters(
        &mut r,
        "events_delivered",
        "Deliveries to local subscribers",
    );
    let dropped = counters(&mut r, "events_dropped", "Deliveries dropped, by reason");
    let frames = counters(
        &mut r,
        "bridge_frames",
        "Events the bridge sent to and received from busrt",
    );
    let gaps = counters(&mut r, "bridge_gaps", "Sequence gaps, by outcome");
    let resent = counters(
        &mut r,
        "bridge_resent",
        "Events sent again on a resend request",
    );
    let undecoded = counters(
        &mut r,
        "bridge_returns_undecoded",
        "Own events back from busrt that no local subscriber matched, counted in undecoded",
    );
    let errors = counters(&mut r, "bridge_errors", "Bridge errors, by reason");
    let compared = counters(
        &mut r,
        "parity_compared",
        "Deliveries compared by live parity",
    );
    let mismatches = counters(&mut r, "parity_mismatches", "Parity differences found");
    let pending = gauges(
        &mut r,
        "parity_pending",
        "Deliveries waiting for the other path",
    );
    let connected = gauges(
        &mut r,
        "bus_connected",
        "1 if the bridge is connected to its broker",
    );
    let depth = gauges(&mut r, "queue_depth", "Events waiting, by queue");
    let subscribers = gauges(&mut r, "subscribers", "Local subscribers");
    let triggers = counters(
        &mut r,
        "task_triggers",
        "Phase 5: trigger requests dispatched as tasks, by outcome",
    );
    for b in &s.buses {
        let bus = label("bus", &b.name);
        let st = &b.stats;
        published.get_or_create(&bus).inc_by(st.events_published);
        delivered.get_or_create(&bus).inc_by(st.events_delivered);
        count_each(
            &dropped,
            &bus,
            "reason",
            [
                ("full", st.dropped_full),
                ("timeout", st.dropped_timeout),
                ("disconnected", st.dropped_disconnected),
            ],
        );
        count_each(
            &frames,
            &bus,
            "direction",
            [("sent", st.bridge_sent), ("received", st.bridge_received)],
        );
        count_each(
            &gaps,
            &bus,
            "outcome",
            [
                ("found", st.bridge_gaps),
                ("filled", st.bridge_gaps_filled),
                ("lost", st.bridge_gaps_lost),
            ],
        );
        resent.get_or_create(&bus).inc_by(st.bridge_resent);
        undecoded
            .get_or_create(&bus)
            .inc_by(st.bridge_returns_undecoded);
        count_each(
            &errors,
            &bus,
            "reason",
            [
                ("send", st.bridge_send_errors),
                ("decode", st.bridge_decode_errors),
                ("hop_limit", st.bridge_hop_limited),
            ],
        );
        compared.get_or_create(&bus).inc_by(b.parity.compared);
        mismatches
            .get_or_create(&bus)
            .inc_by(b.parity.mismatch_count);
        pending.get_or_create(&bus).set(b.parity_pending as i64);
        connected
            .get_or_create(&bus)
            .set(i64::from(b.connection == "Connected"));
        set_each(
            &depth,
            &bus,
            "queue",
            [
                ("subscribers", b.queued as i64),
                ("in_flight", b.in_flight as i64),
            ],
        );
        subscribers.get_or_create(&bus).set(b.subscribers as i64);
        if let Some(t) = b.triggers {
            count_each(
                &triggers,
                &bus,
                "outcome",
                [
                    ("dispatched", t.dispatched),
                    ("completed", t.completed),
                    ("failed", t.failed),
                ],
            );
        }
    }
    let conns = gauges(&mut r, "broker_connections", "Connections open now");
    let accepted = counters(
        &mut r,
        "broker_connections_accepted",
        "Connections accepted",
    );
    let refused = counters(&mut r, "broker_refused", "Connections refused, by reason");
    let bframes = counters(
        &mut r,
        "broker_frames",
        "Frames through the broker, by direction",
    );
    for b in &s.brokers {
        let broker = label("broker", &b.broker);
        let st = &b.stats;
        conns
            .get_or_create(&broker)
            .set(st.connections_active as i64);
        accepted
            .get_or_create(&broker)
            .inc_by(st.connections_accepted);
        count_each(
            &refused,
            &broker,
            "reason",
            [
                ("limit", st.refused_connection_limit),
                ("peer_credentials", st.refused_peer_credentials),
                ("tls", st.refused_tls),
            ],
        );
        count_each(
            &bframes,
            &broker,
            "direction",
            [("in", st.frames_received), ("out", st.frames_sent)],
        );
    }
    if !s.rpc.is_empty() {
        let calls = counters(
            &mut r,
            "rpc_calls",
            "RPC calls made and served, by method and outcome",
        );
        for c in &s.rpc {
            let labels = with(
                with(label("side", c.side.as_str()), "method", &c.method),
                "outcome",
                c.outcome,
            );
            calls.get_or_create(&labels).inc_by(c.calls);
        }
    }
    for families in &s.extra {
        families.register(&mut r);
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

/// A running `/metrics` endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `/metrics` on `addr` (port 0: any free port, see [`addr`](Self::addr)).
    pub async fn start(addr: SocketAddr, source: Source) -> Result<Self, MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let source = source.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let source = source.clone();
                        async move { Ok::<_, std::convert::Infallible>(respond(req, source).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!("metrics connection: {e}");
                    }
                });
            }
        });
        tracing::info!(%addr, "metrics on /metrics");
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    source: Source,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(404, "text/plain", "only GET /metrics here\n".into());
    }
    let mut snapshot = source().await;
    // RPC calls are counted process-wide, not per bus or broker: added here, for every source.
    snapshot.rpc = crate::rpc::call_counts();
    let text = render(&snapshot);
    reply(
        200,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    )
}
