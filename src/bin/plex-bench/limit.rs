//! The physical limit of this machine for what the server does: one thread writing frames of
//! the push size (in the run's codec, always over plain TCP) round-robin to N loopback sockets, one `write` each, with nothing else in the
//! way. The writer is a child process (this binary's `limit-writer` command) so that both ends
//! of 10,000 sockets fit under the per-process descriptor limit, and so that, as with the
//! server, writer and users run in different processes. The users are the same fleet that
//! receives the server's pushes, so the two figures differ only in what does the writing.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

use plex::protocol::{Codec, SeqClock};

use crate::Options;
use crate::fleet::Fleet;
use crate::payload;
use crate::proc::CpuMeter;
use crate::report::Figures;
use crate::schedule::Schedule;

/// Listen backlog of the writer: as deep as the server's default, so connects never stall.
const BACKLOG: i32 = 1024;

/// Starts a writer, connects the fleet to it, lets it write `msgs` frames, and returns what
/// the fleet received.
pub fn measure(o: &Options) -> io::Result<Figures> {
    let exe = std::env::current_exe()?;
    let mut args = vec![
        "limit-writer".to_owned(),
        format!("--conns={}", o.conns),
        format!("--msgs={}", o.msgs * o.fanout()),
        format!("--body-bytes={}", o.body_bytes),
    ];
    if let Some(rate) = o.rate {
        args.push(format!("--rate={}", rate * o.fanout() as f64));
    }
    if o.order == plex::protocol::ByteOrder::Little {
        args.push("--little-endian".to_owned());
    }
    if o.codec == Codec::Protobuf {
        args.push("--codec=protobuf".to_owned());
    }
    let mut writer = Writer(
        Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut stdin = writer.0.stdin.take().expect("piped");
    let mut port = String::new();
    BufReader::new(writer.0.stdout.take().expect("piped")).read_line(&mut port)?;
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| io::Error::other("the limit writer did not start"))?;

    let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let (mut fleet, _) = Fleet::connect(o.limit_fleet(target))?;
    let cpu = CpuMeter::start(Some(("writer", writer.0.id())))?;
    stdin.write_all(b"go\n")?;
    let expected = o.msgs * o.fanout();
    fleet.receive(expected, None)?;
    let mut figures = fleet.figures(expected);
    figures.cpu = cpu.stop()?;
    // Closing its stdin tells the writer to exit.
    drop(stdin);
    writer.0.wait()?;
    Ok(figures)
}

/// The writer process; killed if the measurement fails half-way, so that it never outlives us.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The `limit-writer` command: accepts `--conns` connections, waits for a line on stdin, then
/// writes `--msgs` push-sized frames round-robin, one `write` per frame, as fast as it can
/// or at `--rate` (the latency of loopback itself at that load, counted from the schedule as
/// for the server).
pub fn writer_main(o: &Options) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0).into())?;
    socket.listen(BACKLOG)?;
    let listener: std::net::TcpListener = socket.into();
    println!("{}", listener.local_addr()?.port());
    io::stdout().flush()?;

    let mut conns: Vec<TcpStream> = Vec::with_capacity(o.conns);
    while conns.len() < o.conns {
        let (stream, _) = listener.accept()?;
        // As the server does: pushes are small and latency matters.
        stream.set_nodelay(true)?;
        conns.push(stream);
    }
    let mut stdin = io::stdin().lock();
    stdin.read_line(&mut String::new())?;

    let mut seq = SeqClock::default();
    let mut body = String::new();
    let mut frame = Vec::new();
    let schedule = o.rate.map(Schedule::start);
    for i in 0..o.msgs {
        // At a rate, each frame carries the time it was due: latency counts from the schedule.
        let sent_ns = match schedule {
            Some(schedule) => {
                std::thread::sleep(schedule.due(i).saturating_duration_since(Instant::now()));
                schedule.due_ns(i)
            }
            None => payload::now_ns(),
        };
        payload::stamp_body(&mut body, sent_ns, o.body_bytes);
        frame.clear();
        let now_ms = (payload::now_ns() / 1_000_000) as i64;
        let seq = seq.next(now_ms);
        o.codec
            .write_frame(&mut frame, o.order, seq, payload::BENCH_URI, &body);
        conns[(i % o.conns as u64) as usize].write_all(&frame)?;
    }
    // Stay until the tool has read everything and closes our stdin.
    io::copy(&mut stdin, &mut io::sink())?;
    Ok(())
}
