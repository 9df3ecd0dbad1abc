//! The auth webhook when things go wrong on its side: no descriptor left to connect with, a
//! service that cannot be reached, and a service that misbehaves (answers before it is asked,
//! answers twice, answers too much, never stops answering). Each failure fails only the
//! exchange it happened in: that client gets `/auth/failed`, may try again, and everyone else
//! is served as before. The service here is the user's own, written to misbehave; it is not a
//! stand-in for anything of ours.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use plex::Config;
use plex::client::Connection;
use plex::config::AuthMode;
use plex::internals::MAX_RESPONSE;
use plex::protocol::{ByteOrder, uri};

/// An auth service that answers each request according to its token:
/// `ok:<uid>` 200 `{"uid"}`, kept alive; `close:<uid>` the same, then it closes;
/// `double:<uid>` two complete 200 answers in one write; `huge` a 200 whose body is over
/// `MAX_RESPONSE`; `endless-extension` a chunk whose extension never ends; `endless-trailer`
/// trailers that never end. After `answer_next_early`, the next connection is sent an answer
/// (uid `early`) as soon as it is accepted, before it has sent anything, and is never read.
struct Service {
    addr: SocketAddr,
    early: Arc<AtomicBool>,
    /// Held connections wait on this until the service is dropped.
    _hold: mpsc::Sender<()>,
}

impl Service {
    fn start() -> Service {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // Accepted connections inherit it: a request it does not read cannot all be sent.
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(128).unwrap();
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let early = Arc::new(AtomicBool::new(false));
        let (hold, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let answer_early = early.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                if answer_early.swap(false, Ordering::SeqCst) {
                    let held = held.clone();
                    std::thread::spawn(move || {
                        let _ = stream.write_all(ok(r#"{"uid":"early"}"#, "").as_bytes());
                        let _ = held.lock().unwrap().recv(); // keeps the connection, unread
                    });
                } else {
                    std::thread::spawn(move || serve(stream));
                }
            }
        });
        Service {
            addr,
            early,
            _hold: hold,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    fn answer_next_early(&self) {
        self.early.store(true, Ordering::SeqCst);
    }
}

fn ok(body: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers the requests of one connection, by token, until it closes.
fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        let mut length = 0;
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        while line != "\r\n" {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let token = request["token"].as_str().unwrap();
        let uid_json = |uid: &str| format!(r#"{{"uid":"{uid}"}}"#);
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let answer = if let Some(uid) = token.strip_prefix("ok:") {
            ok(&uid_json(uid), "")
        } else if let Some(uid) = token.strip_prefix("close:") {
            let _ = writer.write_all(ok(&uid_json(uid), "Connection: close\r\n").as_bytes());
            return;
        } else if let Some(uid) = token.strip_prefix("double:") {
            ok(&uid_json(uid), "").repeat(2)
        } else if token == "huge" {
            let pad = "p".repeat(MAX_RESPONSE);
            ok(&format!(r#"{{"uid":"huge","pad":"{pad}"}}"#), "")
        } else if token == "endless-extension" {
            return endless(writer, format!("{chunked}1;"), "x");
        } else if token == "endless-trailer" {
            return endless(writer, format!("{chunked}0\r\n"), "X-T: 1\r\n");
        } else {
            panic!("unexpected token {token:?}");
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Writes `start`, then `more` again and again until the peer gives up.
fn endless(mut writer: TcpStream, start: String, more: &str) {
    let more = more.repeat(1024);
    if writer.write_all(start.as_bytes()).is_ok() {
        while writer.write_all(more.as_bytes()).is_ok() {}
    }
}

/// A server that checks tokens with the service at `url`. The webhook's own timeout is far
/// beyond `WAIT`: an exchange that only failed at the timeout would fail the test.
fn webhook_server(url: String, configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        auth_mode: AuthMode::Webhook,
        auth_url: Some(url),
        auth_webhook_timeout: 30,
        auth_timeout: 30,
        ..config()
    };
    configure(&mut config);
    start(config)
}

/// A user authenticated through the service, kept as a bystander.
fn bystander(server: &TestServer, uid: &str) -> Connection {
    let mut c = server.connect();
    assert!(c.authenticate(&format!("close:{uid}"), WAIT).unwrap());
    c
}

#[test]
fn an_answer_sent_before_the_request_fails_that_exchange() {
    let service = Service::start();
    let server = webhook_server(service.url(), |c| {
        c.auth_webhook_connections = 1;
        c.max_frame_size = 16 * 1024 * 1024;
    });
    let mut alice = bystander(&server, "alice");
    service.answer_next_early();
    // A token larger than the kernel's buffers on both sides: its request cannot have been
    // sent in full when the early answer arrives.
    let token = format!("ok:{}", "t".repeat(8 * 1024 * 1024));
    let mut victim = server.connect();
    assert!(!victim.authenticate(&token, WAIT).unwrap());
    assert_eq!(server.online("early"), 0);
    // The victim may try again, and others are served.
    assert!(victim.authenticate("ok:victim", WAIT).unwrap());
    server.wait_online("victim", 1);
    assert_alive(&mut alice);
}

#[test]
fn a_doubled_answer_never_logs_the_next_client_in_as_the_previous_user() {
    let service = Service::start();
    let server = webhook_server(service.url(), |c| c.auth_webhook_connections = 1);
    let mut alice = server.connect();
    let mut bob = server.connect();
    // One connection to the service: bob's request comes right after alice's doubled answer.
    alice.send(uri::AUTH, "double:alice").unwrap();
    bob.send(uri::AUTH, "ok:bob").unwrap();
    let alice_in = alice.await_auth(WAIT).expect("alice answered");
    let bob_in = bob.await_auth(WAIT).expect("bob answered");
    assert_eq!(
        server.online("alice"),
        usize::from(alice_in),
        "only alice is alice"
    );
    assert_eq!(server.online("bob"), usize::from(bob_in));
    if bob_in {
        server.handle.push("bob", "/for-bob", "").unwrap();
        assert_eq!(recv(&mut bob).uri, "/for-bob");
    }
    // Later clients are served as the service says.
    let mut carol = server.connect();
    assert!(carol.authenticate("ok:carol", WAIT).unwrap());
    server.wait_online("carol", 1);
}

#[test]
fn answers_too_large_or_never_ending_fail_that_exchange_and_no_other() {
    let service = Service::start();
    let server = webhook_server(service.url(), |_| {});
    let mut bystander = bystander(&server, "bystander");
    for token in ["huge", "endless-extension", "endless-trailer"] {
        let mut c = server.connect();
        assert!(!c.authenticate(token, WAIT).unwrap(), "{token}");
        assert_alive(&mut bystander);
        assert!(c.authenticate(&format!("ok:after-{token}"), WAIT).unwrap());
        server.wait_online(&format!("after-{token}"), 1);
    }
    assert_eq!(server.online("huge"), 0);
}

#[test]
fn a_failed_connect_answers_every_attempt_and_leaves_each_client_free_to_retry() {
    // A port that was just free: nothing listens there until the service starts below.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = webhook_server(format!("http://127.0.0.1:{port}/auth"), |c| {
        c.auth_webhook_connections = 1;
    });
    let mut clients: Vec<Connection> = (0..5).map(|_| server.connect()).collect();
    for attempt in 0..2 {
        for c in &mut clients {
            c.send(uri::AUTH, "ok:retry").unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let answer = c.await_auth(WAIT);
            assert!(
                matches!(answer, Ok(false)),
                "client {i}, attempt {attempt}: {answer:?}"
            );
        }
    }
    // The service comes up on that port: the next attempt of each succeeds.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(stream));
        }
    });
    for c in &mut clients {
        assert!(c.authenticate("ok:retry", WAIT).unwrap());
    }
    server.wait_online("retry", clients.len());
}

// ---- Out of descriptors: the real binary under a low descriptor limit.

/// Descriptor limit of the child: a handful for itself, the rest for clients.
const CHILD_NOFILE: u32 = 40;
const SATURATED: &str = "pausing accepts";

/// What became of a client whose authentication was sent.
enum Outcome {
    Accepted,
    Refused,
    /// No answer: it waits in the backlog, the server out of descriptors.
    Waiting,
}

fn outcome(server: &ChildServer, c: &mut Connection) -> Outcome {
    let mut answer = None;
    let settled = wait_until(WAIT, || {
        match c.recv(Some(Duration::from_millis(10))) {
            Ok(m) if m.uri == uri::AUTH_SUCCESS => answer = Some(Outcome::Accepted),
            Ok(m) if m.uri == uri::AUTH_FAILED => answer = Some(Outcome::Refused),
            Ok(m) => panic!("unexpected {m:?}"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
        answer.is_some() || server.logged(SATURATED)
    });
    assert!(settled, "neither answered nor out of descriptors");
    answer.unwrap_or(Outcome::Waiting)
}

#[test]
fn out_of_descriptors_the_webhook_fails_the_auth_and_the_client_may_retry() {
    let service = Service::start();
    let url = service.url();
    let mut server = ChildServer::spawn(&["--auth-url", &url], "info", Some(CHILD_NOFILE));
    let addr = server.addr;
    let connect = || Connection::connect(addr, ByteOrder::Big).unwrap();
    // Users authenticate one by one until the descriptors run out. The service closes its
    // connection after each answer, so that the webhook keeps none open.
    let (mut served, mut starved, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
    while !server.logged(SATURATED) {
        assert!(served.len() < 2 * CHILD_NOFILE as usize, "never ran out");
        let mut c = connect();
        c.send(uri::AUTH, &format!("close:u{}", served.len()))
            .unwrap();
        match outcome(&server, &mut c) {
            Outcome::Accepted => served.push(c),
            Outcome::Refused => starved.push(c), // accepted, but the webhook had no descriptor
            Outcome::Waiting => waiting.push(c),
        }
    }
    for _ in 0..2 {
        let mut c = connect();
        c.send(uri::AUTH, "close:late").unwrap();
        waiting.push(c);
    }
    // One descriptor freed goes to the first client waiting in the backlog; its webhook
    // request then finds none.
    let mut target = match starved.pop() {
        Some(c) => c,
        None => {
            drop(served.pop());
            let mut first = waiting.remove(0);
            assert!(!first.await_auth(WAIT).expect("an answer, not a hang"));
            first
        }
    };
    // Every attempt is answered while the descriptors stay short.
    assert!(!target.authenticate("close:target", WAIT).unwrap());
    server.assert_running();
    // With descriptors back, the same client gets in.
    drop(waiting);
    served.truncate(served.len() - 5);
    let freed = wait_until(WAIT, || {
        let mut fresh = connect();
        fresh.authenticate("close:fresh", WAIT).unwrap_or(false)
    });
    assert!(freed, "no descriptor came back");
    assert!(target.authenticate("close:target", WAIT).unwrap());
    for c in &mut served {
        assert_alive(c);
    }
    server.assert_running();
}
