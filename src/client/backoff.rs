//! Capped exponential backoff with jitter: how long a client waits before trying a server
//! again. Doubling keeps a dead server from being hammered; the jitter keeps the clients of a
//! restarted server from all coming back in the same instant.

use std::time::Duration;

/// The first wait after a success.
const FIRST: Duration = Duration::from_millis(100);
/// No wait is longer than this.
const CAP: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { ceiling: FIRST }
    }

    /// Starts over from the shortest wait, after a connection succeeded.
    pub fn reset(&mut self) {
        self.ceiling = FIRST;
    }

    /// The wait before the next attempt: a random duration between half the current ceiling
    /// and the ceiling, which then doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(CAP);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::random_range(millis / 2..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new();
        let mut ceiling = FIRST;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(CAP);
        }
        assert_eq!(ceiling, CAP);
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST);
    }
}
