//! What reaches the log when clients send secrets in odd shapes: with the real binary at
//! trace level, no line may hold a token, a password or a bearer, whether the frame was
//! understood or refused as malformed; and a uid cannot forge log lines of its own.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::hostile::*;
use common::*;
use plex::client::Connection;
use plex::protocol::{ByteOrder, uri};

const JWT_SECRET: &str = "jwt-key-3b8d6e01";
const PASSWORD: &str = "inner-pw-7c1f2a9e";
const TOKEN: &str = "tok-secret-5a0c4b7d";
const BEARER_SECRET: &str = "bearer-secret-9e2f6c13";
const FORGED: &str = "INFO forged";

/// Frames that carry `secret` in the places a decoder may quote in its errors.
fn odd_shapes(uri: &str, secret: &str) -> Vec<Vec<u8>> {
    let json = [
        format!(r#"{{"uri":"{uri}","body":{{"t":"{secret}"}}}}"#),
        format!(r#"{{"uri":"{uri}","body":["{secret}"]}}"#),
        format!(r#"{{"uri":"{uri}","body":[1,{{"deep":["{secret}"]}}]}}"#),
        format!(r#"{{"seq":"{secret}","uri":"{uri}","body":"{secret}"}}"#),
        format!(r#"{{"seq":["{secret}"],"uri":"{uri}","body":"x"}}"#),
        format!(r#"{{"uri":"{uri}","body":"{secret}","body":"{secret}"}}"#),
        format!(r#"{{"uri":"{uri}","body":"{secret}"#), // cut short
        format!(r#"{{"uri":"{uri}","body":"{secret}"}} trailing {secret}"#),
        format!(r#"{{"uri":["{uri}","{secret}"],"body":"{secret}"}}"#),
        format!(r#"["{uri}","{secret}"]"#),
        format!(r#""{secret}""#),
    ];
    let mut frames: Vec<Vec<u8>> = json.iter().map(|j| j.as_bytes().to_vec()).collect();
    frames.push(
        [
            br#"{"uri":"/auth/server","body":""#,
            secret.as_bytes(),
            b"\xff\"}",
        ]
        .concat(),
    );
    frames
}

/// Sends each frame on a connection of its own, then the end of the stream: once the server
/// has closed it, it has read the frame.
fn send_each(addr: std::net::SocketAddr, frames: &[Vec<u8>]) {
    for payload in frames {
        let mut c = Connection::connect(addr, ByteOrder::Big).unwrap();
        send_raw(&c, &frame(ByteOrder::Big, payload));
        c.stream().shutdown(std::net::Shutdown::Write).unwrap();
        assert_closed(&mut c);
    }
}

#[test]
fn secrets_in_odd_shapes_never_reach_the_log_and_uids_cannot_forge_lines() {
    let args = [
        "--trace",
        "--jwt-secret",
        JWT_SECRET,
        "--inner-password",
        PASSWORD,
    ];
    let mut server = ChildServer::spawn(&args, "trace", None);
    let addr = server.addr;
    send_each(addr, &odd_shapes(uri::AUTH, TOKEN));
    send_each(addr, &odd_shapes(uri::INNER_AUTH, PASSWORD));
    // Understood frames: a token that is no JWT, a wrong password, the right one.
    let mut c = Connection::connect(addr, ByteOrder::Big).unwrap();
    assert!(!c.authenticate(TOKEN, WAIT).unwrap());
    assert!(!c.authenticate_inner(&format!("{PASSWORD}x"), WAIT).unwrap());
    assert!(c.authenticate_inner(PASSWORD, WAIT).unwrap());
    // A bearer that is wrong but looks like a secret.
    let mut api = RawHttp::new(std::net::TcpStream::connect(server.http).unwrap());
    let bearer = format!("Bearer {BEARER_SECRET}");
    api.send(&request("GET", "/plex/v1/stats", Some(&bearer), ""));
    assert_eq!(api.response().status, 401);
    // A uid with a line break in it.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({ "sub": format!("evil\n{FORGED}"), "exp": exp });
    let mut evil = Connection::connect(addr, ByteOrder::Big).unwrap();
    assert!(
        evil.authenticate(&sign_jwt(JWT_SECRET.as_bytes(), &claims), WAIT)
            .unwrap()
    );
    assert_alive(&mut evil);
    drop(evil);

    let status = server.terminate();
    let log = server.log();
    assert!(status.success(), "{status:?}");
    assert!(
        log.iter().any(|l| l.contains("TRACE")),
        "trace logging was on"
    );
    let secrets = [JWT_SECRET, PASSWORD, TOKEN, BEARER_SECRET];
    let leaks: Vec<&String> = (log.iter())
        .filter(|l| secrets.iter().any(|s| l.contains(s)))
        .collect();
    assert!(leaks.is_empty(), "secrets in the log: {leaks:#?}");
    let forged: Vec<&String> = log
        .iter()
        .filter(|l| l.trim_start().starts_with(FORGED))
        .collect();
    assert!(forged.is_empty(), "a uid forged log lines: {forged:#?}");
    assert!(
        log.iter().any(|l| l.contains(&format!("evil\\n{FORGED}"))),
        "the uid is logged, escaped"
    );
}
