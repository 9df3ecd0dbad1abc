//! Interop with Google's protobuf for Python (upb), which builds `plex.Message` from
//! `proto/plex.proto` at run time (tests/py/plex_proto.py): Python reads what Rust writes and
//! writes the very same bytes, and Rust reads any bytes as Python does, hostile ones included,
//! but for groups, which this codec refuses where upb skips them. Inputs are generated with a
//! fixed seed and sent to one Python process in a batch.
//!
//! A Python client built the same way then talks to a running server in protobuf, as a user
//! and as an inner connection.
//!
//! Needs `python3` with the `protobuf` package: `pip install protobuf`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::chunks::mutated;
use plex::protocol::{Codec, Message, ProtoError, proto};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// Runs tests/py/plex_proto.py over `requests`; returns its answer to each.
fn python(requests: &[String]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("python3")
        .arg(format!("{root}/tests/py/plex_proto.py"))
        .arg(format!("{root}/proto/plex.proto"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3, then `pip install protobuf`")
        });
    let mut stdin = child.stdin.take().expect("piped");
    // Python reads everything before it answers, so the answers cannot fill the pipe first.
    let written = stdin.write_all((requests.join("\n") + "\n").as_bytes());
    drop(stdin);
    let output = child.wait_with_output().expect("python3 ran");
    assert!(
        output.status.success(),
        "tests/py/plex_proto.py failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    written.expect("requests written to python3");
    let answers: Vec<String> = String::from_utf8(output.stdout)
        .expect("UTF-8 answers")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(answers.len(), requests.len(), "one answer per request");
    answers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// What Python made of a payload: the message and how many unknown groups it skipped, or
/// its error.
fn python_decoded(answer: &str) -> Result<(Message, usize), String> {
    let parts: Vec<&str> = answer.split(' ').collect();
    match parts[..] {
        ["ok", seq, uri, body, groups] => {
            let text = |h: &str| String::from_utf8(unhex(h)).expect("UTF-8 from Python");
            let message = Message {
                seq: seq.parse().expect("an int64"),
                uri: text(uri),
                body: text(body),
            };
            Ok((message, groups.parse().expect("a count")))
        }
        _ => Err(answer.to_owned()),
    }
}

/// `n` values of `strategy`, the same every run.
fn sample<T>(strategy: impl Strategy<Value = T>, n: usize) -> Vec<T> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

fn payload(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    proto::write_message(&mut out, m.seq, &m.uri, &m.body);
    out
}

fn messages() -> Vec<Message> {
    let mut messages = vec![
        Message::default(),
        Message::new("/auth/server", "token"),
        Message {
            seq: -1,
            uri: "/ünï\0code".into(),
            body: "😀".repeat(100),
        },
        Message {
            seq: i64::MIN,
            uri: String::new(),
            body: "{\"uid\":\"7\"}".into(),
        },
    ];
    let any_message = (any::<i64>(), any::<String>(), any::<String>())
        .prop_map(|(seq, uri, body)| Message { seq, uri, body });
    messages.extend(sample(any_message, 500));
    messages
}

#[test]
fn python_reads_what_rust_writes_and_writes_the_same_bytes() {
    let messages = messages();
    let mut requests = Vec::new();
    for m in &messages {
        requests.push(format!("decode {}", hex(&payload(m))));
        let (uri, body) = (hex(m.uri.as_bytes()), hex(m.body.as_bytes()));
        requests.push(format!("encode {} {uri} {body}", m.seq));
    }
    let answers = python(&requests);
    for (m, answers) in messages.iter().zip(answers.chunks(2)) {
        assert_eq!(python_decoded(&answers[0]), Ok((m.clone(), 0)), "{m:?}");
        let theirs = unhex(&answers[1]);
        assert_eq!(theirs, payload(m), "{m:?}");
        if !theirs.is_empty() {
            assert_eq!(Codec::sniff(&theirs), Some(Codec::Protobuf));
        }
        assert_eq!(proto::decode(&theirs).unwrap().into_owned(), *m);
    }
}

/// Payloads at the edges of the wire format: unknown fields of every wire type, known fields
/// with another wire type, groups, overlong and overflowing varints, tags and lengths, bad
/// UTF-8, truncations.
const EDGES: &[&[u8]] = &[
    b"",
    b"\x0a\x01x\x12\x01a",
    b"\x10\x05\x12\x01a",
    b"\x15abcd",
    b"\x1d1234\x19abcdefgh",
    b"\x20\x96\x01\x21abcdefgh\x22\x03xyz\x25abcd",
    b"\x1b\x1c\x12\x01a",
    b"\x23\x2b\x2c\x24",
    b"\x23\x00\x24",
    b"\x23\x2c",
    b"\x24\x12\x01a",
    b"\x00\x01",
    b"\x02\x00",
    b"\x0e",
    b"\x0f",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x08\x81\x80\x80\x80\x80\x80\x80\x80\x80\x00",
    b"\x88\x80\x80\x80\x00\x05",
    b"\x88\x80\x80\x80\x80\x00\x05",
    b"\xf8\xff\xff\xff\x0f\x05",
    b"\xf8\xff\xff\xff\x1f\x05",
    b"\x12\x81\x80\x80\x80\x00a",
    b"\x12\x81\x80\x80\x80\x80\x00a",
    b"\x12\x81\x80\x80\x80\x70a",
    b"\x12\xff\xff\xff\xff\x0fa",
    b"\x12\x01\xff",
    b"\x1a\x03\xed\xa0\x80",
    b"\x22\x01\xff\x12\x01a",
    b"\x12\x01a\x12\x01b\x08\x01\x08\x02",
    b"\x12\x05ab",
    b"\x21abc",
    b"\x25abc",
    b"\x88",
    b"\x08",
];

#[test]
fn rust_reads_any_bytes_as_python_does_but_refuses_groups() {
    let valid = (any::<i64>(), "[a-z/]{0,8}", any::<String>())
        .prop_map(|(seq, uri, body)| payload(&Message { seq, uri, body }));
    let piece = prop_oneof![
        valid,
        proptest::sample::select(EDGES).prop_map(<[u8]>::to_vec)
    ];
    let pieces = vec(piece, 1..4).prop_map(|pieces| pieces.concat());
    let mut inputs: Vec<Vec<u8>> = EDGES.iter().map(|e| e.to_vec()).collect();
    inputs.extend(sample(pieces.clone(), 1000));
    inputs.extend(sample(mutated(pieces), 3000));
    inputs.extend(sample(vec(any::<u8>(), 0..48), 500));

    let requests: Vec<String> = inputs
        .iter()
        .map(|b| format!("decode {}", hex(b)))
        .collect();
    let answers = python(&requests);
    let (mut accepted, mut refused) = (0, 0);
    for (bytes, answer) in inputs.iter().zip(&answers) {
        let ours = proto::decode(bytes).map(|m| m.into_owned());
        match python_decoded(answer) {
            Ok((_, groups)) if groups > 0 => {
                assert_eq!(ours, Err(ProtoError::Group), "{bytes:x?}")
            }
            Ok((theirs, _)) => {
                assert_eq!(ours, Ok(theirs), "{bytes:x?}");
                accepted += 1;
            }
            Err(e) => {
                assert!(ours.is_err(), "{bytes:x?}: Python says {e}, Rust {ours:?}");
                refused += 1;
            }
        }
    }
    // The inputs reach both sides of the line.
    assert!(
        accepted > 200 && refused > 200,
        "{accepted} accepted, {refused} refused"
    );
}

/// A Python protobuf client of a running server (tests/py/plex_proto.py in client mode).
struct PythonClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PythonClient {
    fn connect(addr: std::net::SocketAddr) -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut child = Command::new("python3")
            .arg(format!("{root}/tests/py/plex_proto.py"))
            .arg(format!("{root}/proto/plex.proto"))
            .args(["client", &addr.ip().to_string(), &addr.port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3 with the protobuf package");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        PythonClient {
            child,
            stdin,
            stdout,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut line).expect("python answers");
        assert!(!line.is_empty(), "the Python client exited");
        line.trim_end().to_owned()
    }

    fn send(&mut self, uri: &str, body: &str) {
        writeln!(
            self.stdin,
            "send {} {}",
            hex(uri.as_bytes()),
            hex(body.as_bytes())
        )
        .unwrap();
        assert_eq!(self.line(), "sent");
    }

    /// The next message: uri, body, offset.
    fn recv(&mut self) -> (String, String, u64) {
        writeln!(self.stdin, "recv").unwrap();
        let line = self.line();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "msg", "{line}");
        let text = |h: &str| String::from_utf8(unhex(h)).unwrap();
        (text(fields[2]), text(fields[3]), fields[4].parse().unwrap())
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_python_protobuf_client_authenticates_pushes_and_receives_through_the_server() {
    use plex::protocol::PushRequest;
    let server = common::start(plex::Config {
        history_size: 10,
        ..common::config()
    });
    let mut user = PythonClient::connect(server.addr);
    user.send("/auth/server", "7");
    assert_eq!(user.recv().0, "/auth/success");
    user.send("/heartbeat", "");
    assert_eq!(user.recv().0, "/heartbeat");
    // A Python back-end pushes over an inner connection in protobuf; the push request is the
    // same JSON object as ever, in the body string.
    let mut backend = PythonClient::connect(server.addr);
    backend.send("/inner/auth/server", plex::config::DEFAULT_INNER_PASSWORD);
    assert_eq!(backend.recv().0, "/auth/success");
    let request = PushRequest {
        uid: "7".into(),
        uri: "/news".into(),
        body: "from python <&>".into(),
    };
    backend.send("/logic/send/msg", &request.to_json());
    assert_eq!(user.recv(), ("/news".into(), "from python <&>".into(), 1));
    // And a push from the handle reaches it in protobuf too.
    server.handle.push("7", "/more", "x").unwrap();
    assert_eq!(user.recv(), ("/more".into(), "x".into(), 2));
}
