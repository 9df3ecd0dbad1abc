//! One client connection on the client listener: its link and its protocol state. What a
//! frame does in each state is `session`'s business; this file only holds the data.

use std::sync::Arc;

use super::conns::HasLink;
use super::link::Link;
use crate::protocol::frame::{self, ByteOrder};
use crate::protocol::ws;
use crate::protocol::{Codec, Position};

/// What a client connection is, and therefore what its frames may do.
#[derive(Debug)]
pub enum State {
    /// Accepted, must authenticate before the auth timeout; `pending` while an auth
    /// function or the webhook is deciding; `resume` when its `/auth/server` gave the last
    /// place in its history it received.
    Unauthenticated {
        failures: u32,
        pending: bool,
        resume: Option<Box<Resume>>,
    },
    /// Authenticated as a uid; receives that uid's pushes.
    User { uid: Arc<str> },
    /// Authenticated as a uid, waiting for the cluster's answer about its history before
    /// `/auth/success`; the uid's pushes meanwhile are held.
    Resuming(Box<Resuming>),
    /// An authenticated business back-end; may push.
    Inner,
}

/// A connection whose history is being read from the cluster.
#[derive(Debug)]
pub struct Resuming {
    pub uid: Arc<str>,
    /// The place the client gave.
    pub resume: Resume,
    /// Live pushes that came meanwhile, framed for it, with their offsets.
    pub held: Vec<(u64, Box<[u8]>)>,
    pub held_bytes: usize,
}

/// The last place in its uid's history a resuming client received.
#[derive(Debug)]
pub struct Resume {
    pub epoch: String,
    pub offset: u64,
}

impl Resume {
    /// The place a client gave with its token; `None` if it gave none (it is not resuming).
    pub fn given(at: &Position) -> Option<Box<Resume>> {
        (!at.is_none()).then(|| {
            Box::new(Resume {
                epoch: at.epoch.to_string(),
                offset: at.offset,
            })
        })
    }
}

/// How a connection's messages are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A 4-byte length, then the message (the original's protocol, over TCP or TLS).
    Length = 0,
    /// One WebSocket message per message.
    WebSocket = 1,
}

/// The transports clients connect over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp = 0,
    Tls = 1,
    Ws = 2,
    Wss = 3,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// How a message is written for one connection: framing and codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Form {
    pub framing: Framing,
    pub codec: Codec,
}

impl Form {
    pub const COUNT: usize = 4;

    pub fn index(self) -> usize {
        self.framing as usize * 2 + self.codec as usize
    }

    /// Appends `{seq, uri, body}` framed for this form: a length header, or a WebSocket text
    /// (JSON) or binary (protobuf) frame.
    pub fn write(self, out: &mut Vec<u8>, order: ByteOrder, seq: i64, uri: &str, body: &str) {
        self.write_at(out, order, seq, uri, body, &Position::default());
    }

    /// [`write`](Self::write) with the message's place in its uid's history.
    pub fn write_at(
        self,
        out: &mut Vec<u8>,
        order: ByteOrder,
        seq: i64,
        uri: &str,
        body: &str,
        at: &Position,
    ) {
        let codec = self.codec;
        let payload = |out: &mut Vec<u8>| codec.write_payload_at(out, seq, uri, body, at);
        match self.framing {
            Framing::Length => frame::encode_with(out, order, payload),
            Framing::WebSocket => ws::encode_with(out, ws_opcode(codec), payload),
        }
    }

    /// Frames a payload already written in this form's codec.
    pub fn frame(self, out: &mut Vec<u8>, order: ByteOrder, payload: &[u8]) {
        match self.framing {
            Framing::Length => frame::encode(out, order, payload),
            Framing::WebSocket => ws::encode(out, ws_opcode(self.codec), payload),
        }
    }
}

/// WebSocket carries JSON in text frames and protobuf in binary ones.
fn ws_opcode(codec: Codec) -> ws::Opcode {
    match codec {
        Codec::Json => ws::Opcode::Text,
        Codec::Protobuf => ws::Opcode::Binary,
    }
}

pub struct ClientConn {
    pub link: Link,
    pub state: State,
    /// The codec its messages are in, fixed by its first message.
    pub codec: Option<Codec>,
    pub bad_frames: u16,
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
                resume: None,
            },
            codec: None,
            bad_frames: 0,
            over_soft_since: 0,
        }
    }

    /// The uid it is authenticated as (resuming or not).
    pub fn uid(&self) -> Option<&Arc<str>> {
        match &self.state {
            State::User { uid } => Some(uid),
            State::Resuming(resuming) => Some(&resuming.uid),
            _ => None,
        }
    }

    pub fn framing(&self) -> Framing {
        if self.link.ws().is_some() {
            Framing::WebSocket
        } else {
            Framing::Length
        }
    }

    /// The form the server writes this connection's messages in: its framing and codec
    /// (`before` until its first message has fixed the codec).
    pub fn form(&self, before: Codec) -> Form {
        Form {
            framing: self.framing(),
            codec: self.codec.unwrap_or(before),
        }
    }

    /// How it is connected, for the gauges.
    pub fn transport(&self) -> Transport {
        match (self.link.tls().is_some(), self.link.ws().is_some()) {
            (false, false) => Transport::Tcp,
            (true, false) => Transport::Tls,
            (false, true) => Transport::Ws,
            (true, true) => Transport::Wss,
        }
    }

    /// Still in its TLS handshake or WebSocket upgrade.
    pub fn is_handshaking(&self) -> bool {
        self.link.is_handshaking() || self.link.ws().is_some_and(|ws| !ws.open)
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
    /// A TLS handshake or WebSocket upgrade that failed.
    Handshake,
    /// A TLS handshake or WebSocket upgrade not done within `HandshakeTimeout`.
    HandshakeTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 16] = [
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
        CloseReason::Handshake,
        CloseReason::HandshakeTimeout,
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
            CloseReason::Handshake => "handshake",
            CloseReason::HandshakeTimeout => "handshake_timeout",
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
        // 112 bytes is what a connection cost before TLS, WebSocket, codecs and the soft
        // output limit: they live in boxes or spare bits. mio's sockets carry a selector id
        // in debug builds only (8 bytes, and the padding it brings).
        let mio_debug = if cfg!(debug_assertions) { 16 } else { 0 };
        assert!(
            std::mem::size_of::<ClientConn>() <= 112 + mio_debug,
            "{}",
            std::mem::size_of::<ClientConn>()
        );
        assert!(std::mem::size_of::<Link>() <= 80 + mio_debug);
        assert!(std::mem::size_of::<State>() <= 24);
        // What a WebSocket connection adds (a TLS session, over a kilobyte, is boxed apart).
        assert!(std::mem::size_of::<crate::reactor::link::Layers>() <= 32);
    }
}
