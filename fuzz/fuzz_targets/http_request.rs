//! Fuzzes the HTTP side the way the server reads it: arbitrary bytes, in arbitrary reads, are
//! parsed with `parse_request` over the reactor's own remainder logic (`feed`), pipelined (on
//! `Complete`, advance by `len` and go on). Beyond "no panic" it checks each verdict against the limits and that the
//! chunked parse yields the same requests as the one-piece parse.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plex::internals::{MAX_HEAD, Parsed, feed, parse_request};
use plex_fuzz::Input;

#[derive(Debug, PartialEq, Eq)]
enum End {
    Partial,
    Invalid,
}

#[derive(Debug, PartialEq, Eq)]
struct Owned {
    method: String,
    path: String,
    query: String,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
    keep_alive: bool,
    len: usize,
}

/// Parses the requests at the start of `input`; returns them, the bytes they took and what
/// stopped the loop.
fn pipeline(input: &[u8], max_body: usize, out: &mut Vec<Owned>) -> (usize, End) {
    let mut used = 0;
    loop {
        let rest = &input[used..];
        match parse_request(rest, max_body) {
            Parsed::Complete(r) => {
                assert!(r.len > 0 && r.len <= rest.len());
                assert!(r.body.len() <= max_body);
                let head_len = r.head.len;
                assert_eq!(head_len + r.body.len(), r.len);
                assert!(head_len <= MAX_HEAD);
                assert_eq!(&rest[head_len..r.len], r.body);
                used += r.len;
                out.push(Owned {
                    method: r.head.method.into(),
                    path: r.head.path.into(),
                    query: r.head.query.into(),
                    authorization: r.head.authorization.map(<[u8]>::to_vec),
                    body: r.body.to_vec(),
                    keep_alive: r.head.keep_alive,
                    len: r.len,
                });
            }
            Parsed::Partial(head) => {
                // A head is reported only once it is complete, and within the limits.
                if let Some(head) = head {
                    assert!(head.len <= MAX_HEAD && head.len <= rest.len());
                    assert!(head.content_length <= max_body);
                }
                // Waiting never means holding more than a head and a body within the limits.
                assert!(
                    rest.len() <= MAX_HEAD + max_body,
                    "partial at {} bytes",
                    rest.len()
                );
                return (used, End::Partial);
            }
            Parsed::Invalid(status, _) => {
                assert!([400, 411, 413, 431].contains(&status), "status {status}");
                return (used, End::Invalid);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let max_body = [0, 16, 1024, 1 << 20][usize::from(input.settings & 3)];

    let mut whole = Vec::new();
    let (_, whole_end) = pipeline(input.stream, max_body, &mut whole);

    let mut chunked = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut end = End::Partial;
    for read in &input.reads {
        feed(&mut kept, &mut read.to_vec(), |data| match pipeline(data, max_body, &mut chunked) {
            (used, End::Partial) => Some(used),
            (_, End::Invalid) => {
                end = End::Invalid; // answered, then the connection closes
                None
            }
        });
        if end == End::Invalid {
            break;
        }
    }
    assert_eq!(chunked, whole);
    assert_eq!(end, whole_end);
});
