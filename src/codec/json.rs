//! The JSON encoding: one object with the envelope fields and the event, as serde writes it.

use super::{CodecError, Envelope, EventExtra, ENVELOPE_VERSION};
use crate::event::CollectionEvent;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::SystemTime;

#[derive(Serialize, Deserialize)]
struct JsonEnvelope<'a> {
    v: u32,
    origin: Cow<'a, str>,
    seq: u64,
    hops: u32,
    event_id: Cow<'a, str>,
    correlation_id: Cow<'a, str>,
    publisher_id: Cow<'a, str>,
    timestamp: SystemTime,
    priority: u8,
    #[serde(default)]
    routing_metadata: Cow<'a, HashMap<String, String>>,
    event: Cow<'a, CollectionEvent>,
    #[serde(default, skip_serializing_if = "EventExtra::is_empty")]
    extra: Cow<'a, EventExtra>,
    /// `platform_metadata: Some(null)` reads back as `None` through serde's `Option`; this
    /// flag keeps the difference.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    metadata_null: bool,
}

fn metadata_is_null(event: &CollectionEvent) -> bool {
    matches!(event, CollectionEvent::Process(p) if p.platform_metadata == Some(serde_json::Value::Null))
}

/// JSON has no NaN or infinity (serde_json would silently write `null`): refuse them.
fn check_finite(event: &CollectionEvent) -> Result<(), CodecError> {
    let ok = |v: f64, field| {
        if v.is_finite() {
            Ok(())
        } else {
            Err(CodecError::NonFinite(field))
        }
    };
    match event {
        CollectionEvent::Process(p) => p.cpu_usage.map_or(Ok(()), |v| ok(v, "cpu_usage")),
        CollectionEvent::Performance(p) => ok(p.value, "value"),
        _ => Ok(()),
    }
}

pub(super) fn encode(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    check_finite(&env.event)?;
    Ok(serde_json::to_vec(&JsonEnvelope {
        v: ENVELOPE_VERSION,
        origin: Cow::Borrowed(&env.origin),
        seq: env.seq,
        hops: env.hops,
        event_id: Cow::Borrowed(&env.event_id),
        correlation_id: Cow::Borrowed(&env.correlation_id),
        publisher_id: Cow::Borrowed(&env.publisher_id),
        timestamp: env.timestamp,
        priority: env.priority,
        routing_metadata: Cow::Borrowed(&env.routing_metadata),
        event: Cow::Borrowed(&env.event),
        extra: Cow::Borrowed(&env.extra),
        metadata_null: metadata_is_null(&env.event),
    })?)
}

/// Wraps already-encoded JSON envelopes into one batch object.
pub(super) fn batch<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = format!("{{\"v\":{ENVELOPE_VERSION},\"batch\":[").into_bytes();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Reads the version first, so a newer envelope gets a version error, not a field error.
#[derive(Deserialize)]
struct Probe<'a> {
    v: Option<u32>,
    #[serde(borrow)]
    batch: Option<Vec<&'a serde_json::value::RawValue>>,
}

fn probe(bytes: &[u8]) -> Result<Probe<'_>, CodecError> {
    let p: Probe = serde_json::from_slice(bytes)?;
    match p.v {
        None => Err(CodecError::NotAnEnvelope("JSON object without `v`")),
        Some(ENVELOPE_VERSION) => Ok(p),
        Some(v) => Err(CodecError::UnsupportedVersion(v)),
    }
}

/// The items of a batch frame, or `None` if the frame is a single envelope.
pub(super) fn unbatch(bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, CodecError> {
    Ok(probe(bytes)?
        .batch
        .map(|items| items.iter().map(|r| r.get().as_bytes().to_vec()).collect()))
}

pub(super) fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    if probe(bytes)?.batch.is_some() {
        return Err(CodecError::NotAnEnvelope(
            "a batch where one envelope was expected",
        ));
    }
    let j: JsonEnvelope<'static> = serde_json::from_slice(bytes)?;
    let mut event = j.event.into_owned();
    if j.metadata_null {
        if let CollectionEvent::Process(p) = &mut event {
            p.platform_metadata = Some(serde_json::Value::Null);
        }
    }
    Ok(Envelope {
        origin: j.origin.into_owned(),
        seq: j.seq,
        hops: j.hops,
        event_id: j.event_id.into_owned(),
        correlation_id: j.correlation_id.into_owned(),
        publisher_id: j.publisher_id.into_owned(),
        timestamp: j.timestamp,
        priority: j.priority,
        routing_metadata: j.routing_metadata.into_owned(),
        event,
        extra: j.extra.into_owned(),
    })
}
