//! WebSocket (RFC 6455) for browsers: the upgrade handshake on `/plex/v1/ws`, frames, and the
//! messages they carry. Pure and incremental like [`super::frame`]: the reactor reads into its
//! shared buffer, [`Decoder::read`] unmasks complete frames in place and says how many bytes
//! it took, and a connection keeps only the bytes of a partial frame plus a [`ReadState`] that
//! is one null pointer while no fragmented message is in flight.
//!
//! Framing is written by hand rather than run through tungstenite: tungstenite owns the stream,
//! keeps a read buffer and a write buffer per connection and allocates every frame's payload,
//! which the shared-buffer reactor cannot afford for hundreds of thousands of idle sockets.
//! tungstenite is the independent peer in the tests instead.
//!
//! On a [`ProtocolError`] the reactor sends a close frame with its code and closes; on a
//! received [`Message::Close`] it answers with a close frame and closes.

mod codec;
mod handshake;
mod message;

pub use codec::{
    Frame, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, Opcode, Role, encode, encode_client, encode_close,
    encode_with, write_close_payload,
};
pub use handshake::{
    Accepted, PATH, PROTOCOL, Rejected, TOKEN_PROTOCOL_PREFIX, UpgradeRequest, accept, accept_key,
};
pub(crate) use handshake::{has_token, percent_decode};
pub use message::{Close, Decoder, Message, ReadState};

/// Why a connection is closed, as sent in a close frame (RFC 6455 §7.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    Normal = 1000,
    /// The server is shutting down.
    GoingAway = 1001,
    Protocol = 1002,
    /// Binary frames where only text is meaningful.
    Unsupported = 1003,
    /// A text message or close reason that is not UTF-8.
    BadPayload = 1007,
    /// Authentication failed or timed out, or the connection was kicked.
    Policy = 1008,
    TooBig = 1009,
    Internal = 1011,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// The peer broke the protocol: close the connection with `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: CloseCode,
    /// Short enough to go in the close frame.
    pub reason: &'static str,
}

impl ProtocolError {
    const fn protocol(reason: &'static str) -> Self {
        ProtocolError {
            code: CloseCode::Protocol,
            reason,
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code.code())
    }
}

impl std::error::Error for ProtocolError {}
