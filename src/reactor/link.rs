//! The byte pipe of one TCP connection, whatever speaks over it (a client, an HTTP client, the
//! auth service): the socket, the bytes of a partial frame or request it sent, the output not
//! yet written to it, its one timer, and the flags the reactor's turn acts on. It knows
//! nothing of protocols, of other connections, or of `Poll`.

use std::io::{self, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::buffer::BufferPool;
use super::timer::TimerId;
use crate::CloseReason;

pub struct Link {
    pub stream: TcpStream,
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
    /// Registered for WRITABLE because a write would have blocked.
    pub write_interest: bool,
    /// Queued in its table's flush list for this turn.
    pub dirty: bool,
    /// Its output passed a bound: input stays in the socket until the output drains.
    pub read_paused: bool,
    /// The half-close after the last byte of a closing connection has been sent.
    pub shut_down: bool,
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
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            timer: TimerId::NONE,
            generation,
            last_active: now,
            closing: None,
            doomed: None,
            write_interest: false,
            dirty: false,
            read_paused: false,
            shut_down: false,
        }
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

    /// Writes pending output until done or the socket is full; the buffer goes back to the
    /// pool once empty. A closing connection is half-closed after its last byte.
    pub fn write_out(&mut self, pool: &mut BufferPool) -> io::Result<Flushed> {
        while (self.written as usize) < self.output.len() {
            match self.stream.write(&self.output[self.written as usize..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n as u32,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        pool.give(std::mem::take(&mut self.output));
        self.written = 0;
        if self.closing.is_some() && !self.shut_down {
            self.shut_down = true;
            self.stream.shutdown(Shutdown::Write)?;
        }
        Ok(Flushed::Done)
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

/// Processes newly read `bytes` after what a connection kept of earlier reads, and keeps the
/// new partial remainder in `kept`. `process` returns how many bytes it consumed, or `None`
/// when the connection takes no more input (nothing is kept then). In the common case whole
/// frames are processed straight out of the read buffer and nothing is copied.
pub fn feed(kept: &mut Vec<u8>, bytes: &[u8], process: impl FnOnce(&[u8]) -> Option<usize>) {
    if kept.is_empty() {
        if let Some(used) = process(bytes) {
            kept.extend_from_slice(&bytes[used..]);
        }
    } else {
        let mut data = std::mem::take(kept);
        data.extend_from_slice(bytes);
        if let Some(used) = process(&data)
            && used < data.len()
        {
            data.drain(..used);
            // Keep the partial frame's bytes, not the capacity of the read it came with.
            data.shrink_to_fit();
            *kept = data;
        }
    }
}
