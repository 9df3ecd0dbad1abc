//! Fuzzes the protobuf codec the way a server reads a protobuf connection: arbitrary bytes, in
//! arbitrary reads, are cut into frames with a remainder buffer, and every non-empty payload
//! goes through `proto::decode`. Beyond "no panic" it checks that the chunked reads decode as
//! the one-piece stream does, that a payload read inside a larger buffer decodes as a copy of
//! it alone (nothing read past its end) with its strings borrowed from it, and that whatever
//! decodes re-encodes to a payload that decodes to the same message and sniffs as protobuf.
//! Seeds: `fuzz/seeds/proto_decoder/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plex::protocol::{ByteOrder, Codec, Decoder, Message, ProtoError, proto};
use plex_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    // Settings: bit 0 the byte order.
    let decoder = Decoder::new(ByteOrder::from_little_endian(input.settings & 1 == 1), 1 << 16);

    let mut kept: Vec<u8> = Vec::new();
    let mut chunked = Vec::new();
    for read in &input.reads {
        kept.extend_from_slice(read);
        let mut frames = decoder.frames(&kept);
        for frame in frames.by_ref() {
            let Ok(payload) = frame else {
                return; // the server closes the connection; the frame decoder has its own target
            };
            chunked.push(check_payload(payload));
        }
        let used = frames.consumed();
        kept.drain(..used);
    }

    let whole: Vec<_> = decoder
        .frames(input.stream)
        .map_while(Result::ok)
        .map(|payload| proto::decode(payload).map(|m| m.into_owned()))
        .collect();
    assert_eq!(chunked, whole);
});

fn check_payload(payload: &[u8]) -> Result<Message, ProtoError> {
    let alone = proto::decode(&payload.to_vec()).map(|m| m.into_owned());
    let decoded = proto::decode(payload);
    if let Ok(m) = &decoded {
        let range = payload.as_ptr_range();
        for s in [&m.uri, &m.body] {
            let bytes = s.as_bytes().as_ptr_range();
            assert!(s.is_empty() || (range.start <= bytes.start && bytes.end <= range.end));
        }
    }
    let decoded = decoded.map(|m| m.into_owned());
    assert_eq!(decoded, alone, "read past the payload");

    if let Ok(m) = &decoded {
        let mut again = Vec::new();
        Codec::Protobuf.write_payload(&mut again, m.seq, &m.uri, &m.body);
        assert!(again.len() <= payload.len(), "the canonical form is the shortest");
        assert_eq!(proto::decode(&again).map(|m| m.into_owned()).as_ref(), Ok(m));
        if !again.is_empty() {
            assert_eq!(Codec::sniff(&again), Some(Codec::Protobuf));
        }
    }
    decoded
}
