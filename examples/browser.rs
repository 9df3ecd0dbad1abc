//! Plex in a browser: an embedded server with its WebSocket listener, plus a tiny HTTP server
//! for the demo page (`examples/browser/`) and the JavaScript client (`clients/js/plex.js`).
//! Open the printed URL, then push to the page with the printed curl line:
//!
//! ```sh
//! cargo run --example browser                    # page on http://127.0.0.1:9590/
//! cargo run --example browser -- --tls-cert cert.pem --tls-key key.pem   # the same over wss
//! ```
//!
//! Ports, all on 127.0.0.1: clients 9578, HTTP API 9579, WebSocket 9580, the page 9590. The
//! auth is the demo's (the token is the uid), so the page's default token `7` is uid 7. The
//! page learns where to connect from `GET /plex/v1/host` and the WebSocket port from its URL.
//! For wss the certificate must be valid for 127.0.0.1 in the browser's eyes (e.g. made by
//! `mkcert 127.0.0.1`, or any certificate with Chromium's `--ignore-certificate-errors`).
//! Ctrl-C stops it. `tests/browser.rs` drives this same server and page in headless Chromium.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use plex::{Config, Server};

/// The files the page server serves: path, content type, contents.
const FILES: [(&str, &str, &str); 5] = [
    ("/", "text/html", include_str!("browser/index.html")),
    ("/app.js", "text/javascript", include_str!("browser/app.js")),
    ("/style.css", "text/css", include_str!("browser/style.css")),
    (
        "/plex.js",
        "text/javascript",
        include_str!("../clients/js/plex.js"),
    ),
    ("/favicon.ico", "image/x-icon", ""),
];

/// Where the demo listens; 0 picks any free port.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub clients: u16,
    pub http: u16,
    pub ws: u16,
    pub page: u16,
}

/// The ports of `cargo run --example browser`.
pub const PORTS: Ports = Ports {
    clients: 9578,
    http: 9579,
    ws: 9580,
    page: 9590,
};

/// The demo server's config: loopback only (the demo auth believes any client), with the
/// WebSocket listener, wss when a certificate and key are given.
pub fn config(ports: Ports, tls: Option<(String, String)>) -> Config {
    let (tls_cert, tls_key) = tls.unzip();
    Config {
        port: ports.clients,
        http_port: ports.http,
        ws_port: Some(ports.ws),
        bind_address: Ipv4Addr::LOCALHOST.into(),
        http_bind_address: Ipv4Addr::LOCALHOST.into(),
        tls_cert,
        tls_key,
        // A page that loses its connection gets what it missed when it is back.
        history_size: 100,
        ..Config::default()
    }
}

/// The page's URL: the query tells it where the HTTP API and the WebSocket port are (see the
/// top of `examples/browser/app.js`); add `&token=...` to choose the user.
pub fn page_url(page: SocketAddr, server: &Server) -> String {
    let ws = server.ws_addr().expect("the demo has a WebSocket listener");
    let secure = if server.config().tls_cert.is_some() {
        "&secure=1"
    } else {
        ""
    };
    format!(
        "http://{page}/?api=http://{}&ws_port={}{secure}",
        server.http_addr(),
        ws.port()
    )
}

/// Serves the page's files on `listener`, one thread per connection (a browser opens several,
/// and may leave one idle), until the process ends.
pub fn serve_pages(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Err(e) = answer(stream) {
                    log::debug!("page server: {e}");
                }
            });
        }
    });
}

/// Answers one GET with one of `FILES`, then closes.
fn answer(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = BufReader::new(stream.try_clone()?.take(8192));
    let mut request_line = String::new();
    head.read_line(&mut request_line)?;
    let mut line = String::new();
    while head.read_line(&mut line)? > 2 {
        line.clear(); // the headers do not matter here
    }
    let mut words = request_line.split_ascii_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match FILES.iter().find(|(p, ..)| *p == path) {
        Some(&(_, content_type, body)) => ("200 OK", content_type, body),
        None => ("404 Not Found", "text/plain", "not found\n"),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// `--tls-cert PATH --tls-key PATH`, both or neither.
fn tls_from_args() -> Result<Option<(String, String)>, String> {
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--tls-cert" => &mut cert,
            "--tls-key" => &mut key,
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        *slot = Some(args.next().ok_or(format!("{flag} needs a path"))?);
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

#[allow(dead_code)] // tests/browser.rs includes this file for the functions above
fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let tls = tls_from_args().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{e}; usage: browser [--tls-cert PATH --tls-key PATH]"),
        )
    })?;
    let server = Server::builder(config(PORTS, tls))
        .on_online(|uid| log::info!("uid {uid} is online"))
        .on_offline(|uid| log::info!("uid {uid} is offline"))
        .on_message(|uid, message| log::info!("uid {uid} says {} {:?}", message.uri, message.body))
        .handle_signals(true)
        .build()?;
    let pages = TcpListener::bind((Ipv4Addr::LOCALHOST, PORTS.page))?;
    println!(
        "\nOpen the demo page (token 7, which is uid 7):\n\n    {}\n\nand push to it:\n\n    \
         curl {}/plex/v1/push -H 'Authorization: Bearer {}' \
         -d '{{\"uid\": \"7\", \"uri\": \"/news\", \"body\": \"hello\"}}'\n",
        page_url(pages.local_addr()?, &server) + "&token=7",
        server.http_addr(),
        plex::config::DEFAULT_INNER_PASSWORD,
    );
    serve_pages(pages);
    server.run()
}
