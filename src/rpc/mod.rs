//! Typed RPC over busrt: register handlers by method name, call them by name, with a timeout
//! on every call and busrt's errors mapped to distinct types.
//!
//! busrt's RPC needs a target client name and waits forever for a target that is gone;
//! [`RpcNode`] adds discovery (methods are announced on `control.rpc.announce` when registered,
//! so a method with one provider needs no target), timeouts, typed calls, and handlers that
//! cannot take the server down (a panic becomes an error reply).
//!
//! ```no_run
//! # async fn run() -> Result<(), busbridge::rpc::RpcCallError> {
//! use busbridge::rpc::{HealthCheckRequest, HealthCheckResponse, RpcNode};
//!
//! let collector = RpcNode::connect("ipc:///run/busbridge/daemoneye.sock", "procmond").await?;
//! collector
//!     .rpc_register("health_check", |_req: HealthCheckRequest| async move {
//!         Ok(HealthCheckResponse { status: "healthy".into(), ..Default::default() })
//!     })
//!     .await?;
//!
//! let agent = RpcNode::connect("ipc:///run/busbridge/daemoneye.sock", "daemoneye-agent").await?;
//! let reply: HealthCheckResponse = agent.call("health_check", &HealthCheckRequest::default()).await?;
//! # Ok(()) }
//! ```

mod control;
pub mod counts;
mod ops;

pub use control::{
    serve_control, CollectorControl, ControlPath, PhasedControl, RemoteCollector,
    READ_ONLY_OPERATIONS, STATE_CHANGING_OPERATIONS,
};
pub use counts::{call_counts, CallCount};
pub use ops::*;

use crate::client::{open_busrt, BusrtConn, ClientError, ClientOptions};
use crate::endpoint::Endpoint;
use async_trait::async_trait;
use busrt::rpc::{Rpc, RpcClient, RpcError, RpcEvent, RpcHandlers, RpcResult};
use futures_util::FutureExt;
use parking_lot::RwLock;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Topic on which nodes announce the methods they provide.
pub const ANNOUNCE_TOPIC: &str = "control.rpc.announce";
/// Topic on which a node asks every node to announce again.
pub const DISCOVER_TOPIC: &str = "control.rpc.discover";

/// Why a call failed. Each busrt error code maps to one variant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcCallError {
    #[error("method `{0}` not found on the target")]
    /// The target serves no such method.
    MethodNotFound(String),
    #[error("invalid parameters: {0}")]
    /// The target refused the parameters.
    InvalidParams(String),
    #[error("the handler failed: {0}")]
    /// The handler failed (or panicked).
    Handler(String),
    #[error("no reply within {0:?}")]
    /// No reply within the timeout.
    Timeout(Duration),
    #[error("no such target `{0}` on the broker")]
    /// No client of this name is connected.
    NoSuchTarget(String),
    #[error("no provider announced method `{0}`")]
    /// No client announced this method.
    NoProvider(String),
    #[error("method `{method}` has several providers ({providers:?}); name one with rpc_call_to")]
    /// More than one client announced this method; name the target.
    Ambiguous {
        /// The method.
        method: String,
        /// The clients that serve it.
        providers: Vec<String>,
    },
    #[error("disconnected from the broker: {0}")]
    /// The connection was lost before the reply.
    Disconnected(String),
    #[error("cannot encode or decode: {0}")]
    /// The parameters or the reply do not (de)serialize.
    Codec(String),
    #[error("remote error {code}: {message}")]
    /// Another error code from the remote side.
    Remote {
        /// busrt's error code.
        code: i16,
        /// The remote side's message.
        message: String,
    },
    #[error(transparent)]
    /// The broker could not be reached.
    Connect(#[from] ClientErrorText),
}

/// A connection error, as text (so call errors stay `Clone` and comparable).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ClientErrorText(pub String);

impl From<ClientError> for RpcCallError {
    fn from(e: ClientError) -> Self {
        RpcCallError::Connect(ClientErrorText(e.to_string()))
    }
}

impl From<crate::endpoint::EndpointError> for RpcCallError {
    fn from(e: crate::endpoint::EndpointError) -> Self {
        RpcCallError::Connect(ClientErrorText(e.to_string()))
    }
}

fn map_rpc_error(target: &str, method: &str, e: RpcError) -> RpcCallError {
    let message = e
        .data()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    match e.code() {
        busrt::rpc::RPC_ERROR_CODE_METHOD_NOT_FOUND => RpcCallError::MethodNotFound(method.into()),
        busrt::rpc::RPC_ERROR_CODE_INVALID_METHOD_PARAMS => RpcCallError::InvalidParams(message),
        busrt::rpc::RPC_ERROR_CODE_INTERNAL => RpcCallError::Handler(message),
        // Transport errors are -32000 minus busrt's error kind.
        // Not registered, or registered but gone before the frame was delivered.
        c if c == -32000 - i16::from(busrt::ERR_CLIENT_NOT_REGISTERED)
            || c == -32000 - i16::from(busrt::ERR_NOT_DELIVERED) =>
        {
            RpcCallError::NoSuchTarget(target.into())
        }
        c if c == -32000 - i16::from(busrt::ERR_TIMEOUT) => RpcCallError::Disconnected(format!(
            "the broker timed out delivering to `{target}`: {message}"
        )),
        c if (-32255..=-32000).contains(&c) => RpcCallError::Disconnected(message),
        code => RpcCallError::Remote { code, message },
    }
}

/// What a handler returns: the reply payload, or an error sent back to the caller.
pub type HandlerResult = Result<Vec<u8>, HandlerError>;

/// An error a handler sends back.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerError {
    /// The request could not be parsed or was refused as invalid (-32602).
    InvalidParams(String),
    /// The handler failed (-32603).
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::Failed(e.to_string())
    }
}

type Handler =
    Arc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announcement {
    node: String,
    methods: Vec<String>,
    #[serde(default)]
    bye: bool,
}

struct Shared {
    name: String,
    methods: RwLock<BTreeMap<String, Handler>>,
    /// method -> providers
    providers: RwLock<HashMap<String, BTreeSet<String>>>,
    announced: tokio::sync::Notify,
    /// The connection, to answer discovery requests from the frame handler.
    client: std::sync::OnceLock<Arc<tokio::sync::Mutex<dyn busrt::client::AsyncClient>>>,
    /// Set by `close`: calls that still arrive before the connection is gone (busrt's tasks
    /// stop asynchronously) are answered "not registered" instead of being served.
    closing: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn announcement(&self, bye: bool) -> Vec<u8> {
        serde_json::to_vec(&Announcement {
            node: self.name.clone(),
            methods: self.methods.read().keys().cloned().collect(),
            bye,
        })
        .unwrap_or_default()
    }
}

struct Dispatcher(Arc<Shared>);

#[async_trait]
impl RpcHandlers for Dispatcher {
    async fn handle_call(&self, event: RpcEvent) -> RpcResult {
        let method = event
            .parse_method()
            .map_err(|e| RpcError::method(Some(e.to_string().into_bytes())))?
            .to_owned();
        if self.0.closing.load(std::sync::atomic::Ordering::Acquire) {
            counts::count(counts::Side::Server, &method, "closing");
            return Err(RpcError::new(
                -32000 - i16::from(busrt::ERR_CLIENT_NOT_REGISTERED),
                Some(format!("`{}` is closing", self.0.name).into_bytes()),
            ));
        }
        let handler = self.0.methods.read().get(&method).cloned();
        let Some(handler) = handler else {
            counts::count(counts::Side::Server, &method, "method_not_found");
            return Err(RpcError::method(Some(
                format!("method `{method}` not found").into_bytes(),
            )));
        };
        // A panicking handler becomes an error reply; the server keeps serving.
        let served = std::panic::AssertUnwindSafe(handler(event.payload().to_vec()))
            .catch_unwind()
            .await;
        let outcome = match &served {
            Ok(Ok(_)) => "ok",
            Ok(Err(HandlerError::InvalidParams(_))) => "invalid_params",
            Ok(Err(HandlerError::Failed(_))) => "handler_failed",
            Err(_) => "panicked",
        };
        counts::count(counts::Side::Server, &method, outcome);
        match served {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(HandlerError::InvalidParams(m))) => Err(RpcError::params(Some(m.into_bytes()))),
            Ok(Err(HandlerError::Failed(m))) => Err(RpcError::internal(Some(m.into_bytes()))),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(method, "RPC handler panicked: {what}");
                Err(RpcError::internal(Some(
                    format!("handler panicked: {what}").into_bytes(),
                )))
            }
        }
    }

    async fn handle_frame(&self, frame: busrt::Frame) {
        let Some(topic) = frame.topic() else { return };
        if topic == DISCOVER_TOPIC.replace('.', "/") {
            if self.0.methods.read().is_empty() {
                return;
            }
            // Answer on a task of its own: this runs inside busrt's frame processor.
            let shared = self.0.clone();
            tokio::spawn(async move {
                let Some(client) = shared.client.get() else {
                    return;
                };
                let payload = shared.announcement(false);
                let _ = client
                    .lock()
                    .await
                    .publish(
                        &ANNOUNCE_TOPIC.replace('.', "/"),
                        payload.into(),
                        busrt::QoS::Realtime,
                    )
                    .await;
            });
        } else if topic == ANNOUNCE_TOPIC.replace('.', "/") {
            let Ok(a) = serde_json::from_slice::<Announcement>(frame.payload()) else {
                return;
            };
            let mut providers = self.0.providers.write();
            for set in providers.values_mut() {
                set.remove(&a.node);
            }
            if !a.bye {
                for m in a.methods {
                    providers.entry(m).or_default().insert(a.node.clone());
                }
            }
            drop(providers);
            self.0.announced.notify_waiters();
        }
    }
}

/// One RPC participant: a busrt client that serves registered methods and calls others.
pub struct RpcNode {
    shared: Arc<Shared>,
    rpc: RpcClient,
    timeout: Duration,
}

impl RpcNode {
    /// Connects as `name` with default options (5 s call timeout).
    pub async fn connect(address: &str, name: &str) -> Result<Self, RpcCallError> {
        Self::connect_with(address, ClientOptions::default().name(name)).await
    }

    /// Connects with options; `opts.name` is the node's name (required to be unique).
    pub async fn connect_with(address: &str, opts: ClientOptions) -> Result<Self, RpcCallError> {
        let endpoint = Endpoint::parse(address)?.resolve()?;
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("busbridge-rpc-{}", std::process::id()));
        let conn = open_busrt(&endpoint, &name, &opts).await?;
        let shared = Arc::new(Shared {
            name: name.clone(),
            methods: RwLock::new(BTreeMap::new()),
            providers: RwLock::new(HashMap::new()),
            announced: tokio::sync::Notify::new(),
            client: std::sync::OnceLock::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let rpc = match conn {
            BusrtConn::Ipc(c) => RpcClient::new(c, Dispatcher(shared.clone())),
            BusrtConn::Inproc(c) => RpcClient::new(c, Dispatcher(shared.clone())),
        };
        let _ = shared.client.set(rpc.client());
        let node = Self {
            shared,
            rpc,
            timeout: opts.timeout,
        };
        {
            let client = node.rpc.client();
            let mut c = client.lock().await;
            let topics = [
                ANNOUNCE_TOPIC.replace('.', "/"),
                DISCOVER_TOPIC.replace('.', "/"),
            ];
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let confirm = c
                .subscribe_bulk(&refs, busrt::QoS::Processed)
                .await
                .map_err(|e| RpcCallError::Disconnected(e.to_string()))?;
            drop(c);
            wait_confirm(confirm, node.timeout).await?;
        }
        node.publish(DISCOVER_TOPIC, b"{}".to_vec()).await?;
        Ok(node)
    }

    /// The node's name (the target others call).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Sets the default call timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), RpcCallError> {
        let client = self.rpc.client();
        let confirm = client
            .lock()
            .await
            .publish(
                &topic.replace('.', "/"),
                payload.into(),
                busrt::QoS::RealtimeProcessed,
            )
            .await
            .map_err(|e| RpcCallError::Disconnected(e.to_string()))?;
        wait_confirm(confirm, self.timeout).await
    }

    /// Registers a raw handler: bytes in, bytes out. The method is announced to every node.
    pub async fn rpc_register_raw<F, Fut>(&self, method: &str, f: F) -> Result<(), RpcCallError>
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |bytes| Box::pin(f(bytes)));
        self.shared
            .methods
            .write()
            .insert(method.to_owned(), handler);
        self.publish(ANNOUNCE_TOPIC, self.shared.announcement(false))
            .await
    }

    /// Registers a typed handler: the request is JSON-decoded (a bad one is an
    /// invalid-params error), the response JSON-encoded.
    pub async fn rpc_register<Req, Resp, F, Fut>(
        &self,
        method: &str,
        f: F,
    ) -> Result<(), RpcCallError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.rpc_register_raw(method, move |bytes: Vec<u8>| {
            let f = f.clone();
            async move {
                let req: Req =
                    serde_json::from_slice(if bytes.is_empty() { b"{}" } else { &bytes })
                        .map_err(|e| HandlerError::InvalidParams(e.to_string()))?;
                let resp = f(req).await?;
                serde_json::to_vec(&resp).map_err(|e| HandlerError::Failed(e.to_string()))
            }
        })
        .await
    }

    /// Providers of `method` known now (from announcements).
    pub fn providers(&self, method: &str) -> Vec<String> {
        self.shared
            .providers
            .read()
            .get(method)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Finds the one provider of `method`, asking every node to announce if none is known yet
    /// (bounded by the call timeout).
    pub async fn resolve(&self, method: &str) -> Result<String, RpcCallError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut asked = false;
        loop {
            let announced = self.shared.announced.notified();
            tokio::pin!(announced);
            announced.as_mut().enable();
            let providers = self.providers(method);
            match providers.len() {
                1 => return Ok(providers.into_iter().next().unwrap_or_default()),
                0 => {}
                _ => {
                    return Err(RpcCallError::Ambiguous {
                        method: method.into(),
                        providers,
                    })
                }
            }
            if !asked {
                self.publish(DISCOVER_TOPIC, b"{}".to_vec()).await?;
                asked = true;
            }
            if tokio::time::timeout_at(deadline, announced).await.is_err() {
                return Err(RpcCallError::NoProvider(method.into()));
            }
        }
    }

    /// Calls `method` on its one provider with raw bytes.
    pub async fn rpc_call(&self, method: &str, params: Vec<u8>) -> Result<Vec<u8>, RpcCallError> {
        let target = self.resolve_counted(method).await?;
        self.rpc_call_to(&target, method, params).await
    }

    /// [`resolve`](Self::resolve) for a call: a call that finds no provider counts as one.
    async fn resolve_counted(&self, method: &str) -> Result<String, RpcCallError> {
        let target = self.resolve(method).await;
        if target.is_err() {
            counts::count(counts::Side::Client, method, counts::outcome(&target));
        }
        target
    }

    /// Calls `method` on `target` with raw bytes, within the node's timeout.
    pub async fn rpc_call_to(
        &self,
        target: &str,
        method: &str,
        params: Vec<u8>,
    ) -> Result<Vec<u8>, RpcCallError> {
        self.rpc_call_within(target, method, params, self.timeout)
            .await
    }

    /// Calls with an explicit timeout.
    #[tracing::instrument(name = "rpc_call", level = "info", skip(self, params), fields(client = %self.shared.name))]
    pub async fn rpc_call_within(
        &self,
        target: &str,
        method: &str,
        params: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcCallError> {
        let result = self.call_once(target, method, params, timeout).await;
        counts::count(counts::Side::Client, method, counts::outcome(&result));
        result
    }

    async fn call_once(
        &self,
        target: &str,
        method: &str,
        params: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcCallError> {
        if !self.rpc.is_connected() {
            return Err(RpcCallError::Disconnected("connection lost".into()));
        }
        let call = self
            .rpc
            .call(target, method, params.into(), busrt::QoS::RealtimeProcessed);
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(RpcCallError::Timeout(timeout)),
            Ok(Err(e)) => {
                let err = map_rpc_error(target, method, e);
                if matches!(err, RpcCallError::NoSuchTarget(_)) {
                    // A provider that left: forget it.
                    for set in self.shared.providers.write().values_mut() {
                        set.remove(target);
                    }
                }
                Err(err)
            }
            Ok(Ok(event)) => Ok(event.payload().to_vec()),
        }
    }

    /// A typed call to the one provider of `method`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, RpcCallError> {
        let target = self.resolve_counted(method).await?;
        self.call_to(&target, method, request).await
    }

    /// A typed call to `target`.
    pub async fn call_to<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &str,
        method: &str,
        request: &Req,
    ) -> Result<Resp, RpcCallError> {
        let params = serde_json::to_vec(request).map_err(|e| RpcCallError::Codec(e.to_string()))?;
        let reply = self.rpc_call_to(target, method, params).await?;
        serde_json::from_slice(&reply).map_err(|e| RpcCallError::Codec(e.to_string()))
    }

    /// Announces departure and closes the connection (after everything sent is flushed).
    /// From the start of `close`, calls still arriving are answered as if the node were gone
    /// (`NoSuchTarget` for the caller), not served.
    pub async fn close(self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self
            .publish(ANNOUNCE_TOPIC, self.shared.announcement(true))
            .await;
        let client = self.rpc.client();
        let _ =
            tokio::time::timeout(self.timeout, async { client.lock().await.ping().await }).await;
    }
}

async fn wait_confirm(confirm: busrt::OpConfirm, limit: Duration) -> Result<(), RpcCallError> {
    if let Some(rx) = confirm {
        match tokio::time::timeout(limit, rx).await {
            Err(_) => return Err(RpcCallError::Timeout(limit)),
            Ok(Err(_)) => return Err(RpcCallError::Disconnected("confirmation lost".into())),
            Ok(Ok(Err(e))) => return Err(RpcCallError::Disconnected(e.to_string())),
            Ok(Ok(Ok(()))) => {}
        }
    }
    Ok(())
}
