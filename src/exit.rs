//! The process's exit codes (also in DESIGN.md and `--help`), [`UsageError`] (a usage
//! problem found after clap), and [`Failure`], how a command that did not succeed ended,
//! which `app` matches on for the code. A leaf: the commands and the watchdog use these
//! without reaching up into `app`.

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

/// How a command that did not succeed ended, decided where it is known (a flag, the
/// config, the lock, an archive restore in progress) rather than read back out of an
/// error chain: `app` matches on it for the exit code and whether the run is recorded.
#[derive(Debug)]
pub enum Failure {
    /// A usage or config problem: nothing was done (exit code 2).
    Usage(anyhow::Error),
    /// Archived objects are being restored: rerun later (exit code 3).
    Pending(anyhow::Error),
    /// Another run holds the lock: this one did not start (exit code 1; that run's
    /// record is the one `status` shows).
    Busy(anyhow::Error),
    /// The run failed (exit code 1).
    Run(anyhow::Error),
}

impl Failure {
    /// The process's exit code for it.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => USAGE,
            Failure::Pending(_) => RESTORE_PENDING,
            Failure::Busy(_) | Failure::Run(_) => FAILED,
        }
    }

    /// The error to print (its whole context chain is the last line).
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Usage(e) | Failure::Pending(e) | Failure::Busy(e) | Failure::Run(e) => e,
        }
    }

    /// Adds `what` in front of the message (as `anyhow`'s `context`), keeping the kind.
    pub fn context(self, what: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            Failure::Usage(e) => Failure::Usage(e.context(what)),
            Failure::Pending(e) => Failure::Pending(e.context(what)),
            Failure::Busy(e) => Failure::Busy(e.context(what)),
            Failure::Run(e) => Failure::Run(e.context(what)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.error(), f)
    }
}

/// Any other error is the run's failure (exit code 1).
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Run(e)
    }
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_exit_code_and_keeps_it_under_context() {
        let usage: Failure = UsageError("--subvolume x: no such subvolume".into()).into();
        assert_eq!(usage.code(), USAGE);
        assert_eq!(usage.context("backup").code(), USAGE);
        let config: Failure = crate::config::ConfigError("s3.bucket is required".into()).into();
        assert_eq!(config.code(), USAGE);
        assert_eq!(
            Failure::Pending(anyhow::anyhow!("4 chunks")).code(),
            RESTORE_PENDING
        );
        assert_eq!(Failure::Busy(anyhow::anyhow!("lock held")).code(), FAILED);
        let run: Failure = anyhow::anyhow!("S3 said no").into();
        assert_eq!(run.code(), FAILED);
        // The message is the error's, context and all.
        let f = run.context("restore of data");
        assert_eq!(format!("{f:#}"), "restore of data: S3 said no");
        assert_eq!(format!("{:#}", f.error()), "restore of data: S3 said no");
    }
}
