//! Signals, reloading and shutting down: what changes the whole server rather than one
//! connection.

use log::{info, warn};

use super::{CloseReason, Reactor, clients, ctx, tls};

impl Reactor {
    pub(super) fn on_signal(&mut self) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if signal == signal_hook::consts::SIGHUP {
                self.reload();
            } else if self.ctx.shutdown_deadline.is_some() {
                warn!("signal {signal} during shutdown: closing every connection now");
                self.ctx.shutdown_deadline = Some(self.ctx.core.clock.tick);
            } else {
                info!("signal {signal}: shutting down");
                self.begin_shutdown();
            }
        }
    }

    /// SIGHUP: the configuration read again; logs go to stderr, so there is nothing to reopen.
    fn reload(&mut self) {
        let Some(reload) = &mut self.ctx.hooks.reload else {
            info!("SIGHUP: nothing to reload (logs go to stderr, nothing to reopen)");
            return;
        };
        let config = reload().and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
        // A renewed certificate takes effect for new connections; a bad one changes nothing.
        let tls = match (&config, self.tls.is_some()) {
            (Ok(config), true) => match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    tls::load(cert, key).map(Some).map_err(|e| e.to_string())
                }
                _ => Err("TlsCert and TlsKey are needed by the TLS listeners".into()),
            },
            _ => Ok(None),
        };
        match config.and_then(|config| tls.map(|tls| (config, tls))) {
            Ok((mut config, tls)) => {
                // Unset, it still means the client listener, as at the start.
                if config.outer_servers.is_empty() {
                    config.outer_servers = self.started.outer_servers.clone();
                }
                self.ctx.limits.reload(&config);
                let mut reloaded = self.applied.changed_keys(&config);
                reloaded.retain(|key| ctx::RELOADABLE.contains(key));
                if let Some(tls) = tls {
                    self.tls = Some(tls);
                    reloaded.push("the TLS certificate");
                }
                reloaded.dedup();
                let mut restart = self.started.changed_keys(&config);
                restart.retain(|key| !ctx::RELOADABLE.contains(key));
                *self.applied = config;
                match reloaded.as_slice() {
                    [] => info!("SIGHUP: configuration read again; nothing to change"),
                    keys => info!("SIGHUP: applied {}", keys.join(", ")),
                }
                if !restart.is_empty() {
                    warn!(
                        "SIGHUP: {} changed but need a restart; running as started",
                        restart.join(", ")
                    );
                }
            }
            Err(e) => warn!("SIGHUP: reload failed, keeping the running configuration: {e}"),
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
            let conn = &mut self.clients[key];
            if conn.link.pending() == 0 {
                self.clients.doom(key, CloseReason::Shutdown);
            } else {
                clients::queue_close_frame(conn, CloseReason::Shutdown, &mut ctx.core.pool);
                ctx.core
                    .linger(&mut conn.link, r, CloseReason::Shutdown, ticks);
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

    pub(super) fn progress_shutdown(&mut self) {
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
            // Leaving the cluster removes this node's record at once.
            self.ctx.cluster = None;
            info!("shut down");
            self.commands = None;
        }
    }
}
