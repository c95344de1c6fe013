//! What `GET /projections` and `GET /projections/{name}` show.

use super::registry::GenerationEntry;
use super::{Fault, Phase, ProjectionError, Projections, RebuildStatus, RunState, Slot, Status};
use crate::wasm::SubscriptionSpec;

impl Projections {
    /// The status of one projection.
    pub fn status(&self, name: &str) -> Result<Status, ProjectionError> {
        if let Some(slot) = self.inner.slots.read().expect("slots lock").get(name) {
            return Ok(self.slot_status(name, slot));
        }
        let broken = self.inner.broken.read().expect("broken lock");
        let (entry, fault) = broken
            .get(name)
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))?;
        Ok(self.broken_status(name, entry, fault))
    }

    /// Every projection's status, by name.
    pub fn list(&self) -> Vec<Status> {
        let slots = self.inner.slots.read().expect("slots lock");
        let broken = self.inner.broken.read().expect("broken lock");
        let mut statuses: Vec<Status> = slots
            .iter()
            .map(|(name, slot)| self.slot_status(name, slot))
            .chain(
                broken
                    .iter()
                    .map(|(name, (entry, fault))| self.broken_status(name, entry, fault)),
            )
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
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
            rebuild: None,
        }
    }

    fn slot_status(&self, name: &str, slot: &Slot) -> Status {
        let current = &slot.current;
        let rebuild = match &slot.rebuild {
            Some(rebuild) => Some(RebuildStatus {
                version: rebuild.entry.version,
                position: rebuild.read_model.checkpoint(),
                state: rebuild.run_state(),
            }),
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
            rebuild,
        }
    }
}
