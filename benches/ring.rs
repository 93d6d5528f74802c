//! criterion benchmarks: the ring alone (in process, against crossbeam's
//! `ArrayQueue`) and the pool end to end. `cargo bench` runs them.

use corepool::__private::LocalRing;
use corepool::Pool;
use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;

fn noop(x: u64) -> u64 {
    x
}

fn ring_vs_array_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_64B_batch32");
    group.throughput(Throughput::Elements(32));
    let payload = [7u8; 32]; // 32-byte header + 32-byte payload = 64-byte records
    let mut ring = LocalRing::new(1 << 16);
    group.bench_function("corepool_ring", |b| {
        b.iter(|| {
            for i in 0..32 {
                ring.push(i, &payload);
            }
            ring.publish();
            ring.pop_batch(32, |id, p| {
                black_box((id, p.len()));
            })
        })
    });
    let queue = ArrayQueue::<[u8; 64]>::new(1024);
    group.bench_function("crossbeam_array_queue", |b| {
        b.iter(|| {
            for _ in 0..32 {
                let _ = queue.push([7u8; 64]);
            }
            while let Some(v) = queue.pop() {
                black_box(v);
            }
        })
    });
    group.finish();
}

fn pool_end_to_end(c: &mut Criterion) {
    let pool = Pool::builder().workers(2).build().expect("pool");
    let mut group = c.benchmark_group("pool");
    group.bench_function("apply_round_trip", |b| {
        b.iter(|| pool.apply(noop, black_box(1)).unwrap())
    });
    for n in [1_000u64, 10_000] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("apply_async_collect", n), &n, |b, &n| {
            b.iter(|| {
                let hs: Vec<_> = (0..n).map(|i| pool.apply_async(noop, i).unwrap()).collect();
                hs.into_iter().map(|h| h.get().unwrap()).sum::<u64>()
            })
        });
        group.bench_with_input(BenchmarkId::new("map", n), &n, |b, &n| {
            b.iter(|| pool.map(noop, 0..n, None).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("imap", n), &n, |b, &n| {
            b.iter(|| pool.imap(noop, 0..n, 256).map(Result::unwrap).sum::<u64>())
        });
        group.bench_with_input(BenchmarkId::new("starmap", n), &n, |b, &n| {
            b.iter(|| {
                pool.starmap(|a: u64, b: u64| a + b, (0..n).map(|i| (i, i)), None)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn main() {
    corepool::init();
    let mut c = Criterion::default().configure_from_args();
    ring_vs_array_queue(&mut c);
    pool_end_to_end(&mut c);
    c.final_summary();
}
