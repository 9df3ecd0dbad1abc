//! Fuzzes the TCP side the way the server reads it: arbitrary bytes, in arbitrary reads, go
//! through the reactor's own `feed` (the remainder every connection keeps) and `Decoder`, and every
//! payload through `MessageRef::decode`, every push body through `PushRequest::decode`.
//! Beyond "no panic" it checks that the chunked decode equals the one-piece decode, that the
//! remainder stays within the frame limit, and that whatever decodes re-encodes to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plex::internals::feed;
use plex::protocol::frame::HEADER_LEN;
use plex::protocol::{ByteOrder, Decoder, FrameTooLarge, Message, MessageRef, PushRequest};
use plex_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    // Settings: bit 0 the byte order; bits 1-2 the frame limit.
    let order = ByteOrder::from_little_endian(input.settings & 1 == 1);
    let max = [0, 64, 1024, 64 * 1024][usize::from((input.settings >> 1) & 3)];
    let decoder = Decoder::new(order, max);

    let mut kept: Vec<u8> = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut error: Option<FrameTooLarge> = None;
    for read in &input.reads {
        feed(&mut kept, &mut read.to_vec(), |buffer| {
            let mut used = 0;
            loop {
                match decoder.decode(&buffer[used..]) {
                    Ok(Some((payload, len))) => {
                        assert_eq!(len, HEADER_LEN + payload.len());
                        assert!(payload.len() <= max as usize);
                        used += len;
                        check_payload(payload);
                        frames.push(payload.to_vec());
                    }
                    Ok(None) => return Some(used),
                    Err(e) => {
                        assert!(e.len > e.max);
                        error = Some(e);
                        return None; // the server closes the connection
                    }
                }
            }
        });
        if error.is_some() {
            break;
        }
        assert!(kept.len() < HEADER_LEN + max as usize, "kept past the limit");
    }

    // The same stream in one piece.
    let mut whole = decoder.frames(input.stream);
    let mut whole_frames = Vec::new();
    let mut whole_error = None;
    for f in whole.by_ref() {
        match f {
            Ok(p) => whole_frames.push(p.to_vec()),
            Err(e) => whole_error = Some(e),
        }
    }
    assert_eq!(frames, whole_frames);
    assert_eq!(error, whole_error);
    if error.is_none() {
        assert_eq!(&kept[..], &input.stream[whole.consumed()..]);
    }
});

fn check_payload(payload: &[u8]) {
    if payload.is_empty() {
        return; // keep-alive
    }
    let Ok(message) = MessageRef::decode(payload) else {
        return; // a bad frame: counted and dropped
    };
    let message = message.into_owned();
    let mut out = Vec::new();
    message.encode(&mut out, ByteOrder::Big);
    assert_eq!(Message::decode(&out[HEADER_LEN..]).unwrap(), message);

    if let Ok(push) = PushRequest::decode(&message.body) {
        assert_eq!(PushRequest::decode(&push.to_json()).unwrap(), push);
    }
}
