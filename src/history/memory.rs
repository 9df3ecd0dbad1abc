//! History on a single node, in memory. Each uid keeps its last `HistorySize` pushes; all of
//! them together stay under `HistoryMemory` bytes, the oldest push in the whole store going
//! first, and none outlives `HistoryTtl`. A uid whose pushes are all gone (expired or
//! evicted) is forgotten with its offsets: its next push starts a new epoch, which tells a
//! resuming client that it missed something.
//!
//! The oldest push of each uid is indexed by a store-wide stamp, so eviction and expiry take
//! the oldest push in O(log n) without scanning.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::{Log, Recovery, Retained};

/// Bytes counted for a push beside its uri and body, and for a uid beside its name.
const PUSH_OVERHEAD: usize = 64;
const UID_OVERHEAD: usize = 96;

struct Entry {
    /// Store-wide order of appends: smaller is older.
    stamp: u64,
    /// When it was appended, in the caller's ticks.
    tick: u64,
    push: Retained,
}

impl Entry {
    fn cost(&self) -> usize {
        PUSH_OVERHEAD + self.push.uri.len() + self.push.body.len()
    }
}

struct UidLog {
    epoch: Arc<str>,
    /// The last offset given out.
    offset: u64,
    acked: u64,
    pushes: VecDeque<Entry>,
}

pub struct Memory {
    size: usize,
    ttl_ticks: u64,
    max_bytes: usize,
    /// Random per process: a restarted node never reuses an epoch.
    epoch_base: String,
    next_epoch: u64,
    next_stamp: u64,
    uids: HashMap<Arc<str>, UidLog>,
    /// Each uid's oldest retained push, by stamp: the first is the oldest in the store.
    oldest: BTreeMap<u64, Arc<str>>,
    bytes: usize,
    /// Pushes dropped to stay under the memory cap.
    pub evicted: u64,
    /// Pushes dropped for their age.
    pub expired: u64,
}

impl Memory {
    pub fn new(size: usize, ttl_ticks: u64, max_bytes: usize) -> Self {
        Memory {
            size: size.max(1),
            ttl_ticks,
            max_bytes,
            epoch_base: format!("{:08x}", rand::random::<u32>()),
            next_epoch: 0,
            next_stamp: 0,
            uids: HashMap::new(),
            oldest: BTreeMap::new(),
            bytes: 0,
            evicted: 0,
            expired: 0,
        }
    }

    /// Retains a push to `uid` made at `tick`; returns its epoch and offset.
    pub fn append(
        &mut self,
        uid: &str,
        seq: i64,
        uri: &str,
        body: &str,
        tick: u64,
    ) -> (Arc<str>, u64) {
        if !self.uids.contains_key(uid) {
            let epoch = format!("{}.{}", self.epoch_base, self.next_epoch);
            self.next_epoch += 1;
            self.bytes += UID_OVERHEAD + uid.len();
            let log = UidLog {
                epoch: epoch.into(),
                offset: 0,
                acked: 0,
                pushes: VecDeque::new(),
            };
            self.uids.insert(uid.into(), log);
        }
        let key = self
            .uids
            .get_key_value(uid)
            .expect("just ensured")
            .0
            .clone();
        let log = self.uids.get_mut(uid).expect("just ensured");
        log.offset += 1;
        let entry = Entry {
            stamp: self.next_stamp,
            tick,
            push: Retained {
                offset: log.offset,
                seq,
                uri: uri.to_owned(),
                body: body.to_owned(),
            },
        };
        self.next_stamp += 1;
        self.bytes += entry.cost();
        if log.pushes.is_empty() {
            self.oldest.insert(entry.stamp, key.clone());
        }
        log.pushes.push_back(entry);
        let at = (log.epoch.clone(), log.offset);
        if log.pushes.len() > self.size {
            self.drop_oldest_of(&key);
        }
        while self.bytes > self.max_bytes && self.drop_oldest() {
            self.evicted += 1;
        }
        at
    }

    /// Drops what is older than `HistoryTtl` at `tick`.
    pub fn expire(&mut self, tick: u64) {
        while let Some((_, uid)) = self.oldest.first_key_value() {
            let log = &self.uids[uid];
            let born = log.pushes.front().expect("indexed uids have pushes").tick;
            if born + self.ttl_ticks > tick {
                return;
            }
            self.drop_oldest();
            self.expired += 1;
        }
    }

    /// What a client that last received `(epoch, offset)` of `uid` has missed.
    pub fn recover(&self, uid: &str, epoch: &str, offset: u64) -> Recovery {
        if !self.uids.contains_key(uid) {
            // Nothing retained: only a client that has seen nothing has missed nothing.
            return Recovery {
                recovered: offset == 0,
                ..Recovery::lost()
            };
        }
        Recovery::from_history(epoch, offset, self.log(uid, 0))
    }

    /// A device of `uid` has every push up to `offset` of `epoch` (its current one if empty;
    /// an ack of a lost epoch changes nothing).
    pub fn ack(&mut self, uid: &str, epoch: &str, offset: u64) {
        if let Some(log) = self
            .uids
            .get_mut(uid)
            .filter(|l| epoch.is_empty() || *l.epoch == *epoch)
        {
            log.acked = log.acked.max(offset.min(log.offset));
        }
    }

    /// The history of `uid` after `since`, for the HTTP API.
    pub fn log(&self, uid: &str, since: u64) -> Log {
        match self.uids.get(uid) {
            Some(log) => Log {
                epoch: log.epoch.to_string(),
                offset: log.offset,
                acked: log.acked,
                pushes: retained_after(log, since),
            },
            None => Log {
                epoch: String::new(),
                offset: 0,
                acked: 0,
                pushes: Vec::new(),
            },
        }
    }

    /// Bytes the store holds, as counted against `HistoryMemory`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the oldest push in the store; `false` when there is none.
    fn drop_oldest(&mut self) -> bool {
        match self.oldest.first_key_value() {
            Some((_, uid)) => {
                let uid = uid.clone();
                self.drop_oldest_of(&uid);
                true
            }
            None => false,
        }
    }

    /// Drops `uid`'s oldest push, and forgets the uid when it was its last.
    fn drop_oldest_of(&mut self, uid: &Arc<str>) {
        let log = self.uids.get_mut(uid).expect("indexed uids are known");
        let entry = log.pushes.pop_front().expect("indexed uids have pushes");
        self.oldest.remove(&entry.stamp);
        self.bytes -= entry.cost();
        match log.pushes.front() {
            Some(next) => {
                self.oldest.insert(next.stamp, uid.clone());
            }
            None => {
                self.uids.remove(uid);
                self.bytes -= UID_OVERHEAD + uid.len();
            }
        }
    }
}

fn retained_after(log: &UidLog, since: u64) -> Vec<Retained> {
    (log.pushes.iter())
        .filter(|e| e.push.offset > since)
        .map(|e| e.push.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pushes: &[Retained]) -> Vec<u64> {
        pushes.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn offsets_count_per_uid_and_a_client_recovers_what_it_missed() {
        let mut h = Memory::new(10, 1000, 1 << 20);
        let (epoch, first) = h.append("7", 100, "/a", "one", 0);
        assert_eq!(first, 1);
        assert_eq!(h.append("8", 101, "/a", "x", 0).1, 1, "per uid");
        h.append("7", 102, "/a", "two", 0);
        h.append("7", 103, "/a", "three", 0);
        let r = h.recover("7", &epoch, 1);
        assert!(r.recovered);
        assert_eq!((r.offset, offsets(&r.pushes)), (3, vec![2, 3]));
        assert_eq!(r.pushes[0].seq, 102, "a replay keeps the push's seq");
        let up_to_date = h.recover("7", &epoch, 3);
        assert!(up_to_date.recovered && up_to_date.pushes.is_empty());
    }

    #[test]
    fn another_epoch_or_a_gap_is_not_recovered() {
        let mut h = Memory::new(2, 1000, 1 << 20);
        let (epoch, _) = h.append("7", 1, "/a", "", 0);
        for _ in 0..3 {
            h.append("7", 1, "/a", "", 0);
        }
        // Offsets 3 and 4 remain: a client at 1 misses 2.
        let gap = h.recover("7", &epoch, 1);
        assert!(!gap.recovered);
        assert_eq!(offsets(&gap.pushes), vec![3, 4]);
        assert!(h.recover("7", &epoch, 2).recovered);
        let other = h.recover("7", "old-epoch", 4);
        assert!(!other.recovered);
        assert_eq!(offsets(&other.pushes), vec![3, 4], "everything retained");
        let ahead = h.recover("7", &epoch, 9);
        assert!(!ahead.recovered, "an offset never given out");
    }

    #[test]
    fn the_memory_cap_evicts_the_oldest_push_of_the_whole_store() {
        let cost = PUSH_OVERHEAD + 2 + 4;
        let mut h = Memory::new(100, 1000, 4 * cost + 2 * (UID_OVERHEAD + 1));
        h.append("a", 1, "/x", "aaaa", 0);
        h.append("b", 1, "/x", "bbbb", 0);
        h.append("a", 1, "/x", "aaaa", 0);
        h.append("b", 1, "/x", "bbbb", 0);
        assert_eq!(h.evicted, 0);
        h.append("b", 1, "/x", "bbbb", 0);
        assert_eq!(h.evicted, 1);
        assert_eq!(
            offsets(&h.log("a", 0).pushes),
            vec![2],
            "a's first push was the oldest"
        );
        assert!(h.bytes() <= 4 * cost + 2 * (UID_OVERHEAD + 1));
    }

    #[test]
    fn expired_pushes_go_and_a_forgotten_uid_starts_a_new_epoch() {
        let mut h = Memory::new(10, 5, 1 << 20);
        let (old, _) = h.append("7", 1, "/a", "", 0);
        h.append("7", 1, "/a", "", 3);
        h.expire(5);
        assert_eq!(offsets(&h.log("7", 0).pushes), vec![2]);
        h.expire(8);
        assert_eq!(h.expired, 2);
        assert_eq!(h.log("7", 0).offset, 0, "forgotten");
        let (new, offset) = h.append("7", 1, "/a", "", 9);
        assert_ne!(old, new);
        assert_eq!(offset, 1);
        assert!(!h.recover("7", &old, 2).recovered);
        assert_eq!(h.bytes(), PUSH_OVERHEAD + 2 + UID_OVERHEAD + 1);
    }

    #[test]
    fn acks_keep_the_highest_offset_given_out() {
        let mut h = Memory::new(10, 1000, 1 << 20);
        h.append("7", 1, "/a", "", 0);
        h.append("7", 1, "/a", "", 0);
        h.ack("7", "", 1);
        h.ack("7", "", 9);
        h.ack("7", "", 0);
        assert_eq!(h.log("7", 0).acked, 2);
        h.ack("7", "another epoch", 1);
        h.ack("nobody", "", 3);
        assert_eq!(h.log("nobody", 0).acked, 0);
    }
}
