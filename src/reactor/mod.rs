//! The reactor: one thread, one `mio::Poll`, connections in tables by kind.
//!
//! A turn is: poll → dispatch each event (accept; read and process frames or HTTP requests;
//! write) → run the handle's commands → expire timers (reading first) → settle
//! authentications → reap the connections doomed during the turn → flush every connection
//! that got output, with one write each. Handlers never free a connection: they return a
//! `Step` or doom it, and only `reap` takes connections out of their tables, so a key stays
//! valid for the whole turn. See doc/LIFECYCLE.md for the life of a connection.

mod accept;
mod api;
mod buffer;
mod clients;
mod cluster;
mod commands;
mod conn;
mod conns;
mod ctx;
mod deliver;
pub(crate) mod http;
mod lifecycle;
mod link;
mod registry;
mod session;
mod timer;
pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::handle::{self, Commands, Handle};
use crate::stats::Stats;
use crate::upstream::{Verdict, Webhook};
use api::Api;
use clients::Clients;
use conn::ClientConn;
use ctx::Ctx;
use deliver::PushBuffers;
use http::HttpConn;

pub use conn::{CloseReason, Transport};
pub(crate) use conns::{ConnRef, HasLink, Kind, Table};
pub(crate) use ctx::{
    Auth, AuthFn, AuthJob, Core, Hooks, MessageHook, ReloadFn, UidHook, deadline, secs_to_ticks,
};
pub use link::{Link, feed};
pub use registry::Registry;
pub use timer::{TimerId, TimerWheel};

/// The listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Clients and inner connections, speaking the Plex protocol over TCP.
    Plex = 0,
    /// The HTTP API.
    Http = 1,
    /// The Plex protocol over TLS.
    Tls = 2,
    /// The Plex protocol's messages over WebSocket (over TLS when a certificate is set).
    Ws = 3,
}

impl Side {
    const ALL: [Side; 4] = [Side::Plex, Side::Http, Side::Tls, Side::Ws];

    fn token(self) -> Token {
        ConnRef::fixed(self as usize)
    }
}

// The reactor's own tokens (listeners: their `Side`); connections' tokens are `ConnRef`s.
const WAKER: Token = ConnRef::fixed(4);
const SIGNALS: Token = ConnRef::fixed(5);

/// Shared read buffer: the most one `read` takes from a socket.
const SCRATCH_LEN: usize = 64 * 1024;
/// Bytes read from one connection per readiness before the others get their turn.
const READ_BUDGET: usize = 64 * 1024;

/// How tokens are checked: a function, or the reactor's own webhook client.
pub(crate) enum AuthSource {
    Function(AuthFn),
    Webhook(Box<Webhook>),
}

/// What a server listens on: each side's listener, and the TLS settings of its TLS and wss
/// listeners.
pub(crate) struct Listeners {
    pub bound: Vec<(Side, TcpListener)>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub(crate) struct Reactor {
    poll: Poll,
    events: Events,
    /// Indexed by `Side`; `None` when not configured, and once shutting down.
    listeners: [Option<TcpListener>; 4],
    addrs: [Option<SocketAddr>; 4],
    /// For the TLS listener and wss; replaced on SIGHUP.
    tls: Option<Arc<rustls::ServerConfig>>,
    ctx: Ctx,
    clients: Table<ClientConn>,
    https: Table<HttpConn>,
    webhook: Option<Box<Webhook>>,
    /// Shared read buffer: a connection keeps only the bytes of a partial frame or request.
    scratch: Vec<u8>,
    push: PushBuffers,
    /// Decisions on pending authentications (the handle, the webhook), applied after dispatch.
    verdicts: Vec<(ConnRef, Verdict)>,
    /// Connections whose read budget ran out with data possibly left, or whose reading
    /// resumes: read again before the next poll sleeps.
    unread: Vec<ConnRef>,
    expired: Vec<ConnRef>,
    reaped_clients: Vec<(usize, ClientConn)>,
    reaped_https: Vec<(usize, HttpConn)>,
    /// `None` once the server has finished: the handle then reports `Stopped`.
    commands: Option<Commands>,
    commands_left: bool,
    /// The cluster's broker may have events for the reactor.
    cluster_left: bool,
    signals: Option<Signals>,
    /// Accepting is paused until this tick after running out of file descriptors.
    accept_paused_until: Option<u64>,
    /// The configuration the server started with, and the last one SIGHUP applied: what a
    /// reload changes is told against each.
    started: Box<Config>,
    applied: Box<Config>,
}

impl Reactor {
    /// A reactor serving `listeners` (indexed by `Side`), and the handle that talks to it.
    pub fn new(
        config: &Config,
        auth: AuthSource,
        hooks: Hooks,
        listeners: Listeners,
        signals: Option<Signals>,
    ) -> io::Result<(Self, Handle)> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        let (mut bound, mut addrs) = (<[Option<TcpListener>; 4]>::default(), [None; 4]);
        for (side, mut listener) in listeners.bound {
            registry.register(&mut listener, side.token(), Interest::READABLE)?;
            addrs[side as usize] = Some(listener.local_addr()?);
            bound[side as usize] = Some(listener);
        }
        let mut signals = signals;
        if let Some(signals) = &mut signals {
            registry.register(signals, SIGNALS, Interest::READABLE)?;
        }
        let (auth, webhook) = match auth {
            AuthSource::Function(f) => (Auth::Function(f), None),
            AuthSource::Webhook(w) => (Auth::Webhook(Vec::new()), Some(w)),
        };
        let waker = Arc::new(Waker::new(registry, WAKER)?);
        let (handle, commands) = handle::channel(waker.clone());
        let mut ctx = Ctx::new(config, auth, hooks);
        if config.redis.is_some() {
            let advertise =
                (config.advertise.clone()).unwrap_or_else(|| config.outer_servers[0].clone());
            ctx.cluster = Some(cluster::Cluster::start(config, advertise, waker)?);
        }

        let reactor = Reactor {
            poll,
            events: Events::with_capacity(1024),
            listeners: bound,
            addrs,
            tls: listeners.tls,
            ctx,
            clients: Table::new(Kind::Client),
            https: Table::new(Kind::Http),
            webhook,
            scratch: vec![0; SCRATCH_LEN],
            push: PushBuffers::default(),
            verdicts: Vec::new(),
            unread: Vec::new(),
            expired: Vec::new(),
            reaped_clients: Vec::new(),
            reaped_https: Vec::new(),
            commands: Some(commands),
            commands_left: false,
            cluster_left: false,
            signals,
            accept_paused_until: None,
            started: Box::new(config.clone()),
            applied: Box::new(config.clone()),
        };
        Ok((reactor, handle))
    }

    pub fn poll(&self) -> &Poll {
        &self.poll
    }

    /// The address a listener is bound to, if the server has that listener.
    pub fn local_addr(&self, side: Side) -> Option<SocketAddr> {
        self.addrs[side as usize]
    }

    /// The server has shut down and closed every connection.
    pub fn is_finished(&self) -> bool {
        self.commands.is_none()
    }

    /// Runs one turn, waiting at most `timeout` (`None`: until something happens).
    pub fn turn(&mut self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        let Some(commands) = &self.commands else {
            return Ok(());
        };
        commands.driven_by_current_thread();
        let timeout = self.poll_timeout(timeout);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.ctx.core.clock.update();

        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            self.dispatch(event);
        }
        self.events = events;

        if self.commands_left {
            self.run_commands();
        }
        if self.cluster_left {
            self.cluster_events();
        }
        self.resume_unread();
        self.retry_accepts();
        self.expire_timers();
        if let Some(history) = &mut self.ctx.history {
            history.expire(self.ctx.core.clock.tick);
        }
        if let Some(cluster) = &mut self.ctx.cluster {
            let gauges = &self.ctx.gauges;
            cluster.report_load(self.ctx.core.clock.tick, gauges.clients, gauges.users);
        }
        self.settle_auth();
        self.reap();
        self.flush();
        self.progress_shutdown();
        Ok(())
    }

    /// How long the next poll may sleep: until the caller's limit, the next timer, the end
    /// of an accept pause, or not at all when work is left over from this turn.
    fn poll_timeout(&self, limit: Option<std::time::Duration>) -> Option<std::time::Duration> {
        if self.commands_left
            || !self.unread.is_empty()
            || !self.verdicts.is_empty()
            || self.clients.has_doomed()
            || self.https.has_doomed()
            || self.webhook.as_ref().is_some_and(|w| w.has_doomed())
        {
            return Some(std::time::Duration::ZERO);
        }
        let clock = &self.ctx.core.clock;
        let next_tick = (self.ctx.core.wheel.next_expiration().into_iter())
            .chain(self.accept_paused_until)
            .chain(self.ctx.shutdown_deadline)
            .min();
        let timer = next_tick.map(|tick| clock.until_tick(tick.max(clock.tick + 1)));
        match (limit, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn dispatch(&mut self, event: &Event) {
        match event.token() {
            token if ConnRef::from_token(token).kind() == Kind::Fixed && token.0 < WAKER.0 => {
                self.accept(Side::ALL[ConnRef::from_token(token).key()]);
            }
            // The handle and the cluster's broker share the waker: look at both.
            WAKER => {
                self.commands_left = true;
                self.cluster_left = self.ctx.cluster.is_some();
            }
            SIGNALS => self.on_signal(),
            token => {
                let r = ConnRef::from_token(token);
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                let writable = event.is_writable();
                match r.kind() {
                    Kind::Client => {
                        if readable {
                            self.read_client(r);
                        }
                        if writable && self.clients.get(r).is_some() {
                            let registry = self.poll.registry();
                            self.clients.flush(r.key(), registry, &mut self.ctx.core);
                        }
                    }
                    Kind::Http => {
                        if readable {
                            self.read_http(r);
                        }
                        if writable && self.https.get(r).is_some() {
                            self.flush_http(r);
                        }
                    }
                    Kind::Upstream => {
                        if let Some(webhook) = &mut self.webhook {
                            webhook.on_event(
                                r,
                                event,
                                &mut self.ctx.core,
                                self.poll.registry(),
                                &mut self.scratch,
                                &mut self.verdicts,
                            );
                        }
                    }
                    Kind::Fixed => {}
                }
            }
        }
    }

    /// Reads a client connection until its socket is drained or its budget is spent, and
    /// processes what arrived.
    fn read_client(&mut self, r: ConnRef) {
        let tls_handshaking = self.clients.get(r).is_some_and(|c| c.link.is_handshaking());
        let mut budget = READ_BUDGET;
        while let Some(n) = self.clients.read(r, &mut self.scratch, &mut self.ctx.core) {
            // A closing connection's input is discarded: it only waits for EOF.
            if self.clients[r.key()].link.closing.is_none() {
                let mut clients = Clients {
                    ctx: &mut self.ctx,
                    table: &mut self.clients,
                    push: &mut self.push,
                };
                clients.ingest(r.key(), &mut self.scratch[..n]);
            }
            if n >= budget {
                self.unread.push(r);
                break;
            }
            budget -= n;
        }
        let Some(conn) = self.clients.get(r) else {
            return;
        };
        if tls_handshaking && !conn.link.is_handshaking() {
            // The TLS handshake is over: the timer was set for its timeout, and the auth
            // timeout (or the WebSocket upgrade's) may be due sooner.
            let (due, _) = session::timeout_of(&self.ctx, conn);
            self.ctx.core.arm(&mut conn.link, r, due);
        }
        // TLS may have handshake records or an alert to send.
        if conn.link.wants_write() {
            self.clients.mark_dirty(r.key());
        }
    }

    /// Reads an HTTP connection, unless its reading is paused for its unwritten responses.
    fn read_http(&mut self, r: ConnRef) {
        let mut budget = READ_BUDGET;
        while self.https.get(r).is_some_and(|c| !c.link.read_paused())
            && let Some(n) = self.https.read(r, &mut self.scratch, &mut self.ctx.core)
        {
            if self.https[r.key()].link.closing.is_none() {
                self.ingest_requests(r.key(), n);
            }
            if n >= budget {
                self.unread.push(r);
                return;
            }
            budget -= n;
        }
    }

    /// Answers the requests in the first `n` bytes of the read buffer (after what the
    /// connection kept).
    fn ingest_requests(&mut self, key: usize, n: usize) {
        let mut api = Api {
            conn: self.https.ref_of(key),
            ctx: &mut self.ctx,
            clients: &mut self.clients,
            push: &mut self.push,
            stats: &stats,
        };
        http::ingest(&mut api, &mut self.https, key, &mut self.scratch[..n]);
    }

    fn flush_http(&mut self, r: ConnRef) {
        let flushed = self
            .https
            .flush(r.key(), self.poll.registry(), &mut self.ctx.core);
        if flushed == link::Flushed::Done && self.https[r.key()].link.read_paused() {
            self.resume_http(r);
        }
    }

    /// An HTTP connection's responses drained: answer what it already sent, then read on.
    fn resume_http(&mut self, r: ConnRef) {
        let Some(conn) = self.https.get(r).filter(|c| !c.waiting) else {
            return;
        };
        conn.link.set_read_paused(false);
        self.ingest_requests(r.key(), 0);
        if self.https.get(r).is_some_and(|c| !c.link.read_paused()) {
            self.read_http(r);
        }
    }

    /// Connections that had more to read when their budget ran out get another go.
    fn resume_unread(&mut self) {
        let unread = std::mem::take(&mut self.unread);
        for &r in &unread {
            match r.kind() {
                Kind::Client => self.read_client(r),
                Kind::Http => {
                    if self.https.get(r).is_some_and(|c| c.link.read_paused()) {
                        self.resume_http(r);
                    } else {
                        self.read_http(r);
                    }
                }
                _ => {}
            }
        }
        // Reads above may have queued more; keep their entries, drop the handled ones.
        let mut rest = std::mem::take(&mut self.unread);
        self.unread = unread;
        self.unread.clear();
        self.unread.append(&mut rest);
    }

    fn expire_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        let now = self.ctx.core.clock.tick;
        self.ctx.core.wheel.advance(now, &mut expired);
        for r in expired.drain(..) {
            match r.kind() {
                Kind::Client => self.client_timer(r),
                Kind::Http => self.http_timer(r),
                Kind::Upstream => {
                    if let Some(webhook) = &mut self.webhook {
                        webhook.on_timer(r, &mut self.verdicts);
                    }
                }
                Kind::Fixed => {}
            }
        }
        self.expired = expired;
    }

    /// A client's timer fired. Read before you judge: a frame that arrived in time but is
    /// still in the socket because the reactor was busy counts.
    fn client_timer(&mut self, r: ConnRef) {
        if self.clients.timer_fired(r).is_none() {
            return;
        }
        self.read_client(r);
        let Some(conn) = self.clients.get(r) else {
            return;
        };
        if !conn.link.timer.is_none() {
            return; // what it sent set a new deadline (it authenticated)
        }
        if conn.over_soft_since != 0 && conn.link.pending() <= self.ctx.limits.soft_pending {
            conn.over_soft_since = 0; // it caught up
        }
        let (due, reason) = session::timeout_of(&self.ctx, conn);
        if due > self.ctx.core.clock.tick {
            // Activity since the timer was set: sleep again for the remainder.
            self.ctx.core.arm(&mut conn.link, r, due);
        } else {
            if reason == CloseReason::SlowConsumer {
                warn!(
                    "{}: over {} bytes unread for {}s; closing slow consumer",
                    Table::<ClientConn>::name(r),
                    self.ctx.limits.soft_pending,
                    self.ctx.limits.soft_ticks / 10
                );
            }
            self.clients.doom(r.key(), reason);
        }
    }

    fn http_timer(&mut self, r: ConnRef) {
        if self.https.timer_fired(r).is_none() {
            return;
        }
        self.read_http(r);
        let Some(conn) = self.https.get(r) else {
            return;
        };
        if !conn.link.timer.is_none() {
            return;
        }
        let (ticks, reason) = match conn.link.closing {
            Some(reason) => (self.ctx.linger_ticks(&conn.link), reason),
            None => (self.ctx.limits.http_idle_ticks, CloseReason::IdleTimeout),
        };
        let due = deadline(conn.link.last_active, ticks);
        if due > self.ctx.core.clock.tick {
            self.ctx.core.arm(&mut conn.link, r, due);
        } else {
            self.https.doom(r.key(), reason);
        }
    }

    /// Hands this turn's webhook requests to the webhook, then applies every decision that
    /// came in (from the handle or the webhook) to the connection it was asked for.
    fn settle_auth(&mut self) {
        if let (Some(webhook), ctx::Auth::Webhook(jobs)) = (&mut self.webhook, &mut self.ctx.auth)
            && !jobs.is_empty()
        {
            let registry = self.poll.registry();
            webhook.submit(
                jobs.drain(..),
                &mut self.ctx.core,
                registry,
                &mut self.verdicts,
            );
        }
        for (ticket, verdict) in std::mem::take(&mut self.verdicts) {
            let Some(conn) = self
                .clients
                .get(ticket)
                .filter(|c| c.link.closing.is_none())
            else {
                debug!("auth decision for a connection that has gone; ignored");
                continue;
            };
            let step = session::finish_auth(&mut self.ctx, conn, ticket, verdict);
            let mut clients = Clients {
                ctx: &mut self.ctx,
                table: &mut self.clients,
                push: &mut self.push,
            };
            clients.apply(ticket.key(), step);
            clients.settle_output(ticket.key());
        }
    }

    /// Frees the connections doomed during the turn: timer, registration, registry entry and
    /// buffers go, counters and hooks hear of it.
    fn reap(&mut self) {
        let registry = self.poll.registry();
        let ctx = &mut self.ctx;
        self.clients.take_doomed(&mut self.reaped_clients);
        for (key, mut conn) in self.reaped_clients.drain(..) {
            let reason = conn
                .link
                .doomed
                .expect("only doomed connections are reaped");
            clients::goodbye(&mut conn, reason, &mut ctx.core.pool);
            release(ctx, registry, &mut conn.link);
            ctx.counters.closed(reason);
            ctx.gauges.clients -= 1;
            ctx.gauges.transports[conn.transport() as usize] -= 1;
            match &conn.state {
                &conn::State::Unauthenticated { pending, .. } => {
                    debug!("c#{key}: closed ({reason})");
                    if pending && let Some(webhook) = &mut self.webhook {
                        // Its question may still wait for a connection to the service:
                        // asking it would only delay the clients that are still there.
                        webhook.forget(ConnRef::new(Kind::Client, key, conn.link.generation));
                    }
                }
                conn::State::Inner => {
                    ctx.gauges.inner -= 1;
                    info!("c#{key}: inner connection closed ({reason})");
                }
                conn::State::User { .. } | conn::State::Resuming(_) => {
                    let uid = conn.uid().expect("a user's uid").clone();
                    ctx.gauges.users -= 1;
                    debug!("c#{key}: uid {uid:?} closed ({reason})");
                    let offline = ctx.registry.remove(&uid, key as u32);
                    if let Some(cluster) = &mut ctx.cluster {
                        cluster.presence(&uid, ctx.registry.keys(&uid).len());
                        let r = ConnRef::new(Kind::Client, key, conn.link.generation);
                        cluster.replayed.forget(r);
                    }
                    if offline && let Some(hook) = &mut ctx.hooks.on_offline {
                        hook(&uid);
                    }
                }
            }
        }
        self.https.take_doomed(&mut self.reaped_https);
        for (key, mut conn) in self.reaped_https.drain(..) {
            let reason = conn
                .link
                .doomed
                .expect("only doomed connections are reaped");
            release(ctx, registry, &mut conn.link);
            ctx.counters.http_closed(reason);
            ctx.gauges.http -= 1;
            debug!("h#{key}: closed ({reason})");
        }
        if let Some(webhook) = &mut self.webhook {
            webhook.reap(&mut ctx.core, registry, &mut self.verdicts);
        }
    }

    /// Writes every connection that got output this turn, once each.
    fn flush(&mut self) {
        let registry = self.poll.registry();
        let core = &mut self.ctx.core;
        let mut resume = Vec::new();
        self.clients.flush_dirty(registry, core, &mut resume);
        self.https.flush_dirty(registry, core, &mut resume);
        if let Some(webhook) = &mut self.webhook {
            webhook.flush(core, registry);
        }
        self.unread.extend(resume);
    }
}

/// Gives a reaped connection's timer, registration and buffers back.
fn release(ctx: &mut Ctx, registry: &mio::Registry, link: &mut Link) {
    ctx.core.disarm(link);
    if let Err(e) = registry.deregister(&mut link.stream) {
        debug!("deregister: {e}");
    }
    link.release(&mut ctx.core.pool);
}

/// A snapshot of the server's figures.
fn stats(ctx: &Ctx, clients: &Table<ClientConn>) -> Stats {
    let buffered = clients.iter().map(|(_, c)| c.link.buffered() as u64).sum();
    Stats::from_counters(
        &ctx.counters,
        crate::stats::Gauges {
            connections: ctx.gauges.clients,
            users: ctx.gauges.users,
            inner: ctx.gauges.inner,
            uids: ctx.registry.uids() as u64,
            http_connections: ctx.gauges.http,
            transports: ctx.gauges.transports,
            cluster_up: ctx.cluster.as_ref().map(|c| c.up),
            unrouted: ctx.cluster.as_ref().map_or(0, |c| c.unrouted),
            history: ctx
                .history
                .as_ref()
                .map(|h| (h.bytes() as u64, h.evicted, h.expired)),
            buffered_bytes: buffered,
        },
        ctx.core.clock.uptime().as_secs(),
    )
}
