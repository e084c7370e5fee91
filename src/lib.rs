//! # busbridge
//!
//! The legacy DaemonEye event-bus API, unchanged, over the [busrt](https://crates.io/crates/busrt)
//! IPC broker: a drop-in for existing code, a two-way bridge between the legacy bus and busrt
//! topics, a migration in four phases switched at run time, and parity checks that prove each
//! phase against the old path.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // Before: use collector_core::{HighPerformanceEventBus, HighPerformanceEventBusImpl, ...};
//! use busbridge::legacy::crossbeam::{
//!     CollectionEvent, EventSubscription, HighPerformanceEventBus, HighPerformanceEventBusConfig,
//!     HighPerformanceEventBusImpl, ProcessEvent, SourceCaps,
//! };
//! let bus = HighPerformanceEventBusImpl::new(HighPerformanceEventBusConfig::default()).await?;
//! let rx = bus.subscribe(EventSubscription {
//!     subscriber_id: "detector".into(),
//!     capabilities: SourceCaps::PROCESS,
//!     event_filter: None,
//!     correlation_filter: None,
//! }).await?;
//! let event = CollectionEvent::Process(ProcessEvent {
//!     pid: 1, ppid: None, name: "init".into(), executable_path: None, command_line: vec![],
//!     start_time: None, cpu_usage: None, memory_usage: None, executable_hash: None,
//!     user_id: None, accessible: true, file_exists: true,
//!     timestamp: std::time::SystemTime::now(), platform_metadata: None,
//! });
//! bus.publish(event.clone(), "scan-1".into()).await?;
//! assert_eq!(rx.recv()?.event, event);
//! # anyhow::Ok(()) }).unwrap();
//! ```
//!
//! ## Cargo features
//!
//! - `legacy` (default): the crossbeam and tokio facades ([`legacy`]) and the legacy router as
//!   the control path of phases 0–3. Pulls in crossbeam-channel.
//! - `busrt` (default): the busrt transport, bridge and RPC.
//!
//! Features only add code; the migration phase ([`phase::Phase`]) is chosen at run time.
//! Phase 4 is the build without `legacy`: `--no-default-features --features busrt` has no
//! crossbeam crate, and [`EventBus`] with [`queue::Receiver`] serves the same call sites.
//!
//! ## Modules
//!
//! - [`event`]: the domain types. [`topic`]: dotted topics and patterns, the event → topic
//!   table. [`codec`]: the envelope, protobuf and JSON. [`config`]: TOML configuration.
//! - [`router`]: the one routing core. [`bus`]: the core and the phase-4 [`EventBus`].
//!   [`queue`]: busbridge's own bounded receiver. [`stats`]: counters.
//! - [`phase`]: the migration phase switch.

#[cfg(feature = "busrt")]
pub mod bridge;
#[cfg(feature = "busrt")]
pub mod broker;
pub mod bus;
#[cfg(feature = "busrt")]
pub mod client;
pub mod codec;
pub mod config;
pub mod endpoint;
pub mod event;
#[cfg(feature = "legacy")]
pub mod legacy;
pub mod parity;
pub mod phase;
pub mod procscan;
pub mod queue;
pub mod router;
pub mod scenario;
pub mod stats;
pub mod subscription;
pub mod topic;
pub mod trace;

#[cfg(feature = "busrt")]
pub use broker::Broker;
pub use bus::{BusError, EventBus, EventBusConfig};
#[cfg(feature = "busrt")]
pub use client::{connect_with_retry, AsyncClient, Message, QoS};
pub use queue::Receiver;
pub use subscription::{
    BackpressureStrategy, BusEvent, EventBusStatistics, EventFilter, EventSubscription,
};
