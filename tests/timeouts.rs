//! Timeouts (PROTOCOL.md §3): the auth timeout of unauthenticated connections, the heartbeat
//! timeout of user and inner connections, and activity that keeps a connection alive.

mod common;

use std::time::{Duration, Instant};

use common::*;
use plex::Config;
use plex::client::Connection;
use plex::protocol::uri;

const ONE_SECOND: Duration = Duration::from_secs(1);
/// Activity interval in the keep-alive tests: well inside their 2 s timeout.
const PACE: Duration = Duration::from_millis(250);
/// How long the keep-alive tests stay active: past their 2 s timeout.
const KEEP_BUSY: Duration = Duration::from_millis(3000);

/// Checks that a close seen now, `since` the start of a `timeout`, did not come early (less
/// one 100 ms tick of the timer wheel). How late it may come on a busy machine is not the
/// suite's business: the close must come, within `WAIT`, and the benchmarks measure the rest.
fn assert_on_time(since: Instant, timeout: Duration) {
    let elapsed = since.elapsed();
    assert!(
        elapsed + Duration::from_millis(100) >= timeout,
        "closed after {elapsed:?}, before the {timeout:?} timeout"
    );
}

/// Waits for the server to close `c`, which must not happen before `timeout` after `since`.
fn assert_closed_on_time(c: &mut Connection, since: Instant, timeout: Duration) {
    assert_closed(c);
    assert_on_time(since, timeout);
}

#[test]
fn auth_timeout_closes_a_silent_unauthenticated_connection() {
    let server = start(Config {
        auth_timeout: 1,
        ..config()
    });
    let since = Instant::now();
    let mut c = server.connect();
    assert_closed_on_time(&mut c, since, ONE_SECOND);
    server.wait_closed("auth_timeout", 1);
    assert_eq!(server.stats().timeouts, 1);
}

#[test]
fn a_timeout_in_a_coarse_level_of_the_wheel_still_fires() {
    // 8 s is 80 ticks: the timer waits in the wheel's second level, and moves down to the
    // first when its slot comes due.
    let timeout = Duration::from_secs(8);
    let server = start(Config {
        auth_timeout: timeout.as_secs(),
        ..config()
    });
    let since = Instant::now();
    let mut c = server.connect();
    assert_closed_on_time(&mut c, since, timeout);
}

#[test]
fn activity_before_auth_does_not_extend_the_auth_timeout() {
    let server = start(Config {
        auth_timeout: 1,
        max_auth_failures: 1000,
        ..config()
    });
    let since = Instant::now();
    let mut c = server.connect();
    let keep_alive = frame(server.order, b"");
    // Keep talking without authenticating; the server must still close it.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "never closed by the auth timeout"
        );
        send_raw(&c, &keep_alive);
        if c.send(uri::HEARTBEAT, "").is_err() {
            break; // already closed
        }
        match c.recv(Some(WAIT)) {
            Ok(m) => assert_eq!(m.uri, uri::AUTH_FAILED),
            Err(_) => break,
        }
        std::thread::sleep(PACE);
    }
    assert_on_time(since, ONE_SECOND);
    server.wait_closed("auth_timeout", 1);
}

#[test]
fn heartbeat_timeout_closes_a_silent_user_connection() {
    // AuthTimeout stays at its default (30 s), longer than the heartbeat timeout: the
    // heartbeat timeout must run from authentication, not wait for the auth deadline.
    let server = start(Config {
        heartbeat_timeout: 1,
        ..config()
    });
    let mut alice = server.user("alice");
    let since = Instant::now();
    assert_closed_on_time(&mut alice, since, ONE_SECOND);
    server.wait_closed("heartbeat_timeout", 1);
    server.events.wait_for("alice offline", |e| {
        e.last() == Some(&Event::Offline("alice".into()))
    });
    assert_eq!(server.online("alice"), 0);
}

#[test]
fn heartbeat_timeout_closes_a_silent_inner_connection() {
    let server = start(Config {
        heartbeat_timeout: 1,
        ..config()
    });
    let mut inner = server.inner();
    let since = Instant::now();
    assert_closed_on_time(&mut inner, since, ONE_SECOND);
    server.wait_closed("heartbeat_timeout", 1);
    assert_eq!(server.stats().inner, 0);
}

#[test]
fn heartbeat_timeout_after_a_short_auth_timeout() {
    // Both timeouts short: the connection authenticates in time, then goes silent.
    let server = start(Config {
        auth_timeout: 1,
        heartbeat_timeout: 2,
        ..config()
    });
    let mut alice = server.user("alice");
    let since = Instant::now();
    assert_closed_on_time(&mut alice, since, 2 * ONE_SECOND);
    let stats = server.stats();
    assert_eq!(stats.closed["heartbeat_timeout"], 1);
    assert_eq!(stats.closed["auth_timeout"], 0);
}

/// Runs `step` every `PACE` for `how_long` (pacing, not synchronisation).
fn every_pace_for(how_long: Duration, mut step: impl FnMut()) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        step();
        std::thread::sleep(PACE);
    }
}

#[test]
fn heartbeats_keep_user_and_inner_connections_alive_past_the_timeout() {
    let server = start(Config {
        auth_timeout: 1,
        heartbeat_timeout: 2,
        ..config()
    });
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    every_pace_for(KEEP_BUSY, || {
        assert_alive(&mut alice);
        assert_alive(&mut inner);
    });
    assert_eq!(server.stats().timeouts, 0);
    push(&mut inner, "alice", "/chat", "still here");
    expect_msg(&mut alice, "/chat", "still here");
    // Silence now closes both.
    assert_closed(&mut alice);
    assert_closed(&mut inner);
    server.wait_closed("heartbeat_timeout", 2);
}

#[test]
fn keep_alive_frames_and_upstream_messages_count_as_activity() {
    let server = start(Config {
        auth_timeout: 1,
        heartbeat_timeout: 2,
        ..config()
    });
    let keep_alive = frame(server.order, b"");
    let mut quiet = server.user("quiet");
    let mut chatty = server.user("chatty");
    every_pace_for(KEEP_BUSY, || {
        send_raw(&quiet, &keep_alive);
        chatty.send("/typing", "").unwrap();
    });
    assert_eq!(server.stats().timeouts, 0);
    assert_alive(&mut quiet);
    assert_alive(&mut chatty);
}
