//! What the benchmark sends: messages with uri `/bench` whose body starts with the time the
//! message was sent or, at a fixed rate, was due to be sent (see `schedule`), so that the
//! receiving user can tell the latency, padded to the requested size; and the uid of each
//! simulated user.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

/// The uri of every benchmark message.
pub const BENCH_URI: &str = "/bench";
/// The uri of the pushes that tell when a route across nodes works (see `pusher::await_route`).
pub const PROBE_URI: &str = "/bench/probe";
/// Digits of the send time at the start of a body (Unix nanoseconds, zero-padded).
const STAMP_DIGITS: usize = 20;
/// The smallest body that holds the send time.
pub const MIN_BODY_BYTES: usize = STAMP_DIGITS;

/// The uid (and token: the server's demo auth takes the token as the uid) of user `index`.
pub fn uid(index: usize) -> String {
    format!("u{index}")
}

/// The wall clock in Unix nanoseconds: comparable across processes (the `limit` writer is
/// another process), unlike `Instant`.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Writes a body of exactly `bytes` bytes carrying `sent_ns` (Unix nanoseconds) into `out`.
pub fn stamp_body(out: &mut String, sent_ns: u64, bytes: usize) {
    use std::fmt::Write;
    out.clear();
    write!(out, "{sent_ns:0width$}", width = STAMP_DIGITS).expect("writing to a String");
    out.extend(std::iter::repeat_n('x', bytes.saturating_sub(STAMP_DIGITS)));
}

/// The send time carried by a benchmark body.
pub fn sent_ns(body: &str) -> io::Result<u64> {
    body.get(..STAMP_DIGITS)
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{BENCH_URI} body without a send time: {body:.40?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_has_the_requested_size_and_carries_its_send_time() {
        let now = now_ns();
        let mut body = String::new();
        stamp_body(&mut body, now, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(sent_ns(&body).unwrap(), now);
        stamp_body(&mut body, 42, MIN_BODY_BYTES);
        assert_eq!(body.len(), MIN_BODY_BYTES);
        assert_eq!(sent_ns(&body).unwrap(), 42);
        assert!(sent_ns("no time here").is_err());
    }
}
