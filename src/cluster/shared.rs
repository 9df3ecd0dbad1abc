//! What the two broker threads share: the event queue with its notify callback, the health
//! both report into (so `Up` and `Down` are each said once per change, whichever thread saw
//! it), the subscription probe, and the stop flags the [`Broker`](super::Broker) raises.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::Event;

/// A probe not seen on the subscription within this means the subscription went silent.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct Shared {
    events: Sender<Event>,
    notify: Box<dyn Fn() + Send + Sync>,
    health: Mutex<Health>,
    /// Unix ms when the oldest probe not yet seen was published; 0 when none is pending.
    probe_since: AtomicI64,
    stopping: Mutex<bool>,
    stop_signal: Condvar,
    abandoned: AtomicBool,
}

struct Health {
    commands: Part,
    subscription: Part,
    /// Bumped by every subscription failure: a command round trip that began before it does
    /// not show the command connection survived what broke the subscription.
    epoch: u64,
    /// What was said last: `None` before the first `Up` or `Down`.
    reported_up: Option<bool>,
}

/// The state of one connection as far as health goes.
#[derive(PartialEq)]
enum Part {
    /// Not proven to work yet, nor known to fail.
    Pending,
    Working,
    Failed(String),
}

impl Shared {
    pub fn new(events: Sender<Event>, notify: Box<dyn Fn() + Send + Sync>) -> Self {
        Shared {
            events,
            notify,
            health: Mutex::new(Health {
                commands: Part::Pending,
                subscription: Part::Pending,
                epoch: 0,
                reported_up: None,
            }),
            probe_since: AtomicI64::new(0),
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
            abandoned: AtomicBool::new(false),
        }
    }

    /// Queues events for the reactor and rings it once.
    pub fn emit(&self, events: impl IntoIterator<Item = Event>) {
        let mut any = false;
        for event in events {
            any |= self.events.send(event).is_ok();
        }
        if any {
            (self.notify)();
        }
    }

    pub fn epoch(&self) -> u64 {
        self.health.lock().unwrap().epoch
    }

    /// The command connection works, re-registration included, as of a round trip that
    /// began at `epoch`.
    pub fn commands_ok(&self, epoch: u64) {
        let mut health = self.health.lock().unwrap();
        if health.epoch == epoch {
            health.commands = Part::Working;
            self.report(&mut health);
        }
    }

    pub fn commands_failed(&self, reason: &str) {
        let mut health = self.health.lock().unwrap();
        health.commands = Part::Failed(reason.to_string());
        self.report(&mut health);
    }

    pub fn subscription_ok(&self) {
        let mut health = self.health.lock().unwrap();
        health.subscription = Part::Working;
        self.report(&mut health);
    }

    /// The subscription broke: Redis may have restarted, so the command connection must prove
    /// itself again (its next round trip) before `Up`.
    pub fn subscription_failed(&self, reason: &str) {
        let mut health = self.health.lock().unwrap();
        health.subscription = Part::Failed(reason.to_string());
        health.epoch += 1;
        if health.commands == Part::Working {
            health.commands = Part::Pending;
        }
        self.report(&mut health);
    }

    /// Says `Up` or `Down` when the state differs from what was said last. Sent under the
    /// health lock so the two threads cannot reorder them.
    fn report(&self, health: &mut Health) {
        let event = match (&health.commands, &health.subscription) {
            (Part::Working, Part::Working) if health.reported_up != Some(true) => {
                health.reported_up = Some(true);
                Event::Up
            }
            (Part::Failed(reason), _) | (_, Part::Failed(reason))
                if health.reported_up != Some(false) =>
            {
                health.reported_up = Some(false);
                Event::Down(reason.clone())
            }
            _ => return,
        };
        self.emit([event]);
    }

    /// A probe is about to be published at `now_ms`.
    pub fn probe_sent(&self, now_ms: i64) {
        let _ = self
            .probe_since
            .compare_exchange(0, now_ms, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A probe arrived, or none can be expected (the command connection failed, or the
    /// subscription was just made).
    pub fn probe_clear(&self) {
        self.probe_since.store(0, Ordering::Release);
    }

    pub fn probe_overdue(&self, now_ms: i64) -> bool {
        let since = self.probe_since.load(Ordering::Acquire);
        since != 0 && now_ms - since > PROBE_TIMEOUT.as_millis() as i64
    }

    pub fn stop(&self) {
        *self.stopping.lock().unwrap() = true;
        self.stop_signal.notify_all();
    }

    pub fn stopping(&self) -> bool {
        *self.stopping.lock().unwrap()
    }

    /// Sleeps for `duration` unless stopped first; true when stopping.
    pub fn sleep(&self, duration: Duration) -> bool {
        let stopping = self.stopping.lock().unwrap();
        let (stopping, _) = self
            .stop_signal
            .wait_timeout_while(stopping, duration, |stopping| !*stopping)
            .unwrap();
        *stopping
    }

    /// Leave Redis as it is when stopping, as a crashed process would.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }
}
