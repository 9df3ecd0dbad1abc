//! `rtt`: heartbeat round trips one at a time from one client, written the way the original
//! Android SDK wrote its frames: the 4-byte length header and the body in two `write`s, with
//! Nagle's algorithm on (no `TCP_NODELAY`). The body then waits in the client's kernel until
//! the header is acknowledged, so a server that delays that ACK (Linux: 40 ms) adds the delay
//! to every round trip; a server that sets `TCP_QUICKACK` after a read leaving a partial frame
//! does not. `--nodelay` and `--one-write` give the round trip without that wait.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use plex::client::Connection;
use plex::protocol::message::encode_message;
use plex::protocol::uri;

use crate::Options;
use crate::report::Latency;

/// The longest the authentication or one round trip may take.
const WAIT: Duration = Duration::from_secs(5);
/// Bytes of a frame's length header.
const HEADER_LEN: usize = 4;
/// A round trip at least this long waited for a delayed ACK.
const DELAYED: Duration = Duration::from_millis(20);

pub fn run(o: &Options) -> io::Result<()> {
    let address = o.users();
    let mut conn = Connection::connect(address, o.order)?;
    conn.stream().set_nodelay(o.nodelay)?;
    if !conn.authenticate("rtt", WAIT)? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server refused the token (is its auth mode `uid`?)",
        ));
    }
    let mut frame = Vec::new();
    encode_message(&mut frame, o.order, 0, uri::HEARTBEAT, "");
    let split = if o.one_write { frame.len() } else { HEADER_LEN };
    println!(
        "rtt: {} heartbeats one at a time to {address}, {}, {}",
        o.msgs,
        if o.one_write {
            "each frame in one write".to_owned()
        } else {
            format!(
                "header and body ({} bytes) in two writes",
                frame.len() - HEADER_LEN
            )
        },
        if o.nodelay {
            "TCP_NODELAY"
        } else {
            "Nagle on (no TCP_NODELAY)"
        }
    );
    let mut samples = Vec::with_capacity(o.msgs as usize);
    let started = Instant::now();
    for _ in 0..o.msgs {
        let start = Instant::now();
        let mut stream = conn.stream();
        stream.write_all(&frame[..split])?;
        if split < frame.len() {
            stream.write_all(&frame[split..])?;
        }
        while conn.recv(Some(WAIT))?.uri != uri::HEARTBEAT {}
        samples.push(start.elapsed().as_nanos() as u64);
    }
    let took = started.elapsed();
    let delayed = samples
        .iter()
        .filter(|&&ns| ns >= DELAYED.as_nanos() as u64)
        .count();
    let mean_ms = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64 / 1e6;
    match Latency::of(&mut samples) {
        Some(latency) => println!("round trip: {latency}; mean {mean_ms:.3} ms"),
        None => println!("round trip: none measured"),
    }
    println!(
        "{delayed} of {} round trips took {} ms or more; {:.1} s in all",
        o.msgs,
        DELAYED.as_millis(),
        took.as_secs_f64()
    );
    Ok(())
}
