//! The registry of deployed projections, persisted as one JSON file replaced atomically
//! (write, fsync, rename), so a restart resumes every projection where it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One generation of a projection: a module version, its read model file, and the upcasters
/// its input passes through (fixed for the generation's life, so a read model never mixes two
/// chains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenerationEntry {
    pub version: u64,
    pub module_sha256: String,
    pub generation: u64,
    /// The upcasters relevant to its subscription when it was made, in chain order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upcasters: Vec<UpcasterRef>,
    /// Why it was made (shown while it rebuilds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An upcaster as a generation names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UpcasterRef {
    pub name: String,
    pub module_sha256: String,
}

/// A deployed upcaster, with the types it declared when it was deployed (so that one whose
/// module cannot be loaded later still fails the events it takes instead of passing them on
/// in their old shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UpcasterEntry {
    pub version: u64,
    pub module_sha256: String,
    pub takes: Vec<String>,
    pub gives: Vec<String>,
}

/// A deployed projection: the generation serving queries, and the one rebuilding beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub current: GenerationEntry,
    pub rebuild: Option<GenerationEntry>,
    /// Generation numbers are never reused, so a new read model file is always new.
    pub next_generation: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Registry {
    pub projections: BTreeMap<String, Entry>,
    /// Upcasters by name (they run in name order).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upcasters: BTreeMap<String, UpcasterEntry>,
}

/// Where a projection's files live under the projections directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn registry(&self) -> PathBuf {
        self.root.join("registry.json")
    }

    pub fn module(&self, sha256: &str) -> PathBuf {
        self.root.join("modules").join(format!("{sha256}.wasm"))
    }

    pub fn read_model(&self, name: &str, generation: u64) -> PathBuf {
        self.root
            .join("read-models")
            .join(name)
            .join(format!("gen-{generation}.redb"))
    }

    pub fn read_models(&self, name: &str) -> PathBuf {
        self.root.join("read-models").join(name)
    }

    pub fn wasm_cache(&self) -> PathBuf {
        self.root.join("wasm-cache")
    }
}

impl Registry {
    pub fn load(path: &Path) -> std::io::Result<Registry> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(error) => Err(error),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::durable::replace(path, &bytes)
    }
}

/// Writes `bytes` to `path` durably unless the file is already there (modules are named by hash).
pub(crate) fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Atomic and durable, folder entry included: the registry will name this file.
    crate::durable::replace(path, bytes)
}
