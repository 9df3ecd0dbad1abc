//! One client connection on the client listener: its link and its protocol state. What a
//! frame does in each state is `session`'s business; this file only holds the data.

use std::sync::Arc;

use super::conns::HasLink;
use super::link::Link;

/// What a client connection is, and therefore what its frames may do.
#[derive(Debug)]
pub enum State {
    /// Accepted, must authenticate before the auth timeout; `pending` while an auth
    /// function or the webhook is deciding.
    Unauthenticated { failures: u32, pending: bool },
    /// Authenticated as a uid; receives that uid's pushes.
    User { uid: Arc<str> },
    /// An authenticated business back-end; may push.
    Inner,
}

pub struct ClientConn {
    pub link: Link,
    pub state: State,
    pub bad_frames: u32,
    /// Tick at which its pending output first went over the soft limit; 0 while under it.
    pub over_soft_since: u32,
}

impl ClientConn {
    pub fn new(link: Link) -> Self {
        ClientConn {
            link,
            state: State::Unauthenticated {
                failures: 0,
                pending: false,
            },
            bad_frames: 0,
            over_soft_since: 0,
        }
    }

    pub fn is_user(&self) -> bool {
        matches!(self.state, State::User { .. })
    }
}

impl HasLink for ClientConn {
    fn link(&self) -> &Link {
        &self.link
    }
    fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }
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
    /// An idle HTTP connection closed to make room at `MaxHttpConnections`.
    Evicted,
}

impl CloseReason {
    pub const ALL: [CloseReason; 14] = [
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
        CloseReason::Evicted,
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
            CloseReason::Evicted => "evicted",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
            std::mem::size_of::<ClientConn>() <= 128,
            "{}",
            std::mem::size_of::<ClientConn>()
        );
        assert!(std::mem::size_of::<State>() <= 24);
    }
}
