//! An auth webhook service whose behaviour a test scripts: each token says how its request is
//! answered (at once, late, twice, never, with garbage, too large, by closing...), and each
//! connection the server opens may start with bytes nobody asked for, or be closed after a
//! number of requests. Real sockets on loopback, one thread per connection. Whatever the
//! server sends, the service itself never fails: a token it does not know is answered 403,
//! and a request it cannot read ends the connection.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the service answers one request; the client's token carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `200 {"uid"}`.
    Accept(String),
    /// The same, after a pause of this many milliseconds.
    Late(u64, String),
    /// Two `200 {"uid"}` responses to the one request.
    Twice(String),
    /// `200 {"uid"}` in chunked encoding.
    Chunked(String),
    /// `403`.
    Deny,
    /// `200 {}`.
    NoUid,
    /// No answer; the connection stays open until the server closes it.
    Never,
    /// These bytes instead of a response.
    Garbage(Vec<u8>),
    /// A `200` whose body is far over any sane response size.
    Oversized,
    /// The connection is closed without an answer.
    Close,
}

impl Answer {
    /// The uid the answer may authenticate as.
    pub fn uid(&self) -> Option<&str> {
        match self {
            Answer::Accept(uid)
            | Answer::Late(_, uid)
            | Answer::Twice(uid)
            | Answer::Chunked(uid) => Some(uid),
            _ => None,
        }
    }

    /// The token that makes the service answer this way.
    pub fn token(&self) -> String {
        match self {
            Answer::Accept(uid) => format!("ok:{uid}"),
            Answer::Late(ms, uid) => format!("late:{ms}:{uid}"),
            Answer::Twice(uid) => format!("twice:{uid}"),
            Answer::Chunked(uid) => format!("chunked:{uid}"),
            Answer::Deny => "deny".into(),
            Answer::NoUid => "nouid".into(),
            Answer::Never => "never".into(),
            Answer::Garbage(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("garbage:{hex}")
            }
            Answer::Oversized => "oversized".into(),
            Answer::Close => "close".into(),
        }
    }

    fn parse(token: &str) -> Answer {
        let (kind, rest) = token.split_once(':').unwrap_or((token, ""));
        match kind {
            "ok" => Answer::Accept(rest.into()),
            "late" => match rest.split_once(':') {
                Some((ms, uid)) => Answer::Late(ms.parse().unwrap_or(0), uid.into()),
                None => Answer::Deny,
            },
            "twice" => Answer::Twice(rest.into()),
            "chunked" => Answer::Chunked(rest.into()),
            "nouid" => Answer::NoUid,
            "never" => Answer::Never,
            "garbage" => Answer::Garbage(
                (0..rest.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&rest[2 * i..2 * i + 2], 16).ok())
                    .collect(),
            ),
            "oversized" => Answer::Oversized,
            "close" => Answer::Close,
            _ => Answer::Deny,
        }
    }

    /// The bytes written in answer, or `None` to close without answering.
    fn response(&self) -> Option<Vec<u8>> {
        let ok = |uid: &str| {
            let body = format!(r#"{{"uid":"{uid}"}}"#);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let bytes = match self {
            Answer::Accept(uid) | Answer::Late(_, uid) => ok(uid).into_bytes(),
            Answer::Twice(uid) => ok(uid).repeat(2).into_bytes(),
            Answer::Chunked(uid) => {
                let body = format!(r#"{{"uid":"{uid}"}}"#);
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .into_bytes()
            }
            Answer::Deny => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Answer::NoUid => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            Answer::Garbage(bytes) => bytes.clone(),
            Answer::Oversized => {
                let body = format!(r#"{{"uid":"{}"}}"#, "x".repeat(256 * 1024));
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            Answer::Never | Answer::Close => return None,
        };
        Some(bytes)
    }
}

/// How one connection of the server's starts or ends, whatever its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prelude {
    Plain,
    /// These bytes are written as soon as the connection is accepted, before any request.
    Early(Vec<u8>),
    /// The connection is closed, unanswered, when this many requests have been answered.
    CloseAfter(u8),
}

pub struct ScriptedAuth {
    addr: SocketAddr,
    preludes: Arc<Mutex<VecDeque<Prelude>>>,
    stop: Arc<AtomicBool>,
    accepter: Option<JoinHandle<()>>,
}

impl ScriptedAuth {
    pub fn start() -> ScriptedAuth {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the auth service");
        let addr = listener.local_addr().unwrap();
        let preludes: Arc<Mutex<VecDeque<Prelude>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (scripts, stopped) = (preludes.clone(), stop.clone());
        let accepter = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let prelude = scripts.lock().unwrap().pop_front();
                std::thread::spawn(move || serve(stream, prelude.unwrap_or(Prelude::Plain)));
            }
        });
        ScriptedAuth {
            addr,
            preludes,
            stop,
            accepter: Some(accepter),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    /// The connections accepted from now on start and end as `preludes` say, in order.
    pub fn script_connections(&self, preludes: Vec<Prelude>) {
        *self.preludes.lock().unwrap() = preludes.into();
    }
}

impl Drop for ScriptedAuth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accepting thread
        if let Some(accepter) = self.accepter.take() {
            let _ = accepter.join();
        }
    }
}

fn serve(stream: TcpStream, prelude: Prelude) {
    // A server that neither answers nor closes cannot hold a thread for ever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let mut writer = stream;
    let Ok(reading) = writer.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reading);
    let limit = match prelude {
        Prelude::Early(bytes) => {
            let _ = writer.write_all(&bytes);
            usize::MAX
        }
        Prelude::CloseAfter(n) => usize::from(n),
        Prelude::Plain => usize::MAX,
    };
    for _ in 0..limit {
        let Some(token) = read_token(&mut reader) else {
            return;
        };
        let answer = Answer::parse(&token);
        if let Answer::Late(ms, _) = answer {
            std::thread::sleep(Duration::from_millis(ms));
        }
        match answer.response() {
            Some(bytes) => {
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
            None if answer == Answer::Never => {
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                return;
            }
            None => return,
        }
    }
}

/// Reads one request and returns its token; `None` when the connection ends or the request
/// is not one the server's webhook would send.
fn read_token(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    let mut length = 0;
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    loop {
        line.clear();
        reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(json["token"].as_str().unwrap_or_default().to_owned())
}
