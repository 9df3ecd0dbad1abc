//! Hostile clients on the client listener: floods that never read their answers, bursts that
//! end in an authentication, output limits (before authentication, soft, in the kernel), a
//! burst of pushes that must not starve anyone, slow readers at shutdown, and a reactor made
//! busy on purpose. In each, the offender alone pays; the server stays up and everyone else is
//! served.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::hostile::*;
use common::*;
use plex::Config;
use plex::client::Connection;
use plex::protocol::{ByteOrder, PushRequest, encode_message, uri};

/// What an unauthenticated connection may leave unread (`UNAUTHENTICATED_OUTPUT`).
const UNAUTHENTICATED_OUTPUT: u64 = 4 * 1024;

/// A user (or inner) connection that sends heartbeats in a tight loop and never reads the
/// answers fills its output and is closed as a slow consumer; `bystander` is left alone.
/// Returns the inner connection and the bystander, still open.
fn heartbeat_flooder_is_closed(server: &TestServer, flooder: Connection) -> [Connection; 2] {
    let mut inner = server.inner();
    let mut bystander = server.user("bystander");
    let beats = message_frame(server.order, uri::HEARTBEAT, "").repeat(1024);
    let writer = flood(flooder.stream(), beats);
    server.wait_closed("slow_consumer", 1);
    let written = writer
        .join()
        .expect("the flood ends when the server closes");
    assert!(written > 0);
    assert_untouched(&mut inner, &mut bystander, "bystander");
    assert_eq!(server.stats().closed["slow_consumer"], 1);
    [inner, bystander]
}

#[test]
fn a_user_flooding_heartbeats_without_reading_is_closed_as_a_slow_consumer() {
    let server = start(Config {
        max_pending_bytes: 256 * 1024,
        ..config()
    });
    let flooder = server.user("flooder");
    let _survivors = heartbeat_flooder_is_closed(&server, flooder);
    server.wait_online("flooder", 0);
    assert_eq!(server.stats().users, 1, "only the bystander is left");
}

#[test]
fn an_inner_connection_flooding_heartbeats_without_reading_is_closed_as_a_slow_consumer() {
    let server = start(Config {
        max_pending_bytes: 256 * 1024,
        ..config()
    });
    let flooder = server.inner();
    let _survivors = heartbeat_flooder_is_closed(&server, flooder);
    let stats = server.wait_stats("the flooder gone", |s| s.inner == 1);
    assert_eq!(stats.users, 1);
}

/// Frames answered `/auth/failed` in the bursts below.
const ANSWERED: usize = 50;

/// The length of a reply frame the server would send now (its `seq` is the time in ms).
fn reply_len(order: ByteOrder, uri: &str) -> usize {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut out = Vec::new();
    encode_message(&mut out, order, now.as_millis() as i64, uri, "");
    out.len()
}

/// Sends, in one write, frames that are each answered `/auth/failed` (malformed ones among
/// them, unanswered), then a valid authentication `{uri, body}`, and never reads. The output
/// limit has room for the answers before the authentication but not for its own: the
/// connection is closed as it authenticates, in the middle of reading the burst.
/// Returns the server, its inner connection and a bystander, still open.
fn burst_ending_in_an_authentication(uri: &str, body: &str) -> (TestServer, [Connection; 2]) {
    let order = ByteOrder::Big;
    let room =
        ANSWERED * reply_len(order, uri::AUTH_FAILED) + reply_len(order, uri::AUTH_SUCCESS) - 1;
    let server = start(Config {
        max_pending_bytes: room,
        max_auth_failures: 100_000,
        max_bad_frames: 65_535,
        ..config()
    });
    let mut inner = server.inner();
    let mut bystander = server.user("bystander");
    let mut burst = Vec::new();
    for i in 0..ANSWERED {
        if i % 10 == 0 {
            burst.extend(frame(order, b"not json"));
        }
        burst.extend(message_frame(order, "/before-auth", ""));
    }
    burst.extend(message_frame(order, uri, body));
    let mut offender = server.connect();
    send_raw(&offender, &burst);
    server.wait_closed("slow_consumer", 1);
    assert_closed(&mut offender);
    assert_untouched(&mut inner, &mut bystander, "bystander");
    (server, [inner, bystander])
}

#[test]
fn a_burst_of_answered_frames_then_auth_closes_only_the_offender() {
    let (server, _survivors) = burst_ending_in_an_authentication(uri::AUTH, "mallory");
    assert_eq!(server.online("mallory"), 0);
    let stats = server.stats();
    assert_eq!((stats.users, stats.inner), (1, 1), "{stats:?}");
}

#[test]
fn a_burst_of_answered_frames_then_inner_auth_closes_only_the_offender() {
    let password = plex::config::DEFAULT_INNER_PASSWORD;
    let (server, _survivors) = burst_ending_in_an_authentication(uri::INNER_AUTH, password);
    let stats = server.stats();
    assert_eq!((stats.users, stats.inner), (1, 1), "{stats:?}");
}

#[test]
fn output_before_authentication_is_capped_small_for_many_non_readers() {
    const CONNECTIONS: usize = 100;
    const THREADS: usize = 4;
    let server = start(Config {
        max_auth_failures: 1_000_000,
        ..config()
    });
    let mut inner = server.inner();
    let mut good = server.user("good");
    // About 137 KB of `{}` frames each, every one answered `/auth/failed`.
    let burst = Arc::new(frame(server.order, b"{}").repeat(137_000 / 6));
    let offenders: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    server.wait_stats("every offender accepted", |s| {
        s.connections == CONNECTIONS as u64 + 2
    });
    let offenders = Arc::new(Mutex::new(offenders));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (offenders, burst) = (offenders.clone(), burst.clone());
            std::thread::spawn(move || {
                for i in (t..CONNECTIONS).step_by(THREADS) {
                    let mut s = offenders.lock().unwrap()[i].try_clone().unwrap();
                    s.set_write_timeout(Some(WAIT)).unwrap();
                    let _ = s.write_all(&burst); // fails once the server has closed it
                }
            })
        })
        .collect();
    // What the server holds for them, sampled all along.
    let mut most = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        most = most.max(server.stats().buffered_bytes);
    }
    let closed = server.wait_stats("every offender closed", |s| {
        s.closed["slow_consumer"] + s.closed["auth_failures"] == CONNECTIONS as u64
    });
    most = most.max(closed.buffered_bytes);
    // Buffers grow by doubling: one holding 4 KiB may have twice that allocated.
    let bound = CONNECTIONS as u64 * 2 * UNAUTHENTICATED_OUTPUT;
    assert!(
        most <= bound,
        "the server held {most} bytes (bound {bound})"
    );
    assert_eq!(closed.users, 1);
    server.wait_stats("no buffers kept", |s| s.buffered_bytes == 0);
    assert_untouched(&mut inner, &mut good, "good");
}

#[test]
fn a_burst_of_pushes_to_nobody_does_not_hold_up_anyone_else() {
    let server = start(config());
    let mut bystander = server.user("bystander");
    let mut flooder = server.inner();
    let request = PushRequest {
        uid: "nobody".into(),
        uri: "/burst".into(),
        body: "b".repeat(32).into(),
    };
    let batch = message_frame(server.order, uri::SEND_MSG, &request.to_json()).repeat(1000);
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, pushed) = (stop.clone(), pushed.clone());
        let mut stream = flooder.stream().try_clone().unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                stream
                    .write_all(&batch)
                    .expect("the server reads the flood");
                pushed.fetch_add(1000, Ordering::Relaxed);
            }
        })
    };
    server.wait_stats("the flood under way", |s| s.dropped > 0);
    // Each round trip completes while the flood goes on.
    for _ in 0..5 {
        assert_alive(&mut bystander);
    }
    assert!(!writer.is_finished(), "the flood was still going");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = pushed.load(Ordering::Relaxed);
    server.wait_stats("every push of the flood handled", |s| s.dropped == total);
    assert_alive(&mut flooder);
    assert_alive(&mut bystander);
}

/// A user authenticated on `stream`, a socket set up so that what it does not read stays in
/// the server.
fn user_on(server: &TestServer, stream: TcpStream, uid: &str) -> Connection {
    let mut c = Connection::from_stream(stream, server.order).unwrap();
    assert!(c.authenticate(uid, WAIT).unwrap(), "auth as {uid}");
    c
}

#[test]
fn over_the_soft_limit_for_too_long_is_slow_even_under_the_hard_cap() {
    const PUSHES: u64 = 64;
    let server = start(Config {
        max_pending_bytes: 8 * 1024 * 1024,
        soft_pending_bytes: 256 * 1024,
        soft_pending_seconds: 3,
        ..config()
    });
    let mut lazy = user_on(&server, connect_small(server.addr, 16 * 1024), "lazy");
    let brief = user_on(&server, connect_small(server.addr, 16 * 1024), "brief");
    let (go, wait_for_go) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut brief = brief;
        wait_for_go.recv().unwrap();
        for i in 0..PUSHES {
            assert_eq!(recv(&mut brief).uri, format!("/p/{i}"));
        }
        brief
    });
    let mut inner = server.inner();
    let body = "s".repeat(16 * 1024);
    for i in 0..PUSHES {
        for uid in ["lazy", "brief"] {
            push(&mut inner, uid, &format!("/p/{i}"), &body);
        }
    }
    // 1 MiB each, under the 8 MiB cap, and more than the kernel takes: both are over the soft
    // limit (neither has read a byte, so they hold the same).
    server.wait_stats("both over the soft limit", |s| {
        s.delivered == 2 * PUSHES && s.buffered_bytes > 2 * 256 * 1024
    });
    go.send(()).unwrap();
    let mut brief = reader.join().expect("brief reads everything");
    server.wait_closed("slow_consumer", 1);
    assert_closed(&mut lazy);
    assert_alive(&mut brief);
    assert_eq!(server.online("brief"), 1);
    assert_eq!(server.stats().closed["slow_consumer"], 1);
}

/// Pushes 2 MiB to a user on a socket with a tiny receive buffer that reads nothing, under
/// `SocketSendBuffer` `send_buffer`; returns how much of it the server holds, and checks that
/// all of it arrives once the user reads.
fn held_by_the_server(send_buffer: usize) -> (u64, u64) {
    const PUSHES: u64 = 128;
    const BODY: usize = 16 * 1024;
    let server = start(Config {
        max_pending_bytes: 8 * 1024 * 1024,
        soft_pending_bytes: 0,
        socket_send_buffer: send_buffer,
        ..config()
    });
    let mut tiny = user_on(&server, connect_small(server.addr, 4096), "tiny");
    let mut inner = server.inner();
    let body = "k".repeat(BODY);
    for i in 0..PUSHES {
        push(&mut inner, "tiny", &format!("/k/{i}"), &body);
    }
    let held = server.wait_stats("every push queued", |s| s.delivered == PUSHES);
    for i in 0..PUSHES {
        assert_eq!(recv(&mut tiny).uri, format!("/k/{i}"));
    }
    assert_alive(&mut tiny);
    (held.buffered_bytes, PUSHES * BODY as u64)
}

#[test]
fn output_a_client_does_not_read_stays_in_the_server_not_in_the_kernel() {
    // With the default SocketSendBuffer (64 KiB, which the kernel doubles), the kernel takes
    // only a little of it.
    let (held, pushed) = held_by_the_server(64 * 1024);
    let kernel_at_most = 512 * 1024;
    assert!(
        held >= pushed - kernel_at_most,
        "the server holds {held} of {pushed} bytes: the kernel took the rest"
    );
    // Left to its autotuning (tcp_wmem up to 4 MiB by default), the kernel takes megabytes.
    let (held_uncapped, _) = held_by_the_server(0);
    assert!(
        held_uncapped + 1024 * 1024 <= held,
        "without SocketSendBuffer the server held {held_uncapped}, with it {held}"
    );
}

#[test]
fn at_shutdown_a_steady_slow_reader_gets_everything_and_a_non_reader_is_cut_at_the_deadline() {
    const PUSHES: usize = 256;
    let mut server = start(Config {
        max_pending_bytes: 16 * 1024 * 1024,
        shutdown_timeout: 6,
        ..config()
    });
    // The backlogs stay in the server, not in the kernel.
    let mut steady = user_on(&server, connect_narrow(server.addr), "steady");
    let mut stuck = user_on(&server, connect_narrow(server.addr), "stuck");
    let mut inner = server.inner();
    let body = "d".repeat(8 * 1024);
    for i in 0..PUSHES {
        for uid in ["steady", "stuck"] {
            push(&mut inner, uid, &format!("/d/{i}"), &body);
        }
    }
    server.wait_stats("the backlog queued", |s| s.delivered == 2 * PUSHES as u64);
    server.handle.shutdown().unwrap();
    // 10 ms per message: 2.5 s in all, longer than the 2 s linger, well within the timeout.
    for i in 0..PUSHES {
        assert_eq!(recv(&mut steady).uri, format!("/d/{i}"));
        std::thread::sleep(Duration::from_millis(10)); // pacing, not synchronisation
    }
    assert_closed(&mut steady);
    // The one that never read is closed at the deadline, with its backlog cut short.
    server.wait_finished();
    let got = messages_until_closed(&mut stuck).len();
    assert!(got < PUSHES, "the non-reader got all {got} pushes");
}

#[test]
fn an_authentication_sent_in_time_succeeds_however_busy_the_reactor_was() {
    // Tokens `block:<ms>` hold the reactor in the auth function, after telling the test.
    let (started, blocking) = mpsc::channel::<()>();
    let started = Mutex::new(started);
    let server = start_with(
        Config {
            auth_timeout: 2,
            ..config()
        },
        move |b| {
            b.auth(move |token| {
                if let Some(ms) = token.strip_prefix("block:") {
                    started.lock().unwrap().send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                    return Some("blocker".into());
                }
                plex::auth::token_as_uid(token)
            })
        },
    );
    // B's auth timeout starts now.
    let mut b = server.connect();
    let mut first = server.connect();
    let mut second = server.connect();
    server.wait_stats("all three accepted", |s| s.connections == 3);
    first.send(uri::AUTH, "block:300").unwrap();
    blocking.recv_timeout(WAIT).expect("the reactor blocks");
    // While it is blocked: a second blocking auth and a new connection wait for the same
    // turn, so that the connection's accept reads the clock after the long block.
    second.send(uri::AUTH, "block:2500").unwrap();
    let _late = TcpStream::connect(server.addr).unwrap();
    blocking
        .recv_timeout(WAIT)
        .expect("the reactor blocks again");
    // B's frame arrives long before its deadline, but is read after it.
    b.send(uri::AUTH, "bob").unwrap();
    assert!(b.await_auth(WAIT).expect("an answer, not a close"));
    assert!(first.await_auth(WAIT).unwrap());
    assert!(second.await_auth(WAIT).unwrap());
    server.wait_online("bob", 1);
}
