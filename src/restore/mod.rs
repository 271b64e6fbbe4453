//! `restore`: resolve the chain (`chain`), make archive-class chunks readable
//! (`archive`), stream every manifest oldest first through SHA-256 verification into
//! `btrfs receive` in a staging directory beside the target (`download`), move the newest
//! subvolume to `--target` and make it writable, then verify (`crate::verify`).
//! Invariant: on any failure every partial subvolume is deleted and nothing is left at
//! `--target`.

pub mod archive;
pub mod chain;
pub mod download;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::btrfs::{Btrfs, BtrfsCli};
use crate::cli::{RestoreArgs, VerifyArg};
use crate::config::{Config, VerifyMode};
use crate::event;
use crate::manifest::Layout;
use crate::retry::{Policy, Retrier};
use crate::store::ObjectStore;

/// Archive restores were requested and not waited for: exit code 3.
#[derive(Debug)]
pub struct ArchivePending {
    pub chunks: usize,
    pub tier: String,
}

impl std::fmt::Display for ArchivePending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} chunks are being restored from archive storage (tier {}; GLACIER takes minutes to \
             hours, DEEP_ARCHIVE up to 12 hours, 48 with Bulk): rerun the same restore command later",
            self.chunks, self.tier
        )
    }
}

impl std::error::Error for ArchivePending {}

/// One restore, resolved from flags and config.
#[derive(Clone, Debug)]
pub struct Request {
    pub subvolume: String,
    pub manifest_key: Option<String>,
    pub target: PathBuf,
    pub wait: bool,
    pub timeout: Duration,
    pub verify: VerifyMode,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub manifests: usize,
    pub chunks: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    pub archive_wait: Duration,
    pub verified_files: u64,
}

pub struct Restorer<'a> {
    pub cfg: &'a Config,
    pub btrfs: &'a dyn Btrfs,
    pub store: Arc<dyn ObjectStore>,
    pub retrier: Arc<Retrier>,
    pub layout: Layout,
}

/// Checks `--target` before anything else happens: new, parent exists. A relative target
/// is taken under `base` (`restore.target_base_dir`), not the current directory.
pub fn check_target(target: &Path, base: &Path) -> Result<PathBuf> {
    let target = base.join(target);
    if target.symlink_metadata().is_ok() {
        bail!(
            "--target {} already exists; restore never overwrites: choose a new path",
            target.display()
        );
    }
    target
        .parent()
        .filter(|p| p.is_dir())
        .ok_or_else(|| anyhow!("the parent directory of --target {} does not exist; create it first (on the btrfs filesystem to restore into)", target.display()))?;
    if target.file_name().is_none() {
        bail!("--target {} has no final name", target.display());
    }
    Ok(target)
}

impl Restorer<'_> {
    pub fn run(&self, req: &Request) -> Result<Report> {
        let started = Instant::now();
        // command() has resolved a relative --target already; check again right before use.
        let target = check_target(&req.target, Path::new("/"))?;
        let store = self.store.as_ref();
        let key = chain::start_key(
            store,
            &self.retrier,
            &self.layout,
            &req.subvolume,
            req.manifest_key.as_deref(),
        )?;
        let chain = chain::resolve(store, &self.retrier, &self.layout, &req.subvolume, &key)?;
        event!(
            Info,
            "restore_chain",
            subvolume = req.subvolume,
            manifests = chain.links.len(),
            chunks = chain.chunk_count(),
            total_bytes = chain.total_bytes(),
            newest = chain.newest().0,
        );
        let refs: Vec<archive::ChunkRef<'_>> = chain
            .links
            .iter()
            .flat_map(|(_, m)| {
                m.chunks.iter().map(|c| archive::ChunkRef {
                    key: &c.key,
                    size: c.size,
                    manifest_class: &m.s3.storage_class,
                })
            })
            .collect();
        let tier = self.cfg.restore.restore_tier.as_str();
        let pending = archive::request_all(store, &self.retrier, &refs, tier)?;
        let mut archive_wait = Duration::ZERO;
        if !pending.is_empty() {
            if !req.wait {
                return Err(ArchivePending {
                    chunks: pending.len(),
                    tier: tier.to_string(),
                }
                .into());
            }
            archive_wait = archive::wait_all(
                store,
                &self.retrier,
                pending,
                req.timeout,
                &std::thread::sleep,
                &Instant::now,
            )?;
            event!(
                Info,
                "archive_restores_ready",
                waited_seconds = archive_wait.as_secs()
            );
        }

        let parent_dir = target.parent().unwrap_or(Path::new("/"));
        let staging = parent_dir.join(format!(
            ".btrfs_to_s3-restore-{}-{}",
            req.subvolume,
            std::process::id()
        ));
        std::fs::create_dir(&staging)
            .with_context(|| format!("creating the staging directory {}", staging.display()))?;
        let placed = self.receive_chain(&chain, &staging, &target);
        self.clean_staging(&staging);
        let bytes = match placed {
            Ok(b) => b,
            Err(e) => {
                if target.exists() {
                    self.remove_target(&target);
                }
                return Err(e);
            }
        };
        let verified = match self.verify(&chain, &target, req.verify) {
            Ok(v) => v,
            Err(e) => {
                self.remove_target(&target);
                return Err(e);
            }
        };
        Ok(Report {
            manifests: chain.links.len(),
            chunks: chain.chunk_count(),
            bytes,
            elapsed: started.elapsed(),
            archive_wait,
            verified_files: verified,
        })
    }

    /// Replays the chain into `staging`, then moves the newest to `target`, writable.
    fn receive_chain(&self, chain: &chain::Chain, staging: &Path, target: &Path) -> Result<u64> {
        let mut bytes = 0;
        let piece = self.cfg.s3.part_size_bytes;
        let conc = self.cfg.s3.concurrency;
        for (key, m) in &chain.links {
            event!(
                Info,
                "restore_receive",
                manifest = key,
                kind = m.kind.as_str(),
                chunks = m.chunks.len(),
                total_bytes = m.total_bytes
            );
            let mut recv = self.btrfs.receive(staging)?;
            match download::stream_chunks(
                self.store.clone(),
                self.retrier.clone(),
                &m.chunks,
                m.stream_sha256.as_deref(),
                piece,
                conc,
                &mut recv,
            ) {
                Ok(n) => {
                    recv.finish()
                        .with_context(|| format!("replaying manifest {key}"))?;
                    bytes += n;
                }
                Err(e) => {
                    let said = recv.kill();
                    let e = if said.is_empty() {
                        e
                    } else {
                        e.context(format!("btrfs receive: {said}"))
                    };
                    return Err(e.context(format!("restoring manifest {key}")));
                }
            }
            let got = staging.join(&m.snapshot.name);
            if !got.is_dir() {
                bail!(
                    "btrfs receive of manifest {key} did not create {} (the stream names another snapshot)",
                    got.display()
                );
            }
        }
        let newest = staging.join(&chain.newest().1.snapshot.name);
        self.btrfs
            .make_writable(&newest)
            .with_context(|| format!("making {} writable", newest.display()))?;
        std::fs::rename(&newest, target)
            .with_context(|| format!("moving {} to {}", newest.display(), target.display()))?;
        Ok(bytes)
    }

    fn clean_staging(&self, staging: &Path) {
        if let Ok(entries) = std::fs::read_dir(staging) {
            for e in entries.flatten() {
                let p = e.path();
                if let Err(err) = self.btrfs.delete_subvolume(&p) {
                    event!(
                        Warn,
                        "staging_delete_failed",
                        path = p.display(),
                        error = format!("{err:#}")
                    );
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(staging) {
            event!(
                Warn,
                "staging_remove_failed",
                path = staging.display(),
                error = e
            );
        }
    }

    fn remove_target(&self, target: &Path) {
        match self.btrfs.delete_subvolume(target) {
            Ok(()) => event!(Info, "restore_target_removed", path = target.display()),
            Err(e) => event!(
                Error,
                "restore_target_remove_failed",
                path = target.display(),
                error = format!("{e:#}")
            ),
        }
    }

    /// The manifest's source snapshot, when it may be read for content verification: its
    /// `snapshot.path` must be `snapshots.base_dir/<snapshot.name>` exactly (the name is
    /// checked by `chain`) and a directory there, not a link. Otherwise why not.
    fn local_source(&self, name: &str, path: &str) -> Result<PathBuf, String> {
        let want = self.cfg.snapshots.base_dir.join(name);
        if Path::new(path) != want {
            return Err(format!(
                "snapshot.path is not {} (snapshots.base_dir and the snapshot's name), so it is not trusted",
                want.display()
            ));
        }
        match want.symlink_metadata() {
            Ok(m) if m.is_dir() => Ok(want),
            Ok(_) => Err("the source snapshot's path is not a directory".into()),
            Err(_) => Err("the source snapshot is not on this machine".into()),
        }
    }

    /// Metadata always; content when the source snapshot is still here.
    fn verify(&self, chain: &chain::Chain, target: &Path, mode: VerifyMode) -> Result<u64> {
        let info = self.btrfs.show(target).with_context(|| {
            format!(
                "verification: {} is not a btrfs subvolume",
                target.display()
            )
        })?;
        if info.uuid.is_none() {
            bail!("verification: {} has no subvolume UUID", target.display());
        }
        if mode == VerifyMode::None {
            return Ok(0);
        }
        let snap = &chain.newest().1.snapshot;
        let source = match self.local_source(&snap.name, &snap.path) {
            Ok(s) => s,
            Err(reason) => {
                event!(
                    Info,
                    "verify_content_skipped",
                    reason = reason,
                    source = snap.path
                );
                return Ok(0);
            }
        };
        let r = crate::verify::compare(&source, target, mode, self.cfg.restore.sample_max_files)?;
        event!(
            Info,
            "verify_ok",
            mode = format!("{mode:?}").to_lowercase(),
            entries = r.entries,
            files = r.files,
            files_hashed = r.files_hashed,
            bytes_hashed = r.bytes_hashed
        );
        Ok(r.files_hashed)
    }
}

/// `btrfs_to_s3 restore`: flags over config, lock, run, metrics.
pub fn command(config: &Config, args: &RestoreArgs) -> Result<u8> {
    if let Some(why) = crate::manifest::subvolume_name_problem(&args.subvolume) {
        return Err(crate::app::UsageError(format!(
            "--subvolume {:?} {why}: give the subvolume's name (the last component of its path)",
            args.subvolume
        ))
        .into());
    }
    let req = Request {
        subvolume: args.subvolume.clone(),
        manifest_key: args.manifest_key.clone(),
        target: check_target(&args.target, &config.restore.target_base_dir)?,
        wait: args
            .wait_override()
            .unwrap_or(config.restore.wait_for_restore),
        timeout: Duration::from_secs(
            args.restore_timeout
                .unwrap_or(config.restore.restore_timeout_seconds),
        ),
        verify: match args.verify {
            Some(VerifyArg::Full) => VerifyMode::Full,
            Some(VerifyArg::Sample) => VerifyMode::Sample,
            Some(VerifyArg::None) => VerifyMode::None,
            None => config.restore.verify_mode,
        },
    };
    let cancel = crate::signals::install()?;
    let _lock = crate::lock::RunLock::acquire(&config.global.lock_path)?;
    let btrfs = BtrfsCli::default();
    let r = Restorer {
        cfg: config,
        btrfs: &btrfs,
        store: crate::app::s3_store(config)?,
        retrier: Arc::new(Retrier::new(Policy::default(), cancel)),
        layout: Layout::new(&config.s3.prefix),
    };
    let report = match r.run(&req) {
        Ok(rep) => rep,
        Err(e) if e.is::<ArchivePending>() => return Err(e),
        Err(e) => {
            return Err(e.context(format!(
                "restore of {} into {} failed; nothing was left at the target",
                req.subvolume,
                req.target.display()
            )))
        }
    };
    let secs = report.elapsed.as_secs_f64();
    event!(
        Info,
        "restore_metrics",
        subvolume = req.subvolume,
        target = req.target.display(),
        manifests = report.manifests,
        chunks = report.chunks,
        total_bytes = report.bytes,
        elapsed_seconds = format!("{secs:.3}"),
        throughput = format!(
            "{:.1}MB/s",
            if secs > 0.0 {
                report.bytes as f64 / secs / 1e6
            } else {
                0.0
            }
        ),
        archive_wait_seconds = report.archive_wait.as_secs(),
        verified_files = report.verified_files,
    );
    Ok(crate::app::exit::OK)
}

#[cfg(test)]
mod tests;
