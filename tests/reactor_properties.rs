//! A stateful property test of the whole reactor: generated sequences of client behaviour,
//! played on real sockets against a fresh in-process server with small limits, and the
//! promises a user relies on checked during and after each sequence.
//!
//! The actors: ten client sockets (any of which may authenticate as a user, as an inner
//! connection, or never), three HTTP sockets, the handle, bursts of clients that connect,
//! send a token and leave, and in webhook cases an auth service whose answers the sequence
//! scripts too (`common/scripted_auth.rs`). They connect, send any frame (valid messages of
//! every uri, garbage, oversized headers, partial frames, any bytes, floods), stop and resume
//! reading, half-close, reset, push, kick and broadcast over the handle or HTTP, and pause so
//! that timeouts fire. A case ends with every actor leaving, or with a shutdown while they
//! are all still there.
//!
//! Checked after every operation: the server answers (its reactor thread is alive), its
//! gauges add up, and its buffers stay within what its limits allow. Checked throughout: a
//! well-behaved client, authenticated first and always reading, keeps its connection; every
//! answer an actor reads is one the protocol allows (no `/auth/success` without a token that
//! could succeed, no push for another uid, HTTP answers with the status the request calls
//! for). Checked at the end: the well-behaved client got every push addressed to it that the
//! server acknowledged (over the handle, in an HTTP 200, or before an inner connection's next
//! heartbeat answer), each once and in the order its source sent them, and nothing else;
//! once the actors have left, the gauges are back to the well-behaved client alone and a
//! fresh client authenticates at its first attempt and gets a push; the server shuts down;
//! the hooks saw each uid go online and offline in turn.
//!
//! Checks never depend on timing: they wait on conditions with deadlines, and the generator's
//! pauses only decide which timeouts fire. A case takes about a third of a second; the
//! default count keeps the file to about twenty seconds, and
//! `PROPTEST_CASES=1000 cargo test --test reactor_properties` runs for about five minutes.
//! Failure persistence is off: a minimal failing sequence becomes a plain `#[test]` at the
//! end of this file.
//!
//! The file runs unchanged against older versions of the server: settings and gauges they
//! lack are set and read by name, and the checks that need them are skipped.

mod common;
#[path = "reactor_properties/peers.rs"]
mod peers;
#[path = "reactor_properties/run.rs"]
mod run;

use common::chunks::config;
use common::scripted_auth::{Answer, Prelude};
use common::start;
use plex::client::Connection;
use plex::config::AuthMode;
use plex::protocol::{ByteOrder, Message, uri};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use run::Run;

/// Cases per run unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 48;

// ---- The server under test: small limits, so that sequences of tens of operations reach them.

const MAX_PENDING: usize = 64 * 1024;
const MAX_FRAME: usize = 4 * 1024;
const MAX_INNER_FRAME: usize = 16 * 1024;
/// Most bytes a client connection may hold in its buffers: twice its output cap (an output
/// buffer drops its written half only once that is half of it), a partial frame, and slack.
const BUFFERED_PER_CONNECTION: u64 = (2 * MAX_PENDING + MAX_INNER_FRAME + 4 * 1024) as u64;

/// The config of every case. Settings that not every version of the server knows (the soft
/// output limit) are set by name, and only where the version knows them: the same file then
/// runs against older versions unchanged.
fn server_config(auth_url: Option<String>) -> plex::Config {
    // With the webhook, a client's answer may wait for the one in flight (up to
    // AuthWebhookTimeout): AuthTimeout leaves room for that.
    let auth_timeout = if auth_url.is_some() { 3 } else { 1 };
    let mut settings = serde_json::json!({
        "AuthTimeout": auth_timeout,
        "HeartbeatTimeout": 2,
        "MaxPendingBytes": MAX_PENDING,
        "MaxFrameSize": MAX_FRAME,
        "MaxInnerFrameSize": MAX_INNER_FRAME,
        "MaxBadFrames": 3,
        "MaxAuthFailures": 3,
        // Fewer than the HTTP actors: eviction and refusal happen.
        "MaxHttpConnections": 2,
        "HttpIdleTimeout": 1,
        "MaxHttpBody": 16 * 1024,
        "ShutdownTimeout": 1,
        "AuthWebhookTimeout": 1,
        "AuthWebhookConnections": 1,
    });
    for (key, value) in [("SoftPendingBytes", 16 * 1024), ("SoftPendingSeconds", 1)] {
        if plex::Config::from_json(&format!(r#"{{"{key}": {value}}}"#)).is_ok() {
            settings[key] = value.into();
        }
    }
    let limits = plex::Config::from_json(&settings.to_string()).expect("test settings");
    let base = common::config();
    plex::Config {
        port: base.port,
        http_port: base.http_port,
        bind_address: base.bind_address,
        http_bind_address: base.http_bind_address,
        auth_mode: if auth_url.is_some() {
            AuthMode::Webhook
        } else {
            AuthMode::Uid
        },
        auth_url,
        ..limits
    }
}

/// The memory gauge, on versions that have it.
fn buffered_bytes(stats: &plex::Stats) -> Option<u64> {
    serde_json::to_value(stats).unwrap()["buffered_bytes"].as_u64()
}

// ---- What a sequence is made of.

/// Client sockets, HTTP sockets, and the uids actors authenticate as.
const CLIENTS: usize = 10;
const HTTPS: usize = 3;
const UIDS: [&str; 3] = ["u0", "u1", "u2"];
/// The well-behaved client's uid; no actor ever takes it, kicks it or pushes past its budget.
const GOOD: &str = "good";
/// A uid nobody has.
const GHOST: &str = "ghost";
/// Push bytes that may be addressed to the well-behaved client in one case. Pushes queued in
/// one turn all count against `MaxPendingBytes` before the turn writes any, and the socket
/// buffers take what it writes: under both, it is never a slow consumer however it is
/// scheduled.
const GOOD_BUDGET: usize = 48 * 1024;
/// Most bytes one flood writes.
const FLOOD_BYTES: usize = 1536 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Uid {
    Good,
    Actor(u8),
    Ghost,
}

impl Uid {
    fn name(self) -> &'static str {
        match self {
            Uid::Good => GOOD,
            Uid::Actor(i) => UIDS[i as usize],
            Uid::Ghost => GHOST,
        }
    }
}

/// The uri of a push: the one pushes use, or one the server must refuse.
#[derive(Clone, Copy, Debug)]
enum PushUri {
    Plain,
    Reserved(u8),
    Empty,
}

impl PushUri {
    fn text(self) -> &'static str {
        match self {
            PushUri::Plain => "/p",
            PushUri::Reserved(i) => uri::RESERVED[i as usize % uri::RESERVED.len()],
            PushUri::Empty => "",
        }
    }

    fn is_valid(self) -> bool {
        matches!(self, PushUri::Plain)
    }
}

/// The token a client sends to get `answer`: in webhook mode the token scripts the auth
/// service's answer; in uid mode it is the uid the answer accepts, or one that is refused.
fn token(answer: &Answer, webhook: bool) -> String {
    match answer.uid() {
        _ if webhook => answer.token(),
        Some(uid) => uid.to_owned(),
        None => "not a uid".to_owned(),
    }
}

#[derive(Clone, Debug)]
struct PushSpec {
    to: Uid,
    uri: PushUri,
    pad: u16,
    /// A well-formed `{"uid", "uri", "body"}`; otherwise a body the server must refuse.
    well_formed: bool,
}

/// One complete frame a client sends.
#[derive(Clone, Debug)]
enum Frame {
    Auth(Answer),
    InnerAuth {
        right: bool,
    },
    Heartbeat,
    Push(PushSpec),
    Upstream(u16),
    /// A uri only the server sends.
    ServerUri(bool),
    /// A zero-length keep-alive frame.
    Empty,
    /// A payload that is not JSON.
    BadJson(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Piece {
    Frame(Frame),
    /// The frame, this many times in a row (fewer if that would pass `FLOOD_BYTES`).
    Flood(Frame, u32),
    /// The start of the frame only; what the socket sends next completes it.
    Partial(Frame, Index),
    /// A length header past every frame limit.
    Oversize(u16),
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
enum ClientOp {
    /// A new connection in this slot (the old one is closed).
    Connect(As),
    /// Sends the pieces, one write each (connecting first if the slot is empty).
    Send(Vec<Piece>),
    StopReading,
    Resume,
    HalfClose,
    /// Closes with `SO_LINGER` 0: the server sees a reset.
    Reset,
    Close,
}

/// What a new client connection starts as.
#[derive(Clone, Debug)]
enum As {
    Anonymous,
    /// It sends this token first.
    User(Answer),
    /// It authenticates with the right inner password and waits for the answer.
    Inner,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bearer {
    Right,
    Wrong,
    Missing,
}

#[derive(Clone, Debug)]
enum Route {
    /// `uid` (the first) or `uids` (all of them).
    Push {
        to: Vec<Uid>,
        many: bool,
        uri: PushUri,
        pad: u16,
    },
    Broadcast {
        uri: PushUri,
        pad: u16,
    },
    Online(Vec<Uid>),
    Kick(Uid),
    Stats,
    Metrics,
    Host,
    Unknown,
    WrongMethod,
    BadJson,
}

#[derive(Clone, Debug)]
struct Request {
    route: Route,
    bearer: Bearer,
    close: bool,
}

#[derive(Clone, Debug)]
enum Malformed {
    HugeLength,
    PartialHead(Index),
    OversizedHead,
    Chunked,
    ExpectContinue,
    BadLine,
    Garbage(Vec<u8>),
}

#[derive(Clone, Debug)]
enum HttpPiece {
    Request(Request),
    /// The request, pipelined this many times.
    Flood(Request, u16),
    Malformed(Malformed),
}

#[derive(Clone, Debug)]
enum HttpOp {
    Connect,
    Send(Vec<HttpPiece>),
    StopReading,
    Resume,
    HalfClose,
    Reset,
}

#[derive(Clone, Debug)]
enum HandleOp {
    Push {
        to: Vec<Uid>,
        uri: PushUri,
        pad: u16,
    },
    Broadcast {
        uri: PushUri,
        pad: u16,
    },
    Kick(Uid),
    Online,
}

#[derive(Clone, Debug)]
enum Op {
    Client(u8, ClientOp),
    Http(u8, HttpOp),
    Handle(HandleOp),
    /// Clients that connect, send this token and leave at once, one after the other.
    Churn(Answer, u8),
    /// Milliseconds during which the actors do nothing: timeouts fire.
    Pause(u16),
}

#[derive(Clone, Debug)]
enum Mode {
    Uid,
    /// Tokens are checked by the scripted auth service; its connections start as these say.
    Webhook(Vec<Prelude>),
}

/// How a case ends, once a fresh client has shown it can authenticate and get a push.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Every actor leaves, then the server shuts down.
    ActorsLeave,
    /// The server shuts down with every actor still there.
    Shutdown,
}

#[derive(Clone, Debug)]
struct Case {
    mode: Mode,
    ops: Vec<Op>,
    end: End,
}

// ---- Strategies.

fn uid() -> impl Strategy<Value = Uid> {
    prop_oneof![
        3 => Just(Uid::Good),
        4 => (0..3u8).prop_map(Uid::Actor),
        1 => Just(Uid::Ghost),
    ]
}

/// Up to three uids, repeats allowed: a uid listed twice must still get a push once.
fn uids() -> impl Strategy<Value = Vec<Uid>> {
    vec(uid(), 1..4)
}

/// A uid that may be kicked: never the well-behaved client's.
fn other_uid() -> impl Strategy<Value = Uid> {
    prop_oneof![3 => (0..3u8).prop_map(Uid::Actor), 1 => Just(Uid::Ghost)]
}

fn push_uri() -> impl Strategy<Value = PushUri> {
    prop_oneof![
        8 => Just(PushUri::Plain),
        1 => any::<u8>().prop_map(PushUri::Reserved),
        1 => Just(PushUri::Empty),
    ]
}

/// Body padding: mostly small, sometimes past `MaxFrameSize`.
fn pad() -> impl Strategy<Value = u16> {
    prop_oneof![6 => 0..64u16, 1 => 0..8192u16]
}

fn answer() -> impl Strategy<Value = Answer> {
    let uid = || (0..UIDS.len()).prop_map(|i| UIDS[i].to_owned());
    prop_oneof![
        6 => uid().prop_map(Answer::Accept),
        2 => (0..1500u64, uid()).prop_map(|(ms, u)| Answer::Late(ms, u)),
        1 => uid().prop_map(Answer::Twice),
        1 => uid().prop_map(Answer::Chunked),
        2 => Just(Answer::Deny),
        1 => Just(Answer::NoUid),
        2 => Just(Answer::Never),
        1 => vec(any::<u8>(), 0..40).prop_map(Answer::Garbage),
        1 => Just(Answer::Oversized),
        1 => Just(Answer::Close),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => answer().prop_map(Frame::Auth),
        2 => any::<bool>().prop_map(|right| Frame::InnerAuth { right }),
        3 => Just(Frame::Heartbeat),
        3 => (uid(), push_uri(), pad(), prop::bool::weighted(0.9)).prop_map(
            |(to, uri, pad, well_formed)| Frame::Push(PushSpec { to, uri, pad, well_formed })
        ),
        1 => pad().prop_map(Frame::Upstream),
        1 => any::<bool>().prop_map(Frame::ServerUri),
        1 => Just(Frame::Empty),
        1 => vec(any::<u8>(), 0..64).prop_map(Frame::BadJson),
    ]
}

/// What floods are made of: mostly what the server answers, or what it delivers.
fn flood_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => Just(Frame::Heartbeat),
        2 => frame(),
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => frame().prop_map(Piece::Frame),
        3 => (flood_frame(), prop_oneof![2..64u32, 1000..200_000u32])
            .prop_map(|(f, n)| Piece::Flood(f, n)),
        1 => (frame(), any::<Index>()).prop_map(|(f, at)| Piece::Partial(f, at)),
        1 => any::<u16>().prop_map(Piece::Oversize),
        1 => vec(any::<u8>(), 1..64).prop_map(Piece::Raw),
    ]
}

fn client_op() -> impl Strategy<Value = ClientOp> {
    prop_oneof![
        4 => prop_oneof![
            1 => Just(As::Anonymous),
            2 => answer().prop_map(As::User),
            1 => Just(As::Inner),
        ]
        .prop_map(ClientOp::Connect),
        8 => vec(piece(), 1..4).prop_map(ClientOp::Send),
        1 => Just(ClientOp::StopReading),
        1 => Just(ClientOp::Resume),
        1 => Just(ClientOp::HalfClose),
        1 => Just(ClientOp::Reset),
        1 => Just(ClientOp::Close),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        4 => (uids(), any::<bool>(), push_uri(), pad())
            .prop_map(|(to, many, uri, pad)| Route::Push { to, many, uri, pad }),
        2 => (push_uri(), pad()).prop_map(|(uri, pad)| Route::Broadcast { uri, pad }),
        1 => uids().prop_map(Route::Online),
        1 => other_uid().prop_map(Route::Kick),
        1 => Just(Route::Stats),
        1 => Just(Route::Metrics),
        1 => Just(Route::Host),
        1 => Just(Route::Unknown),
        1 => Just(Route::WrongMethod),
        1 => Just(Route::BadJson),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let bearer =
        prop_oneof![6 => Just(Bearer::Right), 1 => Just(Bearer::Wrong), 1 => Just(Bearer::Missing)];
    (route(), bearer, prop::bool::weighted(0.1)).prop_map(|(route, bearer, close)| Request {
        route,
        bearer,
        close,
    })
}

fn malformed() -> impl Strategy<Value = Malformed> {
    prop_oneof![
        Just(Malformed::HugeLength),
        any::<Index>().prop_map(Malformed::PartialHead),
        Just(Malformed::OversizedHead),
        Just(Malformed::Chunked),
        Just(Malformed::ExpectContinue),
        Just(Malformed::BadLine),
        vec(any::<u8>(), 1..64).prop_map(Malformed::Garbage),
    ]
}

fn http_op() -> impl Strategy<Value = HttpOp> {
    let piece = prop_oneof![
        6 => request().prop_map(HttpPiece::Request),
        1 => (request(), 2..300u16).prop_map(|(r, n)| HttpPiece::Flood(r, n)),
        2 => malformed().prop_map(HttpPiece::Malformed),
    ];
    prop_oneof![
        2 => Just(HttpOp::Connect),
        6 => vec(piece, 1..4).prop_map(HttpOp::Send),
        1 => Just(HttpOp::StopReading),
        1 => Just(HttpOp::Resume),
        1 => Just(HttpOp::HalfClose),
        1 => Just(HttpOp::Reset),
    ]
}

fn handle_op() -> impl Strategy<Value = HandleOp> {
    prop_oneof![
        3 => (uids(), push_uri(), pad())
            .prop_map(|(to, uri, pad)| HandleOp::Push { to, uri, pad }),
        1 => (push_uri(), pad()).prop_map(|(uri, pad)| HandleOp::Broadcast { uri, pad }),
        1 => other_uid().prop_map(HandleOp::Kick),
        1 => Just(HandleOp::Online),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..CLIENTS as u8, client_op()).prop_map(|(i, op)| Op::Client(i, op)),
        5 => (0..HTTPS as u8, http_op()).prop_map(|(i, op)| Op::Http(i, op)),
        3 => handle_op().prop_map(Op::Handle),
        1 => (answer(), 1..16u8).prop_map(|(a, n)| Op::Churn(a, n)),
        1 => prop_oneof![3 => 0..200u16, 1 => 900..1300u16].prop_map(Op::Pause),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let prelude = prop_oneof![
        2 => Just(Prelude::Plain),
        1 => vec(any::<u8>(), 1..32).prop_map(Prelude::Early),
        1 => (0..3u8).prop_map(Prelude::CloseAfter),
    ];
    let mode = prop_oneof![
        2 => Just(Mode::Uid),
        1 => vec(prelude, 0..4).prop_map(Mode::Webhook),
    ];
    let end = prop_oneof![3 => Just(End::ActorsLeave), 1 => Just(End::Shutdown)];
    (mode, vec(op(), 1..32), end).prop_map(|(mode, ops, end)| Case { mode, ops, end })
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn the_reactor_keeps_its_promises_whatever_clients_do(case in case()) {
        run(&case);
    }
}

/// Plays a case against a fresh server and checks it.
fn run(case: &Case) {
    let mut run = Run::start(&case.mode);
    for (n, op) in case.ops.iter().enumerate() {
        run.apply(op);
        run.check(&format!("after operation {n} ({op:?})"));
    }
    run.finish(case.end);
}

// ---- Minimal failing sequences found by the property, kept as plain tests.

/// A user that floods heartbeats without reading the answers. Found on 52b6b5b, whose
/// reactor panicked (`invalid key`) when the answers closed the connection in the middle of
/// the frames of one read.
#[test]
fn a_heartbeat_flood_that_never_reads_the_answers() {
    one_client_sends(
        vec![
            Piece::Frame(Frame::Auth(Answer::Accept("u0".into()))),
            Piece::Flood(Frame::Heartbeat, 20_000),
        ],
        End::ActorsLeave,
    );
}

/// Random bytes that happen to read as a protobuf frame. Found on fa5c116 in CI: the
/// server rightly answered such a connection in protobuf, and the property's own client
/// took the answer for a malformed JSON frame.
#[test]
fn random_bytes_that_read_as_protobuf_get_protobuf_answers() {
    one_client_sends(
        vec![
            Piece::Raw(vec![0, 0, 0, 2, 0x08, 0x01]),
            Piece::Frame(Frame::Heartbeat),
        ],
        End::Shutdown,
    );
}

/// A case in uid mode where one client sends `pieces`, then `end`.
fn one_client_sends(pieces: Vec<Piece>, end: End) {
    run(&Case {
        mode: Mode::Uid,
        ops: vec![Op::Client(0, ClientOp::Send(pieces))],
        end,
    });
}

/// Clients that send a token the auth service is slow to answer, and leave at once. Found
/// on 5162682, shrunk to 14 clients answered 221 ms late (kept here with a wider margin):
/// the webhook still asked about them after they had gone, one after the other, while a
/// fresh client waited past its AuthTimeout.
#[test]
fn the_auth_service_is_not_asked_about_clients_that_have_gone() {
    run(&Case {
        mode: Mode::Webhook(Vec::new()),
        ops: vec![Op::Churn(Answer::Late(500, UIDS[0].into()), 14)],
        end: End::ActorsLeave,
    });
}

/// A uid listed twice in one push, over the handle and over HTTP. Found on 5162682 (and on
/// 52b6b5b): the well-behaved client got each of these pushes twice.
#[test]
fn a_uid_listed_twice_gets_the_push_once() {
    let twice = vec![Uid::Good, Uid::Good];
    let request = Request {
        route: Route::Push {
            to: twice.clone(),
            many: true,
            uri: PushUri::Plain,
            pad: 0,
        },
        bearer: Bearer::Right,
        close: false,
    };
    run(&Case {
        mode: Mode::Uid,
        ops: vec![
            Op::Handle(HandleOp::Push {
                to: twice,
                uri: PushUri::Plain,
                pad: 0,
            }),
            Op::Http(0, HttpOp::Send(vec![HttpPiece::Request(request)])),
        ],
        end: End::ActorsLeave,
    });
}

/// Connections that stop in the middle of a frame keep that frame's bytes, not the buffer
/// of the read the bytes came with. Seen in the property's memory gauge (two connections
/// holding 128 KiB with 4 KiB frames), made certain here with several connections each
/// ending a large read in the middle of a frame.
#[test]
fn a_partial_frame_costs_its_bytes_not_the_read_it_came_with() {
    const CONNECTIONS: usize = 8;
    let server = start(server_config(None));
    let frame_of = |body: &str| {
        let mut out = Vec::new();
        Message::new("/up", body).encode(&mut out, ByteOrder::Big);
        out
    };
    let partial = frame_of(&"p".repeat(1000));
    let whole = frame_of(&"w".repeat(1000));
    let users: Vec<Connection> = (0..CONNECTIONS).map(|i| server.user(UIDS[i % 3])).collect();
    let upstream = |n: usize| {
        let events = &server.events;
        events.wait_for(&format!("{n} upstream messages"), |e| e.len() >= n);
    };
    // A whole frame and the start of the next, so that the start is kept on its own...
    for c in &users {
        common::send_raw(c, &[&whole[..], &partial[..10]].concat());
    }
    let online = 3; // the users' online events come first
    upstream(online + CONNECTIONS);
    // ...then its end, a read's worth of whole frames, and the start of one more.
    let batch = 64 * 1024 / whole.len();
    for c in &users {
        let rest = [&partial[10..], &whole.repeat(batch), &partial[..10]].concat();
        common::send_raw(c, &rest);
    }
    upstream(online + CONNECTIONS * (batch + 2));
    let buffered = buffered_bytes(&server.stats()).expect("a server with a memory gauge");
    let bound = CONNECTIONS as u64 * (MAX_FRAME as u64 + 1024);
    assert!(
        buffered <= bound,
        "{buffered} bytes buffered for {CONNECTIONS} partial frames of 10 bytes"
    );
}
