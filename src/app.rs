//! One invocation from start to exit code: parse flags, load the config, set up logging,
//! run the command (`cmd/`), and map its error to an exit code (0, 1, 2, 3).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, LogLevelArg};
use crate::config::{Config, ConfigError, LogLevel, ProcessEnv};
use crate::event;
use crate::exit::Failure;

// The exit codes and the usage error live in the leaf `exit`; `app::exit` and
// `app::UsageError` stay as names for them.
pub(crate) use crate::exit::{self, UsageError};

/// The whole process: parse the flags, run, print the one-line error, exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            let code = f.code();
            // One line: the whole context chain, outermost first, with no credential
            // and no terminal control from the bucket or a server in it.
            let pending = matches!(f, Failure::Pending(_));
            let what = if pending { "waiting" } else { "error" };
            let line = error_line(f.error());
            let prio = if !crate::logging::stderr_is_journal() {
                ""
            } else if pending {
                crate::logging::priority(log::Level::Warn)
            } else {
                crate::logging::priority(log::Level::Error)
            };
            eprintln!("{prio}btrfs_to_s3: {what}: {line}");
            ExitCode::from(code)
        }
    }
}

/// The final error line's text: the whole context chain, outermost first, with no
/// credential and no terminal control (also the body of a failure ping).
pub fn error_line(e: &anyhow::Error) -> String {
    crate::term::inert(&crate::logging::redact(&format!("{e:#}")))
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

/// Runs parsed flags: completions and man pages, else config, logging and the command.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    // Generated from the flags themselves: no config, no logging, nothing touched. Made
    // in memory first (clap_complete panics on a failed write, e.g. a closed pipe).
    let mut generated = Vec::new();
    match &cli.command {
        Command::Completions(a) => {
            clap_complete::generate(a.shell, &mut Cli::command(), "btrfs_to_s3", &mut generated);
            return Ok(print_generated(&generated)?);
        }
        Command::Man(a) => {
            if let Some(dir) = &a.dir {
                if !dir.is_dir() {
                    return Err(UsageError(format!(
                        "man --dir {}: not a directory; create it first",
                        dir.display()
                    ))
                    .into());
                }
                clap_mangen::generate_to(Cli::command(), dir).map_err(|e| {
                    anyhow::anyhow!("writing the man pages into {}: {e}", dir.display())
                })?;
                return Ok(exit::OK);
            }
            clap_mangen::Man::new(Cli::command())
                .render(&mut generated)
                .map_err(|e| anyhow::anyhow!("rendering the man page: {e}"))?;
            return Ok(print_generated(&generated)?);
        }
        _ => {}
    }
    let (config_path, defaulted) = match cli.config.clone() {
        Some(p) if p.as_os_str().is_empty() => {
            return Err(UsageError(
                "--config (or BTRFS_TO_S3_CONFIG) is empty: give the path of the config file"
                    .into(),
            )
            .into())
        }
        Some(p) => (p, false),
        None => (PathBuf::from(crate::cli::DEFAULT_CONFIG), true),
    };
    if defaulted && !config_path.exists() {
        return Err(UsageError(format!(
            "no config at {} (the default): pass --config PATH (or -c, or set \
             BTRFS_TO_S3_CONFIG), or create it from contrib/config.example.toml",
            config_path.display()
        ))
        .into());
    }
    let config = Config::load(&config_path, &ProcessEnv)?;
    // A config with only `[s3]` (a new machine on the bad day) serves restore, list and
    // verify; what acts on the configured subvolumes needs them.
    let needs_subvolumes = match &cli.command {
        Command::Backup(_) => Some("backup"),
        Command::Prune(a) if a.subvolumes.is_empty() => Some("prune without --subvolume"),
        _ => None,
    };
    if let Some(what) = needs_subvolumes {
        config
            .require_subvolumes(what)
            .map_err(|e| ConfigError(format!("config {}: {}", config_path.display(), e.0)))?;
    }
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
        Command::Backup(args) => {
            let started = crate::ts::Ts::now();
            // Health pings (`[notify] ping_url`) for runs that act, not for a dry run.
            let pinger = if args.dry_run {
                None
            } else {
                crate::notify::pinger(config.notify.ping_url.as_ref(), &ProcessEnv)
            };
            if let Some(p) = &pinger {
                p.ping(crate::notify::Ping::Start);
            }
            let r = crate::cmd::backup::run(&config, &args);
            if !args.dry_run {
                record_last_run(&config, started, &r);
            }
            if let Some(p) = &pinger {
                match &r {
                    Ok(0) => p.ping(crate::notify::Ping::Success),
                    Ok(code) => p.ping(crate::notify::Ping::Fail(&format!(
                        "btrfs_to_s3 backup exited with code {code}"
                    ))),
                    Err(f) => p.ping(crate::notify::Ping::Fail(&error_line(f.error()))),
                }
            }
            r
        }
        Command::Status(args) => crate::cmd::status::run(&config, &args),
        Command::Restore(args) => crate::cmd::restore::run(&config, &args),
        Command::List(args) => crate::cmd::list::run(&config, &args),
        Command::Verify(args) => crate::cmd::verify::run(&config, &args),
        Command::Prune(args) => crate::cmd::prune::run(&config, &args),
        Command::Completions(_) | Command::Man(_) => Ok(exit::OK),
    }
}

/// Keeps the backup run's outcome for `status` (`lastrun`), unless it never started
/// (another run holds the lock: that run's record is the one that counts). A record that
/// cannot be written is a warning, not the run's failure.
fn record_last_run(config: &Config, started: crate::ts::Ts, r: &Result<u8, Failure>) {
    let (code, line) = match r {
        Ok(code) => (
            *code,
            "backup finished: every selected subvolume backed up or not due".to_string(),
        ),
        Err(Failure::Busy(_)) => return,
        Err(f) => (f.code(), format!("{:#}", f.error())),
    };
    let rec = crate::lastrun::LastRun::new(
        started.to_string(),
        crate::ts::Ts::now().to_string(),
        code,
        &line,
    );
    if let Err(e) = rec.save(&config.global.state_path) {
        event!(Warn, "last_run_not_recorded", error = format!("{e:#}"));
    }
}

/// Writes generated text (completions, the man page) to stdout.
fn print_generated(text: &[u8]) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match std::io::Write::write_all(&mut out, text).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => Ok(exit::OK),
        // A reader that stopped early (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
}
