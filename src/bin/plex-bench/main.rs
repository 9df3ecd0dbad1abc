//! `plex-bench`: drives a running `plex-server` over loopback and turns our performance claims
//! into numbers: connection density, connect+auth rate, push and broadcast throughput with
//! latency, each throughput set against the physical limit of this machine measured in the
//! same run (see BENCHMARKS.md), the service good users get while attackers misbehave, and
//! the round trip of a client that splits its frames as the Android SDK did. One thread drives
//! every good client socket, over TCP, TLS or WebSocket, through one mio `Poll`.

mod alarm;
mod attack;
mod chaos;
mod fleet;
mod http;
mod limit;
mod link;
mod payload;
mod proc;
mod pusher;
mod report;
mod rtt;
mod schedule;
mod soak;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Registry;
use plex::protocol::{ByteOrder, Codec};

use fleet::{Fleet, FleetConfig};
use link::{LinkConfig, Transport};
use pusher::{Pace, Plan, Pusher, Route};
use report::{Figures, Run};

const USAGE: &str = "\
Usage: plex-bench COMMAND [OPTIONS]

Drives a running plex-server over loopback (start it with `cargo build --release` and
`target/release/plex-server`). Users authenticate with token = uid (the server's demo auth).

Commands:
  density --conns N --server-pid P   connect and authenticate N users, keep them alive, report
                                     connects(+handshakes)+auths/s, both sides' CPU, and the
                                     server's RSS per connection
  push --conns N --msgs M            push M messages round-robin over N users; report msgs/s,
                                     lost messages and latency, against `limit`
  broadcast --conns N --msgs M       M broadcasts to N users (HTTP API); deliveries/s vs `limit`
  limit --conns N --msgs M           the physical limit: one thread writing M frames of the push
                                     size round-robin to N loopback sockets, nothing in between
  soak --conns N --minutes T --server-pid P
                                     N users online for T minutes while --churn of them
                                     reconnect every second and pushes flow at --rate;
                                     the server's RSS every --sample seconds must level off
  chaos [--conns N] [--rate R] [--seconds S] [--server-pid P]
                                     N good users [2000] receive R pushes/s [2000] over one
                                     inner connection for S seconds while attackers (each
                                     kind on its own thread) misbehave against the same
                                     server; reports lost pushes and their latency, what each
                                     attacker did, the server's CPU and RSS, and whether the
                                     server exited
  rtt [--msgs N] [--nodelay] [--one-write]
                                     N heartbeat round trips [2000], one at a time from one
                                     client that writes each frame's header and body in two
                                     writes with Nagle on, as the Android SDK did; reports
                                     p50, p90, p99, max
  limit-writer                       (internal) the writing end of `limit`, started by the tool

Options:
  --conns N                 user connections
  --transport tcp|tls|ws|wss
                            what the users speak [tcp]: the framed protocol over TCP or
                            TLS, or WebSocket (/plex/v1/ws, one message per frame) plain or
                            over TLS; all but tcp need --users-on (the server's TlsPort or
                            WsPort), tls and wss need --ca. Pushers and the limit stay on
                            plain TCP
  --codec json|protobuf     the messages' form, for the users and the inner connection
                            (the server takes it from each connection's first frame; over
                            WebSocket, protobuf goes in binary frames) [json]
  --ca PEM                  trust the certificates in this PEM file (the server's test CA)
  --users-on HOST:PORT      where the users connect [--host:--port]
  --inner-on HOST:PORT      where the inner push connection connects [--host:--port]: with
                            --users-on on another node, a push crosses the cluster
  --msgs M                  messages to push (broadcasts for `broadcast`)
  --via tcp|http            push over an inner TCP connection or the HTTP API [tcp]
  --rate R                  send R msgs/s instead of flat out, for the latency at a fixed
                            load; the limit's writer then writes at the same rate. Latency
                            then counts from the time each message was due, not from when
                            it was written: a stall shows in every message due during it
  --window W                flat out: at most W deliveries in flight [--conns, so that no
                            user has two messages in flight: one write per frame, as in
                            `limit`]
  --body-bytes B            bytes of each message body, >= 20 [100]
  --runs K                  repeat K times and report each run and the median [1]
  --server-pid P            the server's pid: RSS (density, soak, chaos), CPU use (density,
                            push, broadcast, chaos) and whether it exited (chaos)
  --hold SECS               density: keep the users alive this long before measuring [10]
  --minutes T               soak: how long [10]
  --churn N                 soak: users that drop their connection and reconnect per second
                            [1% of --conns]; chaos: attacker connect+auth+close cycles per
                            second [200]
  --sample SECS             soak, chaos: how often to read the server's RSS [30, 5]
  --seconds S               chaos: how long the good pushes flow [20]
  --resets N                chaos: connections closed with RST (SO_LINGER 0) per second [200]
  --half-closes N           chaos: authenticated connections half-closed per second [100]
  --stalls N                chaos: connections stopping after 2 header bytes per second [50]
  --oversized N             chaos: headers announcing --max-frame-size + 1 per second [100]
  --garbage N               chaos: connections sending random bytes or plausible headers
                            over random payloads per second [200]
  --flooders N              chaos: authenticated clients that flood heartbeats and never
                            read [50, at most 500]
  --flood-rate H            chaos: heartbeats per second each flooder writes [10000]
                            (0 for any of these turns that attacker off; a kind holds at
                            most 200 sockets open at once)
  --max-frame-size B        chaos: the server's MaxFrameSize [65536]
  --heartbeat SECS          each user sends /heartbeat this often [30]
  --nodelay                 rtt: set TCP_NODELAY (Nagle off)
  --one-write               rtt: write each frame in one write
  --concurrency C           connections connecting or authenticating at once [512]
  --sources K               spread client sockets over source addresses 127.0.0.1..K [8]
  --host ADDR               the server's address [127.0.0.1]
  --port PORT               the server's TCP port [9578]
  --http-port PORT          the server's HTTP API port [9579]
  --inner-password SECRET   inner connection and HTTP API password [plex-inner]
  --little-endian           little-endian frame headers (as the server's --little-endian)
  -h, --help                print this help
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Density,
    Push,
    Broadcast,
    Limit,
    LimitWriter,
    Soak,
    Chaos,
    Rtt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Tcp,
    Http,
}

/// Every option of every command, with its default.
#[derive(Clone, Debug)]
pub struct Options {
    command: Command,
    conns: usize,
    msgs: u64,
    via: Via,
    rate: Option<f64>,
    /// `None`: as many as there are users.
    window: Option<u64>,
    body_bytes: usize,
    runs: usize,
    server_pid: Option<u32>,
    hold: Duration,
    minutes: u64,
    /// `None`: 1% of the users (soak), the attack's default (chaos).
    churn: Option<usize>,
    /// `None`: the command's default.
    sample: Option<Duration>,
    seconds: u64,
    attack: attack::Intensity,
    max_frame: u32,
    heartbeat: Duration,
    concurrency: usize,
    sources: u8,
    host: IpAddr,
    port: u16,
    http_port: u16,
    inner_password: String,
    order: ByteOrder,
    transport: Transport,
    codec: Codec,
    /// TLS settings from `--ca`.
    tls: Option<Arc<rustls::ClientConfig>>,
    users_on: Option<SocketAddr>,
    inner_on: Option<SocketAddr>,
    nodelay: bool,
    one_write: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let command = match args.next().as_deref() {
        None | Some("-h" | "--help") => {
            print!("{USAGE}");
            return Ok(None);
        }
        Some("density") => Command::Density,
        Some("push") => Command::Push,
        Some("broadcast") => Command::Broadcast,
        Some("limit") => Command::Limit,
        Some("limit-writer") => Command::LimitWriter,
        Some("soak") => Command::Soak,
        Some("chaos") => Command::Chaos,
        Some("rtt") => Command::Rtt,
        Some(other) => return Err(format!("unknown command {other:?} (see --help)")),
    };
    let mut o = Options {
        command,
        conns: 0,
        msgs: 0,
        via: Via::Tcp,
        rate: None,
        window: None,
        body_bytes: 100,
        runs: 1,
        server_pid: None,
        hold: Duration::from_secs(10),
        minutes: 10,
        churn: None,
        sample: None,
        seconds: 20,
        attack: attack::Intensity::default(),
        max_frame: plex::config::Config::default().max_frame_size,
        heartbeat: Duration::from_secs(30),
        concurrency: 512,
        sources: 8,
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 9578,
        http_port: 9579,
        inner_password: plex::config::DEFAULT_INNER_PASSWORD.to_owned(),
        order: ByteOrder::Big,
        transport: Transport::Tcp,
        codec: Codec::Json,
        tls: None,
        users_on: None,
        inner_on: None,
        nodelay: false,
        one_write: false,
    };
    let mut ca = None;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--little-endian" => {
                o.order = ByteOrder::Little;
                continue;
            }
            "--nodelay" => {
                o.nodelay = true;
                continue;
            }
            "--one-write" => {
                o.one_write = true;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{name} needs a value (see --help)"))?,
        };
        let bad = || format!("{name}: {value:?} is not valid");
        let number = |v: &str| v.parse::<u64>().map_err(|_| bad());
        let address = |v: &str| {
            v.to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
                .ok_or_else(bad)
        };
        let per_second = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)
                .ok_or_else(bad)
        };
        match name.as_str() {
            "--conns" => o.conns = number(&value)? as usize,
            "--msgs" => o.msgs = number(&value)?,
            "--via" => {
                o.via = match value.as_str() {
                    "tcp" => Via::Tcp,
                    "http" => Via::Http,
                    _ => return Err(bad()),
                }
            }
            "--rate" => {
                let rate: f64 = value.parse().map_err(|_| bad())?;
                o.rate = Some(rate).filter(|r| r.is_finite() && *r > 0.0);
                if o.rate.is_none() {
                    return Err(bad());
                }
            }
            "--window" => o.window = Some(number(&value)?.max(1)),
            "--body-bytes" => o.body_bytes = number(&value)? as usize,
            "--runs" => o.runs = number(&value)?.max(1) as usize,
            "--server-pid" => o.server_pid = Some(value.parse().map_err(|_| bad())?),
            "--hold" => o.hold = Duration::from_secs(number(&value)?),
            "--minutes" => o.minutes = number(&value)?.max(1),
            "--churn" => o.churn = Some(number(&value)? as usize),
            "--sample" => o.sample = Some(Duration::from_secs(number(&value)?.max(1))),
            "--seconds" => o.seconds = number(&value)?.max(1),
            "--resets" => o.attack.resets = per_second(&value)?,
            "--half-closes" => o.attack.half_closes = per_second(&value)?,
            "--stalls" => o.attack.stalls = per_second(&value)?,
            "--oversized" => o.attack.oversized = per_second(&value)?,
            "--garbage" => o.attack.garbage = per_second(&value)?,
            "--flooders" => o.attack.flooders = number(&value)? as usize,
            "--flood-rate" => o.attack.flood_rate = per_second(&value)?,
            "--max-frame-size" => {
                o.max_frame = value.parse().ok().filter(|&b| b > 0).ok_or_else(bad)?
            }
            "--heartbeat" => o.heartbeat = Duration::from_secs(number(&value)?.max(1)),
            "--concurrency" => o.concurrency = number(&value)?.max(1) as usize,
            "--sources" => o.sources = value.parse().ok().filter(|&k| k > 0).ok_or_else(bad)?,
            "--host" => o.host = value.parse().map_err(|_| bad())?,
            "--port" => o.port = value.parse().map_err(|_| bad())?,
            "--http-port" => o.http_port = value.parse().map_err(|_| bad())?,
            "--inner-password" => o.inner_password = value,
            "--transport" => {
                o.transport = Transport::NAMES
                    .iter()
                    .find(|(name, _)| *name == value)
                    .map(|(_, t)| *t)
                    .ok_or_else(bad)?
            }
            "--codec" => {
                o.codec = match value.as_str() {
                    "json" => Codec::Json,
                    "protobuf" => Codec::Protobuf,
                    _ => return Err(bad()),
                }
            }
            "--ca" => ca = Some(value),
            "--users-on" => o.users_on = Some(address(&value)?),
            "--inner-on" => o.inner_on = Some(address(&value)?),
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }
    if o.command == Command::Chaos {
        if o.conns == 0 {
            o.conns = 2000;
        }
        o.rate.get_or_insert(2000.0);
        if let Some(churn) = o.churn {
            o.attack.churn = churn as f64;
        }
        if o.attack.flooders > attack::MAX_FLOODERS {
            return Err(format!("--flooders: at most {}", attack::MAX_FLOODERS));
        }
    }
    if o.command == Command::Rtt {
        o.conns = 1;
        if o.msgs == 0 {
            o.msgs = 2000;
        }
        if o.transport != Transport::Tcp || o.codec != Codec::Json {
            return Err("rtt speaks plain TCP and JSON".into());
        }
    }
    if o.conns == 0 {
        return Err("--conns is required".into());
    }
    if o.transport != Transport::Tcp && o.users_on.is_none() {
        return Err(format!(
            "--transport {} needs --users-on HOST:PORT (the server's {} port)",
            o.transport.name(),
            if o.transport == Transport::Tls {
                "TlsPort"
            } else {
                "WsPort"
            }
        ));
    }
    match ca {
        Some(path) => o.tls = Some(link::client_config(&path).map_err(|e| e.to_string())?),
        None if o.transport.is_tls() => {
            return Err(format!(
                "--transport {} needs --ca PEM (the CA of the server's certificate)",
                o.transport.name()
            ));
        }
        None => {}
    }
    if o.inner_on.is_some() && (o.via == Via::Http || o.command == Command::Broadcast) {
        return Err("--inner-on is where the inner TCP connection goes: not with HTTP".into());
    }
    let measures_memory = matches!(o.command, Command::Density | Command::Soak);
    if o.msgs == 0 && !measures_memory && o.command != Command::Chaos {
        return Err("--msgs is required".into());
    }
    if measures_memory && o.server_pid.is_none() {
        return Err("density and soak need --server-pid".into());
    }
    if o.body_bytes < payload::MIN_BODY_BYTES {
        return Err(format!(
            "--body-bytes must be at least {}",
            payload::MIN_BODY_BYTES
        ));
    }
    Ok(Some(o))
}

impl Options {
    /// The users of the server.
    fn fleet(&self) -> FleetConfig {
        self.fleet_to(self.users(), true, self.link())
    }

    /// The users of the `limit` writer: plain TCP, unauthenticated, in the run's codec.
    fn limit_fleet(&self, writer: SocketAddr) -> FleetConfig {
        let link = LinkConfig {
            transport: Transport::Tcp,
            tls: None,
            server: writer,
            ..self.link()
        };
        self.fleet_to(writer, false, link)
    }

    fn fleet_to(&self, target: SocketAddr, authenticate: bool, link: LinkConfig) -> FleetConfig {
        FleetConfig {
            target,
            conns: self.conns,
            sources: self.sources,
            concurrency: self.concurrency,
            authenticate,
            heartbeat: self.heartbeat,
            link,
        }
    }

    fn link(&self) -> LinkConfig {
        LinkConfig {
            transport: self.transport,
            codec: self.codec,
            order: self.order,
            tls: self.tls.clone(),
            server: self.users(),
        }
    }

    /// `total` pushes at `rate` per second round-robin over every user, through one inner
    /// connection registered on `registry`: the steady traffic of `soak` and `chaos`.
    fn steady_pusher(&self, rate: f64, total: u64, registry: &Registry) -> std::io::Result<Pusher> {
        let plan = Plan {
            total,
            users: self.conns,
            fanout: 1,
            body_bytes: self.body_bytes,
            pace: Pace::Rate(rate),
        };
        Pusher::connect(
            Route::InnerTcp,
            self.inner(),
            &self.inner_password,
            (self.order, self.codec),
            plan,
            registry,
        )
    }

    /// Deliveries per message: a broadcast reaches every user.
    fn fanout(&self) -> u64 {
        match self.command {
            Command::Broadcast => self.conns as u64,
            _ => 1,
        }
    }

    fn window(&self) -> u64 {
        self.window.unwrap_or(self.conns as u64)
    }

    fn server(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Where the users connect.
    fn users(&self) -> SocketAddr {
        self.users_on.unwrap_or_else(|| self.server())
    }

    /// Where the inner push connection connects.
    fn inner(&self) -> SocketAddr {
        self.inner_on.unwrap_or_else(|| self.server())
    }

    /// What the users speak, for the reports: `tcp, json` and the like.
    fn speech(&self) -> String {
        let codec = match self.codec {
            Codec::Json => "json",
            Codec::Protobuf => "protobuf",
        };
        format!("{}, {codec}", self.transport.name())
    }

    fn http(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.http_port)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match options.command {
        Command::Density => density(&options),
        Command::Push | Command::Broadcast | Command::Limit => throughput(&options),
        Command::LimitWriter => limit::writer_main(&options),
        Command::Soak => soak::run(&options),
        Command::Chaos => chaos::run(&options),
        Command::Rtt => rtt::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `density`: connect and authenticate every user, keep them alive, read the server's RSS.
fn density(o: &Options) -> std::io::Result<()> {
    let pid = o.server_pid.expect("checked when parsing");
    let before = proc::vm_rss_bytes(pid)?;
    let cpu = proc::CpuMeter::start(Some(("server", pid)))?;
    let (mut fleet, took) = Fleet::connect(o.fleet())?;
    let cpu = cpu.stop()?;
    let after_auth = proc::vm_rss_bytes(pid)?;
    let hold_until = Instant::now() + o.hold;
    while Instant::now() < hold_until {
        fleet.turn(Some(Duration::from_millis(100)), None)?;
    }
    fleet.check_all_alive()?;
    let after_hold = proc::vm_rss_bytes(pid)?;
    let n = o.conns as f64;
    let per_conn = |rss: u64| (rss as f64 - before as f64) / n;
    let steps = match o.transport {
        Transport::Tcp => "connects+auths",
        Transport::Tls => "connects+handshakes+auths",
        Transport::Ws => "connects+upgrades+auths",
        Transport::Wss => "connects+handshakes+upgrades+auths",
    };
    println!(
        "density ({}): {} users on {} connected and authenticated in {:.3} s: {:.0} {steps}/s",
        o.speech(),
        o.conns,
        o.users(),
        took.as_secs_f64(),
        n / took.as_secs_f64()
    );
    // The tool's one thread does the client side of every handshake and may be the limit:
    // the server's own cost shows as the rate over its share of a core.
    let server = cpu.other.map_or("-".to_owned(), |(_, share)| {
        format!(
            "{share}: {:.0} {steps} per second of server cpu",
            n / took.as_secs_f64() / share.busy.max(1e-3)
        )
    });
    println!("cpu while connecting: tool {}, server {server}", cpu.tool);
    println!(
        "server VmRSS: before {} KiB, after auth {} KiB, after {} s alive {} KiB",
        before / 1024,
        after_auth / 1024,
        o.hold.as_secs(),
        after_hold / 1024
    );
    println!(
        "server RSS per connection: {:.0} bytes after auth, {:.0} bytes after {} s alive",
        per_conn(after_auth),
        per_conn(after_hold),
        o.hold.as_secs()
    );
    Ok(())
}

/// `push`, `broadcast` and `limit`: each run measures the limit, then (except for `limit`
/// itself) the same traffic through the server.
fn throughput(o: &Options) -> std::io::Result<()> {
    let what = match o.command {
        Command::Push => format!(
            "push via {}",
            if o.via == Via::Tcp { "tcp" } else { "http" }
        ),
        Command::Broadcast => "broadcast via http".to_owned(),
        _ => "limit".to_owned(),
    };
    let pace = match o.rate {
        Some(rate) => format!("at {rate} per second"),
        None if o.command == Command::Limit => "flat out".to_owned(),
        None => format!("flat out, at most {} deliveries in flight", o.window()),
    };
    let unit = match o.command {
        Command::Broadcast => "broadcasts",
        _ => "messages",
    };
    println!(
        "{what}: {} users, {} {unit} with {}-byte bodies, {pace}",
        o.conns, o.msgs, o.body_bytes
    );
    if o.command != Command::Limit {
        let pusher = match (o.command, o.via) {
            (Command::Push, Via::Tcp) => format!(", inner connection to {}", o.inner()),
            _ => String::new(),
        };
        println!(
            "users speak {} to {}{pusher}; the limit writes over plain TCP",
            o.speech(),
            o.users()
        );
    }
    println!("{}", report::latency_clock(o.rate.is_some()));
    println!("{}", report::table_head());
    let mut runs = Vec::new();
    for i in 1..=o.runs {
        let limit = limit::measure(o)?;
        let target = match o.command {
            Command::Limit => None,
            _ => Some(through_server(o)?),
        };
        let run = Run {
            limit: Some(limit),
            target,
        };
        for row in run.rows(&i.to_string()) {
            println!("{row}");
        }
        runs.push(run);
    }
    if o.runs > 1 {
        for row in Run::median(&runs).rows() {
            println!("{row}");
        }
    }
    Ok(())
}

/// One run of `push` or `broadcast` through the server.
fn through_server(o: &Options) -> std::io::Result<Figures> {
    let (route, address) = match (o.command, o.via) {
        (Command::Broadcast, _) => (Route::HttpBroadcast, o.http()),
        (_, Via::Tcp) => (Route::InnerTcp, o.inner()),
        (_, Via::Http) => (Route::HttpPush, o.http()),
    };
    let plan = Plan {
        total: o.msgs,
        users: o.conns,
        fanout: o.fanout(),
        body_bytes: o.body_bytes,
        pace: match o.rate {
            Some(rate) => Pace::Rate(rate),
            None => Pace::Window(o.window()),
        },
    };
    let (mut fleet, _) = Fleet::connect(o.fleet())?;
    let speech = (o.order, o.codec);
    if route == Route::InnerTcp && o.users() != o.inner() {
        pusher::await_route(&mut fleet, o.inner(), &o.inner_password, speech, o.conns)?;
    }
    let registry = fleet.registry();
    let mut pusher = Pusher::connect(route, address, &o.inner_password, speech, plan, registry)?;
    let cpu = proc::CpuMeter::start(o.server_pid.map(|pid| ("server", pid)))?;
    let expected = o.msgs * o.fanout();
    fleet.receive(expected, Some(&mut pusher))?;
    let mut figures = fleet.figures(expected);
    fleet.settle(&mut pusher)?;
    figures.cpu = cpu.stop()?;
    figures.note = pusher.note();
    Ok(figures)
}
