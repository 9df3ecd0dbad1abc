//! The HTTP API on the second listener (PROTOCOL.md §5). HTTP/1.1 with keep-alive and
//! pipelining: requests are cut from the connection's input with `httparse`, whatever the
//! chunking, answered in order, and their bodies framed by `Content-Length` only.
//!
//! A request is routed and authenticated from its head, before its body is buffered: a 404,
//! 405, 401 or 413 never waits for a body. A connection with several responses unwritten is
//! not read until they drain, so pipelining without reading costs nothing.
//!
//! `parse_request` is pure (bytes in, a verdict out) so that tests and fuzzers can feed it
//! anything; the routes (`api.rs`) decide who may call what and answer.

use std::io::Write;

use log::debug;

use super::api::{self, Admit, Api, Outcome};
use super::conns::{HasLink, Table};
use super::ctx::Ctx;
use super::link::{Link, feed};
use crate::CloseReason;
use crate::protocol::ws::has_token;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Unwritten response bytes past which a connection is not read until they drain.
const MAX_UNWRITTEN: usize = 64 * 1024;

/// A connection on the HTTP listener.
pub struct HttpConn {
    pub link: Link,
    /// `100 Continue` went out for the request being received.
    pub continue_sent: bool,
    /// It has shown the bearer token: it is a back-end, never evicted for a newcomer.
    pub trusted: bool,
    /// Its current request waits for the cluster's answer; the rest wait behind it.
    pub waiting: bool,
}

impl HttpConn {
    pub fn new(link: Link) -> Self {
        HttpConn {
            link,
            continue_sent: false,
            trusted: false,
            waiting: false,
        }
    }
}

impl HasLink for HttpConn {
    fn link(&self) -> &Link {
        &self.link
    }
    fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }
    fn awaits_answer(&self) -> bool {
        self.waiting
    }
}

/// A complete request head, borrowing from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// It asked for `100 Continue` before sending its body.
    pub expects_continue: bool,
    pub content_length: usize,
    /// Bytes the head takes.
    pub len: usize,
}

/// One complete request, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub head: Head<'a>,
    pub body: &'a [u8],
    /// Bytes of input the request took, head and body.
    pub len: usize,
}

/// What the start of the input holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Part of a request: no complete head yet, or a head whose body has not all arrived.
    Partial(Option<Head<'a>>),
    Complete(Request<'a>),
    /// A request that cannot be answered on a reusable connection: answer and close.
    Invalid(u16, &'static str),
}

/// Parses the request at the start of `input`, enforcing the head, header-count and body
/// limits before anything past them is needed.
pub fn parse_request(input: &[u8], max_body: usize) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(input) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return too_large_head(),
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => return too_large_head(),
        Ok(httparse::Status::Partial) => return Parsed::Partial(None),
        Err(httparse::Error::TooManyHeaders) => return too_large_head(),
        Err(_) => return Parsed::Invalid(400, "malformed request"),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::Invalid(400, "malformed request");
    };

    let mut content_length: Option<usize> = None;
    let mut authorization = None;
    let mut close = version == 0;
    let mut expects_continue = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(len) = parse_content_length(header.value) else {
                return Parsed::Invalid(400, "invalid Content-Length");
            };
            if content_length.is_some_and(|seen| seen != len) {
                return Parsed::Invalid(400, "conflicting Content-Length headers");
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(
                411,
                "chunked requests are not supported: send Content-Length",
            );
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Parsed::Invalid(400, "more than one Authorization header");
            }
            authorization = Some(header.value);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= has_token(header.value, "close");
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = has_token(header.value, "100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body {
        return Parsed::Invalid(413, "request body too large");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let head = Head {
        method,
        path,
        query,
        authorization,
        keep_alive: !close,
        expects_continue,
        content_length: body_len,
        len: head_len,
    };
    match input.get(head_len..head_len + body_len) {
        Some(body) => Parsed::Complete(Request {
            head,
            body,
            len: head_len + body_len,
        }),
        None => Parsed::Partial(Some(head)),
    }
}

fn too_large_head() -> Parsed<'static> {
    Parsed::Invalid(431, "request head too large")
}

fn parse_content_length(value: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A response about to be written.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
    /// The answer to a `HEAD`: headers only.
    pub head_only: bool,
    /// `Access-Control-Allow-Origin: *`: a page on any origin may read it.
    pub any_origin: bool,
}

impl Response {
    pub fn json(status: u16, value: serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            allow: None,
            head_only: false,
            any_origin: false,
        }
    }

    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, serde_json::json!({ "error": message }))
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Answers the requests in newly read bytes of connection `key`, after what it kept of
/// earlier reads, and keeps the new partial remainder.
pub fn ingest(api: &mut Api, https: &mut Table<HttpConn>, key: usize, bytes: &mut [u8]) {
    let mut input = std::mem::take(&mut https[key].link.input);
    feed(&mut input, bytes, |data| {
        let used = process(api, https, key, data);
        (!https[key].link.is_done()).then_some(used)
    });
    let link = &mut https[key].link;
    if link.is_done() {
        api.ctx.core.pool.give(input);
    } else {
        link.input = input;
    }
}

/// Answers the complete requests at the start of `bytes`, in order; returns how many bytes
/// they took. Stops at a partial request, when the connection closes, or when its unwritten
/// responses pass `MAX_UNWRITTEN` (its reading is then paused until they drain).
fn process(api: &mut Api, https: &mut Table<HttpConn>, key: usize, bytes: &[u8]) -> usize {
    let r = https.ref_of(key);
    let mut used = 0;
    loop {
        let conn = &mut https[key];
        if conn.link.is_done() || conn.waiting {
            return used;
        }
        if conn.link.pending() > MAX_UNWRITTEN {
            conn.link.set_read_paused(true);
            return used;
        }
        let (response, close) = match parse_request(&bytes[used..], api.ctx.limits.max_http_body) {
            Parsed::Partial(None) => return used,
            Parsed::Partial(Some(head)) => match api::admit(api.ctx, conn, &head) {
                Admit::Refuse(response) => (response, true),
                Admit::Route(_) => {
                    if head.expects_continue && !conn.continue_sent {
                        conn.continue_sent = true;
                        let out = conn.link.output(&mut api.ctx.core.pool);
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        https.mark_dirty(key);
                    }
                    return used;
                }
            },
            Parsed::Complete(request) => {
                used += request.len;
                conn.continue_sent = false;
                conn.link.last_active = api.ctx.core.clock.tick32();
                let outcome = match api::admit(api.ctx, conn, &request.head) {
                    Admit::Refuse(response) => Outcome::Now(response),
                    Admit::Route(handler) => {
                        api.conn = r;
                        handler(api, &request)
                    }
                };
                let Outcome::Now(mut response) = outcome else {
                    // The rest of the connection's requests wait for this answer.
                    api.ctx.counters.http_requests += 1;
                    let conn = &mut https[key];
                    conn.waiting = true;
                    conn.link.set_read_paused(true);
                    return used;
                };
                response.head_only = request.head.method == "HEAD";
                debug!(
                    "{}: {} {} -> {}",
                    Table::<HttpConn>::name(r),
                    request.head.method,
                    request.head.path,
                    response.status
                );
                (response, !request.head.keep_alive)
            }
            Parsed::Invalid(status, message) => {
                debug!(
                    "{}: bad request -> {status} {message}",
                    Table::<HttpConn>::name(r)
                );
                (Response::error(status, message), true)
            }
        };
        api.ctx.counters.http_requests += 1;
        respond(api.ctx, https, key, &response, close);
        if close {
            return used;
        }
    }
}

/// Queues a response on connection `key`; `close` makes it the connection's last.
pub fn respond(
    ctx: &mut Ctx,
    https: &mut Table<HttpConn>,
    key: usize,
    response: &Response,
    close: bool,
) {
    let r = https.ref_of(key);
    write_response(ctx, &mut https[key].link, response, close);
    https.mark_dirty(key);
    if close {
        let ticks = ctx.linger_ticks(&https[key].link);
        let reason = if response.status >= 400 {
            CloseReason::BadRequest
        } else {
            CloseReason::Done
        };
        ctx.core.linger(&mut https[key].link, r, reason, ticks);
    }
}

/// Queues one response. `close` makes it the connection's last.
fn write_response(ctx: &mut Ctx, link: &mut Link, r: &Response, close: bool) {
    let date = http_date(ctx.core.clock.unix_ms / 1000);
    let out = link.output(&mut ctx.core.pool);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nDate: {date}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason_phrase(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        let _ = write!(out, "Allow: {allow}\r\n");
    }
    if r.status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
    }
    if r.any_origin {
        out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !r.head_only {
        out.extend_from_slice(&r.body);
    }
}

/// An IMF-fixdate (RFC 9110 §5.6.7) for the `Date` header, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> Request<'_> {
        match parse_request(input, 1024) {
            Parsed::Complete(r) => r,
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_get_with_query_and_keep_alive() {
        let r = complete(b"GET /plex/v1/online?uid=7&uid=8 HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        assert_eq!(
            (r.head.method, r.head.path, r.head.query),
            ("GET", "/plex/v1/online", "uid=7&uid=8")
        );
        assert!(r.head.keep_alive);
        assert_eq!(r.len, 53);
    }

    #[test]
    fn body_is_framed_by_content_length() {
        let input =
            b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Bearer k\r\n\r\nhelloEXTRA";
        let r = complete(input);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.head.authorization, Some(&b"Bearer k"[..]));
        assert_eq!(r.len, input.len() - 5);
    }

    #[test]
    fn the_head_is_known_before_the_body_arrives() {
        let input = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..input.len() {
            match parse_request(&input[..cut], 1024) {
                Parsed::Partial(None) => assert!(cut < input.len() - 5, "cut at {cut}"),
                Parsed::Partial(Some(head)) => {
                    assert!(cut >= input.len() - 5, "cut at {cut}");
                    assert_eq!((head.path, head.content_length), ("/p", 5));
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn duplicate_authorization_headers_are_refused() {
        let input = b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n";
        assert!(matches!(parse_request(input, 10), Parsed::Invalid(400, _)));
    }

    #[test]
    fn connection_close_and_http_1_0_do_not_keep_alive() {
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
                .head
                .keep_alive
        );
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").head.keep_alive);
    }

    #[test]
    fn limits_are_enforced_before_the_data_arrives() {
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_request(chunked, 10),
            Parsed::Invalid(411, _)
        ));
        let big = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(parse_request(big, 10), Parsed::Invalid(413, _)));
        let long_head = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert!(matches!(
            parse_request(&long_head, 10),
            Parsed::Invalid(431, _)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_request(many.as_bytes(), 10),
            Parsed::Invalid(431, _)
        ));
        assert!(matches!(
            parse_request(b"BLAH\r\n\r\n", 10),
            Parsed::Invalid(400, _)
        ));
        let bad_len = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(
            parse_request(bad_len, 10),
            Parsed::Invalid(400, _)
        ));
    }

    #[test]
    fn expect_continue_is_read_from_the_head() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert!(matches!(
            parse_request(head, 10),
            Parsed::Partial(Some(Head {
                expects_continue: true,
                ..
            }))
        ));
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_795_910_400), "Sun, 29 Nov 2026 00:00:00 GMT");
    }
}
