//! PROTOCOL.md §1–§3 as a client sees them: framing, message reading and writing, the
//! authentication state machine and heartbeats.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use plex::Config;
use plex::protocol::{ByteOrder, uri};

#[test]
fn auth_success_then_heartbeat_is_answered() {
    let server = start(config());
    let mut c = server.connect();
    assert!(c.authenticate("alice", WAIT).unwrap());
    c.send(uri::HEARTBEAT, "").unwrap();
    let reply = recv(&mut c);
    assert_eq!(reply.uri, uri::HEARTBEAT);
    assert!(reply.seq > 0, "server frames carry a seq");
    server.wait_online("alice", 1);
}

#[test]
fn a_client_that_half_closes_after_its_frames_still_gets_the_answers() {
    let server = start(config());
    let mut c = server.connect();
    c.send(uri::AUTH, "alice").unwrap();
    c.send(uri::HEARTBEAT, "").unwrap();
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(recv(&mut c).uri, uri::AUTH_SUCCESS);
    assert_eq!(recv(&mut c).uri, uri::HEARTBEAT);
    assert_closed(&mut c);
    server.wait_online("alice", 0);
}

#[test]
fn auth_failure_is_answered_and_the_connection_may_retry() {
    let server = start(config());
    let mut c = server.connect();
    // The demo auth rejects tokens with a space.
    assert!(!c.authenticate("not a uid", WAIT).unwrap());
    assert_eq!(server.stats().auth_failures, 1);
    assert_eq!(server.online("not a uid"), 0);
    // Still unauthenticated but open, as in the original: a retry succeeds.
    assert!(c.authenticate("alice", WAIT).unwrap());
    server.wait_online("alice", 1);
}

#[test]
fn a_message_before_auth_is_answered_auth_failed() {
    let server = start(plex::Config {
        max_auth_failures: 4,
        ..config()
    });
    let mut c = server.connect();
    c.send(uri::HEARTBEAT, "").unwrap();
    expect(&mut c, uri::AUTH_FAILED);
    c.send("/chat", "hi").unwrap();
    expect(&mut c, uri::AUTH_FAILED);
    // A push attempt before auth is just another message before auth.
    c.send(uri::SEND_MSG, r#"{"uid":"bob","uri":"/x","body":"y"}"#)
        .unwrap();
    expect(&mut c, uri::AUTH_FAILED);
    assert!(
        server.events.snapshot().is_empty(),
        "nothing reached a hook"
    );
    assert!(c.authenticate("alice", WAIT).unwrap());
}

#[test]
fn messages_before_auth_count_as_failed_attempts() {
    // A client cannot make the server answer `/auth/failed` forever without authenticating.
    let server = start(config()); // MaxAuthFailures 3
    let mut c = server.connect();
    for _ in 0..3 {
        c.send(uri::HEARTBEAT, "").unwrap();
    }
    for _ in 0..3 {
        expect(&mut c, uri::AUTH_FAILED);
    }
    assert_closed(&mut c);
    server.wait_closed("auth_failures", 1);
    assert_eq!(server.stats().auth_failures, 3);
}

#[test]
fn inner_auth_with_the_right_password_succeeds() {
    let server = start(config());
    let mut inner = server.connect();
    assert!(
        inner
            .authenticate_inner(plex::config::DEFAULT_INNER_PASSWORD, WAIT)
            .unwrap()
    );
    server.wait_stats("one inner connection", |s| s.inner == 1 && s.users == 0);
    // Inner connections heartbeat too.
    assert_alive(&mut inner);
}

#[test]
fn inner_auth_with_a_wrong_password_fails_and_counts() {
    let server = start(Config {
        inner_password: "s3cret".into(),
        ..config()
    });
    let mut c = server.connect();
    assert!(
        !c.authenticate_inner(plex::config::DEFAULT_INNER_PASSWORD, WAIT)
            .unwrap()
    );
    assert_eq!(server.stats().auth_failures, 1);
    assert_eq!(server.stats().inner, 0);
    assert!(c.authenticate_inner("s3cret", WAIT).unwrap());
    server.wait_stats("one inner connection", |s| s.inner == 1);
}

#[test]
fn repeated_auth_on_an_authenticated_connection_is_ignored_without_reply() {
    let server = start(config());
    let mut alice = server.user("alice");
    alice.send(uri::AUTH, "bob").unwrap();
    alice
        .send(uri::INNER_AUTH, plex::config::DEFAULT_INNER_PASSWORD)
        .unwrap();
    // No reply to either: the heartbeat answer is the next message.
    assert_alive(&mut alice);
    // And the connection is still alice's, not bob's nor an inner one.
    assert_eq!(server.online("bob"), 0);
    assert_eq!(server.online("alice"), 1);
    assert_eq!(server.stats().inner, 0);
}

#[test]
fn message_keys_match_case_insensitively() {
    let server = start(config());
    let mut c = server.connect();
    server.send_json(&c, r#"{"URI": "/auth/server", "Body": "alice"}"#);
    expect(&mut c, uri::AUTH_SUCCESS);
    server.send_json(&c, r#"{"Seq": 3, "uRI": "/heartbeat"}"#);
    expect(&mut c, uri::HEARTBEAT);
    server.send_json(&c, r#"{"SEQ": 4, "Uri": "/up", "BODY": "b"}"#);
    server
        .events
        .wait_for("the upstream message", |e| e.iter().any(is_upstream));
    let Some(Event::Upstream(uid, m)) = server.events.snapshot().into_iter().find(is_upstream)
    else {
        unreachable!()
    };
    assert_eq!(
        (uid.as_str(), m.uri.as_str(), m.body.as_str()),
        ("alice", "/up", "b")
    );
}

fn is_upstream(e: &Event) -> bool {
    matches!(e, Event::Upstream(..))
}

#[test]
fn unknown_keys_are_ignored() {
    let server = start(config());
    let mut c = server.connect();
    server.send_json(
        &c,
        r#"{"token": "x", "uri": "/auth/server", "extra": [1, {"a": null}], "body": "alice", "n": 1.5}"#,
    );
    expect(&mut c, uri::AUTH_SUCCESS);
    server.send_json(
        &c,
        r#"{"uri": "/heartbeat", "uid": "bob", "flags": {"x": true}}"#,
    );
    expect(&mut c, uri::HEARTBEAT);
}

#[test]
fn null_values_mean_absent() {
    let server = start(config());
    let mut c = server.connect();
    // A null token is the empty token, which fails; were it read as "null" it would pass.
    server.send_json(&c, r#"{"seq": null, "uri": "/auth/server", "body": null}"#);
    expect(&mut c, uri::AUTH_FAILED);
    assert_eq!(server.online("null"), 0);
    assert!(c.authenticate("alice", WAIT).unwrap());
    server.send_json(&c, r#"{"seq": null, "uri": "/heartbeat", "body": null}"#);
    expect(&mut c, uri::HEARTBEAT);
}

#[test]
fn zero_length_keep_alive_frames_are_ignored_and_the_connection_kept() {
    let server = start(config());
    let mut c = server.connect();
    let keep_alive = frame(server.order, b"");
    // Before auth: no answer to it (the first answer is the auth's), no failure counted.
    send_raw(&c, &keep_alive);
    assert!(c.authenticate("alice", WAIT).unwrap());
    assert_eq!(server.stats().auth_failures, 0);
    // After auth: still no answer, the heartbeat's answer is next.
    send_raw(&c, &keep_alive.repeat(3));
    assert_alive(&mut c);
    assert_eq!(server.stats().bad_frames, 0);
}

#[test]
fn frames_split_byte_by_byte_are_reassembled() {
    let server = start(config());
    let mut c = server.connect();
    let auth = frame(server.order, br#"{"uri":"/auth/server","body":"alice"}"#);
    send_byte_by_byte(&c, &auth);
    expect(&mut c, uri::AUTH_SUCCESS);
    let mut heartbeats = frame(server.order, br#"{"uri":"/heartbeat"}"#);
    heartbeats.extend(frame(server.order, b""));
    heartbeats.extend(frame(server.order, br#"{"uri":"/heartbeat","seq":2}"#));
    send_byte_by_byte(&c, &heartbeats);
    expect(&mut c, uri::HEARTBEAT);
    expect(&mut c, uri::HEARTBEAT);
    assert_eq!(server.stats().bad_frames, 0);
}

#[test]
fn many_frames_in_one_write_are_processed_in_order() {
    let server = start(config());
    let mut c = server.connect();
    let mut bytes = frame(server.order, br#"{"uri":"/auth/server","body":"alice"}"#);
    for i in 0..50 {
        bytes.extend(frame(server.order, br#"{"uri":"/heartbeat"}"#));
        bytes.extend(frame(server.order, b""));
        let up = format!(r#"{{"uri":"/up","body":"{i}"}}"#);
        bytes.extend(frame(server.order, up.as_bytes()));
    }
    send_raw(&c, &bytes);
    expect(&mut c, uri::AUTH_SUCCESS);
    let mut last_seq = 0;
    for _ in 0..50 {
        let m = expect(&mut c, uri::HEARTBEAT);
        assert!(m.seq > last_seq, "seq strictly increases");
        last_seq = m.seq;
    }
    server.events.wait_for("50 upstream messages", |e| {
        e.iter().filter(|e| is_upstream(e)).count() == 50
    });
    let bodies: Vec<String> = server
        .events
        .snapshot()
        .into_iter()
        .filter_map(|e| match e {
            Event::Upstream(_, m) => Some(m.body),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(bodies, expected);
}

#[test]
fn little_endian_mode_reads_and_writes_little_endian_headers() {
    let server = start(Config {
        little_endian: true,
        ..config()
    });
    assert_eq!(server.order, ByteOrder::Little);
    // The test client speaks the server's order: auth, heartbeat and a push all work.
    let mut alice = server.user("alice");
    assert_alive(&mut alice);
    let mut inner = server.inner();
    push(&mut inner, "alice", "/chat", "hello");
    expect_msg(&mut alice, "/chat", "hello");

    // A big-endian header is then a length of hundreds of MiB: over the limit, closed.
    let mut be = server.connect();
    let payload = br#"{"uri":"/auth/server","body":"bob"}"#;
    send_raw(&be, &frame(ByteOrder::Big, payload));
    assert_closed(&mut be);
    server.wait_closed("frame_too_large", 1);
    assert_eq!(server.online("bob"), 0);
    assert_alive(&mut alice);
}

#[test]
fn big_endian_is_the_default() {
    let server = start(config());
    let mut c = server.connect();
    let payload = br#"{"uri":"/auth/server","body":"alice"}"#;
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    send_raw(&c, &bytes);
    expect(&mut c, uri::AUTH_SUCCESS);
}

/// Reads one frame from a raw socket, header in big-endian, and returns its payload.
fn read_raw_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("frame header");
    let mut payload = vec![0; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut payload).expect("frame payload");
    payload
}

#[test]
fn server_frames_have_lower_case_keys_omit_empty_fields_and_carry_a_time_seq() {
    let server = start(config());
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(
        &mut raw,
        &frame(server.order, br#"{"uri":"/auth/server","body":"alice"}"#),
    )
    .unwrap();
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let before = now_ms();
    let seq = expect_wire(&mut raw, r#""uri":"/auth/success""#);
    let mut inner = server.inner();
    push(&mut inner, "alice", "/no-body", "");
    let seq2 = expect_wire(&mut raw, r#""uri":"/no-body""#);
    push(&mut inner, "alice", "/m", "b");
    let seq3 = expect_wire(&mut raw, r#""uri":"/m","body":"b""#);
    let after = now_ms();

    assert!(seq < seq2 && seq2 < seq3, "seq strictly increases");
    // Close to the Unix time in ms: within a second of the test's clock.
    let slack = Duration::from_secs(1).as_millis() as i64;
    assert!(
        seq >= before - slack && seq3 <= after + slack,
        "seqs {seq}..{seq3} not near {before}..{after}"
    );
}

/// Reads the next frame and checks it is exactly `{"seq":<n>,<rest>}`; returns n.
fn expect_wire(raw: &mut TcpStream, rest: &str) -> i64 {
    let payload = String::from_utf8(read_raw_frame(raw)).unwrap();
    let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
    let seq = value["seq"].as_i64().expect("an integer seq");
    assert_eq!(payload, format!(r#"{{"seq":{seq},{rest}}}"#));
    seq
}
