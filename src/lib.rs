//! Plex: a high-density push gateway.
//!
//! Clients hold one long-lived TCP connection each and speak the length-prefixed JSON protocol
//! of the original Go Plex (see `PROTOCOL.md`); business back-ends push to them by uid over
//! inner connections or through the [`Handle`]. Everything runs on one single-threaded mio
//! reactor: [`Server::run`] runs it to completion, [`Server::turn`] lets a host drive it.
//!
//! ```no_run
//! use plex::{Config, Server};
//!
//! let server = Server::builder(Config::default())
//!     .auth(|token| plex::auth::token_as_uid(token))
//!     .on_online(|uid| println!("{uid} online"))
//!     .on_offline(|uid| println!("{uid} offline"))
//!     .build()?;
//! let handle = server.handle();
//! std::thread::spawn(move || handle.push("7", "/news", "hello"));
//! server.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
mod handle;
pub mod history;
pub mod protocol;
mod reactor;
mod server;
mod stats;
mod upstream;

pub use config::{Config, ConfigError};
pub use handle::{Handle, HandleError};
pub use protocol::Message;
pub use reactor::CloseReason;
pub use server::{Server, ServerBuilder};
pub use stats::Stats;

/// Internals exposed for the benchmarks, property tests and fuzz targets only; not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::reactor::http::{Head, MAX_HEAD, MAX_HEADERS, Parsed, Request, parse_request};
    pub use crate::reactor::{Registry, TimerId, TimerWheel, feed};
    pub use crate::upstream::response::{MAX_RESPONSE, Response, parse_response};
}
