//! PROTOCOL.md §1–§3 as a client sees them: authentication, heartbeats, the state machine.

mod common;

use common::*;
use plex::protocol::uri;

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
fn inner_push_reaches_the_user() {
    let server = start(config());
    let mut alice = server.user("alice");
    let mut inner = server.inner();
    push(&mut inner, "alice", "/chat", "hello");
    let m = recv(&mut alice);
    assert_eq!((m.uri.as_str(), m.body.as_str()), ("/chat", "hello"));
}
