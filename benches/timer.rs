//! The timer wheel with 1,000,000 pending timers (one per connection at our density target):
//! the cost of one insert, one cancel, and one expiry, with deadlines spread over the heartbeat timeout as live connections spread them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use plex::internals::{TimerId, TimerWheel};
use rand::seq::SliceRandom;

const POPULATION: usize = 1_000_000;
/// The default heartbeat timeout in ticks (120 s of 100 ms): how far ahead deadlines lie.
const HORIZON: u64 = 1200;

/// A deadline for timer `i`, scattered so that neighbours in memory are not neighbours in time.
fn deadline(i: usize) -> u64 {
    1 + (i as u64 * 7919) % HORIZON
}

fn full_wheel() -> (TimerWheel<u32>, Vec<TimerId>) {
    let mut wheel = TimerWheel::new(0);
    let ids = (0..POPULATION)
        .map(|i| wheel.insert(deadline(i), i as u32))
        .collect();
    (wheel, ids)
}

/// Runs `iters` operations as chunks of at most `POPULATION`; `chunk(n)` does `n` of them,
/// returns the time they took, and restores the wheel's population outside that time.
fn in_chunks(iters: u64, mut chunk: impl FnMut(usize) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(POPULATION);
        total += chunk(n);
        left -= n;
    }
    total
}

fn timer(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer wheel at 1M timers");
    group.throughput(Throughput::Elements(1));
    let (mut wheel, mut ids) = full_wheel();

    let mut fresh = Vec::with_capacity(POPULATION);
    group.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            in_chunks(iters, |n| {
                let start = Instant::now();
                for i in 0..n {
                    fresh.push(wheel.insert(deadline(i), i as u32));
                }
                let took = start.elapsed();
                for id in fresh.drain(..) {
                    wheel.cancel(id);
                }
                took
            })
        })
    });

    // Connections close in no particular order: cancel timers at random.
    let mut order: Vec<usize> = (0..POPULATION).collect();
    order.shuffle(&mut rand::rng());
    let mut cursor = 0;
    group.bench_function("cancel", |b| {
        b.iter_custom(|iters| {
            in_chunks(iters, |n| {
                let picks: Vec<usize> = (0..n).map(|k| order[(cursor + k) % POPULATION]).collect();
                cursor = (cursor + n) % POPULATION;
                let start = Instant::now();
                for &p in &picks {
                    black_box(wheel.cancel(ids[p]));
                }
                let took = start.elapsed();
                for &p in &picks {
                    ids[p] = wheel.insert(deadline(p), p as u32);
                }
                took
            })
        })
    });

    // Expiry: advance tick by tick, as the reactor does, until all 1M timers have fired.
    group.throughput(Throughput::Elements(POPULATION as u64));
    group.sample_size(10);
    group.bench_function("expire all 1M, tick by tick", |b| {
        b.iter_batched(
            || (full_wheel().0, Vec::with_capacity(POPULATION)),
            |(mut wheel, mut expired)| {
                for tick in 0..=HORIZON {
                    wheel.advance(tick, &mut expired);
                }
                assert_eq!(expired.len(), POPULATION);
                (wheel, expired)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = timer
}
criterion_main!(benches);
