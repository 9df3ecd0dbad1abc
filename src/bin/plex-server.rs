//! `plex-server`: the gateway as a process. Settings come from a JSON config file
//! (`--config`, PascalCase keys of the original) and flags, flags winning.

use std::process::ExitCode;

use log::{error, info, warn};
use plex::config::{AuthMode, DEFAULT_INNER_PASSWORD};
use plex::{Config, Server};

const USAGE: &str = "\
Usage: plex-server [OPTIONS]

Runs the Plex push gateway. With no options it serves clients on port 9578 and the
HTTP API on 9579, and takes each client's token as its uid (demo mode).

Options:
  --config FILE              JSON config file with the keys of the Go Config
  --port PORT                TCP port for clients and inner connections [9578]
  --http-port PORT           HTTP API port [9579]
  --bind ADDR                address of the TCP listener [0.0.0.0]
  --http-bind ADDR           address of the HTTP listener [0.0.0.0]
  --outer-servers A,B        ip:port list handed out by /plex/v1/host [127.0.0.1:PORT]
  --inner-password SECRET    password of inner connections and the HTTP API [plex-inner]
  --auth MODE                how tokens are checked [uid]:
                               uid      the token is the uid (trusts clients)
                               jwt      an HS256 JWT signed with --jwt-secret; sub is the uid
                               webhook  POST {token, remote} to --auth-url; 200 {uid} accepts
  --jwt-secret SECRET        HS256 secret of --auth jwt (implies it)
  --auth-url URL             http://host:port/path of --auth webhook (implies it)
  --auth-webhook-connections N   connections to the auth service at most [8]
  --auth-webhook-timeout SECS    reject when the auth service takes longer [5]
  --auth-timeout SECS        close connections not authenticated by then [30]
  --heartbeat SECS           heartbeat interval clients are told to use [60]
  --heartbeat-timeout SECS   close connections silent for this long [120]
  --max-connection N         cap on live connections, 0 = none [0]
  --max-pending-bytes N      close a client that leaves this much output unread [1048576]
  --shutdown-timeout SECS    how long a shutdown waits for pending output [5]
  --little-endian            little-endian frame headers (default big-endian)
  --trace                    log every frame (same as RUST_LOG=trace)
  -h, --help                 print this help
  -V, --version              print the version
";

/// Flags that take no value.
const SWITCHES: [&str; 2] = ["--little-endian", "--trace"];

/// Parses the command line; `Ok(None)` when it only asked for help or the version.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut args = args.peekable();
    let mut config_file = None;
    let mut flags: Vec<(String, String)> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("plex-server {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            _ => {}
        }
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None if SWITCHES.contains(&arg.as_str()) => (arg, String::new()),
            None => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg, value)
            }
        };
        if name == "--config" {
            config_file = Some(value);
        } else {
            flags.push((name, value));
        }
    }

    let mut config = match &config_file {
        Some(path) => Config::from_file(path.as_ref()).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    // `--auth` wins over the mode that `--jwt-secret` or `--auth-url` imply, wherever it stands.
    let auth_given = flags.iter().any(|(name, _)| name == "--auth");
    // Flags are applied after the file, so they override it.
    for (name, value) in flags {
        apply_flag(&mut config, &name, value, auth_given)?;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(Some(config))
}

fn apply_flag(
    config: &mut Config,
    name: &str,
    value: String,
    auth_given: bool,
) -> Result<(), String> {
    let number = || {
        value
            .parse::<u64>()
            .map_err(|_| format!("{name}: {value:?} is not a number"))
    };
    let port = || {
        value
            .parse::<u16>()
            .map_err(|_| format!("{name}: {value:?} is not a port"))
    };
    let address = || {
        value
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not an IP address"))
    };
    match name {
        "--port" => config.port = port()?,
        "--http-port" => config.http_port = port()?,
        "--bind" => config.bind_address = address()?,
        "--http-bind" => config.http_bind_address = address()?,
        "--outer-servers" => {
            config.outer_servers = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }
        "--inner-password" => config.inner_password = value,
        "--auth" => {
            config.auth_mode = serde_json::from_value(serde_json::Value::String(value.clone()))
                .map_err(|_| format!("--auth: unknown mode {value:?} (uid, jwt or webhook)"))?
        }
        "--jwt-secret" => {
            config.jwt_secret = Some(value);
            if !auth_given {
                config.auth_mode = AuthMode::Jwt;
            }
        }
        "--auth-url" => {
            config.auth_url = Some(value);
            if !auth_given {
                config.auth_mode = AuthMode::Webhook;
            }
        }
        "--auth-webhook-connections" => config.auth_webhook_connections = number()? as usize,
        "--auth-webhook-timeout" => config.auth_webhook_timeout = number()?,
        "--auth-timeout" => config.auth_timeout = number()?,
        "--heartbeat" => config.heartbeat = number()?,
        "--heartbeat-timeout" => config.heartbeat_timeout = number()?,
        "--max-connection" => config.max_connection = number()? as usize,
        "--max-pending-bytes" => config.max_pending_bytes = number()? as usize,
        "--shutdown-timeout" => config.shutdown_timeout = number()?,
        "--little-endian" => config.little_endian = true,
        "--trace" => config.show_trace = true,
        _ => return Err(format!("unknown option {name:?} (see --help)")),
    }
    Ok(())
}

fn init_logging(trace: bool) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if trace {
        builder.filter_level(log::LevelFilter::Trace);
    }
    builder.init();
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.show_trace);
    if config.inner_password == DEFAULT_INNER_PASSWORD {
        warn!("InnerPassword is the default; set --inner-password before exposing this server");
    }
    let server = match Server::builder(config).handle_signals(true).build() {
        Ok(server) => server,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        "plex-server {} running: {}",
        env!("CARGO_PKG_VERSION"),
        server.config().summary()
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("reactor failed: {e}");
            ExitCode::FAILURE
        }
    }
}
