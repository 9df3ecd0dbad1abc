//! A table of connections of one kind (clients, HTTP clients, the auth service): a slab with
//! generation numbers, the turn's flush list and the turn's reap list. Handlers never free a
//! connection; they doom it, and only the reactor's turn takes doomed connections out of the
//! table (`take_doomed`), after dispatch and before flushing. Until then a key stays valid
//! for the whole turn, whatever happened to its connection.
//!
//! The token space is split here once: a token (and a timer, and an auth ticket) carries the
//! table's kind, the slab key and the connection's generation, so an event for a key that was
//! freed and reused never reaches the new connection.

use std::ops::{Index, IndexMut};

use log::debug;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::ctx::{Core, LINGER_TICKS, deadline};
use super::link::{Flushed, Got, Link};
use crate::CloseReason;

/// Which table a token or timer refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Listeners, the waker, signals: tokens fixed by the reactor.
    Fixed = 0,
    Client = 1,
    Http = 2,
    Upstream = 3,
}

const KIND_BITS: u32 = 2;
const KEY_BITS: u32 = 30;

/// A connection in one of the tables, as tokens, timers and tickets name it: kind, slab key and
/// generation packed into one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef(u64);

impl ConnRef {
    pub fn new(kind: Kind, key: usize, generation: u32) -> Self {
        assert!(key < 1 << KEY_BITS, "more than 2^30 connections");
        ConnRef(u64::from(generation) << 32 | (key as u64) << KIND_BITS | kind as u64)
    }

    /// One of the reactor's own tokens (listeners, waker).
    pub const fn fixed(n: usize) -> Token {
        Token(n << KIND_BITS as usize)
    }

    pub fn kind(self) -> Kind {
        match self.0 & ((1 << KIND_BITS) - 1) {
            1 => Kind::Client,
            2 => Kind::Http,
            3 => Kind::Upstream,
            _ => Kind::Fixed,
        }
    }

    pub fn key(self) -> usize {
        ((self.0 >> KIND_BITS) & ((1 << KEY_BITS) - 1)) as usize
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn token(self) -> Token {
        Token(self.0 as usize)
    }

    pub fn from_token(token: Token) -> Self {
        ConnRef(token.0 as u64)
    }
}

/// What `Table::queue_to` did with one connection.
pub enum Queued {
    Yes,
    /// Not a target (wrong state, or already closing).
    Skipped,
    /// It cannot take more: doom it for this reason.
    Refused(CloseReason),
}

/// Connections in a table carry a `Link`.
pub trait HasLink {
    fn link(&self) -> &Link;
    fn link_mut(&mut self) -> &mut Link;
    /// An answer it asked for is still to be written (it waits for the cluster, say).
    fn awaits_answer(&self) -> bool {
        false
    }
}

pub struct Table<C> {
    kind: Kind,
    slab: Slab<C>,
    next_generation: u32,
    /// Keys with output queued this turn, flushed once each at its end.
    dirty: Vec<usize>,
    /// Keys doomed this turn, freed by the reactor before it flushes.
    doomed: Vec<usize>,
}

impl<C: HasLink> Table<C> {
    pub fn new(kind: Kind) -> Self {
        Table {
            kind,
            slab: Slab::new(),
            next_generation: 0,
            dirty: Vec::new(),
            doomed: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Connections not doomed.
    pub fn live(&self) -> usize {
        self.slab.len() - self.doomed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The reference a new connection will get, and the generation to build its link with.
    pub fn next_ref(&self) -> ConnRef {
        ConnRef::new(self.kind, self.slab.vacant_key(), self.next_generation)
    }

    /// Inserts a connection built for `next_ref()`.
    pub fn insert(&mut self, conn: C) -> ConnRef {
        let r = self.next_ref();
        debug_assert_eq!(conn.link().generation, r.generation());
        self.next_generation = self.next_generation.wrapping_add(1);
        self.slab.insert(conn);
        r
    }

    /// The connection `r` names, if it is still the one it named and not doomed.
    pub fn get(&mut self, r: ConnRef) -> Option<&mut C> {
        self.slab
            .get_mut(r.key())
            .filter(|c| c.link().generation == r.generation() && c.link().doomed.is_none())
    }

    /// The timer of the connection `r` names has fired: it no longer holds one. Returns the
    /// connection unless it is gone or doomed.
    pub fn timer_fired(&mut self, r: ConnRef) -> Option<&mut C> {
        let conn =
            (self.slab.get_mut(r.key())).filter(|c| c.link().generation == r.generation())?;
        conn.link_mut().timer = super::timer::TimerId::NONE;
        conn.link().doomed.is_none().then_some(conn)
    }

    /// One read from connection `r` into `buf`: `Some(n)` bytes to process, `None` when it
    /// has nothing more for now, is gone, or has just closed (it is then doomed, unless
    /// answers are still going out to it: it closes after them).
    pub fn read(&mut self, r: ConnRef, buf: &mut [u8], core: &mut Core) -> Option<usize> {
        let conn = self.get(r)?;
        let awaits_answer = conn.awaits_answer();
        let link = conn.link_mut();
        if link.peer_done() {
            return None;
        }
        let reason = match link.read(buf) {
            Ok(Got::Data(n)) => return Some(n),
            Ok(Got::Blocked) => return None,
            // A peer that half-closes after its last request still reads the answers.
            Ok(Got::Eof) if link.closing.is_none() && (link.wants_write() || awaits_answer) => {
                link.set_peer_done(true);
                core.linger(link, r, CloseReason::PeerClosed, LINGER_TICKS);
                return None;
            }
            Ok(Got::Eof) => link.closing.unwrap_or(CloseReason::PeerClosed),
            Err(e) => {
                debug!("{}: read: {e}", Self::name(r));
                if link.is_handshaking() {
                    CloseReason::Handshake
                } else {
                    CloseReason::IoError
                }
            }
        };
        self.doom(r.key(), reason);
        None
    }

    pub fn ref_of(&self, key: usize) -> ConnRef {
        ConnRef::new(self.kind, key, self.slab[key].link().generation)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &C)> {
        self.slab.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut C)> {
        self.slab.iter_mut()
    }

    /// Marks a connection to be freed at the end of the turn; the first reason sticks.
    pub fn doom(&mut self, key: usize, reason: CloseReason) {
        let link = self.slab[key].link_mut();
        if link.doomed.is_none() {
            link.doomed = Some(reason);
            self.doomed.push(key);
        }
    }

    /// The connections doomed since the last call, out of the table.
    pub fn take_doomed(&mut self, out: &mut Vec<(usize, C)>) {
        for key in self.doomed.drain(..) {
            out.push((key, self.slab.remove(key)));
        }
    }

    pub fn has_doomed(&self) -> bool {
        !self.doomed.is_empty()
    }

    /// Runs `queue` on the connections `keys` names (every connection when `None`), marking
    /// dirty those it queued output to and dooming those it refused; returns how many took it.
    /// One pass, no allocation: this is how a push reaches thousands of connections.
    pub fn queue_to(
        &mut self,
        keys: Option<&[u32]>,
        mut queue: impl FnMut(ConnRef, &mut C) -> Queued,
    ) -> usize {
        let mut taken = 0;
        let mut visit = |key: usize, conn: &mut C| {
            let r = ConnRef::new(self.kind, key, conn.link().generation);
            match queue(r, conn) {
                Queued::Yes => {
                    taken += 1;
                    let link = conn.link_mut();
                    if !link.dirty {
                        link.dirty = true;
                        self.dirty.push(key);
                    }
                }
                Queued::Skipped => {}
                Queued::Refused(reason) => {
                    let link = conn.link_mut();
                    if link.doomed.is_none() {
                        link.doomed = Some(reason);
                        self.doomed.push(key);
                    }
                }
            }
        };
        match keys {
            Some(keys) => {
                for &key in keys {
                    visit(key as usize, &mut self.slab[key as usize]);
                }
            }
            None => {
                for (key, conn) in self.slab.iter_mut() {
                    visit(key, conn);
                }
            }
        }
        taken
    }

    /// Queues a connection for this turn's flush.
    pub fn mark_dirty(&mut self, key: usize) {
        let link = self.slab[key].link_mut();
        if !link.dirty {
            link.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes a connection's pending output; registers for WRITABLE only while a write would
    /// block. A write error dooms it.
    /// A closing connection that makes progress gets more time; once its last byte is out
    /// it waits only a short linger for the peer's EOF.
    pub fn flush(&mut self, key: usize, registry: &Registry, core: &mut Core) -> Flushed {
        let r = self.ref_of(key);
        let link = self.slab[key].link_mut();
        link.dirty = false;
        if link.doomed.is_some() {
            return Flushed::Done;
        }
        let before = (link.pending(), link.shut_down());
        let result = link.write_out(&mut core.pool);
        if link.closing.is_some() && link.pending() < before.0 {
            link.last_active = core.clock.tick32();
        }
        if link.shut_down() && !before.1 {
            if link.peer_done() {
                // Both sides are done: nothing to wait for.
                let reason = link.closing.unwrap_or(CloseReason::PeerClosed);
                self.doom(key, reason);
                return Flushed::Done;
            }
            // The deadline moves earlier: set the timer again.
            core.arm(link, r, deadline(link.last_active, LINGER_TICKS));
        }
        let flushed = match result {
            Ok(flushed) => flushed,
            Err(e) => {
                debug!("{}: write: {e}", Self::name(r));
                self.doom(key, CloseReason::IoError);
                return Flushed::Done;
            }
        };
        let want = flushed == Flushed::Blocked;
        if link.write_interest() != want {
            link.set_write_interest(want);
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = registry.reregister(&mut link.stream, r.token(), interest) {
                debug!("{}: reregister: {e}", Self::name(r));
                self.doom(key, CloseReason::IoError);
            }
        }
        flushed
    }

    /// Flushes every connection that got output this turn, once each. Connections whose
    /// reading was paused for their output and whose output is now out go to `resume`.
    pub fn flush_dirty(&mut self, registry: &Registry, core: &mut Core, resume: &mut Vec<ConnRef>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if self.slab.get(key).is_some_and(|c| c.link().dirty)
                && self.flush(key, registry, core) == Flushed::Done
                && self.slab[key].link().read_paused()
            {
                resume.push(self.ref_of(key));
            }
        }
        self.dirty = dirty;
    }

    /// How logs name a connection: table letter and slab key (`c#12`, `h#3`, `w#0`).
    pub fn name(r: ConnRef) -> String {
        let letter = match r.kind() {
            Kind::Client => 'c',
            Kind::Http => 'h',
            Kind::Upstream => 'w',
            Kind::Fixed => '?',
        };
        format!("{letter}#{}", r.key())
    }
}

impl<C> Index<usize> for Table<C> {
    type Output = C;
    fn index(&self, key: usize) -> &C {
        &self.slab[key]
    }
}

impl<C> IndexMut<usize> for Table<C> {
    fn index_mut(&mut self, key: usize) -> &mut C {
        &mut self.slab[key]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_pack_kind_key_and_generation() {
        for (kind, key, generation) in [
            (Kind::Client, 0, 0),
            (Kind::Http, (1 << KEY_BITS) - 1, u32::MAX),
            (Kind::Upstream, 12345, 7),
        ] {
            let r = ConnRef::new(kind, key, generation);
            let back = ConnRef::from_token(r.token());
            assert_eq!(
                (back.kind(), back.key(), back.generation()),
                (kind, key, generation)
            );
        }
        assert_eq!(ConnRef::from_token(ConnRef::fixed(3)).kind(), Kind::Fixed);
    }
}
