//! `PlexClient`: the push side for business back-ends, like the original's `client` package.
//!
//! Each configured server gets a link: a thread that connects, authenticates with the inner
//! password, sends heartbeats and writes queued pushes, and a reader thread that notices at
//! once when the server goes away. A push goes to every server, because its uid may be
//! connected to any of them; `send` only queues it, so the caller never waits on the network.
//! Delivery is at most once: the protocol has no acknowledgement, so a push written just
//! before a connection drops may be lost with it.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use serde::Deserialize;

use super::backoff::Backoff;
use super::connection::{CONNECT_TIMEOUT, Connection, FrameWriter};
use crate::config::{ConfigError, DEFAULT_INNER_PASSWORD};
use crate::protocol::uri::{self, BadPushUri};
use crate::protocol::{ByteOrder, Codec, PushRequest};

/// How long `close` waits for queued pushes to be written.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to answer the inner authentication.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// A write blocked this long means the server has stopped reading: reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A server silent for this many heartbeat intervals (it answers every heartbeat) is gone.
const SILENT_HEARTBEATS: u32 = 3;
/// Most pushes handed to one write.
const BATCH: usize = 256;

/// One encoded `/logic/send/msg` frame, shared by the queues of every server.
type Frame = Arc<[u8]>;

/// Settings of a [`PlexClient`], with the PascalCase keys of the original's client `Config`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct PlexClientConfig {
    /// `host:port` of every server; each push goes to all of them.
    pub inner_servers: Vec<String>,
    /// The servers' `InnerPassword`.
    pub inner_password: String,
    /// Seconds between heartbeats on each connection.
    pub heartbeat: u64,
    /// Byte order of the length header; must match the servers'.
    pub little_endian: bool,
    /// `"json"` (the default) or `"protobuf"`: the form of the messages on the wire.
    pub codec: Codec,
    /// Pushes each server may hold while it is unreachable; past it `send` fails.
    pub max_queued: usize,
}

impl Default for PlexClientConfig {
    fn default() -> Self {
        PlexClientConfig {
            inner_servers: vec!["127.0.0.1:9578".to_owned()],
            inner_password: DEFAULT_INNER_PASSWORD.to_owned(),
            heartbeat: 60,
            little_endian: false,
            codec: Codec::Json,
            max_queued: 4096,
        }
    }
}

impl PlexClientConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: &str| Err(ConfigError(message.to_owned()));
        if self.inner_servers.is_empty() {
            return fail("InnerServers must list at least one server");
        }
        if self.inner_password.is_empty() {
            return fail("InnerPassword must not be empty");
        }
        if self.heartbeat == 0 {
            return fail("Heartbeat must be greater than 0");
        }
        if self.max_queued == 0 {
            return fail("MaxQueued must be greater than 0");
        }
        Ok(())
    }
}

/// Why a push was not queued. Nothing is queued anywhere when `send` fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The uri is empty or reserved by the protocol.
    BadUri(BadPushUri),
    /// The uid is empty.
    EmptyUid,
    /// These servers are not connected: from `send`, none has been reached yet; from
    /// `wait_connected`, they were not reached in time.
    NotConnected { servers: Vec<String> },
    /// This server refused the inner password; the client has given up on it.
    Refused { server: String },
    /// This server is unreachable and already holds `MaxQueued` pushes.
    QueueFull { server: String },
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::BadUri(e) => write!(f, "cannot push: {e}"),
            PushError::EmptyUid => f.write_str("cannot push: uid is required"),
            PushError::NotConnected { servers } => {
                write!(f, "not connected to {}", servers.join(", "))
            }
            PushError::Refused { server } => write!(f, "{server} refused the inner password"),
            PushError::QueueFull { server } => {
                write!(f, "{server} is unreachable and its queue is full")
            }
        }
    }
}

impl std::error::Error for PushError {}

/// `close` gave up on pushes that could not be written in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unflushed {
    /// Pushes left unwritten, counted once per server.
    pub pushes: usize,
}

impl fmt::Display for Unflushed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} queued pushes were never written", self.pushes)
    }
}

impl std::error::Error for Unflushed {}

/// Where the link to one server stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Not connected yet; pushes wait in its queue.
    Connecting,
    /// Authenticated: pushes are written as they come.
    Connected,
    /// The connection was lost; pushes wait in its queue until it is back.
    Reconnecting,
    /// The server refused the inner password; the client has given up on it.
    Refused,
}

/// One server as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    pub server: String,
    pub state: ServerState,
    /// Pushes waiting to be written to it.
    pub queued: usize,
}

/// Pushes messages to users through every configured Plex server. `Send` and `Sync`: share it
/// between threads behind an `Arc`.
pub struct PlexClient {
    links: Vec<Arc<Link>>,
    threads: Vec<JoinHandle<usize>>,
    order: ByteOrder,
    codec: Codec,
    max_queued: usize,
}

impl PlexClient {
    /// Starts connecting to every server in the background; see [`PlexClient::wait_connected`].
    /// An invalid config is an error of kind `InvalidInput` naming the key to fix.
    pub fn new(config: PlexClientConfig) -> io::Result<PlexClient> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.0))?;
        let order = ByteOrder::from_little_endian(config.little_endian);
        // Built up link by link: if a thread cannot start, dropping it stops the others.
        let mut client = PlexClient {
            links: Vec::new(),
            threads: Vec::new(),
            order,
            codec: config.codec,
            max_queued: config.max_queued,
        };
        for server in &config.inner_servers {
            let link = Arc::new(Link {
                server: server.clone(),
                state: Mutex::new(LinkState {
                    connection: ServerState::Connecting,
                    queue: VecDeque::new(),
                    lost: false,
                    close_by: None,
                }),
                changed: Condvar::new(),
            });
            let worker = Worker {
                link: link.clone(),
                password: config.inner_password.clone(),
                order,
                codec: config.codec,
                heartbeat: Duration::from_secs(config.heartbeat),
            };
            client.links.push(link);
            let thread = thread::Builder::new()
                .name(format!("plex-push {server}"))
                .spawn(move || worker.run())?;
            client.threads.push(thread);
        }
        Ok(client)
    }

    /// Queues `{uri, body}` for every connection of `uid`, on every server; returns at once.
    ///
    /// It fails, queuing nothing, when no server has been reached yet, when a server refused
    /// the password, or when a server that is down already holds `MaxQueued` pushes. Pushes
    /// queued for a server that is down are written once it is back.
    pub fn send(&self, uid: &str, uri: &str, body: &str) -> Result<(), PushError> {
        uri::check_push_uri(uri).map_err(PushError::BadUri)?;
        if uid.is_empty() {
            return Err(PushError::EmptyUid);
        }
        let request = PushRequest {
            uid: uid.into(),
            uri: uri.into(),
            body: body.into(),
        };
        let mut frame = Vec::new();
        let body = request.to_json();
        self.codec
            .write_frame(&mut frame, self.order, 0, uri::SEND_MSG, &body);
        let frame: Frame = frame.into();

        // Every queue is locked at once, always in the same order: all of them get the push,
        // or none does.
        let mut states: Vec<_> = self.links.iter().map(|link| link.lock()).collect();
        let server_where = |bad: &dyn Fn(&LinkState) -> bool| {
            states
                .iter()
                .position(|s| bad(s))
                .map(|i| self.links[i].server.clone())
        };
        if let Some(server) = server_where(&|s| s.connection == ServerState::Refused) {
            return Err(PushError::Refused { server });
        }
        if states
            .iter()
            .all(|s| s.connection == ServerState::Connecting)
        {
            return Err(PushError::NotConnected {
                servers: self.servers(),
            });
        }
        if let Some(server) = server_where(&|s| s.queue.len() >= self.max_queued) {
            return Err(PushError::QueueFull { server });
        }
        for state in &mut states {
            state.queue.push_back(frame.clone());
        }
        drop(states);
        for link in &self.links {
            link.changed.notify_all();
        }
        Ok(())
    }

    /// Waits until every server is connected, at most `timeout`. Fails with `Refused` if a
    /// server refuses the password, or with the servers still unreached at the deadline.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), PushError> {
        let deadline = Instant::now() + timeout;
        for link in &self.links {
            let state = link.wait_while(deadline, |s| {
                !matches!(s.connection, ServerState::Connected | ServerState::Refused)
            });
            if state.connection == ServerState::Refused {
                return Err(PushError::Refused {
                    server: link.server.clone(),
                });
            }
        }
        let servers: Vec<String> = self
            .status()
            .into_iter()
            .filter(|status| status.state != ServerState::Connected)
            .map(|status| status.server)
            .collect();
        if servers.is_empty() {
            Ok(())
        } else {
            Err(PushError::NotConnected { servers })
        }
    }

    /// Each server with the state of its link, in the configured order.
    pub fn status(&self) -> Vec<ServerStatus> {
        self.links
            .iter()
            .map(|link| {
                let state = link.lock();
                ServerStatus {
                    server: link.server.clone(),
                    state: state.connection,
                    queued: state.queue.len(),
                }
            })
            .collect()
    }

    /// Writes what is queued, then disconnects; waits at most [`CLOSE_TIMEOUT`] for servers
    /// that are down to come back.
    pub fn close(self) -> Result<(), Unflushed> {
        self.close_within(CLOSE_TIMEOUT)
    }

    /// [`PlexClient::close`] with a deadline of your choosing.
    pub fn close_within(mut self, timeout: Duration) -> Result<(), Unflushed> {
        self.begin_close(Instant::now() + timeout);
        let pushes = self
            .threads
            .drain(..)
            .map(|thread| thread.join().expect("a push link panicked"))
            .sum();
        match pushes {
            0 => Ok(()),
            pushes => Err(Unflushed { pushes }),
        }
    }

    fn begin_close(&self, deadline: Instant) {
        for link in &self.links {
            link.lock().close_by = Some(deadline);
            link.changed.notify_all();
        }
    }

    fn servers(&self) -> Vec<String> {
        self.links.iter().map(|link| link.server.clone()).collect()
    }
}

/// Dropping without `close` writes what it can on the connections that are up, without
/// waiting for the others, in the background.
impl Drop for PlexClient {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.begin_close(Instant::now());
        }
    }
}

/// What the client and a link's threads share about one server.
struct Link {
    server: String,
    state: Mutex<LinkState>,
    /// Signalled on every change: a push queued, a connection lost, a status, a close.
    changed: Condvar,
}

struct LinkState {
    connection: ServerState,
    queue: VecDeque<Frame>,
    /// The reader saw the current connection end.
    lost: bool,
    /// Set by `close`: write what is queued by then, and stop.
    close_by: Option<Instant>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().expect("push link lock")
    }

    fn wait_timeout<'a>(
        &self,
        state: MutexGuard<'a, LinkState>,
        timeout: Duration,
    ) -> MutexGuard<'a, LinkState> {
        self.changed
            .wait_timeout(state, timeout)
            .expect("push link lock")
            .0
    }

    /// Waits while `cond` holds, until `deadline` at most.
    fn wait_while(
        &self,
        deadline: Instant,
        mut cond: impl FnMut(&LinkState) -> bool,
    ) -> MutexGuard<'_, LinkState> {
        let mut state = self.lock();
        while cond(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.wait_timeout(state, left);
        }
        state
    }
}

/// Why a connection attempt failed.
enum Attempt {
    Failed(io::Error),
    Refused,
}

impl From<io::Error> for Attempt {
    fn from(e: io::Error) -> Self {
        Attempt::Failed(e)
    }
}

/// How a connection ended.
enum SessionEnd {
    Lost,
    Closed,
}

/// The thread of one link.
struct Worker {
    link: Arc<Link>,
    password: String,
    order: ByteOrder,
    codec: Codec,
    heartbeat: Duration,
}

impl Worker {
    /// Connects, writes, and reconnects until the client closes or the server refuses the
    /// password; returns how many queued pushes were never written.
    fn run(self) -> usize {
        let server = &self.link.server;
        let mut backoff = Backoff::new();
        let mut delay = Duration::ZERO;
        loop {
            if let Some(unwritten) = self.pause(delay) {
                return unwritten;
            }
            match self.connect() {
                Ok(conn) => {
                    backoff.reset();
                    info!("inner connection to {server} authenticated");
                    if let SessionEnd::Closed = self.session(conn) {
                        return self.give_up();
                    }
                }
                Err(Attempt::Refused) => {
                    error!("{server} refused the inner password; giving up on it");
                    self.link.lock().connection = ServerState::Refused;
                    return self.give_up();
                }
                Err(Attempt::Failed(e)) => debug!("cannot connect to {server}: {e}"),
            }
            delay = backoff.next_delay();
        }
    }

    /// Sleeps `delay` before the next attempt. `Some(unwritten)` means stop: the client has
    /// closed and there is nothing left to write, or no time left to write it.
    fn pause(&self, delay: Duration) -> Option<usize> {
        let until = Instant::now() + delay;
        let mut state = self.link.lock();
        loop {
            let now = Instant::now();
            if let Some(close_by) = state.close_by {
                if state.queue.is_empty() {
                    return Some(0);
                }
                if now >= close_by {
                    drop(state);
                    return Some(self.give_up());
                }
            }
            let wake = state.close_by.map_or(until, |close_by| close_by.min(until));
            if now >= wake {
                return None;
            }
            state = self.link.wait_timeout(state, wake - now);
        }
    }

    /// Empties the queue for good, waking anyone waiting on the status; returns its length.
    fn give_up(&self) -> usize {
        let unwritten = {
            let mut state = self.link.lock();
            let unwritten = state.queue.len();
            state.queue.clear();
            unwritten
        };
        self.link.changed.notify_all();
        if unwritten > 0 {
            warn!(
                "{}: {unwritten} queued pushes dropped unwritten",
                self.link.server
            );
        }
        unwritten
    }

    /// One connection attempt, no longer than what is left before a close deadline.
    fn connect(&self) -> Result<Connection, Attempt> {
        let close_by = self.link.lock().close_by;
        let left = close_by.map_or(CONNECT_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let mut conn =
            Connection::connect_timeout(&self.link.server, self.order, CONNECT_TIMEOUT.min(left))?
                .with_codec(self.codec);
        if conn.authenticate_inner(&self.password, AUTH_TIMEOUT.min(left))? {
            Ok(conn)
        } else {
            Err(Attempt::Refused)
        }
    }

    /// Runs one authenticated connection until it is lost or the client closes.
    fn session(&self, conn: Connection) -> SessionEnd {
        let server = &self.link.server;
        let started = conn.writer().and_then(|writer| {
            writer.set_write_timeout(Some(WRITE_TIMEOUT))?;
            let reader = self.spawn_reader(conn)?;
            Ok((writer, reader))
        });
        let (mut writer, reader) = match started {
            Ok(started) => started,
            Err(e) => {
                warn!("{server}: {e}");
                return SessionEnd::Lost;
            }
        };
        {
            let mut state = self.link.lock();
            state.connection = ServerState::Connected;
            state.lost = false;
        }
        self.link.changed.notify_all();

        let end = match self.write_until_done(&mut writer) {
            Ok(end) => end,
            Err(e) => {
                warn!("{server}: write failed: {e}");
                SessionEnd::Lost
            }
        };
        writer.shutdown();
        reader.join().expect("a push reader panicked");
        if let SessionEnd::Lost = end {
            warn!("inner connection to {server} lost; reconnecting");
            self.link.lock().connection = ServerState::Reconnecting;
            self.link.changed.notify_all();
        }
        end
    }

    /// Reads what the server sends (heartbeat answers) until the connection ends, which it
    /// reports to the writer at once rather than at the next write.
    fn spawn_reader(&self, mut conn: Connection) -> io::Result<JoinHandle<()>> {
        let link = self.link.clone();
        let silence = self.heartbeat * SILENT_HEARTBEATS;
        thread::Builder::new()
            .name(format!("plex-push-read {}", link.server))
            .spawn(move || {
                let e = loop {
                    match conn.recv(Some(silence)) {
                        Ok(message) => trace!("{}: received {}", link.server, message.uri),
                        Err(e) => break e,
                    }
                };
                debug!("{}: connection ended: {e}", link.server);
                link.lock().lost = true;
                link.changed.notify_all();
            })
    }

    /// Writes queued pushes, and a heartbeat every interval, until the connection is lost or
    /// the client closes with nothing left to write.
    fn write_until_done(&self, writer: &mut FrameWriter) -> io::Result<SessionEnd> {
        let mut next_heartbeat = Instant::now() + self.heartbeat;
        let mut batch = Vec::new();
        // Where each frame of the batch ends, to know which ones a failed write got out.
        let mut frame_ends = Vec::new();
        loop {
            {
                let mut state = self.link.lock();
                loop {
                    let now = Instant::now();
                    if state.lost {
                        return Ok(SessionEnd::Lost);
                    }
                    if let Some(close_by) = state.close_by
                        && (state.queue.is_empty() || now >= close_by)
                    {
                        return Ok(SessionEnd::Closed);
                    }
                    if !state.queue.is_empty() || now >= next_heartbeat {
                        break;
                    }
                    state = self.link.wait_timeout(state, next_heartbeat - now);
                }
                batch.clear();
                frame_ends.clear();
                for frame in state.queue.iter().take(BATCH) {
                    batch.extend_from_slice(frame);
                    frame_ends.push(batch.len());
                }
            }
            // Heartbeats go out on time even under a steady flow of pushes: the reader takes
            // a silent server for a dead one.
            if Instant::now() >= next_heartbeat {
                writer.send(uri::HEARTBEAT, "")?;
                next_heartbeat = Instant::now() + self.heartbeat;
            }
            if batch.is_empty() {
                continue;
            }
            let (written, result) = write_counted(writer, &batch);
            // Only this thread pops, so the front of the queue is still the batch. Frames
            // wholly handed to the kernel are done; the rest are retried on the next
            // connection.
            let done = frame_ends.partition_point(|&end| end <= written);
            self.link.lock().queue.drain(..done);
            result?;
        }
    }
}

/// Writes all of `bytes` like `write_all`, but also says how many got out before an error.
fn write_counted(writer: &mut impl Write, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match writer.write(&bytes[written..]) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_go_keys_and_keeps_defaults() {
        let config: PlexClientConfig = serde_json::from_str(
            r#"{"InnerServers": ["10.0.0.1:9578", "10.0.0.2:9578"], "InnerPassword": "s"}"#,
        )
        .unwrap();
        assert_eq!(config.inner_servers.len(), 2);
        assert_eq!(config.inner_password, "s");
        assert_eq!(config.heartbeat, 60);
        assert!(serde_json::from_str::<PlexClientConfig>(r#"{"Servers": []}"#).is_err());
    }

    #[test]
    fn invalid_configs_name_the_key() {
        for (config, key) in [
            (
                PlexClientConfig {
                    inner_servers: vec![],
                    ..Default::default()
                },
                "InnerServers",
            ),
            (
                PlexClientConfig {
                    heartbeat: 0,
                    ..Default::default()
                },
                "Heartbeat",
            ),
            (
                PlexClientConfig {
                    max_queued: 0,
                    ..Default::default()
                },
                "MaxQueued",
            ),
        ] {
            let e = PlexClient::new(config).err().expect("rejected");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn bad_pushes_are_refused_before_anything_is_queued() {
        // Port 1 refuses connections: the link never gets anywhere, and need not.
        let client = PlexClient::new(PlexClientConfig {
            inner_servers: vec!["127.0.0.1:1".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            client.send("7", uri::AUTH_SUCCESS, ""),
            Err(PushError::BadUri(BadPushUri::Reserved))
        );
        assert_eq!(
            client.send("7", "", ""),
            Err(PushError::BadUri(BadPushUri::Empty))
        );
        assert_eq!(client.send("", "/x", ""), Err(PushError::EmptyUid));
    }

    #[test]
    fn pushes_go_out_in_the_configured_codec() {
        use crate::client::connection::tests::{WAIT, accept};
        let config: PlexClientConfig = serde_json::from_str(r#"{"Codec": "protobuf"}"#).unwrap();
        assert_eq!(config.codec, Codec::Protobuf);
        assert_eq!(PlexClientConfig::default().codec, Codec::Json);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = PlexClient::new(PlexClientConfig {
            inner_servers: vec![listener.local_addr().unwrap().to_string()],
            ..config
        })
        .unwrap();
        // The server's side reads protobuf only: a JSON frame would fail to decode.
        let mut server = accept(&listener, Codec::Protobuf);
        let auth = server.recv(Some(WAIT)).unwrap();
        assert_eq!(auth.uri, uri::INNER_AUTH);
        server.send(uri::AUTH_SUCCESS, "").unwrap();
        client.wait_connected(WAIT).unwrap();
        client.send("7", "/chat", "hi").unwrap();
        let push = server.recv(Some(WAIT)).unwrap();
        assert_eq!(push.uri, uri::SEND_MSG);
        let request = PushRequest::decode(&push.body).unwrap();
        assert_eq!(
            (&*request.uid, &*request.uri, &*request.body),
            ("7", "/chat", "hi")
        );
        client.close().unwrap();
    }

    #[test]
    fn write_counted_reports_how_far_a_failed_write_got() {
        struct Short(usize);
        impl Write for Short {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                let n = buf.len().min(3).min(self.0);
                self.0 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (written, result) = write_counted(&mut Short(7), &[0; 10]);
        assert_eq!(written, 7);
        assert!(result.is_err());
        let (written, result) = write_counted(&mut Short(100), &[0; 10]);
        assert_eq!((written, result.is_ok()), (10, true));
    }
}
