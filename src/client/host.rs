//! Asks a Plex server's HTTP API which TCP server to connect to (`GET /plex/v1/host`, answered
//! `200 {"host": "ip:port"}`; PROTOCOL.md §5), as the Android SDK does before it connects. A
//! single HTTP/1.1 request over a plain `TcpStream`, its response read with `httparse`.

use std::io::{self, Read, Write};
use std::time::Duration;

use serde::Deserialize;

use super::connection::connect_stream;

/// The path of the host lookup.
pub const HOST_PATH: &str = "/plex/v1/host";
/// A host answer is a few dozen bytes; anything much larger is not one.
const MAX_RESPONSE: usize = 64 * 1024;

/// Asks the HTTP API at `http_addr` (`host:port`, optionally prefixed by `http://`) for the
/// `ip:port` of a TCP server. Every step (connect, write, each read) waits at most `timeout`.
pub fn lookup_host(http_addr: &str, timeout: Duration) -> io::Result<String> {
    let authority = http_addr
        .strip_prefix("http://")
        .unwrap_or(http_addr)
        .trim_end_matches('/');
    let mut stream = connect_stream(authority, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {HOST_PATH} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    )?;

    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(host) = parse_response(&response)? {
            return Ok(host);
        }
        if response.len() > MAX_RESPONSE {
            return Err(invalid("the host answer is too large"));
        }
        match stream.read(&mut chunk) {
            // Without a Content-Length, the body ends with the connection.
            Ok(0) => return parse_complete(&response),
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The host, once the head and a `Content-Length` body have arrived; `None` until then.
fn parse_response(bytes: &[u8]) -> io::Result<Option<String>> {
    let Some((status, head_len, content_length)) = parse_head(bytes)? else {
        return Ok(None);
    };
    match content_length {
        Some(len) if bytes.len() - head_len >= len => {
            host_from(status, &bytes[head_len..head_len + len]).map(Some)
        }
        _ => Ok(None),
    }
}

/// The host from a response the server has finished sending.
fn parse_complete(bytes: &[u8]) -> io::Result<String> {
    match parse_head(bytes)? {
        Some((status, head_len, None)) => host_from(status, &bytes[head_len..]),
        _ => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Status, head length and Content-Length of a complete response head.
fn parse_head(bytes: &[u8]) -> io::Result<Option<(u16, usize, Option<usize>)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("bad HTTP response: {e}"))),
    };
    let status = response.code.unwrap_or_default();
    let content_length = match response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        Some(h) => Some(
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("bad Content-Length"))?,
        ),
        None => None,
    };
    Ok(Some((status, head_len, content_length)))
}

fn host_from(status: u16, body: &[u8]) -> io::Result<String> {
    #[derive(Deserialize)]
    struct HostAnswer {
        host: String,
    }
    if status != 200 {
        return Err(io::Error::other(format!(
            "host lookup answered {status}: {}",
            String::from_utf8_lossy(body)
        )));
    }
    let answer: HostAnswer =
        serde_json::from_slice(body).map_err(|e| invalid(format!("bad host answer: {e}")))?;
    Ok(answer.host)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"host\": \"10.0.0.7:9578\"}";

    #[test]
    fn reads_the_host_once_the_whole_body_is_there() {
        for cut in 0..ANSWER.len() {
            assert!(
                parse_response(&ANSWER[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_response(ANSWER).unwrap().as_deref(),
            Some("10.0.0.7:9578")
        );
    }

    #[test]
    fn a_body_without_length_ends_with_the_connection() {
        let answer = b"HTTP/1.0 200 OK\r\n\r\n{\"host\": \"h:1\"}";
        assert!(parse_response(answer).unwrap().is_none());
        assert_eq!(parse_complete(answer).unwrap(), "h:1");
    }

    #[test]
    fn errors_carry_the_reason() {
        let refused = b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 2\r\n\r\n{}";
        let e = parse_response(refused).unwrap_err();
        assert!(e.to_string().contains("405"), "{e}");
        let not_json = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(
            parse_response(not_json).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}
