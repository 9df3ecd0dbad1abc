//! The WebSocket listener (`WsPort`, `/plex/v1/ws`) as a browser-like client (tungstenite)
//! sees it: the upgrade and its refusals, the token in the subprotocol or the query, one JSON
//! message per text frame, pings, fragmented messages, and the close frame (code and reason)
//! the server sends whenever it closes: policy, shutdown, protocol errors, limits. Over TCP
//! and over TLS (wss).

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::transport::*;
use common::*;
use plex::Config;
use plex::protocol::uri;
use plex::protocol::ws::{Opcode, PATH};
use tungstenite::ClientRequestBuilder;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// The headers of a valid upgrade (RFC 6455 §1.3's key).
const HEADERS: [(&str, &str); 5] = [
    ("Host", "127.0.0.1"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// A GET of `target` with `headers`.
fn request<'a>(target: &str, headers: impl IntoIterator<Item = &'a (&'a str, &'a str)>) -> String {
    let mut out = format!("GET {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out + "\r\n"
}

/// Sends `bytes` on a fresh connection to `addr` and reads the answer until the server closes.
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut socket = tcp(addr);
    socket.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    socket
        .read_to_end(&mut answer)
        .expect("the server answers and closes");
    String::from_utf8(answer).unwrap()
}

/// A WebSocket request for `addr` with `protocols` offered.
fn with_protocols(
    addr: std::net::SocketAddr,
    tls: bool,
    protocols: &[&str],
) -> ClientRequestBuilder {
    let mut request = ClientRequestBuilder::new(ws_url(addr, tls, "").parse().unwrap());
    for protocol in protocols {
        request = request.with_sub_protocol(*protocol);
    }
    request
}

#[test]
fn upgrade_then_authenticate_heartbeat_and_receive_pushes() {
    let (server, at) = start_transports(plain_ws(config()));
    let (mut ws, response) = ws_open(at.ws(), false, with_protocols(at.ws(), false, &[]));
    assert_eq!(response.status(), 101);
    assert!(!response.headers().contains_key("Sec-WebSocket-Protocol"));
    ws_send(&mut ws, uri::AUTH, "alice");
    ws_expect(&mut ws, uri::AUTH_SUCCESS);
    server.wait_online("alice", 1);
    ws_assert_alive(&mut ws);
    let mut tcp_twin = server.user("alice");
    server.handle.push("alice", "/news", r#"{"n":1}"#).unwrap();
    let over_ws = ws_expect(&mut ws, "/news");
    assert_eq!(over_ws.body, r#"{"n":1}"#);
    assert_eq!(recv(&mut tcp_twin), over_ws);
    ws_send(&mut ws, "/chat", "hello");
    server.events.wait_for("the upstream message", |events| {
        events.iter().any(|e| {
            matches!(e, Event::Upstream(uid, m) if uid == "alice" && m.uri == "/chat" && m.body == "hello")
        })
    });
    assert_eq!(server.stats().transports["ws"], 1);
}

#[test]
fn a_token_in_the_subprotocol_authenticates_at_the_upgrade() {
    let (server, at) = start_transports(plain_ws(config()));
    let request = with_protocols(at.ws(), false, &["plex", "plex.token.alice"]);
    let (mut alice, response) = ws_open(at.ws(), false, request);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "plex");
    ws_expect(&mut alice, uri::AUTH_SUCCESS);
    server.wait_online("alice", 1);
    server.handle.push("alice", "/hi", "a").unwrap();
    assert_eq!(ws_expect(&mut alice, "/hi").body, "a");
    // Without `plex` offered, the server names the token's own protocol: it may only choose
    // one the client offered.
    let request = with_protocols(at.ws(), false, &["plex.token.bob"]);
    let (mut bob, response) = ws_open(at.ws(), false, request);
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        "plex.token.bob"
    );
    ws_expect(&mut bob, uri::AUTH_SUCCESS);
    server.wait_online("bob", 1);
    // `plex` alone is echoed; the token then comes in a message.
    let (mut carol, response) = ws_open(at.ws(), false, with_protocols(at.ws(), false, &["plex"]));
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "plex");
    ws_send(&mut carol, uri::AUTH, "carol");
    ws_expect(&mut carol, uri::AUTH_SUCCESS);
}

#[test]
fn a_token_in_the_query_authenticates_at_the_upgrade() {
    let (server, at) = start_transports(plain_ws(config()));
    let url = ws_url(at.ws(), false, "?token=carol");
    let (mut carol, _) = ws_open(
        at.ws(),
        false,
        ClientRequestBuilder::new(url.parse().unwrap()),
    );
    ws_expect(&mut carol, uri::AUTH_SUCCESS);
    server.wait_online("carol", 1);
    ws_assert_alive(&mut carol);
    // A token the auth refuses (in uid mode, one with a space) is answered as over TCP, and
    // the connection may try again.
    let url = ws_url(at.ws(), false, "?token=not%20valid");
    let (mut refused, _) = ws_open(
        at.ws(),
        false,
        ClientRequestBuilder::new(url.parse().unwrap()),
    );
    ws_expect(&mut refused, uri::AUTH_FAILED);
    ws_send(&mut refused, uri::AUTH, "dave");
    ws_expect(&mut refused, uri::AUTH_SUCCESS);
    assert_eq!(server.stats().auth_failures, 1);
}

#[test]
fn a_token_in_the_upgrade_may_resume_and_choose_protobuf() {
    use plex::protocol::Codec;
    let (server, at) = start_transports(plain_ws(Config {
        history_size: 10,
        ..config()
    }));
    for n in 1..=3 {
        server.handle.push("7", "/m", &n.to_string()).unwrap();
    }
    let log: serde_json::Value = ureq::get(format!("http://{}/plex/v1/history?uid=7", server.http))
        .header("Authorization", "Bearer plex-inner")
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let epoch = log["epoch"].as_str().unwrap();
    // The place it last received, in the query beside the token: it gets what followed.
    let query = format!("?token=7&offset=1&epoch={epoch}");
    let url = ws_url(at.ws(), false, &query);
    let (mut phone, _) = ws_open(
        at.ws(),
        false,
        ClientRequestBuilder::new(url.parse().unwrap()),
    );
    let answer = ws_expect(&mut phone, uri::AUTH_SUCCESS);
    let resumed: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        resumed,
        serde_json::json!({"recovered": true, "epoch": epoch, "offset": 3})
    );
    assert_eq!(ws_expect(&mut phone, "/m").body, "2");
    assert_eq!(ws_expect(&mut phone, "/m").body, "3");

    // `codec=protobuf`: even the answer to the token comes in binary.
    let url = ws_url(at.ws(), false, "?token=p&codec=protobuf");
    let (mut p, _) = ws_open(
        at.ws(),
        false,
        ClientRequestBuilder::new(url.parse().unwrap()),
    );
    let binary = |ws: &mut WsClient| match ws.read().unwrap() {
        tungstenite::Message::Binary(bytes) => Codec::Protobuf.decode(&bytes).unwrap().into_owned(),
        other => panic!("expected a binary frame, got {other:?}"),
    };
    assert_eq!(binary(&mut p).uri, uri::AUTH_SUCCESS);
    server.handle.push("p", "/news", "x").unwrap();
    assert_eq!(binary(&mut p).body, "x");

    // Values the server cannot use are refused before the upgrade.
    for query in ["?codec=xml", "?token=7&offset=many"] {
        let answer = exchange(
            at.ws(),
            request(&format!("{PATH}{query}"), &HEADERS).as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400 "), "{query}: {answer}");
    }
    let (_json_only, at) = start_transports(plain_ws(Config {
        codec: plex::protocol::CodecChoice::Json,
        ..config()
    }));
    let target = format!("{PATH}?codec=protobuf");
    let answer = exchange(at.ws(), request(&target, &HEADERS).as_bytes());
    assert!(answer.contains("does not speak that codec"), "{answer}");
}

#[test]
fn the_upgrade_and_a_first_message_in_one_write_are_both_read() {
    let (server, at) = start_transports(plain_ws(config()));
    let mut bytes = request(PATH, &HEADERS).into_bytes();
    plex::protocol::ws::encode_client(
        &mut bytes,
        true,
        Opcode::Text,
        [1, 2, 3, 4],
        json(uri::AUTH, "eve").as_bytes(),
    );
    let mut socket = tcp(at.ws());
    socket.write_all(&bytes).unwrap();
    // The 101, then the answer: read the head byte by byte, hand the rest to tungstenite.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    let mut ws = tungstenite::WebSocket::from_raw_socket(
        Stream::Plain(socket),
        tungstenite::protocol::Role::Client,
        None,
    );
    ws_expect(&mut ws, uri::AUTH_SUCCESS);
    server.wait_online("eve", 1);
}

#[test]
fn an_inner_connection_over_websocket_pushes_up_to_the_inner_frame_limit() {
    let (server, at) = start_transports(plain_ws(config()));
    let mut user = ws_user(at.ws(), false, "target");
    let mut inner = ws_connect(at.ws(), false);
    ws_send(
        &mut inner,
        uri::INNER_AUTH,
        plex::config::DEFAULT_INNER_PASSWORD,
    );
    ws_expect(&mut inner, uri::AUTH_SUCCESS);
    // Over MaxFrameSize (64 KiB), which binds users, and under MaxInnerFrameSize (1 MiB).
    let body = "i".repeat(200_000);
    let request = plex::protocol::PushRequest {
        uid: "target".into(),
        uri: "/big".into(),
        body: body.as_str().into(),
    };
    ws_send(&mut inner, uri::SEND_MSG, &request.to_json());
    assert!(ws_expect(&mut user, "/big").body == body);
    ws_assert_alive(&mut inner);
    assert_eq!(server.stats().inner, 1);
}

#[test]
fn pings_are_answered_with_pongs_before_and_after_authentication() {
    let (_server, at) = start_transports(plain_ws(config()));
    let mut ws = ws_connect(at.ws(), false);
    ws.send(tungstenite::Message::Ping(b"early".to_vec().into()))
        .unwrap();
    assert_eq!(ws_read(&mut ws).unwrap(), Received::Pong(b"early".to_vec()));
    ws_send(&mut ws, uri::AUTH, "pinger");
    ws_expect(&mut ws, uri::AUTH_SUCCESS);
    ws.send(tungstenite::Message::Ping(b"later".to_vec().into()))
        .unwrap();
    assert_eq!(ws_read(&mut ws).unwrap(), Received::Pong(b"later".to_vec()));
}

#[test]
fn a_kicked_client_gets_close_1008_kicked() {
    let (server, at) = start_transports(plain_ws(config()));
    let mut ws = ws_user(at.ws(), false, "kicked");
    assert_eq!(server.handle.kick("kicked").unwrap(), 1);
    let before = ws_expect_close(&mut ws, 1008, "kicked");
    assert!(before.is_empty(), "{before:?}");
    server.wait_closed("kicked", 1);
}

#[test]
fn timeouts_close_with_1008_and_say_which() {
    let (server, at) = start_transports(plain_ws(Config {
        auth_timeout: 1,
        heartbeat_timeout: 1,
        ..config()
    }));
    let since = Instant::now();
    let mut silent = ws_connect(at.ws(), false);
    let mut idle = ws_user(at.ws(), false, "idle");
    ws_expect_close(&mut silent, 1008, "auth timeout");
    ws_expect_close(&mut idle, 1008, "heartbeat timeout");
    assert_not_early(since, Duration::from_secs(1));
    server.wait_closed("auth_timeout", 1);
    server.wait_closed("heartbeat_timeout", 1);
}

#[test]
fn repeated_authentication_failures_close_with_1008() {
    let (server, at) = start_transports(plain_ws(config()));
    let mut ws = ws_connect(at.ws(), false);
    for _ in 0..3 {
        ws_send(&mut ws, uri::AUTH, "not valid");
    }
    let before = ws_expect_close(&mut ws, 1008, "authentication failed");
    let answers: Vec<&str> = before.iter().map(|m| m.uri.as_str()).collect();
    assert_eq!(answers, [uri::AUTH_FAILED; 3]);
    server.wait_closed("auth_failures", 1);
}

#[test]
fn shutdown_closes_with_1001_after_the_last_push() {
    let (mut server, at) = start_transports(plain_ws(config()));
    let mut idle = ws_user(at.ws(), false, "idle");
    // Pushes this client has not read yet, more than the kernel's buffers hold: the server
    // still has output for it when it shuts down. It is flushed first, then the close frame.
    let mut busy = ws_user(at.ws(), false, "busy");
    let bodies: Vec<String> = (0..30)
        .map(|n| format!("{n:06}{}", "b".repeat(30_000)))
        .collect();
    for body in &bodies {
        server.handle.push("busy", "/backlog", body).unwrap();
    }
    server.handle.shutdown().unwrap();
    let before = ws_expect_close(&mut idle, 1001, "shutdown");
    assert!(before.is_empty(), "{before:?}");
    let mut got = Vec::new();
    let end = loop {
        match ws_read(&mut busy) {
            Ok(Received::Message(m)) => got.push(m.body),
            other => break other,
        }
    };
    assert!(
        got == bodies,
        "{} of {} pushes, then {end:?}",
        got.len(),
        bodies.len()
    );
    assert_eq!(
        end.unwrap(),
        Received::Close(Some((1001, "shutdown".into())))
    );
    server.wait_finished();
}

#[test]
fn a_client_close_is_echoed_then_the_connection_ends() {
    let (server, at) = start_transports(plain_ws(config()));
    let mut ws = ws_user(at.ws(), false, "leaving");
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    }))
    .unwrap();
    let echo = ws_read(&mut ws).unwrap();
    assert_eq!(echo, Received::Close(Some((1001, String::new()))));
    server.wait_closed("peer_closed", 1);
    assert_eq!(server.online("leaving"), 0);
}

#[test]
fn bad_upgrades_are_refused_with_404_400_or_426_and_closed() {
    let (server, at) = start_transports(plain_ws(config()));
    let without_key = HEADERS.iter().filter(|(n, _)| *n != "Sec-WebSocket-Key");
    let version_8 = HEADERS
        .iter()
        .map(|&(n, v)| (n, if n == "Sec-WebSocket-Version" { "8" } else { v }))
        .collect::<Vec<_>>();
    let cases = [
        (
            "a wrong path",
            request("/elsewhere", &HEADERS),
            "404 Not Found",
            "not found",
        ),
        (
            "no key",
            request(PATH, without_key),
            "400 Bad Request",
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            "version 8",
            request(PATH, &version_8),
            "426 Upgrade Required",
            "only WebSocket version 13 is supported",
        ),
        (
            "not HTTP",
            "hello\r\n\r\n".to_owned(),
            "400 Bad Request",
            "not a WebSocket upgrade request",
        ),
    ];
    for (what, bytes, status, error) in &cases {
        let answer = exchange(at.ws(), bytes.as_bytes());
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{what}: {answer}"
        );
        let body = serde_json::json!({ "error": error }).to_string();
        assert!(
            answer.ends_with(&format!("\r\n\r\n{body}")),
            "{what}: {answer}"
        );
        if *status == "426 Upgrade Required" {
            assert!(
                answer.contains("\r\nSec-WebSocket-Version: 13\r\n"),
                "{answer}"
            );
        }
    }
    server.wait_closed("handshake", cases.len() as u64);
    // tungstenite sees the refusal too.
    let url = ws_url(at.ws(), false, "").replace(PATH, "/elsewhere");
    match tungstenite::client(url.as_str(), Stream::connect(at.ws(), false)) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    ws_assert_alive(&mut ws_user(at.ws(), false, "fine"));
}

#[test]
fn an_upgrade_never_finished_is_closed_at_the_handshake_timeout() {
    let config = Config {
        handshake_timeout: 1,
        ..config()
    };
    let (plain_server, plain) = start_transports(plain_ws(config.clone()));
    let (secure_server, at) = start_transports(secure(config));
    let since = Instant::now();
    let partial = &request(PATH, &HEADERS)[..40];
    let mut over_tcp = tcp(plain.ws());
    over_tcp.write_all(partial.as_bytes()).unwrap();
    // Over TLS: the TLS handshake is done, the upgrade request never completes.
    let mut over_tls = tls_connect(at.ws(), BOTH_VERSIONS);
    over_tls.write_all(partial.as_bytes()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        over_tcp.read_to_end(&mut rest).unwrap(),
        0,
        "no answer, a close"
    );
    match over_tls.read_to_end(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        other => panic!("expected a close, got {other:?} {rest:?}"),
    }
    assert_not_early(since, Duration::from_secs(1));
    plain_server.wait_closed("handshake_timeout", 1);
    secure_server.wait_closed("handshake_timeout", 1);
}

#[test]
fn a_message_over_the_limit_closes_with_1009() {
    let (server, at) = start_transports(plain_ws(Config {
        max_frame_size: 1024,
        ..config()
    }));
    // At the limit, one frame and fragmented: fine.
    let mut ws = ws_user(at.ws(), false, "u");
    let body = "x".repeat(1024 - (json("/up", "x").len() - 1));
    assert_eq!(json("/up", &body).len(), 1024);
    ws_send(&mut ws, "/up", &body);
    let message = json("/up", &body);
    let (a, b) = message.as_bytes().split_at(600);
    ws_send_raw(&mut ws, false, Opcode::Text, a, true);
    ws_send_raw(&mut ws, true, Opcode::Continuation, b, true);
    ws_assert_alive(&mut ws);
    assert_eq!(server.stats().upstream, 2);

    // One byte over, in one frame.
    ws_send(&mut ws, "/up", &format!("{body}x"));
    ws_expect_close(&mut ws, 1009, "message too big");
    drop(ws);

    // Fragments that are each small but together over the limit.
    let mut ws = ws_user(at.ws(), false, "v");
    let part = [b'x'; 400];
    ws_send_raw(&mut ws, false, Opcode::Text, &part, true);
    ws_send_raw(&mut ws, false, Opcode::Continuation, &part, true);
    ws_send_raw(&mut ws, true, Opcode::Continuation, &part, true);
    ws_expect_close(&mut ws, 1009, "message too big");
    server.wait_closed("bad_frames", 2);
    assert_eq!(server.stats().upstream, 2);
}

#[test]
fn fragmented_messages_are_reassembled_with_control_frames_between() {
    let (server, at) = start_transports(plain_ws(config()));
    let mut ws = ws_user(at.ws(), false, "frag");
    // "é" split between two fragments; a ping in the middle is answered at once.
    let message = json("/up", "caf\u{e9}!");
    let bytes = message.as_bytes();
    let cut = message.find('\u{e9}').unwrap() + 1;
    ws_send_raw(&mut ws, false, Opcode::Text, &bytes[..5], true);
    ws_send_raw(&mut ws, true, Opcode::Ping, b"mid", true);
    ws_send_raw(&mut ws, false, Opcode::Continuation, &bytes[5..cut], true);
    ws_send_raw(&mut ws, true, Opcode::Continuation, &bytes[cut..], true);
    assert_eq!(ws_read(&mut ws).unwrap(), Received::Pong(b"mid".to_vec()));
    server.events.wait_for("the reassembled message", |events| {
        events.iter().any(|e| {
            matches!(e, Event::Upstream(uid, m) if uid == "frag" && m.uri == "/up" && m.body == "caf\u{e9}!")
        })
    });
    // A heartbeat in fragments is answered once whole.
    let heartbeat = json(uri::HEARTBEAT, "");
    let (a, b) = heartbeat.as_bytes().split_at(3);
    ws_send_raw(&mut ws, false, Opcode::Text, a, true);
    ws_send_raw(&mut ws, true, Opcode::Continuation, b, true);
    ws_expect(&mut ws, uri::HEARTBEAT);
}

/// An authenticated client does `send` and must get a close frame with `code` and `reason`;
/// the server counts the connection closed for bad frames.
fn closes_with(send: impl FnOnce(&mut WsClient), code: u16, reason: &str) {
    let (server, at) = start_transports(plain_ws(config()));
    let mut ws = ws_user(at.ws(), false, "u");
    send(&mut ws);
    let before = ws_expect_close(&mut ws, code, reason);
    assert!(before.is_empty(), "{before:?}");
    drop(ws);
    server.wait_closed("bad_frames", 1);
    assert_eq!(server.online("u"), 0);
}

#[test]
fn an_unmasked_frame_closes_with_1002() {
    let send = |ws: &mut WsClient| ws_send_raw(ws, true, Opcode::Text, b"{}", false);
    closes_with(send, 1002, "client frame not masked");
}

#[test]
fn text_that_is_not_utf8_closes_with_1007() {
    let send = |ws: &mut WsClient| ws_send_raw(ws, true, Opcode::Text, b"{\"uri\":\"\xff\"}", true);
    closes_with(send, 1007, "text message not UTF-8");
}

#[test]
fn binary_messages_carry_protobuf_and_a_connection_keeps_the_codec_it_chose() {
    use plex::protocol::Codec;
    let (server, at) = start_transports(plain_ws(config()));
    let binary = |uri: &str, body: &str| {
        let mut out = Vec::new();
        Codec::Protobuf.write_payload(&mut out, 0, uri, body);
        tungstenite::Message::binary(out)
    };
    // A protobuf client: its answers and pushes come back in binary frames.
    let mut ws = ws_connect(at.ws(), false);
    ws.send(binary(uri::AUTH, "p")).unwrap();
    let answer = |ws: &mut WsClient| match ws.read().unwrap() {
        tungstenite::Message::Binary(bytes) => Codec::Protobuf.decode(&bytes).unwrap().into_owned(),
        other => panic!("expected a binary frame, got {other:?}"),
    };
    assert_eq!(answer(&mut ws).uri, uri::AUTH_SUCCESS);
    server.handle.push("p", "/news", "in protobuf").unwrap();
    let pushed = answer(&mut ws);
    assert_eq!(
        (pushed.uri.as_str(), pushed.body.as_str()),
        ("/news", "in protobuf")
    );
    // A text (JSON) message on a protobuf connection is a bad frame: counted, not obeyed.
    ws_send(&mut ws, uri::HEARTBEAT, "");
    server.wait_stats("a bad frame", |s| s.bad_frames == 1);
    ws.send(binary(uri::HEARTBEAT, "")).unwrap();
    assert_eq!(answer(&mut ws).uri, uri::HEARTBEAT);
    // And the other way round.
    let mut json = ws_user(at.ws(), false, "j");
    json.send(binary(uri::HEARTBEAT, "")).unwrap();
    server.wait_stats("another bad frame", |s| s.bad_frames == 2);
    ws_assert_alive(&mut json);
}

#[test]
fn wss_end_to_end() {
    let (server, at) = start_transports(secure(config()));
    let request = with_protocols(at.ws(), true, &["plex", "plex.token.secure"]);
    let (mut ws, response) = ws_open(at.ws(), true, request);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "plex");
    ws_expect(&mut ws, uri::AUTH_SUCCESS);
    ws_assert_alive(&mut ws);
    ws.send(tungstenite::Message::Ping(b"p".to_vec().into()))
        .unwrap();
    assert_eq!(ws_read(&mut ws).unwrap(), Received::Pong(b"p".to_vec()));
    server.handle.push("secure", "/news", "over TLS").unwrap();
    assert_eq!(ws_expect(&mut ws, "/news").body, "over TLS");
    let stats = server.stats();
    assert_eq!((stats.transports["wss"], stats.transports["ws"]), (1, 0));
    server.handle.kick("secure").unwrap();
    ws_expect_close(&mut ws, 1008, "kicked");
    // A plain WebSocket on the wss port is not TLS: refused in the handshake.
    let refused = tungstenite::client(ws_url(at.ws(), false, ""), Stream::connect(at.ws(), false));
    assert!(refused.is_err());
    server.wait_closed("handshake", 1);
}

#[test]
fn a_websocket_client_that_never_reads_is_closed_as_a_slow_consumer() {
    let (server, at) = start_transports(plain_ws(Config {
        max_pending_bytes: 64 * 1024,
        ..config()
    }));
    let mut slow = ws_user(at.ws(), false, "slow"); // never reads until the end
    let mut steady = ws_user(at.ws(), false, "steady");
    let sent = push_until_slow_consumer(&server, move || ws_recv(&mut steady));
    // Then the end: a close frame if it fitted, or just the end of the stream.
    let mut got = Vec::new();
    while let Ok(Received::Message(m)) = ws_read(&mut slow) {
        got.push(m);
    }
    assert_in_order_prefix(&got, sent);
    assert_eq!(server.closed("slow_consumer"), 1);
}

/// Floods heartbeats as raw masked frames over `ws` without ever reading, until the server
/// closes it (or a write blocks for `WAIT`).
fn flood(mut ws: WsClient) {
    let mut beat = Vec::new();
    let message = json(uri::HEARTBEAT, "");
    plex::protocol::ws::encode_client(
        &mut beat,
        true,
        Opcode::Text,
        [9, 8, 7, 6],
        message.as_bytes(),
    );
    let beats = beat.repeat(256);
    let stream = ws.get_mut();
    while stream.write_all(&beats).is_ok() {}
}

#[test]
fn a_heartbeat_flood_over_websocket_that_never_reads_is_closed_and_others_are_untouched() {
    for tls in [false, true] {
        let (server, at) = if tls {
            start_transports(secure(config()))
        } else {
            start_transports(plain_ws(config()))
        };
        let mut bystander = ws_user(at.ws(), tls, "bystander");
        let mut tcp_bystander = server.user("tcp-bystander");
        let flooder = ws_user(at.ws(), tls, "flooder");
        let flooding = thread::spawn(move || flood(flooder));
        server.wait_closed("slow_consumer", 1);
        flooding.join().unwrap();
        assert_eq!(server.online("flooder"), 0);
        ws_assert_alive(&mut bystander);
        assert_alive(&mut tcp_bystander);
        let mut newcomer = ws_user(at.ws(), tls, "newcomer");
        ws_assert_alive(&mut newcomer);
        assert_eq!(server.stats().connections, 3, "tls: {tls}");
    }
}
