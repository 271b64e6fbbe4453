//! The process's exit codes (also in DESIGN.md and `--help`) and [`UsageError`], the error
//! that means "exit code 2" when it is found after clap. A leaf: the commands and the
//! watchdog use these without reaching up into `app`, which maps an error to its code.

/// The run did what was asked.
pub const OK: u8 = 0;
/// The run failed (a subvolume's backup, a restore, a check that found damage, …).
pub const FAILED: u8 = 1;
/// A usage or config problem: nothing was done.
pub const USAGE: u8 = 2;
/// A restore (or a deep verify) waits for archived objects to become readable.
pub const RESTORE_PENDING: u8 = 3;

/// A usage problem found after clap (e.g. a missing `--config`): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
