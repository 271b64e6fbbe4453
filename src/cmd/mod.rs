//! The commands, each a function of the same shape over the repository layer (`repo`):
//! resolve flags over config, start a [`Session`] (signals, retry policy, the lock), run
//! the engine (`backup`, `restore`, `check`) or the query (`repo::catalog`,
//! `repo::prune`), report. Not all thin yet: `backup.rs` also records state, drops the
//! journal, runs retention and prune-after-backup and does `--dry-run`; `prune.rs` and
//! `list.rs` format their reports. Exit codes are the leaf `exit`'s.

pub mod backup;
pub mod list;
pub mod prune;
pub mod restore;
pub mod status;
pub mod verify;

use std::sync::Arc;

use anyhow::Result;

use crate::config::Config;
use crate::exit::{Failure, UsageError};
use crate::lock::{LockError, RunLock};
use crate::retry::{Policy, Retrier};

/// `--subvolume` names of `list`, `verify` and `prune`, checked to be plain names (they
/// name keys); none given means the configured subvolumes when `default` has a config
/// (an empty list otherwise: `list` then shows every subvolume under the prefix).
pub fn subvolume_names(
    names: &[String],
    default: Option<&Config>,
) -> Result<Vec<String>, UsageError> {
    if let (true, Some(c)) = (names.is_empty(), default) {
        return Ok(c.subvolumes.iter().map(|s| s.name.clone()).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if let Some(why) = crate::manifest::subvolume_name_problem(n) {
            return Err(UsageError(format!(
                "--subvolume {n:?} {why}: give the subvolume's name (the last component of its path)"
            )));
        }
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    Ok(out)
}

/// Fails unless we run as root: snapshots, `btrfs send` and `btrfs receive` need
/// CAP_SYS_ADMIN, and the error would otherwise be a permission error deep inside.
pub fn require_root(command: &str) -> Result<()> {
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        anyhow::bail!(
            "btrfs_to_s3 {command} must run as root (btrfs snapshot, send and receive need \
             CAP_SYS_ADMIN); you are uid {}: run it with sudo, or from the systemd unit",
            uid.as_raw()
        );
    }
    Ok(())
}

/// The retry policy: the default, except that the test suite may shorten its base delay
/// with `BTRFS_TO_S3_RETRY_BASE_MS` (0 to 1000) so that it does not sleep for real; the
/// number of attempts never changes.
fn policy() -> Policy {
    let mut p = Policy::default();
    if let Some(ms) = std::env::var("BTRFS_TO_S3_RETRY_BASE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms <= 1000)
    {
        p.base = std::time::Duration::from_millis(ms);
        p.cap = p.cap.min(std::time::Duration::from_millis(ms * 30));
    }
    p
}

/// What every command runs with: the retrier (whose cancel flag SIGINT/SIGTERM set) and,
/// for commands that change things, the run lock, held until the session is dropped.
pub struct Session {
    pub retrier: Arc<Retrier>,
    _lock: Option<RunLock>,
}

impl Session {
    /// Installs the signal handlers, then takes the lock when `lock` (never for read-only
    /// commands such as `backup --dry-run`).
    pub fn start(config: &Config, lock: bool) -> Result<Session, Failure> {
        let cancel = crate::signals::install()?;
        let retrier = Arc::new(Retrier::new(policy(), cancel));
        let lock = match lock {
            false => None,
            true => match RunLock::acquire(&config.global.lock_path) {
                Ok(l) => Some(l),
                Err(LockError::Held(h)) => return Err(Failure::Busy(h.into())),
                Err(LockError::Failed(e)) => return Err(Failure::Run(e)),
            },
        };
        Ok(Session {
            retrier,
            _lock: lock,
        })
    }
}
