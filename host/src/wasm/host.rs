//! The host side of the `lantern:projection/host` interface: read-model reads and the log.

use std::time::Instant;

use super::GuestState;
use super::bindings::lantern::projection::{host, types};

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
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.view.as_ref().and_then(|view| view.get(&key))
    }

    fn scan(&mut self, prefix: String, after: String, limit: u32) -> Vec<(String, Vec<u8>)> {
        match &self.view {
            Some(view) => view.scan(&prefix, &after, limit.min(10_000) as usize),
            None => Vec::new(),
        }
    }

    fn log(&mut self, level: types::Level, message: String) {
        let budget = &mut self.log_budget;
        if budget.window_start.elapsed().as_secs() >= 1 {
            if budget.dropped > 0 {
                tracing::warn!(projection = %self.name, dropped = budget.dropped, "projection log lines dropped (rate limit)");
            }
            *budget = LogBudget::default();
        }
        if budget.used >= LOG_LINES_PER_SECOND {
            budget.dropped += 1;
            return;
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
    }
}
