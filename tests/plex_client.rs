//! `PlexClient` against real servers: pushes arrive, survive a restart, reach every server,
//! and every failure is reported rather than swallowed.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use plex::Config;
use plex::client::{Connection, PlexClient, PlexClientConfig, PushError, ServerState, Unflushed};
use plex::protocol::uri;

fn push_config(servers: &[SocketAddr]) -> PlexClientConfig {
    PlexClientConfig {
        inner_servers: servers.iter().map(SocketAddr::to_string).collect(),
        ..PlexClientConfig::default()
    }
}

/// A client that has authenticated with every server.
fn connected(config: PlexClientConfig) -> PlexClient {
    let client = PlexClient::new(config).expect("valid config");
    client.wait_connected(WAIT).expect("connected");
    client
}

fn wait_state(client: &PlexClient, server: usize, state: ServerState) {
    let ok = wait_until(WAIT, || client.status()[server].state == state);
    assert!(ok, "server {server} never {state:?}: {:?}", client.status());
}

/// Stops `server` and waits until the client has noticed.
fn take_down(server: TestServer, client: &PlexClient) -> u16 {
    let port = server.addr.port();
    server.stop();
    wait_state(client, 0, ServerState::Reconnecting);
    port
}

/// Starts a server on `port` with `uid` already authenticated when the reactor first runs,
/// so that the uid is online before any inner connection can push.
fn bring_back(port: u16, uid: &str) -> (TestServer, Connection) {
    let bound = bind(Config { port, ..config() });
    let mut user = bound.connect();
    user.send(uri::AUTH, uid).expect("send auth");
    let server = bound.run();
    assert!(user.await_auth(WAIT).expect("auth answer"), "{uid} refused");
    (server, user)
}

fn bodies(user: &mut Connection, n: usize) -> Vec<String> {
    (0..n).map(|_| recv(user).body).collect()
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

#[test]
fn a_push_reaches_the_user() {
    let server = start(config());
    let mut alice = server.user("alice");
    let client = connected(push_config(&[server.addr]));
    client.send("alice", "/chat", "hello").unwrap();
    let m = recv(&mut alice);
    assert_eq!((m.uri.as_str(), m.body.as_str()), ("/chat", "hello"));
}

#[test]
fn little_endian_clients_talk_to_little_endian_servers() {
    let server = start(Config {
        little_endian: true,
        ..config()
    });
    let mut alice = server.user("alice");
    let client = connected(PlexClientConfig {
        little_endian: true,
        ..push_config(&[server.addr])
    });
    client.send("alice", "/chat", "olleh").unwrap();
    assert_eq!(recv(&mut alice).body, "olleh");
}

#[test]
fn reconnects_after_the_server_restarts_on_the_same_port() {
    let first = start(config());
    let client = connected(push_config(&[first.addr]));
    let port = take_down(first, &client);
    client.send("alice", "/chat", "while down").unwrap();

    let (_second, mut alice) = bring_back(port, "alice");
    assert_eq!(recv(&mut alice).body, "while down");
    wait_state(&client, 0, ServerState::Connected);
    client.send("alice", "/chat", "after").unwrap();
    assert_eq!(recv(&mut alice).body, "after");
}

#[test]
fn a_uid_on_the_second_server_gets_the_push() {
    let one = start(config());
    let two = start(config());
    let mut alice = two.user("alice");
    let client = connected(push_config(&[one.addr, two.addr]));
    client.send("alice", "/chat", "hi").unwrap();
    assert_eq!(recv(&mut alice).body, "hi");
    // The first server got it too, and had nobody to give it to.
    one.wait_stats("the push dropped by the first server", |s| {
        s.pushes == 1 && s.dropped == 1
    });
}

#[test]
fn a_wrong_password_is_an_error_not_a_retry_loop() {
    let server = start(config());
    let client = PlexClient::new(PlexClientConfig {
        inner_password: "wrong".into(),
        ..push_config(&[server.addr])
    })
    .unwrap();
    let refused = PushError::Refused {
        server: server.addr.to_string(),
    };
    assert_eq!(client.wait_connected(WAIT), Err(refused.clone()));
    assert_eq!(client.send("alice", "/chat", "hi"), Err(refused));
    assert_eq!(client.status()[0].state, ServerState::Refused);
    // It hung up after the one refusal.
    let stats = server.wait_stats("the refused client to hang up", |s| s.connections == 0);
    assert_eq!(stats.auth_failures, 1);
    assert_eq!(client.close_within(Duration::ZERO), Ok(()));
}

#[test]
fn send_fails_while_no_server_has_been_reached() {
    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = PlexClient::new(push_config(&[nobody])).unwrap();
    let not_connected = PushError::NotConnected {
        servers: vec![nobody.to_string()],
    };
    assert_eq!(
        client.send("alice", "/chat", "hi"),
        Err(not_connected.clone())
    );
    assert_eq!(
        client.wait_connected(Duration::from_millis(100)),
        Err(not_connected)
    );
}

#[test]
fn the_queue_holds_max_queued_pushes_while_the_server_is_down() {
    let first = start(config());
    let client = connected(PlexClientConfig {
        max_queued: 3,
        ..push_config(&[first.addr])
    });
    let server = first.addr.to_string();
    let port = take_down(first, &client);
    for body in numbered(3) {
        client.send("alice", "/n", &body).unwrap();
    }
    assert_eq!(
        client.send("alice", "/n", "refused"),
        Err(PushError::QueueFull { server })
    );

    let (_second, mut alice) = bring_back(port, "alice");
    assert_eq!(bodies(&mut alice, 3), numbered(3));
    // The push that did not fit went nowhere: the next one to arrive is the next one sent.
    let ok = wait_until(WAIT, || client.status()[0].queued == 0);
    assert!(ok, "the queue never emptied: {:?}", client.status());
    client.send("alice", "/n", "next").unwrap();
    assert_eq!(recv(&mut alice).body, "next");
}

#[test]
fn close_writes_what_is_queued() {
    let server = start(config());
    let mut alice = server.user("alice");
    let client = connected(push_config(&[server.addr]));
    for body in numbered(500) {
        client.send("alice", "/n", &body).unwrap();
    }
    assert_eq!(client.close(), Ok(()));
    assert_eq!(bodies(&mut alice, 500), numbered(500));
    server.wait_stats("the client to hang up", |s| s.inner == 0);
}

#[test]
fn close_waits_for_a_server_to_come_back_with_the_queue() {
    let first = start(config());
    let client = connected(push_config(&[first.addr]));
    let port = take_down(first, &client);
    for body in numbered(3) {
        client.send("alice", "/n", &body).unwrap();
    }
    let closing = std::thread::spawn(move || client.close());

    let (_second, mut alice) = bring_back(port, "alice");
    assert_eq!(bodies(&mut alice, 3), numbered(3));
    assert_eq!(closing.join().unwrap(), Ok(()));
}

#[test]
fn close_reports_the_pushes_it_could_not_write() {
    let first = start(config());
    let client = connected(push_config(&[first.addr]));
    take_down(first, &client);
    for body in numbered(2) {
        client.send("alice", "/n", &body).unwrap();
    }
    assert_eq!(
        client.close_within(Duration::from_millis(50)),
        Err(Unflushed { pushes: 2 })
    );
}
