//! Offline checks of the projections folder (`lantern check`): the registry against the module
//! files, and each read model's checkpoint against the log's head. Reads only.

use std::path::Path;

use super::module_sha256;
use super::registry::{GenerationEntry, Layout, Registry};
use crate::readmodel;

/// One read model file and its checkpoint.
#[derive(Debug)]
pub struct ReadModelFile {
    /// The projection.
    pub projection: String,
    /// Its version.
    pub version: u64,
    /// Whether it serves (else it is a rebuild).
    pub serving: bool,
    /// The file.
    pub path: std::path::PathBuf,
    /// Its checkpoint, if it could be read.
    pub checkpoint: Option<u64>,
}

/// What checking the projections found.
#[derive(Debug, Default)]
pub struct ProjectionsCheck {
    /// Registered projections.
    pub projections: usize,
    /// Every registered generation's read model.
    pub read_models: Vec<ReadModelFile>,
    /// Things that are wrong.
    pub problems: Vec<String>,
    /// Things worth knowing.
    pub notes: Vec<String>,
}

/// Checks `dir` (the `projections` folder) against a log whose head is `head`.
pub fn check(dir: &Path, head: u64) -> ProjectionsCheck {
    let layout = Layout {
        root: dir.to_owned(),
    };
    let mut report = ProjectionsCheck::default();
    let registry = match Registry::load(&layout.registry()) {
        Ok(registry) => registry,
        Err(error) => {
            report
                .problems
                .push(format!("registry.json cannot be read: {error}"));
            return report;
        }
    };
    report.projections = registry.projections.len();
    for (name, entry) in &registry.projections {
        let generations = std::iter::once((&entry.current, true))
            .chain(entry.rebuild.as_ref().map(|r| (r, false)));
        for (generation, serving) in generations {
            check_generation(&layout, name, generation, serving, head, &mut report);
            for upcaster in &generation.upcasters {
                let what = format!(
                    "{name} v{}'s upcaster {}",
                    generation.version, upcaster.name
                );
                check_module(&layout, &what, &upcaster.module_sha256, &mut report);
            }
        }
    }
    for (name, upcaster) in &registry.upcasters {
        let what = format!("upcaster {name} v{}", upcaster.version);
        check_module(&layout, &what, &upcaster.module_sha256, &mut report);
    }
    report
}

/// A module file must be there and have the hash it is named by.
fn check_module(layout: &Layout, what: &str, sha256: &str, report: &mut ProjectionsCheck) {
    let module = layout.module(sha256);
    match std::fs::read(&module) {
        Ok(bytes) if module_sha256(&bytes) == sha256 => {}
        Ok(_) => report.problems.push(format!(
            "{what}: the module file {} does not have the hash it is named by",
            module.display()
        )),
        Err(error) => report.problems.push(format!(
            "{what}: its module {} cannot be read ({error}); deploy it again",
            module.display()
        )),
    }
}

fn check_generation(
    layout: &Layout,
    name: &str,
    generation: &GenerationEntry,
    serving: bool,
    head: u64,
    report: &mut ProjectionsCheck,
) {
    let what = format!("{name} v{}", generation.version);
    check_module(layout, &what, &generation.module_sha256, report);
    let path = layout.read_model(name, generation.generation);
    let checkpoint = if path.exists() {
        match readmodel::read_checkpoint(&path) {
            Ok(checkpoint) => {
                if checkpoint > head {
                    report.problems.push(format!(
                        "{name} v{}: its read model is at position {checkpoint}, past the log's head {head}: it reflects events the log does not have",
                        generation.version
                    ));
                }
                Some(checkpoint)
            }
            Err(error) => {
                report.problems.push(format!(
                    "{name} v{}: its read model {} cannot be read ({error})",
                    generation.version,
                    path.display()
                ));
                None
            }
        }
    } else {
        report.notes.push(format!(
            "{name} v{}: no read model file yet; it is built from position 1 at the next start",
            generation.version
        ));
        None
    };
    report.read_models.push(ReadModelFile {
        projection: name.to_owned(),
        version: generation.version,
        serving,
        path,
        checkpoint,
    });
}
