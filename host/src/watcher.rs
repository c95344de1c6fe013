//! `lantern serve --watch DIR`: every `*.wasm` in DIR is deployed under its file stem at
//! start-up, and again (a live rebuild) whenever the file changes: `NAME.wasm` as the projection
//! NAME, `NAME.upcaster.wasm` as the upcaster NAME.
//!
//! A change is acted on only once the file has been quiet for [`QUIET`] and its size has stopped
//! moving, so a half-written file is not deployed; a file that still does not validate is
//! reported and left alone until its next change, and the running version keeps serving. Editors
//! that save by renaming a temporary file over the target are seen as a change of the target.
//! Removing a file deletes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::projection::{Deployed, ProjectionError, Projections};

/// How long a file must be left alone before it is deployed.
const QUIET: Duration = Duration::from_millis(250);
/// How often pending files are looked at.
const TICK: Duration = Duration::from_millis(50);

/// What a module file deploys: `NAME.wasm` the projection NAME, `NAME.upcaster.wasm` the
/// upcaster NAME (a projection name has no dot, so the two never mix).
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Projection(String),
    Upcaster(String),
}

fn target_of(path: &Path) -> Option<Target> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    Some(match stem.strip_suffix(".upcaster") {
        Some(name) => Target::Upcaster(name.to_owned()),
        None => Target::Projection(stem.to_owned()),
    })
}

fn name_of(path: &Path) -> Option<String> {
    target_of(path).map(|t| match t {
        Target::Projection(name) | Target::Upcaster(name) => name,
    })
}

/// Deploys one file; logs what happened.
async fn deploy_file(projections: &Projections, path: &Path) {
    let Some(target) = target_of(path) else {
        return;
    };
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read module");
            return;
        }
    };
    let (name, deployed) = match target {
        Target::Projection(name) => {
            let deployed = projections.deploy(&name, bytes).await;
            (name, deployed)
        }
        Target::Upcaster(name) => {
            let deployed = projections.deploy_upcaster(&name, bytes).await;
            if let Ok(change) = &deployed
                && !change.rebuilding.is_empty()
            {
                tracing::info!(upcaster = %name, rebuilding = ?change.rebuilding, "upcaster deployed; the projections it affects rebuild");
            }
            (name, deployed.map(|change| change.deployed))
        }
    };
    match deployed {
        Ok(Deployed::Created) => {
            tracing::info!(module = %name, file = %path.display(), "deployed")
        }
        Ok(Deployed::Rebuilding) => {
            tracing::info!(module = %name, file = %path.display(), "new version deployed")
        }
        Ok(Deployed::Unchanged) => tracing::debug!(module = %name, "unchanged"),
        Err(ProjectionError::InvalidModule(reason) | ProjectionError::TooLarge(reason)) => {
            tracing::error!(module = %name, file = %path.display(), %reason, "module refused; the running version stays");
        }
        Err(error) => {
            tracing::error!(module = %name, file = %path.display(), %error, "deploy failed")
        }
    }
}

/// Deploys what `dir` holds, then follows it until `shutdown`.
pub async fn watch(
    projections: Projections,
    dir: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::unbounded_channel::<notify::Event>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let _ = events_tx.send(event);
            }
            Err(error) => tracing::warn!(%error, "watching the modules folder"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut initial: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| name_of(path).is_some())
        .collect();
    initial.sort();
    for path in initial {
        deploy_file(&projections, &path).await;
    }
    tracing::info!(dir = %dir.display(), "watching for modules");
    // Files with recent changes: when they last changed and their size then.
    let mut pending: HashMap<PathBuf, (Instant, Option<u64>)> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            event = events.recv() => {
                let Some(event) = event else { return Ok(()) };
                if let EventKind::Remove(_) = event.kind {
                    for path in event.paths.iter().filter(|p| name_of(p).is_some()) {
                        if !path.exists() {
                            pending.remove(path);
                            tracing::info!(file = %path.display(), "module file removed; the projection and its data stay");
                        }
                    }
                    continue;
                }
                if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
                    for path in event.paths.into_iter().filter(|p| name_of(p).is_some()) {
                        pending.insert(path, (Instant::now(), None));
                    }
                }
            }
            _ = tick.tick() => {
                let mut ready = Vec::new();
                for (path, (changed, size)) in pending.iter_mut() {
                    if changed.elapsed() < QUIET {
                        continue;
                    }
                    let now = std::fs::metadata(path.as_path()).ok().map(|m| m.len());
                    if now.is_none() {
                        ready.push((path.clone(), false)); // gone again: forget it
                    } else if *size == now {
                        ready.push((path.clone(), true));
                    } else {
                        // Still growing, or first look: check again after another quiet period.
                        *size = now;
                        *changed = Instant::now();
                    }
                }
                for (path, deploy) in ready {
                    pending.remove(&path);
                    if deploy {
                        deploy_file(&projections, &path).await;
                    }
                }
            }
        }
    }
}
