//! The read model as a projection sees it: JSON values by key, writes buffered for the batch.

use std::any::Any;
use std::collections::BTreeMap;

use lantern_wire::{WriteView, WritesEncoder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use smol_str::SmolStr;

use crate::{Error, Result};

/// Where committed values come from: the host (in wasm) or the test harness.
pub(crate) trait Backend {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn scan(&self, prefix: &str, after: &str, limit: u32) -> Vec<(String, Vec<u8>)>;
}

/// A value written in this batch. `update` keeps values decoded, so a key updated by many events
/// of a batch is decoded once and encoded once.
enum Written {
    Deleted,
    Bytes(Vec<u8>),
    Typed(Box<dyn Cached>),
}

/// A decoded value that can still be encoded (and, as a `dyn Any`, be had back as its type).
trait Cached: Any {
    fn to_json(&self) -> serde_json::Result<Vec<u8>>;
}

impl<T: Serialize + Any> Cached for T {
    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }
}

impl Written {
    fn bytes(&self) -> Result<Option<Vec<u8>>> {
        Ok(match self {
            Written::Deleted => None,
            Written::Bytes(bytes) => Some(bytes.clone()),
            Written::Typed(value) => Some(value.to_json()?),
        })
    }
}

/// A batch's keys: most are short (up to 23 bytes are kept inline in the table, so a lookup
/// does not follow a pointer to the key's bytes), and found by [`Lookup`].
type Map<V> = hashbrown::HashMap<SmolStr, V, foldhash::fast::FixedState>;

/// A key looked up in a [`Map`]: hashed as the `str` it holds (as a `SmolStr` is), and compared
/// with a stored key a word at a time, inline. (`str`'s `==` calls the C library's `memcmp`, a
/// loop over bytes in wasm with a deadline check in every round: it was a twentieth of a typical
/// handler's time.)
#[derive(Hash)]
struct Lookup<'a>(&'a str);

impl hashbrown::Equivalent<SmolStr> for Lookup<'_> {
    #[inline]
    fn equivalent(&self, key: &SmolStr) -> bool {
        same_bytes(self.0.as_bytes(), key.as_bytes())
    }
}

/// `a == b`, eight bytes at a time (the last word may overlap the one before it).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if word(a, at) != word(b, at) {
                    return false;
                }
                at += 8;
            }
            word(a, n - 8) == word(b, n - 8)
        }
    }
}

/// Values `update` kept decoded in earlier batches of this instance, equal to what they committed.
/// The host never calls an instance again after a batch that failed or whose writes were not
/// committed (the WIT's promise), so these stay equal to the read model: a key updated in every
/// batch is read from the host and decoded once per instance, not once per batch.
pub(crate) struct Remembered {
    /// Each value with its share of `bytes`.
    values: Map<(Box<dyn Cached>, usize)>,
    /// An estimate of their memory: key and JSON lengths plus a fixed cost per entry.
    bytes: usize,
    /// Most `bytes` kept: a batch that would leave more remembers nothing.
    limit: usize,
}

impl Default for Remembered {
    fn default() -> Self {
        Self::with_limit(REMEMBER_BYTES)
    }
}

impl Remembered {
    fn with_limit(limit: usize) -> Self {
        Remembered {
            values: Map::default(),
            bytes: 0,
            limit,
        }
    }

    /// Takes the value under `key` out, if it is remembered as a `T`.
    fn take<T: 'static>(&mut self, key: &str) -> Option<(SmolStr, Box<dyn Cached>)> {
        let (cached, _) = self.values.get(&Lookup(key))?;
        if !(&**cached as &dyn Any).is::<T>() {
            return None;
        }
        let (key, (cached, size)) = self.values.remove_entry(&Lookup(key))?;
        self.bytes -= size;
        Some((key, cached))
    }

    fn forget(&mut self, key: &str) {
        if self.values.is_empty() {
            return;
        }
        if let Some((_, size)) = self.values.remove(&Lookup(key)) {
            self.bytes -= size;
        }
    }
}

/// At most this much is remembered (estimated as key plus JSON plus `ENTRY_BYTES` per value): the
/// guest's memory is capped, and a batch of up to 16 MiB must still fit beside it.
const REMEMBER_BYTES: usize = 2 << 20;
const ENTRY_BYTES: usize = 64;

/// The read model: committed values as of the batch start, overlaid with the batch's writes.
pub struct State {
    backend: Box<dyn Backend>,
    /// Hashed: the hot path is point reads and updates; scans and the hand-over sort. With
    /// foldhash, not SipHash: a batch's keys come from its own events, and SipHash was a tenth of
    /// a typical module's time in wasm.
    writes: Map<Written>,
    /// Committed values kept decoded from earlier batches (none in a query): consulted after
    /// `writes` and before the host.
    remembered: Remembered,
}

const SCAN_PAGE: u32 = 1000;

impl State {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Self {
        Self::remembering(backend, Remembered::default())
    }

    /// A batch's state over the values remembered from this instance's earlier batches.
    pub(crate) fn remembering(backend: Box<dyn Backend>, remembered: Remembered) -> Self {
        State {
            backend,
            writes: Map::default(),
            remembered,
        }
    }

    /// The committed bytes under `key`: remembered, or from the host.
    fn committed(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let remembered = (!self.remembered.values.is_empty())
            .then(|| self.remembered.values.get(&Lookup(key)))
            .flatten();
        match remembered {
            Some((value, _)) => Ok(Some(value.to_json()?)),
            None => Ok(self.backend.get(key)),
        }
    }

    /// The raw bytes under `key`.
    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.writes.get(&Lookup(key)) {
            Some(written) => written.bytes(),
            None => self.committed(key),
        }
    }

    /// The value under `key`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.writes.get(&Lookup(key)) {
            Some(Written::Bytes(bytes)) => decode(key, bytes).map(Some),
            Some(Written::Deleted) => Ok(None),
            Some(typed) => typed.bytes()?.map(|b| decode(key, &b)).transpose(),
            None => self
                .committed(key)?
                .map(|bytes| decode(key, &bytes))
                .transpose(),
        }
    }

    /// Stores `value` (as JSON) under `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.writes.insert(SmolStr::new(key), Written::Bytes(bytes));
        Ok(())
    }

    /// Stores raw bytes under `key` (clients get them as `application/octet-stream` unless they
    /// are JSON).
    pub fn put_raw(&mut self, key: &str, bytes: Vec<u8>) {
        self.writes.insert(SmolStr::new(key), Written::Bytes(bytes));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &str) {
        self.writes.insert(SmolStr::new(key), Written::Deleted);
    }

    /// Reads the value under `key` (or `T::default()`), lets `change` modify it, and stores it.
    /// Within a batch the value stays decoded: many updates of one key cost one decode and one
    /// encode.
    pub fn update<T, F>(&mut self, key: &str, change: F) -> Result<()>
    where
        T: DeserializeOwned + Serialize + Default + 'static,
        F: FnOnce(&mut T),
    {
        if let Some(Written::Typed(cached)) = self.writes.get_mut(&Lookup(key))
            && let Some(value) = (&mut **cached as &mut dyn Any).downcast_mut::<T>()
        {
            change(value);
            return Ok(());
        }
        // Remembered as a `T` from an earlier batch: it moves into this batch's writes as it is.
        if !self.remembered.values.is_empty()
            && !self.writes.contains_key(&Lookup(key))
            && let Some((key, mut cached)) = self.remembered.take::<T>(key)
        {
            if let Some(value) = (&mut *cached as &mut dyn Any).downcast_mut::<T>() {
                change(value);
            }
            self.writes.insert(key, Written::Typed(cached));
            return Ok(());
        }
        let mut value: T = self.get(key)?.unwrap_or_default();
        change(&mut value);
        self.writes
            .insert(SmolStr::new(key), Written::Typed(Box::new(value)));
        Ok(())
    }

    /// Every key starting with `prefix`, in key order, with its value decoded from JSON.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        if !self.writes.keys().any(|key| key.starts_with(prefix)) {
            // Nothing of this batch to merge (always so in a query): the host's pages, in key
            // order already, decoded as they come.
            return self.scan_committed(prefix);
        }
        let mut merged: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        // (Committed pages first, then this batch's writes over them.)
        let mut after = String::new();
        loop {
            let page = self.backend.scan(prefix, &after, SCAN_PAGE);
            let full = page.len() == SCAN_PAGE as usize;
            if let Some((last, _)) = page.last() {
                after = last.clone();
            }
            merged.extend(page.into_iter().map(|(k, v)| (k, Some(v))));
            if !full {
                break;
            }
        }
        for (key, written) in &self.writes {
            if key.starts_with(prefix) {
                merged.insert(key.to_string(), written.bytes()?);
            }
        }
        merged
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .map(|(key, bytes)| decode(&key, &bytes).map(|v| (key, v)))
            .collect()
    }

    /// Every committed key starting with `prefix`, in key order, decoded.
    fn scan_committed<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.backend.scan(prefix, &after, SCAN_PAGE);
            let full = page.len() == SCAN_PAGE as usize;
            if let Some((last, _)) = page.last() {
                after.clone_from(last);
            }
            for (key, bytes) in page {
                let value = decode(&key, &bytes)?;
                out.push((key, value));
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// The batch's writes in the wire encoding, for the host, and what to remember for the
    /// next batch (the values `update` kept decoded, once committed, and those remembered before
    /// that this batch did not write), or nothing if that would be more than its limit.
    pub(crate) fn into_writes(self) -> Result<(Vec<u8>, Remembered)> {
        let State {
            writes,
            mut remembered,
            ..
        } = self;
        let mut encoder = WritesEncoder::default();
        let mut typed = Vec::new();
        let mut typed_bytes = 0;
        // In no order: the host sorts them for its B-tree, natively (in wasm, sorting 10k keys
        // took a tenth of a batch).
        for (key, written) in writes {
            // Written now: what was remembered of it (if `update` did not take it) is stale.
            remembered.forget(&key);
            match written {
                Written::Deleted => encoder.push(WriteView::Delete(&key)),
                Written::Bytes(bytes) => encoder.push(WriteView::Put(&key, &bytes)),
                Written::Typed(value) => {
                    let json = value.to_json()?;
                    encoder.push(WriteView::Put(&key, &json));
                    let size = key.len() + json.len() + ENTRY_BYTES;
                    typed_bytes += size;
                    // Past the limit nothing is kept: no need to gather the rest.
                    if remembered.bytes + typed_bytes <= remembered.limit {
                        typed.push((key, value, size));
                    }
                }
            }
        }
        let encoded = encoder.finish();
        if remembered.bytes + typed_bytes > remembered.limit {
            return Ok((encoded, Remembered::with_limit(remembered.limit)));
        }
        remembered.bytes += typed_bytes;
        for (key, value, size) in typed {
            remembered.values.insert(key, (value, size));
        }
        Ok((encoded, remembered))
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::new(format!("value of {key:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    /// The committed read model, counting the reads that reach it.
    #[derive(Clone, Default)]
    struct Committed {
        values: Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
        gets: Rc<Cell<usize>>,
    }

    impl Backend for Committed {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.gets.set(self.gets.get() + 1);
            self.values.borrow().get(key).cloned()
        }

        fn scan(&self, prefix: &str, after: &str, limit: u32) -> Vec<(String, Vec<u8>)> {
            self.values
                .borrow()
                .range(after.to_owned()..)
                .filter(|(k, _)| k.as_str() > after && k.starts_with(prefix))
                .take(limit as usize)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
    }

    impl Committed {
        /// Commits a batch's writes, as the host does.
        fn commit(&self, writes: &[u8]) {
            let mut values = self.values.borrow_mut();
            for write in lantern_wire::decode_writes(writes).unwrap() {
                match write {
                    WriteView::Put(key, value) => {
                        values.insert(key.to_owned(), value.to_vec());
                    }
                    WriteView::Delete(key) => {
                        values.remove(key);
                    }
                }
            }
        }
    }

    #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
    struct Counter {
        n: i64,
    }

    fn batch(
        committed: &Committed,
        remembered: Remembered,
        change: impl FnOnce(&mut State),
    ) -> Remembered {
        let mut state = State::remembering(Box::new(committed.clone()), remembered);
        change(&mut state);
        let (writes, remembered) = state.into_writes().unwrap();
        committed.commit(&writes);
        remembered
    }

    #[test]
    fn a_value_updated_in_an_earlier_batch_is_not_read_again() {
        let committed = Committed::default();
        let add = |state: &mut State| state.update("k", |c: &mut Counter| c.n += 1).unwrap();
        let remembered = batch(&committed, Remembered::default(), add);
        assert_eq!(committed.gets.get(), 1);
        let remembered = batch(&committed, remembered, add);
        let _ = batch(&committed, remembered, add);
        assert_eq!(
            committed.gets.get(),
            1,
            "later batches used the remembered value"
        );
        assert_eq!(committed.values.borrow()["k"], br#"{"n":3}"#);
    }

    #[test]
    fn past_its_limit_nothing_is_remembered() {
        let committed = Committed::default();
        let add = |state: &mut State| state.update("k", |c: &mut Counter| c.n += 1).unwrap();
        let remembered = batch(&committed, Remembered::with_limit(10), add);
        let _ = batch(&committed, remembered, add);
        assert_eq!(committed.gets.get(), 2);
        assert_eq!(committed.values.borrow()["k"], br#"{"n":2}"#);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, i64),
        /// `update` through another type (`serde_json::Value`), of the same JSON shape.
        SetAsValue(u8, i64),
        Put(u8, i64),
        Delete(u8),
        Get(u8),
        GetRaw(u8),
        Scan,
    }

    /// Keys in pairs of one length that differ in their last byte: 2 bytes, 12 and 22 (kept
    /// inline, compared by halves and words), and 32 (kept on the heap).
    fn key_name(k: u8) -> String {
        format!("k{}{k}", "-".repeat(usize::from(k / 2) * 10))
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..8u8;
        prop_oneof![
            4 => (key.clone(), -5..5i64).prop_map(|(k, n)| Op::Add(k, n)),
            1 => (key.clone(), -5..5i64).prop_map(|(k, n)| Op::SetAsValue(k, n)),
            1 => (key.clone(), -5..5i64).prop_map(|(k, n)| Op::Put(k, n)),
            1 => key.clone().prop_map(Op::Delete),
            2 => key.clone().prop_map(Op::Get),
            1 => key.prop_map(Op::GetRaw),
            1 => Just(Op::Scan),
        ]
    }

    proptest! {
        /// `same_bytes` is `==`, for every length and wherever two byte strings differ.
        #[test]
        fn same_bytes_is_equality(
            a in prop::collection::vec(0..3u8, 0..40),
            at in any::<prop::sample::Index>(),
            change in 0..3u8,
        ) {
            let mut b = a.clone();
            match change {
                0 => {}
                1 if !b.is_empty() => b[at.index(a.len())] ^= 1,
                _ => b.push(0),
            }
            prop_assert_eq!(same_bytes(&a, &b), a == b);
            prop_assert_eq!(same_bytes(&b, &a), a == b);
        }

        /// Whatever is remembered, every read in every batch sees what a plain `BTreeMap` of the
        /// committed values overlaid with the batch's own changes holds, and the committed values
        /// end up equal to it. A failed batch (`fails`) keeps no writes and forgets.
        #[test]
        fn reads_and_commits_match_a_plain_map(
            batches in prop::collection::vec(
                (prop::collection::vec(op(), 0..12), any::<bool>()),
                1..12,
            ),
            limit in prop::sample::select(vec![0usize, 150, 1 << 20]),
        ) {
            let committed = Committed::default();
            let mut model: BTreeMap<String, i64> = BTreeMap::new();
            let mut remembered = Remembered::with_limit(limit);
            for (ops, fails) in batches {
                let mut state = State::remembering(Box::new(committed.clone()), remembered);
                let mut view = model.clone();
                for op in ops {
                    match op {
                        Op::Add(k, n) => {
                            let key = key_name(k);
                            state.update(&key, |c: &mut Counter| c.n += n).unwrap();
                            *view.entry(key).or_default() += n;
                        }
                        Op::SetAsValue(k, n) => {
                            let key = key_name(k);
                            state
                                .update(&key, |v: &mut serde_json::Value| {
                                    *v = serde_json::json!({ "n": n });
                                })
                                .unwrap();
                            view.insert(key, n);
                        }
                        Op::Put(k, n) => {
                            let key = key_name(k);
                            state.put(&key, &Counter { n }).unwrap();
                            view.insert(key, n);
                        }
                        Op::Delete(k) => {
                            let key = key_name(k);
                            state.delete(&key);
                            view.remove(&key);
                        }
                        Op::Get(k) => {
                            let key = key_name(k);
                            let got: Option<Counter> = state.get(&key).unwrap();
                            prop_assert_eq!(got.map(|c| c.n), view.get(&key).copied());
                        }
                        Op::GetRaw(k) => {
                            let key = key_name(k);
                            let got = state.get_raw(&key).unwrap();
                            let got = got.map(|b| serde_json::from_slice::<Counter>(&b).unwrap().n);
                            prop_assert_eq!(got, view.get(&key).copied());
                        }
                        Op::Scan => {
                            let got: Vec<(String, Counter)> = state.scan("k").unwrap();
                            let got: Vec<(String, i64)> =
                                got.into_iter().map(|(k, c)| (k, c.n)).collect();
                            let want: Vec<(String, i64)> =
                                view.iter().map(|(k, n)| (k.clone(), *n)).collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                }
                if fails {
                    // The host drops the instance: nothing written, nothing remembered.
                    drop(state);
                    remembered = Remembered::with_limit(limit);
                    continue;
                }
                let (writes, next) = state.into_writes().unwrap();
                committed.commit(&writes);
                remembered = next;
                model = view;
                let stored: BTreeMap<String, i64> = committed
                    .values
                    .borrow()
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::from_slice::<Counter>(v).unwrap().n))
                    .collect();
                prop_assert_eq!(&stored, &model);
            }
        }
    }
}
