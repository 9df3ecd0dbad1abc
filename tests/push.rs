//! Pushes over inner connections (PROTOCOL.md §3): delivery to every connection of a uid and
//! no other, drops, refusals, several connections per uid, and the online/offline callbacks.

mod common;

use common::*;
use plex::Config;
use plex::protocol::uri;

#[test]
fn push_reaches_every_connection_of_the_uid_and_no_other() {
    let server = start(config());
    let mut phone = server.user("alice");
    let mut tablet = server.user("alice");
    let mut bob = server.user("bob");
    let mut inner = server.inner();
    push(&mut inner, "alice", "/chat", "for alice");
    let a = expect_msg(&mut phone, "/chat", "for alice");
    let b = expect_msg(&mut tablet, "/chat", "for alice");
    assert_eq!(a.seq, b.seq, "one push, one frame");
    assert!(a.seq > 0);
    // Bob got nothing: his next message is the push meant for him.
    push(&mut inner, "bob", "/chat", "for bob");
    let m = expect_msg(&mut bob, "/chat", "for bob");
    assert!(m.seq > a.seq, "each push gets a fresh seq");
    assert_eq!(server.stats().delivered, 3);
}

/// Push frames for `uid`, one per body, all in one buffer: to be sent in a single write.
fn pushes_in_one_buffer(server: &TestServer, uid: &str, bodies: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for body in bodies {
        let request = plex::protocol::PushRequest {
            uid: uid.into(),
            uri: "/n".into(),
            body: body.into(),
        };
        plex::Message::new(uri::SEND_MSG, request.to_json()).encode(&mut bytes, server.order);
    }
    bytes
}

#[test]
fn pushes_in_one_write_arrive_in_order() {
    let server = start(config());
    let mut alice = server.user("alice");
    let inner = server.inner();
    let bodies: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    send_raw(&inner, &pushes_in_one_buffer(&server, "alice", &bodies));
    for body in &bodies {
        expect_msg(&mut alice, "/n", body);
    }
}

#[test]
fn a_burst_larger_than_one_read_budget_arrives_complete_and_in_order() {
    // Megabytes in one write: the server reads them over several turns.
    let server = start(Config {
        max_pending_bytes: 64 << 20, // this test is about ordering, not backpressure
        ..config()
    });
    const PUSHES: usize = 2000;
    let mut alice = server.user("alice");
    let reader = std::thread::spawn(move || {
        (0..PUSHES)
            .map(|_| recv(&mut alice).body)
            .collect::<Vec<_>>()
    });
    let inner = server.inner();
    let pad = "x".repeat(1024);
    let bodies: Vec<String> = (0..PUSHES).map(|i| format!("{i} {pad}")).collect();
    let bytes = pushes_in_one_buffer(&server, "alice", &bodies);
    assert!(bytes.len() > 2 << 20);
    send_raw(&inner, &bytes);
    assert_eq!(reader.join().unwrap(), bodies);
}

#[test]
fn push_to_an_offline_uid_is_dropped_and_counted() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    push(&mut inner, "nobody", "/chat", "lost");
    push(&mut inner, "alice", "/chat", "sentinel");
    expect_msg(&mut alice, "/chat", "sentinel");
    let stats = server.stats();
    assert_eq!((stats.dropped, stats.delivered), (1, 1));
}

#[test]
fn reserved_and_empty_uris_are_refused_and_counted() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    for reserved in uri::RESERVED {
        push(&mut inner, "alice", reserved, "forged");
    }
    push(&mut inner, "alice", "", "no uri");
    push_json(&mut inner, r#"{"uid":"alice","body":"uri missing"}"#);
    // None of them reached alice: the sentinel is her next message.
    push(&mut inner, "alice", "/chat", "sentinel");
    expect_msg(&mut alice, "/chat", "sentinel");
    let stats = server.stats();
    assert_eq!(stats.refused, uri::RESERVED.len() as u64 + 2);
    assert_eq!(stats.delivered, 1);
    // The inner connection is still usable after refusals.
    assert_alive(&mut inner);
}

#[test]
fn a_user_connection_cannot_push() {
    let server = start(config());
    let mut mallory = server.user("mallory");
    let mut bob = server.user("bob");
    let forged = r#"{"uid":"bob","uri":"/chat","body":"forged"}"#;
    mallory.send(uri::SEND_MSG, forged).unwrap();
    // Not a push, and not an upstream message either; the connection stays open.
    mallory.send("/after", "x").unwrap();
    server
        .events
        .wait_for("the upstream message", |e| e.iter().any(is_upstream));
    let upstream: Vec<_> = server
        .events
        .snapshot()
        .into_iter()
        .filter(is_upstream)
        .collect();
    assert_eq!(
        upstream,
        [Event::Upstream(
            "mallory".into(),
            plex::Message::new("/after", "x")
        )]
    );
    let mut inner = server.inner();
    push(&mut inner, "bob", "/chat", "sentinel");
    expect_msg(&mut bob, "/chat", "sentinel");
    assert_eq!(server.stats().refused, 1);
    assert_alive(&mut mallory);
}

fn is_upstream(e: &Event) -> bool {
    matches!(e, Event::Upstream(..))
}

#[test]
fn push_body_keys_match_case_insensitively_ignore_unknown_keys_and_read_null_as_absent() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    push_json(&mut inner, r#"{"UID":"alice","Uri":"/a","BODY":"1"}"#);
    expect_msg(&mut alice, "/a", "1");
    push_json(
        &mut inner,
        r#"{"uid":"alice","uri":"/b","body":"2","seq":9,"extra":{"k":[null]}}"#,
    );
    expect_msg(&mut alice, "/b", "2");
    push_json(&mut inner, r#"{"uid":"alice","uri":"/c","body":null}"#);
    expect_msg(&mut alice, "/c", "");
    // A null uid is no uid (not the uid "null"): nothing delivered, the sentinel comes next.
    let _null = server.user("null");
    push_json(&mut inner, r#"{"uid":null,"uri":"/d","body":"x"}"#);
    push(&mut inner, "alice", "/e", "sentinel");
    expect_msg(&mut alice, "/e", "sentinel");
    let stats = server.stats();
    assert_eq!(stats.delivered, 4);
    assert_eq!(stats.refused + stats.dropped, 1, "{stats:?}");
}

#[test]
fn the_outer_message_of_a_push_may_use_any_key_case() {
    let server = start(config());
    let mut alice = server.user("alice");
    let inner = server.inner();
    let request = serde_json::to_string(r#"{"uid":"alice","uri":"/x","body":"y"}"#).unwrap();
    server.send_json(
        &inner,
        &format!(r#"{{"URI":"/logic/send/msg","Body":{request}}}"#),
    );
    expect_msg(&mut alice, "/x", "y");
}

#[test]
fn inner_connections_may_push_frames_larger_than_the_user_limit() {
    let server = start(Config {
        max_frame_size: 1024,
        max_inner_frame_size: 64 * 1024,
        ..config()
    });
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    let big = "x".repeat(32 * 1024);
    push(&mut inner, "alice", "/big", &big);
    expect_msg(&mut alice, "/big", &big);
    // The larger limit applies from the frame after the inner auth, even in the same write.
    let mut bytes = Vec::new();
    let password = plex::config::DEFAULT_INNER_PASSWORD;
    plex::Message::new(uri::INNER_AUTH, password).encode(&mut bytes, server.order);
    let request = format!(r#"{{"uid":"alice","uri":"/big2","body":"{big}"}}"#);
    plex::Message::new(uri::SEND_MSG, request).encode(&mut bytes, server.order);
    let mut second = server.connect();
    send_raw(&second, &bytes);
    expect(&mut second, uri::AUTH_SUCCESS);
    expect_msg(&mut alice, "/big2", &big);
    assert_eq!(server.stats().closed["frame_too_large"], 0);
}

#[test]
fn closing_the_old_connection_keeps_the_new_one_registered() {
    // The original kept only the newest connection of a uid in its map, and closing the old
    // one then removed the new one's entry.
    let server = start(config());
    let old = server.user("alice");
    let mut new = server.user("alice");
    server.wait_online("alice", 2);
    drop(old);
    server.wait_online("alice", 1);
    let mut inner = server.inner();
    push(&mut inner, "alice", "/chat", "still here");
    expect_msg(&mut new, "/chat", "still here");
    assert_eq!(server.stats().dropped, 0);
}

#[test]
fn online_fires_on_the_first_connection_and_offline_on_the_last() {
    let server = start(config());
    let online = |uid: &str| Event::Online(uid.into());
    let offline = |uid: &str| Event::Offline(uid.into());

    let a1 = server.user("alice");
    server
        .events
        .wait_for("alice online", |e| e == [online("alice")]);
    let a2 = server.user("alice");
    let b = server.user("bob");
    server
        .events
        .wait_for("bob online", |e| e.len() == 2 && e[1] == online("bob"));
    // The hooks run on the reactor before it answers a query: once the server counts one
    // connection for alice, an offline event for her would already be recorded.
    drop(a1);
    server.wait_online("alice", 1);
    assert_eq!(server.events.snapshot(), [online("alice"), online("bob")]);
    drop(b);
    drop(a2);
    server.wait_stats("everyone gone", |s| s.users == 0);
    let events = server.events.snapshot();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[..2], [online("alice"), online("bob")]);
    // Both went offline exactly once; their relative order depends on which close the
    // reactor saw first.
    assert!(events[2..].contains(&offline("alice")) && events[2..].contains(&offline("bob")));

    // A uid coming back goes online again.
    let _a3 = server.user("alice");
    server.events.wait_for("alice online again", |e| {
        e.len() == 5 && e[4] == online("alice")
    });
}
