//! One invocation from start to exit code: parse flags, load the config, set up logging,
//! run the command (`cmd/`), and map its error to an exit code (0, 1, 2, 3).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command, LogLevelArg};
use crate::config::{Config, ConfigError, LogLevel, ProcessEnv};
use crate::event;

/// Exit codes (also in DESIGN.md and `--help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const RESTORE_PENDING: u8 = 3;
}

/// A usage problem found after clap (e.g. a missing `--config`): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code_for(&e);
            // One line: the whole context chain, outermost first, with no credential
            // and no terminal control from the bucket or a server in it.
            let what = if code == exit::RESTORE_PENDING {
                "waiting"
            } else {
                "error"
            };
            let line = crate::term::inert(&crate::logging::redact(&format!("{e:#}")));
            eprintln!("btrfs_to_s3: {what}: {line}");
            ExitCode::from(code)
        }
    }
}

/// Maps an error to its exit code by the typed errors in its chain.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() || cause.is::<UsageError>() {
            return exit::USAGE;
        }
        if cause.is::<crate::restore::ArchivePending>() {
            return exit::RESTORE_PENDING;
        }
    }
    exit::FAILED
}

fn level_of(arg: LogLevelArg) -> LogLevel {
    match arg {
        LogLevelArg::Debug => LogLevel::Debug,
        LogLevelArg::Info => LogLevel::Info,
        LogLevelArg::Warning => LogLevel::Warning,
        LogLevelArg::Error => LogLevel::Error,
        LogLevelArg::Critical => LogLevel::Critical,
    }
}

pub fn run(cli: Cli) -> Result<u8> {
    let config_path: PathBuf = cli.config.clone().ok_or_else(|| {
        UsageError("--config PATH is required (e.g. --config /etc/btrfs_to_s3/config.toml)".into())
    })?;
    let config = Config::load(&config_path, &ProcessEnv)?;
    let level = cli
        .log_level
        .map(level_of)
        .unwrap_or(config.global.log_level);
    crate::logging::init(level.to_filter());
    event!(
        Debug,
        "config_loaded",
        path = config_path.display(),
        subvolumes = config.subvolumes.len()
    );
    match cli.command {
        Command::Backup(args) => crate::cmd::backup::run(&config, &args),
        Command::Restore(args) => crate::cmd::restore::run(&config, &args),
        Command::List(args) => crate::cmd::list::run(&config, &args),
        Command::Verify(args) => crate::cmd::verify::run(&config, &args),
        Command::Prune(args) => crate::cmd::prune::run(&config, &args),
    }
}
