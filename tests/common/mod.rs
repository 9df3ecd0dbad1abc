//! Shared test helpers: a server on OS-chosen ports running on its own thread, the events its
//! hooks saw, and condition waits with deadlines (never fixed sleeps).
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plex::client::Connection;
use plex::protocol::{ByteOrder, PushRequest, uri};
use plex::{Config, Handle, Message, Server};

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the server's hooks reported, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Online(String),
    Offline(String),
    Upstream(String, Message),
}

#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until the events satisfy `cond`; panics with what was seen on timeout.
    pub fn wait_for(&self, what: &str, cond: impl Fn(&[Event]) -> bool) {
        let ok = wait_until(WAIT, || cond(&self.0.lock().unwrap()));
        assert!(
            ok,
            "timed out waiting for {what}; events: {:?}",
            self.snapshot()
        );
    }
}

/// A config for tests: loopback, OS-chosen ports.
pub fn config() -> Config {
    Config {
        port: 0,
        http_port: 0,
        bind_address: [127, 0, 0, 1].into(),
        http_bind_address: [127, 0, 0, 1].into(),
        ..Config::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: Handle,
    pub events: Events,
    pub order: ByteOrder,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a server with `config` and the demo auth (token = uid; tokens with a space fail).
pub fn start(config: Config) -> TestServer {
    start_with(config, |b| b)
}

/// Starts a server, letting the test adjust the builder (hooks are already set).
pub fn start_with(
    config: Config,
    adjust: impl FnOnce(plex::ServerBuilder) -> plex::ServerBuilder,
) -> TestServer {
    bind_with(config, adjust).run()
}

/// A server whose listener is bound but whose reactor does not run yet: connections wait in
/// the backlog, and what they send is read in its first turn, in one go.
pub struct BoundServer {
    pub addr: SocketAddr,
    server: Server,
    events: Events,
    order: ByteOrder,
}

/// Binds a server with `config` and the demo auth (token = uid), without running it.
pub fn bind(config: Config) -> BoundServer {
    bind_with(config, |b| b)
}

/// Binds a server, letting the test adjust the builder (hooks are already set).
pub fn bind_with(
    config: Config,
    adjust: impl FnOnce(plex::ServerBuilder) -> plex::ServerBuilder,
) -> BoundServer {
    let _ = env_logger::builder().is_test(true).try_init();
    let order = ByteOrder::from_little_endian(config.little_endian);
    let events = Events::default();
    let (e1, e2, e3) = (events.clone(), events.clone(), events.clone());
    let builder = Server::builder(config)
        .auth(plex::auth::token_as_uid)
        .on_online(move |uid| e1.push(Event::Online(uid.into())))
        .on_offline(move |uid| e2.push(Event::Offline(uid.into())))
        .on_message(move |uid, m| e3.push(Event::Upstream(uid.into(), m)));
    let server = adjust(builder).build().expect("server starts");
    BoundServer {
        addr: server.local_addr(),
        server,
        events,
        order,
    }
}

impl BoundServer {
    /// A raw connection, accepted once the server runs.
    pub fn connect(&self) -> Connection {
        Connection::connect(self.addr, self.order).expect("connect")
    }

    /// Runs the reactor on a thread of its own.
    pub fn run(self) -> TestServer {
        let handle = self.server.handle();
        let server = self.server;
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            addr: self.addr,
            handle,
            events: self.events,
            order: self.order,
            thread: Some(thread),
        }
    }
}

impl TestServer {
    /// A raw connection, not authenticated.
    pub fn connect(&self) -> Connection {
        Connection::connect(self.addr, self.order).expect("connect")
    }

    /// A connection authenticated as `uid`.
    pub fn user(&self, uid: &str) -> Connection {
        let mut c = self.connect();
        assert!(
            c.authenticate(uid, WAIT).expect("auth answer"),
            "auth as {uid} refused"
        );
        c
    }

    /// An authenticated inner connection.
    pub fn inner(&self) -> Connection {
        let mut c = self.connect();
        assert!(
            c.authenticate_inner(plex::config::DEFAULT_INNER_PASSWORD, WAIT)
                .expect("auth answer"),
            "inner auth refused"
        );
        c
    }

    /// Live connections of `uid`, as the server sees them.
    pub fn online(&self, uid: &str) -> usize {
        self.handle.online(uid).expect("server running")
    }

    /// Waits until `uid` has `n` live connections.
    pub fn wait_online(&self, uid: &str, n: usize) {
        let ok = wait_until(WAIT, || self.online(uid) == n);
        assert!(
            ok,
            "uid {uid} never had {n} connections (has {})",
            self.online(uid)
        );
    }

    pub fn stats(&self) -> plex::Stats {
        self.handle.stats().expect("server running")
    }

    /// Waits until the server's stats satisfy `cond`.
    pub fn wait_stats(&self, what: &str, cond: impl Fn(&plex::Stats) -> bool) -> plex::Stats {
        let ok = wait_until(WAIT, || cond(&self.stats()));
        let stats = self.stats();
        assert!(ok, "timed out waiting for {what}; stats: {stats:?}");
        stats
    }

    /// Shuts the server down and waits for `run` to return.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.shutdown();
            thread.join().expect("reactor thread").expect("reactor ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop_inner();
        }
    }
}

/// Sends a push over an inner connection, as the Go PlexClient does.
pub fn push(inner: &mut Connection, uid: &str, uri: &str, body: &str) {
    let request = PushRequest {
        uid: uid.into(),
        uri: uri.into(),
        body: body.into(),
    };
    inner
        .send(uri::SEND_MSG, &request.to_json())
        .expect("send push");
}

/// Receives the next message, failing the test after `WAIT`.
pub fn recv(c: &mut Connection) -> Message {
    c.recv(Some(WAIT)).expect("a message")
}

/// Asserts that the server closed this connection (EOF or reset) within `WAIT`.
pub fn assert_closed(c: &mut Connection) {
    let deadline = Instant::now() + WAIT;
    loop {
        match c.recv(Some(deadline.saturating_duration_since(Instant::now()))) {
            Ok(_) => continue, // drain whatever was sent before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return;
            }
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
