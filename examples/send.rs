//! A business back-end that pushes through `PlexClient` every second, like the original's
//! send example. Start a server and a user first:
//!
//! ```sh
//! cargo run --release                   # the server (or: cargo run --example server)
//! cargo run --example client            # uid 1, prints what it receives
//! cargo run --example send              # pushes {"logic": N} to uid 1 every second
//! ```
//!
//! Usage: `send [HOST:PORT ...]`: the servers' inner addresses, default `127.0.0.1:9578`.
//! The inner password comes from `PLEX_INNER_PASSWORD`, default `plex-inner`.

use std::time::Duration;

use plex::client::{PlexClient, PlexClientConfig};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = PlexClientConfig::default();
    let servers: Vec<String> = std::env::args().skip(1).collect();
    if !servers.is_empty() {
        config.inner_servers = servers;
    }
    if let Ok(password) = std::env::var("PLEX_INNER_PASSWORD") {
        config.inner_password = password;
    }
    let client = PlexClient::new(config).expect("a valid config");
    if let Err(e) = client.wait_connected(Duration::from_secs(5)) {
        // Not fatal: the client keeps trying, and each push says whether it was queued.
        log::warn!("{e}");
    }
    for n in 1u64.. {
        let body = format!(r#"{{"logic": {n}}}"#);
        match client.send("1", "/logic/test", &body) {
            Ok(()) => println!("pushed {body} to uid 1"),
            Err(e) => println!("push {n} failed: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
