//! The byte pipe of one TCP connection, whatever speaks over it (a client, an HTTP client, the
//! auth service): the socket, the bytes of a partial frame or request it sent, the output not
//! yet written to it, its one timer, and the flags the reactor's turn acts on. It knows
//! nothing of protocols, of other connections, or of `Poll`.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use rustls::ServerConnection;

use super::buffer::BufferPool;
use super::timer::TimerId;
use crate::CloseReason;
use crate::protocol::ws::ReadState;

pub struct Link {
    pub stream: TcpStream,
    /// TLS and WebSocket, for connections that have them; a plain one pays one pointer.
    pub layers: Option<Box<Layers>>,
    /// The start of a frame or request whose end has not arrived yet; unallocated otherwise.
    pub input: Vec<u8>,
    /// Encoded output not yet written; `output[written..]` is what is left. Output limits
    /// keep it far below 4 GiB.
    output: Vec<u8>,
    written: u32,
    /// The one pending timer of this connection.
    pub timer: TimerId,
    pub generation: u32,
    /// Tick of the last activity the connection's timeout counts from.
    pub last_active: u32,
    /// Set when the connection is to close once its output is flushed: it reads nothing
    /// more, half-closes after the last byte, and waits briefly for the peer's EOF so that
    /// the peer is not reset before it has read our last words.
    pub closing: Option<CloseReason>,
    /// Set when the connection is to be freed by the turn's reaping; it then processes
    /// nothing more and its output is dropped.
    pub doomed: Option<CloseReason>,
    /// Queued in its table's flush list for this turn.
    pub dirty: bool,
    /// The rarer states, a bit each (see the accessors), so that a connection stays small.
    flags: u8,
}

/// A getter and a setter for one bit of `Link::flags`.
macro_rules! flag {
    ($bit:expr, $get:ident, $set:ident, $doc:literal) => {
        #[doc = $doc]
        pub fn $get(&self) -> bool {
            self.flags & $bit != 0
        }

        pub fn $set(&mut self, on: bool) {
            if on {
                self.flags |= $bit;
            } else {
                self.flags &= !$bit;
            }
        }
    };
}

/// What a connection on the TLS or WebSocket listener adds to a plain one.
#[derive(Default)]
pub struct Layers {
    /// The TLS session; what the rest of the reactor reads and writes is the plaintext. Boxed
    /// on its own: a session is over a kilobyte, which a plain WebSocket would carry unused.
    pub tls: Option<Box<ServerConnection>>,
    /// WebSocket framing, on the WebSocket listener (over TLS for wss).
    pub ws: Option<Ws>,
}

/// A WebSocket connection's own state.
#[derive(Debug, Default)]
pub struct Ws {
    /// The upgrade is done: what arrives now is frames.
    pub open: bool,
    pub read: ReadState,
}

/// The TLS session among a connection's layers (a function of the field, not of the link,
/// so that the stream can be borrowed beside it).
fn tls_of(layers: &mut Option<Box<Layers>>) -> Option<&mut ServerConnection> {
    layers.as_deref_mut()?.tls.as_deref_mut()
}

/// Plaintext handed to rustls at once: one TLS record's worth, so that what waits for the
/// socket stays in `output`, counted against the connection's limits.
const TLS_CHUNK: usize = 16 * 1024;

/// What a read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// This many bytes in the caller's buffer (plaintext for TLS).
    Data(usize),
    /// The peer closed its side.
    Eof,
    /// Nothing more for now.
    Blocked,
}

/// What the reactor does next with a connection after it wrote to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything went out.
    Done,
    /// The socket is full: wait until it is writable.
    Blocked,
}

impl Link {
    pub fn new(stream: TcpStream, generation: u32, now: u32) -> Self {
        Link {
            stream,
            layers: None,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            timer: TimerId::NONE,
            generation,
            last_active: now,
            closing: None,
            doomed: None,
            dirty: false,
            flags: 0,
        }
    }

    flag!(
        1,
        write_interest,
        set_write_interest,
        "Registered for WRITABLE because a write would have blocked."
    );
    flag!(
        2,
        read_paused,
        set_read_paused,
        "Its output passed a bound: input stays in the socket until the output drains."
    );
    flag!(
        4,
        shut_down,
        set_shut_down,
        "The half-close after the last byte of a closing connection has been sent."
    );
    flag!(
        8,
        peer_done,
        set_peer_done,
        "The peer half-closed while it still had answers coming: it closes once they are out."
    );

    /// Its TLS session, if it speaks TLS.
    pub fn tls(&self) -> Option<&ServerConnection> {
        self.layers.as_deref()?.tls.as_deref()
    }

    /// Its WebSocket state, if it is on the WebSocket listener.
    pub fn ws(&self) -> Option<&Ws> {
        self.layers.as_deref()?.ws.as_ref()
    }

    pub fn ws_mut(&mut self) -> Option<&mut Ws> {
        self.layers.as_deref_mut()?.ws.as_mut()
    }

    /// The connection takes no more input: it is doomed or closing.
    pub fn is_done(&self) -> bool {
        self.doomed.is_some() || self.closing.is_some()
    }

    /// Bytes queued but not yet written.
    pub fn pending(&self) -> usize {
        self.output.len() - self.written as usize
    }

    /// The output buffer to append to, borrowed from the pool if there is none.
    pub fn output(&mut self, pool: &mut BufferPool) -> &mut Vec<u8> {
        if self.output.capacity() == 0 {
            self.output = pool.take();
        } else if self.written > 0 && self.written as usize >= self.output.len() / 2 {
            // Drop what was written once it is at least half the buffer: amortised O(1).
            self.output.drain(..self.written as usize);
            self.written = 0;
        }
        &mut self.output
    }

    /// Reads what the peer sent into `buf`: its bytes, or for TLS the plaintext of the
    /// records that arrived (a record's worth at a time at most).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        let Some(tls) = tls_of(&mut self.layers) else {
            return match retry(|| self.stream.read(buf)) {
                Ok(0) => Ok(Got::Eof),
                Ok(n) => Ok(Got::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::Blocked),
                Err(e) => Err(e),
            };
        };
        loop {
            match tls.reader().read(buf) {
                Ok(0) => return Ok(Got::Eof), // close_notify
                Ok(n) => return Ok(Got::Data(n)),
                // A close without close_notify: a truncation, but the peer is gone all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Got::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match retry(|| tls.read_tls(&mut self.stream)) {
                Ok(0) => return Ok(Got::Eof),
                Ok(_) => {
                    // A TLS error leaves an alert queued; the reaping writes it if it can.
                    tls.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::Blocked),
                Err(e) => return Err(e),
            }
        }
    }

    /// Something is waiting to be written: output, or TLS records (handshake messages,
    /// alerts, session tickets).
    pub fn wants_write(&self) -> bool {
        self.pending() > 0 || self.tls().is_some_and(|tls| tls.wants_write())
    }

    /// The TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls().is_some_and(|tls| tls.is_handshaking())
    }

    /// Writes pending output until done or the socket is full; the buffer goes back to the
    /// pool once empty. A closing connection is half-closed after its last byte (and, over
    /// TLS, its close_notify).
    pub fn write_out(&mut self, pool: &mut BufferPool) -> io::Result<Flushed> {
        loop {
            // Records rustls holds are older than anything still in `output`: they go first.
            if let Some(tls) = tls_of(&mut self.layers)
                && tls.wants_write()
            {
                match retry(|| tls.write_tls(&mut self.stream)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                    Err(e) => return Err(e),
                }
            }
            let rest = &self.output[self.written as usize..];
            if rest.is_empty() {
                break;
            }
            let wrote = match tls_of(&mut self.layers) {
                None => match retry(|| self.stream.write(rest)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                    Err(e) => return Err(e),
                },
                // rustls takes plaintext until its buffer limit; mid-handshake it may take none.
                Some(tls) => match tls.writer().write(&rest[..rest.len().min(TLS_CHUNK)])? {
                    0 => return Ok(Flushed::Blocked),
                    n => n,
                },
            };
            self.written += wrote as u32;
        }
        pool.give(std::mem::take(&mut self.output));
        self.written = 0;
        if self.closing.is_some() && !self.shut_down() {
            if let Some(tls) = tls_of(&mut self.layers)
                && !tls.wants_write()
            {
                tls.send_close_notify();
                if tls.wants_write() {
                    return self.write_out(pool);
                }
            }
            self.set_shut_down(true);
            self.stream.shutdown(Shutdown::Write)?;
        }
        Ok(Flushed::Done)
    }

    /// A last attempt to say goodbye before the connection is freed: `bytes` (a WebSocket
    /// close frame, say) and a TLS close_notify or pending alert, written if the socket takes
    /// them at once. Nothing waits for it.
    pub fn last_words(&mut self, bytes: &[u8], pool: &mut BufferPool) {
        if self.shut_down() {
            return;
        }
        self.output(pool).extend_from_slice(bytes);
        self.closing.get_or_insert(crate::CloseReason::Shutdown);
        let _ = self.write_out(pool);
    }

    /// Gives both buffers back to the pool; the connection is going away.
    pub fn release(&mut self, pool: &mut BufferPool) {
        pool.give(std::mem::take(&mut self.input));
        pool.give(std::mem::take(&mut self.output));
        self.written = 0;
    }

    /// Bytes held in this connection's buffers, for the memory gauge.
    pub fn buffered(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }
}

/// Runs an I/O call again while a signal interrupts it.
fn retry<T>(mut io: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match io() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Processes newly read `bytes` after what a connection kept of earlier reads, and keeps the
/// new partial remainder in `kept`. `process` returns how many bytes it consumed, or `None`
/// when the connection takes no more input (nothing is kept then). In the common case whole
/// frames are processed straight out of the read buffer and nothing is copied.
/// The bytes are mutable because WebSocket frames are unmasked in place.
pub fn feed(
    kept: &mut Vec<u8>,
    bytes: &mut [u8],
    process: impl FnOnce(&mut [u8]) -> Option<usize>,
) {
    if kept.is_empty() {
        if let Some(used) = process(bytes) {
            kept.extend_from_slice(&bytes[used..]);
        }
    } else {
        let mut data = std::mem::take(kept);
        data.extend_from_slice(bytes);
        if let Some(used) = process(&mut data)
            && used < data.len()
        {
            data.drain(..used);
            // Keep the partial frame's bytes, not the capacity of the read it came with.
            data.shrink_to_fit();
            *kept = data;
        }
    }
}
