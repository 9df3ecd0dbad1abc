//! Shared test helpers: a server on OS-chosen ports running on its own thread, the events its
//! hooks saw, and condition waits with deadlines (never fixed sleeps).
#![allow(dead_code)] // each test file uses a different subset

pub mod chunks;
pub mod hostile;
pub mod redis;
pub mod scripted_auth;
pub mod transport;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plex::client::Connection;
use plex::protocol::{ByteOrder, PushRequest, uri};
use plex::{Config, Handle, Message, Server};

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the server logs when accepting fails for lack of descriptors.
pub const SATURATED: &str = "pausing accepts";

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
    /// The HTTP API listener.
    pub http: SocketAddr,
    pub handle: Handle,
    pub events: Events,
    pub order: ByteOrder,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a server with `config`; its `AuthMode` decides how tokens are checked (by default
/// the token is the uid, and tokens with a space fail).
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
    pub http: SocketAddr,
    server: Server,
    events: Events,
    order: ByteOrder,
}

/// Binds a server with `config` (its `AuthMode` decides how tokens are checked), without
/// running it.
pub fn bind(config: Config) -> BoundServer {
    bind_with(config, |b| b)
}

/// Binds a server, letting the test adjust the builder (hooks are already set).
pub fn bind_with(
    config: Config,
    adjust: impl FnOnce(plex::ServerBuilder) -> plex::ServerBuilder,
) -> BoundServer {
    let order = ByteOrder::from_little_endian(config.little_endian);
    let (builder, events) = builder_with_events(config);
    let server = adjust(builder).build().expect("server starts");
    BoundServer {
        addr: server.local_addr(),
        http: server.http_addr(),
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
            http: self.http,
            handle,
            events: self.events,
            order: self.order,
            thread: Some(thread),
        }
    }
}

/// A builder (auth from the config's `AuthMode`) with hooks that record into the returned `Events`, for tests
/// that run the server themselves (e.g. one turn at a time).
pub fn builder_with_events(config: Config) -> (plex::ServerBuilder, Events) {
    let _ = env_logger::builder().is_test(true).try_init();
    let events = Events::default();
    let (e1, e2, e3) = (events.clone(), events.clone(), events.clone());
    let builder = Server::builder(config)
        .on_online(move |uid| e1.push(Event::Online(uid.into())))
        .on_offline(move |uid| e2.push(Event::Offline(uid.into())))
        .on_message(move |uid, m| e3.push(Event::Upstream(uid.into(), m)));
    (builder, events)
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

/// Receives the next push and the place in the history of the last push that had one.
pub fn recv_at(c: &mut Connection) -> (String, String, u64) {
    let m = recv(c);
    let (epoch, offset) = c
        .position()
        .map(|(e, o)| (e.to_owned(), o))
        .unwrap_or_default();
    (m.body, epoch, offset)
}

/// Races reconnects against a stream of pushes: `inner` pushes `1`, `2`, … (at most `max`) to
/// uid 7 on a thread while `reader` reads; after every `per_round` pushes read, the reader is
/// replaced by `reconnect(round)`, which resumes at the last place it got, `rounds` times.
/// Offsets and bodies must run 1, 2, 3, … throughout: no gap, duplicate or reordering.
pub fn race_resumes(
    mut inner: Connection,
    mut reader: Connection,
    (rounds, per_round, max): (usize, u64, u64),
    mut reconnect: impl FnMut(usize) -> Connection,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < max {
                n += 1;
                push(&mut inner, "7", "/m", &n.to_string());
            }
            n
        })
    };
    let mut expected = 1u64;
    let mut epoch = String::new();
    for round in 0..rounds {
        for _ in 0..per_round {
            let (body, e, offset) = recv_at(&mut reader);
            assert_eq!((offset, body), (expected, expected.to_string()));
            epoch = e;
            expected += 1;
        }
        reader = reconnect(round);
        let resumed = (reader.resume("7", (&epoch, expected - 1), WAIT))
            .unwrap()
            .unwrap();
        assert!(resumed.recovered, "{resumed:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = pusher.join().unwrap();
    while expected <= sent {
        let (body, _, offset) = recv_at(&mut reader);
        assert_eq!((offset, body), (expected, expected.to_string()));
        expected += 1;
    }
    assert_alive(&mut reader);
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

// ---- Raw frames: for what the blocking client cannot express (odd keys, bad bytes, chunking).

/// One frame carrying `payload`, its length header in `order`.
pub fn frame(order: ByteOrder, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    plex::protocol::frame::encode(&mut out, order, payload);
    out
}

/// Writes `bytes` as they are, bypassing the client's encoder.
pub fn send_raw(c: &Connection, bytes: &[u8]) {
    use std::io::Write;
    let mut stream = c.stream();
    stream.write_all(bytes).expect("write raw bytes");
    stream.flush().expect("flush");
}

/// Writes `bytes` one byte per write, so the server sees a frame in as many reads as possible.
pub fn send_byte_by_byte(c: &Connection, bytes: &[u8]) {
    for b in bytes {
        send_raw(c, std::slice::from_ref(b));
    }
}

/// Sends a push whose body is given as raw JSON text (odd keys, nulls, bad values).
pub fn push_json(inner: &mut Connection, request: &str) {
    inner.send(uri::SEND_MSG, request).expect("send push");
}

/// Receives the next message and asserts its uri.
pub fn expect(c: &mut Connection, uri: &str) -> Message {
    let m = recv(c);
    assert_eq!(m.uri, uri, "unexpected message {m:?}");
    m
}

/// Receives the next message and asserts its uri and body.
pub fn expect_msg(c: &mut Connection, uri: &str, body: &str) -> Message {
    let m = recv(c);
    assert_eq!((m.uri.as_str(), m.body.as_str()), (uri, body), "{m:?}");
    m
}

/// A heartbeat round trip: proves the connection is open and that nothing else was queued to
/// it before the answer (the answer is the next message).
pub fn assert_alive(c: &mut Connection) {
    c.send(uri::HEARTBEAT, "").expect("send heartbeat");
    expect(c, uri::HEARTBEAT);
}

impl TestServer {
    /// Writes one frame whose payload is `json`, in this server's byte order.
    pub fn send_json(&self, c: &Connection, json: &str) {
        send_raw(c, &frame(self.order, json.as_bytes()));
    }

    /// Connections closed so far for `reason` (a `CloseReason::as_str` name).
    pub fn closed(&self, reason: &str) -> u64 {
        self.stats().closed[reason]
    }

    /// Waits until `n` connections have been closed for `reason`.
    pub fn wait_closed(&self, reason: &str, n: u64) {
        self.wait_stats(&format!("{n} connections closed for {reason}"), |s| {
            s.closed[reason] == n
        });
    }

    /// Waits (at most `WAIT`) for `run` to return after a shutdown, and checks it returned Ok.
    pub fn wait_finished(&mut self) {
        let thread = self.thread.take().expect("server still running");
        assert!(
            wait_until(WAIT, || thread.is_finished()),
            "run() did not return after shutdown"
        );
        thread.join().expect("reactor thread").expect("run ok");
    }
}

// ---- The real binary, for what only a process shows: signals, limits, logs.

/// The `plex-server` binary, killed when the test ends (also on panic).
pub struct ChildServer {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Drains the child's stderr; finished once the child has exited and every line is in.
    reader: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
    /// The HTTP API's address.
    pub http: SocketAddr,
}

impl ChildServer {
    /// Starts the binary on loopback and OS-chosen ports with `args` added, logging at
    /// `RUST_LOG=log_level`, under a descriptor limit of `nofile` (or the inherited one).
    pub fn spawn(args: &[&str], log_level: &str, nofile: Option<u32>) -> ChildServer {
        let limit = nofile.map_or("unlimited".to_owned(), |n| n.to_string());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} 2>/dev/null; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_plex-server"))
            .args(["--port", "0", "--http-port", "0"])
            .args(["--bind", "127.0.0.1", "--http-bind", "127.0.0.1"])
            .args(args)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plex-server");
        // Drain stderr all along: a full pipe would block the server's logging.
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = ChildServer {
            child,
            log,
            reader: Some(reader),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        server.addr = server.listening("listening for clients on ");
        server.http = server.listening("listening for the HTTP API on ");
        server
    }

    /// The address at the end of the log line that contains `what`, once it is logged.
    pub fn listening(&self, what: &str) -> SocketAddr {
        let mut line = None;
        let ok = wait_until(WAIT, || {
            line = self.logged_line(what);
            line.is_some()
        });
        assert!(ok, "no {what:?} line: {:?}", self.log.lock().unwrap());
        let addr = line.unwrap().rsplit(' ').next().unwrap().to_owned();
        addr.parse().expect("address in the log line")
    }

    /// Opens clients one by one with `open` until the server logs that accepting failed for
    /// lack of descriptors (at most `most`). `open(n)` says whether client `n` was served
    /// (`Ok`) or waits in the backlog (`Err`), watching for the log line meanwhile.
    pub fn fill_to_saturation<S, W>(
        &self,
        most: usize,
        mut open: impl FnMut(usize) -> Result<S, W>,
    ) -> (Vec<S>, Vec<W>) {
        let (mut served, mut waiting) = (Vec::new(), Vec::new());
        while !self.logged(SATURATED) {
            assert!(served.len() < most, "never ran out of descriptors");
            match open(served.len()) {
                Ok(client) => served.push(client),
                Err(client) => waiting.push(client),
            }
        }
        (served, waiting)
    }

    /// The first line of the server's log that contains `what`.
    pub fn logged_line(&self, what: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter().find(|l| l.contains(what)).cloned()
    }

    pub fn logged(&self, what: &str) -> bool {
        self.logged_line(what).is_some()
    }

    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(status.is_none(), "the server exited: {status:?}");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildServer {
    /// Every line logged so far; after `terminate` or `kill_and_collect`, every line.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Sends SIGTERM, waits for the process to exit and for its log to be read to the end.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        self.finish_log();
        status
    }

    /// Kills the process and returns its whole log, read to the end: what a test may assert
    /// was never logged.
    pub fn kill_and_collect(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish_log();
        self.log()
    }

    /// Waits until the reader has taken every line the exited process wrote.
    fn finish_log(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
    }
}
