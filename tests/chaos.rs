//! Chaos: a few hundred hostile and broken clients (resets mid-frame, half-closes, stalled
//! headers, readers that never read, reconnect loops, garbage floods) around well-behaved
//! users, who must keep receiving every push addressed to them, in order; afterwards the
//! server holds only the well-behaved connections.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use plex::protocol::{ByteOrder, Message, uri};
use rand::{RngExt, SeedableRng};

const GOOD_USERS: usize = 40;
const PUSHES_PER_USER: usize = 100;
const CHAOS_PER_KIND: usize = 30;
/// Readers that never read; each is pushed more than the kernel's socket buffers can hold.
const SLOW_USERS: usize = 4;
const SLOW_BYTES: usize = 12 * 1024 * 1024;

/// One frame of `message`, as a client sends it.
fn frame_of(uri: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Message::new(uri, body).encode(&mut out, ByteOrder::Big);
    out
}

/// Starts `n` threads running `behaviour(i, stop)` until `stop` is set.
fn spawn_chaos(
    n: usize,
    stop: &Arc<AtomicBool>,
    behaviour: impl Fn(usize, &AtomicBool) + Send + Sync + 'static,
) -> Vec<JoinHandle<()>> {
    let behaviour = Arc::new(behaviour);
    (0..n)
        .map(|i| {
            let (stop, behaviour) = (stop.clone(), behaviour.clone());
            std::thread::spawn(move || behaviour(i, &stop))
        })
        .collect()
}

#[test]
fn well_behaved_clients_get_every_push_in_order_amid_hostile_ones() {
    let server = start(plex::Config {
        auth_timeout: 1,
        max_pending_bytes: 64 * 1024,
        max_bad_frames: 5,
        ..config()
    });
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut chaos = Vec::new();

    // Resets in the middle of a frame.
    chaos.extend(spawn_chaos(CHAOS_PER_KIND, &stop, move |i, stop| {
        while !stop.load(Ordering::Relaxed) {
            let Ok(s) = TcpStream::connect(addr) else {
                continue;
            };
            let mut s = socket2::Socket::from(s);
            let _ = s.write_all(&frame_of(uri::AUTH, &format!("reset{i}")));
            let half = frame_of("/upstream", "cut short");
            let _ = s.write_all(&half[..half.len() / 2]);
            let _ = s.set_linger(Some(Duration::ZERO)); // close sends RST
        }
    }));
    // Half-close after authenticating, then wait for the server to finish the close.
    chaos.extend(spawn_chaos(CHAOS_PER_KIND, &stop, move |i, stop| {
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = TcpStream::connect(addr) else {
                continue;
            };
            let _ = s.write_all(&frame_of(uri::AUTH, &format!("half{i}")));
            let _ = s.shutdown(Shutdown::Write);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
    }));
    // A header announcing a payload that never comes; the auth timeout ends it.
    chaos.extend(spawn_chaos(CHAOS_PER_KIND, &stop, move |_, stop| {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return;
        };
        let _ = s.write_all(&100u32.to_be_bytes());
        let _ = std::io::copy(&mut s, &mut std::io::sink()); // returns when the server closes
        let _ = stop;
    }));
    // Authenticated readers that never read, while pushes pile up for them.
    let slow: Vec<_> = (0..SLOW_USERS)
        .map(|i| server.user(&format!("slow{i}")))
        .collect();
    // Reconnect in a loop.
    chaos.extend(spawn_chaos(CHAOS_PER_KIND, &stop, move |i, stop| {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut c) = plex::client::Connection::connect(addr, ByteOrder::Big) {
                let _ = c.authenticate(&format!("loop{i}"), WAIT);
            }
        }
    }));
    // Garbage floods: random bytes, then random JSON-ish frames.
    chaos.extend(spawn_chaos(CHAOS_PER_KIND, &stop, move |i, stop| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = TcpStream::connect(addr) else {
                continue;
            };
            let mut junk = vec![0u8; 4096];
            for _ in 0..20 {
                rng.fill(&mut junk[..]);
                if i % 2 == 0 {
                    // Plausible headers over garbage payloads: bad frames, not oversized ones.
                    for chunk in junk.chunks_mut(64) {
                        chunk[..4].copy_from_slice(&60u32.to_be_bytes());
                    }
                }
                if s.write_all(&junk).is_err() {
                    break;
                }
            }
        }
    }));

    // The well-behaved: each reads its own pushes on a thread, and stays connected.
    type Reader = JoinHandle<(plex::client::Connection, Vec<Message>)>;
    let readers: Vec<Reader> = (0..GOOD_USERS)
        .map(|i| {
            let mut c = server.user(&format!("good{i}"));
            std::thread::spawn(move || {
                let got = (0..PUSHES_PER_USER).map(|_| recv(&mut c)).collect();
                (c, got)
            })
        })
        .collect();
    let mut inner = server.inner();
    let slow_body = "s".repeat(64 * 1024);
    // Each round feeds one slow user; over its rounds each gets about SLOW_BYTES.
    let slow_per_round = SLOW_BYTES / slow_body.len() / (PUSHES_PER_USER / SLOW_USERS) + 1;
    for n in 0..PUSHES_PER_USER {
        for i in 0..GOOD_USERS {
            push(&mut inner, &format!("good{i}"), "/seq", &n.to_string());
        }
        for _ in 0..slow_per_round {
            push(
                &mut inner,
                &format!("slow{}", n % SLOW_USERS),
                "/pile",
                &slow_body,
            );
        }
    }
    let mut good = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let (c, got) = reader.join().unwrap();
        let got: Vec<String> = got.into_iter().map(|m| m.body).collect();
        let want: Vec<String> = (0..PUSHES_PER_USER).map(|n| n.to_string()).collect();
        assert_eq!(got, want, "good{i} got every push, in order");
        good.push(c);
    }

    stop.store(true, Ordering::Relaxed);
    for c in chaos {
        c.join().unwrap();
    }
    drop(slow);
    let stats = server.wait_stats("only the well-behaved left", |s| {
        s.connections == GOOD_USERS as u64 + 1 && s.users == GOOD_USERS as u64
    });
    assert_eq!(
        stats.closed["slow_consumer"], SLOW_USERS as u64,
        "{stats:?}"
    );
    assert!(
        stats.bad_frames >= 1 && stats.closed["bad_frames"] >= 1,
        "{stats:?}"
    );
    assert!(stats.closed["frame_too_large"] >= 1, "{stats:?}");
    assert!(
        stats.closed["auth_timeout"] >= CHAOS_PER_KIND as u64,
        "{stats:?}"
    );
}
