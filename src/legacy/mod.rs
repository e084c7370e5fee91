//! The legacy facades, one module per version of the legacy buses, unchanged in names and
//! signatures, all over busbridge's one core (so buses of different versions, in one process
//! or in several, exchange events through the same bridge and phases).
//!
//! Pick the module by the date of the code you have:
//!
//! | your code was written against | it imported | import from |
//! |---|---|---|
//! | the crossbeam bus, 2025-09 | `collector_core::{HighPerformanceEventBus, ...}` | [`busbridge::legacy::crossbeam`](crate::legacy::crossbeam) |
//! | the crossbeam bus, final (2025-10 … 2026-04, `Receiver<Arc<BusEvent>>`) | `collector_core::{HighPerformanceEventBus, ...}` | [`busbridge::legacy::crossbeam_2026_04`](crate::legacy::crossbeam_2026_04) |
//! | the tokio bus, 2025-09 | `collector_core::{EventBus, LocalEventBus, ...}` | [`busbridge::legacy::tokio`](crate::legacy::tokio) |
//! | the tokio bus, 2025-10 (`topic_patterns`) | `collector_core::{EventBus, LocalEventBus, ...}` | [`busbridge::legacy::tokio_2025_10`](crate::legacy::tokio_2025_10) |
//!
//! Each re-exports the domain types under their old names, so only `use` lines change.
//! `anyhow::Result` stays in these traits because the legacy signatures used it.
//!
//! Each bus also has `publish` as an inherent method, which method syntax on the bus itself
//! picks: the same call as the trait's, without the boxed future that the trait's
//! `async_trait` signature allocates for every event. The trait's `publish` (for `dyn` and
//! generic callers) calls it.

pub mod crossbeam;
pub mod crossbeam_2026_04;
pub mod tokio;
pub mod tokio_2025_10;
