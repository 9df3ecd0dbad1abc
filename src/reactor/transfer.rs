//! Bytes in and out of connections: reads drained until `WouldBlock` into the shared scratch
//! buffer and handed to the connection's protocol, and output queued during a turn and
//! written once per connection at its end, with WRITABLE interest only while a write would
//! block.

use std::io::{self, Read};
use std::net::Shutdown;

use log::debug;
use mio::Interest;

use super::buffer::BufferPool;
use super::conn::{CloseReason, Conn, ConnRef, State};
use super::{READ_BUDGET, Reactor, conn_token};

/// Where pushes, replies and responses go: the output side of every connection. Kept apart
/// from the registry so that a push can walk the registry's keys while queueing.
pub(super) struct Outbox {
    pub pool: BufferPool,
    /// Connections with output queued this turn, flushed once each at the end of the turn.
    pub dirty: Vec<usize>,
    pub max_pending: usize,
}

impl Outbox {
    /// Appends `bytes` to the output of connection `key`; `false` when that would pass the
    /// pending-output cap (the caller closes it as a slow consumer).
    pub fn queue(&mut self, key: usize, conn: &mut Conn, bytes: &[u8]) -> bool {
        self.queue_with(key, conn, bytes.len(), |out| out.extend_from_slice(bytes))
    }

    /// Like `queue`, for output written in place by `write` in at most `len` bytes.
    pub fn queue_with(
        &mut self,
        key: usize,
        conn: &mut Conn,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        if conn.pending() + len > self.max_pending {
            return false;
        }
        write(conn.output(&mut self.pool));
        self.mark_dirty(key, conn);
        true
    }

    pub fn mark_dirty(&mut self, key: usize, conn: &mut Conn) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }
}

impl Reactor {
    /// Reads until the socket is drained (edge-triggered) or the budget is spent.
    pub(super) fn read(&mut self, key: usize) {
        let Some(generation) = self.conns.get(key).map(|c| c.generation) else {
            return;
        };
        let this = ConnRef {
            key: key as u32,
            generation,
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut budget = READ_BUDGET;
        while self.is_live(this) {
            let conn = &mut self.conns[key];
            match conn.stream.read(&mut scratch) {
                Ok(0) => {
                    let reason = conn.closing.unwrap_or(CloseReason::PeerClosed);
                    self.close(key, reason);
                }
                Ok(n) => {
                    // A closing connection's input is discarded: it only waits for EOF.
                    if conn.closing.is_none() {
                        self.ingest(key, &scratch[..n]);
                    }
                    if n >= budget {
                        self.unread.push(this);
                        break;
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("#{key}: read: {e}");
                    self.close(key, CloseReason::IoError);
                }
            }
        }
        self.scratch = scratch;
    }

    /// Connections that had more to read when their budget ran out get another go.
    pub(super) fn resume_unread(&mut self) {
        let unread = std::mem::take(&mut self.unread);
        for r in &unread {
            if self.is_live(*r) {
                self.read(r.key as usize);
            }
        }
    }

    /// Processes newly read bytes after any partial frame or request the connection kept,
    /// and keeps the new partial remainder.
    pub(super) fn ingest(&mut self, key: usize, bytes: &[u8]) {
        let conn = &mut self.conns[key];
        if conn.input.is_empty() {
            // The common case: whole frames straight out of the shared buffer.
            if let Some(used) = self.process(key, bytes)
                && used < bytes.len()
            {
                let mut input = self.outbox.pool.take();
                input.extend_from_slice(&bytes[used..]);
                self.conns[key].input = input;
            }
        } else {
            let mut input = std::mem::take(&mut conn.input);
            input.extend_from_slice(bytes);
            match self.process(key, &input) {
                Some(used) if used < input.len() => {
                    input.drain(..used);
                    self.conns[key].input = input;
                }
                _ => self.outbox.pool.give(input),
            }
        }
    }

    /// Processes the complete frames or requests at the start of `bytes`; returns how many
    /// bytes they took, or `None` if the connection was closed.
    pub(super) fn process(&mut self, key: usize, bytes: &[u8]) -> Option<usize> {
        match self.conns[key].state {
            State::Http { .. } => self.process_requests(key, bytes),
            State::Webhook(_) => self.process_webhook(key, bytes),
            _ => self.process_frames(key, bytes),
        }
    }

    pub(super) fn on_writable(&mut self, key: usize) {
        match self.conns.get(key).map(|c| &c.state) {
            Some(State::Webhook(_)) => self.webhook_writable(key),
            Some(_) => self.flush(key),
            None => {}
        }
    }

    /// Writes a connection's pending output; registers for WRITABLE only if it would block.
    pub(super) fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        match conn.write_out(&mut self.outbox.pool) {
            Ok(true) => {
                if conn.write_interest {
                    conn.write_interest = false;
                    self.set_interest(key, Interest::READABLE);
                }
                let conn = &mut self.conns[key];
                if let Some(reason) = conn.closing {
                    // Our last byte is out: half-close, then wait for the peer's EOF.
                    if conn.stream.shutdown(Shutdown::Write).is_err() {
                        self.close(key, reason);
                    }
                }
            }
            Ok(false) => {
                if !conn.write_interest {
                    conn.write_interest = true;
                    self.set_interest(key, Interest::READABLE | Interest::WRITABLE);
                }
            }
            Err(e) => {
                debug!("#{key}: write: {e}");
                self.close(key, CloseReason::IoError);
            }
        }
    }

    pub(super) fn set_interest(&mut self, key: usize, interest: Interest) {
        let conn = &mut self.conns[key];
        if let Err(e) = self
            .poll
            .registry()
            .reregister(&mut conn.stream, conn_token(key), interest)
        {
            debug!("#{key}: reregister: {e}");
            self.close(key, CloseReason::IoError);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.outbox.dirty);
        for &key in &dirty {
            // A key may have been closed, or closed and reused, since it was queued.
            if self.conns.get(key).is_some_and(|c| c.dirty) {
                self.flush(key);
            }
        }
        dirty.clear();
        self.outbox.dirty = dirty;
    }
}
