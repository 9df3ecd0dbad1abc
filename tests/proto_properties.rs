//! Property tests of the protobuf codec (`proto/plex.proto`) beside the JSON one: messages
//! round-trip through both; protobuf payloads read as a model of proto3 says, cut anywhere
//! and chunked anyhow; hostile bytes never panic nor read past the payload. prost's derived
//! decoder is the cross-check, with the few places where it is knowingly stricter or laxer
//! than this codec (which follows upb) spelled out. The case counts keep the file to a few
//! seconds; `PROPTEST_CASES=100000` runs longer.

mod common;
#[path = "common/prost.rs"]
mod prost_message;

use std::borrow::Cow;

use common::chunks::{config, cuts, mutated, reads};
use plex::protocol::{ByteOrder, Codec, Decoder, Message, MessageRef, ProtoError, proto};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;
use prost_message::ProstMessage;

fn seq() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1i64),
        Just(i64::MIN),
        Just(i64::MAX),
        0i64..200,
        any::<i64>()
    ]
}

/// Any text: JSON's special characters, multi-byte ones, and now and then past 127 bytes
/// (a length of two bytes).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[\"\\\\/\\x00-\\x1f a-z\u{7f}\u{80}\u{2028}\u{feff}😀]{0,24}",
        1 => any::<String>(),
        1 => vec(any::<char>(), 100..200).prop_map(String::from_iter),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (seq(), text(), text()).prop_map(|(seq, uri, body)| Message { seq, uri, body })
}

fn prost_of(m: &Message) -> ProstMessage {
    ProstMessage {
        seq: m.seq,
        uri: m.uri.clone(),
        body: m.body.clone(),
    }
}

fn from_prost(m: ProstMessage) -> Message {
    Message {
        seq: m.seq,
        uri: m.uri,
        body: m.body,
    }
}

/// One field of a generated payload.
#[derive(Clone, Debug)]
enum Field {
    /// `seq`, its varint padded with `padding` redundant bytes (within 10 in all).
    Seq(i64, usize),
    Uri(String),
    Body(String),
    /// A field no one reads: an unknown number, or a known one with an unexpected wire type.
    Other(u32, Value),
}

#[derive(Clone, Debug)]
enum Value {
    Varint(u64),
    I64([u8; 8]),
    Len(Vec<u8>),
    I32([u8; 4]),
}

impl Value {
    fn wire(&self) -> u32 {
        match self {
            Value::Varint(_) => 0,
            Value::I64(_) => 1,
            Value::Len(_) => 2,
            Value::I32(_) => 5,
        }
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64, padding: usize) {
    let mut bytes = Vec::new();
    loop {
        bytes.push(n as u8 & 0x7f);
        n >>= 7;
        if n == 0 {
            break;
        }
    }
    bytes.resize((bytes.len() + padding).min(10), 0);
    let last = bytes.len() - 1;
    for b in &mut bytes[..last] {
        *b |= 0x80;
    }
    out.extend(bytes);
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut tag = |number: u32, wire: u32| varint(out, u64::from(number << 3 | wire), 0);
        match self {
            Field::Seq(n, padding) => {
                tag(1, 0);
                varint(out, *n as u64, *padding);
            }
            Field::Uri(s) | Field::Body(s) => {
                tag(if matches!(self, Field::Uri(_)) { 2 } else { 3 }, 2);
                varint(out, s.len() as u64, 0);
                out.extend_from_slice(s.as_bytes());
            }
            Field::Other(number, value) => {
                tag(*number, value.wire());
                match value {
                    Value::Varint(n) => varint(out, *n, 0),
                    Value::I64(b) => out.extend_from_slice(b),
                    Value::Len(b) => {
                        varint(out, b.len() as u64, 0);
                        out.extend_from_slice(b);
                    }
                    Value::I32(b) => out.extend_from_slice(b),
                }
            }
        }
    }

    /// A known field number with another wire type than its own: prost rejects it.
    fn is_mistyped(&self) -> bool {
        match self {
            Field::Other(1, value) => value.wire() != 0,
            Field::Other(2 | 3, value) => value.wire() != 2,
            _ => false,
        }
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::Varint),
        any::<[u8; 8]>().prop_map(Value::I64),
        // Not UTF-8 at times: an unknown field's bytes are not checked.
        vec(any::<u8>(), 0..40).prop_map(Value::Len),
        any::<[u8; 4]>().prop_map(Value::I32),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    // 4 and 5 are the history position's fields, checked in their own round trip.
    let unknown_number = prop_oneof![6u32..20, 20u32..(1 << 29)];
    let mistyped = prop_oneof![
        (
            Just(1u32),
            value().prop_filter("not a varint", |v| v.wire() != 0)
        ),
        (
            2u32..=3,
            value().prop_filter("not a string", |v| v.wire() != 2)
        ),
    ];
    prop_oneof![
        3 => (seq(), prop_oneof![3 => Just(0usize), 1 => 0usize..10]).prop_map(|(n, p)| Field::Seq(n, p)),
        3 => text().prop_map(Field::Uri),
        3 => text().prop_map(Field::Body),
        2 => (unknown_number, value()).prop_map(|(n, v)| Field::Other(n, v)),
        1 => mistyped.prop_map(|(n, v)| Field::Other(n, v)),
    ]
}

/// proto3 reading the fields in order: the last of each wins, the others are skipped.
fn model(fields: &[Field]) -> Message {
    let mut m = Message::default();
    for field in fields {
        match field {
            Field::Seq(n, _) => m.seq = *n,
            Field::Uri(s) => m.uri = s.clone(),
            Field::Body(s) => m.body = s.clone(),
            Field::Other(..) => {}
        }
    }
    m
}

/// The payload and where each field ends in it.
fn payload(fields: &[Field]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let ends = fields
        .iter()
        .map(|f| {
            f.encode(&mut out);
            out.len()
        })
        .collect();
    (out, ends)
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    vec(field(), 0..8)
}

/// Reads `bytes` from inside a larger buffer, followed by bytes that would change the result
/// if the decoder read on; checks that the result is the same as from an exact copy, and that
/// the strings it borrows lie within `bytes`.
fn decode_within(bytes: &[u8]) -> Result<Message, ProtoError> {
    let exact = proto::decode(bytes).map(MessageRef::into_owned);
    let mut padded = bytes.to_vec();
    padded.extend_from_slice(b"\x12\x03BAD\x1a\x03BAD\x08\x2a");
    let within = &padded[..bytes.len()];
    let result = proto::decode(within);
    if let Ok(m) = &result {
        let range = within.as_ptr_range();
        for s in [&m.uri, &m.body] {
            if s.is_empty() {
                continue; // the default, which allocates nothing
            }
            assert!(matches!(s, Cow::Borrowed(_)), "{s:?} allocated");
            let inside = range.start <= s.as_ptr() && s.as_bytes().as_ptr_range().end <= range.end;
            assert!(inside, "{s:?} borrowed from outside the payload");
        }
    }
    let result = result.map(MessageRef::into_owned);
    assert_eq!(result, exact, "read past the payload");
    result
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_message_round_trips_through_both_codecs(
        message in message(),
        order in prop_oneof![Just(ByteOrder::Big), Just(ByteOrder::Little)],
    ) {
        let decoder = Decoder::new(order, u32::MAX);
        for codec in [Codec::Json, Codec::Protobuf] {
            let mut frame = Vec::new();
            codec.write_frame(&mut frame, order, message.seq, &message.uri, &message.body);
            let (payload, used) = decoder.decode(&frame).unwrap().unwrap();
            prop_assert_eq!(used, frame.len());
            if payload.is_empty() {
                // The one message that is also the keep-alive frame.
                prop_assert_eq!(codec, Codec::Protobuf);
                prop_assert_eq!(&message, &Message::default());
                continue;
            }
            prop_assert_eq!(Codec::sniff(payload), Some(codec));
            let decoded = codec.decode(payload).unwrap().into_owned();
            prop_assert_eq!(&decoded, &message);
        }
    }

    #[test]
    fn protobuf_is_written_byte_for_byte_as_prost_writes_it(message in message()) {
        let mut ours = Vec::new();
        Codec::Protobuf.write_payload(&mut ours, message.seq, &message.uri, &message.body);
        prop_assert_eq!(&ours, &prost_of(&message).encode_to_vec());
        prop_assert_eq!(from_prost(ProstMessage::decode(&ours[..]).unwrap()), message);
    }

    #[test]
    fn payloads_read_as_proto3_says_and_as_prost_reads_them(fields in fields()) {
        let (bytes, _) = payload(&fields);
        let ours = decode_within(&bytes);
        prop_assert_eq!(&ours, &Ok(model(&fields)));
        let prost = ProstMessage::decode(&bytes[..]).map(from_prost);
        if fields.iter().any(Field::is_mistyped) {
            // prost rejects a known field number with another wire type; upb skips it.
            let e = prost.unwrap_err().to_string();
            prop_assert!(e.contains("invalid wire type"), "{}", e);
        } else {
            prop_assert_eq!(prost.ok(), ours.ok());
        }
    }

    #[test]
    fn payloads_cut_at_any_byte_are_truncated_or_a_prefix_of_fields(
        fields in fields(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let (bytes, ends) = payload(&fields);
        let cut = cut.index(bytes.len() + 1);
        let got = decode_within(&bytes[..cut]);
        if cut == 0 || ends.contains(&cut) {
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            prop_assert_eq!(got, Ok(model(&fields[..whole])));
        } else {
            prop_assert_eq!(got, Err(ProtoError::Truncated));
        }
    }

    #[test]
    fn protobuf_frames_in_any_chunking_decode_as_in_one_piece(
        messages in vec(message(), 0..12),
        cuts in cuts(),
    ) {
        let mut stream = Vec::new();
        for m in &messages {
            Codec::Protobuf.write_frame(&mut stream, ByteOrder::Big, m.seq, &m.uri, &m.body);
        }
        let decoder = Decoder::new(ByteOrder::Big, 1 << 20);
        let read_all = |reads: Vec<&[u8]>| {
            let mut kept = Vec::new();
            let mut got = Vec::new();
            for read in reads {
                kept.extend_from_slice(read);
                let mut frames = decoder.frames(&kept);
                for payload in frames.by_ref() {
                    let payload = payload.unwrap();
                    got.push(Codec::Protobuf.decode(payload).unwrap().into_owned());
                }
                let used = frames.consumed();
                kept.drain(..used);
            }
            (got, kept.len())
        };
        let (whole, left) = read_all(vec![&stream]);
        prop_assert_eq!(&whole, &messages);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(read_all(reads(&stream, &cuts)), (whole, 0));
    }

    #[test]
    fn any_bytes_are_a_message_or_an_error_never_a_panic(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..200),
            mutated(fields().prop_map(|f| payload(&f).0)),
        ],
    ) {
        let ours = decode_within(&bytes);
        if let Ok(m) = &ours {
            let mut again = Vec::new();
            proto::write_message(&mut again, m.seq, &m.uri, &m.body);
            prop_assert_eq!(&decode_within(&again), &ours);
        }
        match (ours, ProstMessage::decode(&bytes[..]).map(from_prost)) {
            (Ok(ours), Ok(prost)) => prop_assert_eq!(ours, prost),
            (Err(_), Err(_)) => {}
            // Where prost is laxer: it skips groups and takes tags and lengths of up to 10
            // bytes.
            (Err(e), Ok(_)) => prop_assert!(
                matches!(e, ProtoError::Group | ProtoError::Overlong), "{:?}", e
            ),
            // Where prost is stricter: a known field with another wire type, and a 10th varint
            // byte over 1.
            (Ok(_), Err(e)) => {
                let e = e.to_string();
                prop_assert!(
                    e.contains("invalid wire type") || e.contains("invalid varint"), "{}", e
                );
            }
        }
    }
}

/// The one payload both codecs read: none. An empty protobuf payload is the all-default
/// message, and an empty JSON one an error; a frame reader takes either for a keep-alive.
#[test]
fn an_empty_payload_is_a_keep_alive_not_a_message() {
    assert_eq!(Codec::sniff(b""), None);
    assert_eq!(Codec::Protobuf.decode(b"").unwrap(), MessageRef::default());
    assert!(Codec::Json.decode(b"").is_err());
}
