//! Helpers for the hostile tests: frames in bulk, floods that write until the server closes,
//! sockets with small kernel buffers, a raw HTTP connection, the proof that a bystander was
//! left alone, and the child server's complete log.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Instant;

use plex::client::Connection;
use plex::protocol::{ByteOrder, Message};

use super::{TestServer, WAIT, assert_alive, expect_msg, push};

/// The bearer token of the test servers' HTTP API (the default inner password).
pub const BEARER: &str = "Bearer plex-inner";

/// One frame of `{uri, body}`, as a client sends it.
pub fn message_frame(order: ByteOrder, uri: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Message::new(uri, body).encode(&mut out, order);
    out
}

/// Writes `chunk` again and again, on a thread of its own, never reading, until a write fails
/// (the server closed the connection) or blocks for `WAIT`; returns the bytes written.
pub fn flood(stream: &TcpStream, chunk: Vec<u8>) -> JoinHandle<u64> {
    let mut stream = stream.try_clone().expect("clone the socket");
    stream.set_write_timeout(Some(WAIT)).unwrap();
    std::thread::spawn(move || {
        let mut written = 0;
        while stream.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        written
    })
}

/// A connection whose kernel buffers are set small before it connects, so that what the
/// server sends stays in the server rather than in this side's kernel.
pub fn connect_small(addr: SocketAddr, buffer: usize) -> TcpStream {
    connect_with(addr, buffer, None)
}

/// A connection with small buffers that also announces a small segment size: the server's
/// kernel then does not grow its own send buffer for it either, whatever `SO_SNDBUF` the
/// server sets (or does not set).
pub fn connect_narrow(addr: SocketAddr) -> TcpStream {
    connect_with(addr, 16 * 1024, Some(536))
}

fn connect_with(addr: SocketAddr, buffer: usize, mss: Option<u32>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(buffer).unwrap();
    socket.set_send_buffer_size(buffer).unwrap();
    if let Some(mss) = mss {
        socket.set_tcp_mss(mss).unwrap();
    }
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Proves that `uid`'s connection `c` was left alone: a push reaches it, and a heartbeat
/// round trip follows with nothing queued in between.
pub fn assert_untouched(inner: &mut Connection, c: &mut Connection, uid: &str) {
    push(inner, uid, "/still-here", uid);
    expect_msg(c, "/still-here", uid);
    assert_alive(c);
}

/// Reads what the server sent until it closed the connection (EOF or reset, within `WAIT`).
pub fn messages_until_closed(c: &mut Connection) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        match c.recv(Some(WAIT)) {
            Ok(m) => got.push(m),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return got;
            }
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

impl TestServer {
    /// A raw connection to the HTTP API.
    pub fn http(&self) -> RawHttp {
        RawHttp::new(TcpStream::connect(self.http).expect("connect to the HTTP API"))
    }
}

/// A request with an optional `Authorization` header and a body (`Content-Length` always set).
pub fn request(method: &str, path: &str, bearer: Option<&str>, body: &str) -> String {
    let auth = bearer.map_or(String::new(), |b| format!("Authorization: {b}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: plex\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One HTTP response as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A raw HTTP/1.1 client connection: requests written as given, responses read one at a time
/// (framed by `Content-Length`), each within `WAIT`.
pub struct RawHttp {
    pub stream: TcpStream,
    input: Vec<u8>,
}

impl RawHttp {
    pub fn new(stream: TcpStream) -> RawHttp {
        RawHttp {
            stream,
            input: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).expect("write");
    }

    /// The next response; fails the test if none is complete within `WAIT`.
    pub fn response(&mut self) -> HttpResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(response) = self.take_response() {
                return response;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no complete response within {WAIT:?}");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0; 16 * 1024];
            let n = self.stream.read(&mut chunk).expect("response bytes");
            assert!(
                n > 0,
                "closed before a complete response; got {:?}",
                String::from_utf8_lossy(&self.input)
            );
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    fn take_response(&mut self) -> Option<HttpResponse> {
        let end = self.input.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8(self.input[..end].to_vec()).expect("a UTF-8 head");
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().expect("a length"))
            })
            .unwrap_or(0);
        let body = self.input.get(end + 4..end + 4 + length)?.to_vec();
        self.input.drain(..end + 4 + length);
        let status = head[9..12].parse().expect("a status code");
        Some(HttpResponse { status, head, body })
    }

    /// Asserts that the server closes the connection (EOF or reset) within `WAIT`, with no
    /// response left unread.
    pub fn assert_closed(&mut self) {
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
        self.input.extend_from_slice(&rest);
        assert!(
            self.input.is_empty(),
            "unread bytes before the close: {:?}",
            String::from_utf8_lossy(&self.input)
        );
    }
}

/// An HS256 JWT over `claims`, signed with `secret`.
pub fn sign_jwt(secret: &[u8], claims: &serde_json::Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{KeyInit, Mac};
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}
