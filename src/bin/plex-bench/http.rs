//! Just enough HTTP/1.1 to drive the server's API (PROTOCOL.md §5) over one keep-alive,
//! pipelined connection: authenticated JSON `POST`s out, `Content-Length` responses in.
//! Written by hand over raw bytes so that the client costs no more than the frames it sends.

use std::io::{self, Write};
use std::net::SocketAddr;

/// Appends one `POST` of `json` to `out`.
pub fn encode_post(out: &mut Vec<u8>, host: SocketAddr, path: &str, password: &str, json: &str) {
    write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {password}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .expect("writing to a Vec cannot fail");
}

/// A complete response.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// The response at the start of `input` and the bytes it takes; `None` while incomplete.
pub fn parse_response(input: &[u8]) -> io::Result<Option<(Response<'_>, usize)>> {
    let Some(head_len) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP: {what}"));
    let head = std::str::from_utf8(&input[..head_len]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .ok_or_else(|| bad("no HTTP/1.1 status line"))?;
    let content_length: usize = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or_else(|| bad("response without Content-Length"))?;
    let start = head_len + 4;
    Ok(input
        .get(start..start + content_length)
        .map(|body| (Response { status, body }, start + content_length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_responses_come_out_one_by_one() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"delivered\":1}\
                    HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}";
        let (first, used) = parse_response(two).unwrap().unwrap();
        assert_eq!((first.status, first.body), (200, &b"{\"delivered\":1}"[..]));
        let (second, rest) = parse_response(&two[used..]).unwrap().unwrap();
        assert_eq!(
            (second.status, second.body, used + rest),
            (401, &b"{}"[..], two.len())
        );
    }

    #[test]
    fn a_partial_response_is_not_yet_a_response() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..whole.len() {
            assert!(
                parse_response(&whole[..cut]).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn a_post_announces_its_body_length() {
        let mut out = Vec::new();
        let host = "127.0.0.1:9579".parse().unwrap();
        encode_post(&mut out, host, "/plex/v1/push", "pw", "{}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /plex/v1/push HTTP/1.1\r\nHost: 127.0.0.1:9579\r\n"));
        assert!(text.contains("Authorization: Bearer pw\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
