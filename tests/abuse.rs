//! Hostile and broken clients (PROTOCOL.md §1–§4): oversized headers, garbage frames, brute
//! force, too many connections, clients that never read, and running out of descriptors.
//! Each must cost only the offending connection, never the server or other clients.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use plex::Config;
use plex::client::Connection;
use plex::protocol::{ByteOrder, uri};

/// A length header announcing `len` payload bytes, in the server's byte order.
fn header(server: &TestServer, len: u32) -> [u8; 4] {
    match server.order {
        ByteOrder::Big => len.to_be_bytes(),
        ByteOrder::Little => len.to_le_bytes(),
    }
}

#[test]
fn an_oversized_header_closes_only_that_connection() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    // Only the header is sent: the server must not wait for (or allocate) the payload.
    let mut mallory = server.user("mallory");
    send_raw(&mallory, &header(&server, config().max_frame_size + 1));
    assert_closed(&mut mallory);
    let mut stranger = server.connect();
    send_raw(&stranger, &header(&server, u32::MAX));
    assert_closed(&mut stranger);
    server.wait_closed("frame_too_large", 2);
    server.wait_online("mallory", 0);

    assert_alive(&mut alice);
    assert_alive(&mut inner);
    push(&mut inner, "alice", "/chat", "unaffected");
    expect_msg(&mut alice, "/chat", "unaffected");
}

#[test]
fn frame_size_limits_are_inclusive_and_per_connection_kind() {
    let server = start(Config {
        max_frame_size: 1024,
        max_inner_frame_size: 4096,
        ..config()
    });
    // A user frame of exactly the limit is accepted.
    let mut alice = server.user("alice");
    let prefix = r#"{"uri":"/up","body":""#;
    let body = "x".repeat(1024 - prefix.len() - 2);
    let exact = format!(r#"{prefix}{body}"}}"#);
    assert_eq!(exact.len(), 1024);
    server.send_json(&alice, &exact);
    assert_alive(&mut alice);
    assert_eq!(server.stats().upstream, 1);
    // An inner connection may send up to its own, larger limit, and no more.
    let mut inner = server.inner();
    send_raw(&inner, &header(&server, 4096 + 1));
    assert_closed(&mut inner);
    let mut user = server.user("bob");
    send_raw(&user, &header(&server, 1024 + 1));
    assert_closed(&mut user);
    server.wait_closed("frame_too_large", 2);
    assert_alive(&mut alice);
}

/// Payloads that are not a well-formed message, but whose framing is intact.
const GARBAGE: [&[u8]; 7] = [
    b"not json",
    b"[]",
    b"null",
    br#"{"uri": 5}"#,
    br#"{"seq": "1", "uri": "/heartbeat"}"#,
    b"{\"uri\": \"/heartbeat\", \"body\": \"\xff\"}",
    br#"{"uri": "/heartbeat"} trailing"#,
];

fn send_garbage(server: &TestServer, c: &Connection, how_many: usize) {
    for payload in GARBAGE.iter().cycle().take(how_many) {
        send_raw(c, &frame(server.order, payload));
    }
}

#[test]
fn garbage_frames_are_dropped_and_counted_and_the_connection_kept() {
    let server = start(config()); // MaxBadFrames 10: this test stays below it
    let mut c = server.connect();
    // Before auth: dropped silently (no /auth/failed), the auth answer comes next.
    send_garbage(&server, &c, 2);
    assert!(c.authenticate("alice", WAIT).unwrap());
    // After auth: dropped silently, the heartbeat answer comes next.
    send_garbage(&server, &c, GARBAGE.len());
    assert_alive(&mut c);
    let stats = server.stats();
    assert_eq!(stats.bad_frames, 2 + GARBAGE.len() as u64);
    assert_eq!((stats.upstream, stats.auth_failures), (0, 0));
}

#[test]
fn max_bad_frames_garbage_frames_close_the_connection() {
    let server = start(Config {
        max_bad_frames: 3,
        ..config()
    });
    let mut tolerated = server.user("alice");
    send_garbage(&server, &tolerated, 2);
    assert_alive(&mut tolerated);
    let mut closed = server.user("bob");
    send_garbage(&server, &closed, 3);
    assert_closed(&mut closed);
    server.wait_closed("bad_frames", 1);
    assert_alive(&mut tolerated);
}

#[test]
fn max_auth_failures_closes_the_connection_after_the_third_failure() {
    let server = start(config());
    // Two failures leave the connection open for a retry.
    let mut retry = server.connect();
    for _ in 0..2 {
        assert!(!retry.authenticate("bad token", WAIT).unwrap());
    }
    assert!(retry.authenticate("alice", WAIT).unwrap());
    // The third failure is answered, then the connection is closed.
    let mut brute = server.connect();
    for _ in 0..3 {
        assert!(!brute.authenticate("bad token", WAIT).unwrap());
    }
    assert_closed(&mut brute);
    server.wait_closed("auth_failures", 1);
    assert_eq!(server.stats().auth_failures, 5);
}

#[test]
fn wrong_inner_passwords_count_towards_max_auth_failures() {
    let server = start(config());
    let mut c = server.connect();
    assert!(!c.authenticate_inner("guess1", WAIT).unwrap());
    assert!(!c.authenticate("bad token", WAIT).unwrap());
    assert!(!c.authenticate_inner("guess2", WAIT).unwrap());
    assert_closed(&mut c);
    server.wait_closed("auth_failures", 1);
    assert_eq!(server.stats().inner, 0);
}

#[test]
fn max_connection_closes_connections_past_the_cap_at_once() {
    let server = start(Config {
        max_connection: 3,
        ..config()
    });
    // Every live TCP connection counts, whatever its state.
    let mut alice = server.user("alice");
    let bob = server.user("bob");
    let _unauthenticated = server.connect();
    server.wait_stats("three connections", |s| s.connections == 3);
    let mut refused = server.connect();
    assert_closed(&mut refused);
    server.wait_stats("one rejected", |s| s.rejected == 1);
    assert_eq!(server.online("carol"), 0);

    // Once one closes, a new one is accepted.
    drop(bob);
    server.wait_stats("a free slot", |s| s.connections == 2);
    let mut carol = server.user("carol");
    assert_alive(&mut carol);
    assert_alive(&mut alice);
    let mut again = server.connect();
    assert_closed(&mut again);
    assert_eq!(server.stats().rejected, 2);
}

/// Reads pushes until `/end`, counting them in `seen`; returns the push numbers in order.
fn read_until_end(mut c: Connection, seen: Arc<AtomicUsize>) -> Vec<usize> {
    let mut numbers = Vec::new();
    loop {
        let m = recv(&mut c);
        if m.uri == "/end" {
            return numbers;
        }
        numbers.push(m.body[..6].parse().unwrap());
        seen.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_slow_consumer_is_closed_while_others_keep_receiving_in_order() {
    let server = start(Config {
        max_pending_bytes: 64 * 1024,
        ..config()
    });
    let mut slow = server.user("u"); // never reads until the end
    let readers: Vec<_> = [server.user("u"), server.user("v")]
        .into_iter()
        .map(|c| {
            let seen = Arc::new(AtomicUsize::new(0));
            let counter = seen.clone();
            (seen, std::thread::spawn(move || read_until_end(c, counter)))
        })
        .collect();
    let mut inner = server.inner();
    let pad = "x".repeat(4096);
    let mut sent = 0;
    let mut push_batch = |sent: &mut usize| {
        // Small batches, and the readers catch up after each: their own pending output
        // stays far below the cap however the threads are scheduled.
        for _ in 0..8 {
            let body = format!("{sent:06}{pad}");
            push(&mut inner, "u", "/n", &body);
            push(&mut inner, "v", "/n", &body);
            *sent += 1;
        }
        for (seen, _) in &readers {
            let ok = wait_until(WAIT, || seen.load(Ordering::SeqCst) == *sent);
            assert!(
                ok,
                "a reader fell behind: {} of {sent}",
                seen.load(Ordering::SeqCst)
            );
        }
    };
    // Kernel buffers absorb some pushes before the server's own queue fills.
    while server.closed("slow_consumer") == 0 {
        assert!(
            sent < 20_000,
            "the client that never reads was never closed"
        );
        push_batch(&mut sent);
    }
    push_batch(&mut sent);
    assert_eq!(server.online("u"), 1, "the reading connection of u stays");
    push(&mut inner, "u", "/end", "");
    push(&mut inner, "v", "/end", "");
    for (_, reader) in readers {
        let numbers = reader.join().expect("reader");
        assert_eq!(numbers, (0..sent).collect::<Vec<_>>());
    }
    assert_eq!(server.closed("slow_consumer"), 1);
    // The slow client got an in-order prefix of the pushes, then the close.
    let mut got = Vec::new();
    let closed = loop {
        match slow.recv(Some(WAIT)) {
            Ok(m) => got.push(m.body[..6].parse::<usize>().unwrap()),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            closed.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{closed}"
    );
    assert!(
        got.len() < sent,
        "the slow client cannot have received everything"
    );
    assert_eq!(got, (0..got.len()).collect::<Vec<_>>());
}

// ---- Out of descriptors: the real binary under a low descriptor limit.

/// Descriptor limit of the child; the server holds a handful itself (epoll, waker, listener,
/// signal pipe, stdio) and the rest go to clients.
const CHILD_NOFILE: u32 = 40;

#[test]
fn running_out_of_descriptors_on_accept_neither_kills_nor_spins() {
    let mut server = ChildServer::spawn(&[], "info", Some(CHILD_NOFILE));
    let order = ByteOrder::Big;

    // Authenticate clients one by one until the server reports that accept failed.
    let (mut served, mut waiting) = server.fill_to_saturation(2 * CHILD_NOFILE as usize, |n| {
        let mut c = Connection::connect(server.addr, order).unwrap();
        c.send(uri::AUTH, &format!("u{n}")).unwrap();
        let mut answered = false;
        let settled = wait_until(WAIT, || {
            match c.recv(Some(Duration::from_millis(10))) {
                Ok(m) => {
                    assert_eq!(m.uri, uri::AUTH_SUCCESS);
                    answered = true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("client {n}: {e}"),
            }
            answered || server.logged(SATURATED)
        });
        assert!(settled, "client {n} neither served nor refused");
        if answered { Ok(c) } else { Err(c) }
    });
    // More clients than descriptors wait in the backlog.
    for _ in 0..CHILD_NOFILE {
        waiting.push(Connection::connect(server.addr, order).unwrap());
    }

    // Saturated, it keeps serving the clients it has.
    server.assert_running();
    for c in &mut served {
        assert_alive(c);
    }

    // Freeing descriptors lets it accept again: the backlog drains and a new client is served.
    drop(waiting);
    served.truncate(served.len() - 5);
    let mut newcomer = Connection::connect(server.addr, order).unwrap();
    assert!(newcomer.authenticate("newcomer", WAIT).unwrap());
    assert_alive(&mut newcomer);
    for c in &mut served {
        assert_alive(c);
    }
    server.assert_running();
}
