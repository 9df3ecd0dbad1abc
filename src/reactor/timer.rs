//! A hashed timing wheel (Varghese & Lauck, scheme 6): a power-of-two ring of slots, each an
//! intrusive doubly-linked list of timers whose deadline hashes to it. Insert and cancel are
//! O(1); advancing costs one slot per tick plus the timers that expire. A deadline more than
//! one revolution away stays in its slot and is skipped until its own revolution comes.
//!
//! Time is in abstract ticks; the reactor decides what a tick is.

use slab::Slab;

const NIL: u32 = u32::MAX;

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

struct Node<T> {
    value: T,
    deadline: u64,
    prev: u32,
    next: u32,
}

pub struct TimerWheel<T> {
    slots: Box<[u32]>,
    nodes: Slab<Node<T>>,
    /// The next tick to process: every timer with a deadline before it has fired.
    now: u64,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel of `slots` slots (rounded up to a power of two) starting at tick `now`.
    pub fn new(slots: usize, now: u64) -> Self {
        let slots = slots.max(1).next_power_of_two();
        TimerWheel {
            slots: vec![NIL; slots].into_boxed_slice(),
            nodes: Slab::new(),
            now,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick & (self.slots.len() as u64 - 1)) as usize
    }

    /// Schedules `value` to fire at tick `deadline`; a deadline already past fires on the next
    /// `advance`.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerId {
        let deadline = deadline.max(self.now);
        let slot = self.slot_of(deadline);
        let head = self.slots[slot];
        let key = self.nodes.insert(Node {
            value,
            deadline,
            prev: NIL,
            next: head,
        });
        let id = u32::try_from(key).expect("more than 4 billion timers");
        if head != NIL {
            self.nodes[head as usize].prev = id;
        }
        self.slots[slot] = id;
        TimerId(id)
    }

    /// Removes a pending timer and returns its value.
    ///
    /// Panics if `id` is not pending: cancelling a fired timer would hit whichever timer reused
    /// its id, so the caller's bookkeeping is wrong.
    pub fn cancel(&mut self, id: TimerId) -> T {
        let node = self.nodes.remove(id.0 as usize);
        if node.prev == NIL {
            let slot = self.slot_of(node.deadline);
            self.slots[slot] = node.next;
        } else {
            self.nodes[node.prev as usize].next = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        node.value
    }

    /// Fires every timer with a deadline at or before tick `to`, in deadline order per slot,
    /// appending their values to `expired`.
    pub fn advance(&mut self, to: u64, expired: &mut Vec<T>) {
        if to < self.now {
            return;
        }
        // After a long pause, one pass over every slot finds all that is due.
        let ticks = (to - self.now)
            .saturating_add(1)
            .min(self.slots.len() as u64);
        for tick in (self.now..).take(ticks as usize) {
            let slot = self.slot_of(tick);
            let mut cursor = self.slots[slot];
            while cursor != NIL {
                let node = &self.nodes[cursor as usize];
                let next = node.next;
                if node.deadline <= to {
                    expired.push(self.cancel(TimerId(cursor)));
                }
                cursor = next;
            }
        }
        self.now = to.saturating_add(1);
    }

    /// The first tick at or after the current one whose slot holds a timer, looking at most
    /// `horizon` ticks ahead; `None` when nothing is found. The slot may hold only timers of a
    /// later revolution, so this is a hint for how long to sleep, never a promise.
    pub fn next_busy_tick(&self, horizon: u64) -> Option<u64> {
        if self.nodes.is_empty() {
            return None;
        }
        let horizon = horizon.min(self.slots.len() as u64);
        (self.now..self.now.saturating_add(horizon))
            .find(|&tick| self.slots[self.slot_of(tick)] != NIL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(wheel: &mut TimerWheel<u32>, to: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(to, &mut out);
        out.sort();
        out
    }

    #[test]
    fn fires_at_the_deadline_and_not_before() {
        let mut w = TimerWheel::new(8, 0);
        w.insert(3, 1);
        w.insert(5, 2);
        assert_eq!(fire(&mut w, 2), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 3), vec![1]);
        assert_eq!(fire(&mut w, 4), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 5), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_for_their_turn() {
        let mut w = TimerWheel::new(4, 0);
        w.insert(1, 1);
        w.insert(5, 2); // same slot as 1, next revolution
        w.insert(13, 3); // same slot, three revolutions on
        assert_eq!(fire(&mut w, 1), vec![1]);
        assert_eq!(fire(&mut w, 4), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 5), vec![2]);
        assert_eq!(fire(&mut w, 12), Vec::<u32>::new());
        assert_eq!(fire(&mut w, 13), vec![3]);
    }

    #[test]
    fn a_long_jump_fires_everything_due_once() {
        let mut w = TimerWheel::new(4, 0);
        for d in 0..20 {
            w.insert(d, d as u32);
        }
        assert_eq!(fire(&mut w, 100), (0..20).collect::<Vec<_>>());
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_unlinks_from_anywhere_in_the_list() {
        let mut w = TimerWheel::new(2, 0);
        let ids: Vec<_> = (0..5).map(|v| w.insert(2, v)).collect();
        assert_eq!(w.cancel(ids[2]), 2); // middle
        assert_eq!(w.cancel(ids[4]), 4); // head (inserted last)
        assert_eq!(w.cancel(ids[0]), 0); // tail
        assert_eq!(fire(&mut w, 2), vec![1, 3]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut w = TimerWheel::new(8, 10);
        w.insert(3, 7);
        assert_eq!(fire(&mut w, 10), vec![7]);
    }

    #[test]
    fn the_end_of_time_does_not_overflow() {
        let mut w = TimerWheel::new(8, 0);
        w.insert(u64::MAX, 1);
        w.insert(5, 2);
        assert_eq!(fire(&mut w, u64::MAX), vec![1, 2]);
    }

    #[test]
    fn next_busy_tick_finds_the_first_occupied_slot() {
        let mut w = TimerWheel::new(64, 0);
        assert_eq!(w.next_busy_tick(10), None);
        w.insert(7, 1);
        assert_eq!(w.next_busy_tick(10), Some(7));
        assert_eq!(w.next_busy_tick(5), None);
    }
}
