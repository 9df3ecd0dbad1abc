//! A blocking, framed connection to a Plex server: the building block of the user-side client,
//! of `PlexClient`'s inner connections, and of the tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::protocol::message::encode_message;
use crate::protocol::{ByteOrder, Decoder, Message, uri};

/// How long `connect` waits for each address, as the Android SDK does.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted from a server: servers send pushes of at most the inner limit.
const MAX_FRAME: u32 = 16 * 1024 * 1024;

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
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(stream) => return Connection::from_stream(stream, order),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn from_stream(stream: TcpStream, order: ByteOrder) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            order,
            input: Vec::new(),
            output: Vec::new(),
        })
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The underlying socket, e.g. to shut it down from another thread after `try_clone`.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `{uri, body}` (no `seq`, as clients do).
    pub fn send(&mut self, uri: &str, body: &str) -> io::Result<()> {
        self.output.clear();
        encode_message(&mut self.output, self.order, 0, uri, body);
        self.stream.write_all(&self.output)
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

    fn await_auth(&mut self, timeout: Duration) -> io::Result<bool> {
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
