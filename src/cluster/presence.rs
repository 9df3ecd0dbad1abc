//! This node's presence as the broker knows it: a mirror of what the reactor reported (what
//! must be re-registered after Redis comes back), the changes not yet written (coalesced, last
//! wins), and the slow sweep that keeps every uid's key from expiring.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Presence {
    /// uid → connections on this node, for uids with at least one.
    local: HashMap<Arc<str>, u32>,
    /// Changes Redis has not confirmed yet (0 = remove).
    dirty: HashMap<Arc<str>, u32>,
    /// The uids of the sweep in progress, and how far it got.
    sweep: Vec<Arc<str>>,
    swept: usize,
    sweep_began: Instant,
    /// How long one sweep over every uid takes.
    cycle: Duration,
}

impl Presence {
    pub fn new(cycle: Duration) -> Self {
        Presence {
            local: HashMap::new(),
            dirty: HashMap::new(),
            sweep: Vec::new(),
            swept: 0,
            sweep_began: Instant::now(),
            cycle,
        }
    }

    pub fn set(&mut self, uid: Arc<str>, connections: u32) {
        if connections == 0 {
            self.local.remove(&uid);
        } else {
            self.local.insert(uid.clone(), connections);
        }
        self.dirty.insert(uid, connections);
    }

    /// The changes to write; [`Presence::written`] once Redis took them.
    pub fn dirty(&self) -> impl Iterator<Item = (&str, u32)> {
        self.dirty.iter().map(|(uid, &n)| (&**uid, n))
    }

    pub fn written(&mut self) {
        self.dirty.clear();
    }

    /// Everything to write after reconnecting: every uid held here, and the removals Redis
    /// may have missed. [`Presence::written`] once Redis took them.
    pub fn everything(&self) -> Vec<(Arc<str>, u32)> {
        let removed = self.dirty.iter().filter(|&(_, &n)| n == 0);
        self.local
            .iter()
            .chain(removed)
            .map(|(uid, &n)| (uid.clone(), n))
            .collect()
    }

    /// The next slice of the sweep, sized so every uid comes round once per cycle when this
    /// is called every `tick`. A sweep starts over once the last one is done and its cycle is
    /// over.
    pub fn sweep(&mut self, tick: Duration) -> Vec<(Arc<str>, u32)> {
        if self.swept == self.sweep.len() {
            if self.sweep_began.elapsed() < self.cycle {
                return Vec::new();
            }
            self.sweep = self.local.keys().cloned().collect();
            self.swept = 0;
            self.sweep_began = Instant::now();
        }
        let ticks = (self.cycle.as_millis() / tick.as_millis().max(1)).max(1) as usize;
        let take = self.sweep.len().div_ceil(ticks);
        let end = (self.swept + take).min(self.sweep.len());
        let slice = self.sweep[self.swept..end]
            .iter()
            .filter_map(|uid| Some((uid.clone(), *self.local.get(uid)?)))
            .collect();
        self.swept = end;
        slice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_change_wins_and_removals_survive_until_written() {
        let mut p = Presence::new(Duration::from_secs(1));
        p.set("7".into(), 1);
        p.set("7".into(), 3);
        p.set("8".into(), 1);
        p.set("8".into(), 0);
        let mut dirty: Vec<_> = p.dirty().collect();
        dirty.sort();
        assert_eq!(dirty, [("7", 3), ("8", 0)]);
        let mut all = p.everything();
        all.sort();
        assert_eq!(all, [("7".into(), 3), ("8".into(), 0)]);
        p.written();
        assert_eq!(p.dirty().count(), 0);
        assert_eq!(p.everything(), [("7".into(), 3)]);
    }

    #[test]
    fn a_sweep_covers_every_uid_once_in_slices() {
        let tick = Duration::from_millis(100);
        let mut p = Presence::new(tick * 4);
        for i in 0..10 {
            p.set(i.to_string().into(), i + 1);
        }
        p.sweep_began -= tick * 4; // the first cycle is due now
        let mut seen = Vec::new();
        for _ in 0..4 {
            let slice = p.sweep(tick);
            assert!(slice.len() <= 3, "{slice:?}");
            seen.extend(slice);
        }
        seen.sort();
        let mut expected: Vec<(Arc<str>, u32)> =
            (0..10).map(|i| (i.to_string().into(), i + 1)).collect();
        expected.sort();
        assert_eq!(seen, expected);
        assert!(p.sweep(tick).is_empty(), "the next cycle waits its turn");
    }
}
