//! The HTTP API of PROTOCOL.md §5: every route with a real HTTP client, and raw-socket tests for
//! pipelining, partial requests, keep-alive and the limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "Bearer plex-inner";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

/// GET with the bearer token; returns the status and the body as JSON (or Null).
fn get(server: &TestServer, path_and_query: &str) -> (u16, Value) {
    let response = agent()
        .get(format!("http://{}{path_and_query}", server.http))
        .header("Authorization", TOKEN)
        .call()
        .expect("HTTP answer");
    read(response)
}

/// POST a JSON body with the bearer token.
fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = agent()
        .post(format!("http://{}{path}", server.http))
        .header("Authorization", TOKEN)
        .send_json(body)
        .expect("HTTP answer");
    read(response)
}

fn read(response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A raw HTTP response: status, header lines, body.
struct Raw {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

/// Reads one response (Content-Length framed) from a raw socket.
fn read_raw(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Raw {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                let status = head[9..12].parse().unwrap();
                return Raw {
                    status,
                    headers: head,
                    body,
                };
            }
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).expect("response bytes");
        assert!(
            n > 0,
            "connection closed before a full response; got {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn raw_connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect")
}

/// Asserts that the server closes the raw connection (EOF) within `WAIT`.
fn assert_raw_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the server to close, got {e}"),
    }
}

#[test]
fn host_picks_one_of_the_outer_servers_without_auth() {
    let servers = ["10.0.0.1:9578", "10.0.0.2:9578"];
    let server = start(plex::Config {
        outer_servers: servers.iter().map(|s| s.to_string()).collect(),
        ..config()
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let response = agent()
            .get(format!("http://{}/plex/v1/host", server.http))
            .call()
            .unwrap();
        let (status, body) = read(response);
        assert_eq!(status, 200);
        let host = body["host"].as_str().unwrap().to_owned();
        assert!(servers.contains(&host.as_str()), "{host}");
        seen.insert(host);
    }
    assert_eq!(seen.len(), 2, "a random pick reaches both servers");
}

#[test]
fn host_defaults_to_the_client_listener() {
    let server = start(config());
    let (status, body) = get(&server, "/plex/v1/host");
    assert_eq!(status, 200);
    assert_eq!(body["host"], format!("127.0.0.1:{}", server.addr.port()));
}

#[test]
fn push_reaches_every_connection_of_the_uid() {
    let server = start(config());
    let mut phone = server.user("7");
    let mut tablet = server.user("7");
    let mut other = server.user("8");
    let (status, body) = post(
        &server,
        "/plex/v1/push",
        json!({"uid": "7", "uri": "/news", "body": "hi"}),
    );
    assert_eq!((status, body), (200, json!({"delivered": 2})));
    for c in [&mut phone, &mut tablet] {
        let m = recv(c);
        assert_eq!((m.uri.as_str(), m.body.as_str()), ("/news", "hi"));
        assert!(m.seq > 0);
    }
    // The other uid got nothing: its next message is the one addressed to it.
    post(
        &server,
        "/plex/v1/push",
        json!({"uid": "8", "uri": "/only-8"}),
    );
    assert_eq!(recv(&mut other).uri, "/only-8");
}

#[test]
fn batch_push_counts_connections_and_offline_uids() {
    let server = start(config());
    let _a1 = server.user("a");
    let _a2 = server.user("a");
    let mut b = server.user("b");
    let before = server.stats();
    let (status, body) = post(
        &server,
        "/plex/v1/push",
        json!({"uids": ["a", "b", "nobody"], "uri": "/batch", "body": "x"}),
    );
    assert_eq!((status, body), (200, json!({"delivered": 3})));
    assert_eq!(recv(&mut b).uri, "/batch");
    let after = server.stats();
    assert_eq!(after.pushes, before.pushes + 1);
    assert_eq!(after.delivered, before.delivered + 3);
    assert_eq!(after.dropped, before.dropped + 1);
}

#[test]
fn push_via_http_and_inner_tcp_share_one_path() {
    let server = start(config());
    let mut user = server.user("u");
    let mut inner = server.inner();
    push(&mut inner, "u", "/tcp", "1");
    post(
        &server,
        "/plex/v1/push",
        json!({"uid": "u", "uri": "/http", "body": "2"}),
    );
    let first = recv(&mut user);
    let second = recv(&mut user);
    assert_eq!((first.uri.as_str(), second.uri.as_str()), ("/tcp", "/http"));
    assert!(
        second.seq > first.seq,
        "seq strictly increases across sources"
    );
}

#[test]
fn broadcast_reaches_every_user_but_not_inner_connections() {
    let server = start(config());
    let mut users: Vec<_> = (0..5).map(|i| server.user(&format!("u{i}"))).collect();
    let mut inner = server.inner();
    let _unauthenticated = server.connect();
    server.wait_stats("6 connections besides the unauthenticated one", |s| {
        s.users == 5 && s.inner == 1
    });
    let (status, body) = post(
        &server,
        "/plex/v1/broadcast",
        json!({"uri": "/all", "body": "b"}),
    );
    assert_eq!((status, body), (200, json!({"delivered": 5})));
    for u in &mut users {
        assert_eq!(recv(u).uri, "/all");
    }
    // The inner connection's next message is its own heartbeat answer, not the broadcast.
    inner.send(plex::protocol::uri::HEARTBEAT, "").unwrap();
    assert_eq!(recv(&mut inner).uri, plex::protocol::uri::HEARTBEAT);
}

#[test]
fn online_tracks_connects_and_disconnects() {
    let server = start(config());
    let (status, body) = get(&server, "/plex/v1/online?uid=7&uid=8");
    assert_eq!((status, body), (200, json!({"online": {"7": 0, "8": 0}})));
    let first = server.user("7");
    let _second = server.user("7");
    let _eight = server.user("8");
    assert_eq!(
        get(&server, "/plex/v1/online?uid=7&uid=8").1,
        json!({"online": {"7": 2, "8": 1}})
    );
    drop(first);
    let ok = wait_until(WAIT, || {
        get(&server, "/plex/v1/online?uid=7").1 == json!({"online": {"7": 1}})
    });
    assert!(ok, "online count drops when a connection closes");
}

#[test]
fn online_percent_decodes_uids() {
    let server = start(config());
    let _user = server.user("a:b@c");
    let (_, body) = get(&server, "/plex/v1/online?uid=a%3Ab%40c");
    assert_eq!(body, json!({"online": {"a:b@c": 1}}));
    assert_eq!(get(&server, "/plex/v1/online?uid=%zz").0, 400);
    assert_eq!(get(&server, "/plex/v1/online").0, 400);
}

#[test]
fn kick_closes_the_connections_and_fires_offline() {
    let server = start(config());
    let mut a = server.user("k");
    let mut b = server.user("k");
    let (status, body) = post(&server, "/plex/v1/kick", json!({"uid": "k"}));
    assert_eq!((status, body), (200, json!({"closed": 2})));
    assert_closed(&mut a);
    assert_closed(&mut b);
    server
        .events
        .wait_for("offline of k", |e| e.contains(&Event::Offline("k".into())));
    assert_eq!(
        post(&server, "/plex/v1/kick", json!({"uid": "k"})).1,
        json!({"closed": 0})
    );
    assert_eq!(post(&server, "/plex/v1/kick", json!({})).0, 400);
}

#[test]
fn stats_and_metrics_move_with_traffic() {
    let server = start(config());
    let (_, before) = get(&server, "/plex/v1/stats");
    let mut user = server.user("s");
    post(&server, "/plex/v1/push", json!({"uid": "s", "uri": "/m"}));
    recv(&mut user);
    let (status, after) = get(&server, "/plex/v1/stats");
    assert_eq!(status, 200);
    assert_eq!(after["users"], 1);
    assert_eq!(after["uids"], 1);
    assert_eq!(
        after["pushes"].as_u64(),
        before["pushes"].as_u64().map(|n| n + 1)
    );
    assert_eq!(
        after["delivered"].as_u64(),
        before["delivered"].as_u64().map(|n| n + 1)
    );
    for key in [
        "connections",
        "inner",
        "dropped",
        "bad_frames",
        "timeouts",
        "uptime_seconds",
    ] {
        assert!(after[key].is_u64(), "stats has {key}: {after}");
    }

    let response = agent()
        .get(format!("http://{}/metrics", server.http))
        .header("Authorization", TOKEN)
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.into_body().read_to_string().unwrap();
    assert!(text.contains("# TYPE plex_pushes_total counter"), "{text}");
    assert!(text.contains("\nplex_users 1\n"), "{text}");
    let pushes = after["pushes"].as_u64().unwrap();
    assert!(
        text.contains(&format!("\nplex_pushes_total {pushes}\n")),
        "{text}"
    );
}

#[test]
fn missing_or_wrong_token_is_401_on_every_private_route() {
    let server = start(config());
    let routes = [
        ("GET", "/plex/v1/online?uid=1"),
        ("GET", "/plex/v1/stats"),
        ("GET", "/metrics"),
        ("POST", "/plex/v1/push"),
        ("POST", "/plex/v1/broadcast"),
        ("POST", "/plex/v1/kick"),
    ];
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic plex-inner"),
            Some("plex-inner"),
        ] {
            let url = format!("http://{}{path}", server.http);
            let response = match (method, auth) {
                ("GET", None) => agent().get(url).call(),
                ("GET", Some(a)) => agent().get(url).header("Authorization", a).call(),
                (_, None) => agent().post(url).send_json(json!({})),
                (_, Some(a)) => agent()
                    .post(url)
                    .header("Authorization", a)
                    .send_json(json!({})),
            };
            let (status, body) = read(response.unwrap());
            assert_eq!(status, 401, "{method} {path} with {auth:?}");
            assert!(body["error"].is_string());
        }
    }
    // The bearer scheme is case-insensitive.
    let response = agent()
        .get(format!("http://{}/plex/v1/stats", server.http))
        .header("Authorization", "bearer plex-inner")
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn bad_push_requests_are_400_and_counted() {
    let server = start(config());
    let cases = [
        json!({"uri": "/x"}),
        json!({"uid": "1"}),
        json!({"uid": "1", "uri": ""}),
        json!({"uid": "1", "uri": "/auth/success"}),
        json!({"uid": "1", "uri": "/heartbeat"}),
        json!({"uid": "1", "uids": ["2"], "uri": "/x"}),
        json!({"uids": [], "uri": "/x"}),
        json!({"uid": "", "uri": "/x"}),
        json!({"uid": 7, "uri": "/x"}),
        json!(["not", "an", "object"]),
    ];
    let before = server.stats().refused;
    for case in &cases {
        let (status, body) = post(&server, "/plex/v1/push", case.clone());
        assert_eq!(status, 400, "{case}");
        assert!(body["error"].is_string(), "{case}: {body}");
    }
    let response = agent()
        .post(format!("http://{}/plex/v1/push", server.http))
        .header("Authorization", TOKEN)
        .send("{not json")
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        post(
            &server,
            "/plex/v1/broadcast",
            json!({"uri": "/logic/send/msg"})
        )
        .0,
        400
    );
    // Invalid UTF-8, even in a field nobody reads, makes the body bad JSON.
    let response = agent()
        .post(format!("http://{}/plex/v1/push", server.http))
        .header("Authorization", TOKEN)
        .send(&b"{\"uid\":\"1\",\"uri\":\"/x\",\"junk\":\"\xff\"}"[..])
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(server.stats().refused, before + cases.len() as u64 + 3);
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405() {
    let server = start(config());
    assert_eq!(get(&server, "/plex/v1/nope").0, 404);
    assert_eq!(get(&server, "/plex/v1/push").0, 405);
    assert_eq!(post(&server, "/plex/v1/stats", json!({})).0, 405);
    assert_eq!(post(&server, "/plex/v1/host", json!({})).0, 405);
    let mut s = raw_connect(server.http);
    s.write_all(b"DELETE /plex/v1/kick HTTP/1.1\r\n\r\n")
        .unwrap();
    let r = read_raw(&mut s, &mut Vec::new());
    assert_eq!(r.status, 405);
    assert!(r.headers.contains("Allow: POST"), "{}", r.headers);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start(config());
    let _user = server.user("p");
    let mut s = raw_connect(server.http);
    let push = r#"{"uid":"p","uri":"/x"}"#;
    let requests = format!(
        "GET /plex/v1/online?uid=p HTTP/1.1\r\nAuthorization: {TOKEN}\r\n\r\n\
         POST /plex/v1/push HTTP/1.1\r\nAuthorization: {TOKEN}\r\nContent-Length: {}\r\n\r\n{push}\
         GET /nope HTTP/1.1\r\n\r\n\
         GET /plex/v1/host HTTP/1.1\r\n\r\n",
        push.len()
    );
    s.write_all(requests.as_bytes()).unwrap();
    let mut pending = Vec::new();
    let statuses: Vec<u16> = (0..4)
        .map(|_| read_raw(&mut s, &mut pending).status)
        .collect();
    assert_eq!(statuses, [200, 200, 404, 200]);
}

#[test]
fn requests_followed_by_a_half_close_are_all_answered_then_closed() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    let requests = "GET /plex/v1/host HTTP/1.1\r\n\r\n".repeat(3);
    s.write_all(requests.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut pending = Vec::new();
    for _ in 0..3 {
        assert_eq!(read_raw(&mut s, &mut pending).status, 200);
    }
    assert_raw_closed(&mut s);
    server.wait_stats("the close counted", |s| s.http_closed["peer_closed"] == 1);
}

#[test]
fn a_request_split_byte_by_byte_is_answered() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    s.set_nodelay(true).unwrap();
    let body = r#"{"uid":"nobody","uri":"/x"}"#;
    let request = format!(
        "POST /plex/v1/push HTTP/1.1\r\nAuthorization: {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for byte in request.as_bytes() {
        s.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let r = read_raw(&mut s, &mut Vec::new());
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &br#"{"delivered":0}"#[..])
    );
}

#[test]
fn keep_alive_by_default_close_on_request_and_on_http_1_0() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    let mut pending = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /plex/v1/host HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_raw(&mut s, &mut pending).status, 200);
    }
    s.write_all(b"GET /plex/v1/host HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_raw(&mut s, &mut pending);
    assert!(r.headers.contains("Connection: close"));
    assert_raw_closed(&mut s);

    let mut s = raw_connect(server.http);
    s.write_all(b"GET /plex/v1/host HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_raw(&mut s, &mut Vec::new()).status, 200);
    assert_raw_closed(&mut s);
}

#[test]
fn chunked_requests_are_411() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    s.write_all(
        format!("POST /plex/v1/push HTTP/1.1\r\nAuthorization: {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_raw(&mut s, &mut Vec::new()).status, 411);
    assert_raw_closed(&mut s);
}

#[test]
fn oversized_body_is_413_before_it_is_sent() {
    let server = start(plex::Config {
        max_http_body: 1000,
        ..config()
    });
    let mut s = raw_connect(server.http);
    // Only the head is sent: the answer must not wait for the body.
    s.write_all(
        format!(
            "POST /plex/v1/push HTTP/1.1\r\nAuthorization: {TOKEN}\r\nContent-Length: 1001\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_raw(&mut s, &mut Vec::new()).status, 413);
    assert_raw_closed(&mut s);

    // A client that sends the whole body anyway still reads the 413 (no reset before it).
    let response = agent()
        .post(format!("http://{}/plex/v1/push", server.http))
        .header("Authorization", TOKEN)
        .send(vec![b'x'; 200_000])
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[test]
fn oversized_heads_are_431() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    let long = format!(
        "GET /plex/v1/host HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(9000)
    );
    s.write_all(long.as_bytes()).unwrap();
    assert_eq!(read_raw(&mut s, &mut Vec::new()).status, 431);
    assert_raw_closed(&mut s);

    let mut s = raw_connect(server.http);
    let headers: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
    s.write_all(format!("GET /plex/v1/host HTTP/1.1\r\n{headers}\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_raw(&mut s, &mut Vec::new()).status, 431);
    assert_raw_closed(&mut s);

    // A head that never ends is cut off at the limit too, without waiting for more.
    let mut s = raw_connect(server.http);
    s.write_all(format!("GET /plex/v1/host HTTP/1.1\r\nX: {}", "b".repeat(9000)).as_bytes())
        .unwrap();
    assert_eq!(read_raw(&mut s, &mut Vec::new()).status, 431);
}

#[test]
fn malformed_request_line_is_400_then_close() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    s.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    let r = read_raw(&mut s, &mut Vec::new());
    assert_eq!(r.status, 400);
    assert!(serde_json::from_slice::<Value>(&r.body).unwrap()["error"].is_string());
    assert_raw_closed(&mut s);
}

#[test]
fn expect_continue_gets_100_then_the_response() {
    let server = start(config());
    let mut s = raw_connect(server.http);
    let body = r#"{"uid":"x","uri":"/y"}"#;
    s.write_all(
        format!(
            "POST /plex/v1/push HTTP/1.1\r\nAuthorization: {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_raw(&mut s, &mut pending).status, 100);
    s.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_raw(&mut s, &mut pending).status, 200);
}

#[test]
fn stalled_half_request_is_closed_at_the_idle_timeout_without_holding_others() {
    let server = start(plex::Config {
        http_idle_timeout: 1,
        ..config()
    });
    let mut stalled = raw_connect(server.http);
    stalled
        .write_all(b"POST /plex/v1/push HTTP/1.1\r\nAuthorization: Bearer plex-inner\r\nContent-Length: 100\r\n\r\n{\"ui")
        .unwrap();
    // Meanwhile the reactor serves everyone else.
    let mut user = server.user("busy");
    for i in 0..20 {
        post(
            &server,
            "/plex/v1/push",
            json!({"uid": "busy", "uri": format!("/{i}")}),
        );
        assert_eq!(recv(&mut user).uri, format!("/{i}"));
    }
    assert_raw_closed(&mut stalled);
    let stats = server.wait_stats("idle close counted", |s| s.http_closed["idle_timeout"] >= 1);
    assert_eq!(stats.http_connections, 0);
}

#[test]
fn at_the_http_cap_an_idle_public_connection_makes_room_and_back_ends_keep_theirs() {
    let server = start(plex::Config {
        max_http_connections: 2,
        ..config()
    });
    // A back-end shows its token once; a public client only asks for a host.
    let mut backend = raw_connect(server.http);
    let mut public = raw_connect(server.http);
    for (stream, path, auth) in [
        (&mut backend, "/plex/v1/stats", true),
        (&mut public, "/plex/v1/host", false),
    ] {
        let auth = if auth {
            "Authorization: Bearer plex-inner\r\n"
        } else {
            ""
        };
        write!(stream, "GET {path} HTTP/1.1\r\n{auth}\r\n").unwrap();
        assert_eq!(read_raw(stream, &mut Vec::new()).status, 200);
    }
    server.wait_stats("two HTTP connections", |s| s.http_connections == 2);
    // A newcomer takes the public connection's place, not the back-end's.
    let mut newcomer = raw_connect(server.http);
    assert_raw_closed(&mut public);
    write!(newcomer, "GET /plex/v1/host HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_raw(&mut newcomer, &mut Vec::new()).status, 200);
    write!(
        backend,
        "GET /plex/v1/stats HTTP/1.1\r\nAuthorization: Bearer plex-inner\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_raw(&mut backend, &mut Vec::new()).status, 200);
    let stats = server.wait_stats("one evicted", |s| s.http_closed["evicted"] == 1);
    assert_eq!(stats.http_rejected, 0);
    // With every slot held by back-ends, a newcomer is refused.
    write!(
        newcomer,
        "GET /plex/v1/stats HTTP/1.1\r\nAuthorization: Bearer plex-inner\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_raw(&mut newcomer, &mut Vec::new()).status, 200);
    let mut refused = raw_connect(server.http);
    assert_raw_closed(&mut refused);
    server.wait_stats("one refused", |s| s.http_rejected == 1);
    write!(
        backend,
        "GET /plex/v1/stats HTTP/1.1\r\nAuthorization: Bearer plex-inner\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_raw(&mut backend, &mut Vec::new()).status, 200);
}
