//! Hostile HTTP clients: refused requests that announce big bodies, pipelining without
//! reading, public connections holding every slot, tricks with the bearer token, and pushes
//! too big for anyone. Each is answered or shut out without costing anyone else.

mod common;

use std::io::{ErrorKind, Write};
use std::time::Duration;

use common::hostile::*;
use common::*;
use plex::Config;
use plex::protocol::PushRequest;
use serde_json::json;

#[test]
fn refused_requests_announcing_a_big_body_are_answered_at_once_and_closed() {
    const CONNECTIONS: usize = 100;
    let server = start(config());
    let mut inner = server.inner();
    let mut user = server.user("u");
    let mut clients: Vec<RawHttp> = (0..CONNECTIONS).map(|_| server.http()).collect();
    // Only the heads: each announces 1 MiB (the most MaxHttpBody allows) that never comes.
    let big = format!("Content-Length: {}\r\n\r\n", 1024 * 1024);
    for (i, c) in clients.iter_mut().enumerate() {
        if i % 2 == 0 {
            c.send(&format!("POST /plex/v1/nowhere HTTP/1.1\r\n{big}"));
        } else {
            c.send(&format!("POST /plex/v1/push HTTP/1.1\r\n{big}")); // no bearer
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let status = c.response().status;
        assert_eq!(status, if i % 2 == 0 { 404 } else { 401 }, "client {i}");
        c.assert_closed();
    }
    drop(clients);
    let stats = server.wait_stats("every refused connection gone", |s| s.http_connections == 0);
    assert_eq!(stats.http_closed["bad_request"], CONNECTIONS as u64);
    assert_untouched(&mut inner, &mut user, "u");
}

/// `GET /plex/v1/online?uid=<i>` with the bearer: its answer names `i`, so order shows.
fn numbered_request(i: u64) -> String {
    request("GET", &format!("/plex/v1/online?uid={i}"), Some(BEARER), "")
}

#[test]
fn pipelining_without_reading_is_paused_and_answered_in_order_once_read() {
    // Far more than the server's and the kernel's buffers take while nobody reads.
    const MOST: u64 = 500_000;
    let server = start(config());
    let mut piped = server.http();
    // A write that makes no progress for this long: the server has stopped reading.
    let stalled = Duration::from_secs(2);
    piped.stream.set_write_timeout(Some(stalled)).unwrap();
    // Requests are generated as they are written; `ends[i]` is where request `i` ends.
    let (mut unwritten, mut ends, mut written) = (Vec::new(), Vec::new(), 0u64);
    loop {
        while unwritten.len() < 32 * 1024 {
            assert!(
                (ends.len() as u64) < MOST,
                "the server never stopped reading"
            );
            let next = numbered_request(ends.len() as u64);
            unwritten.extend_from_slice(next.as_bytes());
            ends.push(ends.last().unwrap_or(&0) + next.len() as u64);
        }
        match piped.stream.write(&unwritten) {
            Ok(n) => {
                written += n as u64;
                unwritten.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    // Requests sent whole, and whether the next one was cut short.
    let whole = ends.partition_point(|&end| end <= written);
    let cut = written > whole.checked_sub(1).map_or(0, |last| ends[last]);
    // Meanwhile the server answers everyone else, and has not answered all it was sent.
    let mut other = server.http();
    other.send(&request("GET", "/plex/v1/stats", Some(BEARER), ""));
    let answered = other.response().json()["http_requests"].as_u64().unwrap();
    assert!(
        answered < whole as u64,
        "it answered {answered} of {whole} requests nobody read"
    );
    // The client finishes the request it was cut in, then reads: every answer, in order.
    let finish = {
        let mut stream = piped.stream.try_clone().unwrap();
        let rest = if cut { ends[whole] - written } else { 0 };
        let bytes = unwritten[..rest as usize].to_vec();
        std::thread::spawn(move || {
            stream.set_write_timeout(Some(WAIT)).unwrap();
            stream.write_all(&bytes).unwrap();
        })
    };
    for i in 0..whole as u64 + u64::from(cut) {
        let response = piped.response();
        assert_eq!(response.status, 200);
        assert_eq!(response.json(), json!({ "online": { i.to_string(): 0 } }));
    }
    finish.join().unwrap();
    piped.send(&request("GET", "/plex/v1/host", None, ""));
    assert_eq!(piped.response().status, 200);
}

#[test]
fn public_connections_holding_every_slot_never_lock_out_a_back_end() {
    const CAP: usize = 4;
    let server = start(Config {
        max_http_connections: CAP,
        ..config()
    });
    let mut user = server.user("u");
    // Kept-alive public connections take every slot.
    let mut public: Vec<RawHttp> = (0..CAP).map(|_| server.http()).collect();
    for c in &mut public {
        c.send(&request("GET", "/plex/v1/host", None, ""));
        assert_eq!(c.response().status, 200);
    }
    server.wait_stats("every slot taken", |s| s.http_connections == CAP as u64);
    let push = json!({"uid": "u", "uri": "/from-back-end"}).to_string();
    let mut back_end = server.http();
    back_end.send(&request("POST", "/plex/v1/push", Some(BEARER), &push));
    let answer = back_end.response();
    assert_eq!(
        (answer.status, answer.json()),
        (200, json!({"delivered": 1}))
    );
    expect(&mut user, "/from-back-end");
    // The oldest public connection made room for it.
    public.remove(0).assert_closed();
    // More public newcomers each take a public connection's place, never the back-end's.
    for _ in 0..CAP {
        let mut newcomer = server.http();
        newcomer.send(&request("GET", "/plex/v1/host", None, ""));
        assert_eq!(newcomer.response().status, 200);
        public.push(newcomer);
    }
    back_end.send(&request("POST", "/plex/v1/push", Some(BEARER), &push));
    assert_eq!(back_end.response().status, 200);
    expect(&mut user, "/from-back-end");
    let stats = server.stats();
    assert_eq!(stats.http_closed["evicted"], 1 + CAP as u64, "{stats:?}");
    assert_eq!(stats.http_rejected, 0);
}

#[test]
fn duplicate_authorization_is_400_and_near_miss_bearers_are_401() {
    let server = start(config());
    let status = |headers: &str| {
        let mut c = server.http();
        c.send(&format!("GET /plex/v1/stats HTTP/1.1\r\n{headers}\r\n"));
        c.response().status
    };
    let right = "Authorization: Bearer plex-inner\r\n";
    assert_eq!(status(right), 200);
    assert_eq!(status(&right.repeat(2)), 400);
    assert_eq!(
        status("Authorization: Bearer wrong\r\nAuthorization: Bearer plex-inner\r\n"),
        400
    );
    for near_miss in [
        "Bearer plex-inne",
        "Bearer p",
        "Bearer ",
        "Bearer plex-inner2",
        "Bearer plex-inner plex-inner",
        "Basic plex-inner",
        "plex-inner",
    ] {
        assert_eq!(
            status(&format!("Authorization: {near_miss}\r\n")),
            401,
            "{near_miss:?}"
        );
    }
}

#[test]
fn a_push_too_big_for_any_client_is_refused_up_front_and_nobody_is_closed() {
    const MAX_PENDING: usize = 64 * 1024;
    let server = start(Config {
        max_pending_bytes: MAX_PENDING,
        ..config()
    });
    let mut users: Vec<_> = (0..3).map(|i| server.user(&format!("u{i}"))).collect();
    let mut inner = server.inner();
    let huge = "h".repeat(MAX_PENDING + 1);
    let mut api = server.http();
    for (path, body) in [
        ("/plex/v1/broadcast", json!({"uri": "/huge", "body": huge})),
        (
            "/plex/v1/push",
            json!({"uids": ["u0", "u1", "u2"], "uri": "/huge", "body": huge}),
        ),
    ] {
        api.send(&request("POST", path, Some(BEARER), &body.to_string()));
        assert_eq!(api.response().status, 413, "{path}");
    }
    // Over inner TCP: counted as refused, nobody closed.
    let too_big = PushRequest {
        uid: "u0".into(),
        uri: "/huge".into(),
        body: huge.as_str().into(),
    };
    inner
        .send(plex::protocol::uri::SEND_MSG, &too_big.to_json())
        .unwrap();
    let stats = server.wait_stats("three refusals", |s| s.refused == 3);
    assert_eq!(stats.closed["slow_consumer"], 0);
    assert_eq!(stats.users, 3);
    // Nothing of it was queued to anyone: the next message each gets is its own.
    for (i, c) in users.iter_mut().enumerate() {
        assert_untouched(&mut inner, c, &format!("u{i}"));
    }
    let fits = json!({"uri": "/small", "body": "fits"}).to_string();
    api.send(&request("POST", "/plex/v1/broadcast", Some(BEARER), &fits));
    assert_eq!(api.response().json(), json!({"delivered": 3}));
    for c in &mut users {
        expect(c, "/small");
    }
}
