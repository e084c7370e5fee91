//! A deliberately broken candidate: each kind of mismatch is caught and named.
#![cfg(feature = "cli")]

use busbridge::event::CollectionEvent;
use busbridge::parity::{MismatchKind, Parity, ParityConfig};
use busbridge::scenario::sample_envelope;

#[test]
fn each_kind_of_broken_candidate_is_caught() {
    let parity = Parity::new(ParityConfig::default());
    let events: Vec<_> = (0..6)
        .map(|i| sample_envelope("p", i, "procmond"))
        .collect();
    for e in &events {
        parity.record_control("detector", e);
    }
    // 0: a dropped field (the old DaemonEye adapter's defect).
    let mut dropped = events[0].clone();
    if let CollectionEvent::Process(p) = &mut dropped.event {
        p.cpu_usage = None;
    }
    parity.record_candidate("detector", &dropped);
    // 2 before 1: a reordered pair.
    parity.record_candidate("detector", &events[2]);
    parity.record_candidate("detector", &events[1]);
    // 3: missed. 4, 5: fine. Then one the control never delivered: extra.
    parity.record_candidate("detector", &events[4]);
    parity.record_candidate("detector", &events[5]);
    parity.record_candidate("detector", &sample_envelope("intruder", 0, "x"));
    let report = parity.finish();
    let kinds: Vec<_> = report
        .mismatches
        .iter()
        .map(|m| (m.event_id.as_str(), &m.kind))
        .collect();
    assert!(
        matches!(kinds[0], ("p-0", MismatchKind::Field { field, .. }) if field == "event.Process.cpu_usage"),
        "{kinds:?}"
    );
    assert_eq!(kinds[1], ("p-1", &MismatchKind::Reordered));
    assert_eq!(kinds[2], ("p-3", &MismatchKind::Missing));
    assert_eq!(kinds[3], ("intruder-0", &MismatchKind::Extra));
    assert_eq!(report.mismatch_count, 4);
    assert!(report.mismatches.iter().all(|m| m.subscriber == "detector"));
}

#[test]
fn aa_mode_same_path_twice_is_clean() {
    // A/A: the control compared with itself measures the noise of the comparison.
    let parity = Parity::new(ParityConfig::default());
    for i in 0..100 {
        let e = sample_envelope("aa", i, "procmond");
        parity.record_control("s", &e);
        parity.record_candidate("s", &e.clone());
    }
    let r = parity.finish();
    assert!(r.is_clean() && r.compared == 100);
}

#[cfg(feature = "legacy")]
#[tokio::test]
async fn aa_mode_on_a_live_bus_measures_zero_noise() {
    use busbridge::bus::{Core, CoreOptions};
    use busbridge::legacy::crossbeam::*;
    use std::sync::Arc;
    let core = Arc::new(Core::new(CoreOptions {
        parity: ParityConfig {
            aa: true,
            ..Default::default()
        },
        ..Default::default()
    }));
    let bus = HighPerformanceEventBusImpl::with_core(core.clone(), Default::default());
    let rx = bus
        .subscribe(EventSubscription {
            subscriber_id: "s".into(),
            capabilities: SourceCaps::all(),
            event_filter: None,
            correlation_filter: None,
        })
        .await
        .unwrap();
    for i in 0..50 {
        bus.publish(busbridge::scenario::sample_event("aa", i), String::new())
            .await
            .unwrap();
    }
    assert_eq!(rx.try_iter().count(), 50);
    let r = core.parity().finish();
    assert!(r.is_clean() && r.compared == 50, "{r:?}");
    assert_eq!(bus.stats().parity_compared, 50);
}
