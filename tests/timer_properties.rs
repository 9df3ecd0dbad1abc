//! Property tests of the timer wheel against a simple model: every timer fires exactly once,
//! at the first advance that reaches its deadline, whatever level of the wheel it waited in. Each property is checked against a model or an equivalent one-piece
//! computation, on generated inputs that include the hostile ones. The case counts keep the
//! file to a few seconds; `PROPTEST_CASES=100000` runs longer. Failure persistence is off: a
//! minimal failing input found here becomes a plain `#[test]`.

mod common;

use std::collections::BTreeMap;

use common::chunks::config;
use plex::internals::{TimerId, TimerWheel};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone, Debug)]
enum Op {
    /// A deadline `delta` ticks after the next unprocessed tick.
    Insert(u64),
    /// A deadline `delta` ticks before it: already due.
    InsertPast(u64),
    Cancel(Index),
    /// Advance to `delta - 1` ticks after the next unprocessed tick: 0 repeats the last tick.
    Advance(u64),
    /// Advance to a tick already processed: time does not go backwards.
    AdvanceBack(u64),
    NextExpiration,
}

fn op() -> impl Strategy<Value = Op> {
    // Deltas reach every level of the wheel, and past its span.
    let delta = prop_oneof![0u64..8, 0u64..200, 0u64..5000, 0u64..300_000, Just(1 << 40)];
    let jump = prop_oneof![
        0u64..4,
        0u64..100,
        0u64..10_000,
        0u64..1_000_000,
        Just(1 << 40)
    ];
    prop_oneof![
        6 => delta.prop_map(Op::Insert),
        1 => (0u64..100).prop_map(Op::InsertPast),
        2 => any::<Index>().prop_map(Op::Cancel),
        4 => jump.prop_map(Op::Advance),
        1 => (0u64..10).prop_map(Op::AdvanceBack),
        1 => Just(Op::NextExpiration),
    ]
}

/// The wheel's contract: a timer fires once, at the first `advance(to)` with `to` at or past
/// its deadline and at or past the first unprocessed tick (a deadline already past fires on
/// the next advance that moves time on). `next_expiration` never lies past the first due
/// timer, and is exact when that timer lies within the current 64 ticks.
struct Model {
    /// The next tick to process.
    now: u64,
    /// value → (deadline, id).
    pending: BTreeMap<u32, (u64, TimerId)>,
    next_value: u32,
}

fn run_timer_ops(start: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut wheel = TimerWheel::new(start);
    let mut model = Model {
        now: start + 1,
        pending: BTreeMap::new(),
        next_value: 0,
    };
    let mut expired = Vec::new();
    let mut advance = |wheel: &mut TimerWheel<u32>, model: &mut Model, to: u64| {
        expired.clear();
        wheel.advance(to, &mut expired);
        expired.sort_unstable();
        let mut due = Vec::new();
        if to >= model.now {
            due = (model.pending.iter())
                .filter(|(_, (deadline, _))| *deadline <= to)
                .map(|(v, _)| *v)
                .collect();
            for v in &due {
                model.pending.remove(v);
            }
            model.now = to + 1;
        }
        prop_assert_eq!(&expired, &due, "advance to {}", to);
        Ok(())
    };
    for op in ops {
        match *op {
            Op::Insert(_) | Op::InsertPast(_) => {
                let deadline = match *op {
                    Op::Insert(d) => model.now + d,
                    Op::InsertPast(d) => model.now.saturating_sub(d),
                    _ => unreachable!(),
                };
                let value = model.next_value;
                model.next_value += 1;
                let id = wheel.insert(deadline, value);
                prop_assert!(!id.is_none());
                model.pending.insert(value, (deadline.max(model.now), id));
            }
            Op::Cancel(i) => {
                if !model.pending.is_empty() {
                    let value = *model
                        .pending
                        .keys()
                        .nth(i.index(model.pending.len()))
                        .unwrap();
                    let (_, id) = model.pending.remove(&value).unwrap();
                    prop_assert_eq!(wheel.cancel(id), value);
                }
            }
            Op::Advance(d) => {
                let to = (model.now + d).saturating_sub(1);
                advance(&mut wheel, &mut model, to)?
            }
            Op::AdvanceBack(d) => {
                let to = model.now.saturating_sub(1 + d);
                advance(&mut wheel, &mut model, to)?
            }
            Op::NextExpiration => {
                let got = wheel.next_expiration();
                let first_due = model.pending.values().map(|(d, _)| *d).min();
                match (got, first_due) {
                    (None, None) => {}
                    (Some(t), None) => prop_assert!(false, "expiration {} on an empty wheel", t),
                    (None, Some(first)) => prop_assert!(false, "no expiration, timer at {}", first),
                    (Some(t), Some(first)) => {
                        // Safe to sleep until: nothing is due before it.
                        prop_assert!(
                            model.now <= t && t <= first,
                            "{} for a timer at {}",
                            t,
                            first
                        );
                        if first / 64 == (model.now - 1) / 64 {
                            prop_assert_eq!(t, first, "exact within the current 64 ticks");
                        }
                    }
                }
            }
        }
    }
    // Everything left fires exactly once on a jump past the last deadline.
    let last = model
        .pending
        .values()
        .map(|(d, _)| *d)
        .max()
        .unwrap_or(model.now);
    let to = last.max(model.now) + 1;
    advance(&mut wheel, &mut model, to)?;
    prop_assert!(model.pending.is_empty());
    expired.clear();
    wheel.advance(model.now + (1 << 42), &mut expired);
    prop_assert!(expired.is_empty(), "fired twice: {:?}", expired);
    prop_assert_eq!(wheel.next_expiration(), None);
    prop_assert!(wheel.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_timer_wheel_fires_each_timer_once_at_its_tick(
        start in prop_oneof![0u64..100, 0u64..1_000_000, Just(1u64 << 41)],
        ops in vec(op(), 0..120),
    ) {
        run_timer_ops(start, &ops)?;
    }
}

/// `advance(u64::MAX)` ("fire everything") must not overflow the wheel's arithmetic.
#[test]
fn advance_to_u64_max_fires_everything() {
    let mut wheel = TimerWheel::new(0);
    wheel.insert(5, 1u32);
    wheel.insert(1 << 50, 2u32);
    let mut expired = Vec::new();
    wheel.advance(u64::MAX, &mut expired);
    expired.sort_unstable();
    assert_eq!(expired, vec![1, 2]);
}
