//! A user that authenticates and prints what is pushed to it, reconnecting whenever it loses
//! the connection. Start a server first, then a back-end that pushes to this uid:
//!
//! ```sh
//! cargo run --release                   # the server (or: cargo run --example server)
//! cargo run --example client            # token "1": uid 1 with the demo auth
//! cargo run --example send              # pushes to uid 1 every second
//! ```
//!
//! Usage: `client [TOKEN] [HOST:PORT]`, defaults `1` and `127.0.0.1:9578`; or
//! `client TOKEN --host-api HOST:PORT` to ask the server's HTTP API (`GET /plex/v1/host`)
//! which server to use.

use std::process::ExitCode;
use std::time::Duration;

use plex::client::{Event, ServerAddr, UserClient, UserConfig};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let token = args.first().map_or("1", String::as_str);
    let server = match args.get(1..).unwrap_or_default() {
        [] => ServerAddr::Direct("127.0.0.1:9578".into()),
        [flag, api] if flag == "--host-api" => ServerAddr::HostApi(api.clone()),
        [addr] => ServerAddr::Direct(addr.clone()),
        _ => {
            eprintln!("usage: client [TOKEN] [HOST:PORT | --host-api HOST:PORT]");
            return ExitCode::from(2);
        }
    };
    let config = UserConfig {
        server,
        // Half the server's default HeartbeatTimeout of 120 s would do; a shorter interval
        // notices a dead server sooner.
        heartbeat: Duration::from_secs(30),
        ..UserConfig::new("", token)
    };
    let client = match UserClient::connect(config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("client: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("authenticated with token {token:?}; waiting for pushes (Ctrl-C to quit)");
    for event in client.iter() {
        match event {
            Event::Push(m) => println!("push seq={} uri={} body={}", m.seq, m.uri, m.body),
            Event::Disconnected {
                reason,
                reconnecting,
            } => println!("disconnected ({reason:?}); reconnecting: {reconnecting}"),
            Event::Reconnected => println!("reconnected"),
            Event::Resumed { recovered: true } => println!("resumed: nothing was missed"),
            Event::Resumed { recovered: false } => println!("resumed: some pushes were missed"),
        }
    }
    ExitCode::FAILURE
}
