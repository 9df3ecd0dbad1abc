//! The handle: a cloneable, `Send` way for other threads to talk to the reactor. Commands go
//! through a bounded queue and the reactor is woken with `mio::Waker`; a burst of commands
//! costs one wake-up, not one per command.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};

use mio::Waker;

use crate::auth::AuthTicket;
use crate::protocol::uri::{self, BadPushUri};
use crate::stats::Stats;

/// Commands the handle can queue; the queue holds at most this many before senders wait.
const QUEUE_CAPACITY: usize = 64 * 1024;

pub(crate) enum Command {
    Push {
        uids: Vec<String>,
        uri: String,
        body: String,
    },
    Broadcast {
        uri: String,
        body: String,
    },
    Kick {
        uid: String,
        reply: SyncSender<usize>,
    },
    Online {
        uids: Vec<String>,
        reply: SyncSender<Vec<usize>>,
    },
    Stats {
        reply: SyncSender<Stats>,
    },
    CompleteAuth {
        ticket: AuthTicket,
        uid: Option<String>,
    },
    Shutdown,
}

/// Why a handle call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleError {
    /// The server has stopped.
    Stopped,
    /// The push's uri is empty or reserved by the protocol.
    BadUri(BadPushUri),
    /// The command queue is full and this thread runs the reactor, so it cannot wait.
    Busy,
    /// A call that waits for the reactor's answer was made on the thread that runs the
    /// reactor (from a hook, or between `Server::turn` calls): it would wait forever.
    OnReactorThread,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::Stopped => f.write_str("the server has stopped"),
            HandleError::BadUri(e) => write!(f, "cannot push: {e}"),
            HandleError::Busy => f.write_str("the command queue is full"),
            HandleError::OnReactorThread => {
                f.write_str("this call waits for the reactor and cannot be made from a hook")
            }
        }
    }
}

impl std::error::Error for HandleError {}

struct Shared {
    /// Shared with whatever else wakes the reactor (the cluster's broker threads).
    waker: Arc<Waker>,
    /// A wake-up is on its way; senders need not wake the reactor again.
    wake_pending: AtomicBool,
    /// The thread that last ran a turn: it cannot wait for the reactor's answers.
    driver: Mutex<Option<ThreadId>>,
}

/// Talks to a running server from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    tx: SyncSender<Command>,
    shared: Arc<Shared>,
}

/// The reactor's end of the handle queue.
pub(crate) struct Commands {
    rx: Receiver<Command>,
    shared: Arc<Shared>,
}

pub(crate) fn channel(waker: Arc<Waker>) -> (Handle, Commands) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
    let shared = Arc::new(Shared {
        waker,
        wake_pending: AtomicBool::new(false),
        driver: Mutex::new(None),
    });
    (
        Handle {
            tx,
            shared: shared.clone(),
        },
        Commands { rx, shared },
    )
}

impl Commands {
    /// Records the thread running this turn, so that handle calls on it do not wait.
    pub fn driven_by_current_thread(&self) {
        let me = thread::current().id();
        let mut driver = self.shared.driver.lock().unwrap_or_else(|e| e.into_inner());
        if *driver != Some(me) {
            *driver = Some(me);
        }
    }

    /// Call on each wake-up before draining, so that a command sent during the drain wakes
    /// the reactor again.
    pub fn rearm(&self) {
        self.shared.wake_pending.store(false, Ordering::SeqCst);
    }

    /// The next queued command, if any.
    pub fn next(&self) -> Option<Command> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        // The reactor is gone: calls fail with `Stopped` on every thread from now on.
        *self.shared.driver.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Handle {
    /// Queues a push of `{uri, body}` to every live connection of `uid`. Returns once queued;
    /// the reactor delivers it on its next turn.
    pub fn push(&self, uid: &str, uri: &str, body: &str) -> Result<(), HandleError> {
        self.push_many(&[uid], uri, body)
    }

    /// Queues one push to several uids; the frame is encoded once for all of them.
    pub fn push_many(&self, uids: &[&str], uri: &str, body: &str) -> Result<(), HandleError> {
        uri::check_push_uri(uri).map_err(HandleError::BadUri)?;
        self.send(Command::Push {
            uids: uids.iter().map(|u| u.to_string()).collect(),
            uri: uri.to_owned(),
            body: body.to_owned(),
        })
    }

    /// Queues `{uri, body}` to every user connection.
    pub fn broadcast(&self, uri: &str, body: &str) -> Result<(), HandleError> {
        uri::check_push_uri(uri).map_err(HandleError::BadUri)?;
        self.send(Command::Broadcast {
            uri: uri.to_owned(),
            body: body.to_owned(),
        })
    }

    /// Closes every connection of `uid`; returns how many were closed.
    pub fn kick(&self, uid: &str) -> Result<usize, HandleError> {
        self.ask(|reply| Command::Kick {
            uid: uid.to_owned(),
            reply,
        })
    }

    /// Number of live connections of `uid`.
    pub fn online(&self, uid: &str) -> Result<usize, HandleError> {
        self.online_many(&[uid]).map(|counts| counts[0])
    }

    /// Number of live connections of each uid, in order.
    pub fn online_many(&self, uids: &[&str]) -> Result<Vec<usize>, HandleError> {
        self.ask(|reply| Command::Online {
            uids: uids.iter().map(|u| u.to_string()).collect(),
            reply,
        })
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Result<Stats, HandleError> {
        self.ask(|reply| Command::Stats { reply })
    }

    /// Completes an authentication its auth function left `Pending`: `Some(uid)` accepts,
    /// `None` rejects. A ticket whose client has gone (closed, timed out) is ignored.
    pub fn complete_auth(
        &self,
        ticket: AuthTicket,
        uid: Option<String>,
    ) -> Result<(), HandleError> {
        self.send(Command::CompleteAuth { ticket, uid })
    }

    /// Asks the server to stop: it stops accepting, flushes pending output within
    /// `ShutdownTimeout`, closes every connection and returns from `run`.
    pub fn shutdown(&self) -> Result<(), HandleError> {
        self.send(Command::Shutdown)
    }

    fn on_driver_thread(&self) -> bool {
        let driver = self.shared.driver.lock().unwrap_or_else(|e| e.into_inner());
        *driver == Some(thread::current().id())
    }

    fn send(&self, command: Command) -> Result<(), HandleError> {
        if self.on_driver_thread() {
            // The reactor cannot wait for itself to drain the queue.
            self.tx.try_send(command).map_err(|e| match e {
                TrySendError::Full(_) => HandleError::Busy,
                TrySendError::Disconnected(_) => HandleError::Stopped,
            })?;
        } else {
            self.tx.send(command).map_err(|_| HandleError::Stopped)?;
        }
        if !self.shared.wake_pending.swap(true, Ordering::SeqCst) {
            self.shared.waker.wake().map_err(|_| HandleError::Stopped)?;
        }
        Ok(())
    }

    fn ask<T>(&self, command: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, HandleError> {
        if self.on_driver_thread() {
            return Err(HandleError::OnReactorThread);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(command(reply))?;
        answer.recv().map_err(|_| HandleError::Stopped)
    }
}
