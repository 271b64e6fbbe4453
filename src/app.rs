//! One invocation from start to exit code: parse flags, load the config, set up logging,
//! take the lock, run the command, and map its error to an exit code (0, 1, 2, 3).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Parser;

use crate::backup::{Backup, Outcome};
use crate::btrfs::BtrfsCli;
use crate::cli::{BackupArgs, Cli, Command, LogLevelArg};
use crate::config::{Config, ConfigError, LogLevel, ProcessEnv, Subvolume};
use crate::event;
use crate::lock::RunLock;
use crate::manifest::Layout;
use crate::metrics::{write_textfile, Metrics, SubvolResult};
use crate::planner::plan;
use crate::retry::{Policy, Retrier};
use crate::state::{State, SubvolState};
use crate::store::s3::{Endpoint, S3Store};
use crate::store::ObjectStore;
use crate::ts::Ts;

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
            // One line: the whole context chain, outermost first.
            let what = if code == exit::RESTORE_PENDING {
                "waiting"
            } else {
                "error"
            };
            let line = crate::logging::redact(&format!("{e:#}"));
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
        Command::Backup(args) => backup(&config, &args),
        Command::Restore(args) => crate::restore::command(&config, &args),
    }
}

/// The configured subvolumes named by `--subvolume` (all when none is given).
pub fn select<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Subvolume>> {
    if names.is_empty() {
        return Ok(config.subvolumes.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        match config.subvolumes.iter().find(|s| &s.name == n) {
            Some(s) if !out.contains(&s) => out.push(s),
            Some(_) => {}
            None => {
                let known: Vec<&str> = config.subvolumes.iter().map(|s| s.name.as_str()).collect();
                return Err(UsageError(format!(
                    "--subvolume {n}: no configured subvolume has that name (configured: {})",
                    known.join(", ")
                ))
                .into());
            }
        }
    }
    Ok(out)
}

/// A store for the configured bucket, with the keep-alive pool sized for the uploaders.
pub fn s3_store(config: &Config) -> Result<Arc<dyn ObjectStore>> {
    let store = S3Store::new(
        &Endpoint::from_config(&config.s3),
        config.s3.concurrency + 2,
    )
    .map_err(|e| anyhow!(e))?;
    Ok(Arc::new(store))
}

fn backup(config: &Config, args: &BackupArgs) -> Result<u8> {
    let selected = select(config, &args.subvolumes)?;
    let cancel = crate::signals::install()?;
    let retrier = Arc::new(Retrier::new(Policy::default(), cancel));
    let btrfs = BtrfsCli::default();
    // --dry-run reads only: no lock, no writes, not even the lock file's contents.
    let _lock = if args.dry_run {
        None
    } else {
        Some(RunLock::acquire(&config.global.lock_path)?)
    };
    let state_path = &config.global.state_path;
    let mut state = State::load(state_path)?;
    let store = if args.no_s3 {
        None
    } else {
        Some(s3_store(config)?)
    };
    let b = Backup {
        cfg: config,
        btrfs: &btrfs,
        store,
        retrier: retrier.clone(),
        layout: Layout::new(&config.s3.prefix),
    };
    if args.dry_run {
        return dry_run(&b, &state, &selected, args.once);
    }
    let run_ts = crate::backup::run_timestamp(config, &selected, &Ts::now)?;
    let started = Instant::now();
    let mut failed: Vec<String> = Vec::new();
    let mut total = Metrics::default();
    let mut results: Vec<(String, bool, Option<Metrics>)> = Vec::new();
    for sv in &selected {
        if retrier.cancelled() {
            event!(
                Error,
                "backup_not_started",
                subvolume = sv.name,
                reason = "interrupted"
            );
            failed.push(sv.name.clone());
            results.push((sv.name.clone(), false, None));
            continue;
        }
        let entry = state.subvolumes.get(&sv.name).cloned().unwrap_or_default();
        let r = one_subvolume(&b, sv, &entry, args.once, run_ts).and_then(|o| match o {
            Outcome::Published(p) => {
                crate::backup::record(&mut state, state_path, &sv.name, p.state.clone(), run_ts)
                    .with_context(|| {
                        format!(
                            "the backup is published as {} but the state file {} was not updated \
                             (the next run will not know it; fix the state directory)",
                            p.manifest_key,
                            state_path.display()
                        )
                    })?;
                event!(
                    Info,
                    "backup_published",
                    subvolume = sv.name,
                    manifest = p.manifest_key
                );
                p.metrics.log("backup_metrics", &sv.name);
                let snap = p.state.last_snapshot.as_deref().map(std::path::Path::new);
                b.prune(sv, snap)
                    .context("the backup is published but pruning old snapshots failed")?;
                Ok(Some(p.metrics))
            }
            Outcome::SnapshotOnly(path) => {
                event!(
                    Info,
                    "snapshot_only",
                    subvolume = sv.name,
                    path = path.display()
                );
                Ok(None)
            }
            Outcome::Skipped(_) => Ok(None),
        });
        match r {
            Ok(m) => {
                if let Some(m) = &m {
                    total.add(m);
                }
                results.push((sv.name.clone(), true, m));
            }
            Err(e) => {
                event!(
                    Error,
                    "backup_failed",
                    subvolume = sv.name,
                    error = format!("{e:#}")
                );
                failed.push(sv.name.clone());
                results.push((sv.name.clone(), false, None));
            }
        }
    }
    total.elapsed = started.elapsed();
    event!(
        Info,
        "backup_summary",
        subvolumes = selected.len(),
        failed = failed.len(),
        total_bytes = total.bytes,
        elapsed_seconds = format!("{:.3}", total.elapsed.as_secs_f64()),
        throughput = format!("{:.1}MB/s", total.throughput() / 1e6),
        chunks = total.chunks,
        parts = total.parts,
        retries = total.retries,
    );
    if let Some(path) = &config.global.metrics_path {
        let rs: Vec<SubvolResult<'_>> = results
            .iter()
            .map(|(n, ok, m)| SubvolResult {
                name: n,
                ok: *ok,
                metrics: m.as_ref(),
            })
            .collect();
        if let Err(e) = write_textfile(path, &state, &rs) {
            event!(
                Error,
                "metrics_textfile_failed",
                path = path.display(),
                error = format!("{e:#}")
            );
        }
    }
    if failed.is_empty() {
        Ok(exit::OK)
    } else {
        Err(anyhow!(
            "backup failed for {} of {} subvolumes: {} (see the event=backup_failed lines above)",
            failed.len(),
            selected.len(),
            failed.join(", ")
        ))
    }
}

fn one_subvolume(
    b: &Backup<'_>,
    sv: &Subvolume,
    entry: &SubvolState,
    once: bool,
    run_ts: Ts,
) -> Result<Outcome> {
    b.btrfs.show(&sv.path).with_context(|| {
        format!(
            "subvolume {}: {} is not a readable btrfs subvolume; check subvolumes.paths",
            sv.name,
            sv.path.display()
        )
    })?;
    b.sweep_stale_uploads(sv)?;
    let facts = b.facts(sv, entry)?;
    let d = plan(&facts, &b.cfg.schedule, run_ts, once);
    event!(
        Info,
        "plan",
        subvolume = sv.name,
        action = d.action.as_str(),
        reason = d.reason
    );
    b.run_one(sv, entry, &d, run_ts)
}

fn dry_run(b: &Backup<'_>, state: &State, selected: &[&Subvolume], once: bool) -> Result<u8> {
    let now = Ts::now();
    for sv in selected {
        let entry = state.subvolumes.get(&sv.name).cloned().unwrap_or_default();
        let line = match b.facts(sv, &entry) {
            Ok(f) => {
                let d = plan(&f, &b.cfg.schedule, now, once);
                format!("{}: {} ({})", sv.name, d.action.as_str(), d.reason)
            }
            Err(e) => format!("{}: unknown ({e:#})", sv.name),
        };
        println!("{line}");
    }
    Ok(exit::OK)
}
