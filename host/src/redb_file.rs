//! How every redb file of the host is opened: redb's own file backend, behind a thin wrapper where
//! tests inject I/O errors below redb (fail points `redb-write` and `redb-sync`, for files whose
//! path contains `failpoint-redb`; without the `failpoints` feature the wrapper only forwards).

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{BackendError, Database, DatabaseError, StorageBackend};

/// Opens (or creates) the redb file at `path` with a page cache of `cache_bytes`.
pub fn create(path: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    Database::builder()
        .set_cache_size(cache_bytes)
        .create_with_backend(Backend::new(path, file)?)
}

/// redb's file backend; `faulty` marks the files where the fail points may fire.
#[derive(Debug)]
struct Backend {
    file: FileBackend,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    faulty: bool,
}

impl Backend {
    fn new(path: &Path, file: File) -> Result<Backend, DatabaseError> {
        Ok(Backend {
            file: FileBackend::new(file)?,
            faulty: path.to_string_lossy().contains("failpoint-redb"),
        })
    }
}

/// The error a failing disk gives (EIO).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        fail::fail_point!("redb-write", self.faulty, |_| Err(injected()));
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        fail::fail_point!("redb-sync", self.faulty, |_| Err(injected()));
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        fail::fail_point!("redb-write", self.faulty, |_| Err(injected()));
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
