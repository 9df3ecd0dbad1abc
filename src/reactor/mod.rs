//! The reactor: one thread, one `mio::Poll`, connections in tables by kind.
//!
//! A turn is: poll → dispatch each event (accept; read and process frames or HTTP requests;
//! write) → run the handle's commands → expire timers (reading first) → settle
//! authentications → reap the connections doomed during the turn → flush every connection
//! that got output, with one write each. Handlers never free a connection: they return a
//! `Step` or doom it, and only `reap` takes connections out of their tables, so a key stays
//! valid for the whole turn. See doc/LIFECYCLE.md for the life of a connection.

mod buffer;
mod conn;
mod conns;
mod ctx;
mod deliver;
pub(crate) mod http;
mod link;
mod registry;
mod session;
mod timer;

use std::io::{self, Read};
use std::net::SocketAddr;

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::handle::{self, Command, Commands, Handle};
use crate::stats::Stats;
use crate::upstream::{Verdict, Webhook};
use conn::ClientConn;
use ctx::Ctx;
use deliver::PushBuffers;
use http::{Api, HttpConn};
use session::Step;

pub use conn::CloseReason;
pub(crate) use conns::{ConnRef, HasLink, Kind, Table};
pub(crate) use ctx::{
    Auth, AuthFn, AuthJob, Core, Hooks, MessageHook, UidHook, deadline, secs_to_ticks,
};
pub use link::{Link, feed};
pub use registry::Registry;
pub use timer::{TimerId, TimerWheel};

/// The two listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Clients and inner connections, speaking the Plex protocol.
    Plex = 0,
    /// The HTTP API.
    Http = 1,
}

// The reactor's own tokens; connections' tokens are `ConnRef`s.
const PLEX_LISTENER: Token = ConnRef::fixed(Side::Plex as usize);
const HTTP_LISTENER: Token = ConnRef::fixed(Side::Http as usize);
const WAKER: Token = ConnRef::fixed(2);
const SIGNALS: Token = ConnRef::fixed(3);

/// Shared read buffer: the most one `read` takes from a socket.
const SCRATCH_LEN: usize = 64 * 1024;
/// Bytes read from one connection per readiness before the others get their turn.
const READ_BUDGET: usize = 64 * 1024;
/// Handle commands run per turn before I/O gets its turn again.
const COMMAND_BUDGET: usize = 4096;
/// Pause after the process runs out of descriptors, before accepting again.
const ACCEPT_PAUSE_TICKS: u64 = 1;

/// How tokens are checked: a function, or the reactor's own webhook client.
pub(crate) enum AuthSource {
    Function(AuthFn),
    Webhook(Box<Webhook>),
}

pub(crate) struct Reactor {
    poll: Poll,
    events: Events,
    /// Indexed by `Side`; `None` once shutting down: no more accepts.
    listeners: [Option<TcpListener>; 2],
    addrs: [SocketAddr; 2],
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
    signals: Option<Signals>,
    /// Accepting is paused until this tick after running out of file descriptors.
    accept_paused_until: Option<u64>,
}

impl Reactor {
    /// A reactor serving `listeners` (indexed by `Side`), and the handle that talks to it.
    pub fn new(
        config: &Config,
        auth: AuthSource,
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
        let (auth, webhook) = match auth {
            AuthSource::Function(f) => (Auth::Function(f), None),
            AuthSource::Webhook(w) => (Auth::Webhook(Vec::new()), Some(w)),
        };
        let reactor = Reactor {
            poll,
            events: Events::with_capacity(1024),
            listeners: [Some(plex), Some(http)],
            addrs,
            ctx: Ctx::new(config, auth, hooks),
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
            signals,
            accept_paused_until: None,
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
        self.resume_unread();
        self.retry_accepts();
        self.expire_timers();
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
            PLEX_LISTENER => {
                self.accept(Side::Plex);
            }
            HTTP_LISTENER => {
                self.accept(Side::Http);
            }
            WAKER => self.commands_left = true,
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
        let key = r.key();
        let mut budget = READ_BUDGET;
        while let Some(conn) = self.clients.get(r) {
            match conn.link.stream.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = conn.link.closing.unwrap_or(CloseReason::PeerClosed);
                    self.clients.doom(key, reason);
                }
                Ok(n) => {
                    // A closing connection's input is discarded: it only waits for EOF.
                    if conn.link.closing.is_none() {
                        let bytes = &self.scratch[..n];
                        ingest_frames(&mut self.ctx, &mut self.clients, &mut self.push, key, bytes);
                    }
                    if n >= budget {
                        self.unread.push(r);
                        return;
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read: {e}", Table::<ClientConn>::name(r));
                    self.clients.doom(key, CloseReason::IoError);
                }
            }
        }
    }

    /// Reads an HTTP connection, unless its reading is paused for its unwritten responses.
    fn read_http(&mut self, r: ConnRef) {
        let key = r.key();
        let mut budget = READ_BUDGET;
        while let Some(conn) = self.https.get(r) {
            if conn.link.read_paused {
                return;
            }
            match conn.link.stream.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = conn.link.closing.unwrap_or(CloseReason::PeerClosed);
                    self.https.doom(key, reason);
                }
                Ok(n) => {
                    if conn.link.closing.is_none() {
                        let bytes = &self.scratch[..n];
                        ingest_requests(
                            &mut self.ctx,
                            &mut self.clients,
                            &mut self.https,
                            &mut self.push,
                            key,
                            bytes,
                        );
                    }
                    if n >= budget {
                        self.unread.push(r);
                        return;
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read: {e}", Table::<HttpConn>::name(r));
                    self.https.doom(key, CloseReason::IoError);
                }
            }
        }
    }

    fn flush_http(&mut self, r: ConnRef) {
        let flushed = self
            .https
            .flush(r.key(), self.poll.registry(), &mut self.ctx.core);
        if flushed == link::Flushed::Done && self.https[r.key()].link.read_paused {
            self.resume_http(r);
        }
    }

    /// An HTTP connection's responses drained: answer what it already sent, then read on.
    fn resume_http(&mut self, r: ConnRef) {
        let Some(conn) = self.https.get(r) else {
            return;
        };
        conn.link.read_paused = false;
        ingest_requests(
            &mut self.ctx,
            &mut self.clients,
            &mut self.https,
            &mut self.push,
            r.key(),
            &[],
        );
        if self.https.get(r).is_some_and(|c| !c.link.read_paused) {
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
                    if self.https.get(r).is_some_and(|c| c.link.read_paused) {
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

    /// Accepts every pending connection; returns whether it stopped for lack of descriptors
    /// or memory (accepting is then paused).
    fn accept(&mut self, side: Side) -> bool {
        // Connections are stamped with a fresh clock: a busy turn must not age them.
        self.ctx.core.clock.update();
        loop {
            let Some(listener) = &self.listeners[side as usize] else {
                return false;
            };
            match listener.accept() {
                Ok((stream, addr)) => match side {
                    Side::Plex => self.admit_client(stream, addr),
                    Side::Http => self.admit_http(stream, addr),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => debug!("accept: {e}"),
                Err(e) => {
                    // Out of descriptors or memory: the pending connections stay in the backlog;
                    // retry after a pause rather than spin on an ever-readable listener.
                    if self.accept_paused_until.is_none() {
                        warn!("accept failed, pausing accepts: {e}");
                    }
                    self.accept_paused_until = Some(self.ctx.core.clock.tick + ACCEPT_PAUSE_TICKS);
                    return true;
                }
            }
        }
    }

    fn retry_accepts(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|t| t <= self.ctx.core.clock.tick)
        {
            // Both listeners are retried; the pause ends when neither runs short.
            let saturated = self.accept(Side::Plex) | self.accept(Side::Http);
            if !saturated {
                self.accept_paused_until = None;
                info!("accepting again");
            }
        }
    }

    fn admit_client(&mut self, stream: TcpStream, addr: SocketAddr) {
        let cap = self.ctx.limits.max_connection;
        if cap > 0 && self.ctx.gauges.clients as usize >= cap {
            self.ctx.counters.rejected += 1;
            debug!("{addr}: refused, client connection cap of {cap} reached");
            return;
        }
        let socket = socket2::SockRef::from(&stream);
        // Pushes are small and latency matters more than packet count.
        if let Err(e) = socket.set_tcp_nodelay(true) {
            debug!("{addr}: set_nodelay: {e}");
        }
        // A client that never reads cannot park more than this in kernel memory.
        let send_buffer = self.ctx.limits.socket_send_buffer;
        if send_buffer > 0
            && let Err(e) = socket.set_send_buffer_size(send_buffer)
        {
            debug!("{addr}: SO_SNDBUF: {e}");
        }
        let Some(r) = self.register(Kind::Client, stream, addr) else {
            return;
        };
        self.ctx.counters.accepted += 1;
        self.ctx.gauges.clients += 1;
        debug!("{addr}: accepted as {}", Table::<ClientConn>::name(r));
    }

    fn admit_http(&mut self, stream: TcpStream, addr: SocketAddr) {
        let cap = self.ctx.limits.max_http_connections;
        if self.https.len() >= cap && !self.evict_http() {
            self.ctx.counters.http_rejected += 1;
            debug!("{addr}: refused, HTTP connection cap of {cap} reached");
            return;
        }
        if let Some(r) = self.register(Kind::Http, stream, addr) {
            self.ctx.gauges.http += 1;
            debug!("{addr}: accepted as {}", Table::<HttpConn>::name(r));
        }
    }

    /// Makes room at `MaxHttpConnections` by closing the connection that has shown no bearer
    /// token and been quiet longest, preferring one with nothing in flight: the public
    /// `/plex/v1/host` can never hold every slot and lock back-ends out.
    fn evict_http(&mut self) -> bool {
        let victim = (self.https.iter())
            .filter(|(_, c)| !c.trusted && c.link.doomed.is_none())
            .min_by_key(|(_, c)| {
                let busy = !c.link.input.is_empty() || c.link.pending() > 0;
                (busy, c.link.last_active)
            })
            .map(|(key, _)| key);
        match victim {
            Some(key) => {
                debug!("h#{key}: evicted to make room for a new connection");
                self.https.doom(key, CloseReason::Evicted);
                true
            }
            None => false,
        }
    }

    /// Inserts an accepted connection into its table and sets its first timer.
    fn register(&mut self, kind: Kind, stream: TcpStream, addr: SocketAddr) -> Option<ConnRef> {
        let now = self.ctx.core.clock.tick32();
        let registry = self.poll.registry();
        let r = match kind {
            Kind::Client => self.clients.next_ref(),
            _ => self.https.next_ref(),
        };
        let mut link = Link::new(stream, r.generation(), now);
        if let Err(e) = registry.register(&mut link.stream, r.token(), Interest::READABLE) {
            error!("{addr}: cannot register connection: {e}");
            return None;
        }
        let core = &mut self.ctx.core;
        match kind {
            Kind::Client => {
                let mut conn = ClientConn::new(link);
                let (due, _) = session::timeout_of(&self.ctx, &conn);
                self.ctx.core.arm(&mut conn.link, r, due);
                self.clients.insert(conn);
            }
            _ => {
                core.arm(&mut link, r, deadline(now, self.ctx.limits.http_idle_ticks));
                self.https.insert(HttpConn::new(link));
            }
        }
        Some(r)
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
            apply(
                &mut self.ctx,
                &mut self.clients,
                &mut self.push,
                ticket.key(),
                step,
            );
            settle_output(&mut self.clients, ticket.key());
        }
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
        let (ctx, clients, frame) = (&mut self.ctx, &mut self.clients, &mut self.push.frame);
        match command {
            Command::Push { uids, uri, body } => {
                if let Err(e) = deliver::push(ctx, clients, frame, &uids, &uri, &body) {
                    ctx.counters.refused += 1;
                    warn!("handle: push to {uids:?} refused: {e}");
                }
            }
            Command::Broadcast { uri, body } => {
                if let Err(e) = deliver::broadcast(ctx, clients, frame, &uri, &body) {
                    ctx.counters.refused += 1;
                    warn!("handle: broadcast refused: {e}");
                }
            }
            Command::Kick { uid, reply } => {
                let _ = reply.send(deliver::kick(ctx, clients, &uid));
            }
            Command::Online { uids, reply } => {
                let _ = reply.send(
                    uids.iter()
                        .map(|u| deliver::online(ctx, clients, u))
                        .collect(),
                );
            }
            Command::Stats { reply } => {
                let _ = reply.send(stats(ctx, clients));
            }
            Command::CompleteAuth { ticket, uid } => {
                self.verdicts
                    .push((ticket.0, uid.ok_or("rejected by the auth function")));
            }
            Command::Shutdown => self.begin_shutdown(),
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
            release(ctx, registry, &mut conn.link);
            ctx.counters.closed(reason);
            ctx.gauges.clients -= 1;
            match conn.state {
                conn::State::Unauthenticated { pending, .. } => {
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
                conn::State::User { uid } => {
                    ctx.gauges.users -= 1;
                    debug!("c#{key}: uid {uid:?} closed ({reason})");
                    if ctx.registry.remove(&uid, key as u32)
                        && let Some(hook) = &mut ctx.hooks.on_offline
                    {
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

    fn on_signal(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if self.ctx.shutdown_deadline.is_some() {
                warn!("signal {signal} during shutdown: closing every connection now");
                self.ctx.shutdown_deadline = Some(self.ctx.core.clock.tick);
            } else {
                info!("signal {signal}: shutting down");
                self.begin_shutdown();
            }
        }
    }

    /// Stops accepting and closes every connection that has nothing left to write; the rest
    /// close once their output is flushed, or at the shutdown deadline.
    pub(crate) fn begin_shutdown(&mut self) {
        let ctx = &mut self.ctx;
        if ctx.shutdown_deadline.is_some() {
            return;
        }
        ctx.shutdown_deadline = Some(ctx.core.clock.tick + u64::from(ctx.limits.shutdown_ticks));
        for listener in &mut self.listeners {
            if let Some(mut listener) = listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
        }
        self.accept_paused_until = None;
        let ticks = ctx.limits.shutdown_ticks;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let r = self.clients.ref_of(key);
            let link = &mut self.clients[key].link;
            if link.pending() == 0 {
                self.clients.doom(key, CloseReason::Shutdown);
            } else {
                ctx.core.linger(link, r, CloseReason::Shutdown, ticks);
                self.clients.mark_dirty(key);
            }
        }
        let keys: Vec<usize> = self.https.iter().map(|(key, _)| key).collect();
        for key in keys {
            let r = self.https.ref_of(key);
            let link = &mut self.https[key].link;
            if link.pending() == 0 {
                self.https.doom(key, CloseReason::Shutdown);
            } else {
                ctx.core.linger(link, r, CloseReason::Shutdown, ticks);
                self.https.mark_dirty(key);
            }
        }
        if let Some(webhook) = &mut self.webhook {
            webhook.shutdown(&mut self.verdicts);
        }
        info!(
            "shutting down: {} connections flushing",
            self.clients.len() + self.https.len()
        );
    }

    fn progress_shutdown(&mut self) {
        let Some(deadline) = self.ctx.shutdown_deadline else {
            return;
        };
        if self.ctx.core.clock.tick >= deadline {
            let left = self.clients.len() + self.https.len();
            if left > 0 {
                warn!("shutdown timeout: closing {left} connections");
            }
            let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
            for key in keys {
                self.clients.doom(key, CloseReason::Shutdown);
            }
            let keys: Vec<usize> = self.https.iter().map(|(key, _)| key).collect();
            for key in keys {
                self.https.doom(key, CloseReason::Shutdown);
            }
            self.reap();
        }
        let webhook_done = self.webhook.as_ref().is_none_or(|w| w.is_empty());
        if self.clients.is_empty() && self.https.is_empty() && webhook_done {
            info!("shut down");
            self.commands = None;
        }
    }
}

/// Processes newly read bytes of client connection `key` (after any partial frame it kept)
/// and keeps the new partial remainder.
fn ingest_frames(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    push: &mut PushBuffers,
    key: usize,
    bytes: &[u8],
) {
    let mut input = std::mem::take(&mut clients[key].link.input);
    feed(&mut input, bytes, |data| {
        process_frames(ctx, clients, push, key, data)
    });
    let link = &mut clients[key].link;
    if link.is_done() {
        ctx.core.pool.give(input);
    } else {
        if !input.is_empty() {
            // The rest of a frame is on its way; a client that splits its writes with Nagle
            // on waits for our ACK before sending it: do not delay that ACK.
            let _ = socket2::SockRef::from(&link.stream).set_tcp_quickack(true);
        }
        link.input = input;
    }
    settle_output(clients, key);
}

/// Answers the requests in newly read bytes of HTTP connection `key` (after what it kept).
fn ingest_requests(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    https: &mut Table<HttpConn>,
    push: &mut PushBuffers,
    key: usize,
    bytes: &[u8],
) {
    let mut input = std::mem::take(&mut https[key].link.input);
    let mut api = Api {
        ctx,
        clients,
        push,
        stats: &stats,
    };
    feed(&mut input, bytes, |data| {
        let used = http::process(&mut api, https, key, data);
        (!https[key].link.is_done()).then_some(used)
    });
    let link = &mut https[key].link;
    if link.is_done() {
        api.ctx.core.pool.give(input);
    } else {
        link.input = input;
    }
}

/// Handles the complete frames at the start of `data`; returns how many bytes they took, or
/// `None` once the connection takes no more input.
fn process_frames(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    push: &mut PushBuffers,
    key: usize,
    data: &[u8],
) -> Option<usize> {
    let r = clients.ref_of(key);
    let mut used = 0;
    loop {
        let conn = &mut clients[key];
        if conn.link.is_done() {
            return None;
        }
        // The limit is read per frame: an inner connection may send larger ones as soon as
        // it has authenticated, possibly in the same read.
        let max = match conn.state {
            conn::State::Inner => ctx.limits.max_inner_frame,
            _ => ctx.limits.max_frame,
        };
        let decoder = crate::protocol::Decoder::new(ctx.limits.order, max);
        match decoder.decode(&data[used..]) {
            Ok(Some((payload, len))) => {
                used += len;
                let step = session::on_frame(ctx, conn, r, payload);
                apply(ctx, clients, push, key, step);
            }
            Ok(None) => return Some(used),
            Err(e) => {
                warn!("{}: {e}; closing", Table::<ClientConn>::name(r));
                clients.doom(key, CloseReason::FrameTooLarge);
                return None;
            }
        }
    }
}

/// Carries out what a handler decided for client connection `key`.
fn apply(
    ctx: &mut Ctx,
    clients: &mut Table<ClientConn>,
    push: &mut PushBuffers,
    key: usize,
    step: Step,
) {
    match step {
        Step::Continue => {}
        Step::Close(reason) => clients.doom(key, reason),
        Step::Linger(reason) => {
            let r = clients.ref_of(key);
            let ticks = ctx.linger_ticks(&clients[key].link);
            ctx.core.linger(&mut clients[key].link, r, reason, ticks);
            clients.mark_dirty(key);
        }
        Step::Push(raw) => {
            let from = Table::<ClientConn>::name(clients.ref_of(key));
            deliver::push_from_inner(ctx, clients, push, raw, &from);
        }
    }
}

/// A connection that got output from its own frames goes on the turn's flush list.
fn settle_output(clients: &mut Table<ClientConn>, key: usize) {
    let link = &clients[key].link;
    if link.pending() > 0 && link.doomed.is_none() {
        clients.mark_dirty(key);
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
            buffered_bytes: buffered,
        },
        ctx.core.clock.uptime().as_secs(),
    )
}

/// Accept errors that concern one connection only; accepting goes on. Anything else (out of
/// descriptors, out of memory) pauses accepting.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
