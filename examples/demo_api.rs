//! A business HTTP API in front of `PlexClient`, like the original's demo: `POST
//! /plexApi/v1/send` with `{"uid": "1", "body": "...", "uri": "/chat"}` pushes the message
//! through every Plex server. Start a server and a user first:
//!
//! ```sh
//! cargo run --release                   # the server (or: cargo run --example server)
//! cargo run --example client            # uid 1, prints what it receives
//! cargo run --example demo_api          # this API on 127.0.0.1:9501
//! curl -X POST 127.0.0.1:9501/plexApi/v1/send -d '{"uid": "1", "uri": "/chat", "body": "hi"}'
//! ```
//!
//! Usage: `demo_api [LISTEN_ADDR] [HOST:PORT ...]`, defaults `127.0.0.1:9501` and
//! `127.0.0.1:9578`. Answers `200 {"msg": "success"}` once the push is queued for every
//! server, `400` for a bad request, `503` when the push cannot be queued. The HTTP side is a
//! minimal HTTP/1.1 server: a thread per connection, one request per connection, bodies by
//! `Content-Length`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use plex::client::{PlexClient, PlexClientConfig, PushError};
use serde::Deserialize;
use serde_json::json;

const SEND_PATH: &str = "/plexApi/v1/send";
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// A client that sends nothing for this long is hung up on.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The request body of the original demo.
#[derive(Deserialize)]
struct SendRequest {
    uid: String,
    uri: String,
    #[serde(default)]
    body: String,
}

/// An HTTP error answer: status and message.
struct HttpError(u16, String);

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError(400, format!("cannot read the request: {e}"))
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9501".into());
    let mut config = PlexClientConfig::default();
    let servers: Vec<String> = args.collect();
    if !servers.is_empty() {
        config.inner_servers = servers;
    }
    let client = Arc::new(PlexClient::new(config)?);
    if let Err(e) = client.wait_connected(Duration::from_secs(5)) {
        log::warn!("{e}; pushes fail with 503 until a server is reached");
    }
    let listener = TcpListener::bind(&listen)?;
    log::info!("demo API listening on http://{listen}{SEND_PATH}");
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let client = client.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, &client) {
                log::debug!("connection: {e}");
            }
        });
    }
    Ok(())
}

/// Answers one request, then closes the connection.
fn serve(mut stream: TcpStream, client: &PlexClient) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let (status, body) = match read_request(&mut stream).and_then(|r| route(&r, client)) {
        Ok(()) => (200, json!({"msg": "success"})),
        Err(HttpError(status, message)) => (status, json!({"error": message})),
    };
    let body = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
}

fn route(request: &Request, client: &PlexClient) -> Result<(), HttpError> {
    if request.path != SEND_PATH {
        return Err(HttpError(404, format!("no such path: {}", request.path)));
    }
    if request.method != "POST" {
        return Err(HttpError(405, format!("{SEND_PATH} takes POST")));
    }
    let push: SendRequest = serde_json::from_slice(&request.body)
        .map_err(|e| HttpError(400, format!("bad request body: {e}")))?;
    client
        .send(&push.uid, &push.uri, &push.body)
        .map_err(|e| match e {
            PushError::BadUri(_) | PushError::EmptyUid => HttpError(400, e.to_string()),
            _ => HttpError(503, e.to_string()),
        })
}

/// Reads the head with `httparse`, then a `Content-Length` body.
fn read_request(stream: &mut TcpStream) -> Result<Request, HttpError> {
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, path, head_len, body_len) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError(400, "the request ended early".into()));
        }
        input.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&input) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = request.method.unwrap_or_default().to_owned();
                let path = request.path.unwrap_or_default();
                let path = path.split('?').next().unwrap_or_default().to_owned();
                let body_len = content_length(request.headers, &method)?;
                break (method, path, head_len, body_len);
            }
            Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
                return Err(HttpError(431, "request head too large".into()));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(HttpError(400, format!("bad request: {e}"))),
        }
    };
    if body_len > MAX_BODY {
        return Err(HttpError(
            413,
            format!("bodies are limited to {MAX_BODY} bytes"),
        ));
    }
    while input.len() < head_len + body_len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError(400, "the body ended early".into()));
        }
        input.extend_from_slice(&chunk[..n]);
    }
    Ok(Request {
        method,
        path,
        body: input[head_len..head_len + body_len].to_vec(),
    })
}

/// The body length; a POST must say it (no chunked bodies).
fn content_length(headers: &[httparse::Header], method: &str) -> Result<usize, HttpError> {
    let header = |name: &str| headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
    if header("transfer-encoding").is_some() {
        return Err(HttpError(411, "send the body with a Content-Length".into()));
    }
    match header("content-length") {
        Some(h) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| HttpError(400, "bad Content-Length".into())),
        None if method == "POST" => Err(HttpError(411, "Content-Length required".into())),
        None => Ok(0),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
