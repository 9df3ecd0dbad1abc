//! Property tests of the timer wheel against a simple model: every timer fires exactly once,
//! at the first advance that reaches its deadline. Each property is checked against a model or an equivalent one-piece
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
    NextBusyTick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let delta = prop_oneof![0u64..8, 0u64..200, 0u64..5000, Just(1 << 40)];
    let jump = prop_oneof![0u64..4, 0u64..100, 0u64..10_000, Just(1 << 40)];
    prop_oneof![
        6 => delta.prop_map(Op::Insert),
        1 => (0u64..100).prop_map(Op::InsertPast),
        2 => any::<Index>().prop_map(Op::Cancel),
        4 => jump.prop_map(Op::Advance),
        1 => (0u64..10).prop_map(Op::AdvanceBack),
        1 => (0u64..200).prop_map(Op::NextBusyTick),
    ]
}

/// The wheel's contract: a timer fires once, at the first `advance(to)` with `to` at or past
/// its deadline and at or past the first unprocessed tick (a deadline already past fires on
/// the next advance that moves time on).
struct Model {
    /// The next tick to process.
    now: u64,
    /// value → (deadline, id).
    pending: BTreeMap<u32, (u64, TimerId)>,
    next_value: u32,
}

fn run_timer_ops(slots: usize, start: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut wheel = TimerWheel::new(slots, start);
    let revolution = slots.max(1).next_power_of_two() as u64;
    let mut model = Model {
        now: start,
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
            Op::NextBusyTick(horizon) => {
                let got = wheel.next_busy_tick(horizon);
                let first_due = model.pending.values().map(|(d, _)| *d).min();
                let window = horizon.min(revolution);
                match (got, first_due) {
                    (None, None) => {}
                    (Some(_), None) => prop_assert!(false, "a busy tick on an empty wheel"),
                    (None, Some(first)) => prop_assert!(first >= model.now + window),
                    (Some(t), Some(first)) => {
                        // A hint to sleep until: within the window, and nothing due before it.
                        prop_assert!(model.now <= t && t < model.now + window);
                        prop_assert!(t <= first, "busy tick {} after a deadline {}", t, first);
                        prop_assert!(
                            model
                                .pending
                                .values()
                                .any(|(d, _)| d % revolution == t % revolution)
                        );
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
    let to = last.max(model.now) + revolution;
    advance(&mut wheel, &mut model, to)?;
    prop_assert!(model.pending.is_empty());
    expired.clear();
    wheel.advance(model.now + 3 * revolution, &mut expired);
    prop_assert!(expired.is_empty(), "fired twice: {:?}", expired);
    prop_assert_eq!(wheel.next_busy_tick(u64::MAX), None);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_timer_wheel_fires_each_timer_once_at_its_tick(
        slots in prop_oneof![1usize..=64, Just(4usize), Just(64usize), Just(4096usize)],
        start in prop_oneof![0u64..100, Just(1u64 << 41)],
        ops in vec(op(), 0..120),
    ) {
        run_timer_ops(slots, start, &ops)?;
    }
}

/// `advance(u64::MAX)` ("fire everything") must not overflow the wheel's arithmetic.
#[test]
fn advance_to_u64_max_fires_everything() {
    let mut wheel = TimerWheel::new(8, 0);
    wheel.insert(5, 1u32);
    let mut expired = Vec::new();
    wheel.advance(u64::MAX, &mut expired);
    assert_eq!(expired, vec![1]);
}
