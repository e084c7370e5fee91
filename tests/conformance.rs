//! The conformance suite against every backend: one line per backend.

mod common;
#[path = "conformance/scenarios.rs"]
mod scenarios;

use async_trait::async_trait;
use busbridge::legacy::crossbeam::*;
use scenarios::Backend;

/// The legacy router alone (phase 0), as `HighPerformanceEventBusImpl::new` builds it.
struct LegacyRouter;

#[async_trait]
impl Backend for LegacyRouter {
    async fn bus(&self, config: HighPerformanceEventBusConfig) -> Box<dyn HighPerformanceEventBus> {
        Box::new(HighPerformanceEventBusImpl::new(config).await.unwrap())
    }
}

conformance_suite!(legacy_router, super::LegacyRouter);
