//! The wire protocol: length-prefixed frames carrying messages in JSON or protobuf.
//! See PROTOCOL.md §1–§3; this module is pure (no I/O) so that clients, tools and tests share it.

pub mod codec;
pub mod frame;
pub mod message;
pub mod proto;
pub mod uri;
pub mod ws;

pub use codec::{Codec, CodecChoice, CodecError};
pub use frame::{ByteOrder, Decoder, FrameTooLarge};
pub use message::{
    DecodeError, Message, MessageRef, Position, PushRequest, SeqClock, encode_message,
};
pub use proto::ProtoError;
