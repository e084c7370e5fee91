//! A busrt client that survives the real world: connection strings, keepalive, reconnection
//! with back-off, resubscription, a bounded outbox for acknowledged publishes, an event channel
//! drained by a task that never blocks, and timeouts on every await.
//!
//! ```no_run
//! # async fn run() -> Result<(), busbridge::client::ClientError> {
//! use busbridge::{AsyncClient, QoS};
//! use std::time::Duration;
//! use tokio::time::timeout;
//!
//! let mut client = AsyncClient::connect("ipc:///run/busbridge/daemoneye.sock").await?;
//! client.subscribe("events.process.*", QoS::Processed).await?;
//! client.publish("events.process.new", b"{}".to_vec(), QoS::Processed).await?;
//! let message = client.recv().await?;
//! println!("{} from {}: {} bytes", message.topic(), message.sender(), message.payload().len());
//! let _ = timeout(Duration::from_secs(5), client.disconnect()).await;
//! # Ok(()) }
//! ```
//!
//! `publish` with [`QoS::Processed`] returns once the broker acknowledged the frame, or once it
//! is safe in the outbox while the client reconnects (order is kept: nothing overtakes the
//! outbox). busrt's "processed" means the broker queued the frame for its subscribers, nothing
//! more; end-to-end delivery is the bridge's job (sequence numbers, resend). For a stream,
//! [`Publisher::publish_pipelined`] keeps many acknowledgements in flight and
//! [`GroupedPublisher`] asks for one per group of frames.

mod backoff;

pub use backoff::Backoff;

use crate::broker::{inproc_client, BrokerError};
use crate::config::ClientConfig;
use crate::endpoint::{Endpoint, EndpointError};
use crate::topic::{BusrtTopic, Pattern, Topic, TopicError};
use busrt::client::AsyncClient as BusrtClient;
pub use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A topic no one subscribes to: the keepalive round trip unsubscribes from it.
const KEEPALIVE_TOPIC: &str = "busbridge/keepalive";

/// Delivery quality of a publish or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QoS {
    /// Acknowledged by the broker (busrt `RealtimeProcessed`), kept in the outbox across
    /// reconnects. For critical events and control messages.
    #[default]
    Processed,
    /// Best effort, flushed at once (busrt `Realtime`). For high-frequency data.
    Realtime,
}

impl QoS {
    fn busrt(self) -> busrt::QoS {
        self.busrt_flushing(true)
    }

    /// busrt's QoS for a frame; `flush = false` lets busrt buffer the frame until the next
    /// flushing one (or its buffer TTL), so a burst costs one write instead of one per frame.
    fn busrt_flushing(self, flush: bool) -> busrt::QoS {
        match (self, flush) {
            (QoS::Processed, true) => busrt::QoS::RealtimeProcessed,
            (QoS::Processed, false) => busrt::QoS::Processed,
            (QoS::Realtime, true) => busrt::QoS::Realtime,
            (QoS::Realtime, false) => busrt::QoS::No,
        }
    }
}

impl std::str::FromStr for QoS {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "processed" => Ok(QoS::Processed),
            "realtime" => Ok(QoS::Realtime),
            _ => Err(format!("unknown QoS `{s}`: use processed or realtime")),
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    /// The connection string is invalid.
    Endpoint(#[from] EndpointError),
    #[error("cannot connect to {endpoint}: {reason}")]
    /// The broker could not be reached.
    Connect {
        /// The connection string.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    #[error("{0} timed out")]
    /// An operation took longer than the client's timeout; names the operation.
    Timeout(&'static str),
    #[error(transparent)]
    /// The topic or pattern is invalid.
    Topic(#[from] TopicError),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    /// The payload is larger than the broker accepts.
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The largest size accepted.
        limit: usize,
    },
    #[error("outbox full ({0} messages waiting for the broker); message refused")]
    /// Disconnected, and the outbox holds its maximum (the number); the message was not accepted.
    OutboxFull(usize),
    #[error("access denied by the broker: {0}")]
    /// The broker's access rules refused the operation.
    Denied(String),
    #[error("{left} message(s) could not be handed to the broker before the deadline")]
    /// `disconnect_within` ran out of time with messages still in the outbox (how many).
    Unflushed {
        /// Messages never confirmed by the broker.
        left: usize,
    },
    #[error("the client is closed")]
    /// The client was disconnected by its owner.
    Closed,
    #[error("the name `{0}` is already in use on the broker: every bridge and client needs its own name")]
    /// Another client with this name is connected to the broker.
    NameInUse(String),
    #[error("tls:// needs a client certificate: set client.tls (cert, key, ca)")]
    /// A `tls://` connection string without client certificates configured.
    TlsNotConfigured,
    #[error("TLS: {0}")]
    /// The TLS handshake or certificate check failed.
    Tls(String),
    #[error("busrt: {0}")]
    /// busrt reported another error.
    Busrt(String),
}

fn busrt_err(e: busrt::Error) -> ClientError {
    if e.kind() == busrt::ErrorKind::Access {
        ClientError::Denied(e.to_string())
    } else {
        ClientError::Busrt(e.to_string())
    }
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnectionState {
    /// Connected; publishes go straight to the broker.
    Connected,
    /// Lost; reconnecting (attempts so far).
    Reconnecting(u32),
    /// Closed by its owner; it will not reconnect.
    Closed,
}

pub use crate::config::OutboxOverflow;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// busrt client name; default `busbridge-<pid>-<n>`.
    pub name: Option<String>,
    /// Timeout of each operation (connect, publish, subscribe).
    pub timeout: Duration,
    /// Interval of the acknowledged keepalive round trip that detects a dead connection.
    pub keepalive: Duration,
    /// First delay before reconnecting; doubles on each failure.
    pub reconnect_initial: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Most `Processed` messages held while disconnected.
    pub outbox_capacity: usize,
    /// What a full outbox does: refuse the publish or drop the oldest (counted).
    pub outbox_overflow: OutboxOverflow,
    /// Received messages buffered for `recv`; beyond it they are dropped and counted.
    pub queue_size: usize,
    /// Largest payload accepted, in bytes.
    pub max_message_size: usize,
    /// Certificate, key and CA for `tls://` endpoints.
    pub tls: Option<crate::tls::TlsConfig>,
    /// How long busrt holds a frame written while more follow (busrt's `buf_ttl`; see
    /// `client.flush_delay`).
    pub flush_delay: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self::from_config(
            &ClientConfig::default(),
            crate::codec::DEFAULT_MAX_MESSAGE_SIZE,
        )
    }
}

impl ClientOptions {
    /// From the `[client]` section and the broker's message size.
    pub fn from_config(c: &ClientConfig, max_message_size: usize) -> Self {
        Self {
            name: c.name.clone(),
            timeout: c.timeout,
            keepalive: c.keepalive,
            reconnect_initial: c.reconnect_initial,
            reconnect_max: c.reconnect_max,
            outbox_capacity: c.outbox_capacity,
            outbox_overflow: c.outbox_overflow,
            queue_size: c.queue_size,
            max_message_size,
            tls: c.tls.clone(),
            flush_delay: c.flush_delay,
        }
    }

    /// Sets the client name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Message {
    topic: Arc<str>,
    frame: busrt::Frame,
}

impl Message {
    /// The topic, dotted.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The payload, exactly as published.
    pub fn payload(&self) -> &[u8] {
        self.frame.payload()
    }
    /// The busrt client name of the sender.
    pub fn sender(&self) -> &str {
        self.frame.sender()
    }
    /// The sender without busrt's secondary-client suffix.
    pub fn primary_sender(&self) -> &str {
        self.frame.primary_sender()
    }
}

/// Counters of one client.
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    acked: AtomicU64,
    outbox_queued: AtomicU64,
    outbox_dropped: AtomicU64,
    outbox_resent: AtomicU64,
    received: AtomicU64,
    dropped_inbox: AtomicU64,
    reconnects: AtomicU64,
    keepalive_failures: AtomicU64,
}

/// A copy of a client's counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClientStats {
    /// Messages handed to the client for publishing.
    pub published: u64,
    /// Acknowledged publishes confirmed by the broker.
    pub acked: u64,
    /// Messages put in the outbox while disconnected.
    pub outbox_queued: u64,
    /// Messages dropped from a full outbox (`drop_oldest`).
    pub outbox_dropped: u64,
    /// Outbox messages sent after reconnecting.
    pub outbox_resent: u64,
    /// Messages in the outbox now.
    pub outbox_len: usize,
    /// Messages received.
    pub received: u64,
    /// Messages dropped because the receiving queue was full.
    pub dropped_inbox: u64,
    /// Successful reconnections.
    pub reconnects: u64,
    /// Keepalive round trips that failed (each one reconnects).
    pub keepalive_failures: u64,
}

type Conn = Box<dyn BusrtClient>;

struct Outgoing {
    topic: BusrtTopic,
    payload: Bytes,
}

/// An outbox entry: a message and its place in the order the outbox took them.
struct Queued {
    id: u64,
    msg: Outgoing,
}

struct Shared {
    endpoint: Endpoint,
    name: String,
    opts: ClientOptions,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Bumped (under `conn`'s lock) whenever the connection is replaced or dropped: an
    /// acknowledgement on one connection says nothing of frames written to another.
    generation: AtomicU64,
    subscriptions: Mutex<BTreeSet<String>>,
    outbox: Mutex<VecDeque<Queued>>,
    /// The id the next outbox entry gets.
    outbox_next: AtomicU64,
    /// One outbox flush at a time: a flush leaves what it sends in the outbox until confirmed.
    flushing: tokio::sync::Mutex<()>,
    state: watch::Sender<ConnectionState>,
    lost: Notify,
    closing: AtomicBool,
    counters: Counters,
    inbox: mpsc::Sender<Message>,
}

/// A resilient busrt client.
pub struct AsyncClient {
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Message>,
    supervisor: JoinHandle<()>,
}

/// A cheap, cloneable handle that publishes through a client (for concurrent publishers).
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

fn default_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "busbridge-{}-{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    )
}

/// A raw busrt connection of either kind (busrt's RPC client needs the concrete type).
pub(crate) enum BusrtConn {
    Ipc(busrt::ipc::Client),
    Inproc(busrt::broker::Client),
}

async fn open(endpoint: &Endpoint, name: &str, opts: &ClientOptions) -> Result<Conn, ClientError> {
    Ok(match open_busrt(endpoint, name, opts).await? {
        BusrtConn::Ipc(c) => Box::new(c),
        BusrtConn::Inproc(c) => Box::new(c),
    })
}

/// busrt's client settings for a socket connection (Unix, TCP, or TLS relayed through a Unix
/// stream): its timeout and its event queue.
fn ipc_config(path: &str, name: &str, opts: &ClientOptions) -> busrt::ipc::Config {
    busrt::ipc::Config::new(path, name)
        .timeout(opts.timeout)
        .queue_size(opts.queue_size.max(1024))
        .buf_ttl(opts.flush_delay)
}

/// Opens a raw busrt connection for an endpoint.
#[tracing::instrument(name = "connect", level = "info", skip_all, fields(client = %name, endpoint = %endpoint), err(Display, level = "debug"))]
pub(crate) async fn open_busrt(
    endpoint: &Endpoint,
    name: &str,
    opts: &ClientOptions,
) -> Result<BusrtConn, ClientError> {
    let failed = |e: busrt::Error| {
        if e.kind() == busrt::ErrorKind::Busy {
            ClientError::NameInUse(name.to_owned())
        } else {
            ClientError::Connect {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            }
        }
    };
    let conn = match endpoint {
        Endpoint::Inproc(broker) => match inproc_client(broker, name).await {
            Ok(c) => BusrtConn::Inproc(c),
            Err(BrokerError::Busrt(e)) => return Err(failed(e)),
            Err(e) => {
                return Err(ClientError::Connect {
                    endpoint: endpoint.to_string(),
                    reason: match e {
                        BrokerError::NotRunning => {
                            format!("no embedded broker `{broker}` runs in this process")
                        }
                        e => e.to_string(),
                    },
                })
            }
        },
        Endpoint::Ipc(path) => {
            let path = path.to_string_lossy();
            let config = ipc_config(&path, name, opts);
            BusrtConn::Ipc(busrt::ipc::Client::connect(&config).await.map_err(failed)?)
        }
        Endpoint::Tcp(addr) => {
            let config = ipc_config(addr, name, opts);
            BusrtConn::Ipc(busrt::ipc::Client::connect(&config).await.map_err(failed)?)
        }
        Endpoint::Tls(addr) => {
            let tls = opts.tls.as_ref().ok_or(ClientError::TlsNotConfigured)?;
            let tls_err = |e: &dyn std::fmt::Display| ClientError::Tls(format!("{endpoint}: {e}"));
            let config = crate::tls::client_config(tls).map_err(|e| tls_err(&e))?;
            let server = crate::tls::server_name(addr).ok_or_else(|| tls_err(&"bad host name"))?;
            let tcp = tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| tls_err(&e))?;
            let _ = tcp.set_nodelay(true);
            let mut stream = tokio_rustls::TlsConnector::from(config)
                .connect(server, tcp)
                .await
                .map_err(|e| tls_err(&e))?;
            // busrt's client speaks to a Unix stream: relay it through TLS.
            let (mut near, far) = tokio::net::UnixStream::pair().map_err(|e| tls_err(&e))?;
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut near).await;
            });
            // busrt only uses a given stream for paths that look like Unix sockets.
            let config = ipc_config(&format!("{addr}.sock"), name, opts);
            BusrtConn::Ipc(
                busrt::ipc::Client::connect_stream(far, &config)
                    .await
                    .map_err(failed)?,
            )
        }
    };
    Ok(conn)
}

/// Outbox messages sent before their confirmations are awaited (the bridge's window).
const FLUSH_WINDOW: usize = 256;

async fn confirm(
    op: &'static str,
    confirm: busrt::OpConfirm,
    limit: Duration,
) -> Result<(), ClientError> {
    if let Some(rx) = confirm {
        match within(limit, rx).await {
            None => return Err(ClientError::Timeout(op)),
            Some(Err(_)) => return Err(ClientError::Busrt(format!("{op}: connection lost"))),
            Some(Ok(Err(e))) => return Err(busrt_err(e)),
            Some(Ok(Ok(()))) => {}
        }
    }
    Ok(())
}

impl AsyncClient {
    /// Connects with default options (one attempt; later losses reconnect by themselves).
    pub async fn connect(address: &str) -> Result<Self, ClientError> {
        Self::connect_with(address, ClientOptions::default()).await
    }

    /// Connects with options.
    pub async fn connect_with(address: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let endpoint = Endpoint::parse(address)?.resolve()?;
        let name = opts.name.clone().unwrap_or_else(default_name);
        let mut conn = match timeout(opts.timeout, open(&endpoint, &name, &opts)).await {
            Ok(r) => r?,
            Err(_) => return Err(ClientError::Timeout("connect")),
        };
        let events = conn.take_event_channel().ok_or(ClientError::Closed)?;
        let (shared, inbox) = Shared::new(endpoint, name, opts, Some(conn));
        let supervisor = tokio::spawn(supervise(shared.clone(), events));
        Ok(Self {
            shared,
            inbox,
            supervisor,
        })
    }

    /// A client that connects in the background, so a program can start before its broker:
    /// it returns at once (only a malformed address is an error) and keeps trying with
    /// back-off (`reconnect_initial` doubling to `reconnect_max`) until the broker is there.
    /// Meanwhile subscriptions are remembered and made on connecting, and `Processed`
    /// publishes wait in the outbox; watch [`state`](Self::state) to know when it is in.
    pub fn connect_lazily(address: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let endpoint = Endpoint::parse(address)?.resolve()?;
        let name = opts.name.clone().unwrap_or_else(default_name);
        let (shared, inbox) = Shared::new(endpoint, name, opts, None);
        let _ = shared.state.send_replace(ConnectionState::Reconnecting(0));
        let first = shared.clone();
        let supervisor = tokio::spawn(async move {
            let Some(events) = first.reconnect().await else {
                return;
            };
            let _ = first.state.send_replace(ConnectionState::Connected);
            supervise(first, events).await;
        });
        Ok(Self {
            shared,
            inbox,
            supervisor,
        })
    }

    /// The busrt client name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Messages `recv` can buffer before new ones are dropped (and counted).
    pub fn queue_size(&self) -> usize {
        self.shared.opts.queue_size
    }

    /// The largest payload this client sends.
    pub fn max_message_size(&self) -> usize {
        self.shared.opts.max_message_size
    }

    /// The endpoint, resolved.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Watch the connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        *self.shared.state.borrow() == ConnectionState::Connected
    }

    /// A handle for publishing from other tasks.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            shared: self.shared.clone(),
        }
    }

    /// Subscribes to a dotted pattern (`events.process.*`); kept across reconnects. With
    /// `Processed` the broker confirms, so an access rule that forbids it is an error here.
    pub async fn subscribe(&self, pattern: &str, qos: QoS) -> Result<(), ClientError> {
        self.publisher().subscribe(pattern, qos).await
    }

    /// Removes a subscription.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), ClientError> {
        let busrt_pattern = Pattern::parse(pattern)?.to_busrt();
        self.shared.subscriptions.lock().remove(&busrt_pattern);
        self.shared
            .with_conn("unsubscribe", |conn| {
                Box::pin(async move {
                    conn.unsubscribe(&busrt_pattern, busrt::QoS::Processed)
                        .await
                })
            })
            .await
    }

    /// Publishes `payload` to a dotted topic (see [`Publisher::publish`]).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<(), ClientError> {
        self.publisher().publish(topic, payload, qos).await
    }

    /// The next message on a subscribed topic; waits across reconnects.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        self.inbox.recv().await.ok_or(ClientError::Closed)
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.inbox.try_recv().ok()
    }

    /// Messages received and waiting to be read.
    pub fn queued(&self) -> usize {
        self.inbox.len()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.shared.stats()
    }

    /// Graceful disconnect that keeps its promise across an outage: until `deadline` it keeps
    /// reconnecting (with the usual back-off) and hands over what the outbox still holds;
    /// then it closes. `Err(Unflushed { left })` says exactly how many messages the broker
    /// never confirmed.
    pub async fn disconnect_within(&mut self, deadline: Duration) -> Result<(), ClientError> {
        let until = tokio::time::Instant::now() + deadline;
        let mut state = self.shared.state.subscribe();
        loop {
            if self.shared.outbox.lock().is_empty() {
                break;
            }
            let connected = matches!(*state.borrow_and_update(), ConnectionState::Connected);
            if connected {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if let Ok(Ok(())) = timeout(left, self.shared.flush_outbox()).await {
                    continue;
                }
            }
            // Not connected, or the flush broke off: wait for the next state change.
            if tokio::time::timeout_at(until, state.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        let closed = self.disconnect().await;
        match self.shared.outbox.lock().len() {
            0 => closed,
            left => Err(ClientError::Unflushed { left }),
        }
    }

    /// Graceful disconnect: flushes the outbox (within the client timeout), then closes.
    /// Wrap it in a timeout of your own if you need a hard bound.
    pub async fn disconnect(&mut self) -> Result<(), ClientError> {
        let flushed = timeout(self.shared.opts.timeout, self.shared.flush_outbox()).await;
        self.shared.closing.store(true, Relaxed);
        self.supervisor.abort();
        if let Some(conn) = self.shared.conn.lock().await.take() {
            drop(conn);
        }
        let _ = self.shared.state.send_replace(ConnectionState::Closed);
        self.inbox.close();
        let left = self.shared.outbox.lock().len();
        match flushed {
            Ok(Ok(())) if left == 0 => Ok(()),
            Ok(Err(e)) => Err(e),
            _ => Err(ClientError::Timeout("disconnect (outbox not flushed)")),
        }
    }
}

impl Drop for AsyncClient {
    fn drop(&mut self) {
        self.shared.closing.store(true, Relaxed);
        self.supervisor.abort();
        // The connection closes now, not when the last publisher handle goes: a broker that
        // shuts down later would otherwise close it under busrt's reader, which logs an error.
        if let Ok(mut conn) = self.shared.conn.try_lock() {
            conn.take();
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Held by a call in flight: close as soon as it lets go, not when the last
            // handle to the shared state happens to go.
            let shared = self.shared.clone();
            runtime.spawn(async move {
                shared.conn.lock().await.take();
            });
        }
    }
}

impl Publisher {
    /// Subscribes the client this handle belongs to (see [`AsyncClient::subscribe`]).
    pub async fn subscribe(&self, pattern: &str, qos: QoS) -> Result<(), ClientError> {
        let busrt_pattern = Pattern::parse(pattern)?.to_busrt();
        self.shared
            .subscriptions
            .lock()
            .insert(busrt_pattern.clone());
        let result = self.shared.with_conn("subscribe", |conn| {
            let p = busrt_pattern.clone();
            Box::pin(async move { conn.subscribe(&p, qos.busrt()).await })
        });
        match result.await {
            Err(ClientError::Denied(e)) => {
                self.shared.subscriptions.lock().remove(&busrt_pattern);
                Err(ClientError::Denied(e))
            }
            // Not connected now: the subscription is made on reconnect.
            Err(ClientError::Closed) if !self.shared.closing.load(Relaxed) => Ok(()),
            other => other,
        }
    }

    /// Publishes `payload` to a dotted topic, bytes exactly as given.
    ///
    /// `Processed`: returns once the broker acknowledged it, or once it is queued in the
    /// outbox while the connection is down. `Realtime`: best effort; while disconnected the
    /// message is dropped and counted in `outbox_dropped`.
    #[tracing::instrument(name = "publish", level = "trace", skip(self, payload), fields(client = %self.shared.name))]
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<(), ClientError> {
        let topic = Topic::parse(topic)?.to_busrt();
        self.publish_pipelined(topic, payload, qos, false)
            .await?
            .await
    }
}

/// The broker's acknowledgement of a pipelined publish; on failure the message has already
/// gone back to the outbox.
pub type Ack = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClientError>> + Send>>;

impl Publisher {
    /// Sends without waiting for the acknowledgement, so many can be in flight (a window).
    /// Await the returned [`Ack`] later; if it fails the message was put back in the outbox
    /// and will be resent after reconnecting (at least once). The topic is busrt's
    /// (`events/process/new`), already validated. `more_follows`: the caller sends another
    /// frame right after this one, so this one need not be flushed on its own (the last
    /// frame of a burst must pass `false`; busrt flushes a buffered frame after its buffer
    /// TTL in any case).
    pub async fn publish_pipelined(
        &self,
        busrt_topic: impl Into<BusrtTopic>,
        payload: impl Into<Bytes>,
        qos: QoS,
        more_follows: bool,
    ) -> Result<Ack, ClientError> {
        self.pipelined(busrt_topic.into(), payload.into(), qos, more_follows, false)
            .await
    }

    /// Like [`publish_pipelined`](Self::publish_pipelined), but sent at once when connected
    /// even if the outbox still holds older messages (after a reconnect): for frames whose
    /// order the receiver restores itself, such as resends, which must not wait behind a
    /// long outbox.
    pub async fn publish_out_of_order(
        &self,
        busrt_topic: impl Into<BusrtTopic>,
        payload: impl Into<Bytes>,
        qos: QoS,
        more_follows: bool,
    ) -> Result<Ack, ClientError> {
        self.pipelined(busrt_topic.into(), payload.into(), qos, more_follows, true)
            .await
    }

    /// Sends one frame best effort (`QoS::Realtime`), like
    /// [`publish_pipelined`](Self::publish_pipelined) with `QoS::Realtime` but with no
    /// acknowledgement to build and await: while disconnected (or while older messages wait
    /// in the outbox) it is dropped and counted in `outbox_dropped`.
    pub async fn publish_unacked(
        &self,
        busrt_topic: &BusrtTopic,
        payload: &Bytes,
        more_follows: bool,
    ) -> Result<(), ClientError> {
        let shared = &self.shared;
        shared.check_size(payload)?;
        shared.counters.published.fetch_add(1, Relaxed);
        let qos = QoS::Realtime.busrt_flushing(!more_follows);
        if shared
            .write(Write::Frame(busrt_topic, payload, qos), |_| {
                !shared.outbox.lock().is_empty()
            })
            .await
            .is_err()
        {
            shared.counters.outbox_dropped.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    async fn pipelined(
        &self,
        busrt_topic: BusrtTopic,
        payload: Bytes,
        qos: QoS,
        more_follows: bool,
        out_of_order: bool,
    ) -> Result<Ack, ClientError> {
        let shared = &self.shared;
        shared.check_size(&payload)?;
        shared.counters.published.fetch_add(1, Relaxed);
        let written = shared
            .write(
                Write::Frame(&busrt_topic, &payload, qos.busrt_flushing(!more_follows)),
                |_| !out_of_order && !shared.outbox.lock().is_empty(),
            )
            .await;
        let Ok((confirmation, _)) = written else {
            let r = match qos {
                QoS::Processed => shared.enqueue(Outgoing {
                    topic: busrt_topic,
                    payload,
                }),
                QoS::Realtime => {
                    shared.counters.outbox_dropped.fetch_add(1, Relaxed);
                    Ok(())
                }
            };
            return r.map(|()| Box::pin(async { Ok(()) }) as Ack);
        };
        let shared = shared.clone();
        Ok(Box::pin(async move {
            match confirm("publish", confirmation, shared.opts.timeout).await {
                Ok(()) => {
                    if qos == QoS::Processed {
                        shared.counters.acked.fetch_add(1, Relaxed);
                    }
                    Ok(())
                }
                Err(ClientError::Denied(e)) => Err(ClientError::Denied(e)),
                Err(_) => {
                    shared.lost.notify_one();
                    shared.enqueue(Outgoing {
                        topic: busrt_topic,
                        payload,
                    })
                }
            }
        }))
    }
}

/// Acknowledged publishes with one acknowledgement per group of consecutive frames to one
/// topic, instead of one per frame.
///
/// busrt's broker handles a connection's frames one after another and treats an
/// unacknowledged frame exactly as an acknowledged one but for the reply, so the
/// acknowledgement of a group's last frame confirms every frame written before it on the same
/// connection. The frames before it go out as `QoS::No`; the last, or the one before a change
/// of topic or the end of a burst, asks for the acknowledgement. If that fails, or the
/// connection changes within a group, the whole group goes to the outbox and is sent again
/// (at least once, in order). A denial (access rules are per topic) refuses the whole group.
/// Per frame this saves the broker's reply and the client's confirmation bookkeeping: for a
/// stream of small messages, most of what acknowledgement costs.
///
/// While the connection is down, publishes go to the outbox and return no acknowledgement. A
/// caller that keeps many groups in flight should await them once
/// [`AsyncClient::is_connected`] turns false, before publishing more: their messages then
/// come back to the outbox before new ones fill it (`busbridge pub` does).
///
/// ```no_run
/// # async fn run(client: &busbridge::client::AsyncClient) -> Result<(), busbridge::client::ClientError> {
/// use busbridge::client::{Grouped, GroupedPublisher};
/// let topic = busbridge::topic::BusrtTopic::from("events/process/new");
/// let mut out = GroupedPublisher::new(client.publisher(), 32);
/// let mut acks = Vec::new();
/// for i in 0..1000u32 {
///     let next = (i + 1 < 1000).then_some(&topic);
///     if let Grouped::Closed(group) = out.publish(topic.clone(), i.to_be_bytes().to_vec(), next).await? {
///         acks.push(group);
///     }
/// }
/// for group in acks {
///     group.ack.await?; // confirms group.messages messages
/// }
/// # Ok(()) }
/// ```
pub struct GroupedPublisher {
    publisher: Publisher,
    group: usize,
    /// Frames of the open group already written, unacknowledged, their topic and their
    /// connection.
    pending: Vec<Bytes>,
    topic: BusrtTopic,
    generation: u64,
}

/// What became of one message given to [`GroupedPublisher::publish`].
pub enum Grouped {
    /// Written; its group is still open (a later message's acknowledgement covers it).
    Open,
    /// Written, and it closed its group: the group's acknowledgement.
    Closed(GroupAck),
    /// Not written (the connection is down or changed, or older messages wait): it and the
    /// open group's messages, this many in all, wait in the outbox.
    Queued(usize),
}

/// The acknowledgement of one group of a [`GroupedPublisher`].
pub struct GroupAck {
    /// How many messages it confirms (or refuses).
    pub messages: usize,
    /// Resolves once the broker acknowledged the group's last frame; on failure the group has
    /// gone back to the outbox (or could not, and the error says so).
    pub ack: Ack,
}

impl GroupedPublisher {
    /// Groups of at most `group` messages (at least 1).
    pub fn new(publisher: Publisher, group: usize) -> Self {
        GroupedPublisher {
            publisher,
            group: group.max(1),
            pending: Vec::new(),
            topic: BusrtTopic::Borrowed(""),
            generation: 0,
        }
    }

    /// Messages written and not yet covered by an acknowledgement request.
    pub fn open(&self) -> usize {
        self.pending.len()
    }

    /// Publishes one message acknowledged as part of a group. `next` is the topic of the
    /// message the caller publishes right after this one, or `None` at the end of a burst
    /// (this frame is then flushed and closes the group). On `OutboxFull` the message was not
    /// accepted and the open group is kept: publish it again later.
    pub async fn publish(
        &mut self,
        busrt_topic: BusrtTopic,
        payload: impl Into<Bytes>,
        next: Option<&BusrtTopic>,
    ) -> Result<Grouped, ClientError> {
        let payload = payload.into();
        let shared = &self.publisher.shared;
        shared.check_size(&payload)?;
        let close = next != Some(&busrt_topic) || self.pending.len() + 1 >= self.group;
        let qos = if close {
            QoS::Processed.busrt_flushing(next.is_none())
        } else {
            busrt::QoS::No
        };
        let written = shared
            .write(Write::Frame(&busrt_topic, &payload, qos), |generation| {
                !shared.outbox.lock().is_empty()
                    || (!self.pending.is_empty() && generation != self.generation)
            })
            .await;
        let Ok((confirmation, generation)) = written else {
            // Not written: it and the open group (written, never to be confirmed) wait in
            // the outbox, in order. The supervisor is woken to hand them over: after a change
            // of connection nothing else may be about to.
            shared.lost.notify_one();
            let group = self.pending.iter().cloned().chain([payload]);
            let group: Vec<Bytes> = group.collect();
            let queued = group.len();
            shared.enqueue_all(busrt_topic, group)?;
            shared.counters.published.fetch_add(1, Relaxed);
            self.pending.clear();
            return Ok(Grouped::Queued(queued));
        };
        shared.counters.published.fetch_add(1, Relaxed);
        self.generation = generation;
        self.topic = busrt_topic;
        self.pending.push(payload);
        if !close {
            return Ok(Grouped::Open);
        }
        Ok(Grouped::Closed(self.group_ack(confirmation, false)))
    }

    /// Closes the open group without a message of its own (the one that was to close it was
    /// refused, say, and no other follows): asks the broker to acknowledge a no-op on the
    /// same connection, which it does only after handling every frame written before it.
    /// `Ok(None)` if no group is open. If the connection is down or changed, the group goes
    /// to the outbox (`Queued`); on `OutboxFull` it stays open.
    pub async fn close(&mut self) -> Result<Option<Grouped>, ClientError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let shared = &self.publisher.shared;
        let generation = self.generation;
        let sent = shared.write(Write::Noop, |g| g != generation).await;
        let Ok((confirmation, _)) = sent else {
            shared.lost.notify_one();
            let queued = self.pending.len();
            shared.enqueue_all(self.topic.clone(), self.pending.clone())?;
            self.pending.clear();
            return Ok(Some(Grouped::Queued(queued)));
        };
        Ok(Some(Grouped::Closed(self.group_ack(confirmation, true))))
    }

    /// The acknowledgement of the open group, which it takes. `noop`: the confirmation is a
    /// no-op's, whose denial still says the frames before it were handled.
    fn group_ack(&mut self, confirmation: busrt::OpConfirm, noop: bool) -> GroupAck {
        let group = std::mem::take(&mut self.pending);
        let topic = self.topic.clone();
        let shared = self.publisher.shared.clone();
        GroupAck {
            messages: group.len(),
            ack: Box::pin(async move {
                match confirm("publish", confirmation, shared.opts.timeout).await {
                    Ok(()) => {
                        shared.counters.acked.fetch_add(group.len() as u64, Relaxed);
                        Ok(())
                    }
                    Err(ClientError::Denied(_)) if noop => {
                        shared.counters.acked.fetch_add(group.len() as u64, Relaxed);
                        Ok(())
                    }
                    Err(ClientError::Denied(e)) => Err(ClientError::Denied(e)),
                    Err(_) => {
                        shared.lost.notify_one();
                        shared.enqueue_all(topic, group)
                    }
                }
            }),
        }
    }
}

/// What [`Shared::write`] puts on the wire.
enum Write<'a> {
    /// A publish: topic, payload, busrt QoS.
    Frame(&'a str, &'a Bytes, busrt::QoS),
    /// A no-op asking for an acknowledgement (closes a group, see [`GroupedPublisher::close`]).
    Noop,
}

impl Shared {
    /// `TooLarge` for a payload over the message size limit, before anything is written.
    fn check_size(&self, payload: &Bytes) -> Result<(), ClientError> {
        let limit = self.opts.max_message_size;
        if payload.len() > limit {
            return Err(ClientError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(())
    }

    fn stats(&self) -> ClientStats {
        let c = &self.counters;
        ClientStats {
            published: c.published.load(Relaxed),
            acked: c.acked.load(Relaxed),
            outbox_queued: c.outbox_queued.load(Relaxed),
            outbox_dropped: c.outbox_dropped.load(Relaxed),
            outbox_resent: c.outbox_resent.load(Relaxed),
            outbox_len: self.outbox.lock().len(),
            received: c.received.load(Relaxed),
            dropped_inbox: c.dropped_inbox.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            keepalive_failures: c.keepalive_failures.load(Relaxed),
        }
    }

    /// Writes one frame on the live connection, under its lock and within the timeout.
    /// `hold`, asked under the lock with the connection's generation, keeps the frame off
    /// the wire (older messages must go first). Returns the frame's confirmation and the
    /// generation it was written in; `Err(())` if it was not written: held, no connection, or
    /// the write failed (the supervisor is then told the connection may be lost).
    async fn write(
        &self,
        write: Write<'_>,
        hold: impl FnOnce(u64) -> bool,
    ) -> Result<(busrt::OpConfirm, u64), ()> {
        // Uncontended (the sender's writes, one after another) it is taken without building
        // the lock's future; waiters keep their turn (a released permit goes to them first).
        let mut guard = match self.conn.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.conn.lock().await,
        };
        let generation = self.generation.load(Relaxed);
        let conn = match guard.as_mut() {
            Some(conn) if !hold(generation) => conn,
            _ => return Err(()),
        };
        let op = match write {
            Write::Frame(topic, payload, qos) => conn.publish(topic, payload.as_ref().into(), qos),
            // An unsubscription from a topic never subscribed: the broker acknowledges it
            // after every frame written before it, and changes nothing.
            Write::Noop => conn.unsubscribe(KEEPALIVE_TOPIC, busrt::QoS::RealtimeProcessed),
        };
        match within(self.opts.timeout, op).await {
            Some(Ok(confirmation)) => Ok((confirmation, generation)),
            _ => {
                self.lost.notify_one();
                Err(())
            }
        }
    }

    /// Runs one busrt operation on the live connection with a timeout, then awaits its
    /// confirmation outside the lock. `Closed` if there is no connection now.
    async fn with_conn<F>(&self, op: &'static str, f: F) -> Result<(), ClientError>
    where
        F: for<'a> FnOnce(
            &'a mut Conn,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<busrt::OpConfirm, busrt::Error>>
                    + Send
                    + 'a,
            >,
        >,
    {
        let confirmation = {
            let mut guard = self.conn.lock().await;
            let conn = guard.as_mut().ok_or(ClientError::Closed)?;
            match timeout(self.opts.timeout, f(conn)).await {
                Err(_) => {
                    self.lost.notify_one();
                    return Err(ClientError::Timeout(op));
                }
                Ok(Err(e)) => {
                    self.lost.notify_one();
                    return Err(busrt_err(e));
                }
                Ok(Ok(c)) => c,
            }
        };
        confirm(op, confirmation, self.opts.timeout).await
    }

    fn enqueue(&self, msg: Outgoing) -> Result<(), ClientError> {
        self.enqueue_all(msg.topic, [msg.payload])
    }

    /// Queues messages to one topic, all or (with `OutboxOverflow::Error`) none of them.
    fn enqueue_all(
        &self,
        topic: BusrtTopic,
        payloads: impl IntoIterator<Item = Bytes, IntoIter: ExactSizeIterator>,
    ) -> Result<(), ClientError> {
        let payloads = payloads.into_iter();
        let capacity = self.opts.outbox_capacity;
        let mut outbox = self.outbox.lock();
        if self.opts.outbox_overflow == OutboxOverflow::Error
            && outbox.len() + payloads.len() > capacity
        {
            return Err(ClientError::OutboxFull(outbox.len()));
        }
        for payload in payloads {
            if outbox.len() >= capacity && outbox.pop_front().is_some() {
                self.counters.outbox_dropped.fetch_add(1, Relaxed);
            }
            outbox.push_back(Queued {
                id: self.outbox_next.fetch_add(1, Relaxed),
                msg: Outgoing {
                    topic: topic.clone(),
                    payload,
                },
            });
            self.counters.outbox_queued.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Sends what waits in the outbox, in order, [`FLUSH_WINDOW`] confirmations in flight
    /// (one at a time, a 100,000-message outbox took longer to hand over than most outages
    /// last); stops at the first failure. Messages leave the outbox only once confirmed (or
    /// denied), so a flush that fails, times out or is cancelled loses nothing: what it sent
    /// unconfirmed is sent again later (at least once).
    async fn flush_outbox(&self) -> Result<(), ClientError> {
        let _one = self.flushing.lock().await;
        loop {
            let batch: Vec<(u64, BusrtTopic, Bytes)> = self
                .outbox
                .lock()
                .iter()
                .take(FLUSH_WINDOW)
                .map(|q| (q.id, q.msg.topic.clone(), q.msg.payload.clone()))
                .collect();
            if batch.is_empty() {
                return Ok(());
            }
            let mut in_flight = Vec::with_capacity(batch.len());
            let sent = {
                let mut guard = self.conn.lock().await;
                let Some(conn) = guard.as_mut() else {
                    return Err(ClientError::Closed);
                };
                let mut sent = Ok(());
                for (id, topic, payload) in batch {
                    let publish = conn.publish(
                        &topic,
                        payload.as_ref().into(),
                        busrt::QoS::RealtimeProcessed,
                    );
                    match timeout(self.opts.timeout, publish).await {
                        Ok(Ok(c)) => in_flight.push((c, id, topic)),
                        _ => {
                            sent = Err(ClientError::Timeout("outbox flush"));
                            break;
                        }
                    }
                }
                sent
            };
            // Confirmed in order; after one fails, the rest are not trusted and stay.
            let mut done = None;
            let mut failed = None;
            for (c, id, topic) in in_flight {
                match confirm("outbox flush", c, self.opts.timeout).await {
                    Ok(()) => {
                        self.counters.outbox_resent.fetch_add(1, Relaxed);
                        self.counters.acked.fetch_add(1, Relaxed);
                    }
                    Err(ClientError::Denied(e)) => {
                        tracing::warn!(topic = %topic, "outbox message denied by the broker: {e}");
                        self.counters.outbox_dropped.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                done = Some(id);
            }
            if let Some(done) = done {
                // Entries only leave from the front (here, or dropped as the oldest), in id
                // order, so what is confirmed is a prefix of what is left.
                let mut outbox = self.outbox.lock();
                while outbox.front().is_some_and(|q| q.id <= done) {
                    outbox.pop_front();
                }
            }
            if let Some(e) = failed.or(sent.err()) {
                self.lost.notify_one();
                return Err(e);
            }
        }
    }

    fn new(
        endpoint: Endpoint,
        name: String,
        opts: ClientOptions,
        conn: Option<Conn>,
    ) -> (Arc<Self>, mpsc::Receiver<Message>) {
        let (inbox_tx, inbox) = mpsc::channel(opts.queue_size.max(1));
        let (state, _) = watch::channel(ConnectionState::Connected);
        let shared = Arc::new(Shared {
            endpoint,
            name,
            opts,
            conn: tokio::sync::Mutex::new(conn),
            generation: AtomicU64::new(0),
            subscriptions: Mutex::new(BTreeSet::new()),
            outbox: Mutex::new(VecDeque::new()),
            outbox_next: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            state,
            lost: Notify::new(),
            closing: AtomicBool::new(false),
            counters: Counters::default(),
            inbox: inbox_tx,
        });
        (shared, inbox)
    }

    #[tracing::instrument(name = "reconnect", level = "info", skip_all, fields(client = %self.name, endpoint = %self.endpoint))]
    async fn reconnect(self: &Arc<Self>) -> Option<busrt::EventChannel> {
        let mut backoff = Backoff::new(self.opts.reconnect_initial, self.opts.reconnect_max);
        loop {
            if self.closing.load(Relaxed) {
                return None;
            }
            let _ = self
                .state
                .send_replace(ConnectionState::Reconnecting(backoff.attempt()));
            tokio::time::sleep(backoff.next_delay()).await;
            let mut conn = match timeout(
                self.opts.timeout,
                open(&self.endpoint, &self.name, &self.opts),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(endpoint = %self.endpoint, attempt = backoff.attempt(), "reconnect failed: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(endpoint = %self.endpoint, attempt = backoff.attempt(), "reconnect timed out");
                    continue;
                }
            };
            let Some(events) = conn.take_event_channel() else {
                continue;
            };
            let patterns: Vec<String> = self.subscriptions.lock().iter().cloned().collect();
            if !patterns.is_empty() {
                let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
                let ok = match timeout(
                    self.opts.timeout,
                    conn.subscribe_bulk(&refs, busrt::QoS::Processed),
                )
                .await
                {
                    Ok(Ok(c)) => confirm("resubscribe", c, self.opts.timeout).await.is_ok(),
                    _ => false,
                };
                if !ok {
                    tracing::warn!("resubscribe failed; retrying the connection");
                    continue;
                }
            }
            let mut guard = self.conn.lock().await;
            *guard = Some(conn);
            self.generation.fetch_add(1, Relaxed);
            drop(guard);
            self.counters.reconnects.fetch_add(1, Relaxed);
            tracing::info!(endpoint = %self.endpoint, "reconnected");
            return Some(events);
        }
    }

    /// Moves frames from busrt's event channel to the inbox without ever waiting, so the
    /// broker never sees this client as slow; what does not fit is counted.
    async fn drain(self: Arc<Self>, events: busrt::EventChannel) {
        // A stream is mostly one topic: its dotted form is worked out once and shared.
        let mut last: Option<(String, Arc<str>)> = None;
        while let Ok(frame) = events.recv().await {
            let Some(busrt_topic) = frame.topic() else {
                continue; // direct messages belong to RPC, which has its own connection
            };
            let topic = match &last {
                Some((b, dotted)) if b == busrt_topic => dotted.clone(),
                _ => {
                    let dotted: Arc<str> = Topic::from_busrt(busrt_topic)
                        .map(|t| t.as_str().into())
                        .unwrap_or_else(|_| busrt_topic.replace('/', ".").into());
                    last = Some((busrt_topic.to_owned(), dotted.clone()));
                    dotted
                }
            };
            self.counters.received.fetch_add(1, Relaxed);
            if self.inbox.try_send(Message { topic, frame }).is_err() {
                self.counters.dropped_inbox.fetch_add(1, Relaxed);
            }
        }
    }
}

/// [`timeout`] for a future that is usually ready at once (a write into busrt's buffer): the
/// timer, with its clock read and runtime handle, is only set up if it is not. `None` if
/// `limit` passed first.
async fn within<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    use std::task::Poll;
    let mut fut = std::pin::pin!(fut);
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(v) => Some(v),
        Poll::Pending => timeout(limit, fut).await.ok(),
    }
}

/// Keeps the connection alive and brings it back when it is lost. Each connection's outbox
/// is flushed first.
async fn supervise(shared: Arc<Shared>, mut events: busrt::EventChannel) {
    let mut when = "after connecting";
    loop {
        // Draining before flushing: until the drain runs, busrt's reader has nowhere to put
        // what arrives, stops reading once its channel is full (and with it the flush's own
        // acknowledgements), and the broker drops the client as slow once its queue for it
        // fills too.
        let mut drain = tokio::spawn(shared.clone().drain(events));
        if let Err(e) = shared.flush_outbox().await {
            tracing::warn!("outbox flush {when}: {e}");
        }
        let mut tick = tokio::time::interval(shared.opts.keepalive);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut drain => break,
                _ = shared.lost.notified() => {
                    let alive = match shared.conn.lock().await.as_ref() {
                        Some(c) => c.is_connected(),
                        None => false,
                    };
                    if !alive { break; }
                    // Still connected: a confirmation was lost, the message went back to the
                    // outbox; send it now rather than at the next reconnect.
                    if let Err(e) = shared.flush_outbox().await {
                        tracing::warn!("outbox flush: {e}");
                    }
                }
                _ = tick.tick() => {
                    // busrt's ping is one-way: a write into a dead network still succeeds.
                    // An acknowledged no-op (unsubscribing from a topic nobody uses) is a
                    // round trip, so a silent partition is noticed too.
                    let ping = async {
                        let sent = match shared.conn.lock().await.as_mut() {
                            Some(c) => c.unsubscribe(KEEPALIVE_TOPIC, busrt::QoS::Processed).await,
                            None => return false,
                        };
                        match sent {
                            Ok(c) => matches!(
                                confirm("keepalive", c, shared.opts.timeout).await,
                                Ok(()) | Err(ClientError::Denied(_))
                            ),
                            Err(_) => false,
                        }
                    };
                    if !matches!(timeout(shared.opts.timeout, ping).await, Ok(true)) {
                        shared.counters.keepalive_failures.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
        }
        drain.abort();
        if shared.closing.load(Relaxed) {
            return;
        }
        tracing::warn!(endpoint = %shared.endpoint, "connection lost");
        let mut guard = shared.conn.lock().await;
        guard.take();
        shared.generation.fetch_add(1, Relaxed);
        drop(guard);
        match shared.reconnect().await {
            Some(e) => events = e,
            None => return,
        }
        let _ = shared.state.send_replace(ConnectionState::Connected);
        when = "after reconnect";
    }
}

/// Connects, retrying with back-off (100 ms doubling to 30 s, with jitter) up to
/// `max_retries` times, logging each failure.
pub async fn connect_with_retry(
    address: &str,
    max_retries: u32,
) -> Result<AsyncClient, ClientError> {
    connect_with_retry_opts(address, max_retries, ClientOptions::default()).await
}

/// [`connect_with_retry`] with options (the back-off comes from them).
pub async fn connect_with_retry_opts(
    address: &str,
    max_retries: u32,
    opts: ClientOptions,
) -> Result<AsyncClient, ClientError> {
    let mut backoff = Backoff::new(opts.reconnect_initial, opts.reconnect_max);
    loop {
        match AsyncClient::connect_with(address, opts.clone()).await {
            Ok(c) => return Ok(c),
            Err(
                e @ (ClientError::Endpoint(_)
                | ClientError::TlsNotConfigured
                | ClientError::NameInUse(_)),
            ) => return Err(e),
            Err(e) if backoff.attempt() < max_retries => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    attempt = backoff.attempt(),
                    ?delay,
                    "connection failed: {e}"
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
