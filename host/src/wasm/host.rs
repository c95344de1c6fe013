//! The host side of the `lantern:projection/host` interface: read-model reads and the log.

use std::time::Instant;

use super::bindings::lantern::projection::{host, types};
use super::{GuestState, StorageFailure};

/// Most log lines a projection may write per second; the rest are counted and dropped.
const LOG_LINES_PER_SECOND: u32 = 100;

/// A token bucket for one instance's log lines.
pub(crate) struct LogBudget {
    window_start: Instant,
    used: u32,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            window_start: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }
}

impl types::Host for GuestState {}

impl host::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        match &self.view {
            Some(view) => view
                .get(&key)
                .map_err(|e| wasmtime::Error::new(StorageFailure(e))),
            None => Ok(None),
        }
    }

    fn scan(
        &mut self,
        prefix: String,
        after: String,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        match &self.view {
            Some(view) => view
                .scan(&prefix, &after, limit.min(10_000) as usize)
                .map_err(|e| wasmtime::Error::new(StorageFailure(e))),
            None => Ok(Vec::new()),
        }
    }

    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let budget = &mut self.log_budget;
        if budget.window_start.elapsed().as_secs() >= 1 {
            if budget.dropped > 0 {
                tracing::warn!(projection = %self.name, dropped = budget.dropped, "projection log lines dropped (rate limit)");
            }
            *budget = LogBudget::default();
        }
        if budget.used >= LOG_LINES_PER_SECOND {
            budget.dropped += 1;
            return Ok(());
        }
        budget.used += 1;
        let name = &*self.name;
        let message: String = message.chars().take(4096).collect();
        match level {
            types::Level::Trace => tracing::trace!(projection = name, "{message}"),
            types::Level::Debug => tracing::debug!(projection = name, "{message}"),
            types::Level::Info => tracing::info!(projection = name, "{message}"),
            types::Level::Warn => tracing::warn!(projection = name, "{message}"),
            types::Level::Error => tracing::error!(projection = name, "{message}"),
        }
        Ok(())
    }
}
