//! The tokio facade (`EventBus` / `LocalEventBus`): its own filters, lifecycle and replay,
//! run through every version of the tokio bus (2025-09 and 2025-10).

#![cfg(all(feature = "legacy", feature = "cli"))]

mod common;

/// The 2025-09 tokio bus.
mod v2025_09 {
    use super::common::*;
    use busbridge::legacy::tokio::*;
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio::sync::mpsc::Receiver;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    fn sub(id: &str) -> EventSubscription {
        EventSubscription {
            subscriber_id: id.into(),
            capabilities: SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
        }
    }

    include!("legacy_tokio/scenarios.rs");
}

/// The 2025-10 tokio bus: the same scenarios, subscriptions without topic patterns.
mod v2025_10 {
    use super::common::*;
    use busbridge::legacy::tokio_2025_10::*;
    use std::collections::HashMap;
    use std::time::Duration;
    use tokio::sync::mpsc::Receiver;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    fn sub(id: &str) -> EventSubscription {
        EventSubscription {
            subscriber_id: id.into(),
            capabilities: SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
            topic_patterns: None,
            enable_wildcards: true,
        }
    }

    include!("legacy_tokio/scenarios.rs");
}
