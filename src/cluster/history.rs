//! Offline history in Redis: a run of `Retain`, `History` and `Ack` requests goes to Redis as
//! calls of one Lua script (`history.lua`), pipelined in one round trip after the batch's
//! presence writes. Each call takes the requests of a chunk in request order and, atomically:
//! gives each uid of a `Retain` its next offset (making its epoch if it has none), appends the
//! push to the uid's stream, reads who holds the uid, and publishes one message per holding
//! node, this one included; answers `History` from the record and the stream; keeps the larger
//! acked offset for `Ack`. The script also reads the holders, so a node that registered a uid
//! before asking its history is published to by every `Retain` that comes after that answer.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

use log::warn;
use redis::{Connection, Pipeline, RedisResult, Value, from_redis_value};
use sha1::{Digest, Sha1};

use super::schema::Schema;
use super::{Event, HistorySettings, Position, Reply, Request, Retained, refusals, wire};

const SCRIPT: &str = include_str!("history.lua");
/// A call takes requests until they count this many (one each, plus one per uid): Redis runs
/// nothing else while a call runs, so its length is bounded.
const CHUNK: usize = 1024;
/// A uid's epoch, offset and acked offset stay this long after its last push or history
/// read (or its `ttl`, if longer): a device that comes back after a quiet month still learns
/// it missed nothing, rather than that its history was lost.
const RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Puts the script in Redis's cache, where calls name it by its SHA1 rather than send its
/// text; done on every new connection. Should the cache be flushed under a live connection
/// (`SCRIPT FLUSH`), the next run fails (`NOSCRIPT`) and the reconnection loads it again.
pub(super) fn load(conn: &mut Connection) -> RedisResult<()> {
    redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).exec(conn)
}

fn sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| {
        Sha1::digest(SCRIPT)
            .iter()
            .fold(String::new(), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            })
    })
}

/// Runs `work` (history requests only) after the writes already in `p`, and returns the
/// replies.
pub(super) fn run(
    conn: &mut Connection,
    schema: &Schema,
    settings: &HistorySettings,
    deadline: i64,
    mut p: Pipeline,
    work: &[Request],
) -> RedisResult<Vec<Event>> {
    let chunks = Chunk::split(work);
    for chunk in &chunks {
        chunk.call(&mut p, schema, settings, deadline);
    }
    let replies: Vec<Value> = p.query(conn)?;
    let mut events = Vec::new();
    for (chunk, reply) in chunks.iter().zip(replies) {
        if matches!(&reply, Value::BulkString(late) if late == LATE) {
            warn!("cluster: Redis ran a history script past its deadline; it did nothing");
            events.extend(refusals(chunk.requests, "Redis answered too late"));
            continue;
        }
        let replies: Vec<Value> = from_redis_value(reply)?;
        chunk.answer(replies, &mut events)?;
    }
    Ok(events)
}

/// What the script answers when it runs too late to do anything.
const LATE: &[u8] = b"late";

/// The requests of one script call, and the distinct uids they name.
struct Chunk<'a> {
    requests: &'a [Request],
    uids: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
    /// Per `Retain`, in order: its distinct uids, as positions in `uids`.
    retains: Vec<Vec<usize>>,
}

impl<'a> Chunk<'a> {
    fn split(work: &'a [Request]) -> Vec<Chunk<'a>> {
        let mut chunks = Vec::new();
        let (mut start, mut weight) = (0, 0);
        for (i, request) in work.iter().enumerate() {
            let w = match request {
                Request::Retain { uids, .. } => 1 + uids.len(),
                _ => 2,
            };
            if weight + w > CHUNK && i > start {
                chunks.push(Chunk::new(&work[start..i]));
                (start, weight) = (i, 0);
            }
            weight += w;
        }
        if start < work.len() {
            chunks.push(Chunk::new(&work[start..]));
        }
        chunks
    }

    fn new(requests: &'a [Request]) -> Self {
        let mut chunk = Chunk {
            requests,
            uids: Vec::new(),
            index: HashMap::new(),
            retains: Vec::new(),
        };
        // Per uid, the number (from 1) of the last `Retain` that named it.
        let mut named_by = Vec::new();
        for request in requests {
            match request {
                Request::Retain { uids, .. } => {
                    let number = chunk.retains.len() + 1;
                    let mut distinct = Vec::with_capacity(uids.len());
                    for uid in uids {
                        let i = chunk.add(uid);
                        named_by.resize(chunk.uids.len(), 0);
                        if named_by[i] != number {
                            named_by[i] = number;
                            distinct.push(i);
                        }
                    }
                    chunk.retains.push(distinct);
                }
                Request::History { uid, .. } | Request::Ack { uid, .. } => {
                    chunk.add(uid);
                }
                _ => unreachable!("only history requests run here"),
            }
        }
        chunk
    }

    /// The uid's position in `uids`.
    fn add(&mut self, uid: &'a str) -> usize {
        match self.index.entry(uid) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                e.insert(self.uids.len());
                self.uids.push(uid);
                self.uids.len() - 1
            }
        }
    }

    /// Adds the script call to `p` (its layout is in `history.lua`; uids count from 1 there).
    fn call(&self, p: &mut Pipeline, schema: &Schema, settings: &HistorySettings, deadline: i64) {
        let ttl = settings.ttl.as_millis() as u64;
        let record_ttl = RECORD_TTL.as_millis().max(settings.ttl.as_millis()) as u64;
        let fresh_epoch = format!("{:016x}", rand::random::<u64>());
        p.cmd("EVALSHA")
            .arg(sha())
            .arg(1 + 3 * self.uids.len())
            .arg(&schema.nodes);
        for uid in &self.uids {
            p.arg(schema.user_key(uid))
                .arg(schema.history_meta(uid))
                .arg(schema.history_stream(uid));
        }
        p.arg(&schema.node_id)
            .arg(schema.channel_prefix())
            .arg(settings.size)
            .arg(ttl)
            .arg(record_ttl)
            .arg(fresh_epoch)
            .arg(deadline)
            .arg(self.uids.len());
        for uid in &self.uids {
            p.arg(wire::string(uid));
        }
        let mut retains = self.retains.iter();
        for request in self.requests {
            match request {
                Request::Retain { seq, uri, body, .. } => {
                    let distinct = retains.next().expect("one list per retain");
                    p.arg("r")
                        .arg(wire::tail(*seq, uri, body))
                        .arg(distinct.len());
                    for i in distinct {
                        p.arg(i + 1);
                    }
                }
                Request::History { uid, since, .. } => {
                    p.arg("h").arg(self.index[uid.as_str()] + 1).arg(*since);
                }
                Request::Ack { uid, epoch, offset } => {
                    p.arg("a")
                        .arg(self.index[uid.as_str()] + 1)
                        .arg(epoch)
                        .arg(*offset);
                }
                _ => unreachable!("only history requests run here"),
            }
        }
    }

    /// Turns the script's replies into events, one per request that asked for an answer.
    fn answer(&self, replies: Vec<Value>, events: &mut Vec<Event>) -> RedisResult<()> {
        let mut retains = self.retains.iter();
        for (request, reply) in self.requests.iter().zip(replies) {
            let (id, reply) = match request {
                Request::Retain { id, .. } => {
                    let (remote, at): (u64, Vec<(String, u64)>) = from_redis_value(reply)?;
                    let distinct = retains.next().expect("one list per retain");
                    let positions = (distinct.iter().zip(at))
                        .map(|(&i, (epoch, offset))| Position {
                            uid: self.uids[i].to_owned(),
                            epoch,
                            offset,
                        })
                        .collect();
                    (id, Reply::Retained { remote, positions })
                }
                Request::History { id, uid, .. } => {
                    let (epoch, offset, acked, kept): (String, u64, u64, Vec<(u64, Vec<u8>)>) =
                        from_redis_value(reply)?;
                    let pushes = kept.into_iter().filter_map(|(offset, tail)| {
                        let Ok((seq, uri, body)) = wire::decode_tail(&tail) else {
                            warn!("cluster: a malformed push in the history of {uid:?} skipped");
                            return None;
                        };
                        Some(Retained {
                            offset,
                            seq,
                            uri,
                            body,
                        })
                    });
                    let reply = Reply::History {
                        epoch,
                        offset,
                        acked,
                        pushes: pushes.collect(),
                    };
                    (id, reply)
                }
                _ => continue,
            };
            events.push(Event::Reply {
                id: *id,
                result: Ok(reply),
            });
        }
        Ok(())
    }
}
