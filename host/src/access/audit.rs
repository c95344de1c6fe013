//! The audit trail: one JSON line per admin action in `audit.log`, appended and fsync'd before the
//! action is answered. A torn last line (a crash mid-write) is skipped when read.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One recorded admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Numbers the entries from 1, in the order they were recorded.
    pub seq: u64,
    /// When (RFC 3339).
    pub at: String,
    /// The token's name (`(open mode)` for a loopback client of a server without tokens).
    pub actor: String,
    /// What was done: `deploy`, `delete`, `rebuild`, `token_create`, `token_revoke`, ...
    pub action: String,
    /// What it was done to: a projection's or a token's name.
    pub target: String,
    /// The module's SHA-256, for actions that take or start one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_sha256: Option<String>,
    /// The HTTP status the action was answered with.
    pub status: u16,
}

/// The answer to `GET /audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// The entries, oldest first.
    pub entries: Vec<AuditEntry>,
    /// The `after` of the next page, `null` at the end.
    pub next: Option<u64>,
}

/// What an action hands to [`Audit::record`]; the trail adds the number and the time.
#[derive(Debug, Clone)]
pub struct Action {
    /// See [`AuditEntry::actor`].
    pub actor: String,
    /// See [`AuditEntry::action`].
    pub action: &'static str,
    /// See [`AuditEntry::target`].
    pub target: String,
    /// See [`AuditEntry::module_sha256`].
    pub module_sha256: Option<String>,
    /// See [`AuditEntry::status`].
    pub status: u16,
}

struct Writer {
    file: Option<File>,
    next_seq: u64,
}

/// The audit trail of one store.
pub struct Audit {
    path: Option<PathBuf>,
    writer: Mutex<Writer>,
    /// Entries of an in-memory trail.
    memory: Mutex<Vec<AuditEntry>>,
}

impl Audit {
    /// Opens (or creates) the trail in `path`.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        if !existed {
            crate::durable::sync_parent(path)?;
        }
        // A line torn by a crash: end it, so the next entry starts on a line of its own.
        if ends_torn(&mut file)? {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        let next_seq = read_entries(path)?.last().map_or(1, |e| e.seq + 1);
        Ok(Audit {
            path: Some(path.to_owned()),
            writer: Mutex::new(Writer {
                file: Some(file),
                next_seq,
            }),
            memory: Mutex::new(Vec::new()),
        })
    }

    /// A trail kept in memory only (benchmarks and tests that do not restart).
    pub fn in_memory() -> Audit {
        Audit {
            path: None,
            writer: Mutex::new(Writer {
                file: None,
                next_seq: 1,
            }),
            memory: Mutex::new(Vec::new()),
        }
    }

    /// Appends an entry and makes it durable. Blocking: call it off the async runtime.
    pub fn record(&self, action: Action) -> std::io::Result<AuditEntry> {
        let mut writer = self.writer.lock();
        let entry = AuditEntry {
            seq: writer.next_seq,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            actor: action.actor,
            action: action.action.to_owned(),
            target: action.target,
            module_sha256: action.module_sha256,
            status: action.status,
        };
        match writer.file.as_mut() {
            Some(file) => {
                let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
                line.push(b'\n');
                file.write_all(&line)?;
                file.sync_data()?;
            }
            None => self.memory.lock().push(entry.clone()),
        }
        writer.next_seq += 1;
        Ok(entry)
    }

    /// The trail's file as it is now (whole lines only: taken under the writer's lock), for a
    /// backup.
    pub fn file_bytes(&self) -> std::io::Result<Vec<u8>> {
        let _writer = self.writer.lock();
        match &self.path {
            Some(path) => std::fs::read(path),
            None => {
                let mut out = Vec::new();
                for entry in self.memory.lock().iter() {
                    out.extend(serde_json::to_vec(entry).map_err(std::io::Error::other)?);
                    out.push(b'\n');
                }
                Ok(out)
            }
        }
    }

    /// Entries with `seq` greater than `after`, oldest first, at most `limit`.
    pub fn read(&self, after: u64, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        let entries = match &self.path {
            Some(path) => read_entries(path)?,
            None => self.memory.lock().clone(),
        };
        Ok(entries
            .into_iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .collect())
    }
}

/// Reads a trail without changing it: its entries and how many lines did not parse.
pub fn inspect(path: &Path) -> std::io::Result<(Vec<AuditEntry>, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(error) => return Err(error),
    };
    let mut entries = Vec::new();
    let mut unreadable = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        match serde_json::from_str::<AuditEntry>(line) {
            Ok(entry) => entries.push(entry),
            Err(_) => unreadable += 1,
        }
    }
    Ok((entries, unreadable))
}

fn ends_torn(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let length = file.seek(SeekFrom::End(0))?;
    if length == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn read_entries(path: &Path) -> std::io::Result<Vec<AuditEntry>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut entries = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        // A line torn by a crash does not parse; it was never acknowledged.
        if let Ok(entry) = serde_json::from_str::<AuditEntry>(&line) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(target: &str) -> Action {
        Action {
            actor: "ops".into(),
            action: "deploy",
            target: target.into(),
            module_sha256: Some("ab".repeat(32)),
            status: 201,
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(&path).unwrap();
        audit.record(action("a")).unwrap();
        audit.record(action("b")).unwrap();
        drop(audit);
        // A crash in the middle of a third line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"at\":\"20").unwrap();
        let audit = Audit::open(&path).unwrap();
        let entries = audit.read(0, 100).unwrap();
        let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["a", "b"]);
        assert_eq!(audit.read(1, 100).unwrap().len(), 1);
        let third = audit.record(action("c")).unwrap();
        assert_eq!(third.seq, 3);
        let entries = Audit::open(&path).unwrap().read(0, 100).unwrap();
        let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(
            targets,
            ["a", "b", "c"],
            "the entry after a torn line is kept"
        );
    }
}
