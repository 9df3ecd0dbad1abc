//! The reactor: one thread, one `mio::Poll`, every connection in one slab.
//!
//! A turn is: poll → dispatch each event (accept, read and process frames or HTTP requests,
//! write) → run the handle's commands → expire timers → flush every connection that got output
//! this turn, with one write each. The reactor is the only owner of `Poll`, the slab, the
//! timer wheel and the registry; everything below it gets `&mut` for the length of a call and
//! nothing calls back up.

mod buffer;
mod conn;
pub(crate) mod http;
mod lifecycle;
mod plex;
mod registry;
mod timer;
mod transfer;
mod webhook;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::auth::{AuthRequest, AuthVerdict};
use crate::config::Config;
use crate::handle::{self, Command, Commands, Handle};
use crate::protocol::{ByteOrder, Message, SeqClock};
use crate::stats::{Counters, Stats};
use buffer::BufferPool;
use conn::Conn;
use transfer::Outbox;

pub use conn::CloseReason;
pub(crate) use conn::ConnRef;
pub use registry::Registry;
pub use timer::{TimerId, TimerWheel};
pub(crate) use webhook::Webhook;

/// The two listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Clients and inner connections, speaking the Plex protocol.
    Plex = 0,
    /// The HTTP API.
    Http = 1,
}

// The token space, fixed here once: the listeners, the waker, the signals, then connections.
const PLEX_LISTENER: Token = Token(Side::Plex as usize);
const HTTP_LISTENER: Token = Token(Side::Http as usize);
const WAKER: Token = Token(2);
const SIGNALS: Token = Token(3);
/// Connection tokens start here: `Token(slab key + FIRST_CONN)`.
const FIRST_CONN: usize = 4;

/// Timer resolution. Timeouts fire between their nominal time and one tick later.
const TICK: Duration = Duration::from_millis(100);
/// Wheel size: 4096 ticks of 100 ms cover the default timeouts in one revolution.
const WHEEL_SLOTS: usize = 4096;
/// How many ticks ahead a turn looks for the next timer before it sleeps.
const TIMER_HORIZON: u64 = 64;
/// Shared read buffer: the most one `read` takes from a socket.
const SCRATCH_LEN: usize = 64 * 1024;
/// Bytes read from one connection before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Handle commands run per turn before I/O gets its turn again.
const COMMAND_BUDGET: usize = 4096;
/// Pause after the process runs out of descriptors, before accepting again.
const ACCEPT_PAUSE_TICKS: u64 = 1;
/// How long a closing connection waits for the peer's EOF after our last byte.
const LINGER_TICKS: u32 = 20;
/// Output buffers kept for reuse, in bytes.
const POOL_BYTES: usize = 8 * 1024 * 1024;

fn conn_token(key: usize) -> Token {
    Token(key + FIRST_CONN)
}

fn conn_key(token: Token) -> usize {
    token.0 - FIRST_CONN
}

/// Decides about a client's token, at once or later (`Pending`).
pub(crate) type AuthFn = Box<dyn FnMut(AuthRequest) -> AuthVerdict + Send>;
/// Called with a uid (online, offline).
pub(crate) type UidHook = Box<dyn FnMut(&str) + Send>;
/// Called with a uid and the upstream message it sent.
pub(crate) type MessageHook = Box<dyn FnMut(&str, Message) + Send>;

/// How tokens are checked: a function, or the reactor's own webhook client.
pub(crate) enum Auth {
    Function(AuthFn),
    Webhook(Webhook),
}

/// Application callbacks, run on the reactor thread.
pub(crate) struct Hooks {
    pub on_online: Option<UidHook>,
    pub on_offline: Option<UidHook>,
    pub on_message: Option<MessageHook>,
}

/// Settings read on the hot path, derived once from the `Config`.
struct Limits {
    order: ByteOrder,
    max_frame: u32,
    max_inner_frame: u32,
    auth_ticks: u32,
    heartbeat_ticks: u32,
    http_idle_ticks: u32,
    shutdown_ticks: u64,
    max_auth_failures: u32,
    max_bad_frames: u32,
    max_pending: usize,
    max_connection: usize,
    max_http_connections: usize,
    max_http_body: usize,
    inner_password: String,
    outer_servers: Vec<String>,
}

impl Limits {
    fn new(config: &Config) -> Self {
        Limits {
            order: ByteOrder::from_little_endian(config.little_endian),
            max_frame: config.max_frame_size,
            max_inner_frame: config.max_inner_frame_size,
            auth_ticks: secs_to_ticks(config.auth_timeout),
            heartbeat_ticks: secs_to_ticks(config.heartbeat_timeout),
            http_idle_ticks: secs_to_ticks(config.http_idle_timeout),
            shutdown_ticks: secs_to_ticks(config.shutdown_timeout).into(),
            max_auth_failures: config.max_auth_failures,
            max_bad_frames: config.max_bad_frames,
            max_pending: config.max_pending_bytes,
            max_connection: config.max_connection,
            max_http_connections: config.max_http_connections,
            max_http_body: config.max_http_body,
            inner_password: config.inner_password.clone(),
            outer_servers: config.outer_servers.clone(),
        }
    }
}

fn secs_to_ticks(secs: u64) -> u32 {
    let ticks = Duration::from_secs(secs).as_millis() / TICK.as_millis();
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Time as the reactor sees it, read once per turn.
struct Clock {
    start: Instant,
    tick: u64,
    unix_ms: i64,
}

impl Clock {
    fn new() -> Self {
        let mut clock = Clock {
            start: Instant::now(),
            tick: 0,
            unix_ms: 0,
        };
        clock.update();
        clock
    }

    fn update(&mut self) {
        self.tick = (self.start.elapsed().as_millis() / TICK.as_millis()) as u64;
        self.unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
    }

    /// The current tick as stored in a connection (32 bits of 100 ms: 13 years).
    fn tick32(&self) -> u32 {
        self.tick as u32
    }

    fn until_tick(&self, tick: u64) -> Duration {
        (self.start + TICK * tick as u32).saturating_duration_since(Instant::now())
    }
}

/// Live counts kept up to date on state transitions.
#[derive(Default)]
struct Gauges {
    /// Connections accepted on the client listener, in any state.
    clients: u64,
    users: u64,
    inner: u64,
    http: u64,
}

pub(crate) struct Reactor {
    poll: Poll,
    events: Events,
    /// Indexed by `Side`; `None` once shutting down: no more accepts.
    listeners: [Option<TcpListener>; 2],
    addrs: [SocketAddr; 2],
    conns: Slab<Conn>,
    wheel: TimerWheel<ConnRef>,
    registry: Registry,
    outbox: Outbox,
    /// Shared read buffer: a connection keeps only the bytes of a partial frame or request.
    scratch: Vec<u8>,
    /// The frame of the push being delivered, encoded once for all its targets.
    frame: Vec<u8>,
    /// The unescaped body of the `/logic/send/msg` being read, reused across frames.
    push_body: String,
    /// Connections that passed the cap during a push, closed once the push is done.
    slow: Vec<usize>,
    /// Connections whose read budget ran out with data possibly left in the socket.
    unread: Vec<ConnRef>,
    expired: Vec<ConnRef>,
    limits: Limits,
    hooks: Hooks,
    /// The auth function, when tokens are not checked by the webhook.
    auth: Option<AuthFn>,
    /// The webhook client, when tokens are checked by the business service.
    webhook: Option<Webhook>,
    seq: SeqClock,
    counters: Counters,
    gauges: Gauges,
    /// `None` once the server has finished: the handle then reports `Stopped`.
    commands: Option<Commands>,
    commands_left: bool,
    signals: Option<Signals>,
    clock: Clock,
    next_generation: u32,
    /// Accepting is paused until this tick after running out of file descriptors.
    accept_paused_until: Option<u64>,
    /// Set once shutting down: the tick by which every connection is closed.
    shutdown_deadline: Option<u64>,
}

impl Reactor {
    /// A reactor serving `listeners` (indexed by `Side`), and the handle that talks to it.
    pub fn new(
        config: &Config,
        auth: Auth,
        hooks: Hooks,
        listeners: [TcpListener; 2],
        signals: Option<Signals>,
    ) -> io::Result<(Self, Handle)> {
        let poll = Poll::new()?;
        let [mut plex, mut http] = listeners;
        let addrs = [plex.local_addr()?, http.local_addr()?];
        let registry = poll.registry();
        registry.register(&mut plex, PLEX_LISTENER, Interest::READABLE)?;
        registry.register(&mut http, HTTP_LISTENER, Interest::READABLE)?;
        let mut signals = signals;
        if let Some(signals) = &mut signals {
            registry.register(signals, SIGNALS, Interest::READABLE)?;
        }
        let (handle, commands) = handle::channel(Waker::new(registry, WAKER)?);
        let clock = Clock::new();
        let limits = Limits::new(config);
        let (auth, webhook) = match auth {
            Auth::Function(f) => (Some(f), None),
            Auth::Webhook(w) => (None, Some(w)),
        };
        let reactor = Reactor {
            poll,
            events: Events::with_capacity(1024),
            listeners: [Some(plex), Some(http)],
            addrs,
            conns: Slab::new(),
            wheel: TimerWheel::new(WHEEL_SLOTS, clock.tick),
            registry: Registry::default(),
            outbox: Outbox {
                pool: BufferPool::new(POOL_BYTES),
                dirty: Vec::new(),
                max_pending: limits.max_pending,
            },
            scratch: vec![0; SCRATCH_LEN],
            frame: Vec::new(),
            push_body: String::new(),
            slow: Vec::new(),
            unread: Vec::new(),
            expired: Vec::new(),
            limits,
            hooks,
            auth,
            webhook,
            seq: SeqClock::default(),
            counters: Counters::default(),
            gauges: Gauges::default(),
            commands: Some(commands),
            commands_left: false,
            signals,
            clock,
            next_generation: 0,
            accept_paused_until: None,
            shutdown_deadline: None,
        };
        Ok((reactor, handle))
    }

    pub fn poll(&self) -> &Poll {
        &self.poll
    }

    pub fn local_addr(&self, side: Side) -> SocketAddr {
        self.addrs[side as usize]
    }

    /// The server has shut down and closed every connection.
    pub fn is_finished(&self) -> bool {
        self.commands.is_none()
    }

    /// Runs one turn, waiting at most `timeout` (`None`: until something happens).
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.is_finished() {
            return Ok(());
        }
        if let Some(commands) = &self.commands {
            commands.driven_by_current_thread();
        }
        let timeout = self.poll_timeout(timeout);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.clock.update();

        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                PLEX_LISTENER => {
                    self.accept(Side::Plex);
                }
                HTTP_LISTENER => {
                    self.accept(Side::Http);
                }
                WAKER => self.commands_left = true,
                SIGNALS => self.on_signal(),
                token => {
                    let key = conn_key(token);
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(key);
                    }
                    if event.is_writable() {
                        self.on_writable(key);
                    }
                }
            }
        }
        self.events = events;

        if self.commands_left {
            self.run_commands();
        }
        self.resume_unread();
        if self
            .accept_paused_until
            .is_some_and(|t| t <= self.clock.tick)
        {
            // Both listeners are retried; the pause ends when neither runs short.
            let saturated = self.accept(Side::Plex) | self.accept(Side::Http);
            if !saturated {
                self.accept_paused_until = None;
                info!("accepting again");
            }
        }
        self.expire_timers();
        self.flush_dirty();
        if let Some(deadline) = self.shutdown_deadline {
            self.progress_shutdown(deadline);
        }
        Ok(())
    }

    /// How long the next poll may sleep: until the caller's limit, the next timer tick, the
    /// end of an accept pause, or not at all when work is left over from this turn.
    fn poll_timeout(&self, limit: Option<Duration>) -> Option<Duration> {
        if self.commands_left || !self.unread.is_empty() {
            return Some(Duration::ZERO);
        }
        // A bounded look ahead keeps this cheap on a sparse wheel; timers further out are
        // reached by waking at the horizon.
        let timer_tick = (!self.wheel.is_empty()).then(|| {
            self.wheel
                .next_busy_tick(TIMER_HORIZON)
                .unwrap_or(self.clock.tick + TIMER_HORIZON)
        });
        let next_tick = timer_tick
            .into_iter()
            .chain(self.accept_paused_until)
            .chain(self.shutdown_deadline)
            .min();
        let timer = next_tick.map(|tick| self.clock.until_tick(tick.max(self.clock.tick + 1)));
        match (limit, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_live(&self, r: ConnRef) -> bool {
        self.conns
            .get(r.key as usize)
            .is_some_and(|c| c.generation == r.generation)
    }

    fn run_commands(&mut self) {
        self.commands_left = false;
        let Some(commands) = &self.commands else {
            return;
        };
        commands.rearm();
        for _ in 0..COMMAND_BUDGET {
            let Some(command) = self.commands.as_ref().and_then(Commands::next) else {
                return;
            };
            self.run_command(command);
        }
        self.commands_left = true;
    }

    fn run_command(&mut self, command: Command) {
        match command {
            Command::Push { uids, uri, body } => {
                self.push(&uids, &uri, &body);
            }
            Command::Broadcast { uri, body } => {
                self.broadcast(&uri, &body);
            }
            Command::Kick { uid, reply } => {
                let _ = reply.send(self.kick(&uid));
            }
            Command::Online { uids, reply } => {
                let _ = reply.send(uids.iter().map(|u| self.online(u)).collect());
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::CompleteAuth { ticket, uid } => {
                let verdict = uid.ok_or("rejected by the auth function");
                self.finish_auth(ticket.0, verdict);
            }
            Command::Shutdown => self.begin_shutdown(),
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let gauges = [
            self.gauges.clients,
            self.gauges.users,
            self.gauges.inner,
            self.registry.uids() as u64,
            self.gauges.http,
        ];
        let uptime = self.clock.start.elapsed().as_secs();
        Stats::from_counters(&self.counters, gauges, uptime)
    }

    /// Live connections of `uid`.
    pub(crate) fn online(&self, uid: &str) -> usize {
        self.registry.keys(uid).len()
    }

    /// Closes every connection of `uid`; returns how many.
    pub(crate) fn kick(&mut self, uid: &str) -> usize {
        let keys = self.registry.keys(uid).to_vec();
        for &key in &keys {
            self.close(key as usize, CloseReason::Kicked);
        }
        keys.len()
    }

    fn on_signal(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if self.shutdown_deadline.is_some() {
                warn!("signal {signal} during shutdown: closing every connection now");
                self.shutdown_deadline = Some(self.clock.tick);
            } else {
                info!("signal {signal}: shutting down");
                self.begin_shutdown();
            }
        }
    }

    /// Stops accepting and closes every connection that has nothing left to write; the rest
    /// close once their output is flushed, or at the shutdown deadline.
    pub(crate) fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.clock.tick + self.limits.shutdown_ticks);
        for listener in &mut self.listeners {
            if let Some(mut listener) = listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
        }
        self.accept_paused_until = None;
        let keys: Vec<(usize, bool)> = self
            .conns
            .iter()
            .map(|(key, c)| (key, c.pending() == 0))
            .collect();
        for (key, idle) in keys {
            if idle {
                self.close(key, CloseReason::Shutdown);
            } else {
                self.close_after_flush(key, CloseReason::Shutdown);
            }
        }
        info!("shutting down: {} connections flushing", self.conns.len());
    }

    fn progress_shutdown(&mut self, deadline: u64) {
        if self.clock.tick >= deadline {
            let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
            if !keys.is_empty() {
                warn!("shutdown timeout: closing {} connections", keys.len());
            }
            for key in keys {
                self.close(key, CloseReason::Shutdown);
            }
        }
        if self.conns.is_empty() {
            info!("shut down");
            self.commands = None;
        }
    }
}
