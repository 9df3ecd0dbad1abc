//! Chaos: hostile and broken clients (resets mid-frame, half-closes, stalled headers, readers
//! that never read, heartbeat floods that never read the answers, reconnect loops, garbage)
//! around well-behaved users, who must keep receiving every push addressed to them, in order;
//! afterwards the server holds only the well-behaved connections.
//!
//! Each kind of attack runs on one thread at a bounded pace: the attack must load the server,
//! not starve it of the machine's two cores (a test whose attackers spin on every core
//! measures the scheduler, and fails by chance).

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use plex::protocol::{ByteOrder, Message, uri};
use rand::{RngExt, SeedableRng};

const GOOD_USERS: usize = 40;
const PUSHES_PER_USER: usize = 100;
/// Authenticated users that never read; each is pushed far more than its output cap.
const SLOW_USERS: usize = 4;
const MAX_PENDING: usize = 256 * 1024;
const PILE_BODY: usize = 4 * 1024;
/// Pushes per slow user: four times its cap, past what the kernel's buffers can hide.
const PILE_PUSHES: usize = 4 * MAX_PENDING / PILE_BODY;
/// Connections that send part of a header and stall; the auth timeout must end each.
const STALLED: usize = 20;
/// Pause between two operations of one attacker.
const PACE: Duration = Duration::from_millis(2);

/// One frame of `message`, as a client sends it.
fn frame_of(uri: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Message::new(uri, body).encode(&mut out, ByteOrder::Big);
    out
}

/// Runs `operation(n)` on a thread of its own, paced, until `stop` is set; counts operations.
fn attacker(
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
    mut operation: impl FnMut(u64) + Send + 'static,
) -> JoinHandle<()> {
    let (stop, done) = (stop.clone(), done.clone());
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            operation(n);
            n += 1;
            done.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(PACE);
        }
    })
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    s.set_write_timeout(Some(WAIT)).ok()?;
    Some(s)
}

#[test]
fn well_behaved_clients_get_every_push_in_order_amid_hostile_ones() {
    let server = start(plex::Config {
        auth_timeout: 1,
        max_pending_bytes: MAX_PENDING,
        max_bad_frames: 5,
        ..config()
    });
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();

    // Resets in the middle of a frame.
    attackers.push(attacker(&stop, &done, move |n| {
        let Some(mut s) = connect(addr) else { return };
        let _ = s.write_all(&frame_of(uri::AUTH, &format!("reset{n}")));
        let half = frame_of("/upstream", "cut short");
        let _ = s.write_all(&half[..half.len() / 2]);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)); // close sends RST
    }));
    // Half-close after authenticating, then wait for the server to finish the close.
    attackers.push(attacker(&stop, &done, move |n| {
        let Some(mut s) = connect(addr) else { return };
        let _ = s.write_all(&frame_of(uri::AUTH, &format!("half{n}")));
        let _ = s.shutdown(Shutdown::Write);
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    }));
    // Reconnect in a loop.
    attackers.push(attacker(&stop, &done, move |n| {
        if let Ok(mut c) = plex::client::Connection::connect(addr, ByteOrder::Big) {
            let _ = c.authenticate(&format!("loop{}", n % 8), WAIT);
        }
    }));
    // Garbage: random bytes, and plausible headers over garbage payloads (bad frames).
    attackers.push(attacker(&stop, &done, move |n| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n);
        let Some(mut s) = connect(addr) else { return };
        let mut junk = vec![0u8; 4096];
        rng.fill(&mut junk[..]);
        if n % 2 == 0 {
            for chunk in junk.chunks_mut(64) {
                chunk[..4].copy_from_slice(&60u32.to_be_bytes());
            }
        }
        let _ = s.write_all(&junk);
    }));
    // Heartbeats flooded by a user that never reads the answers, until the server closes it.
    attackers.push(attacker(&stop, &done, move |n| {
        let Some(mut s) = connect(addr) else { return };
        let _ = s.write_all(&frame_of(uri::AUTH, &format!("flood{}", n % 4)));
        let beats = frame_of(uri::HEARTBEAT, "").repeat(256);
        while s.write_all(&beats).is_ok() {}
    }));
    // Stalled headers: half a header, or a header whose payload never comes.
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut s = connect(addr).expect("connect");
            let header = 100u32.to_be_bytes();
            let partial = if i % 2 == 0 {
                &header[..2]
            } else {
                &header[..]
            };
            s.write_all(partial).unwrap();
            s
        })
        .collect();

    // Authenticated users that never read, and a twin that reads the same volume.
    let slow: Vec<_> = (0..SLOW_USERS)
        .map(|i| server.user(&format!("slow{i}")))
        .collect();
    let mut twin = server.user("twin");
    let twin_reader = std::thread::spawn(move || {
        for _ in 0..PILE_PUSHES {
            assert_eq!(recv(&mut twin).body.len(), PILE_BODY);
        }
        twin
    });

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
    let pile = "s".repeat(PILE_BODY);
    let piles_per_round = PILE_PUSHES / PUSHES_PER_USER + 1;
    for n in 0..PUSHES_PER_USER {
        for i in 0..GOOD_USERS {
            push(&mut inner, &format!("good{i}"), "/seq", &n.to_string());
        }
        for k in 0..piles_per_round {
            if n * piles_per_round + k < PILE_PUSHES {
                for i in 0..SLOW_USERS {
                    push(&mut inner, &format!("slow{i}"), "/pile", &pile);
                }
                push(&mut inner, "twin", "/pile", &pile);
            }
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
    // A client that reads keeps its connection however much it is sent; one that never
    // reads is closed once its unread output passes the cap.
    let mut twin = twin_reader.join().unwrap();
    assert_alive(&mut twin);
    for mut c in slow {
        assert_closed(&mut c);
    }
    for s in &mut stalled {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(s, &mut rest); // returns when the server closes
    }

    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let stats = server.wait_stats("only the well-behaved left", |s| {
        s.connections == GOOD_USERS as u64 + 2 && s.users == GOOD_USERS as u64 + 1
    });
    assert!(done.load(Ordering::Relaxed) > 0);
    assert!(
        stats.closed["slow_consumer"] >= SLOW_USERS as u64,
        "the non-readers and the heartbeat flooders: {stats:?}"
    );
    assert!(
        stats.bad_frames >= 1 && stats.closed["bad_frames"] >= 1,
        "{stats:?}"
    );
    assert!(stats.closed["frame_too_large"] >= 1, "{stats:?}");
    assert!(stats.closed["auth_timeout"] >= STALLED as u64, "{stats:?}");
}
