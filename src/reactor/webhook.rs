//! The auth webhook: for each `/auth/server` the reactor itself POSTs
//! `{"token": "...", "remote": "ip:port"}` to the business service, over non-blocking
//! connections it owns (slab entries like any other, timed by the same wheel). At most
//! `AuthWebhookConnections` are open; they are kept alive and reused, one request at a time
//! each, and requests wait in a queue for a free one. `200 {"uid": "..."}` accepts; any other
//! status, bad JSON, a timeout or an unreachable service rejects, with a log line saying which.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;

use log::{debug, warn};
use mio::Interest;
use mio::net::TcpStream;
use serde::Deserialize;

use super::conn::{CloseReason, Conn, ConnRef, State};
use super::lifecycle::deadline;
use super::{Reactor, conn_token, secs_to_ticks};

/// Largest response head and body accepted from the auth service.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long an idle pooled connection is kept.
const IDLE_TICKS: u32 = 600;

/// The webhook's settings and its queue of authentications waiting for a connection.
pub(crate) struct Webhook {
    addr: SocketAddr,
    /// `POST <path> HTTP/1.1` and the fixed headers, up to `Content-Length: `.
    request_head: String,
    max_connections: usize,
    timeout_ticks: u32,
    queue: VecDeque<AuthJob>,
    /// Connected connections with no request in flight.
    idle: Vec<usize>,
    /// Live connections, connecting, busy or idle.
    open: usize,
}

impl Webhook {
    pub fn new(
        addr: SocketAddr,
        authority: &str,
        path: &str,
        connections: usize,
        timeout_secs: u64,
    ) -> Self {
        Webhook {
            addr,
            request_head: format!(
                "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
                 Accept: application/json\r\nContent-Length: "
            ),
            max_connections: connections,
            timeout_ticks: secs_to_ticks(timeout_secs),
            queue: VecDeque::new(),
            idle: Vec::new(),
            open: 0,
        }
    }
}

/// One authentication to ask the service about.
#[derive(Debug)]
pub(crate) struct AuthJob {
    pub ticket: ConnRef,
    /// The JSON request body.
    pub body: String,
    /// Already failed once on a reused connection that the service had closed.
    pub retried: bool,
}

/// State of one connection to the auth service.
#[derive(Debug)]
pub(crate) struct Exchange {
    job: Option<AuthJob>,
    connected: bool,
    /// Has completed a request before: a failure may just be the service closing an idle
    /// keep-alive connection, so the request deserves one retry.
    reused: bool,
}

impl Reactor {
    /// Queues an authentication for the service.
    pub(super) fn webhook_submit(
        &mut self,
        ticket: ConnRef,
        token: &str,
        remote: Option<SocketAddr>,
    ) {
        let body = serde_json::json!({
            "token": token,
            "remote": remote.map(|a| a.to_string()).unwrap_or_default(),
        })
        .to_string();
        let Some(webhook) = &mut self.webhook else {
            unreachable!("webhook_submit without a webhook");
        };
        webhook.queue.push_back(AuthJob {
            ticket,
            body,
            retried: false,
        });
        self.webhook_dispatch();
    }

    /// Hands queued jobs to idle connections, opening new ones up to the bound.
    fn webhook_dispatch(&mut self) {
        while self.shutdown_deadline.is_none() {
            let Some(webhook) = &mut self.webhook else {
                return;
            };
            let Some(job) = webhook.queue.pop_front() else {
                return;
            };
            if !self.is_live(job.ticket) {
                continue; // the client left while waiting
            }
            let webhook = self.webhook.as_mut().expect("checked above");
            if let Some(key) = webhook.idle.pop() {
                self.webhook_send(key, job);
            } else if webhook.open < webhook.max_connections {
                self.webhook_open(job);
            } else {
                webhook.queue.push_front(job);
                return;
            }
        }
    }

    fn webhook_open(&mut self, job: AuthJob) {
        let webhook = self.webhook.as_mut().expect("webhook configured");
        let addr = webhook.addr;
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => {
                warn!("auth service {addr} unreachable: {e}");
                self.finish_auth(job.ticket, Err("auth service unreachable"));
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // Writable signals that the connection is established (or failed).
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, conn_token(key), interest)
        {
            warn!("auth service connection cannot be registered: {e}");
            self.finish_auth(job.ticket, Err("auth service unreachable"));
            return;
        }
        let now = self.clock.tick32();
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let this = ConnRef {
            key: key as u32,
            generation,
        };
        let timer = self
            .wheel
            .insert(deadline(now, webhook.timeout_ticks), this);
        let exchange = Exchange {
            job: Some(job),
            connected: false,
            reused: false,
        };
        let mut conn = Conn::new(
            stream,
            State::Webhook(Box::new(exchange)),
            generation,
            timer,
            now,
        );
        conn.write_interest = true;
        entry.insert(conn);
        webhook.open += 1;
        debug!("#{key}: connecting to the auth service at {addr}");
    }

    /// A connection to the service became writable: established, or failed.
    pub(super) fn webhook_writable(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let State::Webhook(exchange) = &mut conn.state else {
            unreachable!("webhook_writable on another connection");
        };
        if exchange.connected {
            self.flush(key);
            return;
        }
        match conn.stream.take_error() {
            Ok(None) if conn.stream.peer_addr().is_ok() => {}
            Ok(None) => return, // not connected yet
            Ok(Some(e)) | Err(e) => {
                warn!("auth service connection failed: {e}");
                self.close(key, CloseReason::IoError);
                return;
            }
        }
        exchange.connected = true;
        let job = exchange.job.take().expect("a new connection carries a job");
        self.webhook_send(key, job);
    }

    fn webhook_send(&mut self, key: usize, job: AuthJob) {
        let now = self.clock.tick32();
        let webhook = self.webhook.as_ref().expect("webhook configured");
        let conn = &mut self.conns[key];
        conn.last_active = now;
        let out = conn.output(&mut self.outbox.pool);
        let _ = write!(
            out,
            "{}{}\r\n\r\n{}",
            webhook.request_head,
            job.body.len(),
            job.body
        );
        let State::Webhook(exchange) = &mut conn.state else {
            unreachable!("webhook_send on another connection");
        };
        exchange.job = Some(job);
        if exchange.connected {
            self.outbox.mark_dirty(key, conn);
        }
        // The request deadline is earlier than the idle one the timer may be set for.
        self.arm_timer(key);
    }

    /// Reads the service's response from the start of `bytes`; returns how many bytes it took.
    pub(super) fn process_webhook(&mut self, key: usize, bytes: &[u8]) -> Option<usize> {
        let (verdict, used, keep_alive) = match parse_response(bytes, false) {
            Response::Partial => return Some(0),
            Response::Invalid(why) => {
                warn!("auth service sent a bad response: {why}");
                self.close(key, CloseReason::IoError);
                return None;
            }
            Response::Complete {
                status,
                body,
                len,
                keep_alive,
            } => (verdict(status, &body), len, keep_alive),
        };
        let conn = &mut self.conns[key];
        let State::Webhook(exchange) = &mut conn.state else {
            unreachable!("process_webhook on another connection");
        };
        let Some(job) = exchange.job.take() else {
            warn!("auth service answered a request it was not asked");
            self.close(key, CloseReason::IoError);
            return None;
        };
        exchange.reused = true;
        self.finish_auth(job.ticket, verdict);
        if keep_alive && used == bytes.len() {
            let now = self.clock.tick32();
            let conn = &mut self.conns[key];
            conn.last_active = now; // the idle timer counts from here
            let webhook = self.webhook.as_mut().expect("webhook configured");
            webhook.idle.push(key);
            self.webhook_dispatch();
            Some(used)
        } else {
            self.close(key, CloseReason::Done);
            None
        }
    }

    /// The service did not answer in time: reject, and drop the connection.
    pub(super) fn webhook_expired(&mut self, key: usize) {
        let State::Webhook(exchange) = &mut self.conns[key].state else {
            unreachable!("webhook_expired on another connection");
        };
        if let Some(job) = exchange.job.take() {
            let secs = self.webhook.as_ref().map_or(0, |w| w.timeout_ticks / 10);
            warn!("auth service did not answer within {secs}s");
            self.finish_auth(job.ticket, Err("auth service timed out"));
        }
        self.close(key, CloseReason::IdleTimeout);
    }

    /// Bookkeeping for a closed connection to the service: its job is answered from what
    /// arrived before EOF, retried once if the service closed a reused connection, or rejected.
    pub(super) fn webhook_closed(
        &mut self,
        key: usize,
        exchange: Exchange,
        input: &[u8],
        reason: CloseReason,
    ) {
        let webhook = self.webhook.as_mut().expect("webhook configured");
        webhook.open -= 1;
        webhook.idle.retain(|&k| k != key);
        if let Some(mut job) = exchange.job {
            match parse_response(input, true) {
                Response::Complete { status, body, .. } => {
                    self.finish_auth(job.ticket, verdict(status, &body));
                }
                _ if exchange.reused && input.is_empty() && !job.retried => {
                    debug!("auth service closed a kept-alive connection; retrying");
                    job.retried = true;
                    webhook.queue.push_front(job);
                }
                _ => {
                    warn!("auth service connection closed without an answer ({reason})");
                    self.finish_auth(job.ticket, Err("auth service closed the connection"));
                }
            }
        }
        self.webhook_dispatch();
    }

    /// Timeout of a connection to the service: the request deadline while one is in
    /// flight, the idle limit otherwise.
    pub(super) fn webhook_timeout_ticks(&self, exchange: &Exchange) -> u32 {
        match (&exchange.job, &self.webhook) {
            (Some(_), Some(webhook)) => webhook.timeout_ticks,
            _ => IDLE_TICKS,
        }
    }
}

/// The uid in a `200` answer; anything else is a rejection with its reason.
fn verdict(status: u16, body: &[u8]) -> Result<String, &'static str> {
    #[derive(Deserialize)]
    struct Answer {
        uid: Option<String>,
    }
    match status {
        200 => match serde_json::from_slice::<Answer>(body) {
            Ok(Answer { uid: Some(uid) }) if !uid.is_empty() => Ok(uid),
            Ok(_) => {
                warn!("auth service answered 200 without a uid");
                Err("auth service answered without a uid")
            }
            Err(e) => {
                warn!("auth service answered 200 with bad JSON: {e}");
                Err("auth service answered bad JSON")
            }
        },
        400..=499 => {
            debug!("auth service rejected the token ({status})");
            Err("rejected by the auth service")
        }
        _ => {
            warn!("auth service answered {status}");
            Err("auth service error")
        }
    }
}

/// A response at the start of the input.
#[derive(Debug, PartialEq, Eq)]
enum Response<'a> {
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
/// the connection. Interim `1xx` responses are skipped.
fn parse_response(input: &[u8], eof: bool) -> Response<'_> {
    let mut start = 0;
    loop {
        let rest = &input[start..];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() > MAX_RESPONSE => {
                return Response::Invalid("response head too large");
            }
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
            match input.get(body_start..body_start + length) {
                Some(body) => (Cow::Borrowed(body), body_start + length),
                None => return Response::Partial,
            }
        } else if eof {
            keep_alive = false;
            (Cow::Borrowed(&input[body_start..]), input.len())
        } else if input.len() > MAX_RESPONSE {
            return Response::Invalid("response body too large");
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
        if body.len() + size > MAX_RESPONSE {
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

    #[test]
    fn verdicts() {
        assert_eq!(verdict(200, br#"{"uid": "7", "x": 1}"#), Ok("7".into()));
        assert!(verdict(200, br#"{"uid": ""}"#).is_err());
        assert!(verdict(200, b"nope").is_err());
        assert!(verdict(403, br#"{"uid": "7"}"#).is_err());
        assert!(verdict(500, b"").is_err());
    }
}
