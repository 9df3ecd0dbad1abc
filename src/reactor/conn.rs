//! One accepted TCP connection: its protocol state, the bytes of a partial frame it has sent,
//! and the output not yet written to it. The reactor owns every `Conn` in its slab; nothing
//! here touches `Poll`, the registry or other connections.

use std::io::{self, Write};
use std::sync::Arc;

use mio::net::TcpStream;

use super::buffer::BufferPool;
use super::timer::TimerId;
use super::webhook::Exchange;

/// What a connection is, and therefore what its frames may do.
#[derive(Debug)]
pub enum State {
    /// Accepted, must authenticate before the auth timeout; `pending` while an auth
    /// function or the webhook is deciding.
    Unauthenticated { failures: u32, pending: bool },
    /// Authenticated as a uid; receives that uid's pushes.
    User { uid: Arc<str> },
    /// An authenticated business back-end; may push.
    Inner,
    /// A connection on the HTTP listener; `continue_sent` once `100 Continue` went out for
    /// the request being received.
    Http { continue_sent: bool },
    /// An outgoing connection to the auth webhook (boxed: rare, and larger than the rest).
    Webhook(Box<Exchange>),
}

/// A reference to a connection that stays correct when its slab key is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub key: u32,
    pub generation: u32,
}

/// Why a connection was closed: logs and counters use this one enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed,
    IoError,
    AuthTimeout,
    HeartbeatTimeout,
    /// An HTTP connection sent no complete request for `HttpIdleTimeout`.
    IdleTimeout,
    AuthFailures,
    FrameTooLarge,
    BadFrames,
    /// An HTTP request that cannot be answered on a reusable connection (4xx then close).
    BadRequest,
    /// An HTTP exchange ended by `Connection: close` or HTTP/1.0.
    Done,
    SlowConsumer,
    Kicked,
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 13] = [
        CloseReason::PeerClosed,
        CloseReason::IoError,
        CloseReason::AuthTimeout,
        CloseReason::HeartbeatTimeout,
        CloseReason::IdleTimeout,
        CloseReason::AuthFailures,
        CloseReason::FrameTooLarge,
        CloseReason::BadFrames,
        CloseReason::BadRequest,
        CloseReason::Done,
        CloseReason::SlowConsumer,
        CloseReason::Kicked,
        CloseReason::Shutdown,
    ];

    /// Short snake_case name, used in logs and as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IoError => "io_error",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::AuthFailures => "auth_failures",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::BadFrames => "bad_frames",
            CloseReason::BadRequest => "bad_request",
            CloseReason::Done => "done",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Kicked => "kicked",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub struct Conn {
    pub stream: TcpStream,
    pub state: State,
    /// The start of a frame whose end has not arrived yet; unallocated otherwise.
    pub input: Vec<u8>,
    /// Encoded frames not yet written; `output[..written]` already went out.
    output: Vec<u8>,
    written: usize,
    /// The one pending timer of this connection (auth, heartbeat or idle expiry).
    pub timer: TimerId,
    pub generation: u32,
    /// Tick of the last complete frame (or of accept, or of authentication).
    pub last_active: u32,
    pub bad_frames: u32,
    /// Registered for WRITABLE because a write would have blocked.
    pub write_interest: bool,
    /// Queued in the reactor's flush list for this turn.
    pub dirty: bool,
    /// Set when the connection is to close once its output is flushed: it reads nothing
    /// more, half-closes after the last byte, and waits briefly for the peer's EOF so that
    /// the peer is not reset before it has read our last words.
    pub closing: Option<CloseReason>,
}

impl Conn {
    pub fn new(stream: TcpStream, state: State, generation: u32, timer: TimerId, now: u32) -> Self {
        Conn {
            stream,
            state,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            timer,
            generation,
            last_active: now,
            bad_frames: 0,
            write_interest: false,
            dirty: false,
            closing: None,
        }
    }

    /// Bytes queued but not yet written.
    pub fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    /// The output buffer to append frames to, borrowed from the pool if there is none.
    pub fn output(&mut self, pool: &mut BufferPool) -> &mut Vec<u8> {
        if self.output.capacity() == 0 {
            self.output = pool.take();
        } else if self.written > 0 && self.written >= self.output.len() / 2 {
            // Drop what was written once it is at least half the buffer: amortised O(1).
            self.output.drain(..self.written);
            self.written = 0;
        }
        &mut self.output
    }

    /// Writes pending output until done or the socket is full. `Ok(true)` when everything
    /// went out (the buffer is then back in the pool), `Ok(false)` when the rest must wait
    /// for the socket to become writable.
    pub fn write_out(&mut self, pool: &mut BufferPool) -> io::Result<bool> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        pool.give(std::mem::take(&mut self.output));
        self.written = 0;
        Ok(true)
    }

    /// Gives both buffers back to the pool; the connection is going away.
    pub fn release(&mut self, pool: &mut BufferPool) {
        pool.give(std::mem::take(&mut self.input));
        pool.give(std::mem::take(&mut self.output));
        self.written = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // Every idle connection pays for this struct and nothing else on the heap (its
        // buffers are unallocated). Growing it costs megabytes per million connections.
        assert!(
            std::mem::size_of::<Conn>() <= 128,
            "{}",
            std::mem::size_of::<Conn>()
        );
        assert!(std::mem::size_of::<State>() <= 24);
    }
}
