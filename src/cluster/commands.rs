//! The command thread. It owns the command connection; drains the request queue in batches
//! (presence and load absorbed, the rest run in request order: history requests by
//! [`history`], the others by [`batch`]); every `node_ttl / 3`
//! re-announces the node; every second syncs with Redis's clock, reads the node list,
//! publishes the subscription probe and sweeps a slice of presence; and when Redis fails it
//! answers `Unavailable` at once while reconnecting with backoff, then re-registers everything.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use redis::{Client, Connection, RedisError, RedisResult};

use super::presence::Presence;
use super::schema::{SWEEP_TTLS, Schema};
use super::shared::Shared;
use super::{
    ClusterConfig, Event, HistorySettings, NodeInfo, Request, batch, history, refusals, unix_ms,
    wire,
};
use crate::client::Backoff;

/// Most requests taken into one batch.
const MAX_BATCH: usize = 4096;
/// A batch stops growing once its requests carry this many bytes.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often the node list is read, the probe sent and a slice of presence swept.
const TICK: Duration = Duration::from_secs(1);
/// Uids per pipeline when re-registering everything.
const REGISTER_CHUNK: usize = 10_000;

pub(super) struct Commands {
    shared: Arc<Shared>,
    requests: Receiver<Request>,
    client: Client,
    schema: Schema,
    history: Option<HistorySettings>,
    timeout: Duration,
    node_ttl: Duration,
    record: NodeInfo,
    load_changed: bool,
    presence: Presence,
    conn: Option<Connection>,
    /// Why there is no connection.
    down: String,
    backoff: Backoff,
    /// Redis's clock minus this machine's, in ms.
    clock_offset: i64,
    connect_at: Instant,
    announce_at: Instant,
    tick_at: Instant,
}

impl Commands {
    pub fn new(
        shared: Arc<Shared>,
        requests: Receiver<Request>,
        client: Client,
        schema: Schema,
        config: &ClusterConfig,
    ) -> Self {
        let now = Instant::now();
        Commands {
            shared,
            requests,
            client,
            schema,
            history: config.history,
            timeout: config.timeout,
            node_ttl: config.node_ttl,
            record: NodeInfo {
                id: config.node_id.clone(),
                advertise: config.advertise.clone(),
                connections: 0,
                users: 0,
                updated: 0,
            },
            load_changed: false,
            presence: Presence::new(config.node_ttl * SWEEP_TTLS),
            conn: None,
            down: "connecting".into(),
            backoff: Backoff::new(),
            clock_offset: 0,
            connect_at: now,
            announce_at: now,
            tick_at: now,
        }
    }

    pub fn run(mut self) {
        let mut work = Vec::new();
        loop {
            let due = match self.conn {
                Some(_) => self.announce_at.min(self.tick_at),
                None => self.connect_at,
            };
            match self
                .requests
                .recv_timeout(due.saturating_duration_since(Instant::now()))
            {
                Ok(first) => {
                    self.drain(first, &mut work);
                    self.execute(&work);
                    work.clear();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.housekeeping();
        }
        if !self.shared.abandoned() {
            self.leave();
        }
    }

    /// Takes `first` and whatever else is queued, up to a batch: presence and load are
    /// absorbed here, the rest goes to `work`.
    fn drain(&mut self, first: Request, work: &mut Vec<Request>) {
        let (mut taken, mut bytes) = (0, 0);
        let mut next = Some(first);
        while let Some(request) = next {
            taken += 1;
            bytes += request.weight();
            match request {
                Request::Presence { uid, connections } => self.presence.set(uid, connections),
                Request::Load { connections, users } => {
                    self.record.connections = connections;
                    self.record.users = users;
                    self.load_changed = true;
                }
                history if history.is_history() && self.history.is_none() => {
                    self.refuse(
                        &[history],
                        "history is not enabled in this cluster's config",
                    );
                }
                other => work.push(other),
            }
            if taken == MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = self.requests.try_recv().ok();
        }
    }

    /// Writes the pending presence and load changes, then runs `work` in runs of history
    /// requests and of the others, in request order; the writes go with the first run.
    fn execute(&mut self, work: &[Request]) {
        let now = self.now_ms();
        if self.conn.is_none() {
            self.refuse(work, &self.down);
            return;
        }
        let mut p = redis::pipe();
        for (uid, connections) in self.presence.dirty() {
            self.schema.presence(&mut p, uid, connections);
        }
        if self.load_changed {
            self.record.updated = now as u64;
            self.schema.record(&mut p, &record_json(&self.record));
        }
        let mut runs = work.chunk_by(|a, b| a.is_history() == b.is_history());
        let (mut run, mut done) = (runs.next().unwrap_or_default(), 0);
        loop {
            // Each run has its own time: an earlier run of this batch may have taken a while.
            let run_start = self.now_ms();
            let conn = self.conn.as_mut().expect("connected");
            let result = match (run.first(), &self.history) {
                (Some(first), Some(settings)) if first.is_history() => {
                    // Well before this thread gives up on the answer (`timeout`): a call Redis
                    // runs later does nothing, rather than send what was answered as failed.
                    let deadline = run_start + self.timeout.as_millis() as i64 / 2;
                    history::run(conn, &self.schema, settings, deadline, p, run)
                }
                _ => batch::run(conn, &self.schema, run_start, p, run),
            };
            match result {
                Ok(replies) => {
                    self.presence.written();
                    self.load_changed = false;
                    self.shared.emit(replies);
                }
                Err(e) => {
                    self.lost(e);
                    self.refuse(&work[done..], &self.down);
                    return;
                }
            }
            done += run.len();
            match runs.next() {
                Some(next) => (run, p) = (next, redis::pipe()),
                None => return,
            }
        }
    }

    /// Answers what needed Redis with why it cannot be had; broadcasts and acks are dropped.
    fn refuse(&self, work: &[Request], reason: &str) {
        self.shared.emit(refusals(work, reason));
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if self.conn.is_none() {
            if now >= self.connect_at {
                self.connect();
            }
            return;
        }
        if let Err(e) = self.maintain(now) {
            self.lost(e);
        }
    }

    fn maintain(&mut self, now: Instant) -> RedisResult<()> {
        // Announcing finds whether others took this node for dead (a stall past node_ttl):
        // they may have removed its presence fields, so all are written again.
        if now >= self.announce_at && self.announce()? {
            self.register_all()?;
        }
        if now >= self.tick_at {
            self.tick()?;
        }
        Ok(())
    }

    fn connect(&mut self) {
        let epoch = self.shared.epoch();
        match self.open() {
            Ok(()) => {
                info!("cluster: connected to redis as node {}", self.record.id);
                self.backoff.reset();
                self.shared.commands_ok(epoch);
            }
            Err(e) => self.lost(e),
        }
    }

    /// Connects, then announces the node before writing any presence (readers remove fields
    /// of nodes they do not see live), re-registers every uid and reads the node list.
    fn open(&mut self) -> RedisResult<()> {
        let conn = self.client.get_connection_with_timeout(self.timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        let conn = self.conn.insert(conn);
        let before = unix_ms();
        let time = redis::cmd("TIME").query(conn)?;
        self.clock_offset = clock_offset(before, time);
        if self.history.is_some() {
            history::load(conn)?;
        }
        self.announce()?;
        self.register_all()?;
        self.tick()
    }

    /// Rewrites the node record and its expiry; true when the node was found expired.
    fn announce(&mut self) -> RedisResult<bool> {
        let now = self.now_ms();
        self.record.updated = now as u64;
        let mut p = redis::pipe();
        self.schema
            .announce(&mut p, &record_json(&self.record), now);
        let (expiry,): (Option<f64>,) = p.query(self.conn.as_mut().expect("connected"))?;
        self.load_changed = false;
        self.announce_at = Instant::now() + self.node_ttl / 3;
        Ok(expiry.is_none_or(|expiry| expiry as i64 <= now))
    }

    fn register_all(&mut self) -> RedisResult<()> {
        let conn = self.conn.as_mut().expect("connected");
        for chunk in self.presence.everything().chunks(REGISTER_CHUNK) {
            let mut p = redis::pipe();
            for (uid, connections) in chunk {
                self.schema.presence(&mut p, uid, *connections);
            }
            p.exec(conn)?;
        }
        self.presence.written();
        Ok(())
    }

    /// The once-a-second round: clock, node list, probe, a slice of the presence sweep. A
    /// success also shows the connection outlived any subscription failure before it.
    fn tick(&mut self) -> RedisResult<()> {
        let epoch = self.shared.epoch();
        let now = self.now_ms();
        let conn = self.conn.as_mut().expect("connected");
        let mut p = redis::pipe();
        p.cmd("TIME");
        self.schema.live_nodes(&mut p, now);
        p.cmd("PUBLISH")
            .arg(&self.schema.own_channel)
            .arg(wire::PROBE)
            .ignore();
        for (uid, connections) in self.presence.sweep(TICK) {
            self.schema.presence(&mut p, &uid, connections);
        }
        let before = unix_ms();
        self.shared.probe_sent(before);
        let (time, ids): ((i64, i64), Vec<String>) = p.query(conn)?;
        self.clock_offset = clock_offset(before, time);
        let records: Vec<Option<String>> = match ids.is_empty() {
            true => Vec::new(),
            false => self.schema.records(&ids).query(conn)?,
        };
        let nodes = records
            .iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        self.shared.emit([Event::Nodes(nodes)]);
        self.tick_at = Instant::now() + TICK;
        self.shared.commands_ok(epoch);
        Ok(())
    }

    /// Now by Redis's clock, in unix ms.
    fn now_ms(&self) -> i64 {
        unix_ms() + self.clock_offset
    }

    fn lost(&mut self, error: RedisError) {
        let was_connected = self.conn.take().is_some();
        self.down = error.to_string();
        self.shared.probe_clear();
        self.shared.commands_failed(&self.down);
        let delay = self.backoff.next_delay();
        self.connect_at = Instant::now() + delay;
        if was_connected {
            warn!("cluster: redis lost ({}); reconnecting", self.down);
        } else {
            debug!(
                "cluster: redis unreachable ({}); next try in {delay:?}",
                self.down
            );
        }
    }

    /// Removes the node from Redis on shutdown, if Redis is there.
    fn leave(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            let mut p = redis::pipe();
            self.schema.leave(&mut p);
            if let Err(e) = p.exec(conn) {
                warn!("cluster: could not remove node {}: {e}", self.record.id);
            }
        }
    }
}

/// Redis's clock minus this machine's, from its `TIME` (seconds, microseconds) asked at
/// `before` and answered now.
fn clock_offset(before: i64, (secs, micros): (i64, i64)) -> i64 {
    let midway = (before + unix_ms()) / 2;
    secs * 1000 + micros / 1000 - midway
}

fn record_json(record: &NodeInfo) -> String {
    serde_json::to_string(record).expect("a node record serializes")
}
