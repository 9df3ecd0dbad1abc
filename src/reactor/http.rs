//! The HTTP API on the second listener (PROTOCOL.md §5). HTTP/1.1 with keep-alive and
//! pipelining: requests are cut from the connection's input with `httparse`, whatever the
//! chunking, answered in order, and their bodies framed by `Content-Length` only.
//!
//! `parse_request` is pure (bytes in, a request or a verdict out) so that tests and fuzzers
//! can feed it anything; the routes below it run inside the reactor and reach the same push,
//! kick and stats code as the inner TCP connections and the handle.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rand::RngExt;
use serde::Deserialize;
use serde_json::json;

use super::Reactor;
use super::conn::{CloseReason, State};
use super::plex::constant_time_eq;
use crate::protocol::uri;
use crate::protocol::ws::{has_token, percent_decode};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;

/// One complete request, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes of input the request took, head and body.
    pub len: usize,
}

/// What the start of the input holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Part of a request; `expects_continue` once its head is complete and it asked for
    /// `100 Continue` before sending the body.
    Partial {
        expects_continue: bool,
    },
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
        Ok(httparse::Status::Partial) => {
            return Parsed::Partial {
                expects_continue: false,
            };
        }
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
    let Some(body) = input.get(head_len..head_len + body_len) else {
        return Parsed::Partial { expects_continue };
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Complete(Request {
        method,
        path,
        query,
        authorization,
        body,
        keep_alive: !close,
        len: head_len + body_len,
    })
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
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// For 405: the method the path takes.
    allow: Option<&'static str>,
}

impl Response {
    fn json(status: u16, value: serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            allow: None,
        }
    }

    fn error(status: u16, message: &str) -> Response {
        Response::json(status, json!({ "error": message }))
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
        _ => "Internal Server Error",
    }
}

type Handler = fn(&mut Reactor, &Request) -> Response;

/// Every route: path, method, whether it needs the bearer token, handler.
const ROUTES: [(&str, &str, bool, Handler); 7] = [
    ("/plex/v1/host", "GET", false, Reactor::http_host),
    ("/plex/v1/push", "POST", true, Reactor::http_push),
    ("/plex/v1/broadcast", "POST", true, Reactor::http_broadcast),
    ("/plex/v1/online", "GET", true, Reactor::http_online),
    ("/plex/v1/kick", "POST", true, Reactor::http_kick),
    ("/plex/v1/stats", "GET", true, Reactor::http_stats),
    ("/metrics", "GET", true, Reactor::http_metrics),
];

#[derive(Deserialize)]
struct PushBody<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uids: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct KickBody<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
}

impl Reactor {
    /// Answers the complete requests at the start of `bytes`, in order; returns how many
    /// bytes they took, or `None` once the connection is closed or closing.
    pub(super) fn process_requests(&mut self, key: usize, bytes: &[u8]) -> Option<usize> {
        let mut used = 0;
        loop {
            match parse_request(&bytes[used..], self.limits.max_http_body) {
                Parsed::Partial { expects_continue } => {
                    if expects_continue {
                        self.send_continue(key)?;
                    }
                    return Some(used);
                }
                Parsed::Complete(request) => {
                    used += request.len;
                    self.counters.http_requests += 1;
                    let now = self.clock.tick32();
                    let conn = &mut self.conns[key];
                    conn.last_active = now;
                    conn.state = State::Http {
                        continue_sent: false,
                    };
                    let response = self.route(&request);
                    log::debug!(
                        "#{key}: {} {} -> {}",
                        request.method,
                        request.path,
                        response.status
                    );
                    let close = (!request.keep_alive).then_some(CloseReason::Done);
                    self.respond(key, &response, close)?;
                }
                Parsed::Invalid(status, message) => {
                    self.counters.http_requests += 1;
                    log::debug!("#{key}: bad request -> {status} {message}");
                    let response = Response::error(status, message);
                    self.respond(key, &response, Some(CloseReason::BadRequest))?;
                }
            }
        }
    }

    fn route(&mut self, request: &Request) -> Response {
        let Some(&(_, method, needs_auth, handler)) =
            ROUTES.iter().find(|(path, ..)| *path == request.path)
        else {
            return Response::error(404, "no such path");
        };
        if request.method != method {
            return Response {
                allow: Some(method),
                ..Response::error(405, "method not allowed")
            };
        }
        if needs_auth && !self.bearer_ok(request.authorization) {
            return Response::error(401, "missing or wrong bearer token");
        }
        handler(self, request)
    }

    fn bearer_ok(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, token)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ")
            && constant_time_eq(token, self.limits.inner_password.as_bytes())
    }

    /// Queues a response; `close` makes it the last one on this connection. `None` if the
    /// connection is closed or closing.
    fn respond(&mut self, key: usize, r: &Response, close: Option<CloseReason>) -> Option<()> {
        use std::io::Write;
        let len = r.body.len() + 256;
        let conn = &mut self.conns[key];
        let queued = self.outbox.queue_with(key, conn, len, |out| {
            let _ = write!(
                out,
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
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
            if close.is_some() {
                out.extend_from_slice(b"Connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&r.body);
        });
        if !queued {
            // Pipelining faster than it reads its answers.
            self.close(key, CloseReason::SlowConsumer);
            return None;
        }
        match close {
            Some(reason) => {
                self.close_after_flush(key, reason);
                None
            }
            None => Some(()),
        }
    }

    /// Tells a client waiting on `Expect: 100-continue` to send its body, once per request.
    fn send_continue(&mut self, key: usize) -> Option<()> {
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        let conn = &mut self.conns[key];
        let State::Http { continue_sent } = &mut conn.state else {
            unreachable!("only HTTP connections parse requests");
        };
        if !*continue_sent {
            *continue_sent = true;
            if !self.outbox.queue(key, conn, CONTINUE) {
                self.close(key, CloseReason::SlowConsumer);
                return None;
            }
        }
        Some(())
    }

    fn http_host(&mut self, _: &Request) -> Response {
        let servers = &self.limits.outer_servers;
        let host = &servers[rand::rng().random_range(0..servers.len())];
        Response::json(200, json!({ "host": host }))
    }

    fn http_push(&mut self, request: &Request) -> Response {
        let body: PushBody = match parse_json(request.body) {
            Ok(body) => body,
            Err(e) => return self.refuse(&format!("bad JSON: {e}")),
        };
        let uids: Vec<Cow<str>> = match (body.uid, body.uids) {
            (Some(uid), None) => vec![uid],
            (None, Some(uids)) => uids,
            (Some(_), Some(_)) => return self.refuse("give uid or uids, not both"),
            (None, None) => return self.refuse("uid or uids is required"),
        };
        if uids.is_empty() || uids.iter().any(|u| u.is_empty()) {
            return self.refuse("uids must be non-empty strings");
        }
        let uri = body.uri.unwrap_or_default();
        if let Err(e) = uri::check_push_uri(&uri) {
            return self.refuse(&e.to_string());
        }
        let delivered = self.push(&uids, &uri, &body.body.unwrap_or_default());
        Response::json(200, json!({ "delivered": delivered }))
    }

    fn http_broadcast(&mut self, request: &Request) -> Response {
        let body: PushBody = match parse_json(request.body) {
            Ok(body) => body,
            Err(e) => return self.refuse(&format!("bad JSON: {e}")),
        };
        let uri = body.uri.unwrap_or_default();
        if let Err(e) = uri::check_push_uri(&uri) {
            return self.refuse(&e.to_string());
        }
        let delivered = self.broadcast(&uri, &body.body.unwrap_or_default());
        Response::json(200, json!({ "delivered": delivered }))
    }

    /// A push that will not be delivered: counted, and answered 400.
    fn refuse(&mut self, why: &str) -> Response {
        self.counters.refused += 1;
        Response::error(400, why)
    }

    fn http_online(&mut self, request: &Request) -> Response {
        let mut uids = Vec::new();
        for pair in request.query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(name), percent_decode(value)) {
                (Some(name), Some(value)) if name == "uid" => uids.push(value),
                (Some(_), Some(_)) => {}
                _ => return Response::error(400, "malformed query string"),
            }
        }
        if uids.is_empty() {
            return Response::error(400, "give at least one uid parameter");
        }
        let online: BTreeMap<&str, usize> =
            uids.iter().map(|u| (u.as_str(), self.online(u))).collect();
        Response::json(200, json!({ "online": online }))
    }

    fn http_kick(&mut self, request: &Request) -> Response {
        let uid = match parse_json::<KickBody>(request.body) {
            Ok(KickBody { uid: Some(uid) }) if !uid.is_empty() => uid,
            Ok(_) => return Response::error(400, "uid is required"),
            Err(e) => return Response::error(400, &format!("bad JSON: {e}")),
        };
        let closed = self.kick(&uid);
        Response::json(200, json!({ "closed": closed }))
    }

    fn http_stats(&mut self, _: &Request) -> Response {
        Response::json(200, json!(self.stats()))
    }

    fn http_metrics(&mut self, _: &Request) -> Response {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: self.stats().to_prometheus().into_bytes(),
            allow: None,
        }
    }
}

/// Reads a JSON request body; all of it must be UTF-8, including values no one reads.
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
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
            (r.method, r.path, r.query),
            ("GET", "/plex/v1/online", "uid=7&uid=8")
        );
        assert!(r.keep_alive);
        assert_eq!(r.len, 53);
    }

    #[test]
    fn body_is_framed_by_content_length() {
        let input =
            b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Bearer k\r\n\r\nhelloEXTRA";
        let r = complete(input);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.authorization, Some(&b"Bearer k"[..]));
        assert_eq!(r.len, input.len() - 5);
    }

    #[test]
    fn any_prefix_is_partial_until_the_body_is_complete() {
        let input = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..input.len() {
            assert!(
                matches!(parse_request(&input[..cut], 1024), Parsed::Partial { .. }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn connection_close_and_http_1_0_do_not_keep_alive() {
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
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
    fn expect_continue_is_reported_while_the_body_is_missing() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            parse_request(head, 10),
            Parsed::Partial {
                expects_continue: true
            }
        );
    }
}
