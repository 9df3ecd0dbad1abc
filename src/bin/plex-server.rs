//! `plex-server`: the gateway as a process. Every setting comes from a flag, a `PLEX_*`
//! environment variable or a JSON config file, in that order of precedence (the keys and
//! their layering are `plex::config`); this file walks the command line, sets up logging,
//! and runs the server. Exit status: 0 after a clean stop, 1 when the server cannot start or
//! fails, 2 for a bad command line or configuration.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use log::{info, warn};
use plex::config::{self, DEFAULT_INNER_PASSWORD, LogFormat};
use plex::{Config, Server};

const ABOUT: &str = "\
Usage: plex-server [OPTIONS]

Runs the Plex push gateway. With no options it serves clients on port 9578 and the
HTTP API on 9579, and takes each client's token as its uid (demo mode).

Every setting Foo can be given as a flag --foo, an environment variable PLEX_FOO, or the key
Foo of a JSON config file; a flag wins over the environment, which wins over the file. The
secrets InnerPassword, MetricsToken and JwtSecret can be read from a file instead, so that
they never appear in the process list.

Options:
  --config FILE                  JSON config file with the keys of the Go Config
                                 env PLEX_CONFIG
  --check-config                 check the settings (secret files included), print them in
                                 one line with secrets masked, and exit: 0 if valid, 2 if not
  -h, --help                     print this help
  -V, --version                  print the version
";

const AUTH_MODES: &str = "
Auth modes (AuthMode):
  uid      the token is the uid (trusts clients)
  jwt      an HS256 JWT signed with JwtSecret; sub is the uid
  webhook  POST {token, remote} to AuthUrl; 200 {uid} accepts
Unless AuthMode is given, a JwtSecret implies jwt and an AuthUrl webhook.

Exit status: 0 after a clean stop, 1 when the server cannot start or fails, 2 for a bad
command line or configuration.
";

/// What the command line asks for.
enum Request {
    Run(Config),
    Check(Config),
    Help,
    Version,
}

/// Reads the command line, with `env` looking up environment variables.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Request, String> {
    let mut args = args.into_iter();
    let mut file = env("PLEX_CONFIG")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    let mut check = false;
    let mut flags = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Request::Help),
            "-V" | "--version" => return Ok(Request::Version),
            "--check-config" => {
                check = true;
                continue;
            }
            _ if !arg.starts_with('-') => {
                return Err(format!("unexpected argument '{arg}' (see --help)"));
            }
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let takes_value = name == "--config"
            || config::flag_takes_value(&name)
                .ok_or_else(|| format!("unknown option {name} (see --help)"))?;
        let value = match inline {
            Some(value) => value,
            None if takes_value => args.next().ok_or_else(|| format!("{name} needs a value"))?,
            None => "true".to_owned(),
        };
        if name == "--config" {
            file = Some(value.into());
        } else {
            flags.push((name, value));
        }
    }
    let config = Config::load(file.as_deref(), env, &flags).map_err(|e| e.to_string())?;
    Ok(if check {
        Request::Check(config)
    } else {
        Request::Run(config)
    })
}

fn init_logging(config: &Config) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if config.show_trace {
        builder.filter_level(log::LevelFilter::Trace);
    }
    if config.log_format == LogFormat::Json {
        builder.format(|out, record| {
            let ts = out.timestamp_millis();
            let text = |s: String| serde_json::Value::String(s).to_string();
            writeln!(
                out,
                r#"{{"ts":"{ts}","level":"{}","target":{},"msg":{}}}"#,
                record.level().as_str().to_ascii_lowercase(),
                text(record.target().to_owned()),
                text(record.args().to_string()),
            )
        });
    }
    builder.init();
}

/// The configuration read again from the same command line, environment and files (SIGHUP).
fn reload(args: &[String]) -> Result<Config, String> {
    match parse_args(args.iter().cloned(), |name| std::env::var(name).ok())? {
        Request::Run(config) | Request::Check(config) => Ok(config),
        Request::Help | Request::Version => Err("no configuration".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Fatal errors go to stderr whatever RUST_LOG says: an operator must see why it stopped.
    let config = match parse_args(args.iter().cloned(), |name| std::env::var(name).ok()) {
        Ok(Request::Run(config)) => config,
        Ok(Request::Check(config)) => {
            if let Err(e) = Server::check(&config) {
                eprintln!("plex-server: {e}");
                return ExitCode::from(2);
            }
            println!("plex-server: config ok: {}", config.summary());
            return ExitCode::SUCCESS;
        }
        Ok(Request::Help) => {
            print!("{ABOUT}{}{AUTH_MODES}", config::options_help());
            return ExitCode::SUCCESS;
        }
        Ok(Request::Version) => {
            println!("plex-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("plex-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    if config.inner_password == DEFAULT_INNER_PASSWORD {
        warn!("InnerPassword is the default; set --inner-password before exposing this server");
    }
    let server = Server::builder(config)
        .handle_signals(true)
        .on_reload(move || reload(&args));
    let server = match server.build() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("plex-server: cannot start: {e}");
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
            eprintln!("plex-server: reactor failed: {e}");
            ExitCode::FAILURE
        }
    }
}
