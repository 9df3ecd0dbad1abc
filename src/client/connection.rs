//! A blocking, framed connection to a Plex server: the building block of the user-side client,
//! of `PlexClient`'s inner connections, and of the tests.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::protocol::{ByteOrder, Codec, Decoder, Message, Position, frame, uri};

/// How long `connect` waits for each address, as the Android SDK does.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted from a server: servers send pushes of at most the inner limit.
const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// A framed connection to a Plex server, read and written by one thread; [`Connection::writer`]
/// gives another thread its sending half. It speaks JSON unless [`Connection::with_codec`]
/// says otherwise.
pub struct Connection {
    stream: TcpStream,
    order: ByteOrder,
    codec: Codec,
    /// Bytes read but not yet returned as messages (a partial frame survives a timeout).
    input: Vec<u8>,
    output: Vec<u8>,
    /// The place in its uid's history of the last push received that had one.
    last: Option<(String, u64)>,
}

/// What `/auth/success` says to a client that gave its last place in the history
/// (PROTOCOL.md §9).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Resumed {
    /// Nothing was missed: every push after the place given follows.
    pub recovered: bool,
    /// The uid's current epoch and last offset.
    pub epoch: String,
    pub offset: u64,
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
            codec: Codec::Json,
            input: Vec::new(),
            output: Vec::new(),
            last: None,
        })
    }

    /// Writes and reads messages in `codec` from now on. A server set to `auto` answers in
    /// the codec of the first message it gets.
    pub fn with_codec(mut self, codec: Codec) -> Connection {
        self.codec = codec;
        self
    }

    pub fn codec(&self) -> Codec {
        self.codec
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
            codec: self.codec,
            output: Vec::new(),
        })
    }

    /// Sends `{uri, body}` (no `seq`, as clients do).
    pub fn send(&mut self, uri: &str, body: &str) -> io::Result<()> {
        self.output.clear();
        self.codec
            .write_frame(&mut self.output, self.order, 0, uri, body);
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
                    let message = self.codec.decode(payload);
                    let message =
                        message.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if message.position.offset != 0 {
                        let at = &message.position;
                        self.last = Some((at.epoch.to_string(), at.offset));
                    }
                    Some(message.into_owned())
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

    /// The place in its uid's history of the last push received that had one (the server
    /// keeps a history): what to give [`resume`](Self::resume) after a reconnect.
    pub fn position(&self) -> Option<(&str, u64)> {
        self.last
            .as_ref()
            .map(|(epoch, offset)| (epoch.as_str(), *offset))
    }

    /// Authenticates like [`authenticate`](Self::authenticate), giving the last place in the
    /// history this uid's client received. `Ok(None)` when the token is refused; otherwise
    /// what the server says was missed. Every retained push after `(epoch, offset)` follows.
    pub fn resume(
        &mut self,
        token: &str,
        (epoch, offset): (&str, u64),
        timeout: Duration,
    ) -> io::Result<Option<Resumed>> {
        self.output.clear();
        let at = Position {
            offset,
            epoch: epoch.into(),
        };
        frame::encode_with(&mut self.output, self.order, |out| {
            self.codec.write_payload_at(out, 0, uri::AUTH, token, &at)
        });
        self.stream.write_all(&self.output)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.recv(Some(left))?;
            match message.uri.as_str() {
                uri::AUTH_SUCCESS => {
                    let resumed = serde_json::from_str(&message.body)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    return Ok(Some(resumed));
                }
                uri::AUTH_FAILED => return Ok(None),
                _ => {}
            }
        }
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
    codec: Codec,
    output: Vec<u8>,
}

impl FrameWriter {
    /// Sends `{uri, body}` (no `seq`, as clients do).
    pub fn send(&mut self, uri: &str, body: &str) -> io::Result<()> {
        self.output.clear();
        self.codec
            .write_frame(&mut self.output, self.order, 0, uri, body);
        self.stream.write_all(&self.output)
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

/// Raw bytes, for frames encoded beforehand with this connection's byte order and codec; a caller that
/// needs to know how far a failed write got uses `write` rather than `write_all`.
impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use std::net::TcpListener;

    use super::*;

    /// How long a test waits for a frame.
    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    /// The server's side of a client's connection, on a real socket: reads and writes frames
    /// in `codec`, so that a frame in the other codec fails to decode.
    pub(crate) fn accept(listener: &TcpListener, codec: Codec) -> Connection {
        let (stream, _) = listener.accept().expect("a client connects");
        let conn = Connection::from_stream(stream, ByteOrder::Big).expect("nodelay");
        conn.with_codec(codec)
    }

    /// The next frame on `conn`'s socket, header and payload, as sent.
    fn raw_frame(conn: &Connection) -> Vec<u8> {
        let mut stream = conn.stream();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut frame = vec![0; 4];
        stream.read_exact(&mut frame).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        frame.resize(4 + len, 0);
        stream.read_exact(&mut frame[4..]).unwrap();
        frame
    }

    fn client_and_server(codec: Codec) -> (Connection, Connection) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = Connection::connect(addr, ByteOrder::Big).unwrap();
        let client = client.with_codec(codec);
        (client, accept(&listener, Codec::Json))
    }

    #[test]
    fn speaks_json_unless_told_otherwise() {
        let (mut client, server) = client_and_server(Codec::Json);
        client.send(uri::HEARTBEAT, "").unwrap();
        assert_eq!(raw_frame(&server), b"\0\0\0\x14{\"uri\":\"/heartbeat\"}");

        let (mut client, server) = client_and_server(Codec::Protobuf);
        assert_eq!(client.codec(), Codec::Protobuf);
        client.send(uri::HEARTBEAT, "").unwrap();
        client.writer().unwrap().send("/up", "b").unwrap();
        assert_eq!(raw_frame(&server), b"\0\0\0\x0c\x12\x0a/heartbeat");
        assert_eq!(raw_frame(&server), b"\0\0\0\x08\x12\x03/up\x1a\x01b");
    }

    #[test]
    fn reads_the_server_in_its_codec() {
        let (mut client, server) = client_and_server(Codec::Protobuf);
        let mut server = server.with_codec(Codec::Protobuf);
        server.send("/chat", "hello").unwrap();
        server.stream().write_all(&[0; 4]).unwrap(); // a keep-alive
        server.send(uri::AUTH_SUCCESS, "").unwrap();
        assert_eq!(
            client.recv(Some(WAIT)).unwrap(),
            Message::new("/chat", "hello")
        );
        assert!(client.await_auth(WAIT).unwrap());

        // JSON read as protobuf is a bad frame.
        let mut server = server.with_codec(Codec::Json);
        server.send("/chat", "hello").unwrap();
        let e = client.recv(Some(WAIT)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
