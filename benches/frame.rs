//! Micro benchmarks of the frame format: encode, decode + verify, and CRC32C per byte.

use corelog::frame::{EntryKind, EntryRef, Frame, FrameEncoder, FrameLimits};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let limits = FrameLimits::default();
    for (entries, size) in [(1usize, 128usize), (16, 1024), (256, 1024), (64, 16384)] {
        let data = vec![0x5Au8; size];
        let refs: Vec<EntryRef<'_>> = (0..entries)
            .map(|i| EntryRef { kind: EntryKind::Normal, session: 1, seq: i as u64, data: &data })
            .collect();
        let mut buf = vec![0u8; 48 + entries * (24 + size)];
        let bytes = (entries * size) as u64;
        let mut g = c.benchmark_group("frame");
        g.throughput(Throughput::Bytes(bytes));
        let id = format!("{entries}x{size}B");
        g.bench_function(BenchmarkId::new("encode", &id), |b| {
            b.iter(|| {
                let mut enc = FrameEncoder::new(&mut buf, 1, 1, 1, limits).unwrap();
                for e in &refs {
                    enc.push(*e).unwrap();
                }
                enc.finish()
            })
        });
        let len = {
            let mut enc = FrameEncoder::new(&mut buf, 1, 1, 1, limits).unwrap();
            for e in &refs {
                enc.push(*e).unwrap();
            }
            enc.finish()
        };
        g.bench_function(BenchmarkId::new("decode_verify", &id), |b| {
            b.iter(|| {
                let f = Frame::decode(&buf[..len], &limits).unwrap();
                f.entries().map(|e| e.data.len()).sum::<usize>()
            })
        });
        g.finish();
    }
    let mut g = c.benchmark_group("crc32c");
    for size in [64usize, 4096, 1 << 20] {
        let data = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| b.iter(|| crc32c::crc32c(&data)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
