//! Exclusive locks that keep two processes off one store: one `ferry serve` per data
//! directory, one agent (or one-off cycle) per device database.
//!
//! A lock is an OS file lock (`flock`) on a small file beside what it guards, which also
//! holds who took it (process id, what it is doing, since when), so the second process can
//! name the first. The OS lets go of the lock when its holder exits, however it exits: a
//! killed process leaves the file behind but never a stale lock. SQLite's own locks are of a
//! different kind and are not affected.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A held lock; dropping it lets go.
#[derive(Debug)]
pub(crate) struct Held {
    file: File,
}

impl Held {
    /// Says again what the holder is doing, once it knows more (the address it listens on).
    pub(crate) fn doing(&mut self, doing: &str) {
        note(&mut self.file, doing);
    }
}

/// Writes who holds the lock into its file. A courtesy to the next process: the lock itself
/// is what counts, so a failure to write is not an error.
fn note(file: &mut File, doing: &str) {
    let note = format!(
        "{doing} (process {}, since {})\n",
        std::process::id(),
        ferry_core::time::now()
    );
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(note.as_bytes()));
}

/// The lock file of a `ferry serve` data directory.
pub(crate) fn of_data_dir(dir: &Path) -> PathBuf {
    dir.join("serve.lock")
}

/// The lock file of a device database: beside it, as SQLite's `-wal` and `-shm` are.
pub(crate) fn of_device_db(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-ferry.lock");
    PathBuf::from(name)
}

/// Takes the lock at `path` for `doing` (for example "ferry serve on http://127.0.0.1:7300"),
/// or says who holds it. The directory the file goes in must exist.
pub(crate) fn take(path: &Path, doing: &str) -> Result<Held, Busy> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| Busy::Unusable {
            path: path.to_owned(),
            error,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Busy::Held {
                path: path.to_owned(),
                holder: holder.trim().to_owned(),
            });
        }
        Err(TryLockError::Error(error)) => {
            return Err(Busy::Unusable {
                path: path.to_owned(),
                error,
            });
        }
    }
    note(&mut file, doing);
    Ok(Held { file })
}

/// [`take`], with a held lock said as `say` puts it, given who holds it.
pub(crate) fn take_or_say(
    path: &Path,
    doing: &str,
    say: impl FnOnce(&str) -> String,
) -> anyhow::Result<Held> {
    take(path, doing).map_err(|busy| match busy {
        Busy::Held { holder, .. } => anyhow::anyhow!(say(describe(&holder))),
        unusable => anyhow::Error::new(unusable),
    })
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Busy {
    #[error("{} is held by {}", path.display(), describe(holder))]
    Held { path: PathBuf, holder: String },
    #[error("cannot use the lock file {}: {error}", path.display())]
    Unusable {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The holder as its note names it.
fn describe(holder: &str) -> &str {
    if holder.is_empty() {
        "another process"
    } else {
        holder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_learns_who_holds_the_lock_until_it_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.lock");
        let held = take(&path, "ferry serve on http://127.0.0.1:7300").unwrap();
        let Err(Busy::Held { holder: named, .. }) = take(&path, "another") else {
            panic!("the lock was taken twice");
        };
        assert!(
            named.starts_with("ferry serve on http://127.0.0.1:7300 (process "),
            "{named}"
        );
        drop(held);
        let again = take(&path, "a later serve").unwrap();
        drop(again);
    }

    #[test]
    fn a_device_database_s_lock_sits_beside_it() {
        assert_eq!(
            of_device_db(Path::new("/srv/pos/app.sqlite")),
            Path::new("/srv/pos/app.sqlite-ferry.lock")
        );
    }
}
