//! Which form a connection's messages take, JSON (`message.rs`) or protobuf (`proto.rs`), in
//! one place: how a connection's codec is told from its first frame, and how a message is
//! written and read in either.
//!
//! There is no handshake: a JSON message starts with `{` or JSON whitespace, while a protobuf
//! `plex.Message` starts with the tag of its first field (0x08, 0x12 or 0x1a: encoders write
//! fields in number order). Those bytes read as JSON would only be a tag of field 1 with an
//! unexpected wire type (`\t`, `\n`, `\r`), of unknown field 4 (space) or a group (`{`):
//! nothing an encoder of this message writes first.
//!
//! In protobuf an all-default message (`seq` 0, `uri` and `body` empty) is an empty payload,
//! which is also the keep-alive frame: it cannot be told from a keep-alive, and is taken for
//! one. Neither the server nor the clients send such a message: their `uri` is always set.

use std::fmt;

use serde::Deserialize;

use super::frame::{self, ByteOrder};
use super::message::{self, DecodeError, MessageRef, Position};
use super::proto::{self, ProtoError};

/// The form of a connection's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// `{"seq", "uri", "body"}`, the original's form.
    #[default]
    Json,
    /// `plex.Message` of `proto/plex.proto`.
    Protobuf,
}

impl Codec {
    /// The codec a non-empty payload is written in; `None` for an empty one (a keep-alive,
    /// which tells nothing).
    pub fn sniff(payload: &[u8]) -> Option<Codec> {
        match payload.first()? {
            b'{' | b' ' | b'\t' | b'\n' | b'\r' => Some(Codec::Json),
            _ => Some(Codec::Protobuf),
        }
    }

    /// Appends `{seq, uri, body}` as a payload, with no header: to encode a message once
    /// per codec and frame it (or not) for each transport.
    pub fn write_payload(self, out: &mut Vec<u8>, seq: i64, uri: &str, body: &str) {
        self.write_payload_at(out, seq, uri, body, &Position::default());
    }

    /// [`write_payload`](Self::write_payload) with the message's place in its uid's history.
    pub fn write_payload_at(
        self,
        out: &mut Vec<u8>,
        seq: i64,
        uri: &str,
        body: &str,
        at: &Position,
    ) {
        match self {
            Codec::Json => message::write_message_at(out, seq, uri, body, at),
            Codec::Protobuf => proto::write_message_at(out, seq, uri, body, at),
        }
    }

    /// Appends `{seq, uri, body}` as one frame, header and payload.
    pub fn write_frame(self, out: &mut Vec<u8>, order: ByteOrder, seq: i64, uri: &str, body: &str) {
        frame::encode_with(out, order, |out| self.write_payload(out, seq, uri, body));
    }

    /// Reads a non-empty payload (an empty one is a keep-alive, and not a message in JSON).
    /// Strings are borrowed from the payload, except JSON strings with escapes.
    pub fn decode(self, payload: &[u8]) -> Result<MessageRef<'_>, CodecError> {
        match self {
            Codec::Json => MessageRef::decode(payload).map_err(CodecError::Json),
            Codec::Protobuf => proto::decode(payload).map_err(CodecError::Protobuf),
        }
    }
}

/// The codec setting of a server: accept either, or only one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecChoice {
    /// Each connection speaks what its first non-empty frame is written in.
    #[default]
    Auto,
    Json,
    Protobuf,
}

impl CodecChoice {
    /// The names a config uses.
    pub const NAMES: [(&'static str, CodecChoice); 3] = [
        ("auto", CodecChoice::Auto),
        ("json", CodecChoice::Json),
        ("protobuf", CodecChoice::Protobuf),
    ];

    /// The codec the server writes in before a connection has sent a message: the pinned
    /// one, or JSON.
    pub fn before_first_message(self) -> Codec {
        match self {
            CodecChoice::Protobuf => Codec::Protobuf,
            CodecChoice::Auto | CodecChoice::Json => Codec::Json,
        }
    }

    /// The codec of a connection whose first non-empty frame is `payload`; `None` while only
    /// keep-alives have come and the choice is `Auto`.
    pub fn codec_for(self, payload: &[u8]) -> Option<Codec> {
        match self {
            CodecChoice::Auto => Codec::sniff(payload),
            CodecChoice::Json => Some(Codec::Json),
            CodecChoice::Protobuf => Some(Codec::Protobuf),
        }
    }
}

/// A payload that is not a well-formed message in its connection's codec: a bad frame.
#[derive(Debug)]
pub enum CodecError {
    Json(DecodeError),
    Protobuf(ProtoError),
    /// A message in another codec than the connection's (or the server's pinned one).
    Mismatch,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Json(e) => e.fmt(f),
            CodecError::Protobuf(e) => e.fmt(f),
            CodecError::Mismatch => f.write_str("a message in another codec than the connection's"),
        }
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CodecError::Json(e) => Some(e),
            CodecError::Protobuf(e) => Some(e),
            CodecError::Mismatch => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_in_both_codecs_and_is_absent_by_default() {
        let at = Position {
            offset: 42,
            epoch: "e-7".into(),
        };
        for codec in [Codec::Json, Codec::Protobuf] {
            let mut out = Vec::new();
            codec.write_payload_at(&mut out, 5, "/m", "b", &at);
            let m = codec.decode(&out).unwrap();
            assert_eq!((m.seq, &*m.uri, &*m.body, &m.position), (5, "/m", "b", &at));
            out.clear();
            codec.write_payload(&mut out, 5, "/m", "b");
            assert!(codec.decode(&out).unwrap().position.is_none());
        }
        let mut json = Vec::new();
        Codec::Json.write_payload_at(&mut json, 1, "/m", "", &at);
        assert_eq!(json, br#"{"seq":1,"uri":"/m","offset":42,"epoch":"e-7"}"#);
    }
    use crate::protocol::Decoder;

    #[test]
    fn sniffs_json_by_its_first_byte_and_protobuf_by_anything_else() {
        for json in [&b"{}"[..], b" {}", b"\t{}", b"\n{}", b"\r\n{}"] {
            assert_eq!(Codec::sniff(json), Some(Codec::Json), "{json:?}");
        }
        for codec in [Codec::Json, Codec::Protobuf] {
            for (seq, uri, body) in [(0, "/a", ""), (5, "/a", "b"), (0, "", "b"), (-1, "", "")] {
                let mut out = Vec::new();
                codec.write_payload(&mut out, seq, uri, body);
                assert_eq!(Codec::sniff(&out), Some(codec), "{codec:?} {out:?}");
            }
        }
        assert_eq!(Codec::sniff(b""), None);
    }

    #[test]
    fn a_choice_forces_a_codec_or_sniffs() {
        assert_eq!(
            CodecChoice::Auto.codec_for(b"\x12\x01a"),
            Some(Codec::Protobuf)
        );
        assert_eq!(CodecChoice::Auto.codec_for(b"{}"), Some(Codec::Json));
        assert_eq!(CodecChoice::Auto.codec_for(b""), None);
        assert_eq!(CodecChoice::Json.codec_for(b"\x12\x01a"), Some(Codec::Json));
        assert_eq!(
            CodecChoice::Protobuf.codec_for(b"{}"),
            Some(Codec::Protobuf)
        );
        let choices: Vec<CodecChoice> =
            serde_json::from_str(r#"["auto", "json", "protobuf"]"#).unwrap();
        assert_eq!(
            choices,
            [CodecChoice::Auto, CodecChoice::Json, CodecChoice::Protobuf]
        );
        let codec: Codec = serde_json::from_str(r#""protobuf""#).unwrap();
        assert_eq!(codec, Codec::Protobuf);
        assert!(serde_json::from_str::<Codec>(r#""auto""#).is_err());
    }

    #[test]
    fn frames_carry_the_payload_in_either_codec() {
        let decoder = Decoder::new(ByteOrder::Little, 1024);
        for codec in [Codec::Json, Codec::Protobuf] {
            let mut frame = Vec::new();
            codec.write_frame(&mut frame, ByteOrder::Little, 7, "/m", "hello");
            let (payload, used) = decoder.decode(&frame).unwrap().unwrap();
            assert_eq!(used, frame.len());
            let mut direct = Vec::new();
            codec.write_payload(&mut direct, 7, "/m", "hello");
            assert_eq!(payload, direct);
            let m = codec.decode(payload).unwrap();
            assert_eq!((m.seq, &*m.uri, &*m.body), (7, "/m", "hello"));
        }
    }

    #[test]
    fn an_all_default_protobuf_message_is_a_keep_alive_frame() {
        let mut frame = Vec::new();
        Codec::Protobuf.write_frame(&mut frame, ByteOrder::Big, 0, "", "");
        assert_eq!(frame, [0, 0, 0, 0]);
    }

    #[test]
    fn errors_say_which_codec_failed() {
        let json = Codec::Json.decode(b"\x12\x01a").unwrap_err();
        assert!(matches!(json, CodecError::Json(_)), "{json}");
        let proto = Codec::Protobuf.decode(b"{}").unwrap_err();
        assert!(
            matches!(proto, CodecError::Protobuf(ProtoError::Group)),
            "{proto}"
        );
        assert!(proto.to_string().contains("protobuf"), "{proto}");
    }
}
