//! Fuzzes the auth service's responses the way the webhook client reads them: arbitrary bytes,
//! in arbitrary reads, through the reactor's own `feed` and `parse_response`, with EOF at the
//! end. Beyond "no panic" it checks that a verdict never depends on the chunking, that nothing
//! past `MAX_RESPONSE` is ever looked at or kept, and that a complete response's length is
//! within what arrived.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plex::internals::{MAX_RESPONSE, Response, feed, parse_response};
use plex_fuzz::Input;

/// What a response parse settled on, owned.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Partial,
    Complete {
        status: u16,
        body: Vec<u8>,
        len: usize,
        keep_alive: bool,
    },
    Invalid,
}

fn outcome(input: &[u8], eof: bool) -> Outcome {
    match parse_response(input, eof) {
        Response::Partial => {
            assert!(input.len() <= MAX_RESPONSE, "partial past the cap");
            Outcome::Partial
        }
        Response::Complete {
            status,
            body,
            len,
            keep_alive,
        } => {
            assert!(len <= input.len() && len <= MAX_RESPONSE);
            assert!(body.len() <= len);
            Outcome::Complete {
                status,
                body: body.into_owned(),
                len,
                keep_alive,
            }
        }
        Response::Invalid(_) => Outcome::Invalid,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let whole = outcome(input.stream, false);

    // Read by read, as the webhook client does: stop at the first verdict.
    let mut kept: Vec<u8> = Vec::new();
    let mut settled = Outcome::Partial;
    for read in &input.reads {
        feed(&mut kept, &mut read.to_vec(), |data| match outcome(data, false) {
            Outcome::Partial => Some(0),
            other => {
                settled = other;
                None
            }
        });
        if settled != Outcome::Partial {
            break;
        }
        assert!(kept.len() <= MAX_RESPONSE + read.len());
    }
    match (&settled, &whole) {
        // A response complete in a prefix is the same response in the whole stream.
        (Outcome::Complete { .. }, _) | (Outcome::Invalid, _) => assert_eq!(&settled, &whole),
        (Outcome::Partial, _) => assert_eq!(whole, Outcome::Partial),
    }
    // At EOF a close-delimited body completes; a framed one cut short is not complete.
    if let Outcome::Complete { keep_alive, .. } = outcome(input.stream, true) {
        if whole == Outcome::Partial {
            assert!(!keep_alive, "completed by EOF yet kept alive");
        }
    }
});
