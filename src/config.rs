//! One configuration, loaded from TOML, validated with errors that name the key.
//!
//! ```
//! use busbridge::config::Config;
//! let config = Config::from_toml_str(r#"
//!     codec = "json"
//!     [transport]
//!     socket_path = "/run/busbridge/daemoneye.sock"
//!     connection_timeout = "10s"
//!     max_connections = 100
//!     [broker]
//!     timeout = "30s"
//!     max_message_size = 1048576
//! "#).unwrap();
//! assert_eq!(config.broker.timeout, std::time::Duration::from_secs(30));
//! assert!(Config::from_toml_str("[broker]\ntimeout = \"soon\"").is_err());
//! ```

use crate::codec::CodecKind;
use crate::phase::{Phase, PhaseError};
use crate::subscription::BackpressureStrategy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    #[error("{0}")]
    /// The file is not valid TOML or has an unknown key.
    Parse(#[from] toml::de::Error),
    #[error("`{key}`: {reason}")]
    /// A value is out of range or inconsistent with another.
    Invalid {
        /// The dotted key, e.g. `bus.batch_max`.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
    #[error("`phase`: {0}")]
    /// The phase is unknown or not served by this build.
    Phase(#[from] PhaseError),
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Migration phase, 0–5 (see [`Phase`]).
    pub phase: Phase,
    /// Encoding of events on busrt; both are accepted on receive.
    pub codec: CodecKind,
    /// Socket path, TCP listeners, permissions (`[transport]`).
    pub transport: TransportConfig,
    /// The broker: embedded or not, limits, access rules (`[broker]`).
    pub broker: BrokerConfig,
    /// How clients connect: address, name, timeouts (`[client]`).
    pub client: ClientConfig,
    /// The bus and its bridge: queues, batching, replay (`[bus]`).
    pub bus: BusConfig,
    /// Per-client access rules, by client name (see [`AccessRule`]).
    pub access: BTreeMap<String, AccessRule>,
    /// The broker's certificate, key and client CA for `transport.tls_listen`.
    pub tls: Option<TlsConfig>,
    /// Prometheus `/metrics` (`[metrics]`), off unless `listen` is set.
    pub metrics: MetricsConfig,
    /// Phase-5 task dispatch (`[tasks]`).
    pub tasks: TasksConfig,
    /// The fleet uplink to NATS JetStream (`[uplink]`), off unless set.
    pub uplink: Option<UplinkConfig>,
}

/// How a one-of task picks its collector among those with room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The lowest load for its capacity; ties rotate.
    #[default]
    LeastLoaded,
    /// Each in turn, by name.
    RoundRobin,
    /// Least loaded, but a collector's last free slot is kept for `high` and `critical`.
    PriorityAware,
}

/// What happens to a task no alive collector can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenNoneCapable {
    /// Refuse it at once (`DispatchError::NothingCapable`).
    #[default]
    Refuse,
    /// Queue it (bounded, by priority) until a capable collector appears or its deadline
    /// passes.
    Queue,
}

/// Phase-5 task dispatch (`[tasks]`): how a requester ([`crate::task::TaskClient`]) picks
/// collectors, retries and queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// How one-of tasks choose.
    pub strategy: Strategy,
    /// Refuse or queue when nothing is capable.
    pub when_none_capable: WhenNoneCapable,
    /// Most tasks waiting in the queue (for a capable collector, or for room).
    pub queue_capacity: usize,
    /// Time a collector has to accept an offer before the task goes elsewhere.
    #[serde(with = "humantime_serde")]
    pub accept_timeout: Duration,
    /// Most collectors a one-of task is offered to before it fails.
    pub max_attempts: u32,
    /// Largest task payload, in bytes of JSON.
    pub max_payload: usize,
    /// Start a bridged bus's trigger dispatcher even below phase 5, so it can switch into
    /// phase 5 at run time (at phase 5 it always starts).
    pub dispatch_triggers: bool,
    /// Time a trigger request dispatched at phase 5 has to be taken and delivered.
    #[serde(with = "humantime_serde")]
    pub trigger_timeout: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            when_none_capable: WhenNoneCapable::default(),
            queue_capacity: 10_000,
            accept_timeout: Duration::from_secs(2),
            max_attempts: 3,
            max_payload: 64 * 1024,
            dispatch_triggers: false,
            trigger_timeout: Duration::from_secs(30),
        }
    }
}

/// The fleet uplink (`[uplink]`): which events leave the host for NATS JetStream, under which
/// subjects, and how the uplink reaches NATS. The centre's commands (`busbridge fleet`) read
/// the connection settings from the same section.
///
/// ```
/// let config = busbridge::config::Config::from_toml_str(r#"
///     [uplink]
///     nats = "tls://nats.example.net:4222"
///     host = "web-01"
///     subjects = ["events.#"]
///     spool_dir = "/var/lib/busbridge/uplink"
///     credentials = "/etc/busbridge/web-01.creds"
///     tls = { cert = "web-01.pem", key = "web-01.key", ca = "fleet-ca.pem" }
/// "#).unwrap();
/// let uplink = config.uplink.unwrap();
/// assert_eq!(uplink.subject("events.process.new"), "busbridge.web-01.events.process.new");
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// NATS server URLs, comma separated (`nats://`, `tls://`).
    pub nats: String,
    /// This host's name in subjects: one NATS token (letters, digits, `-`, `_`). Default:
    /// the machine's host name.
    pub host: Option<String>,
    /// First token of every subject (`<prefix>.<host>.<topic>`).
    pub prefix: String,
    /// busbridge topic patterns to forward.
    pub subjects: Vec<String>,
    /// How payloads are encoded in the stream (the envelope, as on busrt).
    pub codec: CodecKind,
    /// The JetStream stream.
    pub stream: String,
    /// Create the stream (file storage, subjects `<prefix>.*.<pattern>`) if it does not
    /// exist. Off where hosts may not manage streams.
    pub create_stream: bool,
    /// How long JetStream remembers message ids to drop a resent event (the stream's
    /// `duplicate_window`, when the uplink creates it).
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// The on-disk spool: events waiting for JetStream's acknowledgement, and the positions
    /// acknowledged so far. Default: `busbridge-uplink-<host>` in the temp directory.
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool holds; events beyond are dropped and counted (`spool_overflow`).
    pub spool_max_bytes: u64,
    /// Publishes waiting for their acknowledgement at once.
    pub in_flight: usize,
    /// How long an acknowledgement may take before the publish is retried.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// A NATS credentials file (`.creds`: user JWT and nkey seed). Never on the command
    /// line.
    pub credentials: Option<PathBuf>,
    /// Client certificate, key and the CA of the NATS servers (mutual TLS).
    pub tls: Option<TlsConfig>,
    /// Serve tasks from the fleet (`<prefix>.<host>._task`, `<prefix>._fleet.task`) on this
    /// host's collectors.
    pub tasks: bool,
    /// How often the host announces itself and its collectors (key `<host>` of the
    /// key-value bucket `<stream>_hosts`).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            nats: "nats://127.0.0.1:4222".into(),
            host: None,
            prefix: "busbridge".into(),
            subjects: vec!["events.#".into()],
            codec: CodecKind::Protobuf,
            stream: "BUSBRIDGE".into(),
            create_stream: true,
            duplicate_window: Duration::from_secs(600),
            spool_dir: None,
            spool_max_bytes: 256 << 20,
            in_flight: 1024,
            ack_timeout: Duration::from_secs(5),
            credentials: None,
            tls: None,
            tasks: true,
            heartbeat: Duration::from_secs(2),
        }
    }
}

/// True if `s` is one NATS subject token busbridge accepts (no `.`, `*`, `>`, space).
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl UplinkConfig {
    /// This host's name: `host`, else the machine's host name made into a subject token.
    pub fn host_name(&self) -> String {
        if let Some(h) = &self.host {
            return h.clone();
        }
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let raw = if ok {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        };
        // The first label, made one subject token as any name is made a topic level.
        match raw.split('.').next().unwrap_or_default() {
            "" => "localhost".into(),
            label => crate::topic::sanitize_level(label),
        }
    }

    /// The JetStream subject of a busbridge topic from this host.
    pub fn subject(&self, dotted_topic: &str) -> String {
        format!("{}.{}.{dotted_topic}", self.prefix, self.host_name())
    }

    /// The stream's subjects: every forwarded pattern under `<prefix>.*.` (any host), with
    /// `#` as NATS's `>` and `+`/`*` as `*`.
    pub fn stream_subjects(&self) -> Vec<String> {
        self.subjects
            .iter()
            .map(|p| {
                let tokens: Vec<&str> = p
                    .split('.')
                    .map(|t| match t {
                        "#" => ">",
                        "+" => "*",
                        t => t,
                    })
                    .collect();
                format!("{}.*.{}", self.prefix, tokens.join("."))
            })
            .collect()
    }

    /// The spool directory.
    pub fn spool_path(&self) -> PathBuf {
        self.spool_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("busbridge-uplink-{}", self.host_name()))
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.nats.trim().is_empty() {
            return Err(invalid("uplink.nats", "no NATS server"));
        }
        for url in self.nats.split(',') {
            let url = url.trim();
            let scheme = url.split("://").next().filter(|_| url.contains("://"));
            if !matches!(scheme, None | Some("nats" | "tls")) {
                return Err(invalid(
                    "uplink.nats",
                    format!("`{url}`: the scheme must be nats:// or tls://"),
                ));
            }
        }
        if let Some(h) = &self.host {
            if !is_subject_token(h) || h.starts_with('_') {
                return Err(invalid(
                    "uplink.host",
                    format!("`{h}` is not one subject token (letters, digits, - and _, not first)"),
                ));
            }
        }
        if !is_subject_token(&self.prefix) {
            return Err(invalid(
                "uplink.prefix",
                format!("`{}` is not one subject token", self.prefix),
            ));
        }
        if !is_subject_token(&self.stream) {
            return Err(invalid(
                "uplink.stream",
                format!("`{}` is not a stream name", self.stream),
            ));
        }
        if self.subjects.is_empty() {
            return Err(invalid("uplink.subjects", "no topic pattern to forward"));
        }
        for p in &self.subjects {
            crate::topic::Pattern::parse(p)
                .map_err(|e| invalid("uplink.subjects", e.to_string()))?;
        }
        for (key, ok) in [
            ("uplink.in_flight", self.in_flight > 0),
            ("uplink.spool_max_bytes", self.spool_max_bytes >= 1 << 16),
            ("uplink.ack_timeout", !self.ack_timeout.is_zero()),
            ("uplink.heartbeat", !self.heartbeat.is_zero()),
            ("uplink.duplicate_window", !self.duplicate_window.is_zero()),
        ] {
            if !ok {
                let least = if key == "uplink.spool_max_bytes" {
                    "must be at least 65536"
                } else {
                    "must be greater than zero"
                };
                return Err(invalid(key, least));
            }
        }
        Ok(())
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` to serve `/metrics` on (a bridged process: its buses and embedded broker;
    /// `busbridge broker`: the broker). Unset: no endpoint.
    pub listen: Option<String>,
    /// Allow a non-loopback `listen` address.
    pub allow_remote: bool,
}

impl MetricsConfig {
    /// The address to serve `/metrics` on, if any; refused if it is not `ip:port`, or not
    /// loopback without `allow_remote`.
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(listen) = &self.listen else {
            return Ok(None);
        };
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!("`{listen}` is not an IP address and port"),
            )
        })?;
        if !addr.ip().is_loopback() && !self.allow_remote {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address; set metrics.allow_remote = true to serve it"
                ),
            ));
        }
        Ok(Some(addr))
    }
}

/// Where and how the broker listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Unix socket; a relative path goes into a private runtime directory.
    pub socket_path: PathBuf,
    /// Connect (and handshake) timeout.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Most concurrent external connections the broker accepts.
    pub max_connections: u32,
    /// Optional TCP listener, `host:port`.
    pub tcp_listen: Option<String>,
    /// Allow plaintext TCP on a non-loopback address (off: refused).
    pub allow_plaintext_remote: bool,
    /// Optional mutual-TLS listener, `host:port` (needs `[tls]`).
    pub tls_listen: Option<String>,
    /// Uids allowed on the Unix socket besides the broker's own and root.
    pub allowed_uids: Vec<u32>,
    /// Group (name or gid) given the Unix socket and its directory, so collectors running as
    /// other users can reach it; their uids must still be in `allowed_uids`.
    pub socket_group: Option<String>,
    /// Mode of the Unix socket, octal text: `"0600"` by default, `"0660"` with
    /// `socket_group`. Others never get access.
    pub socket_mode: Option<String>,
}

/// The broker's own settings: embedded or standalone, limits, access rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run the broker inside this process (else connect to a standalone one).
    pub embedded: bool,
    /// busrt's server timeout (handshake, reads, writes; idle limit is 1.25 x this).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest message, in bytes, enforced by busbridge and by busrt.
    pub max_message_size: usize,
    /// Frames queued per client inside the broker. busrt disconnects a client whose queue is
    /// full and drops what it held: size it for the largest burst a subscriber can fall
    /// behind by.
    pub queue_size: usize,
    /// How long busrt holds a frame written while more follow before flushing it to a client
    /// (busrt's `buf_ttl`). `0s`, the default, flushes as soon as busrt's flusher task runs,
    /// which still gathers a burst into one write; busrt's own default (10 µs) goes through a
    /// timer thread for every burst. Must stay below `timeout`.
    #[serde(with = "humantime_serde")]
    pub flush_delay: Duration,
}

/// A busbridge client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Connection string: `inproc://`, `ipc:///abs.sock`, `ipc://rel.sock`, `tcp://host:port`.
    pub connect: Option<String>,
    /// busrt client name; also the bridge's origin name. Default: `busbridge-<pid>`.
    pub name: Option<String>,
    /// Timeout of each operation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Ping period, so an idle client is never dropped.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    #[serde(with = "humantime_serde")]
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Acknowledged publishes kept while disconnected.
    pub outbox_capacity: usize,
    /// When the outbox is full: `error` (the publish fails, nothing accepted is lost) or
    /// `drop_oldest` (counted in `outbox_dropped`).
    pub outbox_overflow: OutboxOverflow,
    /// Events buffered between busrt and local delivery.
    pub queue_size: usize,
    /// Default RPC call timeout.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// This client's certificate, key and the CA of the broker's, for `tls://`.
    pub tls: Option<TlsConfig>,
    /// How long busrt holds a frame written while more follow before flushing it to the
    /// broker (busrt's `buf_ttl`); as `broker.flush_delay`. Must stay below `timeout`.
    #[serde(with = "humantime_serde")]
    pub flush_delay: Duration,
}

/// What happens to an acknowledged publish when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxOverflow {
    /// The publish fails with `ClientError::OutboxFull` (nothing accepted is lost).
    #[default]
    Error,
    /// The oldest waiting message is dropped and counted.
    DropOldest,
}

/// PEM files of one side of a mutually authenticated connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
    /// The CA that must have signed the other side's certificate.
    pub ca: PathBuf,
}

/// Default most hops an envelope may have travelled (`bus.hop_limit`).
pub const DEFAULT_HOP_LIMIT: u32 = 8;

/// How long a delivery waits for the other path's before parity counts it missing, by
/// default (`bus.parity_window`).
pub const DEFAULT_PARITY_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Local delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Queue size of each local subscriber of a bus bridged from this configuration. Unset,
    /// each facade keeps its own (`channel_capacity` of the crossbeam facade's config,
    /// `max_buffer_size` of the tokio facade's, `channel_capacity` of the phase-4
    /// `EventBusConfig`); set, it applies to every facade of the bus, whatever the code says.
    pub channel_capacity: Option<usize>,
    /// Most subscribers on the bus, across all its facades.
    pub max_subscribers: usize,
    /// What a full subscriber queue does on a bus bridged from this configuration. Unset, each
    /// facade keeps its own; set, it applies to every facade (the tokio facade's `Blocking`
    /// waits at most its `delivery_timeout`, as the legacy bus did).
    pub backpressure_strategy: Option<BackpressureStrategy>,
    /// Most events per busrt frame when the bridge batches; 1 = off (the default, because a
    /// batch frame is not a legacy record).
    pub batch_max: usize,
    /// Acknowledged frames the bridge keeps in flight.
    pub publish_window: usize,
    /// Encoded events waiting to be sent; when full, `publish` waits.
    pub outbound_queue: usize,
    /// Recently sent events kept to answer resend requests (0: none). Room for up to
    /// 131,072 of them is reserved when the bridge starts (64 bytes each, address space: the
    /// memory is used as the buffer fills), so the publishing path never copies it to grow.
    pub replay_buffer: usize,
    /// How long events behind a sequence gap wait for the resend before the gap is counted
    /// lost and they are delivered.
    #[serde(with = "humantime_serde")]
    pub gap_wait: std::time::Duration,
    /// Most bridges an event may cross; beyond, it is dropped and counted
    /// (`bridge_hop_limited`).
    pub hop_limit: u32,
    /// How long parity waits for one path's delivery to match the other's before it counts
    /// the event missing (or extra), live.
    #[serde(with = "humantime_serde")]
    pub parity_window: std::time::Duration,
}

/// What one client may do; topics are dotted patterns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessRule {
    /// Topic patterns the client may publish to.
    pub publish: Vec<String>,
    /// Topic patterns the client may subscribe to.
    pub subscribe: Vec<String>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from("daemoneye.sock"),
            connection_timeout: Duration::from_secs(10),
            max_connections: 100,
            tcp_listen: None,
            allow_plaintext_remote: false,
            tls_listen: None,
            allowed_uids: Vec::new(),
            socket_group: None,
            socket_mode: None,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            timeout: Duration::from_secs(30),
            max_message_size: crate::codec::DEFAULT_MAX_MESSAGE_SIZE,
            queue_size: 65_536,
            flush_delay: Duration::ZERO,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect: None,
            name: None,
            timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            outbox_capacity: 100_000,
            outbox_overflow: Default::default(),
            queue_size: 65_536,
            rpc_timeout: Duration::from_secs(5),
            tls: None,
            flush_delay: Duration::ZERO,
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            channel_capacity: None,
            max_subscribers: 1000,
            backpressure_strategy: None,
            batch_max: 1,
            publish_window: 256,
            outbound_queue: 65_536,
            replay_buffer: 100_000,
            gap_wait: std::time::Duration::from_secs(2),
            hop_limit: DEFAULT_HOP_LIMIT,
            parity_window: DEFAULT_PARITY_WINDOW,
        }
    }
}

impl Config {
    /// Parses and validates TOML.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(s)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The resolved configuration as TOML (every default filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Checks every value; the first problem is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.phase.check_build()?;
        let positive = |key: &str, d: Duration| {
            if d.is_zero() {
                Err(invalid(key, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive(
            "transport.connection_timeout",
            self.transport.connection_timeout,
        )?;
        positive("broker.timeout", self.broker.timeout)?;
        positive("client.timeout", self.client.timeout)?;
        positive("client.keepalive", self.client.keepalive)?;
        positive("client.reconnect_initial", self.client.reconnect_initial)?;
        positive("client.rpc_timeout", self.client.rpc_timeout)?;
        if self.client.keepalive >= self.broker.timeout {
            return Err(invalid(
                "client.keepalive",
                "must be shorter than broker.timeout, or idle clients are dropped",
            ));
        }
        if self.client.reconnect_max < self.client.reconnect_initial {
            return Err(invalid(
                "client.reconnect_max",
                "must be at least client.reconnect_initial",
            ));
        }
        if let Some(mode) = &self.transport.socket_mode {
            // The group is looked up where the broker starts; its syntax is checked here.
            let group = self.transport.socket_group.as_ref().map(|_| "0");
            crate::endpoint::SocketAccess::parse(Some(mode), group)
                .map_err(|e| invalid("transport.socket_mode", e.to_string()))?;
        }
        if self.transport.socket_group.as_deref() == Some("") {
            return Err(invalid("transport.socket_group", "must not be empty"));
        }
        if self.transport.socket_path.as_os_str().is_empty() {
            return Err(invalid("transport.socket_path", "must not be empty"));
        }
        let nonzero = |key: &str, n: usize| {
            if n == 0 {
                Err(invalid(key, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        nonzero(
            "transport.max_connections",
            self.transport.max_connections as usize,
        )?;
        nonzero("broker.queue_size", self.broker.queue_size)?;
        for (key, delay, timeout) in [
            (
                "broker.flush_delay",
                self.broker.flush_delay,
                self.broker.timeout,
            ),
            (
                "client.flush_delay",
                self.client.flush_delay,
                self.client.timeout,
            ),
        ] {
            if delay >= timeout {
                return Err(invalid(key, "must be below the timeout of the same side"));
            }
        }
        nonzero("client.queue_size", self.client.queue_size)?;
        nonzero(
            "bus.channel_capacity",
            self.bus.channel_capacity.unwrap_or(1),
        )?;
        nonzero("bus.hop_limit", self.bus.hop_limit as usize)?;
        if self.bus.parity_window.is_zero() {
            return Err(invalid("bus.parity_window", "must be above zero"));
        }
        nonzero("bus.max_subscribers", self.bus.max_subscribers)?;
        nonzero("bus.batch_max", self.bus.batch_max)?;
        if self.bus.gap_wait.is_zero() {
            return Err(invalid("bus.gap_wait", "must be above zero"));
        }
        nonzero("bus.publish_window", self.bus.publish_window)?;
        nonzero("bus.outbound_queue", self.bus.outbound_queue)?;
        if self.bus.batch_max > 1000 {
            return Err(invalid("bus.batch_max", "at most 1000 events per frame"));
        }
        if self.broker.max_message_size < 1024 || self.broker.max_message_size > u32::MAX as usize {
            return Err(invalid(
                "broker.max_message_size",
                "must be between 1024 and 4294967295 bytes",
            ));
        }
        if self.transport.tls_listen.is_some() && self.tls.is_none() {
            return Err(invalid(
                "tls",
                "transport.tls_listen needs a [tls] section (cert, key, ca)",
            ));
        }
        self.metrics.addr()?;
        let t = &self.tasks;
        for (key, ok) in [
            ("tasks.queue_capacity", t.queue_capacity >= 1),
            ("tasks.max_attempts", t.max_attempts >= 1),
            ("tasks.accept_timeout", !t.accept_timeout.is_zero()),
            ("tasks.max_payload", t.max_payload >= 1),
            ("tasks.trigger_timeout", !t.trigger_timeout.is_zero()),
        ] {
            if !ok {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some(addr) = &self.transport.tcp_listen {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "transport.tcp_listen",
                    format!("`{addr}` is not host:port with an IP address"),
                ));
            }
        }
        if let Some(uplink) = &self.uplink {
            uplink.validate()?;
        }
        for (name, rule) in &self.access {
            if name.is_empty() || name.starts_with('.') {
                return Err(invalid(
                    &format!("access.{name}"),
                    "not a valid client name",
                ));
            }
            for (list, patterns) in [("publish", &rule.publish), ("subscribe", &rule.subscribe)] {
                for p in patterns {
                    crate::topic::Pattern::parse(p)
                        .map_err(|e| invalid(&format!("access.{name}.{list}"), e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::from_toml_str(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("[broker]\ntimeot = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("timeot"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = Config::from_toml_str("[broker]\ntimeout = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::from_toml_str("[transport]\nmax_connections = 0").unwrap_err();
        assert!(e.to_string().contains("transport.max_connections"), "{e}");
        let e = Config::from_toml_str("phase = 9").unwrap_err();
        assert!(e.to_string().contains("phase"), "{e}");
        let e = Config::from_toml_str("[access.procmond]\npublish = [\"events..x\"]").unwrap_err();
        assert!(e.to_string().contains("access.procmond.publish"), "{e}");
        let e = Config::from_toml_str("[bus]\ngap_wait = \"0s\"").unwrap_err();
        assert!(e.to_string().contains("bus.gap_wait"), "{e}");
        let c = Config::from_toml_str("[bus]\ngap_wait = \"10s\"").unwrap();
        assert_eq!(c.bus.gap_wait, std::time::Duration::from_secs(10));
    }

    #[test]
    fn flush_delays_are_read_and_bounded_by_their_timeouts() {
        let c = Config::from_toml_str(
            "[broker]\nflush_delay = \"10us\"\n[client]\nflush_delay = \"1ms\"",
        )
        .unwrap();
        assert_eq!(c.broker.flush_delay, Duration::from_micros(10));
        assert_eq!(c.client.flush_delay, Duration::from_millis(1));
        assert_eq!(Config::default().broker.flush_delay, Duration::ZERO);
        let e = Config::from_toml_str("[broker]\ntimeout = \"10s\"\nflush_delay = \"10s\"")
            .unwrap_err();
        assert!(e.to_string().contains("broker.flush_delay"), "{e}");
        let e = Config::from_toml_str("[client]\nflush_delay = \"1h\"").unwrap_err();
        assert!(e.to_string().contains("client.flush_delay"), "{e}");
    }
}
