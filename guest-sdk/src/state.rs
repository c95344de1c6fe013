//! The read model as a projection sees it: JSON values by key, writes buffered for the batch.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use lantern_wire::{WriteView, WritesEncoder};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// A decoded value that can still be encoded.
trait Cached {
    fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Serialize + Any> Cached for T {
    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
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

/// The read model: committed values as of the batch start, overlaid with the batch's writes.
pub struct State {
    backend: Box<dyn Backend>,
    /// Hashed: the hot path is point reads and updates; scans and the hand-over sort. With
    /// foldhash, not SipHash: a batch's keys come from its own events, and SipHash was a tenth of
    /// a typical module's time in wasm.
    writes: HashMap<String, Written, foldhash::fast::FixedState>,
}

const SCAN_PAGE: u32 = 1000;

impl State {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Self {
        State {
            backend,
            writes: HashMap::default(),
        }
    }

    /// The raw bytes under `key`.
    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(written) => written.bytes(),
            None => Ok(self.backend.get(key)),
        }
    }

    /// The value under `key`, decoded from JSON.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.writes.get(key) {
            Some(Written::Bytes(bytes)) => decode(key, bytes).map(Some),
            Some(Written::Deleted) => Ok(None),
            Some(typed) => typed.bytes()?.map(|b| decode(key, &b)).transpose(),
            None => self
                .backend
                .get(key)
                .map(|bytes| decode(key, &bytes))
                .transpose(),
        }
    }

    /// Stores `value` (as JSON) under `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.writes.insert(key.to_owned(), Written::Bytes(bytes));
        Ok(())
    }

    /// Stores raw bytes under `key` (clients get them as `application/octet-stream` unless they
    /// are JSON).
    pub fn put_raw(&mut self, key: &str, bytes: Vec<u8>) {
        self.writes.insert(key.to_owned(), Written::Bytes(bytes));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &str) {
        self.writes.insert(key.to_owned(), Written::Deleted);
    }

    /// Reads the value under `key` (or `T::default()`), lets `change` modify it, and stores it.
    /// Within a batch the value stays decoded: many updates of one key cost one decode and one
    /// encode.
    pub fn update<T, F>(&mut self, key: &str, change: F) -> Result<()>
    where
        T: DeserializeOwned + Serialize + Default + 'static,
        F: FnOnce(&mut T),
    {
        if let Some(Written::Typed(cached)) = self.writes.get_mut(key)
            && let Some(value) = cached.as_any_mut().downcast_mut::<T>()
        {
            change(value);
            return Ok(());
        }
        let mut value: T = self.get(key)?.unwrap_or_default();
        change(&mut value);
        self.writes
            .insert(key.to_owned(), Written::Typed(Box::new(value)));
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
                merged.insert(key.clone(), written.bytes()?);
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

    /// The batch's writes in the wire encoding, for the host.
    pub(crate) fn into_writes(self) -> Result<Vec<u8>> {
        let mut encoder = WritesEncoder::default();
        // In no order: the host sorts them for its B-tree, natively (in wasm, sorting 10k keys
        // took a tenth of a batch).
        for (key, written) in &self.writes {
            match written {
                Written::Deleted => encoder.push(WriteView::Delete(key)),
                Written::Bytes(bytes) => encoder.push(WriteView::Put(key, bytes)),
                Written::Typed(value) => encoder.push(WriteView::Put(key, &value.to_json()?)),
            }
        }
        Ok(encoder.finish())
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::new(format!("value of {key:?}: {e}")))
}
