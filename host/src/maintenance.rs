//! `lantern check` and `lantern repair`: offline tools for a stopped server's data folder.
//! Checking reads only and says what it found; repair cuts the log only as the operator asks,
//! after saying what it will discard.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::access::{Tokens, audit};
use crate::projection::check as projections_check;
use crate::store::check as store_check;

/// Checks the whole data folder; prints what it found; returns whether all is well.
pub fn check(data: &Path, out: &mut impl Write) -> anyhow::Result<bool> {
    anyhow::ensure!(
        data.join("events.log").exists(),
        "{} holds no store (no events.log)",
        data.display()
    );
    let mut healthy = true;
    let store = store_check::check(data).context("checking the log")?;
    writeln!(
        out,
        "log: {} events in {} appends over {} streams, {} bytes; {} index entries and {} snapshots checked against it",
        store.events,
        store.appends,
        store.streams,
        store.log_bytes,
        store.index_entries,
        store.snapshots
    )?;
    healthy &= report(out, "log", &store.problems, &store.notes)?;

    let projections = projections_check::check(&data.join("projections"), store.events);
    writeln!(out, "projections: {} registered", projections.projections)?;
    for model in &projections.read_models {
        writeln!(
            out,
            "  {} v{} ({}): read model at position {} of {}",
            model.projection,
            model.version,
            if model.serving {
                "serving"
            } else {
                "rebuilding"
            },
            model
                .checkpoint
                .map_or_else(|| "?".to_owned(), |c| c.to_string()),
            store.events
        )?;
    }
    healthy &= report(
        out,
        "projections",
        &projections.problems,
        &projections.notes,
    )?;

    match Tokens::open(&data.join("tokens.json")) {
        Ok(tokens) => writeln!(out, "tokens: {}", tokens.list().len())?,
        Err(error) => {
            healthy = false;
            writeln!(out, "tokens: PROBLEM: {error}")?;
        }
    }
    let (entries, unreadable) = audit::inspect(&data.join("audit.log"))?;
    writeln!(out, "audit trail: {} entries", entries.len())?;
    if unreadable > 0 {
        // Only a line torn by a crash, never acknowledged, can be unreadable without damage.
        writeln!(
            out,
            "  note: {unreadable} unreadable line(s) (a crash in the middle of writing one)"
        )?;
    }
    writeln!(
        out,
        "{}",
        if healthy {
            "all is well"
        } else {
            "PROBLEMS FOUND"
        }
    )?;
    Ok(healthy)
}

fn report(
    out: &mut impl Write,
    area: &str,
    problems: &[String],
    notes: &[String],
) -> std::io::Result<bool> {
    for note in notes {
        writeln!(out, "  {area}: note: {note}")?;
    }
    for problem in problems {
        writeln!(out, "  {area}: PROBLEM: {problem}")?;
    }
    Ok(problems.is_empty())
}

/// Discards the log from `position` on (rounded down to the start of its append), after saying
/// what goes; read models that reflect discarded events are deleted so that they are rebuilt.
/// Without `yes`, only says what it would do.
pub fn repair(data: &Path, position: u64, yes: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let plan = store_check::plan_truncation(data, position)?;
    writeln!(
        out,
        "cutting the log at position {} (byte {}): {} byte(s) are discarded, holding {} valid event(s) before any damage",
        plan.from_position, plan.offset, plan.bytes, plan.events
    )?;
    if let Some((count, first, last)) = plan.later_records {
        writeln!(
            out,
            "  and, past the damage, {count} more valid record(s) (positions {first} to {last}) that can no longer be kept"
        )?;
    }
    if plan.from_position != position {
        writeln!(
            out,
            "  (position {position} is inside an append that starts at {}: appends are kept or cut whole)",
            plan.from_position
        )?;
    }
    if !plan.streams.is_empty() {
        let shown: Vec<&str> = plan.streams.iter().take(20).map(String::as_str).collect();
        writeln!(
            out,
            "  streams that lose events: {}{}",
            shown.join(", "),
            if plan.streams.len() > 20 {
                format!(" and {} more", plan.streams.len() - 20)
            } else {
                String::new()
            }
        )?;
    }
    if !plan.snapshots.is_empty() {
        let shown: Vec<String> = plan
            .snapshots
            .iter()
            .take(20)
            .map(|(stream, revision)| format!("{stream}@{revision}"))
            .collect();
        writeln!(
            out,
            "  snapshots of discarded revisions, which go too: {}{}",
            shown.join(", "),
            if plan.snapshots.len() > 20 {
                format!(" and {} more", plan.snapshots.len() - 20)
            } else {
                String::new()
            }
        )?;
    }
    let keep = plan.from_position - 1;
    let projections = projections_check::check(&data.join("projections"), u64::MAX);
    let stale: Vec<_> = projections
        .read_models
        .iter()
        .filter(|m| m.checkpoint.is_none_or(|c| c > keep))
        .collect();
    for model in &stale {
        writeln!(
            out,
            "  read model of {} v{} reflects discarded events: it is deleted and rebuilt from position 1 at the next start",
            model.projection, model.version
        )?;
    }
    writeln!(
        out,
        "  the index is deleted and rebuilt from the log at the next start"
    )?;
    if !yes {
        writeln!(out, "nothing changed: run again with --yes to do it")?;
        return Ok(());
    }
    store_check::truncate(data, &plan)?;
    for model in &stale {
        match std::fs::remove_file(&model.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
    }
    writeln!(out, "done: the log ends at position {keep}")?;
    Ok(())
}
