//! The run lock: an exclusive `flock` (fd-lock) on `global.lock_path` holding the
//! holder's PID. The kernel releases it when the holder exits or dies, so there is no
//! stale-lock cleanup, and the file itself is never deleted.
//!
//! The lock directory may be world-writable (`/var/lock`), so the file is opened without
//! following a symlink and refused unless it is a regular file with one link, owned by
//! the user we run as: nobody else can plant it, hold it and stop the backups, or point
//! our PID write at another file. The PID is written over the old content and the file
//! then cut to length (never truncated first), so a reader sees a whole PID.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a run that lost the race waits for the winner's PID to appear.
const PID_WAIT: Duration = Duration::from_secs(2);

/// Another process holds the lock ([`LockError::Held`]).
#[derive(Debug)]
pub struct LockHeld {
    /// The lock file.
    pub path: PathBuf,
    /// The holder's PID, when it wrote one.
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

/// Why the lock was not taken: another run holds it (that run goes on; this one did not
/// start), or the lock file could not be used.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it.
    Held(LockHeld),
    /// The lock file could not be opened, checked, locked or written.
    Failed(anyhow::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held(h) => std::fmt::Display::fmt(h, f),
            LockError::Failed(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

impl From<anyhow::Error> for LockError {
    fn from(e: anyhow::Error) -> Self {
        LockError::Failed(e)
    }
}

/// Held for as long as this value lives; dropping it closes the file and releases the lock.
pub struct RunLock {
    // The fd-lock guard is forgotten once taken: the flock lives as long as the open file.
    _file: fd_lock::RwLock<File>,
    #[cfg(test)]
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock without waiting, then writes our PID into the file.
    pub fn acquire(path: &Path) -> Result<RunLock, LockError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the lock directory {}", dir.display()))?;
        }
        let file = open_no_follow(path)?;
        check_ours(path, &file)?;
        let mut lock = fd_lock::RwLock::new(file);
        match lock.try_write() {
            Ok(guard) => {
                write_pid(&guard)
                    .with_context(|| format!("writing our PID into {}", path.display()))?;
                std::mem::forget(guard);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(LockError::Held(LockHeld {
                    path: path.to_path_buf(),
                    pid: wait_for_pid(path),
                }));
            }
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("locking {}", path.display()))
                    .into());
            }
        }
        Ok(RunLock {
            _file: lock,
            #[cfg(test)]
            path: path.to_path_buf(),
        })
    }

    /// The lock file held.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The fix for a lock file someone else controls.
fn fix(path: &Path) -> String {
    format!(
        "remove {} (as root), or set global.lock_path to a path in a directory only root can \
         write, e.g. /run/btrfs_to_s3.lock",
        path.display()
    )
}

/// Opens (or creates, mode 0644) the lock file without following a symlink.
fn open_no_follow(path: &Path) -> Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => bail!(
            "lock file {} is a symbolic link; refusing to follow it: {}",
            path.display(),
            fix(path)
        ),
        // fs.protected_regular refuses root an O_CREAT open of another user's file in a
        // sticky directory: say whose it is.
        Err(e) => match std::fs::symlink_metadata(path) {
            Ok(m) if m.uid() != euid() => bail!(
                "lock file {} is owned by {}, not by us ({}): {}",
                path.display(),
                user_name(m.uid()),
                user_name(euid()),
                fix(path)
            ),
            _ => Err(e).with_context(|| format!("opening lock file {}", path.display())),
        },
    }
}

/// Refuses a lock file that is not a regular file with one link owned by us.
fn check_ours(path: &Path, file: &File) -> Result<()> {
    let m = file
        .metadata()
        .with_context(|| format!("reading the metadata of lock file {}", path.display()))?;
    if !m.file_type().is_file() {
        bail!(
            "lock file {} is not a regular file: {}",
            path.display(),
            fix(path)
        );
    }
    if m.uid() != euid() {
        bail!(
            "lock file {} is owned by {}, not by us ({}): another user could hold it and stop \
             every backup; {}",
            path.display(),
            user_name(m.uid()),
            user_name(euid()),
            fix(path)
        );
    }
    if m.nlink() != 1 {
        bail!(
            "lock file {} has {} hard links (it may be another file's name): {}",
            path.display(),
            m.nlink(),
            fix(path)
        );
    }
    Ok(())
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `uid 1000 (alice)`, the name from /etc/passwd when it has one.
fn user_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
        t.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_string())
        })
    });
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// Writes `PID\n` over the start of the file, then cuts the file to that length: at no
/// moment is the file empty or holding a partial PID followed by nothing.
fn write_pid(f: &File) -> std::io::Result<()> {
    let text = format!("{}\n", std::process::id());
    f.write_all_at(text.as_bytes(), 0)?;
    f.set_len(text.len() as u64)?;
    f.sync_all()
}

/// The PID recorded in a lock file, if it holds one (its first line).
pub fn read_pid(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.lines().next()?.trim().parse().ok()
}

/// The holder's PID: a run that lost a race may look before the winner has written it.
fn wait_for_pid(path: &Path) -> Option<u32> {
    let deadline = Instant::now() + PID_WAIT;
    loop {
        if let Some(p) = read_pid(path) {
            return Some(p);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
        let LockError::Held(held) = &e else {
            panic!("not LockHeld: {e}")
        };
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
    fn planted_lock_files_are_refused() {
        let d = tmp("planted");
        std::fs::create_dir_all(&d).unwrap();
        // A symlink to a file of the attacker's choosing: not followed, victim untouched.
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = d.join("link.lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = format!("{:#}", RunLock::acquire(&link).err().unwrap());
        assert!(
            e.contains("symbolic link") && e.contains("global.lock_path"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A second name of another file.
        let hard = d.join("hard.lock");
        std::fs::hard_link(&victim, &hard).unwrap();
        let e = format!("{:#}", RunLock::acquire(&hard).err().unwrap());
        assert!(e.contains("2 hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A FIFO is not a regular file.
        let fifo = d.join("fifo.lock");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let e = format!("{:#}", RunLock::acquire(&fifo).err().unwrap());
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn read_pid_takes_the_first_line() {
        let d = tmp("first-line");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("l");
        std::fs::write(&p, "123\n4567\n").unwrap();
        assert_eq!(read_pid(&p), Some(123));
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_pid(&p), None);
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
