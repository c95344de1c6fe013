//! Upcasters live in the projection registry: deploying or deleting one changes the registry,
//! the chain the HTTP reads use, and, under the same lock, starts a rebuild of every projection
//! whose newest generation was made with other upcasters than it would be given now. That last
//! step ([`Projections::reconcile_upcasters`]) also runs at start-up, so a crash between saving
//! the registry and starting the rebuilds only delays them.

use std::sync::Arc;

use super::registry::{self, Registry, UpcasterEntry, UpcasterRef};
use super::{Deployed, ProjectionError, Projections, Serving, disk, internal, validate_name};
use crate::upcast::{Chain, Upcaster, UpcasterFault};
use crate::wasm::ModuleError;

/// What `GET /upcasters` shows of one upcaster.
#[derive(Debug, Clone)]
pub struct UpcasterStatus {
    /// Its name.
    pub name: String,
    /// Its version, from 1.
    pub version: u64,
    /// SHA-256 of its module.
    pub module_sha256: String,
    /// The types it takes.
    pub takes: Vec<String>,
    /// The types it may give.
    pub gives: Vec<String>,
    /// Events it upcast since the server started.
    pub events: u64,
    /// Faults since the server started.
    pub faults: u64,
    /// Its last fault.
    pub fault: Option<UpcasterFault>,
    /// Why its module could not be loaded at start-up, if it could not.
    pub unloadable: Option<String>,
}

/// What deploying or deleting an upcaster did.
#[derive(Debug, Clone)]
pub struct UpcasterChange {
    /// Created, a new version, or the same module again.
    pub deployed: Deployed,
    /// The upcaster's version after the change (0 after a delete).
    pub version: u64,
    /// The projections that now rebuild because of it.
    pub rebuilding: Vec<String>,
}

impl Projections {
    /// The upcasters reads pass events through now, in the order they run.
    pub fn upcasters(&self) -> Arc<Chain> {
        self.inner.chain.read().clone()
    }

    /// Every deployed upcaster, in the order they run.
    pub fn upcaster_statuses(&self) -> Vec<UpcasterStatus> {
        self.upcasters()
            .upcasters()
            .iter()
            .map(|u| UpcasterStatus {
                name: u.name.clone(),
                version: u.version,
                module_sha256: u.module_sha256.clone(),
                takes: u.takes().to_vec(),
                gives: u.gives().to_vec(),
                events: u.events(),
                faults: u.faults(),
                fault: u.fault(),
                unloadable: u.unloadable().map(str::to_owned),
            })
            .collect()
    }

    /// Loads the registry's upcasters; one whose module cannot be loaded fails every event it
    /// takes (it never lets them pass in their stored shape).
    pub(super) async fn load_chain(&self, registry: &Registry) -> Chain {
        let mut upcasters = Vec::new();
        for (name, entry) in &registry.upcasters {
            let upcaster = match self
                .load_upcaster(name, entry.version, &entry.module_sha256)
                .await
            {
                Ok(upcaster) => upcaster,
                Err(error) => {
                    tracing::error!(upcaster = %name, %error, "cannot load this upcaster; every event it takes fails until a module is deployed under its name");
                    Upcaster::broken(
                        name,
                        entry.version,
                        &entry.module_sha256,
                        entry.takes.clone(),
                        entry.gives.clone(),
                        format!("{error:#}"),
                    )
                }
            };
            upcasters.push(Arc::new(upcaster));
        }
        Chain::new(upcasters)
    }

    async fn load_upcaster(&self, name: &str, version: u64, sha: &str) -> anyhow::Result<Upcaster> {
        let path = self.inner.layout.module(sha);
        let runtime = self.inner.runtime.clone();
        let (name, sha) = (name.to_owned(), sha.to_owned());
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let module = runtime
                .load_upcaster(&name, &bytes)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(Upcaster::new(&name, version, &sha, module))
        })
        .await?
    }

    /// The chain a generation names: the current chain's upcasters where they are the same
    /// modules, the others loaded from the modules folder.
    pub(super) async fn generation_chain(
        &self,
        refs: &[UpcasterRef],
    ) -> anyhow::Result<Arc<Chain>> {
        let current = self.upcasters();
        let mut upcasters = Vec::with_capacity(refs.len());
        for wanted in refs {
            let loaded = current
                .upcasters()
                .iter()
                .find(|u| u.name == wanted.name && u.module_sha256 == wanted.module_sha256);
            let upcaster = match loaded {
                Some(loaded) => loaded.clone(),
                None => Arc::new(
                    self.load_upcaster(&wanted.name, 0, &wanted.module_sha256)
                        .await
                        .map_err(|e| anyhow::anyhow!("upcaster {}: {e:#}", wanted.name))?,
                ),
            };
            upcasters.push(upcaster);
        }
        Ok(Arc::new(Chain::new(upcasters)))
    }

    /// Deploys `bytes` as upcaster `name`; every projection it affects rebuilds, live.
    pub async fn deploy_upcaster(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<UpcasterChange, ProjectionError> {
        validate_name(name)?;
        let sha = super::module_sha256(&bytes);
        let mut registry = self.inner.registry.lock().await;
        let existing = registry.upcasters.get(name).cloned();
        if let Some(existing) = existing.as_ref().filter(|e| e.module_sha256 == sha) {
            let rebuilding = self
                .reconcile_upcasters(&mut registry, "the upcasters changed")
                .await;
            return Ok(UpcasterChange {
                deployed: Deployed::Unchanged,
                version: existing.version,
                rebuilding,
            });
        }
        let runtime = self.inner.runtime.clone();
        let layout = self.inner.layout.clone();
        let version = existing.as_ref().map_or(1, |e| e.version + 1);
        let (name_owned, sha_owned) = (name.to_owned(), sha.clone());
        let upcaster = tokio::task::spawn_blocking(move || {
            let module = runtime
                .load_upcaster(&name_owned, &bytes)
                .map_err(|e| match e {
                    ModuleError::TooLarge { .. } => ProjectionError::TooLarge(e.to_string()),
                    _ => ProjectionError::InvalidModule(e.to_string()),
                })?;
            registry::write_once(&layout.module(&sha_owned), &bytes).map_err(disk)?;
            Ok::<_, ProjectionError>(Upcaster::new(&name_owned, version, &sha_owned, module))
        })
        .await
        .map_err(internal)??;
        registry.upcasters.insert(
            name.to_owned(),
            UpcasterEntry {
                version,
                module_sha256: sha,
                takes: upcaster.takes().to_vec(),
                gives: upcaster.gives().to_vec(),
            },
        );
        if let Err(error) = registry.save(&self.inner.layout.registry()) {
            match existing {
                Some(existing) => registry.upcasters.insert(name.to_owned(), existing),
                None => registry.upcasters.remove(name),
            };
            return Err(disk(error));
        }
        self.replace_in_chain(name, Some(Arc::new(upcaster)));
        tracing::info!(upcaster = name, version, "upcaster deployed");
        let reason = format!("upcaster {name} version {version} was deployed");
        let rebuilding = self.reconcile_upcasters(&mut registry, &reason).await;
        Ok(UpcasterChange {
            deployed: if existing.is_some() {
                Deployed::Rebuilding
            } else {
                Deployed::Created
            },
            version,
            rebuilding,
        })
    }

    /// Deletes upcaster `name`; every projection it affected rebuilds, live.
    pub async fn delete_upcaster(&self, name: &str) -> Result<UpcasterChange, ProjectionError> {
        let mut registry = self.inner.registry.lock().await;
        let Some(removed) = registry.upcasters.remove(name) else {
            return Err(ProjectionError::UpcasterNotFound(name.to_owned()));
        };
        if let Err(error) = registry.save(&self.inner.layout.registry()) {
            registry.upcasters.insert(name.to_owned(), removed);
            return Err(disk(error));
        }
        self.replace_in_chain(name, None);
        tracing::info!(upcaster = name, "upcaster deleted");
        let reason = format!("upcaster {name} was deleted");
        let rebuilding = self.reconcile_upcasters(&mut registry, &reason).await;
        Ok(UpcasterChange {
            deployed: Deployed::Unchanged,
            version: 0,
            rebuilding,
        })
    }

    /// The current chain with `name` replaced by `upcaster` (or removed).
    fn replace_in_chain(&self, name: &str, upcaster: Option<Arc<Upcaster>>) {
        let mut chain = self.inner.chain.write();
        let upcasters = chain
            .upcasters()
            .iter()
            .filter(|u| u.name != name)
            .cloned()
            .chain(upcaster)
            .collect();
        *chain = Arc::new(Chain::new(upcasters));
    }

    /// Starts a rebuild of every projection whose newest generation passes its input through
    /// other upcasters than the current ones relevant to it; returns their names. Called with
    /// the registry held.
    pub(super) async fn reconcile_upcasters(
        &self,
        registry: &mut Registry,
        reason: &str,
    ) -> Vec<String> {
        let chain = self.upcasters();
        let stale: Vec<(String, Arc<super::Generation>)> = {
            let slots = self.inner.slots.read();
            slots
                .iter()
                .filter_map(|(name, slot)| {
                    let Serving::Loaded(current) = &slot.current else {
                        return None; // rebuilt with the current upcasters when it is fixed
                    };
                    let newest = slot.rebuild.as_ref().unwrap_or(current);
                    let wanted: Vec<(String, String)> =
                        chain.relevant_to(newest.module.subscription()).members();
                    let has: Vec<(String, String)> = newest
                        .entry
                        .upcasters
                        .iter()
                        .map(|u| (u.name.clone(), u.module_sha256.clone()))
                        .collect();
                    (wanted != has).then(|| (name.clone(), newest.clone()))
                })
                .collect()
        };
        let mut rebuilding = Vec::new();
        for (name, newest) in stale {
            let Some(entry) = registry.projections.get(&name).cloned() else {
                continue;
            };
            let started = self
                .begin_rebuild(
                    registry,
                    &name,
                    entry,
                    newest.entry.version,
                    newest.entry.module_sha256.clone(),
                    Some(newest.module.clone()),
                    reason.to_owned(),
                )
                .await;
            match started {
                Ok(()) => rebuilding.push(name),
                Err(error) => {
                    tracing::error!(projection = %name, %error, "could not start the rebuild the upcasters call for; it is tried again at the next upcaster change or restart")
                }
            }
        }
        rebuilding.sort();
        rebuilding
    }
}
