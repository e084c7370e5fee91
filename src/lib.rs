//! # busbridge
//!
//! The legacy DaemonEye event-bus API, unchanged, over the [busrt](https://crates.io/crates/busrt)
//! IPC broker: a drop-in for existing code, a two-way bridge between the legacy bus and busrt
//! topics, a migration in phases switched at run time (0–4, then 5 for multi-process
//! collectors), and parity checks that prove each phase against the old path.
//!
//! ```
//! # #[cfg(feature = "legacy")]
//! # fn main() { tokio::runtime::Runtime::new().unwrap().block_on(async {
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
//! # anyhow::Ok(()) }).unwrap(); }
//! # #[cfg(not(feature = "legacy"))]
//! # fn main() {}
//! ```
//!
//! ## Cargo features
//!
//! - `legacy` (default): the crossbeam and tokio facades ([`legacy`]) and the legacy router as
//!   the control path of phases 0–3. Pulls in crossbeam-channel.
//! - `busrt` (default): the busrt transport, bridge and RPC.
//! - `cli` (default): the command-line tool and what only it needs (clap,
//!   tracing-subscriber, tempfile, sysinfo, mimalloc), with [`collector`], [`procscan`] and
//!   [`scenario`]. A library user turns it off: `default-features = false, features =
//!   ["legacy", "busrt"]`.
//! - `nats` (default): the fleet uplink to NATS JetStream ([`fleet`]), with async-nats.
//!
//! Features only add code; the migration phase ([`phase::Phase`]) is chosen at run time.
//! Phase 4 is the build without `legacy`: `--no-default-features --features busrt` has no
//! crossbeam-channel, and [`EventBus`] with [`queue::Receiver`] serves the same call sites.
//! (`crossbeam-utils` stays in that tree as a dependency of busrt itself, through
//! async-channel and concurrent-queue: it is not a channel and busbridge does not use it.)
//!
//! ## Modules
//!
//! - [`event`]: the domain types. [`topic`]: dotted topics and patterns, the event → topic
//!   table. [`codec`]: the envelope, protobuf and JSON. [`config`]: TOML configuration.
//! - [`router`]: the subscriber table and delivery. [`bus`]: the core every facade publishes
//!   through, and the [`bus::Uplink`] trait a bridge implements. [`eventbus`]: the phase-4
//!   [`EventBus`]. [`queue`]: busbridge's own bounded receiver. [`stats`]: counters.
//! - [`phase`]: the migration phase switch. [`bridge`]: the bridge, its protocol as a state
//!   machine without I/O ([`bridge::protocol`]) and the async driver. [`observe`]: observers
//!   around routing; [`parity`]: the parity engine; [`trace`]: record and replay.
//! - [`broker`], [`client`], [`endpoint`], [`tls`]: the busrt transport and mutual TLS.
//!   [`sequence`]: per-origin duplicate and gap tracking.
//! - [`task`]: phase 5, multi-process collectors: registry, dispatch, aggregation.
//! - [`rpc`]: typed RPC and the `CollectorControl` lifecycle operations; [`collector`]: a real
//!   process collector; [`procscan`]: this machine's processes as events.
//! - [`fleet`] (feature `nats`): each host's broker uplinked to NATS JetStream, tasks from
//!   the centre to any host's collectors.
//! - [`scenario`] (feature `cli`): deterministic sample events and subscriptions for the
//!   demo, the parity scenarios and tests.
//!
//! ## Design notes
//!
//! busbridge follows the starting design (one routing core under both facades, a phase enum
//! that decides the route, an envelope with origin id and sequence) with these choices, each
//! made for a reason found while building it:
//!
//! - **Dependencies point one way.** The core ([`bus`]) defines what it needs from a bridge
//!   as a trait ([`bus::Uplink`]) that the bridge implements, as rumqttd's router defines the
//!   messages its links import; facades sit above both. The first version had the core call
//!   into the bridge and the bridge call back into the core, which made neither testable
//!   alone.
//! - **The bridge protocol is a state machine without I/O** ([`bridge::protocol`], quinn-proto's
//!   lesson): numbering, owed returns, the replay buffer, gap holds, heartbeats, hellos and
//!   resend requests take `now` as an argument and hand out what to send and deliver. The
//!   driver ([`bridge::Link`]) only moves bytes and wakes at the deadline it is given. This
//!   is what lets the protocol be tested on a simulated clock with frames lost, duplicated
//!   and reordered (`tests/protocol_sim.rs`), thousands of cases in seconds.
//! - **Parity and recording are observers** ([`observe`]) around routing, branched in one
//!   place; the recorder writes on its own thread through a bounded queue (drops counted),
//!   never on the publishing task.
//! - **Each facade keeps its own subscriber limit** ([`bus::Quota`]) on a shared core.
//! - **Delivery on the publisher's task, no routing thread.** The legacy crossbeam bus routed on
//!   a thread that spun in a back-off loop; delivering inline keeps per-subscriber order, costs
//!   nothing when idle and removes a hop. Subscriber lists are copy-on-write so publishers never
//!   hold a lock while a `Blocking` subscriber makes them wait.
//! - **Crossbeam queues are unbounded channels bounded by the router.** A bounded crossbeam
//!   channel allocates every slot up front (about 300 MiB per subscriber at the legacy default
//!   capacity); the router checks `len()` against `channel_capacity` instead. `DropOldest` keeps
//!   a clone of the receiver to discard from.
//! - **Phase 2 delivers local events through busrt.** A local publish reaches local subscribers
//!   when it comes back from the broker, so busrt really is the route being verified. The bridge
//!   remembers which of its own events are owed a delivery by their echo; that is what makes
//!   phase switches lossless and order-preserving. A bridge subscribes to the event topics
//!   only once it has a local subscriber, so a bus that only publishes gets no echoes.
//! - **Every external connection goes through busbridge's own accept loop.** busrt has no
//!   connection limit, no peer-credential check and no TLS on TCP; owning the accept is the
//!   only way to add them without forking busrt. A checked Unix connection is then busrt's
//!   own (`spawn_server_connection`), watched through a duplicate descriptor for its hang-up
//!   (the count) and for a forced close; TCP and TLS connections are relayed over a socket
//!   pair, one extra local copy per byte (busrt serves only Unix streams it did not accept).
//! - **`QoS::Processed` maps to busrt `RealtimeProcessed`**, not `Processed`: an acknowledged
//!   publish should not wait for busrt's flush timer.
//! - **The protobuf messages are the legacy records themselves**, with busbridge's additions
//!   (sub-millisecond time, platform metadata, the envelope header at field 100) under new
//!   field numbers, so a legacy decoder reads them unchanged.
//! - **Phase 4 is a build without `legacy`**, and the phase is otherwise a run-time setting:
//!   Cargo features are additive, so they cannot select between exclusive phases.
//! - **Batching is greedy and off by default.** The sender takes what is queued when it is
//!   ready (up to `bus.batch_max`, one topic per frame), so an idle bus sends each event at once
//!   and no event ever waits for a timer (the 100 ms flush bound is met trivially). It is off
//!   by default because a batch frame is not a legacy record that old consumers can decode.
//! - **busrt's write buffers are flushed with no delay** (`broker.flush_delay`,
//!   `client.flush_delay`, default zero). A frame sent while more follow still waits in
//!   busrt's buffer until its flusher task runs, which is after the burst, so a burst is one
//!   write; busrt's default 10 µs delay sent every burst through a timer thread instead.
//! - **Publish from a task on the runtime**, not from the thread that calls `block_on`: each
//!   publish hands the event to the bridge's sender task, and from outside the worker pool
//!   that is a wake-up across threads. A steady stream cost about twice the CPU that way
//!   (README, Performance), raw busrt's too.
//! - **Keepalive is an acknowledged round trip.** busrt's `ping` is one-way and succeeds into
//!   a dead network; an acknowledged no-op is what notices a silent partition.
//! - **Gaps are filled by receiver-driven resend** from a bounded replay buffer at the origin,
//!   rather than by persisting events: a busrt broker keeps nothing, and the publisher is the
//!   only one that still has the bytes.
//! - **Beyond one host, an uplink to NATS JetStream, not a cluster of brokers** ([`fleet`]):
//!   JetStream already replicates, persists and deduplicates by message id, which is exactly
//!   busbridge's (origin, sequence) identity. The uplink is a durable subscriber with an
//!   on-disk spool, so the host side needs nothing busbridge did not already have.
//! - **A restarted subscriber resumes from positions it stores with its output**
//!   ([`durable`]): the legacy API has no acknowledgements, so only the subscriber knows what it
//!   processed; the bridge turns its positions into resend requests.

#![warn(missing_docs)]

#[cfg(feature = "busrt")]
pub mod bridge;
#[cfg(feature = "busrt")]
pub mod broker;
pub mod bus;
#[cfg(feature = "busrt")]
pub mod client;
pub mod codec;
#[cfg(feature = "cli")]
pub mod collector;
pub mod config;
pub mod durable;
pub mod endpoint;
pub mod event;
pub mod eventbus;
#[cfg(feature = "nats")]
pub mod fleet;
#[cfg(feature = "legacy")]
pub mod legacy;
#[cfg(feature = "busrt")]
pub mod metrics;
pub mod observe;
pub mod parity;
pub mod phase;
#[cfg(feature = "cli")]
pub mod procscan;
pub mod queue;
pub mod router;
#[cfg(feature = "busrt")]
pub mod rpc;
#[cfg(any(test, feature = "cli"))]
pub mod scenario;
pub mod sequence;
pub mod stats;
pub mod subscription;
#[cfg(feature = "busrt")]
pub mod task;
#[cfg(feature = "busrt")]
pub mod tls;
pub mod topic;
pub mod trace;

#[cfg(feature = "busrt")]
pub use broker::Broker;
pub use bus::BusError;
#[cfg(feature = "busrt")]
pub use client::{connect_with_retry, AsyncClient, Message, QoS};
pub use eventbus::{EventBus, EventBusConfig};
pub use queue::Receiver;
pub use subscription::{
    BackpressureStrategy, BusEvent, EventBusStatistics, EventFilter, EventSubscription,
};
