//! Online backups: a tar archive of what a data folder needs, taken while the server serves. It
//! holds the log up to one committed position, the store's id, the snapshots of revisions up to
//! that position, the tokens, the audit trail, the projection registry and its modules; entries are paths relative to the data folder, so unpacking it into
//! an empty folder and serving that folder restores the store. The index and the read models are
//! derived: the restored server rebuilds them from the log.

use std::io::Write;

use crate::access::AccessControl;
use crate::projection::{BackupItem, Projections};
use crate::store::Store;

/// The projections' folder inside a data folder.
pub const PROJECTIONS_DIR: &str = "projections";

/// What a backup will hold, gathered at one moment; writing it may take longer.
pub struct Backup {
    /// The last log position it holds.
    pub position: u64,
    log: crate::store::LogSnapshot,
    files: Vec<(String, BackupItem)>,
}

impl Backup {
    /// Takes the backup's moment: the committed log, the tokens, the audit trail and the
    /// registry as they are now.
    pub async fn take(
        store: &Store,
        projections: &Projections,
        access: &AccessControl,
    ) -> anyhow::Result<Backup> {
        let log = store.log_snapshot()?;
        // Snapshots past the log's moment are left out: a restored store holds none of a
        // revision it does not have.
        let snapshots = {
            let (store, head) = (store.clone(), log.head);
            tokio::task::spawn_blocking(move || {
                let path = tempfile::NamedTempFile::new()?.into_temp_path();
                store.copy_snapshots_to(&path, head)?;
                anyhow::Ok(path)
            })
            .await??
        };
        let mut files = vec![
            (
                "store-id".to_owned(),
                BackupItem::Bytes(format!("{}\n", store.id()).into_bytes()),
            ),
            (
                "snapshots.redb".to_owned(),
                BackupItem::Temporary(snapshots),
            ),
            (
                "tokens.json".to_owned(),
                BackupItem::Bytes(access.tokens.stored_bytes()),
            ),
            (
                "audit.log".to_owned(),
                BackupItem::Bytes(access.audit.file_bytes()?),
            ),
        ];
        for (path, item) in projections.backup_files().await? {
            files.push((format!("{PROJECTIONS_DIR}/{path}"), item));
        }
        Ok(Backup {
            position: log.head,
            log,
            files,
        })
    }

    /// Writes the archive. Blocking.
    pub fn write(self, out: impl Write) -> anyhow::Result<()> {
        let mut archive = tar::Builder::new(out);
        let mut header = tar::Header::new_gnu();
        header.set_size(self.log.len);
        header.set_mode(0o644);
        header.set_mtime(now());
        archive.append_data(&mut header, "events.log", self.log)?;
        for (path, item) in self.files {
            match item {
                BackupItem::Bytes(bytes) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    header.set_mtime(now());
                    archive.append_data(&mut header, &path, bytes.as_slice())?;
                }
                BackupItem::File(file) => {
                    archive.append_path_with_name(&file, &path)?;
                }
                BackupItem::Temporary(file) => {
                    archive.append_path_with_name(&file, &path)?;
                }
            }
        }
        archive.finish()?;
        archive.into_inner()?.flush()?;
        Ok(())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
