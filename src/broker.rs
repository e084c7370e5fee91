//! The broker: busrt's own `Broker`, embedded in this process or run standalone
//! (`busbridge broker`), with what busrt leaves out: owner-only sockets, peer-credential
//! checks, a connection limit that holds, loopback-only plaintext TCP, access rules from the
//! configuration, and a graceful shutdown.
//!
//! ```no_run
//! # async fn run() -> Result<(), busbridge::broker::BrokerError> {
//! use busbridge::Broker;
//! use std::time::Duration;
//!
//! let mut broker = Broker::new();
//! broker.spawn_ipc_server("daemoneye.sock", 100)?;   // relative: in the private runtime dir
//! broker.set_timeout(Duration::from_secs(30));
//! broker.spawn().await?;
//! println!("listening on {}", broker.socket_paths()[0].display());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every external connection is accepted here, checked and counted: that is what makes the
//! connection limit and the peer checks enforceable. A checked Unix connection is then handed
//! to busrt itself (`spawn_server_connection`), busbridge keeping only a duplicate descriptor
//! that wakes for the hang-up (to free its slot) or to force it closed on shutdown; no byte
//! passes through busbridge. TCP and TLS connections are relayed to busrt through a socket
//! pair (busrt takes only Unix streams), which is also what lets a TLS listener check the
//! busrt name against the certificate.

use crate::config::{AccessRule, Config};
use crate::endpoint::{self, EndpointError, SocketAccess};
use crate::topic::{Pattern, TopicError};
use busrt::broker::{AaaMap, ClientAaa, ServerConfig};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the broker could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    /// The socket path or address is invalid or unsafe.
    Endpoint(#[from] EndpointError),
    #[error("cannot listen on {addr}: {source}")]
    /// A listener could not be opened.
    Bind {
        /// The address or path that was to be listened on.
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    #[error("another broker is already listening on {0}")]
    /// A live broker already listens on this socket.
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    /// The socket path exists and is something else; it is never replaced.
    NotASocket(PathBuf),
    #[error("plaintext TCP on non-loopback address {0} is refused; set transport.allow_plaintext_remote = true to allow it, or use tls://")]
    /// Plaintext TCP was asked for on a non-loopback address.
    PlaintextRemote(SocketAddr),
    #[error("`{0}` is not an IP address and port")]
    /// A TCP listen address is not `ip:port`.
    BadAddress(String),
    #[error("access rule for `{client}`: {source}")]
    /// An access rule names an invalid topic pattern.
    Access {
        /// The client the rule is for.
        client: String,
        /// The operating system's error.
        source: TopicError,
    },
    #[error("the broker is not running")]
    /// The operation needs a running broker.
    NotRunning,
    #[error("the broker is already running")]
    /// `spawn` was called twice.
    AlreadyRunning,
    #[error("an embedded broker named `{0}` is already running in this process")]
    /// Another embedded broker in this process has the same name.
    NameTaken(String),
    #[error("busrt: {0}")]
    /// busrt itself refused.
    Busrt(#[from] busrt::Error),
    #[error(transparent)]
    /// The TLS listener's certificates could not be loaded.
    Tls(#[from] crate::tls::TlsError),
    #[error("I/O: {0}")]
    /// Another I/O error.
    Io(#[from] std::io::Error),
}

impl BrokerError {
    /// Whether the configuration is at fault (a setting to fix) rather than the machine (a
    /// socket in use, a failed bind): the tool exits 2 for these, 1 for the others.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            BrokerError::Endpoint(_)
                | BrokerError::PlaintextRemote(_)
                | BrokerError::BadAddress(_)
                | BrokerError::Access { .. }
                | BrokerError::Tls(_)
        )
    }
}

/// The in-process client through which a broker answers status requests.
const STATUS_CLIENT: &str = "busbridge-broker-status";

/// What a broker answers on the bridge's status topic (`busbridge stats` lists it beside the
/// bridged buses).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BrokerStatus {
    /// The broker's name (`inproc://NAME`).
    pub broker: String,
    /// Its counters.
    pub stats: BrokerStats,
}

/// Reads a running broker's status without keeping it alive.
#[derive(Clone)]
pub struct BrokerHandle(Weak<Running>);

impl BrokerHandle {
    /// The broker's name and counters, or `None` once it stopped.
    pub async fn status(&self) -> Option<BrokerStatus> {
        let running = self.0.upgrade()?;
        Some(BrokerStatus {
            broker: running.name.clone(),
            stats: running.stats().await,
        })
    }
}

/// Answers every status request with this broker's counters, while it runs.
async fn answer_status(running: Weak<Running>, mut client: busrt::broker::Client) {
    use busrt::client::AsyncClient as _;
    let topic = |dotted: &str| dotted.replace('.', "/");
    let Some(requests) = client.take_event_channel() else {
        return;
    };
    if client
        .subscribe(&topic(crate::topic::STATUS_TOPIC), busrt::QoS::No)
        .await
        .is_err()
    {
        return;
    }
    while requests.recv().await.is_ok() {
        let Some(status) = BrokerHandle(running.clone()).status().await else {
            return;
        };
        let body = serde_json::to_vec(&status).expect("status serializes");
        let reply = client
            .publish(
                &topic(crate::topic::STATUS_REPLY_TOPIC),
                body.into(),
                busrt::QoS::No,
            )
            .await;
        if let Err(e) = reply {
            tracing::warn!("status reply: {e}");
        }
    }
}

/// Counters of the broker's own front door (busrt counts frames separately).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct BrokerStats {
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_active: usize,
    /// Connections refused because the limit was reached.
    pub refused_connection_limit: u64,
    /// Unix connections refused because the peer's uid is not allowed.
    pub refused_peer_credentials: u64,
    /// TLS handshakes that failed, or a busrt name that was not the certificate's identity.
    pub refused_tls: u64,
    /// Frames the broker received from clients.
    pub frames_received: u64,
    /// Frames the broker sent to clients.
    pub frames_sent: u64,
    /// Bytes busrt received from clients.
    pub bytes_received: u64,
    /// Bytes busrt sent to clients.
    pub bytes_sent: u64,
    /// Seconds since the broker started.
    pub uptime_secs: u64,
}

#[derive(Debug, Clone)]
struct Listener<T> {
    spec: T,
    max_connections: u32,
}

/// An embedded or standalone busrt broker.
pub struct Broker {
    name: String,
    timeout: Duration,
    queue_size: usize,
    flush_delay: Duration,
    max_message_size: usize,
    allowed_uids: Vec<u32>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    allow_plaintext_remote: bool,
    access: BTreeMap<String, AccessRule>,
    ipc: Vec<Listener<PathBuf>>,
    tcp: Vec<Listener<String>>,
    tls: Vec<Listener<(String, Arc<rustls::ServerConfig>)>>,
    running: Option<Arc<Running>>,
}

/// Connection accounting shared by every listener.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicUsize,
    refused_limit: AtomicU64,
    refused_peer: AtomicU64,
    refused_tls: AtomicU64,
}

/// The live part of a started broker.
pub(crate) struct Running {
    // busrt's Broker needs `&mut` to serve a connection and an await to register a client.
    busrt: tokio::sync::Mutex<busrt::broker::Broker>,
    server_config: ServerConfig,
    counters: Counters,
    /// Set to force-close every connection (handed over or relayed).
    closing: watch::Sender<bool>,
    /// Signalled whenever a connection ends.
    released: tokio::sync::Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    socket_paths: Vec<PathBuf>,
    tcp_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    name: String,
}

fn inproc_registry() -> &'static Mutex<HashMap<String, Weak<Running>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Running>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers an in-process client on the running embedded broker called `name`.
pub(crate) async fn inproc_client(
    broker: &str,
    client: &str,
) -> Result<busrt::broker::Client, BrokerError> {
    let running = inproc_registry()
        .lock()
        .get(broker)
        .and_then(Weak::upgrade)
        .ok_or(BrokerError::NotRunning)?;
    running.register_client(client).await
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with default settings and no listeners; `spawn` starts it.
    pub fn new() -> Self {
        Self::configured(&Config::default())
    }

    /// A broker from the configuration: timeout, queue size, message size, uids, access rules,
    /// and the listeners named by `transport.socket_path` and `transport.tcp_listen`.
    pub fn from_config(config: &Config) -> Result<Self, BrokerError> {
        let mut broker = Self::configured(config);
        broker.spawn_ipc_server(
            config.transport.socket_path.clone(),
            config.transport.max_connections,
        )?;
        if let Some(addr) = &config.transport.tcp_listen {
            broker.spawn_tcp_server(addr, config.transport.max_connections)?;
        }
        if let (Some(addr), Some(tls)) = (&config.transport.tls_listen, &config.tls) {
            broker.spawn_tls_server(addr, config.transport.max_connections, tls)?;
        }
        Ok(broker)
    }

    /// Settings from the configuration, no listeners.
    fn configured(config: &Config) -> Self {
        Self {
            name: endpoint::DEFAULT_INPROC.to_owned(),
            timeout: config.broker.timeout,
            queue_size: config.broker.queue_size,
            flush_delay: config.broker.flush_delay,
            max_message_size: config.broker.max_message_size,
            allowed_uids: config.transport.allowed_uids.clone(),
            socket_mode: config.transport.socket_mode.clone(),
            socket_group: config.transport.socket_group.clone(),
            allow_plaintext_remote: config.transport.allow_plaintext_remote,
            access: config.access.clone(),
            ipc: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            running: None,
        }
    }

    /// Names this broker for `inproc://NAME` (default `default`).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Adds a Unix socket listener (started by `spawn`). A relative path goes into the private
    /// runtime directory; see [`socket_paths`](Self::socket_paths) for where it landed.
    pub fn spawn_ipc_server(
        &mut self,
        path: impl AsRef<Path>,
        max_connections: u32,
    ) -> Result<(), BrokerError> {
        let path = endpoint::resolve_socket_path(path.as_ref())?;
        self.ipc.push(Listener {
            spec: path,
            max_connections,
        });
        Ok(())
    }

    /// Adds a plaintext TCP listener (started by `spawn`); non-loopback needs
    /// `allow_plaintext_remote`.
    pub fn spawn_tcp_server(
        &mut self,
        addr: &str,
        max_connections: u32,
    ) -> Result<(), BrokerError> {
        let parsed: SocketAddr = addr
            .parse()
            .map_err(|_| BrokerError::BadAddress(addr.to_owned()))?;
        if !parsed.ip().is_loopback() && !self.allow_plaintext_remote {
            return Err(BrokerError::PlaintextRemote(parsed));
        }
        self.tcp.push(Listener {
            spec: addr.to_owned(),
            max_connections,
        });
        Ok(())
    }

    /// Adds a mutual-TLS listener (started by `spawn`): clients must present a certificate
    /// signed by `tls.ca`, and their busrt name must be the certificate's identity.
    pub fn spawn_tls_server(
        &mut self,
        addr: &str,
        max_connections: u32,
        tls: &crate::tls::TlsConfig,
    ) -> Result<(), BrokerError> {
        addr.parse::<SocketAddr>()
            .map_err(|_| BrokerError::BadAddress(addr.to_owned()))?;
        let config = crate::tls::server_config(tls)?;
        self.tls.push(Listener {
            spec: (addr.to_owned(), config),
            max_connections,
        });
        Ok(())
    }

    /// Frames busrt queues per client before it drops a client that does not read
    /// (`broker.queue_size`).
    pub fn set_queue_size(&mut self, frames: usize) {
        self.queue_size = frames;
    }

    /// How long busrt holds a frame written while more follow before flushing it
    /// (`broker.flush_delay`, default zero: flushed as soon as busrt's flusher task runs;
    /// busrt's `buf_ttl`).
    pub fn set_flush_delay(&mut self, delay: Duration) {
        self.flush_delay = delay;
    }

    /// busrt's server timeout: handshake, reads, writes; idle clients are dropped after 1.25x.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Allows plaintext TCP on non-loopback addresses.
    pub fn allow_plaintext_remote(&mut self, allow: bool) {
        self.allow_plaintext_remote = allow;
    }

    /// Allows these uids on Unix sockets besides the broker's own and root.
    pub fn allow_uids(&mut self, uids: &[u32]) {
        self.allowed_uids.extend_from_slice(uids);
    }

    /// Gives the Unix sockets a group (name or gid) and a mode (octal text), so collectors
    /// running as other users can reach them (see [`endpoint::SocketAccess`]); their uids
    /// must still be allowed ([`allow_uids`](Self::allow_uids)). Checked by `spawn`.
    pub fn set_socket_access(&mut self, mode: Option<&str>, group: Option<&str>) {
        self.socket_mode = mode.map(str::to_owned);
        self.socket_group = group.map(str::to_owned);
    }

    fn aaa_map(&self) -> Result<Option<AaaMap>, BrokerError> {
        if self.access.is_empty() {
            return Ok(None);
        }
        let busrt_patterns = |client: &str, list: &[String]| {
            list.iter()
                .map(|p| {
                    Pattern::parse(p)
                        .map(|p| p.to_busrt())
                        .map_err(|source| BrokerError::Access {
                            client: client.to_owned(),
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut map = HashMap::new();
        for (client, rule) in &self.access {
            let publish = busrt_patterns(client, &rule.publish)?;
            let subscribe = busrt_patterns(client, &rule.subscribe)?;
            let mut aaa = ClientAaa::new();
            aaa = if publish.is_empty() {
                aaa.deny_publish()
            } else {
                aaa.allow_publish_to(&str_refs(&publish))
            };
            aaa = if subscribe.is_empty() {
                aaa.deny_subscribe()
            } else {
                aaa.allow_subscribe_to(&str_refs(&subscribe))
            };
            map.insert(client.clone(), aaa);
        }
        Ok(Some(Arc::new(parking_lot::Mutex::new(map))))
    }

    /// Binds every listener and starts serving. The broker is then reachable as
    /// `inproc://NAME` from this process too.
    pub async fn spawn(&mut self) -> Result<(), BrokerError> {
        if self.running.is_some() {
            return Err(BrokerError::AlreadyRunning);
        }
        let mut server_config = ServerConfig::new()
            .timeout(self.timeout)
            .buf_ttl(self.flush_delay)
            // busrt allocates a frame's declared length before reading it: cap it (plus room
            // for the topic and frame header).
            .payload_size_limit(u32::try_from(self.max_message_size + 4096).unwrap_or(u32::MAX));
        if let Some(aaa) = self.aaa_map()? {
            server_config = server_config.aaa_map(aaa);
        }
        let mut busrt_broker = busrt::broker::Broker::new();
        busrt_broker.set_queue_size(self.queue_size);

        let access =
            SocketAccess::parse(self.socket_mode.as_deref(), self.socket_group.as_deref())?;
        let mut unix = Vec::new();
        for l in &self.ipc {
            unix.push((bind_unix(&l.spec, access).await?, l.clone()));
        }
        let mut tcp = Vec::new();
        for l in &self.tcp {
            let listener =
                TcpListener::bind(&l.spec)
                    .await
                    .map_err(|source| BrokerError::Bind {
                        addr: l.spec.clone(),
                        source,
                    })?;
            tcp.push((listener, l.clone()));
        }
        let mut tls = Vec::new();
        for l in &self.tls {
            let listener =
                TcpListener::bind(&l.spec.0)
                    .await
                    .map_err(|source| BrokerError::Bind {
                        addr: l.spec.0.clone(),
                        source,
                    })?;
            tls.push((listener, l.clone()));
        }
        let (closing, _) = watch::channel(false);
        let running = Arc::new(Running {
            busrt: tokio::sync::Mutex::new(busrt_broker),
            server_config,
            counters: Counters::default(),
            closing,
            released: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
            socket_paths: unix.iter().map(|(_, l)| l.spec.clone()).collect(),
            tcp_addrs: tcp
                .iter()
                .filter_map(|(t, _)| t.local_addr().ok())
                .collect(),
            tls_addrs: tls
                .iter()
                .filter_map(|(t, _)| t.local_addr().ok())
                .collect(),
            name: self.name.clone(),
        });
        {
            let mut registry = inproc_registry().lock();
            if registry
                .get(&self.name)
                .is_some_and(|w| w.strong_count() > 0)
            {
                return Err(BrokerError::NameTaken(self.name.clone()));
            }
            registry.insert(self.name.clone(), Arc::downgrade(&running));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let mut uids = vec![unsafe { libc::geteuid() }, 0];
        uids.extend(&self.allowed_uids);
        let mut tasks = Vec::new();
        for (listener, l) in unix {
            tasks.push(tokio::spawn(serve_unix(
                running.clone(),
                listener,
                l.max_connections,
                uids.clone(),
            )));
        }
        for (listener, l) in tcp {
            tasks.push(tokio::spawn(serve_tcp(
                running.clone(),
                listener,
                l.max_connections,
            )));
        }
        for (listener, l) in tls {
            tasks.push(tokio::spawn(serve_tls(
                running.clone(),
                listener,
                l.max_connections,
                l.spec.1.clone(),
                self.timeout,
            )));
        }
        // Answers `busbridge stats` beside the bridged buses (see `BrokerStatus`).
        let status = running.register_client(STATUS_CLIENT).await?;
        tasks.push(tokio::spawn(answer_status(
            Arc::downgrade(&running),
            status,
        )));
        running.tasks.lock().extend(tasks);
        for p in &running.socket_paths {
            tracing::info!(socket = %p.display(), "broker listening");
        }
        for a in &running.tcp_addrs {
            tracing::info!(tcp = %a, "broker listening");
        }
        self.running = Some(running);
        Ok(())
    }

    /// Where the Unix listeners are (resolved, absolute).
    pub fn socket_paths(&self) -> Vec<PathBuf> {
        match &self.running {
            Some(r) => r.socket_paths.clone(),
            None => self.ipc.iter().map(|l| l.spec.clone()).collect(),
        }
    }

    /// Where the TCP listeners are bound (after `spawn`; resolves port 0).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.running
            .as_ref()
            .map(|r| r.tcp_addrs.clone())
            .unwrap_or_default()
    }

    /// Where the TLS listeners are bound (after `spawn`).
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.running
            .as_ref()
            .map(|r| r.tls_addrs.clone())
            .unwrap_or_default()
    }

    /// The name `inproc://` uses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters.
    pub async fn stats(&self) -> BrokerStats {
        match &self.running {
            Some(r) => r.stats().await,
            None => BrokerStats::default(),
        }
    }

    /// A handle that reads this broker's status while it runs (for `/metrics`).
    pub fn status_handle(&self) -> Option<BrokerHandle> {
        self.running
            .as_ref()
            .map(|r| BrokerHandle(Arc::downgrade(r)))
    }

    /// Registers an in-process busrt client (what `inproc://` uses).
    pub async fn register_client(&self, name: &str) -> Result<busrt::broker::Client, BrokerError> {
        self.running
            .as_ref()
            .ok_or(BrokerError::NotRunning)?
            .register_client(name)
            .await
    }

    /// Stops accepting, removes the socket files, waits up to the broker timeout for clients
    /// to leave, then closes what is left.
    pub async fn shutdown(&mut self) {
        self.shutdown_within(self.timeout).await;
    }

    /// [`shutdown`](Self::shutdown) with an explicit drain deadline.
    pub async fn shutdown_within(&mut self, drain: Duration) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop_listening();
        // Drain: wait for clients to leave, or for traffic to stop moving (nothing left in
        // flight), whichever comes first, bounded by `drain`.
        let deadline = tokio::time::Instant::now() + drain;
        let mut last = running.busrt.lock().await.stats().w_frames;
        loop {
            let released = running.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if running.counters.active.load(Relaxed) == 0 || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            let quantum = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(quantum.min(deadline), released)
                .await
                .is_err()
            {
                let now = running.busrt.lock().await.stats().w_frames;
                if now == last {
                    break;
                }
                last = now;
            }
        }
        let left = running.counters.active.load(Relaxed);
        let _ = running.closing.send(true);
        inproc_registry().lock().remove(&running.name);
        tracing::info!(forced_closed = left, "broker stopped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop_listening();
            let _ = running.closing.send(true);
            inproc_registry().lock().remove(&running.name);
        }
    }
}

impl Running {
    async fn register_client(&self, name: &str) -> Result<busrt::broker::Client, BrokerError> {
        Ok(self.busrt.lock().await.register_client(name).await?)
    }

    async fn stats(&self) -> BrokerStats {
        let b = self.busrt.lock().await.stats();
        BrokerStats {
            connections_accepted: self.counters.accepted.load(Relaxed),
            connections_active: self.counters.active.load(Relaxed),
            refused_connection_limit: self.counters.refused_limit.load(Relaxed),
            refused_peer_credentials: self.counters.refused_peer.load(Relaxed),
            refused_tls: self.counters.refused_tls.load(Relaxed),
            frames_received: b.r_frames,
            frames_sent: b.w_frames,
            bytes_received: b.r_bytes,
            bytes_sent: b.w_bytes,
            uptime_secs: b.uptime,
        }
    }

    /// Stops the accept loops and removes the socket files.
    fn stop_listening(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for p in &self.socket_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn bind_unix(path: &Path, access: SocketAccess) -> Result<UnixListener, BrokerError> {
    if let Some(dir) = path.parent() {
        access.prepare_dir(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BrokerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(BrokerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path)?; // stale socket of a broker that died
    }
    let listener = UnixListener::bind(path).map_err(|source| BrokerError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    access.apply(path)?;
    Ok(listener)
}

/// Holds one connection slot; frees it when dropped.
pub(crate) struct Slot(Arc<Running>);

impl Slot {
    fn acquire(running: &Arc<Running>, max: u32) -> Option<Self> {
        let c = &running.counters.active;
        let mut now = c.load(Relaxed);
        loop {
            if now >= max as usize {
                running.counters.refused_limit.fetch_add(1, Relaxed);
                return None;
            }
            match c.compare_exchange_weak(now, now + 1, Relaxed, Relaxed) {
                Ok(_) => {
                    running.counters.accepted.fetch_add(1, Relaxed);
                    return Some(Self(running.clone()));
                }
                Err(v) => now = v,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Relaxed);
        self.0.released.notify_waiters();
    }
}

/// Hands a checked TCP or TLS stream to busrt through a socket pair and relays bytes both ways.
pub(crate) async fn relay<S>(
    running: &Arc<Running>,
    mut external: S,
    slot: Slot,
) -> Result<(), BrokerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ours = busrt_side(running).await?;
    let closing = running.closing.subscribe();
    tokio::spawn(async move {
        let _slot = slot;
        pump(&mut external, &mut ours, closing).await;
    });
    Ok(())
}

/// A new busrt server connection; the returned end is ours to relay into.
async fn busrt_side(running: &Arc<Running>) -> Result<UnixStream, BrokerError> {
    let (ours, theirs) = UnixStream::pair()?;
    running
        .busrt
        .lock()
        .await
        .spawn_server_connection(theirs, running.server_config.clone())?;
    Ok(ours)
}

/// Copies both ways until either side closes or the broker force-closes connections.
async fn pump<S>(external: &mut S, ours: &mut UnixStream, mut closing: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(external, ours, 65536, 65536) => {
            if let Err(e) = r {
                tracing::debug!("connection closed: {e}");
            }
        }
        _ = closing.wait_for(|c| *c) => {}
    }
}

async fn serve_unix(running: Arc<Running>, listener: UnixListener, max: u32, uids: Vec<u32>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if uids.contains(&cred.uid()) => {}
            Ok(cred) => {
                running.counters.refused_peer.fetch_add(1, Relaxed);
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "connection refused: uid not allowed");
                continue;
            }
            Err(e) => {
                running.counters.refused_peer.fetch_add(1, Relaxed);
                tracing::warn!("connection refused: no peer credentials: {e}");
                continue;
            }
        }
        let Some(slot) = Slot::acquire(&running, max) else {
            tracing::warn!(max, "connection refused: connection limit reached");
            continue;
        };
        if let Err(e) = hand_over(&running, stream, slot).await {
            tracing::error!("cannot serve connection: {e}");
        }
    }
}

/// Hands a checked Unix connection to busrt itself, so no byte passes through busbridge, and
/// keeps a duplicate of its descriptor that only watches for the hang-up: the slot is freed
/// once the connection is gone, and a broker shutdown can force it closed.
///
/// The duplicate does not hold a connection open that busrt has closed: busrt's write half
/// shuts the socket down for writing when dropped, so the client reads the end of stream,
/// closes, and the hang-up follows.
async fn hand_over(
    running: &Arc<Running>,
    stream: UnixStream,
    slot: Slot,
) -> Result<(), BrokerError> {
    use tokio::io::{unix::AsyncFd, Interest};
    let stream = stream.into_std()?;
    // Priority interest (EPOLLPRI) is never raised by data or write space on a Unix stream,
    // so the watcher sleeps through the traffic and wakes for the hang-up (always reported).
    // Set up before busrt gets the stream: once it has it, nothing may fail and free the slot.
    // SAFETY: the std stream owns its descriptor, which stays open, the same description,
    // for as long as the `AsyncFd` owns the stream.
    let watched =
        unsafe { AsyncFd::register_with_interest(stream.try_clone()?, Interest::PRIORITY) }
            .map_err(std::io::Error::from)?;
    running
        .busrt
        .lock()
        .await
        .spawn_server_connection(UnixStream::from_std(stream)?, running.server_config.clone())?;
    let mut closing = running.closing.subscribe();
    tokio::spawn(async move {
        let _slot = slot;
        let hung_up = async {
            loop {
                let Ok(mut ready) = watched.ready(Interest::PRIORITY).await else {
                    return;
                };
                if ready.ready().is_read_closed() {
                    return;
                }
                // Out-of-band data, not a hang-up: wait for the next event.
                ready.clear_ready();
            }
        };
        tokio::select! {
            () = hung_up => {}
            _ = closing.wait_for(|c| *c) => {
                let _ = watched.get_ref().shutdown(std::net::Shutdown::Both);
            }
        }
    });
    Ok(())
}

/// Waits for the next TCP connection that gets a slot under the connection limit.
async fn accept_tcp(
    running: &Arc<Running>,
    listener: &TcpListener,
    max: u32,
) -> (tokio::net::TcpStream, SocketAddr, Slot) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match Slot::acquire(running, max) {
            Some(slot) => return (stream, peer, slot),
            None => tracing::warn!(%peer, max, "connection refused: connection limit reached"),
        }
    }
}

async fn serve_tcp(running: Arc<Running>, listener: TcpListener, max: u32) {
    loop {
        let (stream, _, slot) = accept_tcp(&running, &listener, max).await;
        if let Err(e) = relay(&running, stream, slot).await {
            tracing::error!("cannot serve connection: {e}");
        }
    }
}

async fn serve_tls(
    running: Arc<Running>,
    listener: TcpListener,
    max: u32,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (stream, peer, slot) = accept_tcp(&running, &listener, max).await;
        let acceptor = acceptor.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    running.counters.refused_tls.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    running.counters.refused_tls.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(crate::tls::identity);
            let Some(identity) = identity else {
                running.counters.refused_tls.fetch_add(1, Relaxed);
                tracing::warn!(%peer, "client certificate has no usable identity");
                return;
            };
            if let Err(e) = relay_identified(&running, tls, slot, identity, handshake_timeout).await
            {
                tracing::error!("cannot serve connection: {e}");
            }
        });
    }
}

/// Like [`relay`], but reads busrt's handshake on the way and refuses a client name that is
/// not the certificate's identity (the secondary suffix `%%N` aside).
async fn relay_identified<S>(
    running: &Arc<Running>,
    mut external: S,
    slot: Slot,
    identity: String,
    handshake_timeout: Duration,
) -> Result<(), BrokerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ours = busrt_side(running).await?;
    let closing = running.closing.subscribe();
    let running = running.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let handshake = async {
            let mut greeting = [0u8; 3];
            ours.read_exact(&mut greeting).await?;
            external.write_all(&greeting).await?;
            external.flush().await?;
            let mut answer = [0u8; 3];
            external.read_exact(&mut answer).await?;
            ours.write_all(&answer).await?;
            let mut ok = [0u8; 1];
            ours.read_exact(&mut ok).await?;
            external.write_all(&ok).await?;
            external.flush().await?;
            let mut len = [0u8; 2];
            external.read_exact(&mut len).await?;
            let mut name = vec![0u8; u16::from_le_bytes(len) as usize];
            external.read_exact(&mut name).await?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let primary = name.split("%%").next().unwrap_or_default();
            if primary != identity {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("busrt name `{name}` is not the certificate identity `{identity}`"),
                ));
            }
            ours.write_all(&len).await?;
            ours.write_all(name.as_bytes()).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                running.counters.refused_tls.fetch_add(1, Relaxed);
                tracing::warn!("TLS client refused: {e}");
                return;
            }
            Err(_) => {
                running.counters.refused_tls.fetch_add(1, Relaxed);
                tracing::warn!("TLS client handshake timed out");
                return;
            }
        }
        pump(&mut external, &mut ours, closing).await;
    });
    Ok(())
}
