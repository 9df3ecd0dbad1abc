//! `Server` and its builder: binds the listeners, wires the hooks into a reactor, and runs it
//! to completion or one turn at a time inside a host's own loop.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{AuthRequest, AuthVerdict, jwt, token_as_uid};
use crate::config::{AuthMode, Config, WebhookUrl};
use crate::handle::Handle;
use crate::protocol::Message;
use crate::reactor::{
    AuthFn, AuthSource, Hooks, Listeners, MessageHook, Reactor, ReloadFn, Side, UidHook, tls,
};
use crate::upstream::Webhook;

/// Configures a [`Server`]: the config, the auth function and the hooks.
pub struct ServerBuilder {
    config: Config,
    auth: Option<AuthFn>,
    on_online: Option<UidHook>,
    on_offline: Option<UidHook>,
    on_message: Option<MessageHook>,
    handle_signals: bool,
    reload: Option<ReloadFn>,
}

impl ServerBuilder {
    /// The auth function: client token → uid, or `None` to reject. Without one, tokens are
    /// checked as the config's `AuthMode` says.
    ///
    /// It runs on the reactor thread for every `/auth/server`, so it must be quick: one that
    /// needs I/O should be asynchronous ([`auth_async`](Self::auth_async)) or the webhook.
    pub fn auth(mut self, mut f: impl FnMut(&str) -> Option<String> + Send + 'static) -> Self {
        self.auth = Some(Box::new(move |request: AuthRequest| {
            f(request.token).into()
        }));
        self
    }

    /// An auth function that may decide later: it returns `AuthVerdict::Pending` and some
    /// other thread completes the request's ticket with [`Handle::complete_auth`].
    pub fn auth_async(
        mut self,
        f: impl FnMut(AuthRequest) -> AuthVerdict + Send + 'static,
    ) -> Self {
        self.auth = Some(Box::new(f));
        self
    }

    /// Called when a uid goes from 0 to 1 live connections.
    pub fn on_online(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_online = Some(Box::new(f));
        self
    }

    /// Called when a uid goes from 1 to 0 live connections.
    pub fn on_offline(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_offline = Some(Box::new(f));
        self
    }

    /// Called with each upstream message: a frame from an authenticated user whose uri is
    /// not one of the protocol's own. The server never forwards these anywhere by itself.
    pub fn on_message(mut self, f: impl FnMut(&str, Message) + Send + 'static) -> Self {
        self.on_message = Some(Box::new(f));
        self
    }

    /// Shut down gracefully on SIGINT and SIGTERM (a second signal closes everything at
    /// once), and reload on SIGHUP (see [`on_reload`](Self::on_reload)). Off by default: a
    /// library should not take over a host's signals.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// How to read the configuration again on SIGHUP (with `handle_signals`). The running
    /// server takes from it what can change without a restart: `InnerPassword`,
    /// `MetricsToken`, `OuterServers`, `Codec`, the connection caps, output limits and
    /// timeouts, and the TLS certificate. Everything else (listeners, `LittleEndian`, the frame
    /// limits, the auth mode, the cluster and history settings) stays as started; the log
    /// names what was applied and what needs a restart. An error leaves the running
    /// configuration as it is.
    pub fn on_reload(mut self, f: impl FnMut() -> Result<Config, String> + Send + 'static) -> Self {
        self.reload = Some(Box::new(f));
        self
    }

    /// Validates the config and binds the listeners; the server then accepts connections as
    /// soon as it runs.
    pub fn build(self) -> io::Result<Server> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let mut config = self.config;
        config.validate().map_err(|e| invalid(e.to_string()))?;
        let auth = match self.auth {
            Some(f) => AuthSource::Function(f),
            None => auth_from_config(&config)?,
        };

        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
            _ => None,
        };
        let listen = |side: Side, ip: IpAddr, port: u16| -> io::Result<(Side, TcpListener)> {
            Ok((side, bind(SocketAddr::new(ip, port), config.backlog)?))
        };
        let mut bound = vec![
            listen(Side::Plex, config.bind_address, config.port)?,
            listen(Side::Http, config.http_bind_address, config.http_port)?,
        ];
        if let Some(port) = config.tls_port {
            bound.push(listen(Side::Tls, config.bind_address, port)?);
        }
        if let Some(port) = config.ws_port {
            bound.push(listen(Side::Ws, config.bind_address, port)?);
        }
        let local_addr = bound[0].1.local_addr()?;
        if config.outer_servers.is_empty() {
            config.outer_servers = vec![format!("127.0.0.1:{}", local_addr.port())];
        }
        let signals = if self.handle_signals {
            Some(signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGHUP,
            ])?)
        } else {
            None
        };
        let hooks = Hooks {
            on_online: self.on_online,
            on_offline: self.on_offline,
            on_message: self.on_message,
            reload: self.reload,
        };
        let listeners = Listeners { bound, tls };
        let (reactor, handle) = Reactor::new(&config, auth, hooks, listeners, signals)?;
        for (side, what) in [
            (Side::Plex, "clients"),
            (Side::Http, "the HTTP API"),
            (Side::Tls, "clients over TLS"),
            (Side::Ws, "clients over WebSocket"),
        ] {
            if let Some(addr) = reactor.local_addr(side) {
                info!("listening for {what} on {addr}");
            }
        }
        Ok(Server {
            reactor,
            handle,
            config,
        })
    }
}

/// A Plex server: a reactor with its listeners bound.
pub struct Server {
    reactor: Reactor,
    handle: Handle,
    config: Config,
}

impl Server {
    /// Checks a configuration as `build` would before binding anything: its settings, and
    /// the files it names (the TLS certificate and key).
    pub fn check(config: &Config) -> io::Result<()> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        config.validate().map_err(|e| invalid(e.to_string()))?;
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            tls::load(cert, key)?;
        }
        Ok(())
    }

    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            auth: None,
            on_online: None,
            on_offline: None,
            on_message: None,
            handle_signals: false,
            reload: None,
        }
    }

    /// The address the client listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.reactor.local_addr(Side::Plex).expect("always bound")
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.reactor.local_addr(Side::Http).expect("always bound")
    }

    /// The address the TLS listener is bound to, with `TlsPort`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.reactor.local_addr(Side::Tls)
    }

    /// The address the WebSocket listener is bound to, with `WsPort`.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.reactor.local_addr(Side::Ws)
    }

    /// The effective config (with `OuterServers` filled in).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A handle for other threads: push, kick, query, shut down.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs until shut down (through a handle or, if enabled, a signal).
    pub fn run(mut self) -> io::Result<()> {
        while !self.reactor.is_finished() {
            self.reactor.turn(None)?;
        }
        Ok(())
    }

    /// Runs one turn of the reactor, waiting at most `timeout` for something to happen
    /// (`Some(Duration::ZERO)` does not wait). For a host that drives its own loop: it may
    /// also wait on [`AsRawFd::as_raw_fd`] becoming readable and then call `turn`.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.reactor.turn(timeout)
    }

    /// The server has shut down: every connection is closed and `turn` does nothing.
    pub fn is_finished(&self) -> bool {
        self.reactor.is_finished()
    }
}

/// The reactor's epoll descriptor: readable whenever a turn has work to do (timers aside:
/// a host waiting on it should still call `turn` at least every 100 ms).
impl AsRawFd for Server {
    fn as_raw_fd(&self) -> RawFd {
        self.reactor.poll().as_raw_fd()
    }
}

/// The token check the config's `AuthMode` names.
fn auth_from_config(config: &Config) -> io::Result<AuthSource> {
    match config.auth_mode {
        AuthMode::Uid => {
            warn!("AuthMode uid: each client's token is taken as its uid; this trusts clients");
            Ok(AuthSource::Function(Box::new(|request: AuthRequest| {
                token_as_uid(request.token).into()
            })))
        }
        AuthMode::Jwt => {
            let secret = config.jwt_secret.clone().unwrap_or_default().into_bytes();
            Ok(AuthSource::Function(Box::new(
                move |request: AuthRequest| {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    match jwt::verify_hs256(request.token, &secret, now) {
                        Ok(uid) => AuthVerdict::Accept(uid),
                        Err(e) => {
                            debug!("JWT rejected: {e}");
                            AuthVerdict::Reject
                        }
                    }
                },
            )))
        }
        AuthMode::Webhook => {
            let url = config.auth_url.as_deref().unwrap_or_default();
            let url = WebhookUrl::parse(url)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // Resolved once, here: the reactor must never block on DNS.
            let addr = url.authority.to_socket_addrs()?.next().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("AuthUrl host {} has no address", url.authority),
                )
            })?;
            info!(
                "auth webhook: POST http://{}{} ({addr})",
                url.authority, url.path
            );
            Ok(AuthSource::Webhook(Box::new(Webhook::new(
                addr,
                &url.authority,
                &url.path,
                config.auth_webhook_connections,
                config.auth_webhook_timeout,
            ))))
        }
    }
}

/// A non-blocking listener with `SO_REUSEADDR` and the configured backlog.
fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(TcpListener::from_std(socket.into()))
}
