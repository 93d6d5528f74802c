//! criterion benchmarks: `cargo bench` runs them all (`cargo bench -- pool/`
//! for one group).
//!
//! - `ring_*`: the ring alone, in process, against crossbeam's `ArrayQueue`
//!   (write a batch of records, publish, claim and read them back);
//! - `floor/cross_core_ping_pong`: two threads pinned to two CPUs bouncing one
//!   cache line: the hardware's floor under any cross-core round trip, and so
//!   under the pool's `apply` latency;
//! - `floor/sum_f64_*`: summing a large `f64` array on one and on two threads:
//!   the memory bandwidth that bounds `shared_sum`;
//! - `pool/*`: every `Pool` method end to end on two workers (apply,
//!   apply_async, map, map_async, imap, imap_unordered, starmap,
//!   starmap_async).

use corepool::__private::LocalRing;
use corepool::Pool;
use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn noop(x: u64) -> u64 {
    x
}

/// One batch through the ring: `N`-byte records (32-byte header included).
fn ring_batch<const N: usize>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("ring_{N}B_batch32"));
    group.throughput(Throughput::Elements(32));
    let payload = vec![7u8; N - 32];
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
    let queue = ArrayQueue::<[u8; N]>::new(1024);
    group.bench_function("crossbeam_array_queue", |b| {
        b.iter(|| {
            for _ in 0..32 {
                let _ = queue.push([7u8; N]);
            }
            while let Some(v) = queue.pop() {
                black_box(v);
            }
        })
    });
    group.finish();
}

fn pin_thread_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within
    // it for cpu < CPU_SETSIZE; sched_setaffinity reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// A round trip between two cores with nothing but one cache line: the
/// floor under any cross-core request and reply.
fn cross_core_ping_pong(c: &mut Criterion) {
    let allowed = corepool::info::allowed_cpus().unwrap_or_default();
    if allowed.len() < 2 {
        eprintln!("floor/cross_core_ping_pong needs two allowed CPUs: skipped");
        return;
    }
    let (a, b) = (allowed[0], allowed[1]);
    let mut group = c.benchmark_group("floor");
    let word = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_thread_to(b);
            // Answer every odd value with the next even one.
            while !stop.load(Ordering::Relaxed) {
                let v = word.load(Ordering::Acquire);
                if v % 2 == 1 {
                    word.store(v + 1, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        pin_thread_to(a);
        let mut next = 1u64;
        group.bench_function("cross_core_ping_pong", |bch| {
            bch.iter(|| {
                word.store(next, Ordering::Release);
                while word.load(Ordering::Acquire) != next + 1 {
                    std::hint::spin_loop();
                }
                next += 2;
            })
        });
        stop.store(true, Ordering::Relaxed);
    });
    // Unpin the main thread again for the benchmarks that follow.
    // SAFETY: as in pin_thread_to, with every allowed CPU set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in &allowed {
            if cpu < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    group.finish();
}

/// Summing 256 MiB of f64 on one and two threads: the memory bandwidth that
/// `shared_sum` cannot beat.
fn memory_bandwidth(c: &mut Criterion) {
    let data = vec![1.0f64; 32 << 20];
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Bytes((data.len() * 8) as u64));
    group.sample_size(10);
    group.bench_function("sum_f64_256MiB_1_thread", |b| {
        b.iter(|| black_box(data.iter().sum::<f64>()))
    });
    group.bench_function("sum_f64_256MiB_2_threads", |b| {
        b.iter(|| {
            let (x, y) = data.split_at(data.len() / 2);
            std::thread::scope(|s| {
                let h = s.spawn(|| x.iter().sum::<f64>());
                let here = y.iter().sum::<f64>();
                black_box(here + h.join().unwrap_or(0.0))
            })
        })
    });
    group.finish();
}

fn pool_end_to_end(c: &mut Criterion) {
    let pool = Pool::builder().workers(2).build().expect("pool");
    let mut group = c.benchmark_group("pool");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
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
            b.iter(|| pool.map(noop, 0..n).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("map_async", n), &n, |b, &n| {
            b.iter(|| pool.map_async(noop, 0..n).unwrap().get().unwrap())
        });
        group.bench_with_input(BenchmarkId::new("imap", n), &n, |b, &n| {
            b.iter(|| {
                pool.chunked(256)
                    .unwrap()
                    .imap(noop, 0..n)
                    .map(Result::unwrap)
                    .sum::<u64>()
            })
        });
        group.bench_with_input(BenchmarkId::new("imap_unordered", n), &n, |b, &n| {
            b.iter(|| {
                pool.chunked(256)
                    .unwrap()
                    .imap_unordered(noop, 0..n)
                    .map(Result::unwrap)
                    .sum::<u64>()
            })
        });
        group.bench_with_input(BenchmarkId::new("starmap", n), &n, |b, &n| {
            b.iter(|| {
                pool.starmap(|a: u64, b: u64| a + b, (0..n).map(|i| (i, i)))
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("starmap_async", n), &n, |b, &n| {
            b.iter(|| {
                pool.starmap_async(|a: u64, b: u64| a + b, (0..n).map(|i| (i, i)))
                    .unwrap()
                    .get()
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn main() {
    corepool::init();
    let mut c = Criterion::default().configure_from_args();
    ring_batch::<64>(&mut c);
    ring_batch::<256>(&mut c);
    cross_core_ping_pong(&mut c);
    memory_bandwidth(&mut c);
    pool_end_to_end(&mut c);
    c.final_summary();
}
