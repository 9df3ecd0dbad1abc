//! An embedded Plex server with its own auth function and online/offline hooks, like the
//! original's example server. Run it instead of `cargo run --release` (the `plex-server`
//! binary), then the other examples against it:
//!
//! ```sh
//! cargo run --example server            # clients and back-ends on 127.0.0.1:9578
//! cargo run --example client            # a user with token (and uid) 1
//! cargo run --example send              # pushes to uid 1 every second
//! ```
//!
//! Usage: `server [PORT]`, default 9578. Tokens here must be numeric user ids; the binary's demo auth accepts any token as the uid,
//! so the client example's default token "1" works with both. Ctrl-C stops it gracefully.

use plex::{Config, Server};

/// A stand-in for a real token check (a signature, a session store): numeric user ids only.
fn auth(token: &str) -> Option<String> {
    let uid = token.trim();
    let numeric = !uid.is_empty() && uid.len() <= 20 && uid.bytes().all(|b| b.is_ascii_digit());
    if !numeric {
        log::info!("refused token {token:?}: not a numeric user id");
    }
    numeric.then(|| uid.to_owned())
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = Config {
        auth_timeout: 5,
        ..Config::default()
    };
    if let Some(port) = std::env::args().nth(1) {
        config.port = port
            .parse()
            .map_err(|_| std::io::Error::other(format!("{port:?} is not a port")))?;
    }
    let server = Server::builder(config)
        .auth(auth)
        .on_online(|uid| log::info!("uid {uid} is online"))
        .on_offline(|uid| log::info!("uid {uid} is offline"))
        .on_message(|uid, message| log::info!("uid {uid} says {} {:?}", message.uri, message.body))
        .handle_signals(true)
        .build()?;
    log::info!("example server listening on {}", server.local_addr());
    server.run()
}
