//! A real process collector (`procmond` style): scans this machine's processes and publishes
//! them as process events, controlled through [`CollectorControl`] in process or over RPC
//! (`busbridge collector`).

use crate::bus::Core;
use crate::event::{CollectionEvent, SourceCaps};
use crate::procscan::ProcessScanner;
use crate::rpc::*;
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// A process collector publishing through a bus core.
pub struct ProcessCollector {
    name: String,
    core: Arc<Core>,
    settings: RwLock<CollectorSettings>,
    collecting: AtomicBool,
    stopping: AtomicBool,
    started: Instant,
    published: AtomicU64,
    scans: AtomicU64,
    last_error: Mutex<Option<String>>,
    wake: Notify,
    done: Notify,
    /// Held while a scan publishes: `stop_collection` waits on it, so once it has answered
    /// nothing more is published.
    scanning: tokio::sync::Mutex<()>,
}

impl ProcessCollector {
    /// A stopped collector named `name` that publishes through `core`.
    pub fn new(name: impl Into<String>, core: Arc<Core>, settings: CollectorSettings) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            core,
            settings: RwLock::new(settings),
            collecting: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            published: AtomicU64::new(0),
            scans: AtomicU64::new(0),
            last_error: Mutex::new(None),
            wake: Notify::new(),
            done: Notify::new(),
            scanning: tokio::sync::Mutex::new(()),
        })
    }

    /// Scans completed so far.
    pub fn scans(&self) -> u64 {
        self.scans.load(Relaxed)
    }

    /// Waits until a `shutdown` has been answered.
    pub async fn stopped(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.stopping.load(Relaxed) {
                return;
            }
            done.await;
        }
    }

    /// The scan loop: runs until shutdown; idle (no CPU) while not collecting.
    pub async fn run(self: Arc<Self>) {
        let mut scanner = ProcessScanner::new();
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.stopping.load(Relaxed) {
                return;
            }
            if !self.collecting.load(Relaxed) {
                wake.await;
                continue;
            }
            let settings = self.settings.read().clone();
            self.scan_once(&mut scanner, &settings).await;
            // The interval is the collector's pace, not a synchronisation; a control call
            // wakes it early.
            let _ = tokio::time::timeout(settings.interval, wake).await;
        }
    }

    async fn scan_once(&self, scanner: &mut ProcessScanner, settings: &CollectorSettings) {
        let _scanning = self.scanning.lock().await;
        let scan = self.scans.fetch_add(1, Relaxed) + 1;
        let events = scanner
            .scan()
            .into_iter()
            .filter(|p| {
                settings
                    .name_contains
                    .as_ref()
                    .is_none_or(|n| p.name.contains(n.as_str()))
                    && p.memory_usage.unwrap_or(0) >= settings.min_memory_bytes
            })
            .take(settings.max_events_per_scan);
        for p in events {
            if !self.collecting.load(Relaxed) {
                break;
            }
            let env = self.core.envelope(
                CollectionEvent::Process(p),
                format!("{}-scan-{scan}", self.name),
            );
            match self.core.publish(env).await {
                Ok(_) => {
                    self.published.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    tracing::warn!("publish failed: {e}");
                    *self.last_error.lock() = Some(e.to_string());
                }
            }
        }
    }

    fn queue_depth(&self) -> u64 {
        (self.core.router().queued() + self.core.in_flight()) as u64
    }

    fn set_collecting(&self, on: bool) -> CollectionStateResponse {
        let was = self.collecting.swap(on, Relaxed);
        self.wake.notify_waiters();
        CollectionStateResponse {
            collecting: on,
            changed: was != on,
        }
    }
}

#[async_trait]
impl CollectorControl for ProcessCollector {
    async fn health_check(&self) -> Result<HealthCheckResponse, RpcCallError> {
        let last_error = self.last_error.lock().clone();
        Ok(HealthCheckResponse {
            status: if self.stopping.load(Relaxed) {
                "stopping"
            } else if last_error.is_some() {
                "degraded"
            } else {
                "healthy"
            }
            .into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            collecting: self.collecting.load(Relaxed),
            events_published: self.published.load(Relaxed),
            queue_depth: self.queue_depth(),
            last_error,
        })
    }

    async fn start_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        if self.stopping.load(Relaxed) {
            return Err(RpcCallError::Handler(
                "the collector is shutting down".into(),
            ));
        }
        Ok(self.set_collecting(true))
    }

    async fn stop_collection(&self) -> Result<CollectionStateResponse, RpcCallError> {
        let state = self.set_collecting(false);
        drop(self.scanning.lock().await);
        Ok(state)
    }

    async fn update_config(
        &self,
        config: CollectorSettings,
    ) -> Result<UpdateConfigResponse, RpcCallError> {
        config.validate().map_err(RpcCallError::InvalidParams)?;
        *self.settings.write() = config.clone();
        self.wake.notify_waiters();
        Ok(UpdateConfigResponse { config })
    }

    async fn get_capabilities(&self) -> Result<CapabilitiesResponse, RpcCallError> {
        let settings = self.settings.read().clone();
        let mut capabilities = SourceCaps::PROCESS;
        if settings.name_contains.is_none() && settings.min_memory_bytes == 0 {
            capabilities |= SourceCaps::SYSTEM_WIDE;
        }
        Ok(CapabilitiesResponse {
            collector: self.name.clone(),
            capabilities,
            topics: vec!["events.process.new".into()],
        })
    }

    async fn shutdown(&self, request: ShutdownRequest) -> Result<ShutdownResponse, RpcCallError> {
        self.set_collecting(false);
        drop(self.scanning.lock().await);
        let flushed = tokio::time::timeout(request.deadline, self.core.drained())
            .await
            .is_ok();
        self.stopping.store(true, Relaxed);
        self.wake.notify_waiters();
        self.done.notify_waiters();
        Ok(ShutdownResponse {
            flushed,
            events_published: self.published.load(Relaxed),
        })
    }
}
