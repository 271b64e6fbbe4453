//! The run lock: an exclusive `flock` (fd-lock) on `global.lock_path` holding the
//! holder's PID. The kernel releases it when the holder exits or dies, so there is no
//! stale-lock cleanup, and the file itself is never deleted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Returned (inside `anyhow::Error`) when another process holds the lock.
#[derive(Debug)]
pub struct LockHeld {
    pub path: PathBuf,
    pub pid: Option<u32>,
}

impl std::fmt::Display for LockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = self
            .pid
            .map_or_else(|| "unknown".to_string(), |p| p.to_string());
        write!(
            f,
            "lock already held by pid {pid} ({}): another btrfs_to_s3 run is in progress; wait for it to finish",
            self.path.display()
        )
    }
}

impl std::error::Error for LockHeld {}

/// Held for as long as this value lives; dropping it closes the file and releases the lock.
pub struct RunLock {
    // The fd-lock guard is forgotten once taken: the flock lives as long as the open file.
    _file: fd_lock::RwLock<File>,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock without waiting, then writes our PID into the file.
    pub fn acquire(path: &Path) -> Result<RunLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the lock directory {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let mut lock = fd_lock::RwLock::new(file);
        match lock.try_write() {
            Ok(mut guard) => {
                write_pid(&mut guard)
                    .with_context(|| format!("writing our PID into {}", path.display()))?;
                std::mem::forget(guard);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(LockHeld {
                    path: path.to_path_buf(),
                    pid: read_pid(path),
                }
                .into());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(RunLock {
            _file: lock,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_pid(f: &mut File) -> std::io::Result<()> {
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    writeln!(f, "{}", std::process::id())?;
    f.sync_all()
}

/// The PID recorded in a lock file, if it holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("b2s3-lock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn acquire_writes_pid_and_creates_dirs() {
        let d = tmp("a");
        let p = d.join("sub/dir/b.lock");
        let l = RunLock::acquire(&p).unwrap();
        assert_eq!(l.path(), p.as_path());
        assert_eq!(read_pid(&p), Some(std::process::id()));
        // A second lock in the same process on a new open file description conflicts too.
        let e = RunLock::acquire(&p).err().unwrap();
        let held = e.downcast_ref::<LockHeld>().unwrap();
        assert_eq!(held.pid, Some(std::process::id()));
        assert!(e
            .to_string()
            .contains(&format!("lock already held by pid {}", std::process::id())));
        drop(l);
        // Released on drop, the file stays.
        let l2 = RunLock::acquire(&p).unwrap();
        assert!(p.exists());
        drop(l2);
        assert!(p.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_content_is_overwritten() {
        let d = tmp("b");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("b.lock");
        std::fs::write(&p, "999999999\nold junk that is longer\n").unwrap();
        let _l = RunLock::acquire(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_pid_message() {
        let e = LockHeld {
            path: "/x".into(),
            pid: None,
        };
        assert!(e.to_string().contains("lock already held by pid unknown"));
    }

    #[test]
    fn unopenable_path_is_an_error() {
        let d = tmp("c");
        std::fs::create_dir_all(&d).unwrap();
        // A directory where the lock file should be.
        let e = RunLock::acquire(&d).err().unwrap();
        assert!(format!("{e:#}").contains(&d.display().to_string()));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
