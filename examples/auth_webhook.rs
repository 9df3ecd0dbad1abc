//! A tiny auth service for `plex-server --auth webhook`: it accepts tokens of the form
//! `secret-<uid>` and answers `200 {"uid": "<uid>"}`, and `403` to anything else.
//!
//! Run it, then the server pointing at it, then a client:
//!
//! ```sh
//! cargo run --example auth_webhook                 # listens on 127.0.0.1:9600
//! cargo run --release -- --auth-url http://127.0.0.1:9600/auth
//! # a client authenticating with token "secret-7" becomes uid 7; any other token fails
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:9600")?;
    println!("auth webhook on http://127.0.0.1:9600/auth");
    for stream in listener.incoming() {
        let stream = stream?;
        // One thread per connection: Plex keeps a few connections alive and reuses them.
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("connection ended: {e}");
            }
        });
    }
    Ok(())
}

/// Answers requests on one kept-alive connection until the server closes it.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if reader.read_until(b'\n', &mut head)? == 0 {
                return Ok(());
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        request
            .parse(&head)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let length = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;

        let token = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned));
        let response = match token.as_deref().and_then(|t| t.strip_prefix("secret-")) {
            Some(uid) if !uid.is_empty() => {
                let json = serde_json::json!({ "uid": uid }).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                )
            }
            _ => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_owned(),
        };
        writer.write_all(response.as_bytes())?;
    }
}
