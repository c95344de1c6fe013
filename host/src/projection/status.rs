//! What `GET /projections` and `GET /projections/{name}` show.

use super::registry::GenerationEntry;
use super::{
    Fault, Phase, ProjectionError, Projections, RebuildStatus, RunState, Serving, Slot, Status,
};
use crate::wasm::SubscriptionSpec;

impl Projections {
    /// The status of one projection.
    pub fn status(&self, name: &str) -> Result<Status, ProjectionError> {
        let slots = self.inner.slots.read();
        let slot = slots
            .get(name)
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))?;
        Ok(self.slot_status(name, slot))
    }

    /// Every projection's status, by name.
    pub fn list(&self) -> Vec<Status> {
        let slots = self.inner.slots.read();
        let mut statuses: Vec<Status> = slots
            .iter()
            .map(|(name, slot)| self.slot_status(name, slot))
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// For each projection with a loaded module, the largest linear memory an instance of its
    /// serving module has grown to.
    pub fn memory_high_water_bytes(&self) -> Vec<(String, u64)> {
        let slots = self.inner.slots.read();
        slots
            .iter()
            .filter_map(|(name, slot)| match &slot.current {
                Serving::Loaded(current) => {
                    Some((name.clone(), current.module.memory_high_water_bytes()))
                }
                Serving::Unloadable { .. } => None,
            })
            .collect()
    }

    fn broken_status(&self, name: &str, entry: &GenerationEntry, fault: &Fault) -> Status {
        Status {
            name: name.to_owned(),
            version: entry.version,
            module_sha256: entry.module_sha256.clone(),
            position: 0,
            head: self.inner.store.head(),
            state: RunState {
                phase: Phase::Faulted,
                fault: Some(fault.clone()),
                events_per_second: 0.0,
            },
            subscription: SubscriptionSpec::default(),
            upcasters: Vec::new(),
            rebuild: None,
        }
    }

    fn slot_status(&self, name: &str, slot: &Slot) -> Status {
        let current = match &slot.current {
            Serving::Loaded(current) => current,
            Serving::Unloadable { entry, fault } => return self.broken_status(name, entry, fault),
        };
        let rebuild = match &slot.rebuild {
            Some(rebuild) => {
                let mut state = rebuild.run_state();
                if state.fault.is_none() {
                    state.fault = slot.promotion_failure.clone();
                }
                Some(RebuildStatus {
                    version: rebuild.entry.version,
                    reason: rebuild.entry.reason.clone(),
                    position: rebuild.read_model.checkpoint(),
                    state,
                })
            }
            None => slot.failed_rebuild.clone(),
        };
        Status {
            name: name.to_owned(),
            version: current.entry.version,
            module_sha256: current.entry.module_sha256.clone(),
            position: current.read_model.checkpoint(),
            head: self.inner.store.head(),
            state: current.run_state(),
            subscription: current.module.subscription().clone(),
            upcasters: current
                .entry
                .upcasters
                .iter()
                .map(|u| u.name.clone())
                .collect(),
            rebuild,
        }
    }
}
