//! Connections the reactor opens itself, each kind in a table of its own and handing its
//! results back to the reactor as values: today the auth webhook client.

pub mod response;
pub mod webhook;

pub use webhook::{Verdict, Webhook};
