//! A backup run over the selected subvolumes: the per-subvolume loop (`Backup::run`),
//! and after each publish the state (one atomic write), the journal dropped, the
//! snapshots' retention, the harness file and Object Lock's chain extension; then
//! prune after backup (`retention.prune_after_backup`). It returns what happened
//! (`RunReport`); the command prints the summary, the metrics textfile and the closing
//! line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Backup, Outcome, Published};
use crate::config::Subvolume;
use crate::event;
use crate::exit::Failure;
use crate::metrics::Metrics;
use crate::planner::Trigger;
use crate::state::State;
use crate::ts::Ts;

/// What a run did, for the command's report.
#[derive(Debug, Default)]
pub struct RunReport {
    /// One line per failed subvolume, naming it and why.
    pub failed: Vec<String>,
    /// Failed subvolumes whose snapshot, journal and uploads are kept for the next run.
    pub kept: Vec<String>,
    /// What happened to each subvolume that did not fail, for the run's closing line.
    pub done: Vec<String>,
    /// The run's sums (elapsed and retries included).
    pub total: Metrics,
    /// Per subvolume, in order: its name, whether it succeeded, its metrics when it
    /// published (not for a recovered backup).
    pub results: Vec<(String, bool, Option<Metrics>)>,
    /// Prune after backup: each subvolume refused, or the error that stopped it.
    pub prune_failed: Vec<String>,
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

impl Backup<'_> {
    /// Backs up each of `selected` in turn (a failed one does not stop the others), then
    /// prunes after backup. An error here is one that stops the run before any subvolume:
    /// the state directory does not take writes, the bucket's Object Lock, the harness
    /// directory, the run timestamp.
    pub fn run_selected(
        &self,
        state: &mut State,
        selected: &[&Subvolume],
        trigger: Trigger,
        restart: bool,
    ) -> Result<RunReport, Failure> {
        let b = self;
        let config = self.cfg;
        let repo = self.repo;
        let retrier = &self.retrier;
        let state_path = &config.global.state_path;
        check_state_writable(state_path)?;
        if let Some(repo) = repo {
            crate::repo::object_lock::check_bucket(config, repo)?;
        }
        let harness = crate::harness::dir()?;
        let run_ts = super::run_timestamp(config, selected, &Ts::now)?;
        let started = Instant::now();
        let mut failed: Vec<String> = Vec::new();
        // Failed subvolumes whose snapshot, journal and uploads are kept for the next run.
        let mut kept: Vec<String> = Vec::new();
        // What happened to each subvolume, for the run's closing line.
        let mut done: Vec<String> = Vec::new();
        let mut total = Metrics::default();
        let mut results: Vec<(String, bool, Option<Metrics>)> = Vec::new();
        for sv in selected {
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
                .run(sv, &entry, trigger, restart, run_ts)
                .and_then(|o| match o {
                    Outcome::Published(p) => {
                        let m = finish(b, state, state_path, sv, &p, run_ts)?;
                        // The contract's harness hook: the first selected subvolume only.
                        if let (Some(dir), true) = (&harness, sv.name == selected[0].name) {
                            harness_file(b, dir, sv, &p)?;
                        }
                        protect(b, sv, &p)?;
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
        if let (true, Some(repo)) = (config.retention.prune_after_backup, repo) {
            let names: Vec<String> = results
                .iter()
                .filter(|(_, ok, _)| *ok)
                .map(|(n, _, _)| n.clone())
                .collect();
            if !names.is_empty() && !retrier.cancelled() {
                let req = crate::repo::prune_all::Request {
                    names,
                    keep: config.retention.remote_generations,
                    confirm: true,
                    allow_early_delete: false,
                    force: false,
                };
                match crate::repo::prune_all::prune_all(config, repo, &req) {
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
        Ok(RunReport {
            failed,
            kept,
            done,
            total,
            results,
            prune_failed,
        })
    }
}

/// A published backup in a few words: `backed up, 12.0 MiB sent (3.0 MiB already stored)
/// in 4.2 s`.
fn said(m: &Metrics) -> String {
    let human = crate::size::human;
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
    repo.manifest_key_of(&sv.name, &p.manifest_key)
        .map_err(anyhow::Error::from)
        .and_then(|key| crate::repo::object_lock::protect_chain(b.cfg, repo, &sv.name, &key))
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
            .chain(&sv.name, &repo.manifest_key_of(&sv.name, &p.manifest_key)?)?
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
