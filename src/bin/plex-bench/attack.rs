//! The attackers of `chaos`: each kind of misbehaving client runs on its own thread (the tool is
//! not the system under test) against the server's client port, at its own pace, and counts
//! what it did. Every kind holds a bounded number of sockets (at most `HOLD`, or one at a time,
//! or `MAX_FLOODERS`) and binds them to its own source addresses `127.0.<kind + 1>.1-8`, apart
//! from the good users' `127.0.0.x`, so that the TIME_WAIT of thousands of short connections
//! never exhausts anyone's ephemeral ports. Every blocking step has a timeout: a server that
//! hangs or dies costs an attacker at most `STEP_TIMEOUT` before it notices the stop.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use plex::client::Connection;
use plex::protocol::frame::HEADER_LEN;
use plex::protocol::{ByteOrder, encode_message, uri};

use crate::report::thousands;
use crate::schedule::Schedule;

/// How long one step of an attack (a connect, an answer, a write) may block.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
/// Sockets a kind that holds them open (half-closed, stalled) keeps at most; the oldest goes.
pub const HOLD: usize = 200;
/// Non-reading flooders at most.
pub const MAX_FLOODERS: usize = 500;
/// A flooder's receive buffer: small, so that the server's answers to it back up early.
const FLOOD_RCVBUF: usize = 4096;
/// How often the flooders write.
const FLOOD_ROUND: Duration = Duration::from_millis(10);
/// A flooder whose connect failed waits this long before it tries again.
const FLOOD_RETRY: Duration = Duration::from_millis(100);
/// How often a waiting attacker looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// Payload bytes of a garbage frame, at most.
const GARBAGE_MAX: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Churn,
    Reset,
    HalfClose,
    HeaderStall,
    Oversized,
    Garbage,
    Flood,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Churn,
        Kind::Reset,
        Kind::HalfClose,
        Kind::HeaderStall,
        Kind::Oversized,
        Kind::Garbage,
        Kind::Flood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Churn => "churn",
            Kind::Reset => "resets",
            Kind::HalfClose => "half-closes",
            Kind::HeaderStall => "header stalls",
            Kind::Oversized => "oversized",
            Kind::Garbage => "garbage",
            Kind::Flood => "flooders",
        }
    }

    /// What one operation of the kind does.
    fn operation(self) -> &'static str {
        match self {
            Kind::Churn => "connect, authenticate, close",
            Kind::Reset => "connect, close with RST (SO_LINGER 0)",
            Kind::HalfClose => "connect, authenticate, shut down writing, hold",
            Kind::HeaderStall => "connect, send 2 of the 4 header bytes, hold",
            Kind::Oversized => "connect, announce MaxFrameSize + 1 bytes",
            Kind::Garbage => "connect, send random bytes or plausible headers over random payloads",
            Kind::Flood => "authenticate, write heartbeats, never read",
        }
    }

    /// The source address of this kind's `n`th socket.
    fn source(self, n: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 1 + self as u8, 1 + (n % 8) as u8)
    }
}

/// How hard each kind attacks: operations per second, 0 for none; flooders are clients that
/// each write `flood_rate` heartbeats per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Intensity {
    pub churn: f64,
    pub resets: f64,
    pub half_closes: f64,
    pub stalls: f64,
    pub oversized: f64,
    pub garbage: f64,
    pub flooders: usize,
    pub flood_rate: f64,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity {
            churn: 200.0,
            resets: 200.0,
            half_closes: 100.0,
            stalls: 50.0,
            oversized: 100.0,
            garbage: 200.0,
            flooders: 50,
            flood_rate: 10_000.0,
        }
    }
}

impl Intensity {
    /// Operations per second of `kind`, or flooders.
    fn of(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Churn => self.churn,
            Kind::Reset => self.resets,
            Kind::HalfClose => self.half_closes,
            Kind::HeaderStall => self.stalls,
            Kind::Oversized => self.oversized,
            Kind::Garbage => self.garbage,
            Kind::Flood => self.flooders as f64,
        }
    }
}

impl fmt::Display for Intensity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for kind in Kind::ALL.into_iter().filter(|&k| k != Kind::Flood) {
            write!(f, "{} {}/s, ", kind.name(), self.of(kind))?;
        }
        write!(
            f,
            "{} flooders at {} heartbeats/s each",
            self.flooders, self.flood_rate
        )
    }
}

/// The server the attackers aim at.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub address: SocketAddr,
    pub order: ByteOrder,
    /// The server's `MaxFrameSize`: oversized headers announce one byte more.
    pub max_frame: u32,
}

/// What a kind has done so far, shared with its thread.
#[derive(Default)]
struct Counters {
    /// Operations done (heartbeats written, for flooders).
    done: AtomicU64,
    /// Operations that failed: no connection, no answer, an error.
    failed: AtomicU64,
    /// Connections the server was seen to close: an oversized header's, a flooder's.
    closed: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What one kind did over the attack.
#[derive(Clone, Debug)]
pub struct Tally {
    pub kind: Kind,
    /// Operations per second asked (flooders: how many).
    pub intensity: f64,
    pub done: u64,
    pub failed: u64,
    pub closed: u64,
    pub elapsed: Duration,
}

/// The attackers, running until `stop`.
pub struct Attack {
    stop: Arc<AtomicBool>,
    started: Instant,
    kinds: Vec<(Kind, f64, Arc<Counters>, JoinHandle<()>)>,
}

impl Attack {
    /// Starts a thread for every kind whose intensity is not 0.
    pub fn start(target: Target, intensity: &Intensity) -> io::Result<Attack> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut kinds = Vec::new();
        for kind in Kind::ALL {
            let of = intensity.of(kind);
            if of <= 0.0 {
                continue;
            }
            let counters = Arc::new(Counters::default());
            let (stop, mine) = (Arc::clone(&stop), Arc::clone(&counters));
            let flood_rate = intensity.flood_rate;
            let thread = thread::Builder::new()
                .name(kind.name().to_owned())
                .spawn(move || match kind {
                    Kind::Flood => flood(of as usize, flood_rate, target, &mine, &stop),
                    _ => paced(kind, of, target, &mine, &stop),
                })?;
            kinds.push((kind, of, counters, thread));
        }
        Ok(Attack {
            stop,
            started: Instant::now(),
            kinds,
        })
    }

    /// What every kind has done so far.
    pub fn tallies(&self) -> Vec<Tally> {
        let elapsed = self.started.elapsed();
        self.kinds
            .iter()
            .map(|(kind, intensity, c, _)| Tally {
                kind: *kind,
                intensity: *intensity,
                done: c.done.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                closed: c.closed.load(Ordering::Relaxed),
                elapsed,
            })
            .collect()
    }

    /// Stops every attacker, closing their sockets, and returns what each did.
    pub fn stop(self) -> Vec<Tally> {
        let tallies = self.tallies();
        self.stop.store(true, Ordering::Relaxed);
        for (kind, _, _, thread) in self.kinds {
            if thread.join().is_err() {
                eprintln!("plex-bench: the {} attacker panicked", kind.name());
            }
        }
        tallies
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind.name();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        match self.kind {
            Kind::Flood => write!(
                f,
                "{name:<14} {:>10} heartbeats by {} clients ({}/s each); the server closed \
                 {} of their connections; {} connects failed",
                thousands(self.done as f64),
                self.intensity,
                thousands(self.done as f64 / secs / self.intensity),
                self.closed,
                self.failed
            ),
            _ => {
                write!(
                    f,
                    "{name:<14} {:>10} ({}/s of {}/s asked): {}; {} failed",
                    thousands(self.done as f64),
                    thousands(self.done as f64 / secs),
                    self.intensity,
                    self.kind.operation(),
                    self.failed
                )?;
                if self.kind == Kind::Oversized {
                    write!(f, "; the server closed {} at once", self.closed)?;
                }
                Ok(())
            }
        }
    }
}

/// A kind that does one operation at a time at `rate` per second: everything but flooding.
fn paced(kind: Kind, rate: f64, target: Target, counters: &Counters, stop: &AtomicBool) {
    let schedule = Schedule::start(rate);
    let mut held = VecDeque::with_capacity(HOLD);
    let mut n = 0;
    while sleep_until(schedule.due(n), stop) {
        match operation(kind, n, target, counters) {
            Ok(hold) => {
                add(&counters.done, 1);
                if let Some(socket) = hold {
                    if held.len() == HOLD {
                        held.pop_front();
                    }
                    held.push_back(socket);
                }
            }
            Err(_) => add(&counters.failed, 1),
        }
        n += 1;
    }
}

/// Sleeps until `when`; `false` if told to stop meanwhile.
fn sleep_until(when: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = when.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(STOP_CHECK));
    }
}

/// Operation `n` of a paced kind; returns the socket to hold open, for the kinds that do.
fn operation(
    kind: Kind,
    n: u64,
    target: Target,
    counters: &Counters,
) -> io::Result<Option<Socket>> {
    let uid = format!("{}-{n}", kind.name().replace(' ', "-"));
    let mut socket = connect(kind.source(n), target.address, None)?;
    match kind {
        Kind::Churn => authenticate(&socket, &uid, target.order)?,
        Kind::Reset => socket.set_linger(Some(Duration::ZERO))?,
        Kind::HalfClose => {
            authenticate(&socket, &uid, target.order)?;
            socket.shutdown(Shutdown::Write)?;
            return Ok(Some(socket));
        }
        Kind::HeaderStall => {
            socket.write_all(&stalled_header(target.order))?;
            return Ok(Some(socket));
        }
        Kind::Oversized => {
            socket.write_all(&header(target.order, target.max_frame + 1))?;
            if closed_by_peer(&mut socket) {
                add(&counters.closed, 1);
            }
        }
        Kind::Garbage => {
            // A third of them after authenticating, where bad frames count against a user.
            if n % 3 == 2 {
                authenticate(&socket, &uid, target.order)?;
            }
            socket.write_all(&garbage(n, target.order, target.max_frame))?;
        }
        Kind::Flood => unreachable!("flooders are not paced"),
    }
    Ok(None)
}

/// A blocking socket from `source` connected to `target`, each step bounded by `STEP_TIMEOUT`.
fn connect(source: Ipv4Addr, target: SocketAddr, rcvbuf: Option<usize>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(bytes) = rcvbuf {
        // Before connecting, so that the window offered to the server starts small.
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(&SocketAddr::new(source.into(), 0).into())?;
    socket.connect_timeout(&target.into(), STEP_TIMEOUT)?;
    socket.set_read_timeout(Some(STEP_TIMEOUT))?;
    socket.set_write_timeout(Some(STEP_TIMEOUT))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

/// Authenticates as `uid` (token = uid) and waits for `/auth/success`.
fn authenticate(socket: &Socket, uid: &str, order: ByteOrder) -> io::Result<()> {
    // The client's framing on a second descriptor of the same socket, closed on return.
    let mut connection = Connection::from_stream(socket.try_clone()?.into(), order)?;
    if connection.authenticate(uid, STEP_TIMEOUT)? {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "auth failed",
        ))
    }
}

/// Whether the peer closes the connection within `STEP_TIMEOUT` (anything it sends first is
/// skipped).
fn closed_by_peer(socket: &mut Socket) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}

/// A frame header announcing `len` payload bytes.
fn header(order: ByteOrder, len: u32) -> [u8; HEADER_LEN] {
    match order {
        ByteOrder::Big => len.to_be_bytes(),
        ByteOrder::Little => len.to_le_bytes(),
    }
}

/// The first half of a plausible header: the server must wait for the rest, which never comes.
fn stalled_header(order: ByteOrder) -> [u8; 2] {
    let full = header(order, 100);
    [full[0], full[1]]
}

/// What garbage operation `n` sends: random bytes (every third), or 1 to 12 frames with
/// plausible headers over random payloads.
fn garbage(n: u64, order: ByteOrder, max_frame: u32) -> Vec<u8> {
    let mut out = Vec::new();
    if n.is_multiple_of(3) {
        out.resize(rand::random_range(1..=256), 0);
        rand::fill(&mut out[..]);
        return out;
    }
    for _ in 0..rand::random_range(1..=12) {
        let len = rand::random_range(1..=GARBAGE_MAX.min(max_frame));
        out.extend_from_slice(&header(order, len));
        let start = out.len();
        out.resize(start + len as usize, 0);
        rand::fill(&mut out[start..]);
    }
    out
}

/// One non-reading client of `flood`.
struct Flooder {
    socket: Option<Socket>,
    retry_at: Instant,
    /// Bytes of the endless heartbeat stream written on this connection.
    written: u64,
}

/// `count` clients that authenticate, then write `rate` heartbeats per second each and never
/// read the answers; a client the server closes connects again.
fn flood(count: usize, rate: f64, target: Target, counters: &Counters, stop: &AtomicBool) {
    let mut frame = Vec::new();
    encode_message(&mut frame, target.order, 0, uri::HEARTBEAT, "");
    let per_round = (rate * FLOOD_ROUND.as_secs_f64()).ceil().max(1.0) as usize;
    // A window onto the endless stream of heartbeats: a round writes from where the last
    // write stopped, even in the middle of a frame.
    let stream = frame.repeat(per_round + 1);
    let frame_len = frame.len() as u64;
    let round_bytes = per_round * frame.len();
    let mut flooders: Vec<Flooder> = (0..count)
        .map(|_| Flooder {
            socket: None,
            retry_at: Instant::now(),
            written: 0,
        })
        .collect();
    let rounds = Schedule::start(1.0 / FLOOD_ROUND.as_secs_f64());
    let mut round = 0;
    while sleep_until(rounds.due(round), stop) {
        round += 1;
        for (i, flooder) in flooders.iter_mut().enumerate() {
            if flooder.socket.is_none() {
                if Instant::now() < flooder.retry_at {
                    continue;
                }
                match open_flooder(i, target) {
                    Ok(socket) => flooder.socket = Some(socket),
                    Err(_) => {
                        add(&counters.failed, 1);
                        flooder.retry_at = Instant::now() + FLOOD_RETRY;
                        continue;
                    }
                }
                flooder.written = 0;
            }
            let socket = flooder.socket.as_ref().expect("opened above");
            let from = (flooder.written % frame_len) as usize;
            match (&*socket).write(&stream[from..from + round_bytes]) {
                Ok(n) => {
                    let before = flooder.written / frame_len;
                    flooder.written += n as u64;
                    add(&counters.done, flooder.written / frame_len - before);
                }
                // The server is not reading it fast enough: its loss, not ours.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    add(&counters.closed, 1);
                    flooder.socket = None;
                }
            }
        }
    }
}

/// Connects and authenticates flooder `i` without waiting for the answer: it never reads.
fn open_flooder(i: usize, target: Target) -> io::Result<Socket> {
    let socket = connect(
        Kind::Flood.source(i as u64),
        target.address,
        Some(FLOOD_RCVBUF),
    )?;
    let mut auth = Vec::new();
    encode_message(
        &mut auth,
        target.order,
        0,
        uri::AUTH,
        &format!("flooder-{i}"),
    );
    (&socket).write_all(&auth)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plex::protocol::{Decoder, MessageRef};

    #[test]
    fn oversized_and_stalled_headers_are_what_the_server_must_refuse_or_wait_for() {
        for order in [ByteOrder::Big, ByteOrder::Little] {
            let decoder = Decoder::new(order, 65_536);
            let too_large = decoder.decode(&header(order, 65_537)).unwrap_err();
            assert_eq!((too_large.len, too_large.max), (65_537, 65_536));
            assert_eq!(decoder.decode(&stalled_header(order)), Ok(None));
        }
    }

    #[test]
    fn plausible_garbage_is_frames_that_are_not_messages() {
        for n in [1, 2, 4, 5] {
            let bytes = garbage(n, ByteOrder::Big, 65_536);
            let mut frames = Decoder::new(ByteOrder::Big, GARBAGE_MAX).frames(&bytes);
            let payloads: Vec<&[u8]> = frames.by_ref().map(Result::unwrap).collect();
            assert_eq!(frames.consumed(), bytes.len());
            assert!((1..=12).contains(&payloads.len()), "{}", payloads.len());
            // Random bytes that happen to be a message would be a one-in-astronomical event.
            assert!(payloads.iter().all(|p| MessageRef::decode(p).is_err()));
        }
        let raw = garbage(3, ByteOrder::Big, 65_536);
        assert!((1..=256).contains(&raw.len()));
    }

    #[test]
    fn each_kind_has_its_own_source_addresses() {
        assert_eq!(Kind::Churn.source(0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(Kind::Flood.source(9), Ipv4Addr::new(127, 0, 7, 2));
    }
}
