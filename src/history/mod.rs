//! Offline history (PROTOCOL.md §9): the last `HistorySize` pushes of each uid, kept whether
//! the uid is online or not, so that a client that reconnects gets what it missed. Each push
//! to a uid takes the next offset (1, 2, …) under the uid's epoch; the epoch changes whenever
//! the uid's history is lost, so a client that presents an old epoch learns it missed pushes.
//!
//! On a single node the history lives in memory ([`Memory`]); in cluster mode it lives in
//! Redis, behind the cluster's broker.

mod memory;

pub use memory::Memory;

/// One retained push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    pub offset: u64,
    pub seq: i64,
    pub uri: String,
    pub body: String,
}

/// Where a client stands after presenting its last position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Every push after the client's position is still retained, under the same epoch.
    pub recovered: bool,
    /// The uid's current epoch and last offset.
    pub epoch: String,
    pub offset: u64,
    /// The retained pushes after the client's position (all retained ones when the epoch
    /// changed), oldest first.
    pub pushes: Vec<Retained>,
}

impl Recovery {
    /// Nothing is known of the history (there is none, or it cannot be read): the client may
    /// have missed anything.
    pub fn lost() -> Self {
        Recovery {
            recovered: false,
            epoch: String::new(),
            offset: 0,
            pushes: Vec::new(),
        }
    }

    /// What a client that last received `(epoch, offset)` missed, from a uid's history: its
    /// epoch, last offset and the pushes it retains, oldest first.
    pub fn from_history(epoch: &str, offset: u64, history: Log) -> Self {
        let same = history.epoch == epoch;
        let since = if same { offset } else { 0 };
        let first = history
            .pushes
            .first()
            .map_or(history.offset + 1, |p| p.offset);
        Recovery {
            // No gap: the first push it lacks is still retained (or there is none).
            recovered: same && offset <= history.offset && offset + 1 >= first,
            pushes: (history.pushes.into_iter())
                .filter(|p| p.offset > since)
                .collect(),
            epoch: history.epoch,
            offset: history.offset,
        }
    }
}

/// What `GET /plex/v1/history` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub epoch: String,
    pub offset: u64,
    /// The highest offset a device of the uid acknowledged.
    pub acked: u64,
    pub pushes: Vec<Retained>,
}
