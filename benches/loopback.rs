//! End to end over loopback, in this process with real sockets: a server reactor on its own
//! thread, 1,000 users authenticated over TCP, and beside it the limit that the server is
//! measured against: a plain thread writing one push-sized frame to each of 1,000 loopback
//! sockets. Each iteration delivers one frame to every user (so no user ever has two queued:
//! one write per frame, as in `plex-bench limit`) and waits for all of them; every figure is
//! in deliveries per second, counted by the same receiving code. `plex-bench` measures the
//! same at 10,000 users against a separate server process; this is the quick check for a
//! change to the hot path.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
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

/// A server on its own thread, shut down on drop.
struct Running {
    handle: Handle,
    thread: Option<JoinHandle<io::Result<()>>>,
    addr: SocketAddr,
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

/// The limit: a thread that, on each signal, writes one frame to each of its sockets.
struct Writer {
    go: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Accepts `USERS` connections on `listener` and starts the writing thread.
    fn start(listener: TcpListener) -> Writer {
        let mut frame = Vec::new();
        encode_message(
            &mut frame,
            ByteOrder::Big,
            1_764_000_000_000,
            "/bench",
            BODY,
        );
        let mut streams: Vec<std::net::TcpStream> = (0..USERS)
            .map(|_| {
                let (stream, _) = listener.accept().unwrap();
                stream.set_nodelay(true).unwrap();
                stream
            })
            .collect();
        let (go, rounds) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            for () in rounds {
                for stream in &mut streams {
                    stream.write_all(&frame).unwrap();
                }
            }
        });
        Writer {
            go: Some(go),
            thread: Some(thread),
        }
    }

    fn round(&self) {
        self.go.as_ref().expect("running").send(()).unwrap();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.go = None;
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
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
    fn new(streams: impl Iterator<Item = std::net::TcpStream>) -> Users {
        let poll = Poll::new().unwrap();
        let streams: Vec<TcpStream> = streams
            .enumerate()
            .map(|(i, std)| {
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
            partial: vec![Vec::new(); streams.len()],
            streams,
            scratch: vec![0; 64 * 1024],
            decoder: Decoder::new(ByteOrder::Big, 1 << 20),
        }
    }

    /// Users `u0`, `u1`, ... authenticated on the server.
    fn authenticated(server: &Running) -> Users {
        Users::new((0..USERS).map(|i| {
            let mut c = Connection::connect(server.addr, ByteOrder::Big).unwrap();
            assert!(c.authenticate(&format!("u{i}"), WAIT).unwrap());
            // The authenticated socket outlives the blocking client that set it up.
            c.stream().try_clone().unwrap()
        }))
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
                        Ok(0) => panic!("user {i} was closed"),
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

/// Times `iters` rounds of `send` followed by receiving one frame per user.
fn rounds(users: &mut Users, iters: u64, mut send: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        send();
        users.receive(USERS as u64);
    }
    start.elapsed()
}

fn loopback(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connecting = std::thread::spawn(move || {
        Users::new((0..USERS).map(|_| std::net::TcpStream::connect(addr).unwrap()))
    });
    let writer = Writer::start(listener);
    let mut limit_users = connecting.join().unwrap();

    let server = Running::start();
    let mut users = Users::authenticated(&server);
    let mut inner = Connection::connect(server.addr, ByteOrder::Big).unwrap();
    assert!(
        inner
            .authenticate_inner(plex::config::DEFAULT_INNER_PASSWORD, WAIT)
            .unwrap()
    );
    let mut pushes = Vec::new();
    for i in 0..USERS {
        let request = PushRequest {
            uid: format!("u{i}").into(),
            uri: "/bench".into(),
            body: BODY.into(),
        };
        encode_message(
            &mut pushes,
            ByteOrder::Big,
            0,
            uri::SEND_MSG,
            &request.to_json(),
        );
    }

    let mut group = c.benchmark_group(format!("loopback, {USERS} users"));
    group.throughput(Throughput::Elements(USERS as u64));
    group.bench_function("limit: a thread writing one frame to each socket", |b| {
        b.iter_custom(|iters| {
            rounds(&mut limit_users, iters, || {
                writer.round();
            })
        })
    });

    group.bench_function("push to each user via inner tcp", |b| {
        b.iter_custom(|iters| {
            rounds(&mut users, iters, || {
                inner.stream().write_all(&pushes).unwrap();
            })
        })
    });
    group.bench_function("broadcast via Handle", |b| {
        b.iter_custom(|iters| {
            rounds(&mut users, iters, || {
                server.handle.broadcast("/bench", BODY).unwrap();
            })
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
