//! The wire protocol: length-prefixed frames carrying JSON messages.
//! See PROTOCOL.md §1–§3; this module is pure (no I/O) so that clients, tools and tests share it.

pub mod frame;
pub mod message;
pub mod uri;
pub mod ws;

pub use frame::{ByteOrder, Decoder, FrameTooLarge};
pub use message::{DecodeError, Message, MessageRef, PushRequest, SeqClock, encode_message};
