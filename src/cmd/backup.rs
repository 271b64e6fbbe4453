//! `btrfs_to_s3 backup`: the flags (`--subvolume`, `--limit-upload`, the trigger), the
//! session (signals, retry policy, the lock; none for `--dry-run`), the engine
//! (`crate::backup`: `dry_run::dry_run`, or `Backup::run_selected`, which backs up,
//! records state, drops journals, applies retention and prunes after backup), then the
//! report: the summary, the metrics textfile, the closing line or the run's error.

use anyhow::{anyhow, Result};

use crate::backup::{Backup, RunReport};
use crate::btrfs::BtrfsCli;
use crate::cli::BackupArgs;
use crate::cmd::Session;
use crate::config::{Config, Subvolume};
use crate::event;
use crate::exit::{self, Failure, UsageError};
use crate::metrics::{write_textfile, SubvolResult};
use crate::planner::Trigger;
use crate::repo::Repo;
use crate::state::State;
use crate::ts::Ts;

/// The configured subvolumes named by `--subvolume` (all when none is given).
pub fn select<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Subvolume>, UsageError> {
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
                )));
            }
        }
    }
    Ok(out)
}

pub fn run(config: &Config, args: &BackupArgs) -> Result<u8, Failure> {
    // --limit-upload replaces the configured cap for this run.
    let mut capped;
    let config = match &args.limit_upload {
        Some(cap) => {
            capped = config.clone();
            capped.s3.upload_cap = cap.clone();
            &capped
        }
        None => config,
    };
    let selected = select(config, &args.subvolumes)?;
    crate::cmd::require_root("backup")?;
    // --dry-run reads only: no lock, no writes, not even the lock file's contents.
    let session = Session::start(config, !args.dry_run)?;
    let retrier = session.retrier.clone();
    let btrfs = BtrfsCli::default();
    let state_path = &config.global.state_path;
    let mut state = State::load(state_path)?;
    let repo = if args.no_s3 {
        None
    } else {
        Some(Repo::open(config, retrier.clone())?)
    };
    // --dry-run is a check: it says at once that the bucket cannot be reached.
    if let (Some(repo), false) = (&repo, args.dry_run) {
        repo.ride_outages(config);
    }
    let send_protocol = if args.no_s3 {
        1
    } else {
        crate::backup::send_protocol(config, &btrfs)?
    };
    let b = Backup {
        cfg: config,
        btrfs: &btrfs,
        repo: repo.as_ref(),
        retrier: retrier.clone(),
        send_protocol,
    };
    if args.dry_run {
        crate::backup::dry_run::dry_run(&b, &state, &selected, trigger(args), &mut |l| {
            println!("{l}")
        })?;
        return Ok(exit::OK);
    }
    let RunReport {
        failed,
        kept,
        done,
        total,
        results,
        prune_failed,
    } = b.run_selected(&mut state, &selected, trigger(args), args.restart)?;
    // The run's sums: `throughput` over the whole run, `upload_rate` over the seconds the
    // subvolumes were sending (see `metrics`).
    let mut line = String::from("event=backup_summary");
    crate::logging::push_kv(&mut line, "subvolumes", &selected.len());
    crate::logging::push_kv(&mut line, "failed", &failed.len());
    for (k, v) in total.fields() {
        crate::logging::push_kv(&mut line, k, &v);
    }
    log::info!("{line}");
    if let Some(path) = &config.global.metrics_path {
        let rs: Vec<SubvolResult<'_>> = results
            .iter()
            .map(|(n, ok, m)| SubvolResult {
                name: n,
                ok: *ok,
                metrics: m.as_ref(),
            })
            .collect();
        // Monitoring that silently stops updating is worse than a failed run: a textfile
        // that cannot be written fails the run (exit 1), after the backups themselves.
        if let Err(e) = write_textfile(path, &state, &rs, Ts::now()) {
            event!(
                Error,
                "metrics_textfile_failed",
                path = path.display(),
                error = format!("{e:#}")
            );
            if failed.is_empty() {
                return Err(e
                    .context(format!(
                        "the backups succeeded but the metrics textfile {} (global.metrics_path) \
                     could not be written",
                        path.display()
                    ))
                    .into());
            }
        }
    }
    if failed.is_empty() && !prune_failed.is_empty() {
        return Err(anyhow!(
            "the backups succeeded, but prune after backup (retention.prune_after_backup) failed: {}",
            prune_failed.join("; ")
        )
        .into());
    }
    if failed.is_empty() {
        // One closing line at every log level: what the run did, per subvolume.
        closing_line(&format!("backup finished: {}", done.join("; ")));
        Ok(exit::OK)
    } else {
        let resume = match kept.len() {
            0 => String::new(),
            1 => format!(
                " -- {} is kept: the next run resumes it; backup --restart starts over",
                kept[0]
            ),
            _ => format!(
                " -- {} are kept: the next run resumes them; backup --restart starts over",
                kept.join(", ")
            ),
        };
        Err(anyhow!(
            "backup failed for {} of {} subvolumes: {}{resume}",
            failed.len(),
            selected.len(),
            failed.join("; ")
        )
        .into())
    }
}

/// Writes the run's last line to stderr whatever the log level (a failed run's last line
/// is its error, from `app::main`), with the journal's priority under systemd.
fn closing_line(text: &str) {
    let prio = if crate::logging::stderr_is_journal() {
        crate::logging::priority(log::Level::Info)
    } else {
        ""
    };
    eprintln!(
        "{prio}btrfs_to_s3: {}",
        crate::term::inert(&crate::logging::redact(text))
    );
}

/// What asks for this run's backups (`--full`, `--once`, or the schedule).
fn trigger(args: &BackupArgs) -> Trigger {
    match (args.full, args.once) {
        (true, _) => Trigger::Full,
        (_, true) => Trigger::Once,
        _ => Trigger::Schedule,
    }
}
