//! The two legacy facades, unchanged in names and signatures, over busbridge's one core.
//!
//! | legacy import                                  | busbridge import                                   |
//! |------------------------------------------------|----------------------------------------------------|
//! | `collector_core::HighPerformanceEventBus` & co | [`busbridge::legacy::crossbeam`](crate::legacy::crossbeam) |
//! | `collector_core::EventBus`, `LocalEventBus` & co | [`busbridge::legacy::tokio`](crate::legacy::tokio) |
//!
//! Both re-export the domain types under their old names, so only `use` lines change.
//! `anyhow::Result` stays in these traits because the legacy signatures used it.

pub mod crossbeam;
pub mod tokio;
