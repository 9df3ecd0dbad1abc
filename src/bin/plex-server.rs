//! `plex-server`: the gateway as a process. Settings come from a JSON config file
//! (`--config`, PascalCase keys of the original) and flags, flags winning.

use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info, warn};
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
  --auth MODE                how tokens are checked: uid (the token is the uid) [uid]
  --auth-timeout SECS        close connections not authenticated by then [30]
  --heartbeat SECS           heartbeat interval clients are told to use [60]
  --heartbeat-timeout SECS   close connections silent for this long [120]
  --max-connection N         cap on live connections, 0 = none [0]
  --max-pending-bytes N      close a client that leaves this much output unread [1048576]
  --little-endian            little-endian frame headers (default big-endian)
  --trace                    log every frame (same as RUST_LOG=trace)
  -h, --help                 print this help
  -V, --version              print the version
";

struct Args {
    config: Config,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config_file: Option<PathBuf> = None;
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("plex-server {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--little-endian" | "--trace" => flags.push((name, None)),
            "--config"
            | "--port"
            | "--http-port"
            | "--bind"
            | "--http-bind"
            | "--outer-servers"
            | "--inner-password"
            | "--auth"
            | "--auth-timeout"
            | "--heartbeat"
            | "--heartbeat-timeout"
            | "--max-connection"
            | "--max-pending-bytes" => {
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
                };
                if name == "--config" {
                    config_file = Some(value.into());
                } else {
                    flags.push((name, Some(value)));
                }
            }
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }

    let mut config = match &config_file {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    // Flags are applied after the file, so they override it.
    for (name, value) in flags {
        let value = value.unwrap_or_default();
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match name.as_str() {
            "--port" => {
                config.port = number(&value)?
                    .try_into()
                    .map_err(|_| "--port: out of range")?
            }
            "--http-port" => {
                config.http_port = number(&value)?
                    .try_into()
                    .map_err(|_| "--http-port: out of range")?
            }
            "--bind" => {
                config.bind_address = value
                    .parse()
                    .map_err(|_| format!("--bind: {value:?} is not an IP address"))?
            }
            "--http-bind" => {
                config.http_bind_address = value
                    .parse()
                    .map_err(|_| format!("--http-bind: {value:?} is not an IP address"))?
            }
            "--outer-servers" => {
                config.outer_servers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--inner-password" => config.inner_password = value,
            "--auth" if value == "uid" => {}
            "--auth" => return Err(format!("--auth: unknown mode {value:?} (known: uid)")),
            "--auth-timeout" => config.auth_timeout = number(&value)?,
            "--heartbeat" => config.heartbeat = number(&value)?,
            "--heartbeat-timeout" => config.heartbeat_timeout = number(&value)?,
            "--max-connection" => config.max_connection = number(&value)? as usize,
            "--max-pending-bytes" => config.max_pending_bytes = number(&value)? as usize,
            "--little-endian" => config.little_endian = true,
            "--trace" => config.show_trace = true,
            _ => unreachable!("every flag above is listed in the parser"),
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(Some(Args { config }))
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
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plex-server: {e}");
            return ExitCode::from(2);
        }
    };
    let config = args.config;
    init_logging(config.show_trace);
    warn!("auth mode uid: each client's token is taken as its uid; this trusts clients");
    if config.inner_password == plex::config::DEFAULT_INNER_PASSWORD {
        warn!("InnerPassword is the default; set --inner-password before exposing this server");
    }

    let server = match Server::builder(config)
        .auth(plex::auth::token_as_uid)
        .handle_signals(true)
        .build()
    {
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
