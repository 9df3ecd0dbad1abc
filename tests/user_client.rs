//! `UserClient` against a real server: it receives pushes, keeps itself alive with heartbeats,
//! reconnects as its policy says, and can find its server through `/plex/v1/host`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Duration;

use common::Event as ServerEvent;
use common::*;
use plex::Config;
use plex::client::{
    ConnectError, Connection, Disconnect, Event, Reconnect, ServerAddr, UserClient, UserConfig,
};
use plex::protocol::{ByteOrder, uri};

fn user_config(server: &TestServer, token: &str) -> UserConfig {
    UserConfig::new(server.addr.to_string(), token)
}

fn connect_with(config: UserConfig) -> UserClient {
    UserClient::connect(config).expect("connected")
}

fn next_event(client: &UserClient) -> Event {
    client.recv_timeout(WAIT).expect("an event")
}

/// Pushes through the server's handle and checks that the client gets it.
fn assert_push_arrives(server: &TestServer, uid: &str, client: &UserClient) {
    server.handle.push(uid, "/chat", "ping").unwrap();
    match next_event(client) {
        Event::Push(m) => assert_eq!((m.uri.as_str(), m.body.as_str()), ("/chat", "ping")),
        other => panic!("expected the push, got {other:?}"),
    }
}

fn disconnected(reason: Disconnect, reconnecting: bool) -> Event {
    Event::Disconnected {
        reason,
        reconnecting,
    }
}

/// Kicks `uid` and checks that the client reports it, reconnecting or not.
fn kick(server: &TestServer, uid: &str, client: &UserClient, reconnecting: bool) {
    assert_eq!(server.handle.kick(uid), Ok(1));
    assert_eq!(
        next_event(client),
        disconnected(Disconnect::ClosedByServer, reconnecting)
    );
}

/// After the last event, the client has stopped: nothing more can come.
fn assert_stopped(client: &UserClient) {
    assert_eq!(
        client.recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(!client.is_connected());
}

#[test]
fn receives_pushes() {
    let server = start(config());
    let alice = connect_with(user_config(&server, "alice"));
    assert!(alice.is_connected());
    assert_push_arrives(&server, "alice", &alice);
}

#[test]
fn a_refused_token_is_an_error() {
    let server = start(config());
    let refused = UserClient::connect(user_config(&server, "not a uid"));
    assert!(matches!(refused, Err(ConnectError::AuthRefused)));
}

#[test]
fn upstream_messages_reach_the_application() {
    let server = start(config());
    let alice = connect_with(user_config(&server, "alice"));
    alice.send("/typing", "yes").unwrap();
    server.events.wait_for("alice's upstream message", |events| {
        events.iter().any(|e| {
            matches!(e, ServerEvent::Upstream(uid, m) if uid == "alice" && m.uri == "/typing" && m.body == "yes")
        })
    });
}

#[test]
fn heartbeats_keep_it_alive_past_the_heartbeat_timeout() {
    let server = start(Config {
        heartbeat_timeout: 1,
        ..config()
    });
    let alice = connect_with(UserConfig {
        heartbeat: Duration::from_millis(200),
        ..user_config(&server, "alice")
    });
    // Silent: the server does close it for the timeout.
    let mut bob = server.user("bob");
    assert_closed(&mut bob);
    // Six more answered heartbeats: alice has outlived bob by more than the timeout.
    let answered = alice.heartbeats_answered();
    let ok = wait_until(WAIT, || alice.heartbeats_answered() >= answered + 6);
    assert!(ok, "heartbeats stopped at {}", alice.heartbeats_answered());
    assert!(
        !server
            .events
            .snapshot()
            .contains(&ServerEvent::Offline("alice".into()))
    );
    assert_eq!(server.online("alice"), 1);
    assert_eq!(alice.try_recv(), Err(TryRecvError::Empty));
    assert_push_arrives(&server, "alice", &alice);
}

#[test]
fn reconnects_after_a_kick_when_the_policy_is_always() {
    let server = start(config());
    let alice = connect_with(user_config(&server, "alice"));
    kick(&server, "alice", &alice, true);
    assert_eq!(next_event(&alice), Event::Reconnected);
    server.wait_online("alice", 1);
    assert_push_arrives(&server, "alice", &alice);
}

#[test]
fn stays_disconnected_after_a_kick_when_the_policy_is_never() {
    let server = start(config());
    let alice = connect_with(UserConfig {
        reconnect: Reconnect::Never,
        ..user_config(&server, "alice")
    });
    kick(&server, "alice", &alice, false);
    assert_stopped(&alice);
    assert_eq!(server.online("alice"), 0);
}

#[test]
fn on_failure_respects_a_kick() {
    let server = start(config());
    let alice = connect_with(UserConfig {
        reconnect: Reconnect::OnFailure,
        ..user_config(&server, "alice")
    });
    kick(&server, "alice", &alice, false);
    assert_stopped(&alice);
}

#[test]
fn on_failure_reconnects_after_a_reset() {
    // A stand-in server that accepts any token, then resets the connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let resetter = std::thread::spawn(move || {
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            let mut conn = Connection::from_stream(stream, ByteOrder::Big).unwrap();
            assert_eq!(recv(&mut conn).uri, uri::AUTH);
            conn.send(uri::AUTH_SUCCESS, "").unwrap();
            // Linger 0: close with a reset rather than an orderly FIN.
            socket2::SockRef::from(conn.stream())
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
    let alice = connect_with(UserConfig {
        reconnect: Reconnect::OnFailure,
        ..UserConfig::new(addr.to_string(), "alice")
    });
    let reset = Disconnect::Failed(std::io::ErrorKind::ConnectionReset);
    assert_eq!(next_event(&alice), disconnected(reset, true));
    assert_eq!(next_event(&alice), Event::Reconnected);
    resetter.join().unwrap();
}

#[test]
fn finds_its_server_through_the_host_api() {
    let server = start(config());
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let api_addr = api.local_addr().unwrap();
    let host = server.addr.to_string();
    let answering = std::thread::spawn(move || {
        let (mut stream, _) = api.accept().unwrap();
        let request = read_head(&mut stream);
        let body = format!(r#"{{"host": "{host}"}}"#);
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    });
    let alice = connect_with(UserConfig {
        server: ServerAddr::HostApi(format!("http://{api_addr}")),
        ..user_config(&server, "alice")
    });
    let request = answering.join().unwrap();
    assert!(
        request.starts_with("GET /plex/v1/host HTTP/1.1\r\n"),
        "{request}"
    );
    assert_push_arrives(&server, "alice", &alice);
}

#[test]
fn a_failed_host_lookup_is_an_error() {
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let api_addr = api.local_addr().unwrap();
    let answering = std::thread::spawn(move || {
        let (mut stream, _) = api.accept().unwrap();
        read_head(&mut stream);
        let body = r#"{"error": "no server"}"#;
        write!(
            stream,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let result = UserClient::connect(UserConfig {
        server: ServerAddr::HostApi(api_addr.to_string()),
        ..UserConfig::new("", "alice")
    });
    match result {
        Err(ConnectError::Io(e)) => assert!(e.to_string().contains("503"), "{e}"),
        Err(e) => panic!("expected the lookup to fail, got {e}"),
        Ok(_) => panic!("expected the lookup to fail"),
    }
    answering.join().unwrap();
}

/// Reads an HTTP request head (the lookup has no body).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a request head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}
