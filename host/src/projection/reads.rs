//! Reads of a projection's read model: by key, by prefix, and through the module's queries,
//! each from one snapshot of the serving generation, after an optional read-your-writes wait.

use std::sync::Arc;
use std::time::Instant;

use super::runner::{BatchFailure, Generation};
use super::{MinPosition, ProjectionError, Projections, ReadKind, Serving, internal};
use crate::readmodel::Page;
use crate::wasm::QueryError;

fn storage(error: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Storage(error.to_string())
}

impl Projections {
    pub(super) fn current(&self, name: &str) -> Result<Arc<Generation>, ProjectionError> {
        let slots = self.inner.slots.read();
        let slot = slots
            .get(name)
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))?;
        match &slot.current {
            Serving::Loaded(generation) => Ok(generation.clone()),
            Serving::Unloadable { fault, .. } => Err(ProjectionError::Unavailable {
                name: name.to_owned(),
                reason: fault.message.clone(),
            }),
        }
    }

    /// The generation serving `name`, once its checkpoint satisfies `min`.
    async fn serving(
        &self,
        name: &str,
        min: Option<MinPosition>,
    ) -> Result<Arc<Generation>, ProjectionError> {
        let generation = self.current(name)?;
        if let Some(min) = min {
            let mut checkpoint = generation.read_model.watch_checkpoint();
            let reached = tokio::time::timeout(
                min.wait,
                checkpoint.wait_for(|position| *position >= min.position),
            )
            .await;
            if !matches!(reached, Ok(Ok(_))) {
                // A swap may have happened meanwhile: the new generation may be there already.
                let now = self.current(name)?;
                let position = now.read_model.checkpoint();
                if position < min.position {
                    return Err(ProjectionError::NotCaughtUp {
                        position,
                        wanted: min.position,
                    });
                }
                return Ok(now);
            }
        }
        Ok(generation)
    }

    /// The value under `key`, with the checkpoint it reflects.
    pub async fn get(
        &self,
        name: &str,
        key: &str,
        min: Option<MinPosition>,
    ) -> Result<(Vec<u8>, u64), ProjectionError> {
        let started = Instant::now();
        let generation = self.serving(name, min).await?;
        // On the request's own thread, not the blocking pool: one B-tree lookup, microseconds
        // when its pages are cached (redb's cache, then the OS's), where handing it to another
        // thread and back cost more than the read (point queries 62k -> 113k/s). Prefix pages and
        // module queries, which may read thousands of entries, stay on the blocking pool.
        let read = (|| {
            let snapshot = generation.read_model.snapshot().map_err(storage)?;
            match snapshot.value(key).map_err(storage)? {
                Some(value) => Ok((value, snapshot.position())),
                None => Err(ProjectionError::KeyNotFound(key.to_owned())),
            }
        })();
        generation.read_done(ReadKind::key, started.elapsed());
        read
    }

    /// A page of keys starting with `prefix`, after `after`.
    pub async fn page(
        &self,
        name: &str,
        prefix: &str,
        after: &str,
        limit: usize,
        min: Option<MinPosition>,
    ) -> Result<Page, ProjectionError> {
        let started = Instant::now();
        let generation = self.serving(name, min).await?;
        let reading = generation.clone();
        let (prefix, after) = (prefix.to_owned(), after.to_owned());
        let read = tokio::task::spawn_blocking(move || {
            let snapshot = reading.read_model.snapshot().map_err(storage)?;
            snapshot.page(&prefix, &after, limit).map_err(storage)
        })
        .await
        .map_err(internal)?;
        generation.read_done(ReadKind::prefix, started.elapsed());
        read
    }

    /// Runs the module's query handler; returns its JSON and the checkpoint it reflects.
    pub async fn query(
        &self,
        name: &str,
        query: &str,
        params_json: String,
        min: Option<MinPosition>,
    ) -> Result<(String, u64), ProjectionError> {
        let started = Instant::now();
        let generation = self.serving(name, min).await?;
        let reading = generation.clone();
        let query = query.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let (answer, position) =
                reading
                    .query(&query, &params_json)
                    .map_err(|failure| match failure {
                        BatchFailure::Module(message) => ProjectionError::QueryFailed(message),
                        BatchFailure::Storage(message) => ProjectionError::Storage(message),
                    })?;
            match answer {
                Ok(json) => Ok((json, position)),
                Err(QueryError::NotFound) => Err(ProjectionError::QueryNotFound(query)),
                Err(QueryError::Failed(message)) => Err(ProjectionError::QueryFailed(message)),
            }
        })
        .await
        .map_err(internal)?;
        generation.read_done(ReadKind::query, started.elapsed());
        read
    }
}
