//! Opening the store's file: its directory (created 0700: the store holds every retained
//! message and publish), redb's open with a bounded page cache, and why an open failed
//! ([`OpenError`]: another process holds the file, the place cannot be written, or the file is
//! no usable database).

use std::path::{Path, PathBuf};

use redb::Database;

use super::StoreError;

/// Why [`Store::open`] failed; every message names the file and `store.path`, the key that
/// moves it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the database open: redb locks the file (flock(2)) while it is open.
    #[error(
        "store {}: another ws-sidecar{} holds this store; stop it, or give this daemon its own \
         store.path",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        path: PathBuf,
        /// The holder, when this process may see it in /proc.
        pid: Option<u32>,
    },
    /// The file or its directory cannot be created or opened (permissions, a read-only file
    /// system, a missing parent).
    #[error("{0}; set store.path to move it")]
    Place(StoreError),
    /// The file is there but is no usable database, or the first write failed.
    #[error(transparent)]
    Other(#[from] StoreError),
}

/// Creates the file's directory (0700) and opens or creates the database, classifying a
/// failure: a file another process holds, a place that cannot be written, anything else.
pub(super) fn database(path: &Path) -> Result<Database, OpenError> {
    let err = |msg: String| StoreError {
        path: path.to_path_buf(),
        msg,
        full: false,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // 0700: the store holds every retained message and publish.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| {
                OpenError::Place(err(format!(
                    "cannot create directory {}: {e}",
                    dir.display()
                )))
            })?;
    }
    let db = open_db(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Held {
            path: path.to_path_buf(),
            pid: holder_of(path),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            OpenError::Place(err(format!("cannot open database: {io}")))
        }
        e => OpenError::Other(err(format!("cannot open database: {e}"))),
    })?;
    Ok(db)
}

/// Memory redb may use to cache pages. Its default (1 GiB) lets the cache grow with the file,
/// which holds a copy of what the outbox and replay window already keep in memory: a full
/// default outbox would cost its size twice. Pages are only read back at start-up; writes need
/// the upper levels of each tree, which this holds many times over.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The pid of another process with `path` open, found through /proc/PID/fd; `None` when none
/// is visible (another user's process without privileges, `ProtectProc=invisible`).
fn holder_of(path: &Path) -> Option<u32> {
    let target = std::fs::canonicalize(path).ok()?;
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        })
}

pub(super) fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}
