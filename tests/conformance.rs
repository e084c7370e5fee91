//! The conformance suite against every backend: one line per backend.

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;
#[path = "conformance/scenarios.rs"]
mod scenarios;
#[path = "conformance/scenarios_2026_04.rs"]
mod scenarios_2026_04;

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

/// A bridged bus in phase 2 (busrt authoritative), reaching the broker one way or another.
mod bridged {
    use super::*;
    use busbridge::bridge::{BridgeBuilder, Bridged};
    use busbridge::phase::Phase;
    use busbridge::Broker;
    use parking_lot::Mutex;
    use std::sync::Arc;

    pub enum Via {
        InProcess,
        UnixSocket,
        /// Unix socket with batching on (up to 500 events a frame) and a JSON codec.
        UnixBatchedJson,
        Tcp,
    }

    pub struct Busrt {
        via: Via,
        buses: Mutex<Vec<Arc<Bridged>>>,
        dir: tempfile::TempDir,
    }

    impl Busrt {
        pub fn new(via: Via) -> Self {
            Self {
                via,
                buses: Mutex::new(Vec::new()),
                dir: tempfile::tempdir().unwrap(),
            }
        }
    }

    #[async_trait]
    impl Backend for Busrt {
        async fn bus(
            &self,
            config: HighPerformanceEventBusConfig,
        ) -> Box<dyn HighPerformanceEventBus> {
            let mut broker = Broker::new();
            broker.set_name(uuid::Uuid::new_v4().to_string());
            let builder = BridgeBuilder::new().phase(Phase::Topics);
            let builder = match self.via {
                Via::InProcess => builder.embedded(broker),
                Via::UnixSocket | Via::UnixBatchedJson => {
                    let path = self
                        .dir
                        .path()
                        .join(format!("{}.sock", uuid::Uuid::new_v4()));
                    broker.spawn_ipc_server(&path, 10).unwrap();
                    broker.spawn().await.unwrap();
                    let b = builder.connect(format!("ipc://{}", path.display()));
                    std::mem::forget(broker); // lives for the test
                    b
                }
                Via::Tcp => {
                    broker.spawn_tcp_server("127.0.0.1:0", 10).unwrap();
                    broker.spawn().await.unwrap();
                    let b = builder.connect(format!("tcp://{}", broker.tcp_addrs()[0]));
                    std::mem::forget(broker);
                    b
                }
            };
            let builder = match self.via {
                Via::UnixBatchedJson => builder
                    .codec(busbridge::codec::CodecKind::Json)
                    .send_options(busbridge::bridge::SendOptions {
                        batch_max: 500,
                        ..Default::default()
                    }),
                _ => builder,
            };
            let bridged = Arc::new(builder.build().await.unwrap());
            self.buses.lock().push(bridged.clone());
            Box::new(bridged.crossbeam(config))
        }

        async fn settle(&self, _bus: &dyn HighPerformanceEventBus) {
            let buses: Vec<_> = self.buses.lock().clone();
            for b in buses {
                tokio::time::timeout(scenarios::LIMIT, b.link().settled())
                    .await
                    .expect("every echo back within the limit");
            }
        }
    }
}

conformance_suite!(
    busrt_in_process,
    super::bridged::Busrt::new(super::bridged::Via::InProcess)
);
conformance_suite!(
    busrt_unix_socket,
    super::bridged::Busrt::new(super::bridged::Via::UnixSocket)
);
conformance_suite!(
    busrt_tcp,
    super::bridged::Busrt::new(super::bridged::Via::Tcp)
);
conformance_suite!(
    busrt_unix_batched_json,
    super::bridged::Busrt::new(super::bridged::Via::UnixBatchedJson)
);

/// The final crossbeam facade (2026-04), on the legacy router and bridged over a Unix socket:
/// every shared scenario, and its own back-pressure (`DropNewest` per subscription).
mod crossbeam_2026_04 {
    use super::scenarios_2026_04 as scenarios;
    use async_trait::async_trait;
    use busbridge::legacy::crossbeam_2026_04::*;
    use parking_lot::Mutex;

    pub struct Facade {
        bridged: bool,
        buses: Mutex<Vec<busbridge::bridge::Bridged>>,
        dir: tempfile::TempDir,
    }

    impl Facade {
        pub fn new(bridged: bool) -> Self {
            Self {
                bridged,
                buses: Mutex::new(Vec::new()),
                dir: tempfile::tempdir().unwrap(),
            }
        }
    }

    #[async_trait]
    impl scenarios::Backend for Facade {
        async fn bus(
            &self,
            config: HighPerformanceEventBusConfig,
        ) -> Box<dyn HighPerformanceEventBus> {
            if !self.bridged {
                return Box::new(HighPerformanceEventBusImpl::new(config).await.unwrap());
            }
            let mut c = busbridge::config::Config {
                phase: busbridge::phase::Phase::Topics,
                ..Default::default()
            };
            c.transport.socket_path = self
                .dir
                .path()
                .join(format!("{}.sock", uuid::Uuid::new_v4()));
            let bridged = busbridge::bridge::Bridged::start(&c).await.unwrap();
            self.buses.lock().push(bridged.clone());
            Box::new(bridged.crossbeam_2026_04(config))
        }

        async fn settle(&self, _bus: &dyn HighPerformanceEventBus) {
            let buses: Vec<_> = self.buses.lock().clone();
            for b in buses {
                tokio::time::timeout(scenarios::LIMIT, b.link().settled())
                    .await
                    .expect("every echo back within the limit");
            }
        }
    }
}

macro_rules! suite_2026_04 {
    ($name:ident, $bridged:expr) => {
        mod $name {
            use super::scenarios_2026_04 as scenarios;
            crate::conformance_suite!(@tests super::crossbeam_2026_04::Facade::new($bridged);
                every_kind_arrives_with_every_field, capability_routing, event_type_filter,
                min_priority_filter, source_filter, correlation_filter,
                several_subscribers_in_order, drop_newest_keeps_the_first,
                blocking_waits_and_loses_nothing, dropped_receiver_is_removed_and_counted,
                max_subscribers_is_enforced, shutdown_disconnects_and_refuses);
        }
    };
}

suite_2026_04!(final_crossbeam_legacy_router, false);
suite_2026_04!(final_crossbeam_busrt_unix_socket, true);
