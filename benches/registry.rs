//! Registry lookup: uid → connection keys, the first step of every push, with 10,000 and
//! 1,000,000 uids online, looked up in random order as pushes arrive.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plex::internals::Registry;
use rand::seq::SliceRandom;

fn registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry lookup");
    group.throughput(Throughput::Elements(1));
    for uids in [10_000usize, 1_000_000] {
        let mut registry = Registry::default();
        let mut names: Vec<String> = (0..uids).map(|i| format!("u{i}")).collect();
        for (key, uid) in names.iter().enumerate() {
            registry.add(uid, key as u32);
        }
        names.shuffle(&mut rand::rng());
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("online uid", uids), &names, |b, names| {
            b.iter(|| {
                next = (next + 1) % names.len();
                black_box(registry.keys(&names[next]).len())
            })
        });
        group.bench_with_input(BenchmarkId::new("offline uid", uids), &uids, |b, _| {
            b.iter(|| black_box(registry.keys(black_box("nobody")).len()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = registry
}
criterion_main!(benches);
