//! A hierarchical timing wheel (Varghese & Lauck; the layout of tokio's `runtime/time/wheel`):
//! six levels of 64 slots, level `n` slots spanning 64^n ticks. A timer is filed in the level
//! where its deadline first differs from the current tick, so a far timer sits in a coarse
//! slot and moves down only when that slot comes due: it is looked at about once per level,
//! never once per revolution. Each level keeps an occupancy bitmap, so the next slot to
//! process is found with a few bit operations and the reactor knows exactly how long it may
//! sleep. Insert and cancel are O(1); each slot is an intrusive doubly-linked list of nodes
//! in one slab.
//!
//! Time is in abstract ticks; the reactor decides what a tick is.

use slab::Slab;

const NIL: u32 = u32::MAX;
const LEVEL_BITS: usize = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
const LEVELS: usize = 6;
/// Ticks the levels span from the current one; a later deadline waits in the top level and
/// is filed again when its slot comes round.
const SPAN: u64 = 1 << (LEVEL_BITS * LEVELS);

/// Names one pending timer; valid until it fires or is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(u32);

impl TimerId {
    /// A placeholder for "no timer", never returned by `insert`.
    pub const NONE: TimerId = TimerId(NIL);

    pub fn is_none(self) -> bool {
        self.0 == NIL
    }
}

/// 24 bytes for a `u64` value: a connection's timer costs no more than that.
struct Node<T> {
    value: T,
    deadline: u64,
    /// The node before it in its slot's list, or, for the first node, `HEAD` and the slot
    /// (`level * SLOTS + slot`): how `unlink` finds the list head to update.
    prev: u32,
    next: u32,
}

/// Marks a `prev` that names a slot rather than a node; node ids stay below it.
const HEAD: u32 = 1 << 31;

fn head_of(level: usize, slot: usize) -> u32 {
    HEAD | (level * SLOTS + slot) as u32
}

#[derive(Clone, Copy)]
struct Level {
    /// Bit `s` is set when slot `s` holds a timer.
    occupied: u64,
    heads: [u32; SLOTS],
}

pub struct TimerWheel<T> {
    levels: [Level; LEVELS],
    nodes: Slab<Node<T>>,
    /// The last tick processed: every timer with a deadline at or before it has fired.
    elapsed: u64,
}

/// Ticks one slot of `level` spans.
fn slot_span(level: usize) -> u64 {
    1 << (LEVEL_BITS * level)
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel at tick `now`: timers due at or before it fire on the next `advance` past it.
    pub fn new(now: u64) -> Self {
        TimerWheel {
            levels: [Level {
                occupied: 0,
                heads: [NIL; SLOTS],
            }; LEVELS],
            nodes: Slab::new(),
            elapsed: now,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Schedules `value` to fire at tick `deadline`; a deadline already past fires on the next
    /// `advance` that moves time on.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerId {
        let key = self.nodes.insert(Node {
            value,
            deadline: deadline.max(self.elapsed.saturating_add(1)),
            prev: NIL,
            next: NIL,
        });
        let id = u32::try_from(key)
            .ok()
            .filter(|&id| id < HEAD)
            .expect("more than 2 billion timers");
        self.file(id);
        TimerId(id)
    }

    /// Removes a pending timer and returns its value.
    ///
    /// Panics if `id` is not pending: cancelling a fired timer would hit whichever timer reused
    /// its id, so the caller's bookkeeping is wrong.
    pub fn cancel(&mut self, id: TimerId) -> T {
        self.unlink(id.0);
        self.nodes.remove(id.0 as usize).value
    }

    /// Fires every timer with a deadline at or before tick `to`, appending their values to
    /// `expired`. Time does not go backwards: a `to` already processed does nothing.
    pub fn advance(&mut self, to: u64, expired: &mut Vec<T>) {
        while let Some((level, slot, start)) = self.next_slot() {
            if start > to {
                break;
            }
            let mut cursor = std::mem::replace(&mut self.levels[level].heads[slot], NIL);
            self.levels[level].occupied &= !(1 << slot);
            self.elapsed = self.elapsed.max(start);
            while cursor != NIL {
                let node = &self.nodes[cursor as usize];
                let next = node.next;
                if node.deadline <= to {
                    expired.push(self.nodes.remove(cursor as usize).value);
                } else {
                    // Not due yet: a finer level takes it from here.
                    self.file(cursor);
                }
                cursor = next;
            }
        }
        self.elapsed = self.elapsed.max(to);
    }

    /// The tick at which the next slot comes due: exactly the earliest deadline when it lies
    /// within the current 64 ticks, otherwise the tick at which a coarse slot is sorted into
    /// finer ones (never later than the earliest deadline). Sleeping until it never
    /// oversleeps a timer.
    pub fn next_expiration(&self) -> Option<u64> {
        self.next_slot().map(|(_, _, start)| start)
    }

    /// The first occupied slot at or after the current tick: its level, index and start tick.
    /// Lower levels hold only deadlines before any slot of the levels above, so the first
    /// level with a timer has the earliest slot.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let (level, l) = (self.levels.iter().enumerate()).find(|(_, l)| l.occupied != 0)?;
        let span = slot_span(level);
        let level_span = span << LEVEL_BITS;
        let current = ((self.elapsed / span) % SLOTS as u64) as u32;
        let slot = (current + l.occupied.rotate_right(current).trailing_zeros()) as usize % SLOTS;
        let level_start = self.elapsed & !(level_span - 1);
        let mut start = level_start + slot as u64 * span;
        if start <= self.elapsed {
            // Only the top level wraps: its slot lies in the next revolution.
            start = start.saturating_add(level_span);
        }
        Some((level, slot, start))
    }

    /// Links node `id` into the slot its deadline falls in, as seen from the current tick.
    fn file(&mut self, id: u32) {
        let node = &self.nodes[id as usize];
        let place = node.deadline.min(self.elapsed.saturating_add(SPAN - 1));
        // Past the top level's window the top level serves as a ring: such a timer waits in
        // the slot of its deadline's index, one revolution on.
        let differs = ((self.elapsed ^ place) | (SLOTS as u64 - 1)).min(SPAN - 1);
        let level = (63 - differs.leading_zeros() as usize) / LEVEL_BITS;
        let slot = ((place >> (LEVEL_BITS * level)) % SLOTS as u64) as usize;
        let head = self.levels[level].heads[slot];
        let node = &mut self.nodes[id as usize];
        node.prev = head_of(level, slot);
        node.next = head;
        if head != NIL {
            self.nodes[head as usize].prev = id;
        }
        self.levels[level].heads[slot] = id;
        self.levels[level].occupied |= 1 << slot;
    }

    fn unlink(&mut self, id: u32) {
        let node = &self.nodes[id as usize];
        let (prev, next) = (node.prev, node.next);
        if prev & HEAD != 0 {
            let (level, slot) = (
                (prev & !HEAD) as usize / SLOTS,
                (prev & !HEAD) as usize % SLOTS,
            );
            self.levels[level].heads[slot] = next;
            if next == NIL {
                self.levels[level].occupied &= !(1 << slot);
            }
        } else {
            self.nodes[prev as usize].next = next;
        }
        // The next node takes its place: after `prev`, or first in the slot.
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_node_is_24_bytes() {
        // One per connection (its slab slot adds a tag: 32 bytes): the value (a connection's
        // reference), the deadline, the links.
        assert_eq!(std::mem::size_of::<Node<u64>>(), 24);
    }

    fn fire(wheel: &mut TimerWheel<u32>, to: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(to, &mut out);
        out.sort();
        out
    }

    #[test]
    fn fires_at_the_deadline_and_not_before() {
        let mut w = TimerWheel::new(0);
        w.insert(3, 1);
        w.insert(5, 2);
        assert_eq!(w.next_expiration(), Some(3));
        assert_eq!(fire(&mut w, 2), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 3), vec![1]);
        assert_eq!(fire(&mut w, 4), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 5), vec![2]);
        assert!(w.is_empty());
        assert_eq!(w.next_expiration(), None);
    }

    #[test]
    fn far_deadlines_move_down_the_levels() {
        let mut w = TimerWheel::new(0);
        w.insert(1, 1);
        w.insert(100, 2); // level 1
        w.insert(5000, 3); // level 2
        w.insert(1 << 40, 4); // past the top level's span
        assert_eq!(fire(&mut w, 1), vec![1]);
        // The next stop is where level 1's slot [64, 128) is sorted, not every tick.
        assert_eq!(w.next_expiration(), Some(64));
        assert_eq!(fire(&mut w, 99), Vec::<u32>::new());
        assert_eq!(w.next_expiration(), Some(100), "exact once in level 0");
        assert_eq!(fire(&mut w, 100), vec![2]);
        assert_eq!(fire(&mut w, 4999), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 5000), vec![3]);
        assert_eq!(fire(&mut w, (1 << 40) - 1), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 1 << 40), vec![4]);
    }

    #[test]
    fn a_long_jump_fires_everything_due_once() {
        let mut w = TimerWheel::new(0);
        for d in 0..20 {
            w.insert(d * 1000, d as u32);
        }
        assert_eq!(fire(&mut w, 100_000), (0..20).collect::<Vec<_>>());
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_unlinks_from_anywhere_in_the_list() {
        let mut w = TimerWheel::new(0);
        let ids: Vec<_> = (0..5).map(|v| w.insert(2, v)).collect();
        assert_eq!(w.cancel(ids[2]), 2); // middle
        assert_eq!(w.cancel(ids[4]), 4); // head (inserted last)
        assert_eq!(w.cancel(ids[0]), 0); // tail
        assert_eq!(fire(&mut w, 2), vec![1, 3]);
        let id = w.insert(7, 9);
        w.cancel(id);
        assert_eq!(
            w.next_expiration(),
            None,
            "an emptied slot is no longer occupied"
        );
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut w = TimerWheel::new(10);
        w.insert(3, 7);
        assert_eq!(
            fire(&mut w, 10),
            Vec::<u32>::new(),
            "tick 10 is already processed"
        );
        assert_eq!(fire(&mut w, 11), vec![7]);
    }

    #[test]
    fn the_end_of_time_does_not_overflow() {
        let mut w = TimerWheel::new(0);
        w.insert(u64::MAX, 1);
        w.insert(5, 2);
        assert_eq!(fire(&mut w, u64::MAX), vec![1, 2]);
        let mut w = TimerWheel::new(u64::MAX - 10);
        w.insert(u64::MAX, 1);
        assert_eq!(fire(&mut w, u64::MAX), vec![1]);
    }
}
