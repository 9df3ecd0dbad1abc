//! `UserClient`: the user side of the protocol, as the Android SDK speaks it. It connects
//! (optionally asking `/plex/v1/host` where to first), authenticates with a token, sends a
//! heartbeat every interval, hands pushed messages to the application as [`Event`]s, and
//! reconnects after a loss when its [`Reconnect`] policy says so. One thread per client reads,
//! heartbeats and reconnects; any thread may send upstream messages.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::backoff::Backoff;
use super::connection::{Connection, FrameWriter, Resumed};
use super::host::lookup_host;
use crate::protocol::{ByteOrder, Codec, Message, uri};

/// How long the server may take to answer the authentication or the host lookup, and to
/// take a write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A server silent for this many heartbeat intervals (it answers every heartbeat) is gone.
const SILENT_HEARTBEATS: u32 = 3;

/// When to reconnect after the connection is lost, as in the Android SDK. A refused token is
/// never retried, whatever the policy: it would be refused again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reconnect {
    /// After any loss, including the server closing the connection on purpose (a kick, a
    /// shutdown).
    #[default]
    Always,
    /// Only after a failure: a reset, an I/O error, unanswered heartbeats, or a server that
    /// cannot be reached. A connection the server closed in an orderly way stays closed.
    OnFailure,
    /// Never.
    Never,
}

impl Reconnect {
    fn allows(self, reason: Disconnect) -> bool {
        match (self, reason) {
            (_, Disconnect::AuthRefused) | (Reconnect::Never, _) => false,
            (Reconnect::Always, _) => true,
            (Reconnect::OnFailure, reason) => matches!(reason, Disconnect::Failed(_)),
        }
    }
}

/// Where the TCP server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// This `host:port`.
    Direct(String),
    /// Whatever the HTTP API at this `host:port` answers to `GET /plex/v1/host`, asked
    /// before every connection so that a reconnect may land on another server.
    HostApi(String),
}

/// Settings of a [`UserClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserConfig {
    pub server: ServerAddr,
    /// Sent with `/auth/server`; the server's auth function turns it into a uid.
    pub token: String,
    /// Interval between heartbeats; keep it well under the server's `HeartbeatTimeout`.
    pub heartbeat: Duration,
    /// Byte order of the length header; must match the server's.
    pub little_endian: bool,
    /// The form of the messages on the wire; the server must accept it.
    pub codec: Codec,
    pub reconnect: Reconnect,
}

impl UserConfig {
    /// Connects straight to `server` (`host:port`), with the defaults: a heartbeat every 60 s
    /// (the server's default `Heartbeat`), big-endian headers, JSON, reconnect always.
    pub fn new(server: impl Into<String>, token: impl Into<String>) -> Self {
        UserConfig {
            server: ServerAddr::Direct(server.into()),
            token: token.into(),
            heartbeat: Duration::from_secs(60),
            little_endian: false,
            codec: Codec::Json,
            reconnect: Reconnect::Always,
        }
    }
}

/// What happened on a [`UserClient`], in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message pushed to this user.
    Push(Message),
    /// The connection was lost; `reconnecting` says whether the client is trying again.
    /// When it is not, this is the last event.
    Disconnected {
        reason: Disconnect,
        reconnecting: bool,
    },
    /// Connected and authenticated again after a loss.
    Reconnected,
    /// After `Reconnected`, when the server keeps a history (PROTOCOL.md §9): the client gave
    /// the place of the last push it got, and the server says whether every push since then
    /// follows (`recovered`), or some were lost meanwhile (the application may want to fetch
    /// what it missed another way).
    Resumed { recovered: bool },
}

/// Why a connection was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The server closed the connection in an orderly way: a kick, a shutdown, a timeout.
    ClosedByServer,
    /// The connection failed: reset, an I/O error, or heartbeats went unanswered.
    Failed(io::ErrorKind),
    /// The server refused the token when the client reconnected.
    AuthRefused,
}

/// Why [`UserClient::connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The host lookup, the connection or the authentication exchange failed.
    Io(io::Error),
    /// The server refused the token.
    AuthRefused,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "cannot connect: {e}"),
            ConnectError::AuthRefused => f.write_str("the server refused the token"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) => Some(e),
            ConnectError::AuthRefused => None,
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// A user's connection to Plex, kept alive and reconnected on a thread of its own.
pub struct UserClient {
    events: Receiver<Event>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl UserClient {
    /// Connects and authenticates, then heartbeats, receives and reconnects in the
    /// background. The first attempt is made here, so that an unreachable server or a refused
    /// token is reported at once rather than retried.
    pub fn connect(config: UserConfig) -> Result<UserClient, ConnectError> {
        let (conn, writer, _) = open(&config, None)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(Some(writer)),
            stopped: Mutex::new(false),
            stop: Condvar::new(),
            heartbeats_answered: AtomicU64::new(0),
        });
        let (events_tx, events) = mpsc::channel();
        let worker = Worker {
            config,
            shared: shared.clone(),
            events: events_tx,
        };
        let worker = thread::Builder::new()
            .name("plex-user".into())
            .spawn(move || worker.run(conn))?;
        Ok(UserClient {
            events,
            shared,
            worker: Some(worker),
        })
    }

    /// The next event, waiting at most `timeout`. `Disconnected` as an error means the
    /// client has stopped and no event will come.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// The next event if there is one already.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.events.try_recv()
    }

    /// Events as they come, blocking; the iteration ends when the client stops for good.
    pub fn iter(&self) -> mpsc::Iter<'_, Event> {
        self.events.iter()
    }

    /// Sends an upstream message `{uri, body}` to the server, which hands it to the
    /// application's message hook. Fails with `NotConnected` while disconnected.
    pub fn send(&self, uri: &str, body: &str) -> io::Result<()> {
        self.shared.send(uri, body)
    }

    /// Whether a connection is up and authenticated right now.
    pub fn is_connected(&self) -> bool {
        self.shared.writer().is_some()
    }

    /// Heartbeats the server has answered since the client started.
    pub fn heartbeats_answered(&self) -> u64 {
        self.shared.heartbeats_answered.load(Ordering::Relaxed)
    }

    /// Disconnects and stops the background thread.
    pub fn close(mut self) {
        self.stop();
        if let Some(worker) = self.worker.take() {
            worker.join().expect("the user client thread panicked");
        }
    }

    fn stop(&self) {
        *self.shared.stopped.lock().expect("user client lock") = true;
        self.shared.stop.notify_all();
        // Unblocks the thread's read; it sees `stopped` and leaves.
        if let Some(writer) = self.shared.writer().as_ref() {
            writer.shutdown();
        }
    }
}

/// Dropping disconnects too, without waiting for the background thread to finish.
impl Drop for UserClient {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.stop();
        }
    }
}

/// What the client and its thread share.
struct Shared {
    /// The sending half of the live connection; `None` while disconnected.
    writer: Mutex<Option<FrameWriter>>,
    stopped: Mutex<bool>,
    /// Signalled when `stopped` is set, to cut a reconnect wait short.
    stop: Condvar,
    heartbeats_answered: AtomicU64,
}

impl Shared {
    fn writer(&self) -> MutexGuard<'_, Option<FrameWriter>> {
        self.writer.lock().expect("user client lock")
    }

    fn send(&self, uri: &str, body: &str) -> io::Result<()> {
        match self.writer().as_mut() {
            Some(writer) => writer.send(uri, body),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "disconnected from the server",
            )),
        }
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().expect("user client lock")
    }

    /// Sleeps `delay`, or less if the client stops; returns whether it has.
    fn sleep(&self, delay: Duration) -> bool {
        let stopped = self.stopped.lock().expect("user client lock");
        let (stopped, _) = self
            .stop
            .wait_timeout_while(stopped, delay, |stopped| !*stopped)
            .expect("user client lock");
        *stopped
    }
}

/// How a session ended.
enum SessionEnd {
    /// The client was closed.
    Stopped,
    Lost(Disconnect),
}

/// The client's background thread.
struct Worker {
    config: UserConfig,
    shared: Arc<Shared>,
    events: Sender<Event>,
}

impl Worker {
    fn run(self, mut conn: Connection) {
        let mut backoff = Backoff::new();
        // The place of the last push received in the uid's history, kept across connections.
        let mut position: Option<(String, u64)> = None;
        loop {
            let end = self.session(&mut conn);
            if let Some((epoch, offset)) = conn.position() {
                position = Some((epoch.to_owned(), offset));
            }
            let reason = match end {
                SessionEnd::Stopped => return,
                SessionEnd::Lost(reason) => reason,
            };
            let reconnecting = self.config.reconnect.allows(reason);
            info!("disconnected ({reason:?}); reconnecting: {reconnecting}");
            self.emit(Event::Disconnected {
                reason,
                reconnecting,
            });
            if !reconnecting {
                return;
            }
            let reopened = loop {
                if self.shared.sleep(backoff.next_delay()) {
                    return;
                }
                match open(&self.config, position.as_ref()) {
                    Ok((conn, writer, resumed)) => {
                        *self.shared.writer() = Some(writer);
                        break (conn, resumed);
                    }
                    Err(ConnectError::AuthRefused) => {
                        warn!("the server refused the token; not reconnecting");
                        self.emit(Event::Disconnected {
                            reason: Disconnect::AuthRefused,
                            reconnecting: false,
                        });
                        return;
                    }
                    Err(ConnectError::Io(e)) => debug!("reconnect failed: {e}"),
                }
            };
            let resumed;
            (conn, resumed) = reopened;
            backoff.reset();
            info!("reconnected");
            self.emit(Event::Reconnected);
            if let Some(resumed) = resumed {
                self.emit(Event::Resumed {
                    recovered: resumed.recovered,
                });
            }
        }
    }

    /// Reads and heartbeats on one authenticated connection, whose writer is in place, until
    /// it is lost or the client is closed.
    fn session(&self, conn: &mut Connection) -> SessionEnd {
        // Checked after the writer is in place: a `close` racing with us either sees the
        // writer and shuts it down, or has set `stopped` before this check.
        let reason = if self.shared.is_stopped() {
            None
        } else {
            Some(self.read_until_lost(conn))
        };
        self.shared.writer().take();
        match reason {
            Some(reason) if !self.shared.is_stopped() => SessionEnd::Lost(reason),
            _ => SessionEnd::Stopped,
        }
    }

    fn read_until_lost(&self, conn: &mut Connection) -> Disconnect {
        let heartbeat = self.config.heartbeat;
        let mut next_heartbeat = Instant::now() + heartbeat;
        let mut last_heard = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_heartbeat {
                if now - last_heard >= heartbeat * SILENT_HEARTBEATS {
                    return Disconnect::Failed(io::ErrorKind::TimedOut);
                }
                if let Err(e) = self.shared.send(uri::HEARTBEAT, "") {
                    return Disconnect::Failed(e.kind());
                }
                next_heartbeat = now + heartbeat;
                continue;
            }
            match conn.recv(Some(next_heartbeat - now)) {
                Ok(message) => {
                    last_heard = Instant::now();
                    self.deliver(message);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Disconnect::ClosedByServer;
                }
                Err(e) => return Disconnect::Failed(e.kind()),
            }
        }
    }

    fn deliver(&self, message: Message) {
        match message.uri.as_str() {
            uri::HEARTBEAT => {
                self.shared
                    .heartbeats_answered
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Answers to an authentication already settled; nothing to tell.
            uri::AUTH_SUCCESS | uri::AUTH_FAILED => {}
            _ => self.emit(Event::Push(message)),
        }
    }

    fn emit(&self, event: Event) {
        // No receiver means the client was dropped; its thread is on its way out.
        let _ = self.events.send(event);
    }
}

/// Finds the server, connects and authenticates, resuming from `position` when it has one;
/// returns the connection, its sending half and what the server said of the resumption.
fn open(
    config: &UserConfig,
    position: Option<&(String, u64)>,
) -> Result<(Connection, FrameWriter, Option<Resumed>), ConnectError> {
    let server = match &config.server {
        ServerAddr::Direct(server) => server.clone(),
        ServerAddr::HostApi(api) => lookup_host(api, ANSWER_TIMEOUT)?,
    };
    let order = ByteOrder::from_little_endian(config.little_endian);
    let mut conn = Connection::connect(&server, order)?.with_codec(config.codec);
    let (accepted, resumed) = match position {
        Some((epoch, offset)) => {
            let resumed = conn.resume(&config.token, (epoch, *offset), ANSWER_TIMEOUT)?;
            (resumed.is_some(), resumed)
        }
        None => (conn.authenticate(&config.token, ANSWER_TIMEOUT)?, None),
    };
    if accepted {
        debug!("authenticated with {server}");
        let writer = conn.writer()?;
        // A server that stops reading must not hold a heartbeat, an upstream send or a
        // `close` (which shuts the socket down under the same lock) forever.
        writer.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok((conn, writer, resumed))
    } else {
        Err(ConnectError::AuthRefused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::connection::tests::{WAIT, accept};

    #[test]
    fn speaks_the_configured_codec() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = UserConfig {
            codec: Codec::Protobuf,
            ..UserConfig::new(listener.local_addr().unwrap().to_string(), "alice")
        };
        // The server's side reads protobuf only: a JSON frame would fail to decode.
        let server = thread::spawn(move || {
            let mut server = accept(&listener, Codec::Protobuf);
            let auth = server.recv(Some(WAIT)).unwrap();
            assert_eq!((&*auth.uri, &*auth.body), (uri::AUTH, "alice"));
            server.send(uri::AUTH_SUCCESS, "").unwrap();
            server.send("/chat", "hello").unwrap();
            server
        });
        let client = UserClient::connect(config).unwrap();
        let mut server = server.join().unwrap();
        let event = client.recv_timeout(WAIT).unwrap();
        assert_eq!(event, Event::Push(Message::new("/chat", "hello")));
        client.send("/up", "b").unwrap();
        assert_eq!(server.recv(Some(WAIT)).unwrap(), Message::new("/up", "b"));
        client.close();
    }

    #[test]
    fn policies_decide_which_losses_are_retried() {
        use Disconnect::*;
        let reset = Failed(io::ErrorKind::ConnectionReset);
        let cases = [
            (Reconnect::Always, [true, true, false]),
            (Reconnect::OnFailure, [false, true, false]),
            (Reconnect::Never, [false, false, false]),
        ];
        for (policy, expected) in cases {
            let got = [ClosedByServer, reset, AuthRefused].map(|r| policy.allows(r));
            assert_eq!(got, expected, "{policy:?}");
        }
    }
}
