//! Sending one backup and publishing it: the snapshot's `btrfs send` through the upload
//! pipeline (under the progress meter and the stall watchdog), every chunk recorded in
//! the journal, then the manifest and `current.json` (`Repo::publish`). Used by a fresh
//! run and by a resume alike; what happens on a failure is the caller's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::{Backup, Published, StoppedAfter, Unpublished};
use crate::chunker::ChunkDone;
use crate::config::Subvolume;
use crate::event;
use crate::journal::{self, Begin, Journal, PartDone, Record};
use crate::manifest::{ChunkEntry, Kind, Manifest, S3Info, SnapshotRef};
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineConfig, Progress, UploadError};
use crate::progress::{Counted, Meter, Metered, Reporter};
use crate::repo::resume::Stored;
use crate::repo::PublishError;
use crate::state::SubvolState;
use crate::ts::Ts;
use crate::watchdog::{Actions, Limits, Watchdog};

/// The journal sink of the pipeline (also used by the pipeline's resume tests).
pub(crate) struct JournalProgress<'a>(pub(crate) &'a mut Journal);

impl Progress for JournalProgress<'_> {
    fn upload_opened(&mut self, chunk: u64, key: &str, upload_id: &str) -> Result<()> {
        self.0.append(&Record::Upload {
            chunk,
            key: key.into(),
            upload_id: upload_id.into(),
        })
    }
    fn part_stored(&mut self, chunk: u64, part: u32, p: &PartDone) -> Result<()> {
        self.0.append(&Record::Part {
            chunk,
            part,
            size: p.size,
            sha256_through: p.sha256_through.clone(),
            etag: p.etag.clone(),
        })
    }
    fn chunk_sealed(&mut self, chunk: u64, sealing: &crate::age::Sealing) -> Result<()> {
        self.0.append(&Record::Sealed {
            chunk,
            sealing: journal::SealingRecord::of(sealing),
        })
    }
    fn chunk_stored(&mut self, chunk: u64, key: &str, d: &ChunkDone, etag: &str) -> Result<()> {
        self.0.append(&Record::Chunk {
            chunk,
            key: key.into(),
            size: d.len,
            sha256: d.sha256.clone(),
            etag: etag.into(),
        })
    }
}

impl Backup<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn upload_and_publish(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        begin: &Begin,
        snap_path: &Path,
        parent: Option<&Path>,
        run_ts: Ts,
        stored: &Stored,
        sealings: &BTreeMap<u64, journal::SealingRecord>,
        journal: &mut Journal,
    ) -> Result<Published, Unpublished> {
        let repo = self.repo()?;
        let kind = begin.kind;
        let started = Instant::now();
        let retries_before = self.retrier.retries();
        let info = self
            .btrfs
            .show(snap_path)
            .with_context(|| format!("reading the UUID of {}", snap_path.display()))?;
        let pcfg = PipelineConfig {
            chunk_size: begin.settings.chunk_size,
            part_size: begin.settings.part_size,
            concurrency: self.cfg.s3.concurrency,
            chunk_opts: repo.chunk_opts().clone(),
            spool: self.cfg.s3.spool_enabled.then(|| pipeline::Spool {
                dir: self.cfg.global.spool_dir.clone(),
                max_bytes: self.cfg.global.spool_size_bytes,
            }),
            keep_open_on_failure: true,
            encryption: self.encrypt(begin, sealings, &stored.unrecorded)?,
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
            part_size = pcfg.part_size,
            concurrency = pcfg.concurrency,
            buffers = pcfg.max_buffers(),
            spool = pcfg.spool.is_some(),
            send_protocol = begin.send_protocol,
        );
        let compressed = begin.send_protocol >= 2;
        let meter = Meter::new(
            "backup_progress",
            &sv.name,
            self.retrier.clone(),
            self.expected_size(sv, entry, kind),
        );
        meter.show_cap(repo.throttles().upload);
        let reporter = Reporter::start(
            meter.clone(),
            Duration::from_secs(self.cfg.global.progress_interval_seconds),
        );
        let watchdog = Watchdog::start(meter.clone(), Limits::from_env(), Actions::process());
        let mut send = self.btrfs.send(snap_path, parent, compressed)?;
        let key_for = |i| repo.layout.chunk_key(&sv.name, kind, run_ts, i);
        let uploaded = pipeline::upload_stream(
            &mut Counted {
                inner: &mut send,
                meter: &meter,
            },
            repo.chunk_writer(),
            self.retrier.clone(),
            &pcfg,
            &key_for,
            &stored.chunks,
            &mut Metered {
                inner: &mut JournalProgress(journal),
                meter: &meter,
            },
        );
        drop(reporter);
        // A stall stopped the run (as SIGTERM would): that is the error to name.
        let stalled = watchdog.finish();
        let outcome = match uploaded {
            Ok(o) => {
                send.finish()?;
                o
            }
            Err(e) => {
                send.kill();
                let stopped = StoppedAfter {
                    uploaded_bytes: meter.uploaded_bytes(),
                    retries: meter.retries(),
                    upload_time: meter.upload_time(),
                };
                let e = match stalled {
                    Some(s) => UploadError::Other(anyhow!(s)),
                    // A request the stop cut (CreateMultipartUpload says "Agent is shut
                    // down"): what stopped the run is the signal.
                    None if self.retrier.cancelled()
                        && !format!("{e:#}").contains("interrupted by a signal") =>
                    {
                        e.context("interrupted by a signal")
                    }
                    None => e,
                };
                return Err(Unpublished {
                    cause: e.context(stopped),
                    stopped: Some(stopped),
                });
            }
        };
        if self.retrier.cancelled() {
            return Err(stalled
                .map_or_else(
                    || anyhow!("interrupted by a signal; nothing published"),
                    |s| anyhow!(s),
                )
                .into());
        }
        let snap_name = snap_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest_key = repo.layout.manifest_key(&sv.name, kind, run_ts);
        let manifest = Manifest {
            version: 1,
            subvolume: sv.name.clone(),
            kind,
            created_at: run_ts.to_string(),
            snapshot: SnapshotRef {
                name: snap_name,
                path: snap_path.display().to_string(),
                uuid: info.uuid,
                parent_uuid: info.parent_uuid,
                extra: Default::default(),
            },
            parent_manifest: begin.parent_manifest.clone(),
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
            chunk_size: begin.settings.chunk_size,
            s3: S3Info {
                storage_class: begin.settings.storage_class.clone(),
                extra: Default::default(),
            },
            // Encrypted: no plaintext-derived value in the clear (the sealed part has
            // what restore checks the plaintext against).
            stream_sha256: pcfg
                .encryption
                .is_none()
                .then(|| outcome.summary.sha256.clone()),
            send_protocol: Some(begin.send_protocol),
            compressed_data: Some(compressed),
            encryption: match &pcfg.encryption {
                None => None,
                Some(e) => {
                    let sealed: Vec<_> = outcome
                        .chunks
                        .iter()
                        .map(|c| {
                            c.sealed
                                .clone()
                                .ok_or_else(|| anyhow!("internal: chunk {} not sealed", c.key))
                        })
                        .collect::<Result<_>>()?;
                    Some(crate::encryption::seal(
                        &e.recipients,
                        &sealed,
                        outcome.stream_bytes,
                    )?)
                }
            },
            extra: Default::default(),
        };
        journal.append(&Record::Publishing {
            manifest_key: manifest_key.to_string(),
        })?;
        repo.publish(&manifest_key, &manifest)
            .map_err(|e| match e {
                PublishError::Request(e) => UploadError::Store(e),
                PublishError::TooLarge(e) => UploadError::Other(e),
            })
            .map_err(|cause| Unpublished {
                cause,
                stopped: None,
            })?;
        let metrics = Metrics {
            bytes: outcome.summary.total_bytes,
            elapsed: started.elapsed(),
            chunks: outcome.chunks.len() as u64,
            parts: outcome.parts,
            retries: self.retrier.retries() - retries_before,
            uploaded_bytes: outcome.uploaded_bytes,
            resumed_bytes: outcome.resumed_bytes,
            compressed_data: compressed,
            first_new_byte: outcome.first_new_byte,
            upload_time: outcome.upload_time,
        };
        Ok(Published {
            state: state_after(entry, begin, &manifest_key),
            manifest_key: manifest_key.into_string(),
            metrics,
            journal: journal.path().to_path_buf(),
            recovered: false,
            kind,
            chunks: manifest
                .chunks
                .iter()
                .map(|c| (c.key.clone(), c.sha256.clone()))
                .collect(),
        })
    }

    /// The pipeline's encryption for a backup that began with `begin`'s settings (the
    /// journal's recipients on a resume), with the sealings an interrupted run kept.
    fn encrypt(
        &self,
        begin: &Begin,
        sealings: &BTreeMap<u64, journal::SealingRecord>,
        unrecorded: &BTreeMap<u64, BTreeMap<u32, crate::store::ListedPart>>,
    ) -> Result<Option<pipeline::Encrypt>> {
        let Some(recipients) = &begin.settings.encryption else {
            return Ok(None);
        };
        let recipients = crate::age::parse_recipient_list(recipients)
            .map_err(|e| anyhow!("the backup's encryption recipients{e}"))?;
        let mut resumed = BTreeMap::new();
        for (i, r) in sealings {
            let s = r
                .sealing()
                .map_err(|e| anyhow!("the resume journal's age sealing of chunk {i}: {e}"))?;
            resumed.insert(*i, s);
        }
        Ok(Some(pipeline::Encrypt {
            recipients,
            resumed,
            unrecorded: unrecorded.clone(),
            checksum: self.cfg.s3.checksum,
        }))
    }
}

/// The state entry once the backup `begin` describes is published as `manifest_key`.
pub(super) fn state_after(entry: &SubvolState, begin: &Begin, manifest_key: &str) -> SubvolState {
    SubvolState {
        last_snapshot: Some(begin.snapshot.clone()),
        last_manifest: Some(manifest_key.to_string()),
        last_full_at: match begin.kind {
            Kind::Full => Some(begin.run_ts.clone()),
            Kind::Incremental => begin.last_full_at.clone(),
        },
        extra: entry.extra.clone(),
    }
}
