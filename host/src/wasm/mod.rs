//! Running projection components with wasmtime: one [`Engine`], compiled code cached on disk,
//! an `InstancePre` per module, and a `Store` per instance with a memory cap and an epoch
//! deadline on every call.
//!
//! This layer never touches redb: events go in as bytes, writes come out as bytes, and reads of
//! the read model go through the [`ReadView`] the caller hands in. A guest error is a value; a trap
//! (deadline, memory, panic) is a [`GuestFailure::Trap`]; neither takes the host down.

mod bindings;
mod host;
mod stderr;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rand::SeedableRng;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Cache, CacheConfig, Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use bindings::{Projection, ProjectionPre};

pub use bindings::lantern::projection::types::QueryError;

/// How often the engine's epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sandbox limits, and where compiled code is cached.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Where compiled code is cached; `None`: the `wasm-cache` folder beside the registry.
    pub compile_cache: Option<std::path::PathBuf>,
    /// Largest linear memory of one instance.
    pub memory_bytes: usize,
    /// Longest a single call into the guest may run.
    pub call_timeout: Duration,
    /// Largest module accepted.
    pub max_module_bytes: usize,
    /// Largest encoded write set one batch may return.
    pub max_write_bytes: usize,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            compile_cache: None,
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(5),
            max_module_bytes: 32 << 20,
            max_write_bytes: 32 << 20,
        }
    }
}

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// Not a component of the `lantern:projection` world, or it does not compile.
    #[error("{0}")]
    Invalid(String),
    /// Over the size limit.
    #[error("the module has {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// How a call into the guest failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestFailure {
    /// The guest returned an error value.
    #[error("{0}")]
    Error(String),
    /// The guest failed on the event at `position`.
    #[error("{message}")]
    Event {
        /// The event's position.
        position: u64,
        /// The guest's message.
        message: String,
    },
    /// The guest trapped: a panic, the deadline, the memory cap, or a malformed answer. The
    /// instance must not be used again.
    #[error("trap: {0}")]
    Trap(String),
    /// The read model could not be read during the call: not the module's fault. The instance
    /// must not be used again.
    #[error("{0}")]
    Storage(String),
}

/// The read model as the guest sees it during one call.
pub trait ReadView: Send {
    /// The value under `key`; `Err` when the read model cannot be read.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Up to `limit` entries with keys starting with `prefix` and greater than `after`.
    fn scan(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, String>;
}

/// A read of the read model failed during a guest call: it traps the guest, and the call fails
/// with [`GuestFailure::Storage`], which is not the module's fault.
#[derive(Debug)]
pub(crate) struct StorageFailure(pub String);

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the read model failed: {}", self.0)
    }
}

impl std::error::Error for StorageFailure {}

/// Which events a module wants, as it declared them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionSpec {
    /// Categories.
    pub categories: Vec<String>,
    /// Streams.
    pub streams: Vec<String>,
    /// Event types.
    pub types: Vec<String>,
}

impl SubscriptionSpec {
    /// Events of a listed category or stream (any, when both are empty) and a listed type (any,
    /// when none is listed).
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        self.wants_stream(stream)
            && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
    }

    /// Whether it wants some events of `stream` (of a listed category or stream, or any when
    /// both lists are empty).
    pub fn wants_stream(&self, stream: &str) -> bool {
        (self.categories.is_empty() && self.streams.is_empty())
            || self
                .categories
                .iter()
                .any(|c| c == crate::store::category_of(stream))
            || self.streams.iter().any(|s| s == stream)
    }
}

/// Per-instance host state.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    view: Option<Box<dyn ReadView>>,
    name: Arc<str>,
    log_budget: host::LogBudget,
    output: stderr::Tail,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The store's limits, noting the largest linear memory any instance of the module grew to.
struct Limiter {
    limits: StoreLimits,
    high_water: Arc<AtomicUsize>,
    /// The largest linear memory of this instance so far.
    grown_to: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.high_water.fetch_max(desired, Ordering::Relaxed);
            self.grown_to = self.grown_to.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Always the same instant: projections have no clock.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The engine, the linker, and the limits every instance gets.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: WasmConfig,
    cache: Cache,
    compile_seconds: Histogram,
}

impl Runtime {
    /// An engine whose compiled code is cached in `limits.compile_cache` (or `default_cache`), and
    /// a thread that advances its epoch for call deadlines.
    pub fn new(default_cache: &Path, limits: WasmConfig) -> anyhow::Result<Arc<Runtime>> {
        let cache_dir = limits.compile_cache.as_deref().unwrap_or(default_cache);
        let mut config = Config::new();
        config.epoch_interruption(true);
        // `LANTERN_WASM_PERF_MAP=1`: guest functions by name in `perf report` (/tmp/perf-PID.map).
        if std::env::var_os("LANTERN_WASM_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut cache = CacheConfig::new();
        cache.with_directory(std::path::absolute(cache_dir)?);
        let cache = Cache::new(cache).map_err(to_anyhow)?;
        config.cache(Some(cache.clone()));
        let engine = Engine::new(&config).map_err(to_anyhow)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(to_anyhow)?;
        Projection::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(to_anyhow)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("lantern-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
            cache,
            // 10 ms .. ~80 s (a large JavaScript module takes tens of seconds)
            compile_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        }))
    }

    /// Modules found in the compile cache, and modules compiled, since start.
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        (
            self.cache.cache_hits() as u64,
            self.cache.cache_misses() as u64,
        )
    }

    /// How long each module took to compile or to load from the cache.
    pub fn compile_seconds(&self) -> &Histogram {
        &self.compile_seconds
    }

    /// Compiles (or loads from the cache) a component within the size limit, and links it.
    fn compile(
        &self,
        bytes: &[u8],
    ) -> Result<(Component, wasmtime::component::InstancePre<GuestState>), ModuleError> {
        if bytes.len() > self.limits.max_module_bytes {
            return Err(ModuleError::TooLarge {
                size: bytes.len(),
                limit: self.limits.max_module_bytes,
            });
        }
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| invalid("not a valid WebAssembly component", e))?;
        self.compile_seconds
            .observe(started.elapsed().as_secs_f64());
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid("the component needs imports Lantern does not provide", e))?;
        Ok((component, instance_pre))
    }

    /// Compiles (or loads from the cache) and validates a module, and asks it for its
    /// subscription. Blocking: call it off the async threads.
    pub fn load(self: &Arc<Self>, name: &str, bytes: &[u8]) -> Result<Module, ModuleError> {
        let (component, instance_pre) = self.compile(bytes)?;
        let pre = ProjectionPre::new(instance_pre).map_err(|e| {
            invalid(
                "the component does not export the lantern:projection world",
                e,
            )
        })?;
        let legacy_batches = component
            .component_type()
            .imports(&self.engine)
            .any(|(import, _)| import == HOST_0_1_0);
        let mut module = Module {
            runtime: self.clone(),
            pre,
            name: Arc::from(name),
            subscription: SubscriptionSpec::default(),
            legacy_batches,
            memory_high_water: Arc::default(),
        };
        let mut instance = module
            .instantiate()
            .map_err(|e| ModuleError::Invalid(format!("the component fails to start: {e}")))?;
        let described = instance
            .call(None, |bindings, store| bindings.call_describe(store))
            .map_err(|e| ModuleError::Invalid(format!("describe() failed: {e}")))?;
        module.subscription = SubscriptionSpec {
            categories: described.categories,
            streams: described.streams,
            types: described.types,
        };
        Ok(module)
    }
}

impl Runtime {
    /// A store with the sandbox every instance gets: no clock, seeded randomness, no folders,
    /// no network, stdout and stderr kept for trap messages, the memory cap and the deadline.
    fn sandbox(&self, name: &Arc<str>, high_water: &Arc<AtomicUsize>) -> Store<GuestState> {
        let output = stderr::Tail::default();
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(rand::rngs::StdRng::seed_from_u64(0))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(1))
            .insecure_random_seed(0)
            // No preopened folders, no environment, no arguments, and no network at all.
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limits: Limiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
                high_water: high_water.clone(),
                grown_to: 0,
            },
            view: None,
            name: name.clone(),
            log_budget: host::LogBudget::default(),
            output,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        store
    }

    fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_millis().max(1) as u64;
        (self.limits.call_timeout.as_millis() as u64 / tick).max(1)
    }

    /// Compiles (or loads from the cache) and validates an upcaster module, and asks it which
    /// types it takes and gives. Blocking: call it off the async threads.
    pub fn load_upcaster(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
    ) -> Result<UpcasterModule, ModuleError> {
        let (_, instance_pre) = self.compile(bytes)?;
        let pre = bindings::upcaster::UpcasterPre::new(instance_pre).map_err(|e| {
            invalid(
                "the component does not export the lantern:projection upcaster world",
                e,
            )
        })?;
        let mut module = UpcasterModule {
            runtime: self.clone(),
            pre,
            name: Arc::from(name),
            takes: Vec::new(),
            gives: Vec::new(),
            memory_high_water: Arc::default(),
        };
        let mut instance = module
            .instantiate()
            .map_err(|e| ModuleError::Invalid(format!("the component fails to start: {e}")))?;
        let spec = instance
            .call(|bindings, store| bindings.call_describe(store))
            .map_err(|e| ModuleError::Invalid(format!("describe() failed: {e}")))?;
        if spec.takes.is_empty() {
            return Err(ModuleError::Invalid(
                "the upcaster takes no event type (UpcastTypes::takes)".into(),
            ));
        }
        module.takes = spec.takes;
        module.gives = spec.gives;
        Ok(module)
    }
}

/// A compiled, validated upcaster, ready to instantiate cheaply.
pub struct UpcasterModule {
    runtime: Arc<Runtime>,
    pre: bindings::upcaster::UpcasterPre<GuestState>,
    name: Arc<str>,
    takes: Vec<String>,
    gives: Vec<String>,
    memory_high_water: Arc<AtomicUsize>,
}

impl UpcasterModule {
    /// The event types it takes.
    pub fn takes(&self) -> &[String] {
        &self.takes
    }

    /// The types its answers may have besides an event's own.
    pub fn gives(&self) -> &[String] {
        &self.gives
    }

    /// A fresh instance in its own sandboxed store.
    pub fn instantiate(&self) -> Result<UpcasterInstance, GuestFailure> {
        let mut store = self.runtime.sandbox(&self.name, &self.memory_high_water);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| GuestFailure::Trap(format!("instantiation failed: {e:#}")))?;
        Ok(UpcasterInstance {
            store,
            bindings,
            deadline_ticks: self.runtime.deadline_ticks(),
        })
    }
}

/// One instance of an upcaster. After a [`GuestFailure::Trap`] it must be dropped.
pub struct UpcasterInstance {
    store: Store<GuestState>,
    bindings: bindings::upcaster::Upcaster,
    deadline_ticks: u64,
}

impl UpcasterInstance {
    fn call<T>(
        &mut self,
        call: impl FnOnce(&bindings::upcaster::Upcaster, &mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestFailure> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = call(&self.bindings, &mut self.store);
        result.map_err(|error| trap(error, &self.store))
    }

    /// Upcasts one encoded batch (events of types it takes); returns the encoded answers.
    pub fn upcast(&mut self, batch: &[u8]) -> Result<Vec<u8>, GuestFailure> {
        self.call(|bindings, store| bindings.call_upcast(store, batch))?
            .map_err(|error| GuestFailure::Event {
                position: error.position,
                message: error.message,
            })
    }
}

/// A failed call into the guest as a [`GuestFailure`]: a failed read of the read model is
/// `Storage`, anything else a `Trap` with the guest's last printed line (a Rust guest prints
/// its panic message before it aborts).
fn trap(error: wasmtime::Error, store: &Store<GuestState>) -> GuestFailure {
    if let Some(storage) = error.downcast_ref::<StorageFailure>() {
        return GuestFailure::Storage(storage.to_string());
    }
    let cause = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "the call ran past its deadline".to_owned(),
        Some(wasmtime::Trap::UnreachableCodeReached) => "the guest aborted".to_owned(),
        _ => error.root_cause().to_string(),
    };
    match store.data().output.last_line() {
        Some(printed) => GuestFailure::Trap(format!("{cause}: {printed}")),
        None => GuestFailure::Trap(cause),
    }
}

/// A module refused, with wasmtime's reason on one line (some validator messages carry
/// pretty-printed byte arrays).
fn invalid(what: &str, e: wasmtime::Error) -> ModuleError {
    let reason = format!("{e:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    ModuleError::Invalid(format!("{what}: {reason}"))
}

fn to_anyhow(error: wasmtime::Error) -> anyhow::Error {
    // `wasmtime::Error` (v48) is not a `std::error::Error`; keep its whole chain as text.
    anyhow::anyhow!("{error:#}")
}

/// A compiled, validated module, ready to instantiate cheaply.
pub struct Module {
    runtime: Arc<Runtime>,
    pre: ProjectionPre<GuestState>,
    name: Arc<str>,
    subscription: SubscriptionSpec,
    legacy_batches: bool,
    /// The largest linear memory any of its instances grew to, in bytes.
    memory_high_water: Arc<AtomicUsize>,
}

/// The host interface a module built against WIT 0.1.0 imports: it decodes batches without ids
/// and recorded times.
const HOST_0_1_0: &str = "lantern:projection/host@0.1.0";

impl Module {
    /// What the module subscribes to.
    pub fn subscription(&self) -> &SubscriptionSpec {
        &self.subscription
    }

    /// The largest linear memory any of its instances has grown to, in bytes.
    pub fn memory_high_water_bytes(&self) -> u64 {
        self.memory_high_water.load(Ordering::Relaxed) as u64
    }

    /// An empty batch in the encoding this module decodes.
    pub fn batch_encoder(&self) -> lantern_wire::BatchEncoder {
        self.batch_encoder_reusing(Vec::new())
    }

    /// The same, written into `buffer` (see `BatchEncoder::reusing`).
    pub fn batch_encoder_reusing(&self, buffer: Vec<u8>) -> lantern_wire::BatchEncoder {
        lantern_wire::BatchEncoder::reusing(buffer, self.legacy_batches)
    }

    /// A fresh instance in its own sandboxed store.
    pub fn instantiate(&self) -> Result<Instance, GuestFailure> {
        let mut store = self.runtime.sandbox(&self.name, &self.memory_high_water);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| GuestFailure::Trap(format!("instantiation failed: {e:#}")))?;
        Ok(Instance {
            store,
            bindings,
            deadline_ticks: self.runtime.deadline_ticks(),
            max_write_bytes: self.runtime.limits.max_write_bytes,
            memory_cap: self.runtime.limits.memory_bytes,
        })
    }
}

/// One instance of a module. After a [`GuestFailure::Trap`] it must be dropped.
pub struct Instance {
    store: Store<GuestState>,
    bindings: Projection,
    deadline_ticks: u64,
    max_write_bytes: usize,
    memory_cap: usize,
}

impl Instance {
    fn call<T>(
        &mut self,
        view: Option<Box<dyn ReadView>>,
        call: impl FnOnce(&Projection, &mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestFailure> {
        self.store.data_mut().view = view;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = call(&self.bindings, &mut self.store);
        self.store.data_mut().view = None;
        result.map_err(|error| trap(error, &self.store))
    }

    /// Whether its linear memory has grown past half the cap. Linear memory never shrinks, and a
    /// garbage-collected guest (a JavaScript engine) keeps growing it across batches: such an
    /// instance is best replaced by a fresh one between batches, before a batch hits the cap.
    pub fn should_be_renewed(&self) -> bool {
        let data = self.store.data();
        data.limits.grown_to > self.memory_cap / 2
    }

    /// Folds one encoded batch; returns the encoded writes.
    pub fn handle(
        &mut self,
        batch: &[u8],
        view: Box<dyn ReadView>,
    ) -> Result<Vec<u8>, GuestFailure> {
        let writes = self
            .call(Some(view), |bindings, store| {
                bindings.call_handle(store, batch)
            })?
            .map_err(|error| GuestFailure::Event {
                position: error.position,
                message: error.message,
            })?;
        if writes.len() > self.max_write_bytes {
            return Err(GuestFailure::Error(format!(
                "the batch's write set has {} bytes, more than the limit of {}",
                writes.len(),
                self.max_write_bytes
            )));
        }
        Ok(writes)
    }

    /// Runs the module's query handler.
    pub fn query(
        &mut self,
        name: &str,
        params_json: &str,
        view: Box<dyn ReadView>,
    ) -> Result<Result<String, QueryError>, GuestFailure> {
        self.call(Some(view), |bindings, store| {
            bindings.call_query(store, name, params_json)
        })
    }
}
