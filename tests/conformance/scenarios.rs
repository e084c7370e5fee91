//! The conformance scenarios: written once against the `HighPerformanceEventBus` face, run
//! against every backend (see `conformance.rs`), and through the 2026-04 facade
//! (`scenarios_2026_04.rs`, the shared part in `body.rs`). Modelled on crossbeam-channel's ported suites:
//! same scenarios, same expected deliveries, whatever is underneath.
#![allow(dead_code)]

use super::common::*;
use async_trait::async_trait;
use busbridge::legacy::crossbeam::*;
use crossbeam_channel::Receiver;
use std::time::{Duration, Instant};

pub fn sub(id: &str, caps: SourceCaps) -> EventSubscription {
    EventSubscription {
        subscriber_id: id.into(),
        capabilities: caps,
        event_filter: None,
        correlation_filter: None,
    }
}

fn small(strategy: BackpressureStrategy) -> HighPerformanceEventBusConfig {
    HighPerformanceEventBusConfig {
        channel_capacity: 4,
        backpressure_strategy: strategy,
        ..Default::default()
    }
}

/// Publishes 10 events to a subscriber that does not read, then reads.
async fn overflow(b: &dyn Backend, strategy: BackpressureStrategy) -> (Vec<u32>, u64) {
    let bus = b.bus(small(strategy)).await;
    let rx = bus.subscribe(sub("slow", all_caps())).await.unwrap();
    for i in 0..10 {
        bus.publish(process(i), String::new()).await.unwrap();
    }
    b.settle(bus.as_ref()).await;
    let pids = rx.try_iter().map(|e| e.event.pid().unwrap()).collect();
    (pids, bus.get_statistics().await.events_dropped)
}

pub async fn drop_newest_keeps_the_first(b: &dyn Backend) {
    assert_eq!(
        overflow(b, BackpressureStrategy::DropNewest).await,
        (vec![0, 1, 2, 3], 6)
    );
}

pub async fn drop_oldest_keeps_the_last(b: &dyn Backend) {
    assert_eq!(
        overflow(b, BackpressureStrategy::DropOldest).await,
        (vec![6, 7, 8, 9], 6)
    );
}

/// Events published before anyone reads (the default queue holds 1,048,576).
const BURST: u32 = 2000;

include!("body.rs");

/// Lists every scenario for the `conformance_suite!` macro.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::scenarios;
            $crate::conformance_suite!(@tests $backend;
                every_kind_arrives_with_every_field, capability_routing, event_type_filter,
                min_priority_filter, source_filter, correlation_filter,
                several_subscribers_in_order, drop_newest_keeps_the_first,
                drop_oldest_keeps_the_last, blocking_waits_and_loses_nothing,
                dropped_receiver_is_removed_and_counted, max_subscribers_is_enforced,
                shutdown_disconnects_and_refuses);
        }
    };
    (@tests $backend:expr; $($scenario:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let backend = $backend;
                scenarios::$scenario(&backend).await;
            }
        )*
    };
}
