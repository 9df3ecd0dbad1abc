//! The message in protobuf: `plex.Message { int64 seq = 1; string uri = 2; string body = 3; }`
//! (`proto/plex.proto`), the same three fields as the JSON form, for clients that would rather
//! not write JSON.
//!
//! Written by hand rather than with prost: three fields do not need a code generator, and
//! reading borrows `uri` and `body` from the payload, so a frame costs no allocation (prost's
//! `String` fields allocate per frame); `benches/proto.rs` has the figures.
//!
//! Reading follows the reference implementation (upb, behind Python's and Ruby's protobuf):
//! unknown fields of every wire type but groups are skipped, and so is a known field number
//! with an unexpected wire type; the last of a repeated field wins; `uri` and `body` must be
//! UTF-8. Groups (wire types 3 and 4, deprecated and never written for this message) are an
//! error here, where upb and prost skip them. A tag or a length takes at most 5 bytes and any
//! other varint at most 10, of which the bits past 64 are dropped, as upb does (prost takes
//! tags and lengths of up to 10 bytes, and rejects bits past 64). Nothing is read past the
//! payload: whatever runs off its end is `Truncated`.

use std::borrow::Cow;
use std::fmt;

use super::message::{MessageRef, Position, RawMessage, RawStr};

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const I32: u8 = 5;

const SEQ_TAG: u8 = 1 << 3 | VARINT;
const URI_TAG: u8 = 2 << 3 | LEN;
const BODY_TAG: u8 = 3 << 3 | LEN;
const OFFSET_TAG: u8 = 4 << 3 | VARINT;
const EPOCH_TAG: u8 = 5 << 3 | LEN;

/// Longest varint: 64 bits in 7-bit groups.
const MAX_VARINT: usize = 10;
/// Longest tag or length: 32 bits in 7-bit groups.
const MAX_VARINT32: usize = 5;

/// Why a payload is not a `plex.Message`: a bad frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// A tag, varint, length or fixed-width value runs past the end of the payload.
    Truncated,
    /// A varint longer than 10 bytes, or a tag or length longer than 5.
    Overlong,
    /// Field number 0, or a tag past 32 bits.
    BadTag,
    /// Wire type 6 or 7.
    BadWireType(u8),
    /// Wire type 3 or 4: groups are not part of this message.
    Group,
    /// `uri` or `body` is not UTF-8.
    NotUtf8(std::str::Utf8Error),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bad protobuf message: ")?;
        match self {
            ProtoError::Truncated => f.write_str("truncated"),
            ProtoError::Overlong => f.write_str("varint too long"),
            ProtoError::BadTag => f.write_str("invalid tag"),
            ProtoError::BadWireType(w) => write!(f, "invalid wire type {w}"),
            ProtoError::Group => f.write_str("groups are not supported"),
            ProtoError::NotUtf8(e) => write!(f, "string field not UTF-8: {e}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Reads a payload as a `plex.Message`, borrowing `uri` and `body` from it. An empty payload
/// is the all-default message (which a frame reader takes for a keep-alive before it gets
/// here).
pub fn decode(payload: &[u8]) -> Result<MessageRef<'_>, ProtoError> {
    decode_raw(payload).map(RawMessage::into_ref)
}

/// [`decode`] into the form the server reads frames in.
pub fn decode_raw(payload: &[u8]) -> Result<RawMessage<'_>, ProtoError> {
    let mut input = Input(payload);
    let mut message = RawMessage::default();
    while !input.0.is_empty() {
        let (field, wire) = input.tag()?;
        match (field, wire) {
            (1, VARINT) => message.seq = input.varint()? as i64,
            (2, LEN) => message.uri = Cow::Borrowed(input.str()?),
            (3, LEN) => message.body = RawStr::plain(input.str()?),
            (4, VARINT) => message.position.offset = input.varint()?,
            (5, LEN) => message.position.epoch = Cow::Borrowed(input.str()?),
            _ => input.skip(wire)?,
        }
    }
    Ok(message)
}

/// The part of the payload not read yet.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A varint of at most `max_len` bytes.
    fn varint_of(&mut self, max_len: usize) -> Result<u64, ProtoError> {
        // Tags, and lengths under 128, take one byte.
        if let [byte @ 0..0x80, rest @ ..] = self.0 {
            self.0 = rest;
            return Ok(u64::from(*byte));
        }
        let mut value = 0;
        for (i, &byte) in self.0.iter().take(max_len).enumerate() {
            // Bits shifted past 64 (only from a 10th byte) are dropped.
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.0.len() < max_len {
            ProtoError::Truncated
        } else {
            ProtoError::Overlong
        })
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        self.varint_of(MAX_VARINT)
    }

    /// The field number and wire type of the next field.
    fn tag(&mut self) -> Result<(u32, u8), ProtoError> {
        let tag = u32::try_from(self.varint_of(MAX_VARINT32)?).map_err(|_| ProtoError::BadTag)?;
        match (tag >> 3, (tag & 7) as u8) {
            (0, _) => Err(ProtoError::BadTag),
            (_, START_GROUP | END_GROUP) => Err(ProtoError::Group),
            (_, wire @ 6..) => Err(ProtoError::BadWireType(wire)),
            field => Ok(field),
        }
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], ProtoError> {
        let len = usize::try_from(len).map_err(|_| ProtoError::Truncated)?;
        let (taken, rest) = self.0.split_at_checked(len).ok_or(ProtoError::Truncated)?;
        self.0 = rest;
        Ok(taken)
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.varint_of(MAX_VARINT32)?;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'a str, ProtoError> {
        std::str::from_utf8(self.bytes()?).map_err(ProtoError::NotUtf8)
    }

    /// Skips the value of a field nobody reads.
    fn skip(&mut self, wire: u8) -> Result<(), ProtoError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            _ => unreachable!("`tag` returns no other wire type"),
        }
    }
}

/// Appends `{seq, uri, body}` as a payload (no header) to `out`: fields in order, zero values
/// omitted as proto3 does. An all-default message is zero bytes, which on the wire is a
/// keep-alive frame; the server never sends one, since its `uri` is always set.
pub fn write_message(out: &mut Vec<u8>, seq: i64, uri: &str, body: &str) {
    write_message_at(out, seq, uri, body, &Position::default());
}

/// [`write_message`] with the message's place in its uid's history: `offset = 4` and
/// `epoch = 5`, omitted when absent.
pub fn write_message_at(out: &mut Vec<u8>, seq: i64, uri: &str, body: &str, at: &Position) {
    // Three tags, three lengths and two varints at most, besides the strings.
    out.reserve(3 * (1 + MAX_VARINT32) + 2 * (1 + MAX_VARINT) + uri.len() + body.len());
    if seq != 0 {
        out.push(SEQ_TAG);
        // Two's complement: a negative seq takes all 10 bytes, as int64 does.
        write_varint(out, seq as u64);
    }
    for (tag, value) in [(URI_TAG, uri), (BODY_TAG, body)] {
        if !value.is_empty() {
            out.push(tag);
            write_varint(out, value.len() as u64);
            out.extend_from_slice(value.as_bytes());
        }
    }
    if at.offset != 0 {
        out.push(OFFSET_TAG);
        write_varint(out, at.offset);
    }
    if !at.epoch.is_empty() {
        out.push(EPOCH_TAG);
        write_varint(out, at.epoch.len() as u64);
        out.extend_from_slice(at.epoch.as_bytes());
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(seq: i64, uri: &str, body: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, seq, uri, body);
        out
    }

    fn fields<'a>(m: &'a MessageRef<'_>) -> (i64, &'a str, &'a str) {
        (m.seq, &m.uri, &m.body)
    }

    #[test]
    fn writes_fields_in_order_and_omits_defaults() {
        assert_eq!(
            encoded(150, "/a", "hi"),
            b"\x08\x96\x01\x12\x02/a\x1a\x02hi"
        );
        assert_eq!(encoded(0, "/a", ""), b"\x12\x02/a");
        assert_eq!(encoded(0, "", ""), b"");
        let negative = encoded(-1, "", "");
        assert_eq!(negative.len(), 1 + 10);
        assert_eq!(&negative[1..], b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01");
    }

    #[test]
    fn reads_what_it_writes_borrowing_the_strings() {
        for seq in [0, 1, -1, 1_764_000_000_000, i64::MIN, i64::MAX] {
            let bytes = encoded(seq, "/ünï", &"x".repeat(300));
            let m = decode(&bytes).unwrap();
            assert_eq!(fields(&m), (seq, "/ünï", &*"x".repeat(300)));
            assert!(matches!(m.body, Cow::Borrowed(_)));
        }
        assert_eq!(decode(b"").unwrap(), MessageRef::default());
    }

    #[test]
    fn unknown_fields_and_unexpected_wire_types_are_skipped() {
        let bytes = b"\x20\x96\x01\x21abcdefgh\x22\x03xyz\x25abcd\x12\x02/a\
                      \x0a\x01z\x10\x05\x1d1234\xf8\xff\xff\xff\x0f\x00";
        assert_eq!(fields(&decode(bytes).unwrap()), (0, "/a", ""));
    }

    #[test]
    fn the_last_of_a_repeated_field_wins() {
        let bytes = b"\x08\x01\x12\x01a\x1a\x01b\x08\x02\x12\x01c\x1a\x00";
        assert_eq!(fields(&decode(bytes).unwrap()), (2, "c", ""));
    }

    #[test]
    fn varints_may_be_overlong_within_their_limit() {
        assert_eq!(
            decode(b"\x08\x81\x80\x80\x80\x80\x80\x80\x80\x80\x00")
                .unwrap()
                .seq,
            1
        );
        // Bits past 64 are dropped.
        let over = b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f";
        assert_eq!(decode(over).unwrap().seq, -1);
        assert_eq!(decode(b"\x88\x80\x80\x80\x00\x05").unwrap().seq, 5);
        assert_eq!(decode(b"\x12\x81\x80\x80\x80\x00a").unwrap().uri, "a");
    }

    #[test]
    fn malformed_payloads_are_errors() {
        use ProtoError::*;
        let cases: [(&[u8], ProtoError); 16] = [
            (b"\x08", Truncated),
            (b"\x08\x80", Truncated),
            (b"\x88", Truncated),
            (b"\x12\x05ab", Truncated),
            (b"\x12", Truncated),
            (b"\x21abc", Truncated),
            (b"\x25abc", Truncated),
            (
                b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                Overlong,
            ),
            (b"\x88\x80\x80\x80\x80\x00\x05", Overlong),
            (b"\x12\x81\x80\x80\x80\x80\x00a", Overlong),
            (b"\x00\x01", BadTag),
            (b"\x02\x00", BadTag),
            (b"\xf8\xff\xff\xff\x1f\x05", BadTag),
            (b"\x0e", BadWireType(6)),
            (b"\x1b\x1c\x12\x01a", Group),
            (b"\x24", Group),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode(bytes), Err(error), "{bytes:x?}");
        }
        assert!(matches!(decode(b"\x12\x01\xff"), Err(NotUtf8(_))));
        assert!(matches!(decode(b"\x1a\x03\xed\xa0\x80"), Err(NotUtf8(_))));
        // Invalid UTF-8 in an unknown field is just bytes.
        assert_eq!(decode(b"\x22\x01\xff\x12\x01a").unwrap().uri, "a");
    }
}
