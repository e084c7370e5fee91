//! Beyond one host: each host's broker uplinked to NATS JetStream (feature `nats`).
//!
//! A busrt broker is host-local: one process, nothing kept across its restart. For a fleet,
//! busbridge does not build a cluster; it forwards to an existing one. On each host a
//! [`NatsUplink`] joins the broker as a bridged client (a durable subscriber) and publishes
//! the chosen topics to JetStream, one message per event:
//!
//! | | |
//! |---|---|
//! | subject | `<prefix>.<host>.<topic>`, e.g. `busbridge.web-01.events.process.new` |
//! | payload | the event's envelope, as the host's bus encodes it (protobuf or JSON, [`crate::codec`]) |
//! | `Nats-Msg-Id` | `<origin>:<seq>` (split at the last `:`): JetStream drops a resent event as a duplicate |
//!
//! An event is acknowledged by JetStream (stored) before the uplink lets it go: it waits in
//! an on-disk [`spool`] meanwhile, so a NATS outage or an uplink crash loses nothing the
//! uplink accepted; the spool is bounded and what does not fit is counted. Restarted, the
//! uplink resumes the bridge from what it had spooled, per origin (the mechanism of
//! [`crate::durable`]), and sends again what JetStream had not acknowledged.
//!
//! Down the other way, tasks for a host (`<prefix>.<host>._task`) or for the whole fleet
//! (`<prefix>._fleet.task`) are dispatched by the host's phase-5 task layer, and every
//! [`TaskEvent`] goes back to the request's reply subject. Each host
//! announces itself and its collectors in the key-value bucket `<stream>_hosts`, whose entries
//! expire when a host falls silent: that is how [`FleetTasks`] at the centre knows whom to
//! expect, and ends a task `partial` when a host that should have answered did not.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use busbridge::config::UplinkConfig;
//! use busbridge::fleet::NatsUplink;
//!
//! let config = UplinkConfig {
//!     nats: "nats://nats.example.net:4222".into(),
//!     host: Some("web-01".into()),
//!     ..UplinkConfig::default()
//! };
//! let uplink = NatsUplink::start(config, "ipc:///run/busbridge/daemoneye.sock").await?;
//! println!("{:?}", uplink.stats());
//! uplink.shutdown().await?;
//! # Ok(()) }
//! ```

mod centre;
pub mod spool;
mod uplink;

pub use centre::{FleetEvent, FleetSubscriber, FleetTask, FleetTasks, HostResult};
pub use uplink::{NatsUplink, UplinkStats};

use crate::config::UplinkConfig;
use crate::task::{CollectorInfo, TaskEvent, TaskSpec};
use serde::{Deserialize, Serialize};

/// JetStream's message id of an event: its identity across resends.
pub fn message_id(origin: &str, seq: u64) -> String {
    format!("{origin}:{seq}")
}

/// Where tasks for one host are sent.
pub fn host_task_subject(prefix: &str, host: &str) -> String {
    format!("{prefix}.{host}._task")
}

/// Where tasks for every capable host are sent.
pub fn fleet_task_subject(prefix: &str) -> String {
    format!("{prefix}._fleet.task")
}

/// The key-value bucket where hosts announce themselves.
pub fn hosts_bucket(stream: &str) -> String {
    format!("{stream}_hosts")
}

/// Why the uplink or a fleet command failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration cannot be used (a certificate, the credentials file).
    #[error("uplink configuration: {0}")]
    Config(String),
    /// NATS could not be reached or refused the connection.
    #[error("NATS {url}: {reason}")]
    Connect {
        /// The server URLs.
        url: String,
        /// Why.
        reason: String,
    },
    /// A JetStream request (stream, consumer, bucket) failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The host's broker could not be joined.
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    /// The host's bus refused the subscription.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// No host can run the task.
    #[error("{0}")]
    NoHost(String),
    /// The task layer could not connect.
    #[error("task layer: {0}")]
    Tasks(#[from] crate::client::ClientError),
}

fn js_error(e: impl std::fmt::Display) -> FleetError {
    FleetError::JetStream(e.to_string())
}

/// A host's announcement, the value of its key in the hosts bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host.
    pub host: String,
    /// Its collectors as its task layer knows them.
    pub collectors: Vec<CollectorInfo>,
}

impl HostInfo {
    /// Whether one of its collectors can run `spec` (capabilities, operation, type).
    pub fn can_run(&self, spec: &TaskSpec) -> bool {
        self.collectors.iter().any(|c| {
            c.serves(spec.capabilities, &spec.operation)
                && spec.collector_type.as_ref().is_none_or(|k| *k == c.kind)
                && spec.target.as_ref().is_none_or(|t| *t == c.name)
        })
    }
}

/// A host's answer on a task's reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostReply {
    /// What the host's task layer reported, in order; the last is `finished`.
    Event {
        /// The host.
        host: String,
        /// The event.
        event: TaskEvent,
    },
    /// The host did not dispatch the task (nothing capable, queue full, invalid).
    Refused {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// Connects to the NATS servers of `config` as `name`: mutual TLS when `config.tls` is set
/// (the certificate handling of [`crate::tls`]), the credentials file when set. With `wait`
/// false the connection is made in the background and retried forever (an uplink starts
/// while NATS is away); with `wait` true a failure is returned.
pub async fn connect(
    config: &UplinkConfig,
    name: &str,
    wait: bool,
) -> Result<async_nats::Client, FleetError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(std::time::Duration::from_secs(5))
        .reconnect_delay_callback(|attempt| {
            // Exponential from 50 ms to 2 s: a restarted server is found quickly, a dead one
            // is not hammered.
            std::time::Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)).min(2000))
        });
    if let Some(path) = &config.credentials {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| FleetError::Config(format!("credentials {}: {e}", path.display())))?;
    }
    if let Some(tls) = &config.tls {
        let client =
            crate::tls::client_config(tls).map_err(|e| FleetError::Config(e.to_string()))?;
        opts = opts.tls_client_config((*client).clone()).require_tls(true);
    }
    if !wait {
        opts = opts.retry_on_initial_connect();
    }
    let urls: Vec<&str> = config.nats.split(',').map(str::trim).collect();
    opts.connect(urls.as_slice())
        .await
        .map_err(|e| FleetError::Connect {
            url: config.nats.clone(),
            reason: e.to_string(),
        })
}
