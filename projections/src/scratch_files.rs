//! SQLite scratch files' owners. A rebuild or verification on SQLite builds into a file beside
//! the read models' (`<views>.rebuild-<tag>`, with its `-wal` and `-shm`); a process killed
//! before its end leaves it, as large as the read models. Each owner holds an OS lock on
//! `<views>.rebuild-<tag>.lock` (a file of its own: SQLite's locks on its database files are
//! untouched) while its scratch exists, and the lock goes with the process. Each new scratch
//! first removes the files of every scratch whose lock is free: PostgreSQL's scratch schemas
//! are swept the same way, by advisory locks (`rebuild::sweep`).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use ticketd_commands::StoreError;

/// Characters of a scratch's tag: a UUID's simple form.
const TAG_LEN: usize = 32;

/// What follows a scratch file's tag in the names it owns.
const SUFFIXES: [&str; 5] = ["", "-wal", "-shm", "-journal", ".lock"];

/// `path` with `suffix` appended to its last component.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Whether `file` is the file `path` names now: a sweep removes a lock file it holds, so one
/// opened before that and locked after is no longer anyone's lock.
fn names(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

fn open_lock(scratch: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(with_suffix(scratch, ".lock"))
}

/// Takes the owner lock of the scratch file `scratch` (a new tag's: nobody else holds it but,
/// for a moment, a sweep), keeping the returned file open for as long as the scratch exists.
pub(crate) fn own(scratch: &Path) -> Result<File, StoreError> {
    let lock = with_suffix(scratch, ".lock");
    let failed =
        |e: io::Error| StoreError::Unavailable(format!("the owner lock {}: {e}", lock.display()));
    for _ in 0..10 {
        let file = open_lock(scratch).map_err(failed)?;
        file.lock().map_err(failed)?;
        if names(&file, &lock) {
            return Ok(file);
        }
    }
    Err(StoreError::Unavailable(format!(
        "the owner lock {} kept being removed",
        lock.display()
    )))
}

/// Removes `scratch`'s files, its lock file last, while `lock` (its owner lock) is held.
pub(crate) fn remove(scratch: &Path, lock: File) {
    for suffix in SUFFIXES {
        match std::fs::remove_file(with_suffix(scratch, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %scratch.display(), suffix, error = %e, "a scratch file stays");
            }
        }
    }
    drop(lock);
}

/// [`remove`] on a thread of its own: the files may be as large as the read models.
pub(crate) async fn remove_off_runtime(scratch: PathBuf, lock: File) {
    let shown = scratch.display().to_string();
    if let Err(e) = tokio::task::spawn_blocking(move || remove(&scratch, lock)).await {
        tracing::warn!(file = %shown, error = %e, "a scratch's files stay");
    }
}

/// Removes the scratch files beside `views` (the read models' file) whose owner is gone: their
/// lock is free, or they have no lock file (a scratch of a `ticketd` before these locks), but
/// for the tag `mine`. Best effort: what it cannot remove stays for the next one.
pub(crate) fn sweep(views: &Path, mine: &str) {
    let (Some(dir), Some(name)) = (views.parent(), views.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let prefix = format!("{name}.rebuild-");
    let entries = match std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "scratch files not swept");
            return;
        }
    };
    let mut tags = BTreeSet::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(tag) = rest
            .get(..TAG_LEN)
            .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        if tag != mine && SUFFIXES.contains(&&rest[TAG_LEN..]) {
            tags.insert(tag.to_owned());
        }
    }
    for tag in tags {
        let scratch = views.with_file_name(format!("{prefix}{tag}"));
        let lock = match open_lock(&scratch) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(file = %scratch.display(), error = %e, "a scratch not swept");
                continue;
            }
        };
        match lock.try_lock() {
            Ok(()) if names(&lock, &with_suffix(&scratch, ".lock")) => {
                remove(&scratch, lock);
                tracing::info!(file = %scratch.display(), "removed a killed rebuild's scratch");
            }
            // Another sweep removed it meanwhile.
            Ok(()) => {}
            // Running.
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                tracing::warn!(file = %scratch.display(), error = %e, "a scratch not swept");
            }
        }
    }
}
