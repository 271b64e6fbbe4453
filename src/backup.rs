//! One `backup` run: for each selected subvolume, gather facts → plan → snapshot →
//! `btrfs send` through the pipeline → manifest → `current.json` → state → retention.
//! A failing subvolume does not stop the others; it deletes the snapshot it made and
//! publishes nothing. Invariant: `current.json` is PUT only after every chunk and the
//! manifest it names are stored, and the state only after `current.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::btrfs::Btrfs;
use crate::config::{Config, Subvolume};
use crate::event;
use crate::manifest::{ChunkEntry, Kind, Layout, Manifest, Pointer, S3Info, SnapshotRef};
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineConfig};
use crate::planner::{Action, Decision, Facts};
use crate::retry::Retrier;
use crate::snapshots::{self, SnapKind, SnapName};
use crate::state::{State, SubvolState};
use crate::store::{Body, ObjectStore, PutOptions};
use crate::ts::Ts;

/// What a backup run works with. `store` is `None` with `--no-s3`.
pub struct Backup<'a> {
    pub cfg: &'a Config,
    pub btrfs: &'a dyn Btrfs,
    pub store: Option<Arc<dyn ObjectStore>>,
    pub retrier: Arc<Retrier>,
    pub layout: Layout,
}

/// The result of one subvolume in a run.
#[derive(Debug)]
pub enum Outcome {
    Skipped(Decision),
    /// `--no-s3`: a snapshot was made and retention applied; nothing uploaded.
    SnapshotOnly(PathBuf),
    Published(Box<Published>),
}

#[derive(Debug)]
pub struct Published {
    pub state: SubvolState,
    pub manifest_key: String,
    pub metrics: Metrics,
}

fn chunk_opts(cfg: &Config) -> PutOptions {
    PutOptions {
        storage_class: cfg.s3.storage_class_chunks.clone(),
        sse: cfg.s3.sse.clone(),
        content_type: "application/octet-stream",
    }
}

fn json_opts(cfg: &Config) -> PutOptions {
    PutOptions {
        storage_class: cfg.s3.storage_class_manifest.clone(),
        sse: cfg.s3.sse.clone(),
        content_type: "application/json",
    }
}

impl Backup<'_> {
    /// What the planner needs; consults S3 only for the parent manifest.
    pub fn facts(&self, sv: &Subvolume, entry: &SubvolState) -> Result<Facts> {
        let last_snapshot_at = entry
            .last_snapshot
            .as_deref()
            .and_then(|p| SnapName::from_path(&sv.name, Path::new(p)))
            .map(|s| s.ts);
        let parent_on_disk = entry
            .last_snapshot
            .as_deref()
            .is_some_and(|p| Path::new(p).is_dir());
        let parent_manifest_in_s3 = match (&self.store, &entry.last_manifest) {
            (Some(store), Some(key)) => self
                .retrier
                .run(|| store.head(key))
                .with_context(|| format!("checking the parent manifest {key} in S3"))?
                .is_some(),
            _ => true,
        };
        Ok(Facts {
            last_full_at: entry.last_full(),
            last_snapshot_at,
            has_parent_manifest: entry.last_manifest.is_some(),
            parent_on_disk,
            parent_manifest_in_s3,
        })
    }

    /// Aborts multipart uploads a killed run left under this subvolume's prefix (we hold
    /// the lock, so none of them is live).
    pub fn sweep_stale_uploads(&self, sv: &Subvolume) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let prefix = self.layout.subvolume_prefix(&sv.name);
        let open = match self.retrier.run(|| store.list_multipart_uploads(&prefix)) {
            Ok(open) => open,
            // Hygiene only: a service without ListMultipartUploads (or a policy without
            // s3:ListBucketMultipartUploads) must not block backups.
            Err(e) if !e.is_transient() => {
                event!(
                    Warn,
                    "stale_upload_sweep_skipped",
                    prefix = prefix,
                    error = e
                );
                return Ok(());
            }
            Err(e) => {
                return Err(anyhow::Error::from(e))
                    .with_context(|| format!("listing open multipart uploads under {prefix}"))
            }
        };
        for u in open {
            self.retrier
                .run(|| store.abort_multipart(&u.key, &u.upload_id))
                .with_context(|| format!("aborting the stale multipart upload of {}", u.key))?;
            event!(
                Info,
                "stale_upload_aborted",
                key = u.key,
                upload_id = u.upload_id
            );
        }
        Ok(())
    }

    /// Backs up one subvolume as decided; on failure deletes the snapshot it made.
    pub fn run_one(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        decision: &Decision,
        run_ts: Ts,
    ) -> Result<Outcome> {
        let kind = match decision.action {
            Action::Skip => return Ok(Outcome::Skipped(decision.clone())),
            Action::Full => Kind::Full,
            Action::Incremental => Kind::Incremental,
        };
        let snap = SnapName {
            subvolume: sv.name.clone(),
            ts: run_ts,
            kind: match kind {
                Kind::Full => SnapKind::Full,
                Kind::Incremental => SnapKind::Inc,
            },
        };
        let base = &self.cfg.snapshots.base_dir;
        std::fs::create_dir_all(base)
            .with_context(|| format!("creating snapshots.base_dir {}", base.display()))?;
        let snap_path = base.join(snap.file_name());
        self.btrfs
            .snapshot_readonly(&sv.path, &snap_path)
            .with_context(|| {
                format!(
                    "creating snapshot {} of {} (snapshots.base_dir must be on the same btrfs filesystem)",
                    snap_path.display(),
                    sv.path.display()
                )
            })?;
        event!(
            Info,
            "snapshot_created",
            subvolume = sv.name,
            path = snap_path.display(),
            kind = kind.as_str()
        );

        let Some(store) = self.store.clone() else {
            self.prune(sv, entry.last_snapshot.as_deref().map(Path::new))?;
            return Ok(Outcome::SnapshotOnly(snap_path));
        };
        let parent = match kind {
            Kind::Full => None,
            Kind::Incremental => entry.last_snapshot.as_deref().map(PathBuf::from),
        };
        match self.upload_and_publish(
            store,
            sv,
            entry,
            kind,
            &snap_path,
            &snap,
            parent.as_deref(),
            run_ts,
        ) {
            Ok(p) => {
                // Published: the new snapshot is the parent of the next incremental.
                Ok(Outcome::Published(Box::new(p)))
            }
            Err(e) => {
                match self.btrfs.delete_subvolume(&snap_path) {
                    Ok(()) => event!(
                        Info,
                        "snapshot_removed_after_failure",
                        subvolume = sv.name,
                        path = snap_path.display()
                    ),
                    Err(d) => event!(
                        Error,
                        "snapshot_remove_failed",
                        subvolume = sv.name,
                        path = snap_path.display(),
                        error = format!("{d:#}")
                    ),
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_and_publish(
        &self,
        store: Arc<dyn ObjectStore>,
        sv: &Subvolume,
        entry: &SubvolState,
        kind: Kind,
        snap_path: &Path,
        snap: &SnapName,
        parent: Option<&Path>,
        run_ts: Ts,
    ) -> Result<Published> {
        let started = Instant::now();
        let retries_before = self.retrier.retries();
        let info = self
            .btrfs
            .show(snap_path)
            .with_context(|| format!("reading the UUID of {}", snap_path.display()))?;
        let part_size = pipeline::effective_part_size(
            self.cfg.s3.part_size_bytes,
            self.cfg.s3.chunk_size_bytes,
        )
        .ok_or_else(|| {
            anyhow!(
                "s3.chunk_size_bytes = {} needs more than 10,000 parts of 5 GiB; lower it",
                self.cfg.s3.chunk_size_bytes
            )
        })?;
        let pcfg = PipelineConfig {
            chunk_size: self.cfg.s3.chunk_size_bytes,
            part_size,
            concurrency: self.cfg.s3.concurrency,
            chunk_opts: chunk_opts(self.cfg),
            spool: self.cfg.s3.spool_enabled.then(|| pipeline::Spool {
                dir: self.cfg.global.spool_dir.clone(),
                max_bytes: self.cfg.global.spool_size_bytes,
            }),
        };
        event!(
            Info,
            "send_start",
            subvolume = sv.name,
            kind = kind.as_str(),
            snapshot = snap_path.display(),
            parent = parent
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
            part_size = part_size,
            concurrency = pcfg.concurrency,
            buffers = pcfg.max_buffers(),
            spool = pcfg.spool.is_some(),
        );
        let mut send = self.btrfs.send(snap_path, parent)?;
        let key_for = |i| self.layout.chunk_key(&sv.name, kind, run_ts, i);
        let outcome = match pipeline::upload_stream(
            &mut send,
            store.clone(),
            self.retrier.clone(),
            &pcfg,
            &key_for,
        ) {
            Ok(o) => {
                send.finish()?;
                o
            }
            Err(e) => {
                send.kill();
                return Err(e);
            }
        };
        if self.retrier.cancelled() {
            return Err(anyhow!("interrupted by a signal; nothing published"));
        }
        let manifest_key = self.layout.manifest_key(&sv.name, kind, run_ts);
        let manifest = Manifest {
            version: 1,
            subvolume: sv.name.clone(),
            kind,
            created_at: run_ts.to_string(),
            snapshot: SnapshotRef {
                name: snap.file_name(),
                path: snap_path.display().to_string(),
                uuid: info.uuid,
                parent_uuid: info.parent_uuid,
                extra: Default::default(),
            },
            parent_manifest: match kind {
                Kind::Full => None,
                Kind::Incremental => entry.last_manifest.clone(),
            },
            chunks: outcome
                .chunks
                .iter()
                .map(|c| ChunkEntry {
                    key: c.key.clone(),
                    size: c.size,
                    sha256: c.sha256.clone(),
                    etag: c.etag.clone(),
                    extra: Default::default(),
                })
                .collect(),
            total_bytes: outcome.summary.total_bytes,
            chunk_size: self.cfg.s3.chunk_size_bytes,
            s3: S3Info {
                storage_class: self.cfg.s3.storage_class_chunks.clone(),
                extra: Default::default(),
            },
            stream_sha256: Some(outcome.summary.sha256.clone()),
            extra: Default::default(),
        };
        publish(
            store.as_ref(),
            &self.retrier,
            &json_opts(self.cfg),
            &manifest_key,
            &manifest,
            &self.layout.pointer_key(&sv.name),
        )?;
        let state = SubvolState {
            last_snapshot: Some(snap_path.display().to_string()),
            last_manifest: Some(manifest_key.clone()),
            last_full_at: match kind {
                Kind::Full => Some(run_ts.to_string()),
                Kind::Incremental => entry.last_full_at.clone(),
            },
            extra: entry.extra.clone(),
        };
        let metrics = Metrics {
            bytes: outcome.summary.total_bytes,
            elapsed: started.elapsed(),
            chunks: outcome.chunks.len() as u64,
            parts: outcome.parts,
            retries: self.retrier.retries() - retries_before,
        };
        Ok(Published {
            state,
            manifest_key,
            metrics,
        })
    }

    /// Retention for one subvolume, always keeping `keep` (the published parent).
    pub fn prune(&self, sv: &Subvolume, keep: Option<&Path>) -> Result<Vec<PathBuf>> {
        snapshots::prune(
            self.btrfs,
            &self.cfg.snapshots.base_dir,
            &sv.name,
            self.cfg.snapshots.retain,
            keep,
        )
    }
}

/// Publication order: the manifest, then `current.json` as the final PUT.
pub fn publish(
    store: &dyn ObjectStore,
    retrier: &Retrier,
    opts: &PutOptions,
    manifest_key: &str,
    manifest: &Manifest,
    pointer_key: &str,
) -> Result<()> {
    let body = manifest.to_json();
    retrier
        .run(|| store.put_object(manifest_key, Body::Bytes(&body), opts))
        .with_context(|| format!("uploading manifest {manifest_key}"))?;
    let pointer = Pointer {
        manifest_key: manifest_key.to_string(),
        kind: manifest.kind,
        created_at: manifest.created_at.clone(),
        extra: Default::default(),
    };
    let body = pointer.to_json();
    retrier
        .run(|| store.put_object(pointer_key, Body::Bytes(&body), opts))
        .with_context(|| format!("publishing {pointer_key}"))?;
    Ok(())
}

/// A run timestamp later than every snapshot of the selected subvolumes: two runs in
/// the same second wait for the next second instead of colliding.
pub fn run_timestamp(cfg: &Config, selected: &[&Subvolume], now: &dyn Fn() -> Ts) -> Result<Ts> {
    let mut newest: Option<Ts> = None;
    for sv in selected {
        for s in snapshots::list(&cfg.snapshots.base_dir, &sv.name)? {
            newest = newest.max(Some(s.ts));
        }
    }
    let mut ts = now();
    if let Some(n) = newest {
        if n >= ts {
            if n.unix() - ts.unix() > 5 {
                return Err(anyhow!(
                    "snapshot {} is newer than the clock ({}); fix the system clock",
                    n,
                    ts
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(
                ((n.unix() - ts.unix() + 1) * 1000) as u64,
            ));
            ts = now();
        }
        if n >= ts {
            return Err(anyhow!(
                "a snapshot for {n} already exists; run again in a second"
            ));
        }
    }
    Ok(ts)
}

/// Records a published backup in the state and saves it atomically.
/// Records a published backup: the subvolume's entry and the run's time, in one atomic
/// write. This is the only place a backup run changes the state file (the contract: the
/// state changes only after a publish), so a run that published nothing leaves it as it
/// was.
pub fn record(
    state: &mut State,
    state_path: &Path,
    name: &str,
    entry: SubvolState,
    run_ts: Ts,
) -> Result<()> {
    state.subvolumes.insert(name.to_string(), entry);
    state.last_run_at = Some(run_ts.to_string());
    state.save(state_path)
}

#[cfg(test)]
mod tests;
