//! Wakes a mio `Poll` at a chosen instant, to the precision of a thread's timed wait (tens of
//! microseconds) instead of the whole millisecond to which mio rounds a poll's timeout up. At
//! 10,000 msgs/s a message is due every 100 µs: a loop that could only sleep to the next
//! millisecond would send most of them late and count that as the server's latency.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use mio::{Registry, Token, Waker};

#[derive(Default)]
struct State {
    /// When to wake the poll next, if at all.
    at: Option<Instant>,
    stop: bool,
}

pub struct Alarm {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Alarm {
    /// Starts the thread that wakes the poll of `registry` with an event under `token`.
    pub fn start(registry: &Registry, token: Token) -> io::Result<Alarm> {
        let waker = Waker::new(registry, token)?;
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let ring = shared.clone();
        let thread = thread::Builder::new().name("alarm".into()).spawn(move || {
            let (lock, changed) = &*ring;
            let mut state = lock.lock().unwrap();
            while !state.stop {
                state = match state.at {
                    None => changed.wait(state).unwrap(),
                    Some(at) => match at.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => {
                            changed.wait_timeout(state, left).unwrap().0
                        }
                        _ => {
                            state.at = None;
                            // A failed wake leaves the poll to its own timeout.
                            let _ = waker.wake();
                            state
                        }
                    },
                };
            }
        })?;
        Ok(Alarm {
            shared,
            thread: Some(thread),
        })
    }

    /// Wakes the poll at `at` (replacing any earlier request).
    pub fn set(&self, at: Instant) {
        let (lock, changed) = &*self.shared;
        let mut state = lock.lock().unwrap();
        if state.at != Some(at) {
            state.at = Some(at);
            changed.notify_one();
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let (lock, changed) = &*self.shared;
        lock.lock().unwrap().stop = true;
        changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mio::{Events, Poll};

    use super::*;

    #[test]
    fn the_poll_wakes_at_the_set_instant_not_before_and_only_for_the_last_request() {
        let mut poll = Poll::new().unwrap();
        let alarm = Alarm::start(poll.registry(), Token(7)).unwrap();
        let mut events = Events::with_capacity(4);
        // A new request replaces the one before: the first never rings.
        alarm.set(Instant::now() + Duration::from_secs(60));
        let at = Instant::now() + Duration::from_millis(30);
        alarm.set(at);
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(Instant::now() >= at, "woken before the instant set");
        let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
        assert_eq!(tokens, [Token(7)]);
        // Nothing more is pending once it rang.
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        assert!(events.is_empty());
    }
}
