//! Production authentication: the auth webhook against a real HTTP service, JWT tokens, and
//! pending authentications completed through the handle.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use hmac::{KeyInit, Mac};
use plex::auth::{AuthTicket, AuthVerdict};
use plex::config::AuthMode;
use plex::protocol::uri;

/// A business auth service on a real socket, one thread per connection, keep-alive. What it
/// answers depends on the token:
/// `ok:<uid>` 200 `{"uid"}`; `chunked:<uid>` the same, chunked; `deny` 403; `bad-json` 200
/// with a non-JSON body; `close:<uid>` 200 then it closes the connection; `crash` 500;
/// `hold` no answer until the test calls `release`, then 200 `{"uid": "held"}`.
struct AuthService {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    max_live: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Dropped by `release`: held requests are then answered.
    release: Option<mpsc::Sender<()>>,
}

#[derive(Clone, Copy)]
struct ServiceOptions {
    /// Each connection answers one request; a second request on it is met with a close, as
    /// when a service drops an idle keep-alive connection just as the client reuses it.
    one_request_per_connection: bool,
    /// Time spent on each request, so that requests overlap.
    delay: Duration,
}

impl AuthService {
    fn start(options: ServiceOptions) -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let service = AuthService {
            addr,
            requests: Arc::default(),
            live: Arc::default(),
            max_live: Arc::default(),
            bodies: Arc::default(),
            release: Some(release),
        };
        let (requests, live, max_live, bodies) = (
            service.requests.clone(),
            service.live.clone(),
            service.max_live.clone(),
            service.bodies.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                max_live.fetch_max(now, Ordering::SeqCst);
                let (requests, live, bodies, released) = (
                    requests.clone(),
                    live.clone(),
                    bodies.clone(),
                    released.clone(),
                );
                std::thread::spawn(move || {
                    serve(stream, options, &requests, &bodies, &released);
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        service
    }

    fn url(&self) -> String {
        format!("http://{}/auth/check", self.addr)
    }

    /// Lets every held request (and any later one) be answered.
    fn release(&mut self) {
        self.release = None;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(
    stream: TcpStream,
    options: ServiceOptions,
    requests: &AtomicUsize,
    bodies: &Mutex<Vec<serde_json::Value>>,
    released: &Mutex<mpsc::Receiver<()>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for served in 0.. {
        // Request line and headers.
        let mut length = 0;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /auth/check HTTP/1.1"), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        if options.one_request_per_connection && served > 0 {
            return; // drop the connection without answering
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        bodies.lock().unwrap().push(body.clone());
        std::thread::sleep(options.delay);
        let token = body["token"].as_str().unwrap().to_owned();
        let json = |uid: &str| format!(r#"{{"uid":"{uid}"}}"#);
        let response = if let Some(uid) = token.strip_prefix("ok:") {
            ok(&json(uid), "")
        } else if let Some(uid) = token.strip_prefix("close:") {
            ok(&json(uid), "Connection: close\r\n")
        } else if let Some(uid) = token.strip_prefix("chunked:") {
            let j = json(uid);
            let (a, b) = j.split_at(3);
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        } else if token == "deny" {
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_owned()
        } else if token == "bad-json" {
            ok("not json", "")
        } else if token == "crash" {
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_owned()
        } else if token == "hold" {
            let _ = released.lock().unwrap().recv();
            ok(&json("held"), "")
        } else {
            panic!("unexpected token {token}");
        };
        if writer.write_all(response.as_bytes()).is_err() || token.starts_with("close:") {
            return;
        }
    }
}

fn ok(body: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A server whose tokens are checked by the webhook (no auth function set).
fn webhook(service: &AuthService, configure: impl FnOnce(&mut plex::Config)) -> TestServer {
    let mut config = plex::Config {
        auth_mode: AuthMode::Webhook,
        auth_url: Some(service.url()),
        ..config()
    };
    configure(&mut config);
    start(config)
}

const FAST: ServiceOptions = ServiceOptions {
    one_request_per_connection: false,
    delay: Duration::ZERO,
};

#[test]
fn webhook_accepts_with_the_uid_the_service_returns() {
    let service = AuthService::start(FAST);
    let server = webhook(&service, |_| {});
    let mut c = server.connect();
    assert!(c.authenticate("ok:alice", WAIT).unwrap());
    server.wait_online("alice", 1);
    let body = service.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["token"], "ok:alice");
    let remote: SocketAddr = body["remote"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        remote,
        c.stream().local_addr().unwrap(),
        "remote is the client's address"
    );
    // Chunked answers work too, on the same kept-alive connection.
    let mut d = server.connect();
    assert!(d.authenticate("chunked:bob", WAIT).unwrap());
    server.wait_online("bob", 1);
}

#[test]
fn webhook_rejections_answer_auth_failed() {
    let service = AuthService::start(FAST);
    let server = webhook(&service, |_| {});
    for token in ["deny", "bad-json", "crash"] {
        let mut c = server.connect();
        assert!(
            !c.authenticate(token, WAIT).unwrap(),
            "{token} must be rejected"
        );
        // The connection stays open and may try again (MaxAuthFailures is 3).
        assert!(c.authenticate("ok:again", WAIT).unwrap());
    }
}

#[test]
fn webhook_timeout_rejects_and_frees_the_pool() {
    let service = AuthService::start(FAST);
    let server = webhook(&service, |c| {
        c.auth_webhook_timeout = 1;
        c.auth_webhook_connections = 1;
    });
    let mut held = server.connect();
    assert!(
        !held.authenticate("hold", WAIT).unwrap(),
        "a silent service rejects at the timeout"
    );
    // The one pooled connection was dropped; a new one serves the next client.
    let mut next = server.connect();
    assert!(next.authenticate("ok:next", WAIT).unwrap());
}

#[test]
fn webhook_unreachable_service_rejects() {
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = start(plex::Config {
        auth_mode: AuthMode::Webhook,
        auth_url: Some(format!("http://{addr}/auth")),
        ..config()
    });
    let mut c = server.connect();
    assert!(!c.authenticate("ok:x", WAIT).unwrap());
    assert!(
        !c.authenticate("ok:x", WAIT).unwrap(),
        "each attempt is answered"
    );
}

#[test]
fn webhook_retries_once_when_the_service_closes_a_kept_alive_connection() {
    let service = AuthService::start(ServiceOptions {
        one_request_per_connection: true,
        delay: Duration::ZERO,
    });
    let server = webhook(&service, |c| c.auth_webhook_connections = 1);
    for i in 0..5 {
        let mut c = server.connect();
        assert!(
            c.authenticate(&format!("ok:u{i}"), WAIT).unwrap(),
            "auth {i}"
        );
    }
    assert_eq!(service.requests.load(Ordering::SeqCst), 5);
}

#[test]
fn webhook_connection_close_answers_are_honoured() {
    let service = AuthService::start(FAST);
    let server = webhook(&service, |c| c.auth_webhook_connections = 1);
    for i in 0..3 {
        let mut c = server.connect();
        assert!(c.authenticate(&format!("close:c{i}"), WAIT).unwrap());
    }
}

#[test]
fn many_auths_in_flight_share_the_bounded_pool() {
    let service = AuthService::start(ServiceOptions {
        one_request_per_connection: false,
        delay: Duration::from_millis(2),
    });
    let server = webhook(&service, |c| c.auth_webhook_connections = 8);
    let mut clients: Vec<_> = (0..500).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(uri::AUTH, &format!("ok:u{i}")).unwrap();
    }
    for c in &mut clients {
        assert_eq!(recv(c).uri, uri::AUTH_SUCCESS);
    }
    assert_eq!(server.stats().users, 500);
    let max = service.max_live.load(Ordering::SeqCst);
    assert!(max <= 8, "at most 8 connections to the service, saw {max}");
    assert!(max >= 2, "requests were spread over the pool, saw {max}");
}

#[test]
fn a_late_answer_never_reaches_a_new_connection_in_the_same_slot() {
    let mut service = AuthService::start(FAST);
    // One pooled connection: the later auth below queues behind the held one.
    let server = webhook(&service, |c| {
        c.auth_webhook_timeout = 30;
        c.auth_webhook_connections = 1;
    });
    let mut gone = server.connect();
    gone.send(uri::AUTH, "hold").unwrap();
    assert!(wait_until(WAIT, || service.requests() == 1));
    drop(gone);
    server.wait_stats("the pending client closed", |s| s.connections == 0);
    // The next connection takes the freed slot while the old request is still out.
    let mut newcomer = server.connect();
    server.wait_stats("the newcomer accepted", |s| s.connections == 1);
    service.release(); // the service now accepts the old request as uid "held"
    let mut later = server.connect();
    assert!(later.authenticate("ok:later", WAIT).unwrap());
    // The accept for the departed client was processed before "later" and touched no one.
    assert_eq!(server.online("held"), 0);
    newcomer.send(uri::HEARTBEAT, "").unwrap();
    assert_eq!(
        recv(&mut newcomer).uri,
        uri::AUTH_FAILED,
        "the newcomer is not authenticated"
    );
    assert_eq!(server.stats().users, 1);
}

#[test]
fn a_pending_client_cannot_start_a_second_authentication() {
    let mut service = AuthService::start(FAST);
    let server = webhook(&service, |_| {});
    let mut c = server.connect();
    c.send(uri::AUTH, "hold").unwrap();
    c.send(uri::AUTH, "ok:second").unwrap();
    c.send(uri::INNER_AUTH, "plex-inner").unwrap();
    // A later frame proves the two attempts above were processed (and ignored).
    c.send(uri::HEARTBEAT, "").unwrap();
    assert_eq!(recv(&mut c).uri, uri::AUTH_FAILED);
    service.release();
    assert_eq!(recv(&mut c).uri, uri::AUTH_SUCCESS);
    server.wait_online("held", 1);
    assert_eq!(server.online("second"), 0);
    assert_eq!((service.requests(), server.stats().inner), (1, 0));
}

fn jwt(secret: &[u8], header: &str, claims: serde_json::Value) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn jwt_mode_accepts_valid_tokens_only() {
    let secret = b"jwt-test-secret";
    let server = start(plex::Config {
        auth_mode: AuthMode::Jwt,
        jwt_secret: Some(String::from_utf8(secret.to_vec()).unwrap()),
        max_auth_failures: 100,
        ..config()
    });
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let now = unix_now();
    let valid = jwt(
        secret,
        hs256,
        serde_json::json!({"sub": "carol", "exp": now + 60}),
    );
    let mut c = server.connect();
    assert!(c.authenticate(&valid, WAIT).unwrap());
    server.wait_online("carol", 1);

    let rejected = [
        jwt(
            secret,
            hs256,
            serde_json::json!({"sub": "x", "exp": now - 1}),
        ),
        jwt(
            secret,
            hs256,
            serde_json::json!({"sub": "x", "exp": now + 60, "nbf": now + 30}),
        ),
        jwt(
            b"other secret",
            hs256,
            serde_json::json!({"sub": "x", "exp": now + 60}),
        ),
        {
            let t = jwt(
                secret,
                r#"{"alg":"none"}"#,
                serde_json::json!({"sub": "x", "exp": now + 60}),
            );
            format!("{}.", t.rsplit_once('.').unwrap().0)
        },
        "garbage".to_owned(),
        String::new(),
    ];
    let mut c = server.connect();
    for token in &rejected {
        assert!(!c.authenticate(token, WAIT).unwrap(), "{token}");
    }
    assert_eq!(server.stats().users, 1);
}

#[test]
fn pending_auth_is_completed_from_another_thread() {
    let (tx, rx) = mpsc::channel::<(String, AuthTicket)>();
    let tx = Mutex::new(tx);
    let server = start_with(config(), move |b| {
        b.auth_async(move |request| {
            tx.lock()
                .unwrap()
                .send((request.token.to_owned(), request.ticket))
                .unwrap();
            AuthVerdict::Pending
        })
    });
    let handle = server.handle.clone();
    let approver = std::thread::spawn(move || {
        for (token, ticket) in rx {
            let uid = token.strip_prefix("ok:").map(str::to_owned);
            handle.complete_auth(ticket, uid).unwrap();
        }
    });
    let mut good = server.connect();
    assert!(good.authenticate("ok:dave", WAIT).unwrap());
    server.wait_online("dave", 1);
    let mut bad = server.connect();
    assert!(!bad.authenticate("nope", WAIT).unwrap());
    drop(server);
    approver.join().unwrap();
}

#[test]
fn pending_auth_still_obeys_the_auth_timeout() {
    let server = start_with(
        plex::Config {
            auth_timeout: 1,
            ..config()
        },
        |b| b.auth_async(|_| AuthVerdict::Pending),
    );
    let mut c = server.connect();
    c.send(uri::AUTH, "anything").unwrap();
    assert_closed(&mut c);
    let stats = server.wait_stats("auth timeout counted", |s| s.closed["auth_timeout"] == 1);
    assert_eq!(stats.users, 0);
}
