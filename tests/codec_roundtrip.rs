//! Every event round-trips through every codec with every field equal; a decoder that knows
//! only the legacy records reads busbridge's protobuf; arbitrary bytes never panic a decoder.
#![cfg(feature = "cli")]

mod common;

use busbridge::codec::{Codec, CodecError, CodecKind, Envelope, FrameBuffer};
use busbridge::event::CollectionEvent;
use common::*;
use proptest::prelude::*;
use prost::Message;

const KINDS: [CodecKind; 2] = [CodecKind::Protobuf, CodecKind::Json];

fn envelope(event: CollectionEvent) -> Envelope {
    let mut env = Envelope::new(event, "corr-1", "procmond");
    env.origin = "origin-a".into();
    env.seq = 42;
    env.hops = 1;
    env.timestamp = t(1_700_000_000, 1);
    env.routing_metadata.insert("k".into(), "v".into());
    env
}

#[test]
fn every_kind_round_trips_in_both_codecs() {
    for event in every_kind() {
        let env = envelope(event);
        for kind in KINDS {
            let codec = Codec::new(kind, 1 << 20);
            let bytes = codec.encode(&env).unwrap();
            assert_eq!(codec.decode(&bytes).unwrap(), env, "{kind:?}");
        }
    }
}

/// The legacy `ProcessRecord` as the old consumers compiled it: fields 1–14 only.
#[derive(Clone, PartialEq, Message)]
struct LegacyProcessRecord {
    #[prost(uint32, tag = "1")]
    pid: u32,
    #[prost(uint32, optional, tag = "2")]
    ppid: Option<u32>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, optional, tag = "4")]
    executable_path: Option<String>,
    #[prost(string, repeated, tag = "5")]
    command_line: Vec<String>,
    #[prost(int64, optional, tag = "6")]
    start_time: Option<i64>,
    #[prost(double, optional, tag = "7")]
    cpu_usage: Option<f64>,
    #[prost(uint64, optional, tag = "8")]
    memory_usage: Option<u64>,
    #[prost(string, optional, tag = "9")]
    executable_hash: Option<String>,
    #[prost(string, optional, tag = "10")]
    hash_algorithm: Option<String>,
    #[prost(string, optional, tag = "11")]
    user_id: Option<String>,
    #[prost(bool, tag = "12")]
    accessible: bool,
    #[prost(bool, tag = "13")]
    file_exists: bool,
    #[prost(int64, tag = "14")]
    collection_time: i64,
}

#[derive(Clone, PartialEq, Message)]
struct LegacyNetworkRecord {
    #[prost(string, tag = "1")]
    connection_id: String,
    #[prost(string, tag = "2")]
    source_address: String,
    #[prost(string, tag = "3")]
    destination_address: String,
    #[prost(string, tag = "4")]
    protocol: String,
    #[prost(string, tag = "5")]
    state: String,
    #[prost(uint32, optional, tag = "6")]
    pid: Option<u32>,
    #[prost(uint64, tag = "7")]
    bytes_sent: u64,
    #[prost(uint64, tag = "8")]
    bytes_received: u64,
    #[prost(int64, tag = "9")]
    collection_time: i64,
}

#[derive(Clone, PartialEq, Message)]
struct LegacyFilesystemRecord {
    #[prost(string, tag = "1")]
    operation_id: String,
    #[prost(string, tag = "2")]
    path: String,
    #[prost(string, tag = "3")]
    operation_type: String,
    #[prost(uint32, optional, tag = "4")]
    pid: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    file_size: Option<u64>,
    #[prost(string, optional, tag = "6")]
    permissions: Option<String>,
    #[prost(string, optional, tag = "7")]
    file_hash: Option<String>,
    #[prost(int64, tag = "8")]
    collection_time: i64,
}

#[derive(Clone, PartialEq, Message)]
struct LegacyPerformanceRecord {
    #[prost(string, tag = "1")]
    metric_id: String,
    #[prost(string, tag = "2")]
    metric_name: String,
    #[prost(double, tag = "3")]
    value: f64,
    #[prost(string, tag = "4")]
    unit: String,
    #[prost(uint32, optional, tag = "5")]
    pid: Option<u32>,
    #[prost(string, tag = "6")]
    component: String,
    #[prost(int64, tag = "7")]
    collection_time: i64,
}

fn proto(env: &Envelope) -> Vec<u8> {
    Codec::new(CodecKind::Protobuf, 1 << 20)
        .encode(env)
        .unwrap()
}

#[test]
fn legacy_decoder_reads_process_record() {
    let env = envelope(process(77));
    let CollectionEvent::Process(p) = &env.event else {
        unreachable!()
    };
    let legacy = LegacyProcessRecord::decode(proto(&env).as_slice()).unwrap();
    assert_eq!(legacy.pid, 77);
    assert_eq!(legacy.ppid, p.ppid);
    assert_eq!(legacy.name, p.name);
    assert_eq!(legacy.executable_path, p.executable_path);
    assert_eq!(legacy.command_line, p.command_line);
    assert_eq!(legacy.start_time, Some(1_700_000_000)); // seconds
    assert_eq!(legacy.cpu_usage, p.cpu_usage);
    assert_eq!(legacy.memory_usage, p.memory_usage);
    assert_eq!(legacy.executable_hash, p.executable_hash);
    assert_eq!(legacy.user_id, p.user_id);
    assert_eq!(legacy.accessible, p.accessible);
    assert_eq!(legacy.file_exists, p.file_exists);
    assert_eq!(legacy.collection_time, 1_700_000_100_987); // milliseconds
}

#[test]
fn legacy_decoder_reads_other_records() {
    let env = envelope(network(5));
    let n = LegacyNetworkRecord::decode(proto(&env).as_slice()).unwrap();
    assert_eq!(
        (
            n.connection_id.as_str(),
            n.source_address.as_str(),
            n.destination_address.as_str()
        ),
        ("conn-5", "10.0.0.1:5000", "[::1]:443")
    );
    assert_eq!(
        (n.protocol.as_str(), n.state.as_str()),
        ("tcp", "ESTABLISHED")
    );
    assert_eq!(
        (n.pid, n.bytes_sent, n.bytes_received),
        (Some(5), u64::MAX, 7)
    );
    assert_eq!(n.collection_time, 1_700_000_200_000);

    let env = envelope(filesystem(6));
    let f = LegacyFilesystemRecord::decode(proto(&env).as_slice()).unwrap();
    assert_eq!(f.operation_id, env.event_id);
    assert_eq!(
        (f.path.as_str(), f.operation_type.as_str()),
        ("/etc/passwd", "modify")
    );
    assert_eq!((f.pid, f.file_size), (Some(6), Some(4096)));
    assert_eq!(f.permissions.as_deref(), Some("0644"));
    assert_eq!(f.file_hash.as_deref(), Some("deadbeef"));
    assert_eq!(f.collection_time, 1_700_000_300_999);

    let env = envelope(performance(7));
    let p = LegacyPerformanceRecord::decode(proto(&env).as_slice()).unwrap();
    assert_eq!(p.metric_id, env.event_id);
    assert_eq!(
        (p.metric_name.as_str(), p.unit.as_str()),
        ("cpu", "percent")
    );
    assert_eq!((p.value, p.pid), (-0.000_001_5, Some(7)));
    assert_eq!(p.component, "procmond");
    assert_eq!(p.collection_time, 1_700_000_400_000);
}

#[test]
fn batches_round_trip_in_order_in_both_codecs() {
    let envs: Vec<_> = every_kind().into_iter().map(envelope).collect();
    for kind in KINDS {
        let codec = Codec::new(kind, 1 << 20);
        let items: Vec<_> = envs.iter().map(|e| codec.encode(e).unwrap()).collect();
        let frame = codec.batch(items.iter().map(Vec::as_slice));
        assert_eq!(codec.decode_frame(&frame).unwrap(), envs, "{kind:?}");
        if kind == CodecKind::Protobuf {
            // Written in place, the bytes of the prost record (its header first).
            let mut record = busbridge::codec::proto::BatchRecord::decode(&*frame).unwrap();
            assert_eq!(record.items, items);
            let canonical = record.encode_to_vec();
            assert_eq!(codec.decode_frame(&canonical).unwrap(), envs, "header last");
            let header = record.header.take();
            assert_eq!(header_first(header, record.encode_to_vec()), frame);
        }
        // A single envelope is a frame of one; a batch is not a single envelope.
        let one = codec.encode(&envs[0]).unwrap();
        assert_eq!(codec.decode_frame(&one).unwrap(), vec![envs[0].clone()]);
        assert!(codec.decode(&frame).is_err());
    }
}

#[test]
fn null_platform_metadata_survives_json() {
    let mut env = envelope(process(1));
    if let CollectionEvent::Process(p) = &mut env.event {
        p.platform_metadata = Some(serde_json::Value::Null);
    }
    for kind in KINDS {
        let codec = Codec::new(kind, 1 << 20);
        assert_eq!(
            codec.decode(&codec.encode(&env).unwrap()).unwrap(),
            env,
            "{kind:?}"
        );
    }
}

#[test]
fn size_limit_applies_both_ways() {
    let env = envelope(process(1));
    let bytes = proto(&env);
    let small = Codec::new(CodecKind::Protobuf, bytes.len() - 1);
    assert!(matches!(
        small.encode(&env),
        Err(CodecError::TooLarge { .. })
    ));
    assert!(matches!(
        small.decode(&bytes),
        Err(CodecError::TooLarge { .. })
    ));
}

/// Frames cut from one buffer are what `encode` writes, each on its own, whatever was
/// refused between them; a refusal leaves nothing behind.
#[test]
fn frames_from_a_shared_buffer_equal_single_encodes() {
    for kind in KINDS {
        let codec = Codec::new(kind, 1 << 20);
        let mut frames = FrameBuffer::new(256);
        let mut cut = Vec::new();
        for (i, event) in every_kind().into_iter().cycle().take(40).enumerate() {
            let mut env = envelope(event);
            env.seq = i as u64;
            let frame = frames.encode(&codec, &env).unwrap();
            assert_eq!(frame, codec.encode(&env).unwrap(), "{kind:?} event {i}");
            cut.push((frame, env));
            let too_big = Codec::new(kind, 8);
            assert!(matches!(
                frames.encode(&too_big, &cut[i].1),
                Err(CodecError::TooLarge { .. })
            ));
        }
        // Later frames did not overwrite earlier ones (all kept, as a replay buffer keeps).
        for (frame, env) in &cut {
            assert_eq!(&codec.decode(frame).unwrap(), env);
        }
    }
}

/// Once every frame cut from a chunk is gone, the chunk is written again: a stream whose
/// frames are let go of allocates no new memory for them.
#[test]
fn a_chunk_whose_frames_are_gone_is_written_again() {
    let codec = Codec::default();
    let env = envelope(process(1));
    let mut frames = FrameBuffer::new(1024);
    let first = frames.encode(&codec, &env).unwrap();
    let second = frames.encode(&codec, &env).unwrap();
    let start = first.as_ptr();
    assert_eq!(
        second.as_ptr(),
        start.wrapping_add(first.len()),
        "frames follow each other in one chunk"
    );
    drop((first, second));
    let reused = (0..1000).any(|_| frames.encode(&codec, &env).unwrap().as_ptr() == start);
    assert!(reused, "the chunk was never reclaimed");
}

#[test]
fn typed_errors_for_bad_input() {
    let codec = Codec::default();
    assert!(matches!(codec.decode(b""), Err(CodecError::Empty)));
    assert!(matches!(
        codec.decode(b"{\"x\":1}"),
        Err(CodecError::NotAnEnvelope(_))
    ));
    assert!(matches!(
        codec.decode(b"{\"v\":99}"),
        Err(CodecError::UnsupportedVersion(99))
    ));
    assert!(matches!(
        codec.decode(b"{\"v\":1"),
        Err(CodecError::Json(_))
    ));
    // A legacy record with no header is not a busbridge envelope.
    let legacy = LegacyProcessRecord {
        pid: 1,
        ..Default::default()
    }
    .encode_to_vec();
    assert!(matches!(
        codec.decode(&legacy),
        Err(CodecError::NotAnEnvelope(_))
    ));
    // A second header that changes the kind the first one named is refused, not decoded as
    // the other record.
    let mut two = proto(&envelope(process(1)));
    let other = busbridge::codec::proto::Header {
        version: 1,
        kind: 4,
        ..Default::default()
    };
    prost::encoding::message::encode(100, &other, &mut two);
    assert!(matches!(
        codec.decode(&two),
        Err(CodecError::InvalidField {
            field: "header",
            ..
        })
    ));
    // So is one header whose kind repeats further on with another value (the probe reads
    // the first; protobuf's last value wins in the full decode).
    let env = envelope(process(1));
    let mut header = busbridge::codec::proto::Header {
        version: 1,
        kind: 1,
        origin: env.origin.clone(),
        seq: env.seq,
        ..Default::default()
    }
    .encode_to_vec();
    prost::encoding::uint32::encode(2, &4, &mut header);
    let record = busbridge::codec::proto::ProcessRecord {
        pid: 1,
        ..Default::default()
    };
    let mut repeated = Vec::new();
    prost::encoding::bytes::encode(100, &header, &mut repeated);
    repeated.extend(record.encode_to_vec());
    assert!(matches!(
        codec.decode(&repeated),
        Err(CodecError::InvalidField {
            field: "header",
            ..
        })
    ));
    // Truncation anywhere gives an error, never a panic.
    let bytes = proto(&envelope(process(1)));
    for cut in 1..bytes.len() {
        let _ = codec.decode(&bytes[..cut]);
    }
    // Deeply nested JSON is refused by the recursion limit.
    let deep = format!(
        "{{\"v\":1,\"x\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(codec.decode(deep.as_bytes()).is_err());
    // NaN cannot travel as JSON; it is refused, not turned into null.
    let mut env = envelope(performance(1));
    if let CollectionEvent::Performance(p) = &mut env.event {
        p.value = f64::NAN;
    }
    assert!(matches!(
        Codec::new(CodecKind::Json, 1 << 20).encode(&env),
        Err(CodecError::NonFinite("value"))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_event_round_trips(event in arb_event(), seq in any::<u64>(), ts in arb_time()) {
        let mut env = envelope(event);
        env.seq = seq;
        env.timestamp = ts;
        for kind in KINDS {
            let codec = Codec::new(kind, 1 << 24);
            let bytes = codec.encode(&env).unwrap();
            prop_assert_eq!(&codec.decode(&bytes).unwrap(), &env);
        }
    }

    /// The same through a buffer shared by frames, whatever the chunk size.
    #[test]
    fn frames_round_trip_through_a_shared_buffer(events in prop::collection::vec(arb_event(), 1..8), chunk in 1usize..2048) {
        for kind in KINDS {
            let codec = Codec::new(kind, 1 << 24);
            let mut frames = FrameBuffer::new(chunk);
            let envs: Vec<_> = events.iter().cloned().map(envelope).collect();
            let cut: Vec<_> = envs.iter().map(|e| frames.encode(&codec, e).unwrap()).collect();
            for (frame, env) in cut.iter().zip(&envs) {
                prop_assert_eq!(&codec.decode(frame).unwrap(), env);
            }
        }
    }

    /// The protobuf encoder writes straight from the event; its bytes are those prost writes
    /// for the legacy record (decoded and encoded again), field for field.
    #[test]
    fn direct_encoding_equals_the_prost_records(event in arb_event(), seq in any::<u64>(), ts in arb_time()) {
        use busbridge::codec::proto::*;
        let mut env = envelope(event);
        env.seq = seq;
        env.timestamp = ts;
        let codec = Codec::default();
        let bytes = codec.encode(&env).unwrap();
        // prost writes fields in tag order, the header (100) last; busbridge writes it first.
        macro_rules! again {
            ($record:ty) => {{
                let mut r = <$record>::decode(&*bytes).unwrap();
                let canonical = r.encode_to_vec();
                let header = r.header.take();
                (canonical, header_first(header, r.encode_to_vec()))
            }};
        }
        let (canonical, again) = match &env.event {
            CollectionEvent::Process(_) => again!(ProcessRecord),
            CollectionEvent::Network(_) => again!(NetworkRecord),
            CollectionEvent::Filesystem(_) => again!(FilesystemRecord),
            CollectionEvent::Performance(_) => again!(PerformanceRecord),
            CollectionEvent::TriggerRequest(t) => {
                // A map's entries come in its iteration order, which decoding may change.
                prop_assume!(t.metadata.len() <= 1);
                again!(TriggerRecord)
            }
        };
        prop_assert_eq!(again, bytes);
        // The header last, as another protobuf encoder writes it, decodes the same.
        prop_assert_eq!(codec.decode(&canonical).unwrap(), env);
    }

    /// What a bridge reads of its own returns without decoding them equals the full decode,
    /// alone and in a batch; JSON is not peeked.
    #[test]
    fn peeking_reads_what_decoding_reads(event in arb_event(), seq in any::<u64>(), hops in any::<u32>()) {
        let mut env = envelope(event);
        env.seq = seq;
        env.hops = hops;
        let codec = Codec::default();
        let bytes = codec.encode(&env).unwrap();
        let want = busbridge::codec::proto::Peeked { origin: &env.origin, seq, hops };
        prop_assert_eq!(codec.peek_frame(&bytes), Some(vec![want]));
        let frame = codec.batch([bytes.as_slice(), bytes.as_slice()]);
        prop_assert_eq!(codec.peek_frame(&frame), Some(vec![want, want]));
        let json = Codec::new(CodecKind::Json, 1 << 20).encode(&env).unwrap();
        prop_assert_eq!(codec.peek_frame(&json), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Codec::default().decode(&bytes);
        let _ = Codec::default().decode_frame(&bytes);
        let _ = Codec::default().peek_frame(&bytes);
    }

    #[test]
    fn arbitrary_json_prefixed_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut b = vec![b'{'];
        b.extend(bytes);
        let _ = Codec::default().decode(&b);
    }

    #[test]
    fn mutated_envelopes_never_panic(event in arb_event(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = proto(&envelope(event));
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = Codec::default().decode(&bytes);
    }
}

/// What later legacy versions added beside the event (`hash_algorithm`) round-trips in both
/// codecs, and is the legacy `ProcessRecord` field 10 on the protobuf wire.
#[test]
fn event_extras_round_trip_and_are_legacy_field_10() {
    let mut env = envelope(process(5));
    env.extra.hash_algorithm = Some("sha256".into());
    for kind in [CodecKind::Protobuf, CodecKind::Json] {
        let codec = Codec::new(kind, 1 << 20);
        let back = codec.decode(&codec.encode(&env).unwrap()).unwrap();
        assert_eq!(back, env, "{kind:?}");
    }
    let legacy = LegacyProcessRecord::decode(proto(&env).as_slice()).unwrap();
    assert_eq!(legacy.hash_algorithm.as_deref(), Some("sha256"));
    // None stays None (and off the wire).
    let plain = envelope(process(6));
    let codec = Codec::new(CodecKind::Json, 1 << 20);
    assert!(!String::from_utf8(codec.encode(&plain).unwrap())
        .unwrap()
        .contains("extra"));
}

/// A prost message's bytes with its header (field 100) moved in front, as busbridge writes it.
fn header_first(header: Option<busbridge::codec::proto::Header>, rest: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(h) = header {
        prost::encoding::message::encode(100, &h, &mut out);
    }
    out.extend(rest);
    out
}
