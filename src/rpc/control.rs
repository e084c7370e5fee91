//! `CollectorControl`: one trait for collector lifecycle, in process or over busrt RPC.

use super::ops::*;
use super::{HandlerError, RpcCallError, RpcNode};
use crate::phase::Phase;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Operations that change nothing: both paths may be asked and compared in phase 3.
pub const READ_ONLY_OPERATIONS: [&str; 2] = ["health_check", "get_capabilities"];
/// Operations that change state: sent once, on the authoritative path for the phase.
pub const STATE_CHANGING_OPERATIONS: [&str; 4] = [
    "start_collection",
    "stop_collection",
    "update_config",
    "shutdown",
];

/// Collector lifecycle, the same for an in-process collector and one in another process.
#[async_trait]
pub trait CollectorControl: Send + Sync {
    /// Whether the collector is healthy, with its counters.
    async fn health_check(&self) -> Result<HealthCheckResponse, RpcCallError>;
    /// Starts collecting (idempotent).
    async fn start_collection(&self) -> Result<CollectionStateResponse, RpcCallError>;
    /// Stops collecting (idempotent).
    async fn stop_collection(&self) -> Result<CollectionStateResponse, RpcCallError>;
    /// A bad configuration is refused with the reason ([`RpcCallError::InvalidParams`]) and the
    /// old one stays.
    async fn update_config(
        &self,
        config: CollectorSettings,
    ) -> Result<UpdateConfigResponse, RpcCallError>;
    /// What the collector produces, from its real configuration.
    async fn get_capabilities(&self) -> Result<CapabilitiesResponse, RpcCallError>;
    /// Stops, flushes what was published within the deadline, answers, then exits.
    async fn shutdown(&self, request: ShutdownRequest) -> Result<ShutdownResponse, RpcCallError>;
}

fn handler_error(e: RpcCallError) -> HandlerError {
    match e {
        RpcCallError::InvalidParams(m) => HandlerError::InvalidParams(m),
        other => HandlerError::Failed(other.to_string()),
    }
}

/// Exposes any `CollectorControl` over busrt RPC on `node` (methods named as the operations).
pub async fn serve_control<C: CollectorControl + 'static>(
    node: &RpcNode,
    control: Arc<C>,
) -> Result<(), RpcCallError> {
    let c = control.clone();
    node.rpc_register("health_check", move |_: HealthCheckRequest| {
        let c = c.clone();
        async move { c.health_check().await.map_err(handler_error) }
    })
    .await?;
    let c = control.clone();
    node.rpc_register("start_collection", move |_: StartCollectionRequest| {
        let c = c.clone();
        async move { c.start_collection().await.map_err(handler_error) }
    })
    .await?;
    let c = control.clone();
    node.rpc_register("stop_collection", move |_: StopCollectionRequest| {
        let c = c.clone();
        async move { c.stop_collection().await.map_err(handler_error) }
    })
    .await?;
    let c = control.clone();
    node.rpc_register("update_config", move |r: UpdateConfigRequest| {
        let c = c.clone();
        async move { c.update_config(r.config).await.map_err(handler_error) }
    })
    .await?;
    let c = control.clone();
    node.rpc_register("get_capabilities", move |_: GetCapabilitiesRequest| {
        let c = c.clone();
        async move { c.get_capabilities().await.map_err(handler_error) }
    })
    .await?;
    let c = control;
    node.rpc_register("shutdown", move |r: ShutdownRequest| {
        let c = c.clone();
        async move { c.shutdown(r).await.map_err(handler_error) }
    })
    .await
}

/// A collector in another process, driven over busrt RPC: the agent's code does not change
/// when a collector moves out of process.
pub struct RemoteCollector {
    node: Arc<RpcNode>,
    target: String,
}

impl RemoteCollector {
    /// The collector served by the node named `target`.
    pub fn new(node: Arc<RpcNode>, target: impl Into<String>) -> Self {
        Self {
            node,
            target: target.into(),
        }
    }
}

#[async_trait]
impl CollectorControl for RemoteCollector {
    async fn health_check(&self) -> Result<HealthCheckResponse, RpcCallError> {
        self.node
            .call_to(&self.target, "health_check", &HealthCheckRequest {})
            .await
    }
    async fn start_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        self.node
            .call_to(&self.target, "start_collection", &StartCollectionRequest {})
            .await
    }
    async fn stop_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        self.node
            .call_to(&self.target, "stop_collection", &StopCollectionRequest {})
            .await
    }
    async fn update_config(
        &self,
        config: CollectorSettings,
    ) -> Result<UpdateConfigResponse, RpcCallError> {
        self.node
            .call_to(
                &self.target,
                "update_config",
                &UpdateConfigRequest { config },
            )
            .await
    }
    async fn get_capabilities(&self) -> Result<CapabilitiesResponse, RpcCallError> {
        self.node
            .call_to(&self.target, "get_capabilities", &GetCapabilitiesRequest {})
            .await
    }
    async fn shutdown(&self, request: ShutdownRequest) -> Result<ShutdownResponse, RpcCallError> {
        let limit = request.deadline + std::time::Duration::from_secs(1);
        let params =
            serde_json::to_vec(&request).map_err(|e| RpcCallError::Codec(e.to_string()))?;
        let reply = self
            .node
            .rpc_call_within(&self.target, "shutdown", params, limit)
            .await?;
        serde_json::from_slice(&reply).map_err(|e| RpcCallError::Codec(e.to_string()))
    }
}

/// Which path answered, for parity reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPath {
    /// Calls the collector in this process.
    InProcess,
    /// Calls the collector over busrt RPC.
    Rpc,
}

/// Phase 3 parity for control: read-only operations go to both paths and are compared (the
/// authoritative answer is returned); state-changing operations go once, to the path the
/// phase makes authoritative (RPC from phase 3 on, in-process before).
pub struct PhasedControl {
    phase: Phase,
    local: Arc<dyn CollectorControl>,
    remote: Arc<dyn CollectorControl>,
    compared: AtomicU64,
    mismatches: Mutex<Vec<String>>,
}

impl PhasedControl {
    /// Lifecycle control for `phase`: in process, or over RPC with the in-process answers compared.
    pub fn new(
        phase: Phase,
        local: Arc<dyn CollectorControl>,
        remote: Arc<dyn CollectorControl>,
    ) -> Self {
        Self {
            phase,
            local,
            remote,
            compared: AtomicU64::new(0),
            mismatches: Mutex::new(Vec::new()),
        }
    }

    /// The path whose answers count.
    pub fn authoritative(&self) -> ControlPath {
        if self.phase.rpc_over_busrt() {
            ControlPath::Rpc
        } else {
            ControlPath::InProcess
        }
    }

    fn primary(&self) -> &Arc<dyn CollectorControl> {
        match self.authoritative() {
            ControlPath::Rpc => &self.remote,
            ControlPath::InProcess => &self.local,
        }
    }

    /// (comparisons, mismatch descriptions) so far.
    pub fn parity(&self) -> (u64, Vec<String>) {
        (self.compared.load(Relaxed), self.mismatches.lock().clone())
    }

    fn compare<T: PartialEq + std::fmt::Debug>(
        &self,
        op: &str,
        local: &Result<T, RpcCallError>,
        remote: &Result<T, RpcCallError>,
    ) {
        self.compared.fetch_add(1, Relaxed);
        if local != remote {
            let m = format!("{op}: in-process {local:?} != rpc {remote:?}");
            tracing::warn!("control parity mismatch: {m}");
            self.mismatches.lock().push(m);
        }
    }
}

#[async_trait]
impl CollectorControl for PhasedControl {
    async fn health_check(&self) -> Result<HealthCheckResponse, RpcCallError> {
        let (l, r) = tokio::join!(self.local.health_check(), self.remote.health_check());
        // Uptime and counters move between the two calls: compare what must agree.
        let key = |x: &Result<HealthCheckResponse, RpcCallError>| {
            x.as_ref()
                .map(|h| (h.status.clone(), h.collecting))
                .map_err(Clone::clone)
        };
        self.compare("health_check", &key(&l), &key(&r));
        match self.authoritative() {
            ControlPath::Rpc => r,
            ControlPath::InProcess => l,
        }
    }
    async fn start_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        self.primary().start_collection().await
    }
    async fn stop_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        self.primary().stop_collection().await
    }
    async fn update_config(
        &self,
        config: CollectorSettings,
    ) -> Result<UpdateConfigResponse, RpcCallError> {
        self.primary().update_config(config).await
    }
    async fn get_capabilities(&self) -> Result<CapabilitiesResponse, RpcCallError> {
        let (l, r) = tokio::join!(
            self.local.get_capabilities(),
            self.remote.get_capabilities()
        );
        self.compare("get_capabilities", &l, &r);
        match self.authoritative() {
            ControlPath::Rpc => r,
            ControlPath::InProcess => l,
        }
    }
    async fn shutdown(&self, request: ShutdownRequest) -> Result<ShutdownResponse, RpcCallError> {
        self.primary().shutdown(request).await
    }
}
