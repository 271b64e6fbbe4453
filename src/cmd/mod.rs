//! The commands, each a thin function of the same shape over the repository layer
//! (`repo`): resolve flags over config, start a [`Session`] (signals, retry policy, the
//! lock), run the engine (`backup`, `restore`), report. Exit codes are `app`'s.

pub mod backup;
pub mod restore;

use std::sync::Arc;

use anyhow::Result;

use crate::config::Config;
use crate::lock::RunLock;
use crate::retry::{Policy, Retrier};

/// What every command runs with: the retrier (whose cancel flag SIGINT/SIGTERM set) and,
/// for commands that change things, the run lock, held until the session is dropped.
pub struct Session {
    pub retrier: Arc<Retrier>,
    _lock: Option<RunLock>,
}

impl Session {
    /// Installs the signal handlers, then takes the lock when `lock` (never for read-only
    /// commands such as `backup --dry-run`).
    pub fn start(config: &Config, lock: bool) -> Result<Session> {
        let cancel = crate::signals::install()?;
        let retrier = Arc::new(Retrier::new(Policy::default(), cancel));
        let lock = if lock {
            Some(RunLock::acquire(&config.global.lock_path)?)
        } else {
            None
        };
        Ok(Session {
            retrier,
            _lock: lock,
        })
    }
}
