//! Deployed projections: deploy, status, delete, rebuild, and reads of their read models.
//!
//! Each projection has a *current* generation that serves queries and, while a new version or a
//! rebuild builds, a *rebuild* generation beside it with its own read model file. When the rebuild
//! reaches the head, the current generation is halted, the rebuild catches up to at least its
//! checkpoint, and the registry and the serving pointer switch in one step: a query answers from
//! exactly one generation, and positions never go back.

pub mod check;
mod reads;
mod registry;
mod runner;
mod stats;
mod status;
mod upcasters;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::readmodel::ReadModel;
use crate::store::Store;
use crate::wasm::{self, ModuleError, Runtime, SubscriptionSpec, WasmConfig};

use registry::{Entry, GenerationEntry, Layout, Registry, UpcasterRef};
use runner::Generation;
pub use runner::{Fault, FaultCause, Phase, RunState};
pub use stats::ProjectionStats;
use stats::ReadKind;
pub use upcasters::UpcasterStatus;

/// Errors of the projection layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// No projection of that name.
    #[error("no projection named {0:?}")]
    NotFound(String),
    /// No upcaster of that name.
    #[error("no upcaster named {0:?}")]
    UpcasterNotFound(String),
    /// The name breaks the rules.
    #[error("{0}")]
    InvalidName(String),
    /// The module was refused.
    #[error("{0}")]
    InvalidModule(String),
    /// The module is too large.
    #[error("{0}")]
    TooLarge(String),
    /// The key is not in the read model.
    #[error("no value under key {0:?}")]
    KeyNotFound(String),
    /// The module has no query of that name.
    #[error("the projection has no query named {0:?}")]
    QueryNotFound(String),
    /// The module's query handler failed.
    #[error("{0}")]
    QueryFailed(String),
    /// The read model did not reach the asked position in time.
    #[error("the read model is at position {position}, not yet at {wanted}")]
    NotCaughtUp {
        /// Where it is.
        position: u64,
        /// Where the client wanted it.
        wanted: u64,
    },
    /// The projection is registered but its module could not be loaded: it answers nothing until
    /// a module is deployed under its name (or a rebuild manages to load it).
    #[error("projection {name:?} is not running: {reason}")]
    Unavailable {
        /// The projection.
        name: String,
        /// Why.
        reason: String,
    },
    /// The read model could not be read or written.
    #[error("read model storage: {0}")]
    Storage(String),
    /// The disk holding the projections is full: a deploy or rebuild could not write its files.
    #[error("the disk holding the projections is full: {0}")]
    StorageFull(String),
    /// Anything else: storage, I/O.
    #[error("{0}")]
    Internal(String),
}

fn internal(error: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Internal(error.to_string())
}

/// A failure to write the projections' files (modules, registry, new read models): `StorageFull`
/// when the disk is full, `Storage` for another I/O error, `Internal` for anything else.
fn disk(error: impl Into<anyhow::Error>) -> ProjectionError {
    let error = error.into();
    let io = error.chain().find_map(|cause| {
        cause.downcast_ref::<std::io::Error>().or_else(|| {
            match cause.downcast_ref::<redb::Error>() {
                Some(redb::Error::Io(io)) => Some(io),
                _ => None,
            }
        })
    });
    match io {
        Some(io) if crate::durable::is_full(io) => {
            ProjectionError::StorageFull(format!("{error:#}"))
        }
        Some(_) => ProjectionError::Storage(format!("{error:#}")),
        None => internal(format!("{error:#}")),
    }
}

/// One file of a backup.
#[derive(Debug)]
pub enum BackupItem {
    /// Copy this file (it does not change).
    File(std::path::PathBuf),
    /// These bytes, taken at the backup's moment.
    Bytes(Vec<u8>),
    /// A file written for the backup, deleted with it.
    Temporary(tempfile::TempPath),
}

/// What a deploy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployed {
    /// A new projection, catching up from position 1.
    Created,
    /// A new version, rebuilding beside the current one.
    Rebuilding,
    /// The same module as the current version: nothing changed.
    Unchanged,
}

/// A rebuild in progress, or the last one that failed.
#[derive(Debug, Clone)]
pub struct RebuildStatus {
    /// The version being built.
    pub version: u64,
    /// Why it is being built.
    pub reason: Option<String>,
    /// Its checkpoint.
    pub position: u64,
    /// Where it is.
    pub state: RunState,
}

/// Everything the status endpoint shows.
#[derive(Debug, Clone)]
pub struct Status {
    /// The name.
    pub name: String,
    /// The serving version.
    pub version: u64,
    /// SHA-256 of its module.
    pub module_sha256: String,
    /// The serving generation's checkpoint.
    pub position: u64,
    /// The store's head.
    pub head: u64,
    /// The serving generation's state.
    pub state: RunState,
    /// What the module subscribes to.
    pub subscription: SubscriptionSpec,
    /// The upcasters its input passes through, in order.
    pub upcasters: Vec<String>,
    /// A rebuild beside it, if any.
    pub rebuild: Option<RebuildStatus>,
}

/// How long a caught-up rebuild may take to reach the halted current version's checkpoint.
const PROMOTION_WAIT: Duration = Duration::from_secs(60);
/// After a swap that could not be made, when to try again.
const PROMOTION_RETRY: Duration = Duration::from_secs(2);

/// What an attempt to swap a rebuild in did.
enum Promotion {
    /// The rebuild serves.
    Done,
    /// The rebuild is no longer this projection's (superseded, abandoned, deleted).
    Gone,
    /// Not now (see the status): try again later.
    Retry,
}

/// A read-your-writes condition: answer only once the checkpoint is at least `position`.
#[derive(Debug, Clone, Copy)]
pub struct MinPosition {
    /// The position to wait for.
    pub position: u64,
    /// How long to wait.
    pub wait: Duration,
}

/// One registered projection as it runs. Every name in the registry has exactly one slot.
struct Slot {
    current: Serving,
    rebuild: Option<Arc<Generation>>,
    /// The last rebuild that faulted and was abandoned, shown until the next deploy or rebuild.
    failed_rebuild: Option<RebuildStatus>,
    /// Why the caught-up rebuild could not be swapped in yet (it is tried again).
    promotion_failure: Option<Fault>,
}

/// What answers for a projection.
enum Serving {
    /// A loaded generation, running (or faulted and retrying).
    Loaded(Arc<Generation>),
    /// Its module could not be loaded at start-up: shown as faulted, answering nothing, until a
    /// deploy under its name or a rebuild replaces it.
    Unloadable {
        entry: GenerationEntry,
        fault: Fault,
    },
}

impl Serving {
    fn loaded(&self) -> Option<&Arc<Generation>> {
        match self {
            Serving::Loaded(generation) => Some(generation),
            Serving::Unloadable { .. } => None,
        }
    }
}

/// The deployed projections of one server.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    runtime: Arc<Runtime>,
    layout: Layout,
    /// Serializes changes (deploy, rebuild, swap, delete) and guards the persisted registry.
    registry: tokio::sync::Mutex<Registry>,
    /// What serves queries, one slot per registered projection; changed only while holding
    /// `registry`, swapped under this lock (which never poisons).
    slots: RwLock<HashMap<String, Slot>>,
    /// Counters the runners and reads feed, for `/metrics`.
    stats: Arc<ProjectionStats>,
    /// The deployed upcasters, loaded, in the order they run: what HTTP reads pass events
    /// through. Replaced only while holding `registry`, which names them.
    chain: RwLock<Arc<crate::upcast::Chain>>,
}

/// The read model generation `name` is registered with, if any.
fn existing_generation(registry: &Registry, name: &str) -> Option<u64> {
    registry
        .projections
        .get(name)
        .map(|entry| entry.current.generation)
}

/// Checks a projection name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), ProjectionError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(ProjectionError::InvalidName(format!(
            "projection name {name:?} must match [a-z0-9][a-z0-9_-]{{0,63}}"
        )))
    }
}

/// The id a module is stored under: the SHA-256 of its bytes, in hex.
pub fn module_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Projections {
    /// Loads the registry under `dir` and starts every projection from its checkpoint.
    pub async fn open(store: Store, dir: &Path, limits: WasmConfig) -> anyhow::Result<Projections> {
        let layout = Layout {
            root: dir.to_owned(),
        };
        std::fs::create_dir_all(&layout.root)?;
        let runtime = Runtime::new(&layout.wasm_cache(), limits)?;
        let registry = Registry::load(&layout.registry())?;
        let projections = Projections {
            inner: Arc::new(Inner {
                store,
                runtime,
                layout,
                registry: tokio::sync::Mutex::new(Registry::default()),
                slots: RwLock::new(HashMap::new()),
                stats: Arc::new(ProjectionStats::default()),
                chain: RwLock::default(),
            }),
        };
        let chain = projections.load_chain(&registry).await;
        *projections.inner.chain.write() = Arc::new(chain);
        for (name, entry) in &registry.projections {
            // One projection that cannot load (a missing or damaged module file) does not keep
            // the server, or the others, from starting.
            let current = match projections
                .load_generation(name, &entry.current, None)
                .await
            {
                Ok(current) => current,
                Err(error) => {
                    tracing::error!(projection = %name, %error, "cannot load this projection; it is shown as faulted until a module is deployed under its name");
                    let fault = Fault {
                        message: format!("could not be loaded at start-up: {error:#}"),
                        position: 0,
                        at: std::time::SystemTime::now(),
                        cause: FaultCause::Storage,
                    };
                    projections.inner.slots.write().insert(
                        name.clone(),
                        Slot {
                            current: Serving::Unloadable {
                                entry: entry.current.clone(),
                                fault,
                            },
                            rebuild: None,
                            failed_rebuild: None,
                            promotion_failure: None,
                        },
                    );
                    continue;
                }
            };
            current.set_serving();
            current.start(projections.inner.store.clone(), None, None);
            let rebuild = match &entry.rebuild {
                Some(rebuild) => match projections.load_generation(name, rebuild, None).await {
                    Ok(rebuild) => Some(rebuild),
                    Err(error) => {
                        tracing::error!(projection = %name, %error, "cannot load the rebuild; the current version serves");
                        None
                    }
                },
                None => None,
            };
            projections.inner.slots.write().insert(
                name.clone(),
                Slot {
                    current: Serving::Loaded(current),
                    rebuild: None,
                    failed_rebuild: None,
                    promotion_failure: None,
                },
            );
            if let Some(rebuild) = rebuild {
                projections.start_rebuild(name, rebuild);
            }
        }
        let mut registry_lock = projections.inner.registry.lock().await;
        *registry_lock = registry;
        // A crash between saving an upcaster change and starting the rebuilds it calls for.
        projections
            .reconcile_upcasters(&mut registry_lock, "the upcasters changed")
            .await;
        drop(registry_lock);
        Ok(projections)
    }

    /// Opens a generation's read model, with its module: `loaded` when the caller has just
    /// compiled it, else loaded from the modules folder.
    async fn load_generation(
        &self,
        name: &str,
        entry: &GenerationEntry,
        loaded: Option<Arc<wasm::Module>>,
    ) -> anyhow::Result<Arc<Generation>> {
        let chain = self.generation_chain(&entry.upcasters).await?;
        let layout = self.inner.layout.clone();
        let runtime = self.inner.runtime.clone();
        let (name_owned, entry_owned) = (name.to_owned(), entry.clone());
        let (module, read_model) = tokio::task::spawn_blocking(move || {
            let module = match loaded {
                Some(module) => module,
                None => {
                    let bytes = std::fs::read(layout.module(&entry_owned.module_sha256))?;
                    let module = runtime
                        .load(&name_owned, &bytes)
                        .map_err(|e| anyhow::anyhow!("module of {name_owned}: {e}"))?;
                    Arc::new(module)
                }
            };
            let path = layout.read_model(&name_owned, entry_owned.generation);
            std::fs::create_dir_all(path.parent().expect("read models have a folder"))?;
            let read_model = ReadModel::open(&path)?;
            anyhow::Ok((module, read_model))
        })
        .await??;
        Ok(Generation::new(
            name,
            entry.clone(),
            module,
            chain,
            read_model,
            self.inner.stats.clone(),
        ))
    }

    /// The counters behind the projections' metrics.
    pub fn stats(&self) -> &ProjectionStats {
        &self.inner.stats
    }

    /// Compile cache hits and misses, and each compile's time, of the projections' modules.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Deploys `bytes` as projection `name`.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Deployed, ProjectionError> {
        validate_name(name)?;
        let sha = module_sha256(&bytes);
        let mut registry = self.inner.registry.lock().await;
        let broken = self.is_unloadable(name);
        if let Some(entry) = registry.projections.get(name)
            && !broken
        {
            if entry.current.module_sha256 == sha && entry.rebuild.is_none() {
                return Ok(Deployed::Unchanged);
            }
            // The version already rebuilding: let it go on.
            if entry
                .rebuild
                .as_ref()
                .is_some_and(|r| r.module_sha256 == sha)
            {
                return Ok(Deployed::Rebuilding);
            }
        }
        // Compile and validate before anything changes.
        let runtime = self.inner.runtime.clone();
        let layout = self.inner.layout.clone();
        let (name_owned, sha_owned) = (name.to_owned(), sha.clone());
        let module = tokio::task::spawn_blocking(move || {
            let module = runtime.load(&name_owned, &bytes).map_err(|e| match e {
                ModuleError::TooLarge { .. } => ProjectionError::TooLarge(e.to_string()),
                _ => ProjectionError::InvalidModule(e.to_string()),
            })?;
            registry::write_once(&layout.module(&sha_owned), &bytes).map_err(disk)?;
            Ok::<_, ProjectionError>(Arc::new(module))
        })
        .await
        .map_err(internal)??;
        match registry.projections.get(name).cloned() {
            Some(entry) if !broken => {
                let version = entry
                    .current
                    .version
                    .max(entry.rebuild.as_ref().map_or(0, |r| r.version))
                    + 1;
                let reason = format!("version {version} was deployed");
                self.begin_rebuild(
                    &mut registry,
                    name,
                    entry,
                    version,
                    sha,
                    Some(module),
                    reason,
                )
                .await?;
                Ok(Deployed::Rebuilding)
            }
            existing => {
                // A new projection, or one that could not be loaded: a fresh generation serves
                // from position 1.
                let (version, generation) = existing
                    .as_ref()
                    .map_or((1, 1), |old| (old.current.version + 1, old.next_generation));
                let entry = Entry {
                    current: self.generation_entry(version, sha, generation, &module, None),
                    rebuild: None,
                    next_generation: generation + 1,
                };
                let replaced = existing_generation(&registry, name);
                self.serve_fresh(&mut registry, name, entry, module).await?;
                if let Some(generation) = replaced {
                    self.remove_files(name, generation);
                }
                Ok(Deployed::Created)
            }
        }
    }

    /// Whether `name` is registered but could not be loaded.
    fn is_unloadable(&self, name: &str) -> bool {
        matches!(
            self.inner.slots.read().get(name),
            Some(Slot {
                current: Serving::Unloadable { .. },
                ..
            })
        )
    }

    /// Registers `entry` and serves its current generation, a fresh read model, from position 1:
    /// a new projection, or one whose module could not be loaded before.
    async fn serve_fresh(
        &self,
        registry: &mut Registry,
        name: &str,
        entry: Entry,
        module: Arc<wasm::Module>,
    ) -> Result<(), ProjectionError> {
        let generation = self
            .load_generation(name, &entry.current, Some(module))
            .await
            .map_err(disk)?;
        let version = entry.current.version;
        registry.projections.insert(name.to_owned(), entry);
        registry.save(&self.inner.layout.registry()).map_err(disk)?;
        generation.set_serving();
        generation.start(self.inner.store.clone(), None, None);
        self.inner.slots.write().insert(
            name.to_owned(),
            Slot {
                current: Serving::Loaded(generation),
                rebuild: None,
                failed_rebuild: None,
                promotion_failure: None,
            },
        );
        tracing::info!(projection = name, version, "serving from position 1");
        Ok(())
    }

    /// Rebuilds the current version into a fresh read model.
    pub async fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let mut registry = self.inner.registry.lock().await;
        let entry = registry
            .projections
            .get(name)
            .cloned()
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))?;
        let (version, sha) = (entry.current.version, entry.current.module_sha256.clone());
        if self.is_unloadable(name) {
            // Its module could not be loaded at start-up: try again, into a fresh read model.
            let module = self.load_module(name, &sha).await.map_err(|error| {
                ProjectionError::Unavailable {
                    name: name.to_owned(),
                    reason: format!(
                        "its module still cannot be loaded ({error:#}); deploy a module under its name"
                    ),
                }
            })?;
            let fresh = Entry {
                current: self.generation_entry(version, sha, entry.next_generation, &module, None),
                rebuild: None,
                next_generation: entry.next_generation + 1,
            };
            let old_generation = entry.current.generation;
            self.serve_fresh(&mut registry, name, fresh, module).await?;
            self.remove_files(name, old_generation);
            return Ok(());
        }
        // The serving generation's module: no need to load it again.
        let module = self.current(name).ok().map(|g| g.module.clone());
        let reason = "a rebuild was asked for".to_owned();
        self.begin_rebuild(&mut registry, name, entry, version, sha, module, reason)
            .await
    }

    /// Loads a stored module by its hash.
    async fn load_module(&self, name: &str, sha: &str) -> anyhow::Result<Arc<wasm::Module>> {
        let path = self.inner.layout.module(sha);
        let runtime = self.inner.runtime.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let module = runtime
                .load(&name, &bytes)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(Arc::new(module))
        })
        .await?
    }

    /// A new generation's entry: its input passes through the current upcasters that are
    /// relevant to the module's subscription.
    fn generation_entry(
        &self,
        version: u64,
        module_sha256: String,
        generation: u64,
        module: &wasm::Module,
        reason: Option<String>,
    ) -> GenerationEntry {
        let chain = self.inner.chain.read().relevant_to(module.subscription());
        GenerationEntry {
            version,
            module_sha256,
            generation,
            upcasters: chain
                .members()
                .into_iter()
                .map(|(name, module_sha256)| UpcasterRef {
                    name,
                    module_sha256,
                })
                .collect(),
            reason,
        }
    }

    /// Starts a new generation beside the current one, superseding a rebuild already running;
    /// `reason` is shown in its status while it rebuilds.
    #[allow(clippy::too_many_arguments)]
    async fn begin_rebuild(
        &self,
        registry: &mut Registry,
        name: &str,
        mut entry: Entry,
        version: u64,
        sha: String,
        module: Option<Arc<wasm::Module>>,
        reason: String,
    ) -> Result<(), ProjectionError> {
        let module = match module {
            Some(module) => module,
            None => self.load_module(name, &sha).await.map_err(disk)?,
        };
        let superseded = match self.inner.slots.write().get_mut(name) {
            Some(slot) => {
                slot.failed_rebuild = None;
                slot.promotion_failure = None;
                slot.rebuild.take()
            }
            None => None,
        };
        if let Some(old) = superseded {
            old.halt().await;
            self.remove_files(name, old.entry.generation);
        }
        let rebuild =
            self.generation_entry(version, sha, entry.next_generation, &module, Some(reason));
        entry.next_generation += 1;
        entry.rebuild = Some(rebuild.clone());
        let generation = self
            .load_generation(name, &rebuild, Some(module))
            .await
            .map_err(disk)?;
        registry.projections.insert(name.to_owned(), entry);
        registry.save(&self.inner.layout.registry()).map_err(disk)?;
        tracing::info!(
            projection = name,
            version,
            "rebuilding beside the current version"
        );
        self.start_rebuild(name, generation);
        Ok(())
    }

    fn start_rebuild(&self, name: &str, generation: Arc<Generation>) {
        let (caught_up_tx, caught_up) = oneshot::channel();
        let (faulted_tx, mut faulted) = oneshot::channel();
        generation.start(
            self.inner.store.clone(),
            Some(caught_up_tx),
            Some(faulted_tx),
        );
        if let Some(slot) = self.inner.slots.write().get_mut(name) {
            slot.rebuild = Some(generation.clone());
        }
        let projections = self.clone();
        let name = name.to_owned();
        // The rebuild's supervisor: it watches for a fault of the new version for as long as
        // the rebuild exists, and swaps it in once caught up, trying again until it can.
        tokio::spawn(async move {
            tokio::select! {
                reached = caught_up => if reached.is_err() {
                    return; // the runner ended without reaching the head: halted, superseded
                },
                fault = &mut faulted => {
                    if let Ok(fault) = fault {
                        projections.abandon(&name, &generation, fault).await;
                    }
                    return;
                }
            }
            loop {
                match projections.promote(&name, &generation).await {
                    Promotion::Done | Promotion::Gone => return,
                    Promotion::Retry => {}
                }
                tokio::select! {
                    fault = &mut faulted => {
                        if let Ok(fault) = fault {
                            projections.abandon(&name, &generation, fault).await;
                        }
                        return;
                    }
                    () = tokio::time::sleep(PROMOTION_RETRY) => {}
                }
            }
        });
    }

    /// Swaps a caught-up rebuild in as the current generation.
    async fn promote(&self, name: &str, rebuild: &Arc<Generation>) -> Promotion {
        let mut registry = self.inner.registry.lock().await;
        let Some(old) = self.slot_generations(name, rebuild) else {
            return Promotion::Gone; // superseded or deleted meanwhile
        };
        // Freeze the old generation, let the new one reach at least its checkpoint: no query
        // ever sees the position go back.
        old.halt().await;
        let target = old.read_model.checkpoint();
        let mut checkpoint = rebuild.read_model.watch_checkpoint();
        let reached = async {
            fail::fail_point!(
                "projection-promote-wait",
                name.starts_with("failpoint-"),
                |_| false
            );
            matches!(
                tokio::time::timeout(
                    PROMOTION_WAIT,
                    checkpoint.wait_for(|position| *position >= target),
                )
                .await,
                Ok(Ok(_))
            )
        }
        .await;
        if !reached {
            let why = format!(
                "the new version did not reach the current one's position {target} within {} s",
                PROMOTION_WAIT.as_secs()
            );
            return self.promotion_failed(name, &old, rebuild, why);
        }
        if let Some(entry) = registry.projections.get_mut(name) {
            entry.current = rebuild.entry.clone();
            entry.rebuild = None;
        }
        let saved = (|| {
            fail::fail_point!(
                "projection-promote-save",
                name.starts_with("failpoint-"),
                |_| Err(std::io::Error::other("injected failure"))
            );
            registry.save(&self.inner.layout.registry())
        })();
        if let Err(error) = saved {
            // The registry in memory goes back to what the file says.
            if let Some(entry) = registry.projections.get_mut(name) {
                entry.current = old.entry.clone();
                entry.rebuild = Some(rebuild.entry.clone());
            }
            let why = format!("saving the registry failed: {error}");
            return self.promotion_failed(name, &old, rebuild, why);
        }
        if let Some(slot) = self.inner.slots.write().get_mut(name) {
            slot.current = Serving::Loaded(rebuild.clone());
            slot.rebuild = None;
            slot.promotion_failure = None;
        }
        rebuild.set_serving();
        self.remove_files(name, old.entry.generation);
        tracing::info!(
            projection = name,
            version = rebuild.entry.version,
            "new version serves"
        );
        Promotion::Done
    }

    /// The current version serves on; the failure is shown in the rebuild's status until the
    /// next attempt succeeds.
    fn promotion_failed(
        &self,
        name: &str,
        old: &Arc<Generation>,
        rebuild: &Arc<Generation>,
        why: String,
    ) -> Promotion {
        tracing::error!(
            projection = name,
            version = rebuild.entry.version,
            "the rebuild could not be swapped in ({why}); the current version keeps serving, trying again in {} s",
            PROMOTION_RETRY.as_secs()
        );
        old.restart(self.inner.store.clone());
        if let Some(slot) = self.inner.slots.write().get_mut(name) {
            slot.promotion_failure = Some(Fault {
                message: format!("could not be swapped in yet: {why}"),
                position: rebuild.read_model.checkpoint(),
                at: std::time::SystemTime::now(),
                cause: FaultCause::Storage,
            });
        }
        Promotion::Retry
    }

    /// The current generation, if `rebuild` is still this projection's rebuild.
    fn slot_generations(&self, name: &str, rebuild: &Arc<Generation>) -> Option<Arc<Generation>> {
        let slots = self.inner.slots.read();
        let slot = slots.get(name)?;
        let same = slot
            .rebuild
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, rebuild));
        if same {
            slot.current.loaded().cloned()
        } else {
            None
        }
    }

    async fn abandon(&self, name: &str, rebuild: &Arc<Generation>, fault: Fault) {
        let mut registry = self.inner.registry.lock().await;
        if self.slot_generations(name, rebuild).is_none() {
            return;
        }
        if let Some(entry) = registry.projections.get_mut(name) {
            entry.rebuild = None;
        }
        if let Err(error) = registry.save(&self.inner.layout.registry()) {
            tracing::error!(%error, "saving the registry failed");
        }
        let position = rebuild.read_model.checkpoint();
        if let Some(slot) = self.inner.slots.write().get_mut(name) {
            slot.rebuild = None;
            slot.failed_rebuild = Some(RebuildStatus {
                version: rebuild.entry.version,
                reason: rebuild.entry.reason.clone(),
                position,
                state: RunState {
                    phase: Phase::Faulted,
                    fault: Some(fault),
                    events_per_second: 0.0,
                },
            });
        }
        rebuild.halt().await;
        self.remove_files(name, rebuild.entry.generation);
        tracing::warn!(
            projection = name,
            version = rebuild.entry.version,
            "rebuild abandoned; the current version keeps serving"
        );
    }

    fn remove_files(&self, name: &str, generation: u64) {
        let path = self.inner.layout.read_model(name, generation);
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %path.display(), "could not delete an old read model");
        }
    }

    /// Deletes a projection: its runners stop, its read models are removed.
    pub async fn delete(&self, name: &str) -> Result<(), ProjectionError> {
        let mut registry = self.inner.registry.lock().await;
        if registry.projections.remove(name).is_none() {
            return Err(ProjectionError::NotFound(name.to_owned()));
        }
        registry.save(&self.inner.layout.registry()).map_err(disk)?;
        let slot = self.inner.slots.write().remove(name);
        if let Some(slot) = slot {
            if let Serving::Loaded(current) = slot.current {
                current.halt().await;
            }
            if let Some(rebuild) = slot.rebuild {
                rebuild.halt().await;
            }
        }
        let _ = std::fs::remove_dir_all(self.inner.layout.read_models(name));
        self.inner.stats.forget(name);
        tracing::info!(projection = name, "deleted");
        Ok(())
    }

    /// What a backup holds of the projections, as (path relative to the projections folder,
    /// file to copy or bytes): the registry as it is now and every module it names. Read
    /// models are left out: they are derived, and rebuilt from the log after a restore.
    pub async fn backup_files(&self) -> anyhow::Result<Vec<(String, BackupItem)>> {
        let registry = self.inner.registry.lock().await;
        let mut files = vec![(
            "registry.json".to_owned(),
            BackupItem::Bytes(serde_json::to_vec_pretty(&*registry)?),
        )];
        let generations = registry
            .projections
            .values()
            .flat_map(|e| std::iter::once(&e.current).chain(e.rebuild.as_ref()));
        let mut modules: Vec<&str> = generations
            .flat_map(|g| {
                std::iter::once(g.module_sha256.as_str())
                    .chain(g.upcasters.iter().map(|u| u.module_sha256.as_str()))
            })
            .chain(
                registry
                    .upcasters
                    .values()
                    .map(|u| u.module_sha256.as_str()),
            )
            .collect();
        modules.sort_unstable();
        modules.dedup();
        for sha in modules {
            files.push((
                format!("modules/{sha}.wasm"),
                BackupItem::File(self.inner.layout.module(sha)),
            ));
        }
        Ok(files)
    }

    /// Each projection's newest generation (the rebuild if there is one, else the current one):
    /// what a follower must run.
    pub async fn wanted(
        &self,
    ) -> std::collections::BTreeMap<String, crate::replication::WantedProjection> {
        let registry = self.inner.registry.lock().await;
        registry
            .projections
            .iter()
            .map(|(name, entry)| {
                let newest = entry.rebuild.as_ref().unwrap_or(&entry.current);
                (
                    name.clone(),
                    crate::replication::WantedProjection {
                        version: newest.version,
                        generation: newest.generation,
                        module_sha256: newest.module_sha256.clone(),
                        upcasters: newest
                            .upcasters
                            .iter()
                            .map(|u| u.module_sha256.clone())
                            .collect(),
                    },
                )
            })
            .collect()
    }

    /// The bytes of a deployed module, by its SHA-256 (hex); `None` if there is no such module.
    pub async fn module_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, ProjectionError> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Ok(None);
        }
        let path = self.inner.layout.module(&sha256.to_ascii_lowercase());
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(disk(error)),
        }
    }

    /// Stops every runner after its current batch and makes the read models durable.
    pub async fn shutdown(&self) {
        let generations: Vec<Arc<Generation>> = {
            let slots = self.inner.slots.read();
            slots
                .values()
                .flat_map(|s| {
                    s.current
                        .loaded()
                        .cloned()
                        .into_iter()
                        .chain(s.rebuild.clone())
                })
                .collect()
        };
        for generation in generations {
            generation.halt().await;
            let read_model = generation.read_model.clone();
            let _ = tokio::task::spawn_blocking(move || read_model.flush()).await;
        }
    }
}
