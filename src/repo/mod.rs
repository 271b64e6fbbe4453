//! The repository: one bucket prefix seen as backups, and the engines' one gateway to
//! it. It owns the key layout, the object store and the retry policy every request runs
//! under (both private: no method hands them out), reads manifests and pointers (always
//! checked against the layout, see `chain`), and publishes (manifest, then
//! `current.json`). What the engines do in the bucket is a method here or of a type this
//! module returns: the resume checks of stored parts (`resume`), the stale-upload sweep,
//! archive readiness (`archive`), the verified download (`download`, `decrypt`), the
//! upload pipeline's writes (`writer::ChunkWriter`), prune's execution (`prune`) and
//! Object Lock (`object_lock`). Only the wiring that builds a `Repo` (`app`, `cmd/`)
//! names the store; `contrib/check-layers.py` checks that nothing else does.

pub mod archive;
pub mod catalog;
pub mod chain;
pub mod chain_check;
pub mod decrypt;
pub mod download;
pub mod object_lock;
pub mod prune;
pub mod prune_all;
pub mod resume;
pub mod versions;
pub mod writer;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::manifest::{ChunkEntry, Layout, Manifest, ManifestKey, ObjectKey, Pointer};
use crate::retry::Retrier;
use crate::store::{Body, ObjectMeta, ObjectStore, OpenUpload, PutOptions, Retention, StoreResult};

pub use chain::Chain;

pub struct Repo {
    pub layout: Layout,
    store: Arc<dyn ObjectStore>,
    retrier: Arc<Retrier>,
    chunk_opts: PutOptions,
    /// Manifests and `current.json` (which is never locked).
    json_opts: PutOptions,
    /// `[object_lock]`: the retention of every chunk and manifest this run writes.
    lock: Option<Retention>,
}

impl Repo {
    pub fn new(cfg: &Config, store: Arc<dyn ObjectStore>, retrier: Arc<Retrier>) -> Repo {
        Repo {
            layout: Layout::new(&cfg.s3.prefix),
            store,
            retrier,
            chunk_opts: PutOptions {
                storage_class: cfg.s3.storage_class_chunks.as_str().into(),
                sse: cfg.s3.sse,
                content_type: "application/octet-stream",
                kms_key_id: cfg.s3.sse_kms_key_id.clone(),
                lock: None,
            },
            lock: None,
            json_opts: PutOptions {
                storage_class: cfg.s3.storage_class_manifest.as_str().into(),
                sse: cfg.s3.sse,
                content_type: "application/json",
                kms_key_id: cfg.s3.sse_kms_key_id.clone(),
                lock: None,
            },
        }
        .with_lock(object_lock::retention(cfg, crate::ts::Ts::now()))
    }

    /// Every chunk and manifest written through this repository gets `lock`.
    pub fn with_lock(mut self, lock: Option<Retention>) -> Repo {
        self.chunk_opts.lock = lock.clone();
        self.lock = lock;
        self
    }

    /// The retention of what this run writes (`None` without `[object_lock]`).
    pub fn lock(&self) -> Option<&Retention> {
        self.lock.as_ref()
    }

    /// The configured bucket over S3.
    pub fn open(cfg: &Config, retrier: Arc<Retrier>) -> Result<Repo> {
        let store = crate::store::s3::open(cfg, retrier.cancel_flag())?;
        Ok(Repo::new(cfg, store, retrier))
    }

    /// From now on, requests of this repository's retrier ride out a network outage for
    /// up to `s3.outage_patience_seconds`, probing the store (backup and restore; the
    /// read-only commands keep the bounded retries).
    pub fn ride_outages(&self, cfg: &Config) {
        let store = self.store.clone();
        self.retrier.outage().enable(
            std::time::Duration::from_secs(cfg.s3.outage_patience_seconds),
            Arc::new(move || store.probe()),
        );
    }

    /// The store, for the modules of `repo/` only.
    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The retry policy, for the modules of `repo/` only.
    fn retrier(&self) -> &Arc<Retrier> {
        &self.retrier
    }

    /// Whether the run was stopped (a signal, the watchdog): the retrier's cancel flag.
    pub fn cancelled(&self) -> bool {
        self.retrier.cancelled()
    }

    /// The run's rate caps (upload and download), for the progress line.
    pub fn throttles(&self) -> crate::ratelimit::Throttles {
        self.store.throttles()
    }

    /// The upload pipeline's handle: chunk and part writes, nothing else.
    pub fn chunk_writer(&self) -> writer::ChunkWriter {
        writer::ChunkWriter::new(self.store.clone())
    }

    /// HEAD of an object of the repository (retried); `None` when it is not there.
    /// The caller names the object in the error's context.
    pub fn head(&self, key: &impl ObjectKey) -> StoreResult<Option<ObjectMeta>> {
        self.retrier.run(|| self.store.head(key.as_str()))
    }

    /// HeadBucket (retried): whether the bucket answers at all (`backup --dry-run`).
    pub fn head_bucket(&self) -> StoreResult<()> {
        self.retrier.run(|| self.store.head_bucket())
    }

    /// One HEAD per chunk (present, size, class, restore status): see [`archive::survey`].
    pub fn survey(&self, chunks: &[archive::ChunkRef<'_>]) -> Result<Vec<archive::ChunkState>> {
        archive::survey(self.store.as_ref(), &self.retrier, chunks)
    }

    /// Requests the archive restores `surveyed` needs; the keys still pending
    /// ([`archive::request`]).
    pub fn request_restores(
        &self,
        surveyed: &[archive::ChunkState],
        tier: &str,
    ) -> Result<Vec<String>> {
        archive::request(self.store.as_ref(), &self.retrier, surveyed, tier)
    }

    /// Survey, then request ([`archive::request_all`]).
    pub fn request_all_restores(
        &self,
        chunks: &[archive::ChunkRef<'_>],
        tier: &str,
    ) -> Result<Vec<String>> {
        archive::request_all(self.store.as_ref(), &self.retrier, chunks, tier)
    }

    /// Waits until every pending archive restore is done, up to `timeout`
    /// ([`archive::wait_all`]); the time waited.
    pub fn wait_restored(
        &self,
        pending: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration> {
        archive::wait_all(
            self.store.as_ref(),
            &self.retrier,
            pending,
            timeout,
            &std::thread::sleep,
            &std::time::Instant::now,
        )
    }

    /// The verified download of `chunks` into `out` ([`download::stream_chunks`]).
    pub fn stream_chunks(
        &self,
        chunks: &[ChunkEntry],
        stream_sha256: Option<&str>,
        piece_size: u64,
        concurrency: usize,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, download::DownloadError> {
        download::stream_chunks(
            self.store.clone(),
            self.retrier.clone(),
            chunks,
            stream_sha256,
            piece_size,
            concurrency,
            out,
        )
    }

    /// The verified download of encrypted `chunks`, decrypted into `out`
    /// ([`decrypt::stream_decrypted`]).
    #[allow(clippy::too_many_arguments)]
    pub fn stream_decrypted(
        &self,
        chunks: &[ChunkEntry],
        sealed: &crate::manifest::SealedPart,
        identities: &[crate::age::Identity],
        piece_size: u64,
        concurrency: usize,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, download::DownloadError> {
        decrypt::stream_decrypted(
            self.store.clone(),
            self.retrier.clone(),
            chunks,
            sealed,
            identities,
            piece_size,
            concurrency,
            out,
        )
    }

    /// Headers of chunk objects (storage class, SSE).
    pub fn chunk_opts(&self) -> &PutOptions {
        &self.chunk_opts
    }

    /// The key of the manifest to restore or verify: `manifest_key` (which must lie under
    /// the subvolume's prefix), else what `current.json` names.
    pub fn start_key(
        &self,
        subvolume: &str,
        manifest_key: Option<&str>,
    ) -> Result<ManifestKey, chain::ChainError> {
        chain::start_key(
            self.store.as_ref(),
            &self.retrier,
            &self.layout,
            subvolume,
            manifest_key,
        )
    }

    /// `key`, read from the state file or a journal, as a manifest key of `subvolume`;
    /// one outside its prefix is the damage chain resolution reports for it
    /// ([`chain::not_owned`], the same text).
    pub fn manifest_key_of(
        &self,
        subvolume: &str,
        key: &str,
    ) -> Result<ManifestKey, chain::ChainError> {
        self.layout
            .owned_manifest_key(subvolume, key)
            .ok_or_else(|| chain::not_owned(&self.layout, subvolume, key).into())
    }

    /// The checked chain from `key` back to its full, oldest first.
    pub fn chain(&self, subvolume: &str, key: &ManifestKey) -> Result<Chain, chain::ChainError> {
        chain::resolve(
            self.store.as_ref(),
            &self.retrier,
            &self.layout,
            subvolume,
            key,
        )
    }

    /// What `current.json` of `subvolume` names, if it exists (checked like a chain; an
    /// unusable pointer is [`chain::ChainError::Damaged`]).
    pub fn pointer(&self, subvolume: &str) -> Result<Option<Pointer>, chain::ChainError> {
        let key = self.layout.pointer_key(subvolume);
        let Some(p): Option<Pointer> = chain::fetch_json(
            self.store.as_ref(),
            &self.retrier,
            &key,
            chain::Small::Pointer,
        )?
        else {
            return Ok(None);
        };
        if !self.layout.owns(subvolume, &p.manifest_key) {
            return Err(chain::ChainError::Damaged(chain::Damaged(format!(
                "pointer {key}: field manifest_key = {:?} is not a key under {}",
                p.manifest_key,
                self.layout.subvolume_prefix(subvolume)
            ))));
        }
        Ok(Some(p))
    }

    /// Whether the object `key` exists (HEAD). "No" only when the bucket itself answers
    /// (HeadBucket): a 404 from a missing bucket or from an endpoint that is not S3 is an
    /// error with its real cause, never a missing object (which would plan a full).
    pub fn exists(&self, key: &impl ObjectKey) -> Result<bool> {
        if self
            .retrier
            .run(|| self.store.head(key.as_str()))
            .with_context(|| format!("checking {key} in S3"))?
            .is_some()
        {
            return Ok(true);
        }
        self.retrier
            .run(|| self.store.head_bucket())
            .with_context(|| format!("{key} was not found, and the bucket does not answer"))?;
        Ok(false)
    }

    /// Publication order: the manifest (locked with `[object_lock]`), then `current.json`
    /// (never locked: it is overwritten) as the final PUT.
    /// A manifest larger than readers accept ([`chain::MAX_MANIFEST_BYTES`]) is refused
    /// before anything is written: nothing is published that a restore could not read
    /// (within that many bytes, what this tool writes holds fewer JSON values than
    /// [`chain::MAX_MANIFEST_VALUES`]: see the test).
    pub fn publish(
        &self,
        manifest_key: &ManifestKey,
        manifest: &Manifest,
    ) -> Result<(), PublishError> {
        let body = manifest.to_json();
        if body.len() as u64 > chain::MAX_MANIFEST_BYTES {
            return Err(PublishError::TooLarge(anyhow::anyhow!(
                "manifest {manifest_key} would be {} bytes for {} chunks, more than the {} \
                 bytes ({}) a manifest may have; nothing is published: raise \
                 s3.chunk_size_bytes so a backup has fewer chunks",
                body.len(),
                manifest.chunks.len(),
                chain::MAX_MANIFEST_BYTES,
                crate::store::human_bytes(chain::MAX_MANIFEST_BYTES)
            )));
        }
        let manifest_opts = PutOptions {
            lock: self.lock.clone(),
            ..self.json_opts.clone()
        };
        self.retrier
            .run(|| {
                self.store
                    .put_object(manifest_key, Body::Bytes(&body), &manifest_opts)
            })
            .map_err(|e| {
                PublishError::Request(
                    anyhow::Error::from(e).context(format!("uploading manifest {manifest_key}")),
                )
            })?;
        crate::failpoint::hit("between_manifest_and_pointer");
        let pointer = Pointer {
            manifest_key: manifest_key.as_str().to_string(),
            kind: manifest.kind,
            created_at: manifest.created_at.clone(),
            extra: Default::default(),
        };
        let body = pointer.to_json();
        let pointer_key = self.layout.pointer_key(&manifest.subvolume);
        self.retrier
            .run(|| {
                self.store
                    .put_object(&pointer_key, Body::Bytes(&body), &self.json_opts)
            })
            .map_err(|e| {
                PublishError::Request(
                    anyhow::Error::from(e).context(format!("publishing {pointer_key}")),
                )
            })?;
        Ok(())
    }

    /// Open multipart uploads under the subvolume's prefix.
    pub fn open_uploads(&self, subvolume: &str) -> StoreResult<Vec<OpenUpload>> {
        let prefix = self.layout.subvolume_prefix(subvolume);
        self.retrier
            .run(|| self.store.list_multipart_uploads(&prefix))
    }

    /// Aborts one multipart upload (an upload already gone is fine).
    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        self.retrier
            .run(|| self.store.abort_multipart(key, upload_id))
            .with_context(|| format!("aborting the multipart upload {upload_id} of {key}"))
    }
}

/// Why [`Repo::publish`] did not publish, decided where it is known.
#[derive(Debug)]
pub enum PublishError {
    /// The manifest or pointer PUT failed after its retries: a resume publishes again.
    Request(anyhow::Error),
    /// The manifest is larger than readers accept: nothing was written.
    TooLarge(anyhow::Error),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Request(e) | PublishError::TooLarge(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessEnv;
    use crate::manifest::{ChunkEntry, Kind, S3Info, SnapshotRef};
    use crate::store::memory::MemoryStore;
    use crate::ts::Ts;

    fn repo(store: Arc<MemoryStore>) -> Repo {
        let cfg = Config::parse(
            "[subvolumes]\npaths = [\"/srv/home-user\"]\n[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"backups/hostname\"\n",
            &ProcessEnv,
        )
        .unwrap();
        Repo::new(&cfg, store, Arc::new(crate::testing::retrier()))
    }

    fn manifest(repo: &Repo, chunks: u64, chunk_size: u64, pad: usize) -> (ManifestKey, Manifest) {
        let ts = Ts::from_unix(1_735_696_800);
        let sv = "home-user";
        let key = repo.layout.manifest_key(sv, Kind::Full, ts);
        let m = Manifest {
            version: 1,
            subvolume: sv.into(),
            kind: Kind::Full,
            created_at: ts.to_string(),
            snapshot: SnapshotRef {
                name: format!("{sv}__{ts}__full"),
                path: format!("/srv/snapshots/{sv}__{ts}__full"),
                uuid: Some("0".repeat(36)),
                parent_uuid: None,
                extra: Default::default(),
            },
            parent_manifest: None,
            chunks: (0..chunks)
                .map(|i| ChunkEntry {
                    key: format!(
                        "{}{}",
                        repo.layout.chunk_key(sv, Kind::Full, ts, i),
                        "x".repeat(pad)
                    ),
                    size: chunk_size,
                    sha256: "0".repeat(64),
                    etag: Some(format!("\"{}-4\"", "0".repeat(32))),
                    extra: Default::default(),
                })
                .collect(),
            total_bytes: chunks * chunk_size,
            chunk_size,
            s3: S3Info {
                storage_class: "DEEP_ARCHIVE".into(),
                extra: Default::default(),
            },
            stream_sha256: Some("0".repeat(64)),
            send_protocol: Some(2),
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        };
        (key, m)
    }

    /// The manifest cap holds a 5 TiB full in 32 MiB chunks (163,840 of them) with
    /// room to spare; a manifest over it is refused before anything is written, so no
    /// published backup is one a restore would refuse to read.
    #[test]
    fn publish_writes_only_manifests_a_reader_accepts() {
        let store = Arc::new(MemoryStore::new());
        let r = repo(store.clone());
        let (key, m) = manifest(&r, (5u64 << 40) / (32 << 20), 32 << 20, 0);
        let len = m.to_json().len() as u64;
        assert!(len < chain::MAX_MANIFEST_BYTES * 3 / 4, "{len}");
        r.publish(&key, &m).unwrap();
        let back = r.chain("home-user", &key).unwrap();
        assert_eq!(back.chunk_count(), 163_840);

        let store = Arc::new(MemoryStore::new());
        let r = repo(store.clone());
        // Chunk keys padded to about 1,000 bytes: 70,000 of them pass the cap.
        let (key, m) = manifest(&r, 70_000, 1 << 20, 920);
        let e = r.publish(&key, &m).unwrap_err().to_string();
        assert!(
            e.contains(key.as_str()) && e.contains("70000 chunks") && e.contains("64 MiB"),
            "{e}"
        );
        assert!(e.contains("raise s3.chunk_size_bytes"), "{e}");
        assert!(store.keys().is_empty(), "{:?}", store.keys());

        // The densest manifest this tool writes (the shortest keys: no prefix, a
        // one-letter subvolume; no ETags; 1 MiB chunks) holds fewer JSON values at the
        // byte cap than a reader takes, so the byte cap is the only one publish needs.
        let (_, mut m) = manifest(&r, 100_000, 1 << 20, 0);
        for (i, c) in m.chunks.iter_mut().enumerate() {
            c.key = format!("subvol/d/full/chunk-20250101T020000Z-{i}.bin");
            c.etag = None;
        }
        let body = m.to_json();
        let at_cap = crate::manifest::json_values(&body) as f64 * chain::MAX_MANIFEST_BYTES as f64
            / body.len() as f64;
        assert!(at_cap < chain::MAX_MANIFEST_VALUES as f64 * 0.8, "{at_cap}");
    }

    /// What a resume finds: parts the journal records and the bucket lists alike are
    /// kept; parts the bucket lists that the journal does not record (or records with
    /// another size or ETag) are reported with their listed checksum, for an encrypted
    /// resume to compare before it sends such a part again.
    #[test]
    fn stored_reports_the_parts_the_journal_does_not_record() {
        use crate::journal::{ChunkProgress, PartDone};
        use crate::store::{Body, ObjectStore};
        use std::collections::BTreeMap;
        let store = Arc::new(MemoryStore::new());
        let r = repo(store.clone());
        let key = "backups/hostname/subvol/home-user/full/chunk-20250101T020000Z-0.bin";
        let id = store.create_multipart(key, r.chunk_opts()).unwrap();
        let mut etags = Vec::new();
        for (n, body) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
            etags.push(store.upload_part(key, &id, n, Body::Bytes(body)).unwrap());
        }
        let done = |i: usize, size| PartDone {
            size,
            sha256_through: String::new(),
            etag: etags[i].clone(),
        };
        // The journal has part 1 as it is, part 2 with another ETag, no part 3.
        let mut wrong = done(1, 3);
        wrong.etag = "\"other\"".into();
        let journal = BTreeMap::from([(
            0,
            ChunkProgress::Open {
                key: key.into(),
                upload_id: id.clone(),
                parts: BTreeMap::from([(1, done(0, 3)), (2, wrong)]),
            },
        )]);
        let found = r.stored(&journal).unwrap();
        let Some(ChunkProgress::Open { parts, .. }) = found.chunks.get(&0) else {
            panic!("{found:?}");
        };
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), [1]);
        let listed = store.list_parts(key, &id).unwrap();
        assert_eq!(
            found.unrecorded,
            BTreeMap::from([(
                0,
                BTreeMap::from([(2, listed[1].clone()), (3, listed[2].clone())])
            )])
        );
    }
}
