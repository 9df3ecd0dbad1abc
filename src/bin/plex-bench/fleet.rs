//! The user side of every benchmark: thousands of client sockets on one mio `Poll`, driven by
//! one thread. The fleet opens its connections a bounded number at a time (so that the
//! server's listen backlog never overflows into one-second SYN retransmits), each bound to one
//! of several `127.0.0.x` source addresses so that ephemeral ports do not run out, then
//! authenticates them, keeps them alive with heartbeats, and tallies the benchmark messages
//! they receive. Each speaks the run's transport and codec through its `Link`. A driver (the
//! pusher) may share the poll under its own token.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use plex::protocol::{Codec, uri};

use crate::alarm::Alarm;
use crate::link::{Link, LinkConfig};
use crate::payload;
use crate::report::{Figures, Latency};

/// The driver's socket; users are `Token(index + 1)`.
pub const DRIVER: Token = Token(0);
/// The alarm's wake-ups.
const ALARM: Token = Token(usize::MAX);
/// Setup or a run gives up after this long without progress.
pub const STALL: Duration = Duration::from_secs(10);
/// The longest a turn waits for events, so that callers look at their clocks often enough.
const POLL_CAP: Duration = Duration::from_millis(100);
/// Linux `EINPROGRESS`: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;

fn user_token(index: usize) -> Token {
    Token(index + 1)
}

/// Something that sends the benchmark's messages from the fleet's thread (see `Pusher`).
pub trait Driver {
    /// Readiness of the driver's own socket (registered as `DRIVER`).
    fn on_event(&mut self, event: &Event) -> io::Result<()>;
    /// Sends what its pace allows, now that `received` deliveries have arrived; returns when
    /// it wants to be called again (`None`: when something happens).
    fn pump(&mut self, received: u64) -> io::Result<Option<Instant>>;
    /// Messages sent so far.
    fn sent(&self) -> u64;
    /// Every answer the server owes the driver has arrived (HTTP responses).
    fn settled(&self) -> bool;
}

pub struct FleetConfig {
    pub target: SocketAddr,
    pub conns: usize,
    /// Source addresses `127.0.0.1 ..= 127.0.0.<sources>`, used round-robin.
    pub sources: u8,
    /// Connections connecting or authenticating at once.
    pub concurrency: usize,
    /// Authenticate as uid `u<index>` (token = uid); `false` for the `limit` writer.
    pub authenticate: bool,
    pub heartbeat: Duration,
    /// Transport, codec and byte order.
    pub link: LinkConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Connected; on a WebSocket, waiting for the upgrade's answer.
    Opening,
    Authenticating,
    Ready,
    Closed,
}

struct User {
    link: Link,
    phase: Phase,
}

/// What the users have received, shared by every phase.
struct Tally {
    codec: Codec,
    ready: usize,
    closed: usize,
    /// Benchmark messages received.
    count: u64,
    /// Earliest send time seen in a body and latest receive time, in Unix nanoseconds. The
    /// send time is when the message was due, at a fixed rate (see `schedule`).
    first_sent_ns: u64,
    last_received_ns: u64,
    latencies_ns: Vec<u64>,
    /// Bytes of the frames that carried the benchmark messages.
    frame_bytes: u64,
    /// Probe messages received.
    probes: u64,
}

pub struct Fleet {
    poll: Poll,
    events: Events,
    users: Vec<User>,
    config: FleetConfig,
    tally: Tally,
    /// Shared read buffer: a user keeps only the bytes of a partial frame.
    scratch: Vec<u8>,
    heartbeats_sent: u64,
    started: Instant,
    /// The next user `churn` considers.
    churn_cursor: usize,
    /// Wakes the poll when the driver's next message is due.
    alarm: Alarm,
}

impl Fleet {
    /// Opens and (if configured) authenticates every connection; returns the fleet and how
    /// long that took.
    pub fn connect(config: FleetConfig) -> io::Result<(Fleet, Duration)> {
        let poll = Poll::new()?;
        let alarm = Alarm::start(poll.registry(), ALARM)?;
        let mut fleet = Fleet {
            poll,
            events: Events::with_capacity(1024),
            users: Vec::with_capacity(config.conns),
            tally: Tally::new(config.link.codec),
            config,
            scratch: vec![0; 64 * 1024],
            heartbeats_sent: 0,
            started: Instant::now(),
            churn_cursor: 0,
            alarm,
        };
        let mut progress = (0, Instant::now());
        while fleet.tally.ready < fleet.config.conns {
            while fleet.users.len() < fleet.config.conns
                && fleet.users.len() - fleet.tally.ready < fleet.config.concurrency
            {
                fleet.open_next()?;
            }
            fleet.turn(Some(Duration::from_millis(100)), None)?;
            fleet.check_all_alive()?;
            if fleet.tally.ready != progress.0 {
                progress = (fleet.tally.ready, Instant::now());
            } else if progress.1.elapsed() > STALL {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "setup stalled: {} of {} connections ready",
                        fleet.tally.ready, fleet.config.conns
                    ),
                ));
            }
        }
        let took = fleet.started.elapsed();
        Ok((fleet, took))
    }

    /// The poll's registry, for a driver to register its socket as `DRIVER`.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// An error if the server closed any user connection.
    pub fn check_all_alive(&self) -> io::Result<()> {
        match self.tally.closed {
            0 => Ok(()),
            n => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the server closed {n} user connections"),
            )),
        }
    }

    fn open_next(&mut self) -> io::Result<()> {
        let index = self.users.len();
        let link = self.open(index)?;
        self.users.push(User {
            link,
            phase: Phase::Connecting,
        });
        Ok(())
    }

    /// Closes `count` ready users and connects them again under the same uids, taking them
    /// round-robin; returns how many it reopened. For `soak`: connections come and go while
    /// the users stay the same.
    pub fn churn(&mut self, count: usize) -> io::Result<usize> {
        let mut reopened = 0;
        for _ in 0..self.users.len() {
            if reopened == count {
                break;
            }
            let index = self.churn_cursor % self.users.len();
            self.churn_cursor += 1;
            if self.users[index].phase != Phase::Ready {
                continue;
            }
            let fresh = self.open(index)?;
            let mut old = std::mem::replace(&mut self.users[index].link, fresh);
            self.poll.registry().deregister(old.stream_mut())?;
            drop(old); // the close the server sees
            self.users[index].phase = Phase::Connecting;
            self.tally.ready -= 1;
            reopened += 1;
        }
        Ok(reopened)
    }

    /// Users connected and authenticated now.
    pub fn ready(&self) -> usize {
        self.tally.ready
    }

    /// Benchmark messages received so far.
    pub fn received(&self) -> u64 {
        self.tally.count
    }

    /// Probe messages received so far.
    pub fn probes(&self) -> u64 {
        self.tally.probes
    }

    /// Users the server closed (the benchmark's users never expect that).
    pub fn closed_by_server(&self) -> usize {
        self.tally.closed
    }

    /// A connection for user `index`, connecting (non-blocking) from its source address.
    fn open(&mut self, index: usize) -> io::Result<Link> {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (index % self.config.sources as usize) as u8);
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        // Binding first picks the source address; each one has its own ephemeral ports.
        socket
            .bind(&SocketAddr::new(source.into(), 0).into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {source}: {e}")))?;
        match socket.connect(&self.config.target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
            Err(e) => {
                let target = self.config.target;
                return Err(io::Error::new(e.kind(), format!("connect {target}: {e}")));
            }
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            user_token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Link::new(stream, &self.config.link)
    }

    /// Polls once (at most `timeout`), handles every event, and sends the heartbeats due.
    pub fn turn<'d>(
        &mut self,
        timeout: Option<Duration>,
        mut driver: Option<&mut (dyn Driver + 'd)>,
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
            _ => {}
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            if event.token() == ALARM {
                // Only a wake-up: the caller's next `pump` sends what is due.
            } else if event.token() == DRIVER {
                if let Some(driver) = driver.as_deref_mut() {
                    driver.on_event(event)?;
                }
            } else {
                self.on_user_event(event.token().0 - 1, event)?;
            }
        }
        self.events = events;
        self.send_heartbeats()
    }

    /// Makes room for the latencies of `expected` messages up front: growing it mid-run would
    /// stall the thread that reads.
    pub fn expect(&mut self, expected: u64) {
        self.tally.latencies_ns.reserve(expected as usize);
    }

    /// Lets `driver` send what its pace allows, then turns once, waiting at most until the
    /// driver's next send or `deadline`, whichever comes first.
    pub fn step<'d>(
        &mut self,
        driver: &mut (dyn Driver + 'd),
        deadline: Instant,
    ) -> io::Result<()> {
        let wake = driver.pump(self.tally.count)?;
        if let Some(wake) = wake {
            self.alarm.set(wake);
        }
        let next = wake.map_or(deadline, |wake| wake.min(deadline));
        let timeout = next.saturating_duration_since(Instant::now()).min(POLL_CAP);
        self.turn(Some(timeout), Some(driver))
    }

    /// Runs `driver` (or just listens, when the other end sends by itself) until `expected`
    /// benchmark messages have arrived or nothing has happened for a while.
    pub fn receive<'d>(
        &mut self,
        expected: u64,
        mut driver: Option<&mut (dyn Driver + 'd)>,
    ) -> io::Result<()> {
        self.expect(expected);
        let mut progress = ((0, 0), Instant::now());
        while self.tally.count < expected {
            match driver.as_deref_mut() {
                Some(driver) => self.step(driver, Instant::now() + POLL_CAP)?,
                None => self.turn(Some(POLL_CAP), None)?,
            }
            let now = (self.tally.count, driver.as_deref().map_or(0, |d| d.sent()));
            if now != progress.0 {
                progress = (now, Instant::now());
            } else if progress.1.elapsed() > STALL {
                break; // whatever is missing is lost
            }
        }
        Ok(())
    }

    /// Keeps turning until the driver has every answer it is owed, or `STALL` passes without
    /// one: the last deliveries can arrive before the last HTTP responses.
    pub fn settle<'d>(&mut self, driver: &mut (dyn Driver + 'd)) -> io::Result<()> {
        let deadline = Instant::now() + STALL;
        while !driver.settled() && Instant::now() < deadline {
            self.turn(Some(Duration::from_millis(100)), Some(&mut *driver))?;
        }
        Ok(())
    }

    /// The figures of what was received, expecting `expected` messages.
    pub fn figures(&mut self, expected: u64) -> Figures {
        let t = &mut self.tally;
        let span_ns = t.last_received_ns.saturating_sub(t.first_sent_ns).max(1);
        Figures {
            expected,
            received: t.count,
            rate: t.count as f64 * 1e9 / span_ns as f64,
            frame_bytes: (t.count > 0).then(|| t.frame_bytes as f64 / t.count as f64),
            latency: Latency::of(&mut t.latencies_ns),
            closed: t.closed,
            ..Figures::default()
        }
    }

    fn on_user_event(&mut self, index: usize, event: &Event) -> io::Result<()> {
        let user = &mut self.users[index];
        if user.phase == Phase::Closed {
            // Counted once: a reset can follow the end of the stream.
            return Ok(());
        }
        if user.phase == Phase::Connecting {
            let connected = is_connected(user.link.stream()).map_err(|e| {
                let target = self.config.target;
                io::Error::new(
                    e.kind(),
                    format!("connect {target}: {e} (is the server running?)"),
                )
            })?;
            if !connected {
                return Ok(());
            }
            user.phase = Phase::Opening;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(index)?;
        }
        let user = &mut self.users[index];
        // A TLS ClientHello, a WebSocket upgrade, or what the socket would not take before.
        user.link.flush()?;
        if user.phase == Phase::Opening && user.link.is_open() {
            if self.config.authenticate {
                user.link
                    .send(&self.config.link, uri::AUTH, &payload::uid(index))?;
                user.phase = Phase::Authenticating;
            } else {
                user.phase = Phase::Ready;
                self.tally.ready += 1;
            }
        }
        Ok(())
    }

    /// Reads until the socket is drained (the poll is edge-triggered).
    fn read(&mut self, index: usize) -> io::Result<()> {
        let User { link, phase } = &mut self.users[index];
        let tally = &mut self.tally;
        // What arrives now counts as received now, not once the tool has decoded what came
        // before it in the same read.
        let received_ns = payload::now_ns();
        let open = link.read(
            &self.config.link,
            &mut self.scratch,
            |payload, frame_len| tally.message(phase, payload, frame_len, received_ns),
        )?;
        if !open {
            *phase = Phase::Closed;
            tally.closed += 1;
        }
        Ok(())
    }

    /// Spreads heartbeats evenly: `conns` of them per heartbeat interval, round-robin.
    fn send_heartbeats(&mut self) -> io::Result<()> {
        let n = self.users.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let due = (self.started.elapsed().as_secs_f64() / self.config.heartbeat.as_secs_f64()
            * self.config.conns as f64) as u64;
        while self.heartbeats_sent < due {
            let user = &mut self.users[(self.heartbeats_sent % n) as usize];
            self.heartbeats_sent += 1;
            if user.phase == Phase::Ready {
                user.link.send(&self.config.link, uri::HEARTBEAT, "")?;
            }
        }
        Ok(())
    }
}

impl Tally {
    fn new(codec: Codec) -> Tally {
        Tally {
            codec,
            ready: 0,
            closed: 0,
            count: 0,
            first_sent_ns: u64::MAX,
            last_received_ns: 0,
            latencies_ns: Vec::new(),
            frame_bytes: 0,
            probes: 0,
        }
    }

    /// Handles one message, `payload`, which came in a frame of `frame_len` bytes.
    fn message(
        &mut self,
        phase: &mut Phase,
        payload: &[u8],
        frame_len: usize,
        received_ns: u64,
    ) -> io::Result<()> {
        let message = self
            .codec
            .decode(payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match &*message.uri {
            payload::BENCH_URI => {
                let sent_ns = payload::sent_ns(&message.body)?;
                self.count += 1;
                self.frame_bytes += frame_len as u64;
                self.first_sent_ns = self.first_sent_ns.min(sent_ns);
                self.last_received_ns = self.last_received_ns.max(received_ns);
                self.latencies_ns.push(received_ns.saturating_sub(sent_ns));
            }
            payload::PROBE_URI => self.probes += 1,
            uri::AUTH_SUCCESS if *phase == Phase::Authenticating => {
                *phase = Phase::Ready;
                self.ready += 1;
            }
            uri::AUTH_FAILED => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the server refused a user's token (is its auth mode `uid`?)",
                ));
            }
            _ => {} // heartbeat answers
        }
        Ok(())
    }
}

/// Whether a non-blocking connect has completed; an error if it failed.
fn is_connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    #[test]
    fn a_stall_counts_as_latency_for_every_message_due_during_it() {
        // 1,000 messages/s. The sender stalls for 100 ms after message 99: messages 100 to 199,
        // due during the stall, go out together with message 200 when it ends. Each arrives
        // 50 us after it was written.
        let schedule = Schedule::starting(Instant::now(), 1_000_000_000_000, 1000.0);
        let written_ns = |i: u64| schedule.due_ns(if (100..200).contains(&i) { 200 } else { i });
        let mut tally = Tally::new(Codec::Protobuf);
        let mut phase = Phase::Ready;
        let (mut body, mut payload) = (String::new(), Vec::new());
        for i in 0..300 {
            payload::stamp_body(&mut body, schedule.due_ns(i), 100);
            payload.clear();
            Codec::Protobuf.write_payload(&mut payload, 0, payload::BENCH_URI, &body);
            let arrived = tally.message(
                &mut phase,
                &payload,
                4 + payload.len(),
                written_ns(i) + 50_000,
            );
            arrived.unwrap();
        }
        assert_eq!(tally.count, 300);
        assert_eq!(tally.frame_bytes, 300 * (4 + 2 + 6 + 2 + 100));
        let l = Latency::of(&mut tally.latencies_ns).unwrap();
        // 200 messages on time; the 100 due during the stall waited 1 to 100 ms for its end.
        // Counted from when they were written, all 300 would show 0.05 ms.
        assert_eq!((l.p50, l.p90, l.p99), (50_000, 70_050_000, 97_050_000));
        assert_eq!(l.max, 100_050_000);
    }
}
