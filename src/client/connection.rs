//! A blocking, framed connection to a Plex server: the building block of the user-side client,
//! of `PlexClient`'s inner connections, and of the tests.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::protocol::message::encode_message;
use crate::protocol::{ByteOrder, Decoder, Message, uri};

/// How long `connect` waits for each address, as the Android SDK does.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted from a server: servers send pushes of at most the inner limit.
const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// A framed connection to a Plex server, read and written by one thread; [`Connection::writer`]
/// gives another thread its sending half.
pub struct Connection {
    stream: TcpStream,
    order: ByteOrder,
    /// Bytes read but not yet returned as messages (a partial frame survives a timeout).
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Connection {
    /// Connects to the first reachable address of `addr`.
    pub fn connect(addr: impl ToSocketAddrs, order: ByteOrder) -> io::Result<Connection> {
        Connection::connect_timeout(addr, order, CONNECT_TIMEOUT)
    }

    /// Connects to the first reachable address of `addr`, waiting at most `timeout` for each.
    pub fn connect_timeout(
        addr: impl ToSocketAddrs,
        order: ByteOrder,
        timeout: Duration,
    ) -> io::Result<Connection> {
        connect_stream(addr, timeout).and_then(|stream| Connection::from_stream(stream, order))
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: TcpStream, order: ByteOrder) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            order,
            input: Vec::new(),
            output: Vec::new(),
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The underlying socket, e.g. to shut it down from another thread after `try_clone`.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The sending half, for a thread other than the one that calls `recv`. It writes to the
    /// same socket: frames sent through both halves must not be sent concurrently.
    pub fn writer(&self) -> io::Result<FrameWriter> {
        Ok(FrameWriter {
            stream: self.stream.try_clone()?,
            order: self.order,
            output: Vec::new(),
        })
    }

    /// Sends `{uri, body}` (no `seq`, as clients do).
    pub fn send(&mut self, uri: &str, body: &str) -> io::Result<()> {
        send_message(&mut self.stream, &mut self.output, self.order, uri, body)
    }

    /// Waits for the next message, at most `timeout` (`None`: forever). A timeout is an
    /// error of kind `WouldBlock` or `TimedOut` and loses nothing: call again.
    pub fn recv(&mut self, timeout: Option<Duration>) -> io::Result<Message> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let decoder = Decoder::new(self.order, MAX_FRAME);
        loop {
            let decoded = decoder
                .decode(&self.input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((payload, used)) = decoded {
                let message = if payload.is_empty() {
                    None // keep-alive
                } else {
                    Some(
                        Message::decode(payload)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                    )
                };
                self.input.drain(..used);
                match message {
                    Some(message) => return Ok(message),
                    None => continue,
                }
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(io::ErrorKind::TimedOut.into()),
                },
                None => None,
            };
            self.stream.set_read_timeout(wait)?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `/auth/server` with `token` and waits for the answer: `Ok(true)` on
    /// `/auth/success`, `Ok(false)` on `/auth/failed`.
    pub fn authenticate(&mut self, token: &str, timeout: Duration) -> io::Result<bool> {
        self.send(uri::AUTH, token)?;
        self.await_auth(timeout)
    }

    /// Sends `/inner/auth/server` with the inner password and waits for the answer.
    pub fn authenticate_inner(&mut self, password: &str, timeout: Duration) -> io::Result<bool> {
        self.send(uri::INNER_AUTH, password)?;
        self.await_auth(timeout)
    }

    /// Waits for the answer to an authentication sent earlier: `Ok(true)` on `/auth/success`,
    /// `Ok(false)` on `/auth/failed`.
    pub fn await_auth(&mut self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.recv(Some(left))?;
            match message.uri.as_str() {
                uri::AUTH_SUCCESS => return Ok(true),
                uri::AUTH_FAILED => return Ok(false),
                _ => {} // nothing else can precede the answer; ignore it if it does
            }
        }
    }
}

/// The sending half of a [`Connection`].
pub struct FrameWriter {
    stream: TcpStream,
    order: ByteOrder,
    output: Vec<u8>,
}

impl FrameWriter {
    /// Sends `{uri, body}` (no `seq`, as clients do).
    pub fn send(&mut self, uri: &str, body: &str) -> io::Result<()> {
        send_message(&mut self.stream, &mut self.output, self.order, uri, body)
    }

    /// Bounds how long a write may block on a server that does not read.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(timeout)
    }

    /// Shuts the socket down both ways: a `recv` blocked on the other half returns at once.
    pub fn shutdown(&self) {
        // Already closed by the peer is fine: either way the socket is done.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Raw bytes, for frames encoded beforehand with this connection's byte order; a caller that
/// needs to know how far a failed write got uses `write` rather than `write_all`.
impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn send_message(
    stream: &mut TcpStream,
    output: &mut Vec<u8>,
    order: ByteOrder,
    uri: &str,
    body: &str,
) -> io::Result<()> {
    output.clear();
    encode_message(output, order, 0, uri, body);
    stream.write_all(output)
}

/// Connects to the first reachable address of `addr`, waiting at most `timeout` for each.
pub(crate) fn connect_stream(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}
