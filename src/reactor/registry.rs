//! uid → live connection keys. A uid may hold several connections (phone and tablet); the
//! registry reports the 0→1 and 1→0 transitions that drive the online/offline hooks.
//!
//! One shared `Arc<str>` per uid serves as the map key and as the uid every connection of
//! that user carries, so a user costs one string allocation however many devices it has.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// The connections of one uid. Almost every uid has one, which needs no allocation.
#[derive(Debug)]
enum Keys {
    One(u32),
    Many(Vec<u32>),
}

impl Keys {
    fn push(&mut self, key: u32) {
        match self {
            Keys::One(first) => *self = Keys::Many(vec![*first, key]),
            Keys::Many(list) => list.push(key),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Keys::One(key) => std::slice::from_ref(key),
            Keys::Many(keys) => keys,
        }
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    map: HashMap<Arc<str>, Keys>,
}

impl Registry {
    /// Binds connection `key` to `uid`; returns the shared uid and whether the uid just came
    /// online (its first live connection).
    pub fn add(&mut self, uid: &str, key: u32) -> (Arc<str>, bool) {
        if let Some((shared, _)) = self.map.get_key_value(uid) {
            let shared = shared.clone();
            self.map.get_mut(uid).expect("just found").push(key);
            return (shared, false);
        }
        let shared: Arc<str> = Arc::from(uid);
        self.map.insert(shared.clone(), Keys::One(key));
        (shared, true)
    }

    /// Unbinds connection `key` from `uid`; returns whether the uid just went offline.
    pub fn remove(&mut self, uid: &Arc<str>, key: u32) -> bool {
        let Entry::Occupied(mut entry) = self.map.entry(uid.clone()) else {
            return false;
        };
        match entry.get_mut() {
            Keys::One(only) if *only == key => {
                entry.remove();
                true
            }
            Keys::One(_) => false,
            Keys::Many(list) => {
                list.retain(|&k| k != key);
                if let [last] = list[..] {
                    *entry.get_mut() = Keys::One(last);
                }
                false
            }
        }
    }

    /// The live connections of `uid`, in the order they authenticated.
    pub fn keys(&self, uid: &str) -> &[u32] {
        self.map.get(uid).map_or(&[], Keys::as_slice)
    }

    /// Number of uids with at least one live connection.
    pub fn uids(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_on_first_connection_offline_on_last() {
        let mut r = Registry::default();
        let (uid, online) = r.add("7", 1);
        assert!(online);
        let (same, online) = r.add("7", 2);
        assert!(!online);
        assert!(
            Arc::ptr_eq(&uid, &same),
            "connections of a uid share one string"
        );
        assert_eq!(r.keys("7"), [1, 2]);
        assert!(!r.remove(&uid, 1));
        assert_eq!(r.keys("7"), [2]);
        assert!(r.remove(&uid, 2));
        assert_eq!(r.keys("7"), [] as [u32; 0]);
        assert_eq!(r.uids(), 0);
    }

    #[test]
    fn closing_an_old_connection_keeps_the_new_one() {
        // The original's map kept only the newest connection and closing the old one removed it.
        let mut r = Registry::default();
        let (uid, _) = r.add("u", 1);
        r.add("u", 2);
        assert!(!r.remove(&uid, 1));
        assert_eq!(r.keys("u"), [2]);
    }

    #[test]
    fn removing_an_unknown_key_changes_nothing() {
        let mut r = Registry::default();
        let (uid, _) = r.add("u", 1);
        assert!(!r.remove(&uid, 9));
        assert_eq!(r.keys("u"), [1]);
        assert_eq!(r.keys("nobody"), [] as [u32; 0]);
    }
}
