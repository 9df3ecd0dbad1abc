//! The clock of anything sent at a fixed rate: message `i` is due at `start + i / rate`. A
//! benchmark body carries the time its message was *due*, not the moment it was written, so
//! the receiver counts latency from the schedule: a stall in the sender or the server shows as
//! latency for every message due during it, instead of silently delaying their sending
//! ("coordinated omission"; wrk2 and HdrHistogram's corrected recording do the same).

use std::time::{Duration, Instant};

use crate::payload;

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    /// `start` on the wall clock, in Unix nanoseconds: what bodies carry.
    start_ns: u64,
    rate: f64,
}

impl Schedule {
    /// A schedule of `rate` messages per second starting now.
    pub fn start(rate: f64) -> Schedule {
        Schedule::starting(Instant::now(), payload::now_ns(), rate)
    }

    /// A schedule starting at `start`, which is `start_ns` on the wall clock.
    pub fn starting(start: Instant, start_ns: u64, rate: f64) -> Schedule {
        Schedule {
            start,
            start_ns,
            rate,
        }
    }

    /// When message `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos(self.offset_ns(i))
    }

    /// When message `i` is due, in Unix nanoseconds: the stamp of its body.
    pub fn due_ns(&self, i: u64) -> u64 {
        self.start_ns + self.offset_ns(i)
    }

    /// How many messages are due by `now` (the first is due at once).
    pub fn due_by(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_secs_f64() * self.rate) as u64 + 1
    }

    /// Nanoseconds from the start to message `i`, rounded: exact whenever that is whole.
    fn offset_ns(&self, i: u64) -> u64 {
        (i as f64 * 1e9 / self.rate).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_i_is_due_at_i_over_the_rate() {
        let start = Instant::now();
        let s = Schedule::starting(start, 1_000_000_000_000, 1000.0);
        assert_eq!(s.due_ns(0), 1_000_000_000_000);
        assert_eq!(s.due_ns(1), 1_000_001_000_000);
        assert_eq!(s.due_ns(2500), 1_002_500_000_000);
        assert_eq!(s.due(2500), start + Duration::from_millis(2500));
        assert_eq!(s.due_by(start), 1);
        assert_eq!(s.due_by(start + Duration::from_micros(999)), 1);
        assert_eq!(s.due_by(start + Duration::from_millis(1)), 2);
        assert_eq!(s.due_by(start + Duration::from_secs(3)), 3001);
        // Message i counts as due from its due time on (a microsecond either side: floating
        // point rounding at the exact nanosecond does not matter).
        let us = Duration::from_micros(1);
        for i in [1, 7, 999, 123_456] {
            assert_eq!(s.due_by(s.due(i) - us), i, "message {i}");
            assert_eq!(s.due_by(s.due(i) + us), i + 1, "message {i}");
        }
    }
}
