//! `btrfs_to_s3 backup`: select subvolumes, start the session (signals, retry policy, the
//! lock; none for `--dry-run`), check that the state directory takes writes, then per
//! subvolume run the engine (`crate::backup`) over the repository, record what was
//! published in the state, drop its journal, apply retention; finally the summary and
//! the metrics textfile.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::backup::{Backup, Outcome, Published};
use crate::btrfs::BtrfsCli;
use crate::cli::BackupArgs;
use crate::cmd::Session;
use crate::config::{Config, Subvolume};
use crate::event;
use crate::exit::{self, Failure, UsageError};
use crate::metrics::{write_textfile, Metrics, SubvolResult};
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

/// Fails unless a file can be created in the state file's directory: checked before
/// anything is uploaded, so a read-only state directory does not cost a whole upload.
fn check_state_writable(state_path: &Path) -> Result<()> {
    let dir = state_path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::tempfile_in(dir).map(drop))
        .with_context(|| {
            format!(
                "the state directory {} does not take writes (global.state_path): fix it \
                 before backing up, or the backup could not be recorded",
                dir.display()
            )
        })
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
        return dry_run(&b, &state, &selected, trigger(args));
    }
    check_state_writable(state_path)?;
    if let Some(repo) = &repo {
        crate::repo::object_lock::check_bucket(config, repo)?;
    }
    let harness = crate::harness::dir()?;
    let run_ts = crate::backup::run_timestamp(config, &selected, &Ts::now)?;
    let started = Instant::now();
    let mut failed: Vec<String> = Vec::new();
    // Failed subvolumes whose snapshot, journal and uploads are kept for the next run.
    let mut kept: Vec<String> = Vec::new();
    // What happened to each subvolume, for the run's closing line.
    let mut done: Vec<String> = Vec::new();
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
            failed.push(format!("{}: not started (interrupted)", sv.name));
            results.push((sv.name.clone(), false, None));
            continue;
        }
        let entry = state.subvolumes.get(&sv.name).cloned().unwrap_or_default();
        let r = b
            .run(sv, &entry, trigger(args), args.restart, run_ts)
            .and_then(|o| match o {
                Outcome::Published(p) => {
                    let m = finish(&b, &mut state, state_path, sv, &p, run_ts)?;
                    // The contract's harness hook: the first selected subvolume only.
                    if let (Some(dir), true) = (&harness, sv.name == selected[0].name) {
                        harness_file(&b, dir, sv, &p)?;
                    }
                    protect(&b, sv, &p)?;
                    Ok(m)
                }
                Outcome::SnapshotOnly(path) => {
                    event!(
                        Info,
                        "snapshot_only",
                        subvolume = sv.name,
                        path = path.display()
                    );
                    done.push(format!("{}: snapshot only (--no-s3)", sv.name));
                    Ok(None)
                }
                Outcome::Skipped(_) => {
                    done.push(format!("{}: not due", sv.name));
                    Ok(None)
                }
            });
        match r {
            Ok(m) => {
                if let Some(m) = &m {
                    total.add(m);
                    done.push(format!("{}: {}", sv.name, said(m)));
                }
                results.push((sv.name.clone(), true, m));
            }
            Err(e) => {
                if b.journal_path(sv).exists() {
                    kept.push(sv.name.clone());
                }
                // What the stopped upload did counts in the run's sums.
                if let Some(s) = &e.stopped {
                    total.uploaded_bytes += s.uploaded_bytes;
                    total.upload_time += s.upload_time;
                }
                event!(
                    Error,
                    "backup_failed",
                    subvolume = sv.name,
                    error = format!("{e:#}")
                );
                failed.push(format!("{}: {e:#}", sv.name));
                results.push((sv.name.clone(), false, None));
            }
        }
    }
    let mut prune_failed: Vec<String> = Vec::new();
    if let (true, Some(repo)) = (config.retention.prune_after_backup, &repo) {
        let names: Vec<String> = results
            .iter()
            .filter(|(_, ok, _)| *ok)
            .map(|(n, _, _)| n.clone())
            .collect();
        if !names.is_empty() && !retrier.cancelled() {
            let req = crate::cmd::prune::Request {
                names,
                keep: config.retention.remote_generations,
                confirm: true,
                allow_early_delete: false,
                force: false,
            };
            match crate::cmd::prune::prune_all(config, repo, &req) {
                Ok((_, refused)) => prune_failed.extend(refused),
                Err(e) => {
                    event!(Error, "prune_failed", error = format!("{e:#}"));
                    prune_failed.push(format!("{e:#}"));
                }
            }
        }
    }
    total.elapsed = started.elapsed();
    // Every s3_retry event of the run (pre-checks, listings and prune included): the
    // retrier counts each one it logs.
    total.retries = retrier.retries();
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

/// A published backup in a few words: `backed up, 12.0 MiB sent (3.0 MiB already stored)
/// in 4.2 s`.
fn said(m: &Metrics) -> String {
    let human = crate::cmd::list::human;
    let mut s = format!("backed up, {} sent", human(m.uploaded_bytes));
    if m.resumed_bytes > 0 {
        s.push_str(&format!(" ({} already stored)", human(m.resumed_bytes)));
    }
    s.push_str(&format!(" in {:.1} s", m.elapsed.as_secs_f64()));
    match m.retries {
        0 => {}
        1 => s.push_str(", 1 retry"),
        n => s.push_str(&format!(", {n} retries")),
    }
    s
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

/// After a publish: the state (one atomic write), then the journal goes, then retention
/// (which keeps the new parent).
fn finish(
    b: &Backup<'_>,
    state: &mut State,
    state_path: &Path,
    sv: &Subvolume,
    p: &Published,
    run_ts: Ts,
) -> Result<Option<Metrics>> {
    crate::failpoint::hit("between_pointer_and_state");
    crate::backup::record(state, state_path, &sv.name, p.state.clone(), run_ts).with_context(
        || {
            format!(
                "the backup is published as {} but the state file {} was not updated \
                 (the next run will bring it up to date from the journal {}; fix the state directory)",
                p.manifest_key,
                state_path.display(),
                p.journal.display()
            )
        },
    )?;
    crate::journal::remove(&p.journal)?;
    event!(
        Info,
        "backup_published",
        subvolume = sv.name,
        manifest = p.manifest_key,
        recovered = p.recovered
    );
    if !p.recovered {
        p.metrics.log("backup_metrics", &sv.name);
    }
    let keep: Vec<PathBuf> = p.state.last_snapshot.iter().map(PathBuf::from).collect();
    b.prune(sv, &keep)
        .context("the backup is published but pruning old snapshots failed")?;
    Ok((!p.recovered).then(|| p.metrics.clone()))
}

/// With `[object_lock]`: the published backup's whole chain stays locked at least as long
/// as it (`repo::object_lock`). A failure fails the subvolume (exit 1) and says that the
/// backup is published but not protected; the next backup extends the chain again.
fn protect(b: &Backup<'_>, sv: &Subvolume, p: &Published) -> Result<()> {
    let Some(repo) = b.repo else {
        return Ok(());
    };
    crate::repo::object_lock::protect_chain(b.cfg, repo, &sv.name, &p.manifest_key)
        .map(drop)
        .with_context(|| {
            format!(
                "backup {} is published, but its chain is NOT protected by Object Lock (the \
                 next backup extends it again; fix the cause)",
                p.manifest_key
            )
        })
}

/// `BTRFS_TO_S3_HARNESS_RUN_DIR/manifest.json` for a published backup (a recovered one's
/// chunks are read from its manifest).
fn harness_file(b: &Backup<'_>, dir: &Path, sv: &Subvolume, p: &Published) -> Result<()> {
    let chunks = match (p.recovered, b.repo) {
        (true, Some(repo)) => repo
            .chain(&sv.name, &p.manifest_key)?
            .newest()
            .1
            .chunks
            .iter()
            .map(|c| (c.key.clone(), c.sha256.clone()))
            .collect(),
        _ => p.chunks.clone(),
    };
    crate::harness::write(dir, p.kind, &chunks)
}

/// The nearest existing ancestor of `p` (itself when it exists).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

/// With spooling on: whether the filesystem of `global.spool_dir` (or of its nearest
/// existing ancestor: the run creates it) has room for the spool files a run holds at once,
/// `min(concurrency + 1, spool_size_bytes / part)` parts.
fn spool_room_problem(cfg: &Config, part: u64) -> Option<String> {
    let dir = &cfg.global.spool_dir;
    let at = existing_ancestor(dir)?;
    let free = rustix::fs::statvfs(at)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .ok()?;
    let files = (cfg.s3.concurrency as u64 + 1).min(cfg.global.spool_size_bytes / part);
    let need = files.saturating_mul(part);
    (free < need).then(|| {
        format!(
            "global.spool_dir = {}: its filesystem has {free} bytes free, and a run spools up to \
             {files} parts of {part} bytes ({need} bytes, s3.concurrency + 1): free space, move \
             global.spool_dir, or lower s3.concurrency or s3.part_size_bytes",
            dir.display()
        )
    })
}

/// What can be checked of the config without writing: subvolumes are btrfs subvolumes
/// we can read, `snapshots.base_dir` is (or would be) on the same filesystem as each,
/// the sizes fit together. One line per problem, each naming the key.
fn config_problems(b: &Backup<'_>, selected: &[&Subvolume]) -> Vec<String> {
    let cfg = b.cfg;
    let mut out = Vec::new();
    match crate::backup::part_size(cfg) {
        Err(e) => out.push(format!("{e:#}")),
        Ok(part) if cfg.s3.spool_enabled && cfg.global.spool_size_bytes < part => {
            out.push(format!(
                "global.spool_size_bytes = {} cannot hold one part of {part} bytes; raise it",
                cfg.global.spool_size_bytes
            ))
        }
        Ok(part) if cfg.s3.spool_enabled => {
            if let Some(p) = spool_room_problem(cfg, part) {
                out.push(p);
            }
        }
        Ok(_) => {}
    }
    let base = &cfg.snapshots.base_dir;
    let base_fs = existing_ancestor(base).and_then(|a| b.btrfs.filesystem(a).ok());
    for sv in selected {
        let p = &sv.path;
        if !p.exists() {
            out.push(format!(
                "subvolumes.paths: {} does not exist (subvolume {})",
                p.display(),
                sv.name
            ));
            continue;
        }
        if let Err(e) = b.btrfs.show(p) {
            out.push(format!(
                "subvolumes.paths: {} is not a btrfs subvolume we can read ({}); create it \
                 with btrfs subvolume create, or fix the path",
                p.display(),
                format!("{e:#}").lines().next().unwrap_or("")
            ));
            continue;
        }
        match (b.btrfs.filesystem(p), &base_fs) {
            (Ok(fs), Some(bfs)) if &fs != bfs => out.push(format!(
                "snapshots.base_dir = {} is on {} ({}), not on the btrfs filesystem of {} ({}): \
                 snapshots must be on the same filesystem",
                base.display(),
                bfs.source,
                bfs.fstype,
                p.display(),
                fs.source
            )),
            (Ok(_), Some(_)) => {}
            (Err(e), _) => out.push(format!("{e:#}")),
            (_, None) => out.push(format!(
                "snapshots.base_dir = {}: its filesystem cannot be read",
                base.display()
            )),
        }
    }
    out
}

/// How many chunk objects a full of `sv` would make now. The size is what `statvfs`
/// says is used on its filesystem (df's "Used"): instant, and at least the subvolume's
/// data unless the filesystem compresses, but it counts every other subvolume and
/// snapshot there too (shared extents once), so it usually overestimates.
fn full_estimate(cfg: &Config, sv: &Subvolume) -> String {
    let chunk = cfg.s3.chunk_size_bytes.max(1);
    match rustix::fs::statvfs(&sv.path) {
        Ok(st) => {
            let used = st
                .f_blocks
                .saturating_sub(st.f_bfree)
                .saturating_mul(st.f_frsize);
            format!(
                "{}: a full now would make about {} chunk objects (s3.chunk_size_bytes = {chunk}; \
                 estimated from the {used} bytes used on its filesystem, other subvolumes and \
                 snapshots included)",
                sv.name,
                used.div_ceil(chunk).max(1)
            )
        }
        Err(e) => format!(
            "{}: the size of a full cannot be estimated (statvfs of {}: {e})",
            sv.name,
            sv.path.display()
        ),
    }
}

/// What asks for this run's backups (`--full`, `--once`, or the schedule).
fn trigger(args: &BackupArgs) -> Trigger {
    match (args.full, args.once) {
        (true, _) => Trigger::Full,
        (_, true) => Trigger::Once,
        _ => Trigger::Schedule,
    }
}

/// `--dry-run`: the config check the systemd unit runs first. Config problems exit 2
/// (each named); S3 out of reach exits 1; else the plan, one line per subvolume (a
/// refused resume journal says so: that subvolume's run will fail), the chunk objects a
/// full would make, exit 0.
fn dry_run(
    b: &Backup<'_>,
    state: &State,
    selected: &[&Subvolume],
    trigger: Trigger,
) -> Result<u8, Failure> {
    let problems = config_problems(b, selected);
    for p in &problems {
        println!("config: {p}");
    }
    if let Some(first) = problems.first() {
        return Err(crate::config::ConfigError(if problems.len() == 1 {
            first.clone()
        } else {
            format!("{first} (and {} more problems above)", problems.len() - 1)
        })
        .into());
    }
    if let Some(repo) = b.repo {
        repo.head_bucket()
            .context("S3 cannot be reached (a real run would fail): check the network, s3.endpoint_url, s3.bucket, s3.region and the credentials")?;
        if let Some(l) = &b.cfg.object_lock {
            crate::repo::object_lock::check_bucket(b.cfg, repo)?;
            println!(
                "object_lock: bucket {} has Object Lock enabled; chunks and manifests are \
                 locked ({}) for {} days, their chains as long",
                b.cfg.s3.bucket, l.mode, l.retain_days
            );
        }
    }
    let enc = &b.cfg.encryption;
    if enc.enabled() {
        println!(
            "encryption: new backups are encrypted (age) to {} recipient{}: {}",
            enc.recipients.len(),
            if enc.recipients.len() == 1 { "" } else { "s" },
            enc.fingerprints().join(", ")
        );
    }
    let now = Ts::now();
    for sv in selected {
        let entry = state.subvolumes.get(&sv.name).cloned().unwrap_or_default();
        let line = match b.load_journal(sv) {
            Ok(Some(p)) => format!(
                "{}: resume ({} backup of {} interrupted; {} bytes stored)",
                sv.name,
                p.begin.kind.as_str(),
                p.begin.run_ts,
                p.stored_bytes()
            ),
            // The run of this subvolume will fail on it (the others go on).
            Err(crate::journal::LoadError::Refused(e)) => {
                format!("{}: refused ({e:#})", sv.name)
            }
            // None, or unreadable: the run abandons an unreadable journal and plans.
            _ => {
                let d = b.decide_plan(sv, &entry, now, trigger)?;
                format!("{}: {} ({})", sv.name, d.action.as_str(), d.reason)
            }
        };
        println!("{line}");
        println!("{}", full_estimate(b.cfg, sv));
        let nested = b.nested(sv);
        if !nested.is_empty() {
            println!(
                "{}: not included (nested subvolumes, which btrfs send leaves out): {}",
                sv.name,
                nested.join(", ")
            );
        }
    }
    Ok(exit::OK)
}
