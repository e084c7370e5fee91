//! Criterion benchmarks: the same paths as `busbridge bench`, side by side, so their ratios
//! can be read from one `cargo bench` run.

// The measurement code is the tool's (src/cli/measure.rs), not the library's.
#[allow(dead_code)]
#[path = "../src/cli/measure.rs"]
mod bench;
use busbridge::client::QoS;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const EVENTS: usize = 20_000;

fn paths(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("fanout_20k_events");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("reference_crossbeam_router", |b| {
        b.iter(|| rt.block_on(bench::reference_router(EVENTS)))
    });
    g.bench_function("busbridge_phase0", |b| {
        b.iter(|| rt.block_on(bench::phase0(EVENTS)))
    });
    g.bench_function("raw_busrt_inprocess", |b| {
        b.iter(|| rt.block_on(bench::raw_busrt(EVENTS, false, 0, None)))
    });
    g.bench_function("raw_busrt_unix", |b| {
        b.iter(|| rt.block_on(bench::raw_busrt(EVENTS, true, 0, None)))
    });
    g.bench_function("busbridge_phase2_unix", |b| {
        b.iter(|| {
            rt.block_on(bench::phase2(
                EVENTS,
                bench::Transport::Unix,
                false,
                QoS::Realtime,
            ))
        })
    });
    g.bench_function("busbridge_phase2_unix_batched", |b| {
        b.iter(|| {
            rt.block_on(bench::phase2(
                EVENTS,
                bench::Transport::Unix,
                true,
                QoS::Realtime,
            ))
        })
    });
    g.finish();
}

/// What one event costs the codec alone: the floor under every bridged path, since raw busrt
/// moves bytes it never encodes or decodes.
fn codec(c: &mut Criterion) {
    use busbridge::codec::{Codec, CodecKind, Envelope, FrameBuffer};
    let codec = Codec::new(CodecKind::Protobuf, 1 << 20);
    let mut env = Envelope::new(bench::bench_event(1), "", "bench-pub");
    env.origin = format!("bench-pub#{}", "0".repeat(32));
    env.seq = 1;
    let bytes = codec.encode(&env).expect("encode");
    let items = vec![bytes.clone(); 500];
    let frame = codec.batch(items.iter().map(Vec::as_slice));
    let mut g = c.benchmark_group("codec_per_event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| codec.encode(&env)));
    // The bridge's own path: frames cut from a per-thread chunk (each dropped here, as the
    // replay buffer eventually drops it, so the chunk is written again).
    let mut frames = FrameBuffer::new(16 * 1024);
    g.bench_function("encode_to_chunk", |b| {
        b.iter(|| frames.encode(&codec, &env))
    });
    g.bench_function("decode", |b| b.iter(|| codec.decode(&bytes)));
    g.throughput(Throughput::Elements(500));
    // As the bridge decodes a batch: each envelope handed on boxed (`decode_frame` would
    // also move all 500 into one list of about 220 KB).
    g.bench_function("decode_batch_of_500", |b| {
        b.iter(|| codec.decode_frame_each(&frame, |e| drop(std::hint::black_box(e))))
    });
    g.finish();
}

criterion_group!(benches, paths, codec);
criterion_main!(benches);
