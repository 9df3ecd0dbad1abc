//! Fuzzes WebSocket reading the way the server does it: arbitrary bytes, in arbitrary reads,
//! go through `ws::Decoder::read` over a remainder buffer (a connection keeps only a partial
//! frame). Beyond "no panic" it checks that the chunked read equals the one-piece read, that
//! the remainder stays within a header and the limit, that messages keep the limits, and that
//! every message re-encodes to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plex::protocol::ws::{
    self, Decoder, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, Message, Opcode, ProtocolError, ReadState,
    Role,
};
use plex_fuzz::Input;

/// A message, owned, as its opcode and payload.
type Owned = (Opcode, Vec<u8>);

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    messages: Vec<Owned>,
    error: Option<ProtocolError>,
    kept: Vec<u8>,
}

fn own(message: Message<'_>) -> Owned {
    match message {
        Message::Text(t) => (Opcode::Text, t.as_bytes().to_vec()),
        Message::Binary(b) => (Opcode::Binary, b.into_owned()),
        Message::Ping(p) => (Opcode::Ping, p.to_vec()),
        Message::Pong(p) => (Opcode::Pong, p.to_vec()),
        Message::Close(None) => (Opcode::Close, Vec::new()),
        Message::Close(Some(close)) => {
            let mut payload = Vec::new();
            ws::write_close_payload(&mut payload, close.code, close.reason);
            (Opcode::Close, payload)
        }
    }
}

/// Reads `reads` one after the other as a connection does.
fn run(decoder: Decoder, reads: &[&[u8]]) -> Outcome {
    let mut state = ReadState::default();
    let mut outcome = Outcome {
        messages: Vec::new(),
        error: None,
        kept: Vec::new(),
    };
    let bound = MAX_HEADER_LEN + (decoder.max_message as usize).max(MAX_CONTROL_PAYLOAD);
    for read in reads {
        let mut buffer = std::mem::take(&mut outcome.kept);
        buffer.extend_from_slice(read);
        let mut used = 0;
        loop {
            match decoder.read(&mut state, &mut buffer[used..]) {
                Ok((Some(message), n)) => {
                    assert!(n > 0);
                    used += n;
                    outcome.messages.push(own(message));
                }
                Ok((None, n)) => {
                    used += n;
                    break;
                }
                Err(e) => {
                    outcome.error = Some(e);
                    return outcome; // the server closes the connection
                }
            }
        }
        buffer.drain(..used);
        assert!(buffer.len() < bound, "kept past the limit");
        outcome.kept = buffer;
    }
    outcome
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    // Settings: bits 0-1 the message limit; bit 2 the side that reads.
    let max = [0, 125, 1024, 64 * 1024][usize::from(input.settings & 3)];
    let decoder = match input.settings & 4 {
        0 => Decoder::server(max),
        _ => Decoder::client(max),
    };

    let chunked = run(decoder, &input.reads);
    let whole = run(decoder, &[input.stream]);
    assert_eq!(chunked, whole);

    for (opcode, payload) in &chunked.messages {
        if opcode.is_control() {
            assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        } else {
            assert!(payload.len() <= max as usize);
        }
        if *opcode == Opcode::Text {
            assert!(std::str::from_utf8(payload).is_ok());
        }
        // Written by the matching side, it reads back the same.
        let mut bytes = Vec::new();
        match decoder.role {
            Role::Server => ws::encode_client(&mut bytes, true, *opcode, [1, 2, 3, 4], payload),
            Role::Client => ws::encode(&mut bytes, *opcode, payload),
        }
        let again = run(decoder, &[&bytes]);
        assert_eq!(again.messages, [(*opcode, payload.clone())]);
        assert_eq!(again.error, None);
    }
});
