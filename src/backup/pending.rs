//! A pending (journaled) backup of one subvolume, before anything new is planned: whether
//! it is resumed, recovered, dropped or abandoned ([`PendingAction`]), and doing that —
//! abandoning it (its uploads aborted, its snapshot and journal deleted), recovering one
//! published but not recorded, or resuming it (the stored parts checked by
//! `Repo::stored`, the snapshot sent again through `publish`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::publish::state_after;
use super::{part_size, settings, Backup, Outcome, Published, Unpublished};
use crate::config::Subvolume;
use crate::event;
use crate::journal::{self, ChunkProgress, Journal, Pending};
use crate::manifest::Kind;
use crate::metrics::Metrics;
use crate::planner::{plan, Action, Trigger};
use crate::snapshots::SnapName;
use crate::state::SubvolState;
use crate::ts::Ts;

/// What to do with a pending backup.
pub(super) enum PendingAction {
    /// It was published and recorded; only the journal was left.
    Done,
    /// It was published (`current.json` names it) but not recorded.
    Recover,
    Abandon(String),
    Resume,
}

impl Backup<'_> {
    /// Whether a pending backup is resumed, recovered, dropped or abandoned, and why.
    pub(super) fn decide(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        p: &Pending,
        restart: bool,
        trigger: Trigger,
        now: Ts,
    ) -> Result<PendingAction> {
        let b = &p.begin;
        let abandon = |why: String| Ok(PendingAction::Abandon(why));
        if b.subvolume != sv.name {
            return abandon(format!("the journal is of subvolume {:?}", b.subvolume));
        }
        if let Some(k) = &p.publishing {
            if entry.last_manifest.as_deref() == Some(k.as_str()) {
                return Ok(PendingAction::Done);
            }
            let pointer = self.repo()?.pointer(&sv.name)?;
            if pointer.is_some_and(|ptr| &ptr.manifest_key == k) {
                return Ok(PendingAction::Recover);
            }
        }
        if restart {
            return abandon("--restart".into());
        }
        if trigger == Trigger::Full && b.kind == Kind::Incremental {
            return abandon("--full asks for a new full".into());
        }
        let want = settings(self.cfg, part_size(self.cfg)?);
        if b.settings != want {
            return abandon(format!(
                "the settings changed since it began (journal {:?}, config {:?})",
                b.settings, want
            ));
        }
        if self.pending_snapshot(sv, p).is_none_or(|s| !s.is_dir()) {
            return abandon(format!("its snapshot {} is gone", b.snapshot));
        }
        if b.kind == Kind::Incremental {
            if !b.parent.as_deref().is_some_and(|x| Path::new(x).is_dir()) {
                return abandon(format!("its parent snapshot {:?} is gone", b.parent));
            }
            if b.parent_manifest != entry.last_manifest {
                return abandon(format!(
                    "its parent manifest {:?} is no longer the last published one ({:?})",
                    b.parent_manifest, entry.last_manifest
                ));
            }
            let d = plan(
                &self.facts(sv, entry)?,
                &self.cfg.schedule,
                now,
                Trigger::Once,
            );
            if d.action == Action::Run(Kind::Full) {
                return abandon(format!("a new full is due ({})", d.reason));
            }
        }
        Ok(PendingAction::Resume)
    }

    /// The pending backup's snapshot, when the journal names one of ours: exactly
    /// `snapshots.base_dir/<name>__<run_ts>__<kind>`.
    pub(super) fn pending_snapshot(&self, sv: &Subvolume, p: &Pending) -> Option<PathBuf> {
        let ts = Ts::parse(&p.begin.run_ts).ok()?;
        let name = SnapName {
            subvolume: sv.name.clone(),
            ts,
            kind: p.begin.kind,
        };
        let want = self.cfg.snapshots.base_dir.join(name.file_name());
        (Path::new(&p.begin.snapshot) == want).then_some(want)
    }

    /// Gives a pending backup up: aborts its uploads, deletes its snapshot (never the
    /// published parent) and its journal.
    pub(super) fn abandon(&self, sv: &Subvolume, entry: &SubvolState, p: &Pending, reason: &str) {
        event!(
            Warn,
            "resume_abandoned",
            subvolume = sv.name,
            run = p.begin.run_ts,
            reason = reason
        );
        if let Some(repo) = self.repo {
            for (key, id) in p.open_uploads() {
                if let Err(e) = repo.abort_upload(&key, &id) {
                    event!(
                        Warn,
                        "multipart_abort_failed",
                        key = key,
                        error = format!("{e:#}")
                    );
                }
            }
        }
        if let Some(snap) = self.pending_snapshot(sv, p) {
            let is_parent = entry.last_snapshot.as_deref() == Some(&*snap.to_string_lossy());
            if snap.is_dir() && !is_parent {
                match self.btrfs.delete_subvolume(&snap) {
                    Ok(()) => event!(
                        Info,
                        "snapshot_removed",
                        subvolume = sv.name,
                        path = snap.display()
                    ),
                    Err(e) => event!(
                        Error,
                        "snapshot_remove_failed",
                        subvolume = sv.name,
                        path = snap.display(),
                        error = format!("{e:#}")
                    ),
                }
            }
        }
        if let Err(e) = journal::remove(&p.path) {
            event!(Error, "journal_remove_failed", error = format!("{e:#}"));
        }
    }

    /// A backup published by an earlier run that stopped before recording it: the state
    /// is brought up to date from the journal; nothing is sent.
    pub(super) fn recover(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        p: &Pending,
    ) -> Result<Outcome> {
        let key = p
            .publishing
            .clone()
            .ok_or_else(|| anyhow!("internal: recovering a backup that was not published"))?;
        event!(
            Info,
            "backup_recovered",
            subvolume = sv.name,
            manifest = key
        );
        Ok(Outcome::Published(Box::new(Published {
            state: state_after(entry, &p.begin, &key),
            manifest_key: key,
            metrics: Metrics::default(),
            journal: p.path.clone(),
            recovered: true,
            kind: p.begin.kind,
            chunks: Vec::new(),
        })))
    }

    /// Sends the pending backup's snapshot again and uploads what is not stored yet.
    pub(super) fn resume(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        p: &Pending,
    ) -> Result<Outcome, Unpublished> {
        let found = self.repo()?.stored(&p.chunks)?;
        let stored = &found.chunks;
        let parts: usize = stored
            .values()
            .map(|c| match c {
                ChunkProgress::Open { parts, .. } => parts.len(),
                ChunkProgress::Stored { .. } => 0,
            })
            .sum();
        let bytes = journal::stored_bytes(stored);
        event!(
            Info,
            "backup_resumed",
            subvolume = sv.name,
            run = p.begin.run_ts,
            kind = p.begin.kind.as_str(),
            snapshot = p.begin.snapshot,
            chunks_stored = stored
                .values()
                .filter(|c| matches!(c, ChunkProgress::Stored { .. }))
                .count(),
            uploads_open = stored
                .values()
                .filter(|c| matches!(c, ChunkProgress::Open { .. }))
                .count(),
            parts_stored = parts,
            bytes_stored = bytes,
        );
        let mut journal = Journal::reopen(p)?;
        let run_ts = Ts::parse(&p.begin.run_ts)
            .map_err(|e| anyhow!("the journal's run timestamp {:?}: {e}", p.begin.run_ts))?;
        let snap = self
            .pending_snapshot(sv, p)
            .ok_or_else(|| anyhow!("internal: resuming without a snapshot"))?;
        // Abandoned by the caller only on a mismatch (`UploadError::Mismatch`); any other
        // failure keeps it for the next run.
        let parent = p.begin.parent.as_deref().map(Path::new);
        let result = self.upload_and_publish(
            sv,
            entry,
            &p.begin,
            &snap,
            parent,
            run_ts,
            &found,
            &p.sealings,
            &mut journal,
        );
        result.map(|pb| Outcome::Published(Box::new(pb)))
    }
}
