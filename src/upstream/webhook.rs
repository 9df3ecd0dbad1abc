//! The auth webhook: for each `/auth/server` the reactor POSTs `{"token": "...", "remote":
//! "ip:port"}` to the business service over non-blocking connections this module owns (a
//! table of its own, timed by the reactor's wheel). At most `AuthWebhookConnections` are
//! open; they are kept alive and reused, one request at a time each, and requests wait in a
//! queue for a free one. `200 {"uid": "..."}` accepts; any other status, bad JSON, a timeout
//! or an unreachable service rejects, with a log line saying which.
//!
//! Every request ends in exactly one `(ticket, verdict)` handed back to the reactor, which
//! applies it the same way as `Handle::complete_auth`. The service is not trusted to behave:
//! bytes before the request was written, a second response, a response over `MAX_RESPONSE`
//! each fail that exchange and close its connection, and an idle connection is checked for
//! stray bytes before it is reused, so one answer can never be taken for another's.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry};
use serde::Deserialize;

use super::response::{Response, parse_response};
use crate::CloseReason;
use crate::protocol::message::describe_json_error;
use crate::reactor::{
    AuthJob, ConnRef, Core, HasLink, Kind, Link, Table, deadline, feed, secs_to_ticks,
};

/// How long an idle pooled connection is kept, in ticks.
const IDLE_TICKS: u32 = 600;

/// The decision on one ticket: the uid, or why the token was refused.
pub type Verdict = Result<String, &'static str>;

/// One authentication waiting for, or on, a connection.
struct Job {
    ticket: ConnRef,
    /// The JSON request body.
    body: String,
    /// Already failed once on a reused connection that the service had closed.
    retried: bool,
}

/// One connection to the auth service.
pub struct Exchange {
    link: Link,
    job: Option<Job>,
    connected: bool,
    /// The request of `job` has been written completely: a response may now arrive.
    sent: bool,
    /// Has completed a request before: a failure may just be the service closing an idle
    /// keep-alive connection, so the request deserves one retry.
    reused: bool,
}

impl HasLink for Exchange {
    fn link(&self) -> &Link {
        &self.link
    }
    fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }
}

pub struct Webhook {
    addr: SocketAddr,
    /// `POST <path> HTTP/1.1` and the fixed headers, up to `Content-Length: `.
    request_head: String,
    max_connections: usize,
    timeout_ticks: u32,
    queue: VecDeque<Job>,
    conns: Table<Exchange>,
    /// Connected connections with no request in flight.
    idle: Vec<usize>,
    /// Taken out of the table by the last reaping, kept to reuse the vector.
    reaped: Vec<(usize, Exchange)>,
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
            conns: Table::new(Kind::Upstream),
            idle: Vec::new(),
            reaped: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.queue.is_empty()
    }

    pub fn has_doomed(&self) -> bool {
        self.conns.has_doomed()
    }

    /// Queues authentications and starts what the free connections allow.
    pub fn submit(
        &mut self,
        jobs: impl Iterator<Item = AuthJob>,
        core: &mut Core,
        registry: &Registry,
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        for job in jobs {
            let body = serde_json::json!({
                "token": job.token,
                "remote": job.remote.map(|a| a.to_string()).unwrap_or_default(),
            })
            .to_string();
            self.queue.push_back(Job {
                ticket: job.ticket,
                body,
                retried: false,
            });
        }
        self.dispatch(core, registry, done);
    }

    /// Drops the queued request of a client that has gone. One already sent is answered
    /// and its verdict ignored.
    pub fn forget(&mut self, ticket: ConnRef) {
        self.queue.retain(|job| job.ticket != ticket);
    }

    /// Hands queued jobs to idle connections, opening new ones up to the bound.
    fn dispatch(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        while !self.queue.is_empty() {
            if let Some(key) = self.idle.pop() {
                if self.is_quiet(key) {
                    let job = self.queue.pop_front().expect("not empty");
                    self.send(key, job, core);
                }
            } else if self.conns.live() < self.max_connections {
                let job = self.queue.pop_front().expect("not empty");
                self.open(job, core, registry, done);
            } else {
                return;
            }
        }
    }

    /// An idle connection about to be reused has sent nothing since its last response and is
    /// still open; otherwise it is dropped.
    fn is_quiet(&mut self, key: usize) -> bool {
        let mut probe = [0u8; 1];
        let quiet = match self.conns[key].link.stream.read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Ok(0) => {
                debug!(
                    "{}: the auth service closed an idle connection",
                    self.name(key)
                );
                false
            }
            Ok(_) => {
                warn!(
                    "auth service {}: sent bytes nobody asked for; dropping that connection",
                    self.addr
                );
                false
            }
            Err(e) => {
                debug!("{}: {e}", self.name(key));
                false
            }
        };
        if !quiet {
            self.conns.doom(key, CloseReason::IoError);
        }
        quiet
    }

    fn open(
        &mut self,
        job: Job,
        core: &mut Core,
        registry: &Registry,
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        let addr = self.addr;
        let stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => {
                warn!("auth service {addr} unreachable: {e}");
                done.push((job.ticket, Err("auth service unreachable")));
                return;
            }
        };
        let r = self.conns.next_ref();
        let mut link = Link::new(stream, r.generation(), core.clock.tick32());
        // Writable tells that the connection is established, or failed.
        if let Err(e) = registry.register(
            &mut link.stream,
            r.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("auth service {addr}: cannot register a connection: {e}");
            done.push((job.ticket, Err("auth service unreachable")));
            return;
        }
        link.set_write_interest(true);
        let key = r.key();
        self.conns.insert(Exchange {
            link,
            job: None,
            connected: false,
            sent: false,
            reused: false,
        });
        debug!(
            "{}: connecting to the auth service at {addr}",
            self.name(key)
        );
        self.send(key, job, core);
    }

    /// Writes a job's request to a connection (once it is established).
    fn send(&mut self, key: usize, job: Job, core: &mut Core) {
        let r = self.conns.ref_of(key);
        let exchange = &mut self.conns[key];
        let out = exchange.link.output(&mut core.pool);
        let _ = write!(
            out,
            "{}{}\r\n\r\n{}",
            self.request_head,
            job.body.len(),
            job.body
        );
        exchange.job = Some(job);
        exchange.sent = false;
        let now = core.clock.tick32();
        exchange.link.last_active = now;
        core.arm(&mut exchange.link, r, deadline(now, self.timeout_ticks));
        if exchange.connected {
            self.conns.mark_dirty(key);
        }
    }

    /// An event on one of this module's connections.
    pub fn on_event(
        &mut self,
        r: ConnRef,
        event: &mio::event::Event,
        core: &mut Core,
        registry: &Registry,
        scratch: &mut [u8],
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        let key = r.key();
        if self.conns.get(r).is_none() {
            return;
        }
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        if event.is_writable() {
            self.on_writable(key, core, registry, done);
        }
        if readable && self.conns[key].link.doomed.is_none() {
            self.on_readable(key, core, scratch, done);
        }
        self.dispatch(core, registry, done);
    }

    fn on_writable(
        &mut self,
        key: usize,
        core: &mut Core,
        registry: &Registry,
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        let exchange = &mut self.conns[key];
        if !exchange.connected {
            match exchange.link.stream.take_error() {
                Ok(None) if exchange.link.stream.peer_addr().is_ok() => exchange.connected = true,
                Ok(None) => return, // not connected yet
                Ok(Some(e)) | Err(e) => {
                    warn!("auth service {}: connection failed: {e}", self.addr);
                    self.fail(key, "auth service unreachable", done);
                    return;
                }
            }
            // Bytes that came before the request went out are no answer to it.
            if !self.is_quiet(key) {
                self.fail(key, "auth service answered before it was asked", done);
                return;
            }
        }
        self.conns.flush(key, registry, core);
        let exchange = &mut self.conns[key];
        if exchange.link.doomed.is_some() {
            warn!(
                "auth service {}: the request could not be written",
                self.addr
            );
            self.fail(key, "auth service connection failed", done);
        } else if exchange.job.is_some() && exchange.link.pending() == 0 {
            exchange.sent = true;
        }
    }

    fn on_readable(
        &mut self,
        key: usize,
        core: &mut Core,
        scratch: &mut [u8],
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        loop {
            match self.conns[key].link.stream.read(scratch) {
                Ok(0) => return self.on_eof(key, None, done),
                Ok(n) => {
                    let mut input = std::mem::take(&mut self.conns[key].link.input);
                    feed(&mut input, &mut scratch[..n], |bytes| {
                        self.on_bytes(key, bytes, core, done)
                    });
                    let link = &mut self.conns[key].link;
                    link.input = input;
                    if link.doomed.is_some() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.on_eof(key, Some(e), done),
            }
        }
    }

    /// Reads the service's response from the start of `bytes`; returns how many bytes it
    /// took (`None` once the connection is finished).
    fn on_bytes(
        &mut self,
        key: usize,
        bytes: &[u8],
        core: &mut Core,
        done: &mut Vec<(ConnRef, Verdict)>,
    ) -> Option<usize> {
        let exchange = &mut self.conns[key];
        if exchange.job.is_none() || !exchange.sent {
            warn!(
                "auth service {}: answered before it was asked; dropping that connection",
                self.addr
            );
            self.fail(key, "auth service answered before it was asked", done);
            return None;
        }
        let (verdict, used, keep_alive) = match parse_response(bytes, false) {
            Response::Partial => return Some(0),
            Response::Invalid(why) => {
                warn!("auth service {}: bad response: {why}", self.addr);
                self.fail(key, "auth service sent a bad response", done);
                return None;
            }
            Response::Complete {
                status,
                body,
                len,
                keep_alive,
            } => (verdict(status, &body), len, keep_alive),
        };
        let exchange = &mut self.conns[key];
        let job = exchange.job.take().expect("checked above");
        done.push((job.ticket, verdict));
        exchange.reused = true;
        exchange.sent = false;
        if used < bytes.len() {
            warn!(
                "auth service {}: sent more than one response to one request; dropping that connection",
                self.addr
            );
            self.conns.doom(key, CloseReason::IoError);
            return None;
        }
        if keep_alive {
            let now = core.clock.tick32();
            exchange.link.last_active = now;
            let r = self.conns.ref_of(key);
            let exchange = &mut self.conns[key];
            core.arm(&mut exchange.link, r, deadline(now, IDLE_TICKS));
            self.idle.push(key);
            Some(used)
        } else {
            self.conns.doom(key, CloseReason::Done);
            None
        }
    }

    /// The service closed the connection (or it failed): the job is answered from what
    /// arrived before, retried once if the service closed a reused connection, or rejected.
    fn on_eof(&mut self, key: usize, error: Option<io::Error>, done: &mut Vec<(ConnRef, Verdict)>) {
        let exchange = &mut self.conns[key];
        let Some(mut job) = exchange.job.take() else {
            self.conns.doom(key, CloseReason::PeerClosed);
            return;
        };
        let input = std::mem::take(&mut exchange.link.input);
        let reused = exchange.reused;
        match parse_response(&input, error.is_none()) {
            Response::Complete { status, body, .. } if exchange.sent => {
                done.push((job.ticket, verdict(status, &body)));
            }
            _ if reused && input.is_empty() && !job.retried => {
                debug!(
                    "{}: the auth service closed a kept-alive connection; retrying",
                    self.name(key)
                );
                job.retried = true;
                self.queue.push_front(job);
            }
            _ => {
                let cause = error.map_or("it closed the connection".to_owned(), |e| e.to_string());
                warn!("auth service {}: no answer: {cause}", self.addr);
                done.push((job.ticket, Err("auth service closed the connection")));
            }
        }
        self.conns.doom(key, CloseReason::PeerClosed);
    }

    /// Rejects the connection's job, if any, and drops the connection.
    fn fail(&mut self, key: usize, why: &'static str, done: &mut Vec<(ConnRef, Verdict)>) {
        if let Some(job) = self.conns[key].job.take() {
            done.push((job.ticket, Err(why)));
        }
        self.conns.doom(key, CloseReason::IoError);
    }

    /// A connection's timer fired: the service did not answer in time, or an idle
    /// connection has been kept long enough.
    pub fn on_timer(&mut self, r: ConnRef, done: &mut Vec<(ConnRef, Verdict)>) {
        let Some(exchange) = self.conns.timer_fired(r) else {
            return;
        };
        let key = r.key();
        if exchange.job.is_some() {
            let secs = self.timeout_ticks / 10;
            warn!("auth service {}: no answer within {secs}s", self.addr);
            self.fail(key, "auth service timed out", done);
        } else {
            self.conns.doom(key, CloseReason::IdleTimeout);
        }
    }

    /// Frees the connections doomed this turn, and gives their place to waiting requests.
    pub fn reap(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        done: &mut Vec<(ConnRef, Verdict)>,
    ) {
        self.conns.take_doomed(&mut self.reaped);
        for (key, mut exchange) in self.reaped.drain(..) {
            debug_assert!(
                exchange.job.is_none(),
                "every job is answered before its connection goes"
            );
            self.idle.retain(|&k| k != key);
            core.disarm(&mut exchange.link);
            let _ = registry.deregister(&mut exchange.link.stream);
            exchange.link.release(&mut core.pool);
            debug!("w#{key}: auth service connection closed");
        }
        self.dispatch(core, registry, done);
    }

    /// Writes the requests queued this turn.
    pub fn flush(&mut self, core: &mut Core, registry: &Registry) {
        let mut resume = Vec::new();
        self.conns.flush_dirty(registry, core, &mut resume);
        for (_, exchange) in self.conns.iter_mut() {
            if exchange.job.is_some() && exchange.connected && exchange.link.pending() == 0 {
                exchange.sent = true;
            }
        }
    }

    /// Shutting down: every waiting request is rejected and every connection dropped.
    pub fn shutdown(&mut self, done: &mut Vec<(ConnRef, Verdict)>) {
        for job in self.queue.drain(..) {
            done.push((job.ticket, Err("shutting down")));
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.fail(key, "shutting down", done);
        }
    }

    fn name(&self, key: usize) -> String {
        format!("w#{key}")
    }
}

/// The uid in a `200` answer; anything else is a rejection with its reason.
fn verdict(status: u16, body: &[u8]) -> Verdict {
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
                warn!(
                    "auth service answered 200 with bad JSON: {}",
                    describe_json_error(&e)
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(200, br#"{"uid": "7", "x": 1}"#), Ok("7".into()));
        assert!(verdict(200, br#"{"uid": ""}"#).is_err());
        assert!(verdict(200, b"nope").is_err());
        assert!(verdict(403, br#"{"uid": "7"}"#).is_err());
        assert!(verdict(500, b"").is_err());
    }
}
