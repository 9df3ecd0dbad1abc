//! What the protocol logic works with besides the connection in hand: the settings, the
//! clock and timer wheel, the buffer pool, the uid registry, the counters and the hooks.
//! Handlers get `&mut Ctx` and `&mut` one connection; they cannot reach another connection or
//! free one, so nothing calls back up into the reactor.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::buffer::BufferPool;
use super::cluster::Cluster;
use super::conns::ConnRef;
use super::link::Link;
use super::registry::Registry;
use super::timer::{TimerId, TimerWheel};
use crate::auth::{AuthRequest, AuthVerdict};
use crate::config::Config;
use crate::history::Memory;
use crate::protocol::{ByteOrder, CodecChoice, Message, SeqClock};
use crate::stats::Counters;

/// Timer resolution. Timeouts fire between their nominal time and one tick later.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a closing connection waits for the peer after its last progress.
pub const LINGER_TICKS: u32 = 20;
/// Output buffers kept for reuse, in bytes.
const POOL_BYTES: usize = 8 * 1024 * 1024;

/// Decides about a client's token, at once or later (`Pending`).
pub(crate) type AuthFn = Box<dyn FnMut(AuthRequest) -> AuthVerdict + Send>;
/// Called with a uid (online, offline).
pub(crate) type UidHook = Box<dyn FnMut(&str) + Send>;
/// Called with a uid and the upstream message it sent.
pub(crate) type MessageHook = Box<dyn FnMut(&str, Message) + Send>;

/// Reads the configuration again (SIGHUP).
pub(crate) type ReloadFn = Box<dyn FnMut() -> Result<Config, String> + Send>;

/// Application callbacks, run on the reactor thread.
#[derive(Default)]
pub(crate) struct Hooks {
    pub on_online: Option<UidHook>,
    pub on_offline: Option<UidHook>,
    pub on_message: Option<MessageHook>,
    pub reload: Option<ReloadFn>,
}

/// Settings read on the hot path, derived once from the `Config`.
pub struct Limits {
    pub order: ByteOrder,
    pub codec: CodecChoice,
    pub max_frame: u32,
    pub max_inner_frame: u32,
    pub auth_ticks: u32,
    pub heartbeat_ticks: u32,
    pub http_idle_ticks: u32,
    pub handshake_ticks: u32,
    pub shutdown_ticks: u32,
    pub max_auth_failures: u32,
    pub max_bad_frames: u32,
    pub max_pending: usize,
    pub soft_pending: usize,
    pub soft_ticks: u32,
    pub socket_send_buffer: usize,
    pub max_connection: usize,
    pub max_http_connections: usize,
    pub max_http_body: usize,
    pub inner_password: String,
    pub metrics_token: Option<String>,
    pub outer_servers: Vec<String>,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Limits {
            order: ByteOrder::from_little_endian(config.little_endian),
            codec: config.codec,
            max_frame: config.max_frame_size,
            max_inner_frame: config.max_inner_frame_size,
            auth_ticks: secs_to_ticks(config.auth_timeout),
            heartbeat_ticks: secs_to_ticks(config.heartbeat_timeout),
            http_idle_ticks: secs_to_ticks(config.http_idle_timeout),
            handshake_ticks: secs_to_ticks(config.handshake_timeout),
            shutdown_ticks: secs_to_ticks(config.shutdown_timeout),
            max_auth_failures: config.max_auth_failures,
            max_bad_frames: config.max_bad_frames,
            max_pending: config.max_pending_bytes,
            soft_pending: config.soft_pending_bytes.min(config.max_pending_bytes),
            soft_ticks: secs_to_ticks(config.soft_pending_seconds),
            socket_send_buffer: config.socket_send_buffer,
            max_connection: config.max_connection,
            max_http_connections: config.max_http_connections,
            max_http_body: config.max_http_body,
            inner_password: config.inner_password.clone(),
            metrics_token: config.metrics_token.clone(),
            outer_servers: config.outer_servers.clone(),
        }
    }
}

/// The keys SIGHUP applies to the running server (`TlsCert` and `TlsKey`: the listeners'
/// certificate, read again even when the paths are the same). Any other key needs a restart.
pub const RELOADABLE: &[&str] = &[
    "OuterServers",
    "InnerPassword",
    "MaxConnection",
    "AuthTimeout",
    "HeartbeatTimeout",
    "MaxAuthFailures",
    "MaxBadFrames",
    "MaxPendingBytes",
    "SoftPendingBytes",
    "SoftPendingSeconds",
    "SocketSendBuffer",
    "ShutdownTimeout",
    "MaxHttpBody",
    "HttpIdleTimeout",
    "MaxHttpConnections",
    "MetricsToken",
    "TlsCert",
    "TlsKey",
    "HandshakeTimeout",
    "Codec",
];

impl Limits {
    /// Takes from a reloaded configuration what may change while clients are connected: all
    /// but the byte order and the frame limits, which the decoders were built with.
    pub fn reload(&mut self, config: &Config) {
        *self = Limits {
            order: self.order,
            max_frame: self.max_frame,
            max_inner_frame: self.max_inner_frame,
            ..Limits::new(config)
        };
    }
}

pub fn secs_to_ticks(secs: u64) -> u32 {
    let ticks = Duration::from_secs(secs).as_millis() / TICK.as_millis();
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Time as the reactor sees it: read once per turn, and again where a fresh reading matters
/// (stamping accepted connections).
pub struct Clock {
    start: Instant,
    pub tick: u64,
    pub unix_ms: i64,
}

impl Clock {
    pub fn new() -> Self {
        let mut clock = Clock {
            start: Instant::now(),
            tick: 0,
            unix_ms: 0,
        };
        clock.update();
        clock
    }

    pub fn update(&mut self) {
        self.tick = (self.start.elapsed().as_millis() / TICK.as_millis()) as u64;
        self.unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
    }

    /// The current tick as stored in a connection (32 bits of 100 ms: 13 years).
    pub fn tick32(&self) -> u32 {
        self.tick as u32
    }

    pub fn until_tick(&self, tick: u64) -> Duration {
        let at = u32::try_from(tick).map_or(Duration::MAX, |t| TICK * t);
        (self.start + at.min(Duration::from_secs(1 << 32)))
            .saturating_duration_since(Instant::now())
    }

    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The tick at which a timeout of `ticks` counted from `from` expires; one tick of slack so
/// that a timeout never fires early.
pub fn deadline(from: u32, ticks: u32) -> u64 {
    u64::from(from) + u64::from(ticks) + 1
}

/// What every table uses: the clock, the one timer wheel, and the buffer pool.
pub struct Core {
    pub clock: Clock,
    pub wheel: TimerWheel<ConnRef>,
    pub pool: BufferPool,
}

impl Core {
    pub fn new() -> Self {
        let clock = Clock::new();
        Core {
            wheel: TimerWheel::new(clock.tick),
            clock,
            pool: BufferPool::new(POOL_BYTES),
        }
    }

    /// Sets a connection's one timer to `due`, replacing the one it had. Needed only when
    /// the deadline may move earlier; activity moves it later and is caught up lazily when
    /// the timer fires.
    pub fn arm(&mut self, link: &mut Link, r: ConnRef, due: u64) {
        let old = std::mem::replace(&mut link.timer, TimerId::NONE);
        if !old.is_none() {
            self.wheel.cancel(old);
        }
        link.timer = self.wheel.insert(due, r);
    }

    /// Cancels a connection's timer; it is going away.
    pub fn disarm(&mut self, link: &mut Link) {
        let old = std::mem::replace(&mut link.timer, TimerId::NONE);
        if !old.is_none() {
            self.wheel.cancel(old);
        }
    }

    /// Starts a connection's lingering close: flush, half-close, wait for the peer's EOF.
    /// The linger timeout counts from the last progress.
    pub fn linger(&mut self, link: &mut Link, r: ConnRef, reason: crate::CloseReason, ticks: u32) {
        if link.closing.is_none() {
            link.closing = Some(reason);
            link.last_active = self.clock.tick32();
            self.arm(link, r, deadline(link.last_active, ticks));
        }
    }
}

/// Live counts kept up to date on state transitions.
#[derive(Default)]
pub struct Gauges {
    /// Connections on the client listener, in any state.
    pub clients: u64,
    pub users: u64,
    pub inner: u64,
    pub http: u64,
    /// Client connections by `Transport`.
    pub transports: [u64; 4],
}

/// One token for the auth webhook to check.
pub struct AuthJob {
    pub ticket: ConnRef,
    pub token: String,
    pub remote: Option<SocketAddr>,
}

/// How tokens are checked: a function on the reactor thread, or the webhook upstream.
pub(crate) enum Auth {
    Function(AuthFn),
    /// Requests for the webhook, collected during the turn and handed to it after dispatch.
    Webhook(Vec<AuthJob>),
}

pub(crate) struct Ctx {
    pub core: Core,
    pub limits: Limits,
    pub seq: SeqClock,
    pub counters: Counters,
    pub gauges: Gauges,
    pub registry: Registry,
    pub hooks: Hooks,
    pub auth: Auth,
    /// Set once shutting down: the tick by which every connection is closed.
    pub shutdown_deadline: Option<u64>,
    /// Cluster mode: the other nodes, through the broker threads.
    pub cluster: Option<Cluster>,
    /// Offline history in memory (`HistorySize` > 0 on a single node).
    pub history: Option<Memory>,
}

impl Ctx {
    pub fn new(config: &Config, auth: Auth, hooks: Hooks) -> Self {
        Ctx {
            core: Core::new(),
            limits: Limits::new(config),
            seq: SeqClock::default(),
            counters: Counters::default(),
            gauges: Gauges::default(),
            registry: Registry::default(),
            hooks,
            auth,
            shutdown_deadline: None,
            cluster: None,
            // In cluster mode the history is in Redis.
            history: (config.history_size > 0 && config.redis.is_none()).then(|| {
                let ttl = u64::from(secs_to_ticks(config.history_ttl));
                Memory::new(config.history_size, ttl, config.history_memory)
            }),
        }
    }

    /// The next server `seq`.
    pub fn next_seq(&mut self) -> i64 {
        self.seq.next(self.core.clock.unix_ms)
    }

    /// How long a closing connection may go without progress: while its output drains
    /// during a shutdown, up to `ShutdownTimeout`; otherwise, and once its last byte is out,
    /// a short linger for the peer's EOF.
    pub fn linger_ticks(&self, link: &Link) -> u32 {
        if self.shutdown_deadline.is_some() && !link.shut_down() {
            self.limits.shutdown_ticks
        } else {
            LINGER_TICKS
        }
    }
}
