//! End to end over loopback: a server reactor on its own thread in this process, real sockets.
//! 1,000 users authenticate over TCP; pushes go in over an inner TCP connection and broadcasts
//! through `Handle::broadcast`, both reported in deliveries per second. `plex-bench` measures
//! the same at 10,000 users against a separate server process; this is the quick check for a
//! change to the hot path.

use std::io::{self, Read, Write};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use plex::client::Connection;
use plex::protocol::message::encode_message;
use plex::protocol::{ByteOrder, Decoder, PushRequest, uri};
use plex::{Config, Handle, Server};

const USERS: usize = 1000;
/// A push's body: 100 bytes, the size the targets are set for.
const BODY: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
const WAIT: Duration = Duration::from_secs(10);

struct Running {
    handle: Handle,
    thread: Option<JoinHandle<io::Result<()>>>,
    addr: std::net::SocketAddr,
}

impl Running {
    fn start() -> Running {
        let config = Config {
            port: 0,
            http_port: 0,
            bind_address: [127, 0, 0, 1].into(),
            http_bind_address: [127, 0, 0, 1].into(),
            ..Config::default()
        };
        let server = Server::builder(config)
            .auth(plex::auth::token_as_uid)
            .build()
            .expect("server starts");
        let addr = server.local_addr();
        let handle = server.handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        Running {
            handle,
            thread,
            addr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("reactor thread").expect("reactor ok");
        }
    }
}

/// The users' sockets on one poll; counts the frames they receive.
struct Users {
    poll: Poll,
    events: Events,
    streams: Vec<TcpStream>,
    /// Bytes of a partial frame, per user.
    partial: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    decoder: Decoder,
}

impl Users {
    fn connect(server: &Running) -> Users {
        let poll = Poll::new().unwrap();
        let streams = (0..USERS)
            .map(|i| {
                let mut c = Connection::connect(server.addr, ByteOrder::Big).unwrap();
                assert!(c.authenticate(&format!("u{i}"), WAIT).unwrap());
                let std = c.stream().try_clone().unwrap();
                std.set_nonblocking(true).unwrap();
                let mut stream = TcpStream::from_std(std);
                poll.registry()
                    .register(&mut stream, Token(i), Interest::READABLE)
                    .unwrap();
                stream
            })
            .collect();
        Users {
            poll,
            events: Events::with_capacity(1024),
            streams,
            partial: vec![Vec::new(); USERS],
            scratch: vec![0; 64 * 1024],
            decoder: Decoder::new(ByteOrder::Big, 1 << 20),
        }
    }

    /// Reads until `frames` frames have arrived in total.
    fn receive(&mut self, frames: u64) {
        let mut got = 0;
        let deadline = Instant::now() + WAIT;
        while got < frames {
            assert!(
                Instant::now() < deadline,
                "{got} of {frames} frames arrived"
            );
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(100)))
                .unwrap();
            for event in self.events.iter() {
                let i = event.token().0;
                loop {
                    match self.streams[i].read(&mut self.scratch) {
                        Ok(0) => panic!("the server closed user {i}"),
                        Ok(n) => {
                            let partial = &mut self.partial[i];
                            partial.extend_from_slice(&self.scratch[..n]);
                            let mut it = self.decoder.frames(partial);
                            got += it.by_ref().count() as u64;
                            let used = it.consumed();
                            partial.drain(..used);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("user {i}: {e}"),
                    }
                }
            }
        }
    }
}

fn loopback(c: &mut Criterion) {
    let server = Running::start();
    let mut users = Users::connect(&server);
    let mut inner = Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(
        inner
            .authenticate_inner(plex::config::DEFAULT_INNER_PASSWORD, WAIT)
            .unwrap()
    );

    // Each iteration delivers one frame to every user and waits for all of them, so that no
    // user ever has two frames queued: one write per frame, as in `plex-bench limit`.
    let mut group = c.benchmark_group(format!("loopback, {USERS} users"));
    group.throughput(Throughput::Elements(USERS as u64));

    let mut round = Vec::new();
    for i in 0..USERS {
        let request = PushRequest {
            uid: format!("u{i}").into(),
            uri: "/bench".into(),
            body: BODY.into(),
        };
        encode_message(
            &mut round,
            ByteOrder::Big,
            0,
            uri::SEND_MSG,
            &request.to_json(),
        );
    }
    group.bench_function("push to each user via inner tcp", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                inner.stream().write_all(&round).unwrap();
                users.receive(USERS as u64);
            }
            start.elapsed()
        })
    });

    group.bench_function("broadcast via Handle", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                server.handle.broadcast("/bench", BODY).unwrap();
                users.receive(USERS as u64);
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    targets = loopback
}
criterion_main!(benches);
