//! The auth service's HTTP/1.1 responses, parsed from whatever bytes have arrived: framed by
//! `Content-Length`, chunked encoding, or (at EOF) the end of the connection. Pure, so that
//! tests and the fuzzer can feed it anything. Everything it looks at, head, chunk sizes,
//! extensions and trailers included, counts against `MAX_RESPONSE`: a service that never
//! stops sending fails the exchange instead of being re-parsed forever.

use std::borrow::Cow;

/// Largest response accepted from the auth service, all of it.
pub const MAX_RESPONSE: usize = 16 * 1024;

/// A response at the start of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Response<'a> {
    Partial,
    Complete {
        status: u16,
        body: Cow<'a, [u8]>,
        len: usize,
        keep_alive: bool,
    },
    Invalid(&'static str),
}

/// Parses one response framed by `Content-Length`, chunked encoding, or (at `eof`) the end of
/// the connection. Interim `1xx` responses are skipped. Only the first `MAX_RESPONSE` bytes
/// are ever looked at: a response not complete within them is invalid.
pub fn parse_response(input: &[u8], eof: bool) -> Response<'_> {
    let within = &input[..input.len().min(MAX_RESPONSE)];
    match parse_within(within, eof && input.len() <= MAX_RESPONSE) {
        Response::Partial if input.len() > MAX_RESPONSE => Response::Invalid("response too large"),
        parsed => parsed,
    }
}

fn parse_within(input: &[u8], eof: bool) -> Response<'_> {
    let mut start = 0;
    loop {
        let rest = &input[start..];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Response::Partial,
            Err(_) => return Response::Invalid("malformed response"),
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            start += head;
            continue;
        }
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut keep_alive = response.version == Some(1);
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => length = Some(n),
                    None => return Response::Invalid("bad Content-Length"),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                let value = h.value.to_ascii_lowercase();
                keep_alive = (keep_alive && value != b"close") || value == b"keep-alive";
            }
        }
        let body_start = start + head;
        let (body, end) = if chunked {
            match decode_chunked(&input[body_start..]) {
                Chunked::Partial => return Response::Partial,
                Chunked::Invalid => return Response::Invalid("malformed chunked body"),
                Chunked::Complete(body, used) => (Cow::Owned(body), body_start + used),
            }
        } else if let Some(length) = length {
            if length > MAX_RESPONSE {
                return Response::Invalid("response body too large");
            }
            match input.get(body_start..(body_start + length)) {
                Some(body) => (Cow::Borrowed(body), body_start + length),
                None => return Response::Partial,
            }
        } else if eof {
            keep_alive = false;
            (Cow::Borrowed(&input[body_start..]), input.len())
        } else {
            return Response::Partial; // delimited by the end of the connection
        };
        return Response::Complete {
            status,
            body,
            len: end,
            keep_alive: keep_alive && (chunked || length.is_some()),
        };
    }
}

enum Chunked {
    Partial,
    Complete(Vec<u8>, usize),
    Invalid,
}

/// Decodes a chunked body (RFC 9112 §7.1), trailers skipped.
fn decode_chunked(input: &[u8]) -> Chunked {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find_crlf(&input[pos..]) else {
            return Chunked::Partial;
        };
        let line = &input[pos..pos + line_end];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size_text)
            .ok()
            .and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
        else {
            return Chunked::Invalid;
        };
        pos += line_end + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(end) = find_crlf(&input[pos..]) else {
                    return Chunked::Partial;
                };
                pos += end + 2;
                if end == 0 {
                    return Chunked::Complete(body, pos);
                }
            }
        }
        if size > MAX_RESPONSE - body.len() {
            return Chunked::Invalid;
        }
        let Some(chunk) = input.get(pos..pos + size) else {
            return Chunked::Partial;
        };
        body.extend_from_slice(chunk);
        pos += size;
        match input.get(pos..pos + 2) {
            Some(b"\r\n") => pos += 2,
            Some(_) => return Chunked::Invalid,
            None => return Chunked::Partial,
        }
    }
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8], eof: bool) -> (u16, Vec<u8>, usize, bool) {
        match parse_response(input, eof) {
            Response::Complete {
                status,
                body,
                len,
                keep_alive,
            } => (status, body.into_owned(), len, keep_alive),
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn content_length_response() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"uid\":\"7\"}extra";
        assert_eq!(
            complete(r, false),
            (200, b"{\"uid\":\"7\"}".to_vec(), r.len() - 5, true)
        );
        for cut in 0..r.len() - 5 {
            assert_eq!(
                parse_response(&r[..cut], false),
                Response::Partial,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn chunked_response_with_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"ui\r\n7\r\nd\":\"7\"}\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            complete(r, false),
            (200, b"{\"uid\":\"7\"}".to_vec(), r.len(), true)
        );
        for cut in 0..r.len() {
            assert_eq!(
                parse_response(&r[..cut], false),
                Response::Partial,
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false
            ),
            Response::Invalid("malformed chunked body")
        );
    }

    #[test]
    fn close_delimited_response_completes_at_eof() {
        let r = b"HTTP/1.0 200 OK\r\n\r\n{\"uid\":\"7\"}";
        assert_eq!(parse_response(r, false), Response::Partial);
        assert_eq!(
            complete(r, true),
            (200, b"{\"uid\":\"7\"}".to_vec(), r.len(), false)
        );
    }

    #[test]
    fn connection_close_and_http_1_0_are_not_kept_alive() {
        let r = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!complete(r, false).3);
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!complete(r, false).3);
        let r = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(complete(r, false).3);
    }

    #[test]
    fn interim_responses_are_skipped() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(complete(r, false).0, 200);
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn endless_extensions_and_trailers_fail_at_the_cap() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;";
        let mut input = head.to_vec();
        input.resize(MAX_RESPONSE, b'x');
        assert_eq!(parse_response(&input, false), Response::Partial);
        input.push(b'x');
        assert_eq!(
            parse_response(&input, false),
            Response::Invalid("response too large")
        );
        let mut trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        while trailers.len() <= MAX_RESPONSE {
            trailers.extend_from_slice(b"X-T: 1\r\n");
        }
        assert_eq!(
            parse_response(&trailers, false),
            Response::Invalid("response too large")
        );
    }

    #[test]
    fn huge_chunk_sizes_do_not_overflow() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab";
        assert_eq!(
            parse_response(r, false),
            Response::Invalid("malformed chunked body")
        );
    }
}
