//! The `verify` engine: checks a published chain without restoring it. The cheap check
//! resolves the chain as restore does (`repo::chain`) and HEADs every chunk: present,
//! the manifest's size, the manifest's storage class, the configured SSE. The deep check
//! also downloads every chunk that is readable now through restore's verified download
//! (`restore::download`) into nothing, checking each SHA-256 and the manifest's
//! `stream_sha256`; archive-class chunks are checked only once restored
//! (`restore::archive`). `backup` runs the cheap check on the parent chain before
//! building an incremental on it (damage only: class and SSE differences do not force a
//! full). Every finding names the key.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::chunker::hex;
use crate::repo::chain::is_damage;
use crate::repo::{Chain, Repo};
use crate::restore::archive::{self, is_archive, parse_restore_header, RestoreHeader};
use crate::store::{ErrorKind, StoreError};

/// One thing wrong, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub key: String,
    pub problem: String,
    /// The bytes are missing or wrong (a restore would fail), as opposed to stored
    /// differently than configured (storage class, SSE).
    pub damage: bool,
}

/// What `verify` does with archive-class chunks under `--deep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archived {
    /// List them as not checked; request nothing (no retrieval is billed).
    Skip,
    /// Request their restores and stop (exit 3): rerun later.
    Request,
    /// Request their restores, wait up to the timeout, then check them.
    Wait(Duration),
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub subvolume: String,
    pub start_key: String,
    /// The chain, oldest first (empty when it could not be resolved).
    pub manifests: Vec<String>,
    pub chunks: usize,
    pub bytes: u64,
    /// Chunks downloaded and hashed (`--deep`).
    pub chunks_hashed: usize,
    /// Archive-class chunks that were not downloaded.
    pub not_checked: Vec<String>,
    /// Archive restores requested and not waited for.
    pub restores_pending: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn damaged(&self) -> bool {
        self.findings.iter().any(|f| f.damage)
    }
}

pub struct Checker<'a> {
    pub repo: &'a Repo,
    /// `s3.sse`: what every chunk must carry (`none`: not checked).
    pub sse: &'a str,
    /// Downloader threads and ranged-read size for `--deep`.
    pub concurrency: usize,
    pub piece_size: u64,
}

impl Checker<'_> {
    /// Checks the chain from `key` (cheap; `deep` also hashes). An error is a failed
    /// request (the check could not be done); damage is in the report's findings.
    pub fn run(
        &self,
        subvolume: &str,
        key: &str,
        deep: Option<Archived>,
        tier: &str,
    ) -> Result<Report> {
        let mut rep = Report {
            subvolume: subvolume.to_string(),
            start_key: key.to_string(),
            ..Default::default()
        };
        if !self.repo.exists(key)? {
            rep.findings.push(Finding {
                key: key.to_string(),
                problem: "the manifest is missing from the bucket".into(),
                damage: true,
            });
            return Ok(rep);
        }
        let chain = match self.repo.chain(subvolume, key) {
            Ok(c) => c,
            Err(e) if is_damage(&e) => {
                rep.findings.push(Finding {
                    key: key.to_string(),
                    problem: format!("{e:#}"),
                    damage: true,
                });
                return Ok(rep);
            }
            Err(e) => return Err(e),
        };
        rep.manifests = chain.links.iter().map(|(k, _)| k.clone()).collect();
        rep.chunks = chain.chunk_count();
        rep.bytes = chain.total_bytes();
        let archived = self.heads(&chain, &mut rep)?;
        if let Some(mode) = deep {
            self.deep(&chain, archived, mode, tier, &mut rep)?;
        }
        Ok(rep)
    }

    /// HEADs every chunk; returns the archive-class chunks not readable now.
    fn heads(&self, chain: &Chain, rep: &mut Report) -> Result<Vec<String>> {
        let store = self.repo.store().as_ref();
        let mut archived = Vec::new();
        for (_, m) in &chain.links {
            for c in &m.chunks {
                let head = self
                    .repo
                    .retrier()
                    .run(|| store.head(&c.key))
                    .map_err(|e| {
                        anyhow::Error::from(e).context(format!("checking chunk {}", c.key))
                    })?;
                let mut find = |problem: String, damage: bool| {
                    rep.findings.push(Finding {
                        key: c.key.clone(),
                        problem,
                        damage,
                    })
                };
                let Some(h) = head else {
                    find("the chunk is missing from the bucket".into(), true);
                    continue;
                };
                if h.size != c.size {
                    find(
                        format!(
                            "the chunk has {} bytes, the manifest says {}",
                            h.size, c.size
                        ),
                        true,
                    );
                    continue;
                }
                let class = h.storage_class_or_standard();
                if class != m.s3.storage_class {
                    find(
                        format!(
                            "the chunk is in storage class {class}, the manifest says {} \
                             (a lifecycle rule, or a copy by another tool?)",
                            m.s3.storage_class
                        ),
                        false,
                    );
                }
                if self.sse != "none" && h.sse.as_deref() != Some(self.sse) {
                    find(
                        match &h.sse {
                            Some(s) => format!(
                                "the chunk is stored with server-side encryption {s}, s3.sse is {}",
                                self.sse
                            ),
                            None => format!(
                                "the service reports no server-side encryption for the chunk \
                                 (no x-amz-server-side-encryption), s3.sse is {}",
                                self.sse
                            ),
                        },
                        false,
                    );
                }
                if is_archive(class)
                    && parse_restore_header(h.restore.as_deref()) != RestoreHeader::Done
                {
                    archived.push(c.key.clone());
                }
            }
        }
        Ok(archived)
    }

    fn deep(
        &self,
        chain: &Chain,
        archived: Vec<String>,
        mode: Archived,
        tier: &str,
        rep: &mut Report,
    ) -> Result<()> {
        let store = self.repo.store();
        let retrier = self.repo.retrier();
        let mut unreadable: std::collections::HashSet<String> = archived.iter().cloned().collect();
        if !archived.is_empty() {
            match mode {
                Archived::Skip => {}
                Archived::Request | Archived::Wait(_) => {
                    let refs: Vec<archive::ChunkRef<'_>> = chain
                        .links
                        .iter()
                        .flat_map(|(_, m)| {
                            m.chunks
                                .iter()
                                .filter(|c| unreadable.contains(&c.key))
                                .map(|c| archive::ChunkRef {
                                    key: &c.key,
                                    size: c.size,
                                    manifest_class: &m.s3.storage_class,
                                })
                        })
                        .collect();
                    let pending = archive::request_all(store.as_ref(), retrier, &refs, tier)?;
                    match mode {
                        Archived::Wait(timeout) => {
                            archive::wait_all(
                                store.as_ref(),
                                retrier,
                                pending,
                                timeout,
                                &std::thread::sleep,
                                &Instant::now,
                            )?;
                            unreadable.clear();
                        }
                        _ => rep.restores_pending = pending.len(),
                    }
                }
            }
        }
        let damaged: std::collections::HashSet<String> = rep
            .findings
            .iter()
            .filter(|f| f.damage)
            .map(|f| f.key.clone())
            .collect();
        for (key, m) in &chain.links {
            let mut stream = Sha256::new();
            let mut whole = true;
            for c in &m.chunks {
                if unreadable.contains(&c.key) {
                    rep.not_checked.push(c.key.clone());
                    whole = false;
                    continue;
                }
                if damaged.contains(&c.key) {
                    whole = false;
                    continue;
                }
                let mut out = HashInto(&mut stream);
                match crate::restore::download::stream_chunks(
                    store.clone(),
                    retrier.clone(),
                    std::slice::from_ref(c),
                    None,
                    self.piece_size,
                    self.concurrency,
                    &mut out,
                ) {
                    Ok(_) => rep.chunks_hashed += 1,
                    Err(e) if retrier.cancelled() || failed_request(&e) => return Err(e),
                    Err(e) => {
                        whole = false;
                        rep.findings.push(Finding {
                            key: c.key.clone(),
                            problem: format!("{e:#}"),
                            damage: true,
                        });
                    }
                }
            }
            if let (true, Some(want)) = (whole, &m.stream_sha256) {
                let got = hex(&stream.finalize());
                if !got.eq_ignore_ascii_case(want) {
                    rep.findings.push(Finding {
                        key: key.clone(),
                        problem: format!(
                            "the stream's SHA-256 is {got}, the manifest's stream_sha256 is {want}: \
                             every chunk matched its own hash, so the manifest is inconsistent"
                        ),
                        damage: true,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A request that failed (after its retries), not bytes that were wrong.
fn failed_request(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StoreError>()
            .is_some_and(|s| !matches!(s.kind, ErrorKind::NotFound))
    })
}

/// A writer that only hashes (the deep check downloads into nothing).
struct HashInto<'a>(&'a mut Sha256);

impl Write for HashInto<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
