//! The sending side of `push` and `broadcast`, run on the fleet's thread as its driver: one
//! connection to the server (an inner TCP connection in the run's codec, or the HTTP API with
//! pipelined requests) carrying benchmark messages round-robin over the users' uids, either flat out
//! within a window of deliveries in flight, stamped with the moment they are written, or at a
//! fixed rate, stamped with the moment they were due (see `schedule`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry};

use plex::client::Connection;
use plex::protocol::{ByteOrder, Codec, PushRequest, uri};

use crate::fleet::{DRIVER, Driver, Fleet, STALL};
use crate::schedule::Schedule;
use crate::{http, payload};

/// Encoded output kept ahead of the socket: enough to amortise `write` calls, small enough
/// that the send time in each body stays close to the moment it is written.
const OUT_CAP: usize = 64 * 1024;
/// How long the inner connection's authentication may take.
const AUTH_WAIT: Duration = Duration::from_secs(5);
/// How often `await_route` probes.
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/logic/send/msg` frames over an inner TCP connection.
    InnerTcp,
    /// `POST /plex/v1/push`, one uid each.
    HttpPush,
    /// `POST /plex/v1/broadcast`.
    HttpBroadcast,
}

#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as possible with at most this many deliveries in flight.
    Window(u64),
    /// This many messages per second.
    Rate(f64),
}

/// What to send: `total` messages with `body_bytes`-byte bodies, round-robin over `users`
/// uids, each delivered `fanout` times (1 for a push, every user for a broadcast), at `pace`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub total: u64,
    pub users: usize,
    pub fanout: u64,
    pub body_bytes: usize,
    pub pace: Pace,
}

/// What the server answered to HTTP requests.
#[derive(Default)]
struct Answers {
    ok: u64,
    delivered: u64,
    errors: u64,
    first_error: Option<String>,
}

pub struct Pusher {
    route: Route,
    stream: TcpStream,
    address: SocketAddr,
    password: String,
    order: ByteOrder,
    codec: Codec,
    plan: Plan,
    sent: u64,
    /// At a fixed rate: when each message is due, from the first `pump` on.
    schedule: Option<Schedule>,
    /// Encoded messages; `out[..written]` already went out.
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    body: String,
    answers: Answers,
}

impl Pusher {
    /// Connects (and for `InnerTcp` authenticates, speaking `codec`) to `address` and
    /// registers as `DRIVER`.
    pub fn connect(
        route: Route,
        address: SocketAddr,
        password: &str,
        (order, codec): (ByteOrder, Codec),
        plan: Plan,
        registry: &Registry,
    ) -> io::Result<Pusher> {
        let stream = match route {
            Route::InnerTcp => {
                let mut inner = Connection::connect(address, order)?.with_codec(codec);
                if !inner.authenticate_inner(password, AUTH_WAIT)? {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the server refused the inner password",
                    ));
                }
                // The authenticated socket outlives the blocking client that set it up.
                inner.stream().try_clone()?
            }
            Route::HttpPush | Route::HttpBroadcast => {
                let stream = std::net::TcpStream::connect(address).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "HTTP API at {address}: {e} (is the server running, with --http-port?)"
                        ),
                    )
                })?;
                stream.set_nodelay(true)?;
                stream
            }
        };
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        registry.register(&mut stream, DRIVER, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Pusher {
            route,
            stream,
            address,
            password: password.to_owned(),
            order,
            codec,
            plan,
            sent: 0,
            schedule: None,
            out: Vec::with_capacity(2 * OUT_CAP),
            written: 0,
            input: Vec::new(),
            body: String::new(),
            answers: Answers::default(),
        })
    }

    /// What the server said on the side (HTTP answers), for the report.
    pub fn note(&self) -> Option<String> {
        if self.route == Route::InnerTcp {
            return None;
        }
        let a = &self.answers;
        let mut note = format!(
            "HTTP: {} answers 200 with delivered {} in total, {} errors",
            a.ok, a.delivered, a.errors
        );
        if let Some(first) = &a.first_error {
            note.push_str(&format!(" (first: {first})"));
        }
        Some(note)
    }

    fn encode_next(&mut self) {
        let uid = payload::uid((self.sent % self.plan.users as u64) as usize);
        let sent_ns = match &self.schedule {
            Some(schedule) => schedule.due_ns(self.sent),
            None => payload::now_ns(),
        };
        payload::stamp_body(&mut self.body, sent_ns, self.plan.body_bytes);
        let push = || {
            PushRequest {
                uid: uid.as_str().into(),
                uri: payload::BENCH_URI.into(),
                body: self.body.as_str().into(),
            }
            .to_json()
        };
        match self.route {
            Route::InnerTcp => {
                let order = self.order;
                self.codec
                    .write_frame(&mut self.out, order, 0, uri::SEND_MSG, &push());
            }
            Route::HttpPush => {
                let json = push();
                http::encode_post(
                    &mut self.out,
                    self.address,
                    "/plex/v1/push",
                    &self.password,
                    &json,
                );
            }
            Route::HttpBroadcast => {
                let json = serde_json::json!({"uri": payload::BENCH_URI, "body": self.body});
                http::encode_post(
                    &mut self.out,
                    self.address,
                    "/plex/v1/broadcast",
                    &self.password,
                    &json.to_string(),
                );
            }
        }
    }

    /// Writes pending output until done or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Reads what the server sent: HTTP answers are tallied, inner-connection frames (only
    /// heartbeat answers could come) are dropped.
    fn read(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server closed the push connection",
                    ));
                }
                Ok(n) if self.route != Route::InnerTcp => self.input.extend_from_slice(&chunk[..n]),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut used = 0;
        while let Some((response, len)) = http::parse_response(&self.input[used..])? {
            used += len;
            let a = &mut self.answers;
            if response.status == 200 {
                a.ok += 1;
                a.delivered += serde_json::from_slice::<serde_json::Value>(response.body)
                    .ok()
                    .and_then(|v| v["delivered"].as_u64())
                    .unwrap_or(0);
            } else {
                a.errors += 1;
                a.first_error.get_or_insert_with(|| {
                    format!(
                        "{} {}",
                        response.status,
                        String::from_utf8_lossy(response.body)
                    )
                });
            }
        }
        self.input.drain(..used);
        Ok(())
    }
}

/// Waits until a push sent through the inner connection at `inner` reaches the last user of
/// `fleet`: across nodes, presence travels to the other node after authentication, and pushes
/// sent before it arrives would count as lost. Probes go every `PROBE_EVERY` for up to `STALL`.
pub fn await_route(
    fleet: &mut Fleet,
    inner: SocketAddr,
    password: &str,
    (order, codec): (ByteOrder, Codec),
    users: usize,
) -> io::Result<()> {
    let mut conn = Connection::connect(inner, order)?.with_codec(codec);
    if !conn.authenticate_inner(password, AUTH_WAIT)? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server refused the inner password",
        ));
    }
    let probe = PushRequest {
        uid: payload::uid(users - 1).into(),
        uri: payload::PROBE_URI.into(),
        body: "".into(),
    }
    .to_json();
    let start = Instant::now();
    let mut next = start;
    while fleet.probes() == 0 {
        let now = Instant::now();
        if now - start > STALL {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no push sent through {inner} reached the users in {} s (are the nodes \
                     one cluster?)",
                    STALL.as_secs()
                ),
            ));
        }
        if now >= next {
            conn.send(uri::SEND_MSG, &probe)?;
            next = now + PROBE_EVERY;
        }
        fleet.turn(Some(PROBE_EVERY / 10), None)?;
    }
    Ok(())
}

impl Driver for Pusher {
    fn on_event(&mut self, event: &Event) -> io::Result<()> {
        if event.is_readable() || event.is_read_closed() {
            self.read()?;
        }
        if event.is_writable() {
            self.flush()?;
        }
        Ok(())
    }

    fn pump(&mut self, received: u64) -> io::Result<Option<Instant>> {
        let allowed = match self.plan.pace {
            // Always at least one message in flight, whatever the fanout.
            Pace::Window(window) => {
                ((received + window) / self.plan.fanout).max(received / self.plan.fanout + 1)
            }
            Pace::Rate(rate) => self
                .schedule
                .get_or_insert_with(|| Schedule::start(rate))
                .due_by(Instant::now()),
        }
        .min(self.plan.total);
        if self.written > 0 {
            self.out.drain(..self.written);
            self.written = 0;
        }
        while self.sent < allowed && self.out.len() < OUT_CAP {
            self.encode_next();
            self.sent += 1;
        }
        self.flush()?;
        Ok(match &self.schedule {
            Some(schedule) if self.sent < self.plan.total => Some(schedule.due(self.sent)),
            _ => None,
        })
    }

    fn sent(&self) -> u64 {
        self.sent
    }

    fn settled(&self) -> bool {
        self.route == Route::InnerTcp || self.answers.ok + self.answers.errors >= self.sent
    }
}
