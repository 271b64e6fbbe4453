//! The restore engine: resolve the checked chain (`repo::chain`), make archive-class chunks readable
//! (`repo::archive`), stream every manifest oldest first through SHA-256 verification into
//! `btrfs receive` in a staging directory beside the target (`repo::download`), move the newest
//! subvolume to `--target` and make it writable, then verify (`crate::verify`).
//! Invariant: on any failure every partial subvolume is deleted and nothing is left at
//! `--target`.

pub mod plan;
pub mod staging;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::btrfs::Btrfs;
use crate::config::{Config, VerifyMode};
use crate::event;
use crate::progress::{Counted, Expected, Meter, Reporter};
use crate::repo::archive;
use crate::repo::{Chain, Repo};
use crate::sendstream::{Guard, Origin, Received};
use staging::{Finished, Staging};

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

/// Why a restore did not finish, decided where it is known: archived chunks are being
/// restored and the request said not to wait (rerun later: exit code 3), or it failed.
#[derive(Debug)]
pub enum RestoreError {
    Pending(ArchivePending),
    Failed(anyhow::Error),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Pending(p) => std::fmt::Display::fmt(p, f),
            RestoreError::Failed(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

/// How the command ends: pending is exit code 3, a failure 1.
impl From<RestoreError> for crate::exit::Failure {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Pending(p) => crate::exit::Failure::Pending(p.into()),
            RestoreError::Failed(e) => crate::exit::Failure::Run(e),
        }
    }
}

impl From<anyhow::Error> for RestoreError {
    fn from(e: anyhow::Error) -> Self {
        RestoreError::Failed(e)
    }
}

impl From<crate::repo::chain::ChainError> for RestoreError {
    fn from(e: crate::repo::chain::ChainError) -> Self {
        RestoreError::Failed(e.into())
    }
}

/// One restore, resolved from flags and config.
#[derive(Clone, Debug)]
pub struct Request {
    pub subvolume: String,
    pub manifest_key: Option<String>,
    pub target: PathBuf,
    pub wait: bool,
    pub timeout: Duration,
    pub verify: VerifyMode,
    /// Do not refuse for want of free space (`--skip-space-check`).
    pub skip_space_check: bool,
    /// Age identity files for encrypted manifests (`--identity`, else the config's).
    pub identity_files: Vec<PathBuf>,
}

/// What decrypts a chain: the identities, and each manifest's sealed part (`None`: that
/// manifest is not encrypted; a chain may mix both).
pub struct Keys {
    pub identities: Vec<crate::age::Identity>,
    pub sealed: Vec<Option<crate::manifest::SealedPart>>,
}

impl Keys {
    /// Opens every encrypted manifest's sealed part with the identities in `files` (read
    /// only when the chain has one): the identity check, before anything is downloaded
    /// or an archive restore is requested.
    pub fn open(chain: &Chain, files: &[PathBuf]) -> Result<Keys> {
        let mut keys = Keys {
            identities: Vec::new(),
            sealed: Vec::new(),
        };
        for (key, m) in &chain.links {
            if m.encryption.is_none() {
                keys.sealed.push(None);
                continue;
            }
            if keys.identities.is_empty() {
                keys.identities = crate::encryption::identities_for(files, &[])
                    .with_context(|| format!("manifest {key}"))?;
            }
            keys.sealed
                .push(Some(crate::encryption::open(key, m, &keys.identities)?));
        }
        Ok(keys)
    }
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
    pub repo: &'a Repo,
    /// The run's retry policy (the repository's): the progress meter counts its retries
    /// and shows its outage.
    pub retrier: std::sync::Arc<crate::retry::Retrier>,
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
    pub fn run(&self, req: &Request) -> Result<Report, RestoreError> {
        let started = Instant::now();
        // command() has resolved a relative --target already; check again right before use.
        let target = check_target(&req.target, Path::new("/"))?;
        let key = self
            .repo
            .start_key(&req.subvolume, req.manifest_key.as_deref())?;
        let chain = self.repo.chain(&req.subvolume, &key)?;
        event!(
            Info,
            "restore_chain",
            subvolume = req.subvolume,
            manifests = chain.links.len(),
            chunks = chain.chunk_count(),
            total_bytes = chain.total_bytes(),
            newest = chain.newest().0,
        );
        let keys = Keys::open(&chain, &req.identity_files)?;
        self.preflight(&chain, &target, req.skip_space_check)?;
        let tier = self.cfg.restore.restore_tier.as_str();
        // The same survey `--plan` makes, and its summary, before anything is spent.
        let surveyed = self.repo.survey(&chunk_refs(&chain))?;
        let plan = self.plan_of(&req.subvolume, &chain, &surveyed, &target)?;
        let summary = plan.summary();
        event!(Info, "restore_plan", summary = summary);
        crate::outln!("{summary}");
        let pending = self.repo.request_restores(&surveyed, tier)?;
        let mut archive_wait = Duration::ZERO;
        if !pending.is_empty() {
            if !req.wait {
                return Err(RestoreError::Pending(ArchivePending {
                    chunks: pending.len(),
                    tier: tier.to_string(),
                }));
            }
            archive_wait = self.repo.wait_restored(pending, req.timeout)?;
            event!(
                Info,
                "archive_restores_ready",
                waited_seconds = archive_wait.as_secs()
            );
        }

        let parent_dir = target.parent().unwrap_or(Path::new("/"));
        let staging = Staging::create(&parent_dir.join(format!(
            ".btrfs_to_s3-restore-{}-{}",
            req.subvolume,
            std::process::id()
        )))?;
        // The source snapshot, when it is here, is hashed while the chain downloads and
        // `btrfs receive` runs; the comparison takes those hashes as they come.
        let snap = &chain.newest().1.snapshot;
        let pre = match (req.verify, self.local_source(&snap.name, &snap.path)) {
            (VerifyMode::None, _) | (_, Err(_)) => None,
            (mode, Ok(source)) => {
                crate::treecmp::Prehash::start(&source, mode, self.cfg.restore.sample_max_files)
            }
        };
        let mut received = Vec::new();
        let placed = self.receive_chain(&chain, &keys, &staging, &mut received, &target);
        staging.clean(self.btrfs, &received);
        let bytes = match placed {
            Ok(b) => b,
            Err(e) => {
                if target.exists() {
                    self.remove_target(&target);
                }
                return Err(e.into());
            }
        };
        let verified = match self.verify(&chain, &target, req.verify, pre) {
            Ok(v) => v,
            Err(e) => {
                self.remove_target(&target);
                return Err(e.into());
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

    /// What can be checked before anything is downloaded or an archive restore (billed)
    /// is requested: the target's directory is on btrfs, and it has room for about the
    /// chain's full stream plus its largest incremental (restore keeps at most two
    /// received subvolumes at once). Each refusal names the fix.
    fn preflight(&self, chain: &Chain, target: &Path, skip_space: bool) -> Result<()> {
        let dir = target.parent().unwrap_or(Path::new("/"));
        let fs = self.btrfs.filesystem(dir)?;
        if fs.fstype != "btrfs" {
            bail!(
                "--target {}: {} is on {} ({}), not btrfs; btrfs receive needs a btrfs \
                 filesystem: restore into a directory on one",
                target.display(),
                dir.display(),
                fs.source,
                fs.fstype
            );
        }
        if let Some((key, m)) = chain.links.iter().find(|(_, m)| m.protocol() >= 2) {
            let support = self.btrfs.send_support()?;
            if !support.can_receive_proto2() {
                bail!(
                    "manifest {key} was sent with send protocol {} (compressed data); btrfs \
                     receive here is btrfs-progs {}.{}, and protocol 2 needs btrfs-progs 6.0 \
                     or later: install it, then run the restore again",
                    m.protocol(),
                    support.progs.0,
                    support.progs.1
                );
            }
        }
        let (need, free) = space(chain, dir)?;
        let full = chain.links.first().map_or(0, |(_, m)| m.total_bytes);
        let largest_inc = need.saturating_sub(full);
        event!(
            Info,
            "restore_space",
            target = target.display(),
            free_bytes = free,
            estimate_bytes = need
        );
        if free < need && !skip_space {
            bail!(
                "--target {}: the filesystem has {free} bytes free, and this chain needs about \
                 {need} (its full stream of {full} bytes plus its largest incremental of \
                 {largest_inc}): free space, restore elsewhere, or pass --skip-space-check if \
                 the data compresses well",
                target.display()
            );
        }
        Ok(())
    }

    /// Replays the chain into `staging`, then moves the newest to `target`, writable.
    /// Every stream passes a `sendstream::Guard` on its way to `btrfs receive`; what it
    /// created is pushed to `received` (the only entries staging may act on).
    fn receive_chain(
        &self,
        chain: &Chain,
        keys: &Keys,
        staging: &Staging,
        received: &mut Vec<Received>,
        target: &Path,
    ) -> Result<u64> {
        let mut bytes = 0;
        let mut previous: Option<Received> = None;
        let piece = self.cfg.s3.part_size_bytes;
        let conc = self.cfg.s3.concurrency;
        let meter = Meter::new(
            "restore_progress",
            &chain.newest().1.subvolume,
            self.retrier.clone(),
            Some(Expected {
                bytes: chain.total_bytes(),
                source: "exact".into(),
            }),
        );
        meter.show_cap(self.repo.throttles().download);
        let _reporter = Reporter::start(
            meter.clone(),
            Duration::from_secs(self.cfg.global.progress_interval_seconds),
        );
        for ((key, m), sealed) in chain.links.iter().zip(&keys.sealed) {
            event!(
                Info,
                "restore_receive",
                manifest = key,
                kind = m.kind.as_str(),
                chunks = m.chunks.len(),
                total_bytes = m.total_bytes
            );
            // The guard sees the stream: with encryption, the chunks' plaintext.
            let sizes: Vec<u64> = match sealed {
                None => m.chunks.iter().map(|c| c.size).collect(),
                Some(s) => s.chunks.iter().map(|c| c.size).collect(),
            };
            // The chain's first stream creates a subvolume; each later one snapshots the
            // subvolume the stream before it created, and nothing else on the filesystem.
            let origin = match &previous {
                None => Origin::Full,
                Some(p) => Origin::After(Some(p.uuid.clone())),
            };
            let mut guard = Guard::new(
                m.chunks.iter().zip(sizes).map(|(c, n)| (c.key.as_str(), n)),
                &m.snapshot.name,
                origin,
            );
            let mut recv = self.btrfs.receive(staging.path())?;
            let streamed = {
                let mut counted = Counted {
                    inner: &mut recv,
                    meter: &meter,
                };
                let mut out = guard.writer(&mut counted);
                match sealed {
                    None => self.repo.stream_chunks(
                        &m.chunks,
                        m.stream_sha256.as_deref(),
                        piece,
                        conc,
                        &mut out,
                    ),
                    Some(s) => self.repo.stream_decrypted(
                        &m.chunks,
                        s,
                        &keys.identities,
                        piece,
                        conc,
                        &mut out,
                    ),
                }
            };
            let streamed = streamed
                .map_err(anyhow::Error::from)
                .and_then(|n| Ok((n, guard.finish()?.clone())));
            // Whatever the outcome, what the stream created is ours to clean up.
            if let Some(r) = guard.received() {
                if !received.contains(r) {
                    received.push(r.clone());
                }
            }
            let got = match streamed {
                Ok((n, got)) => {
                    recv.finish()
                        .with_context(|| format!("replaying manifest {key}"))?;
                    bytes += n;
                    got
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
            };
            let made = staging
                .subvolume(self.btrfs, &got, Finished::Yes)
                .with_context(|| format!("btrfs receive of manifest {key}"))?;
            // The guard made the stream name the previous subvolume's received UUID as its
            // parent, but receive takes the first subvolume of the filesystem with that
            // received UUID: one that was there before (an earlier receive of the same
            // backup, or a subvolume a doctored stream claimed the UUID of) would have
            // been used instead. The snapshot's parent must be the subvolume we received.
            if let Some(prev) = &previous {
                let prev_path = staging.subvolume(self.btrfs, prev, Finished::Yes)?;
                let want = self.btrfs.show(&prev_path)?.uuid;
                let got_parent = self.btrfs.show(&made)?.parent_uuid;
                let same =
                    matches!((&want, &got_parent), (Some(w), Some(g)) if w.eq_ignore_ascii_case(g));
                if !same {
                    bail!(
                        "restoring manifest {key}: btrfs receive built {} on subvolume {}, not on \
                         the previous backup's {} ({}): another subvolume of this filesystem \
                         holds received UUID {}; delete it or make it writable (btrfs property \
                         set -f PATH ro false), or restore to another filesystem",
                        got.name,
                        got_parent.as_deref().unwrap_or("(none)"),
                        prev.name,
                        want.as_deref().unwrap_or("(none)"),
                        prev.uuid
                    );
                }
            }
            // Only the newest received subvolume is needed (as the next one's parent):
            // the one before goes now, and its space is back before the next download,
            // so a long chain restores in about the space of its result.
            if let Some(prev) = previous.replace(got) {
                staging.delete(self.btrfs, &prev, Finished::Yes)?;
                received.retain(|r| r != &prev);
                self.btrfs.wait_cleaned(staging.path()).with_context(|| {
                    format!("waiting for the space of {} to be freed", prev.name)
                })?;
            }
        }
        let Some(newest) = previous else {
            bail!("the chain has no manifest to restore");
        };
        let path = staging.subvolume(self.btrfs, &newest, Finished::Yes)?;
        self.btrfs
            .make_writable(&path)
            .with_context(|| format!("making {} writable", path.display()))?;
        staging.move_out(&newest, target)?;
        received.retain(|r| r != &newest);
        // Encoded (compressed) writes on older kernels could lose write errors until the
        // data reaches the disk: flush the filesystem before verifying what is there.
        std::fs::File::open(target)
            .and_then(|f| rustix::fs::syncfs(&f).map_err(std::io::Error::from))
            .with_context(|| format!("syncing the restored {}", target.display()))?;
        Ok(bytes)
    }

    /// `restore --plan`: the chain, one HEAD per chunk, the target's filesystem and space;
    /// nothing requested, nothing downloaded.
    pub fn plan(&self, req: &Request) -> Result<plan::Plan> {
        let key = self
            .repo
            .start_key(&req.subvolume, req.manifest_key.as_deref())?;
        let chain = self.repo.chain(&req.subvolume, &key)?;
        let surveyed = self.repo.survey(&chunk_refs(&chain))?;
        self.plan_of(&req.subvolume, &chain, &surveyed, &req.target)
    }

    fn plan_of(
        &self,
        subvolume: &str,
        chain: &Chain,
        surveyed: &[archive::ChunkState],
        target: &Path,
    ) -> Result<plan::Plan> {
        let dir = target.parent().unwrap_or(Path::new("/"));
        let fs = self.btrfs.filesystem(dir)?;
        Ok(plan::make(
            subvolume,
            chain,
            surveyed,
            self.cfg.s3.part_size_bytes,
            self.cfg.restore.restore_tier.as_str(),
            target,
            &fs.fstype,
            space(chain, dir)?,
        ))
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
    fn verify(
        &self,
        chain: &Chain,
        target: &Path,
        mode: VerifyMode,
        pre: Option<crate::treecmp::Prehash>,
    ) -> Result<u64> {
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
        let r = crate::treecmp::compare_with(
            &source,
            target,
            mode,
            self.cfg.restore.sample_max_files,
            pre,
        )?;
        event!(
            Info,
            "verify_ok",
            mode = format!("{mode:?}").to_lowercase(),
            entries = r.entries,
            files = r.files,
            files_hashed = r.files_hashed,
            bytes_hashed = r.bytes_hashed,
            nested_subvolumes_left_out = r.nested_placeholders
        );
        Ok(r.files_hashed)
    }
}

/// Every chunk of the chain, each key once, oldest manifest first.
fn chunk_refs(chain: &Chain) -> Vec<archive::ChunkRef<'_>> {
    let mut seen = std::collections::HashSet::new();
    chain
        .links
        .iter()
        .flat_map(|(_, m)| {
            m.chunks.iter().map(|c| archive::ChunkRef {
                key: &c.key,
                size: c.size,
                manifest_class: &m.s3.storage_class,
            })
        })
        .filter(|c| seen.insert(c.key))
        .collect()
}

/// The space a restore of `chain` needs in `dir` (its full stream plus its largest
/// incremental: restore keeps at most two received subvolumes at once) and what is free.
fn space(chain: &Chain, dir: &Path) -> Result<(u64, u64)> {
    let full = chain.links.first().map_or(0, |(_, m)| m.total_bytes);
    let largest_inc = chain
        .links
        .iter()
        .skip(1)
        .map(|(_, m)| m.total_bytes)
        .max()
        .unwrap_or(0);
    let free = rustix::fs::statvfs(dir)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    Ok((full.saturating_add(largest_inc), free))
}

#[cfg(test)]
mod tests;
