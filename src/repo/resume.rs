//! The resume checks of a pending backup: what its journal says is stored, checked
//! against the bucket (chunks by HEAD, open uploads by ListParts). The journal itself and
//! the decision to resume are the backup engine's.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::Repo;
use crate::journal::{ChunkProgress, PartDone};
use crate::store::{ErrorKind, ListedPart};

/// What an interrupted run left in the bucket, as far as it checks out against its journal.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// The journal's chunks that are stored as it says (open uploads with the parts that
    /// check out).
    pub chunks: BTreeMap<u64, ChunkProgress>,
    /// Per open upload's chunk, the parts ListParts shows that the journal does not record
    /// as they are (sent, then killed before the record; or recorded otherwise), as
    /// listed (ETag, and checksum when the service keeps one). Sent again, such a part
    /// must be the same bytes: with encryption, other bytes there would be other
    /// plaintext under the same key and nonce.
    pub unrecorded: BTreeMap<u64, BTreeMap<u32, ListedPart>>,
}

/// ETags as the service quotes them or not: compared without quotes.
fn same_etag(a: &str, b: &str) -> bool {
    a.trim().trim_matches('"') == b.trim().trim_matches('"')
}

impl Repo {
    /// Checks what the journal says is stored against the store: chunks by HEAD (present,
    /// same size), open uploads by ListParts (same number, size and ETag). An upload that
    /// is gone but whose object is there with the parts' total size was completed before
    /// the crash: its SHA-256 is the last part's hash-through. What does not check out is
    /// left out (sent again).
    pub fn stored(&self, chunks: &BTreeMap<u64, ChunkProgress>) -> Result<Stored> {
        let store = self.store();
        let r = self.retrier();
        let mut out = BTreeMap::new();
        let mut unrecorded = BTreeMap::new();
        for (i, c) in chunks {
            match c {
                ChunkProgress::Stored { key, size, .. } => {
                    let head = r
                        .run(|| store.head(key))
                        .with_context(|| format!("checking chunk {key}"))?;
                    if head.is_some_and(|h| h.size == *size) {
                        out.insert(*i, c.clone());
                    }
                }
                ChunkProgress::Open {
                    key,
                    upload_id,
                    parts,
                } => match r.run(|| store.list_parts(key, upload_id)) {
                    Ok(listed) => {
                        let kept: BTreeMap<u32, PartDone> = parts
                            .iter()
                            .filter(|(n, d)| {
                                listed.iter().any(|l| {
                                    l.number == **n
                                        && l.size == d.size
                                        && same_etag(&l.etag, &d.etag)
                                })
                            })
                            .map(|(n, d)| (*n, d.clone()))
                            .collect();
                        let others: BTreeMap<u32, ListedPart> = listed
                            .iter()
                            .filter(|l| !kept.contains_key(&l.number))
                            .map(|l| (l.number, l.clone()))
                            .collect();
                        if !others.is_empty() {
                            unrecorded.insert(*i, others);
                        }
                        out.insert(
                            *i,
                            ChunkProgress::Open {
                                key: key.clone(),
                                upload_id: upload_id.clone(),
                                parts: kept,
                            },
                        );
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        let total: u64 = parts.values().map(|d| d.size).sum();
                        let contiguous = parts.keys().copied().eq(1..=parts.len() as u32);
                        let head = r
                            .run(|| store.head(key))
                            .with_context(|| format!("checking chunk {key}"))?;
                        if let (Some(h), Some(last), true) =
                            (head, parts.values().last(), contiguous)
                        {
                            if h.size == total {
                                out.insert(
                                    *i,
                                    ChunkProgress::Stored {
                                        key: key.clone(),
                                        size: total,
                                        sha256: last.sha256_through.clone(),
                                        etag: h.etag.unwrap_or_default(),
                                    },
                                );
                            }
                        }
                    }
                    Err(e) => {
                        return Err(anyhow::Error::from(e))
                            .with_context(|| format!("listing the stored parts of chunk {key}"))
                    }
                },
            }
        }
        Ok(Stored {
            chunks: out,
            unrecorded,
        })
    }

    /// Aborts multipart uploads a killed run left under this subvolume's prefix (the
    /// caller holds the lock, so none of them is live), except those in `owned` (a resume
    /// journal's). A service that cannot list them (no ListMultipartUploads, or a policy
    /// without s3:ListBucketMultipartUploads) skips the sweep with a warning: it is
    /// hygiene and must not block backups.
    pub fn sweep_stale_uploads(
        &self,
        subvolume: &str,
        owned: &std::collections::HashSet<String>,
    ) -> Result<()> {
        let prefix = self.layout.subvolume_prefix(subvolume);
        let open = match self.open_uploads(subvolume) {
            Ok(open) => open,
            Err(e) if !e.is_transient() => {
                crate::event!(
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
        for u in open.into_iter().filter(|u| !owned.contains(&u.upload_id)) {
            self.abort_upload(&u.key, &u.upload_id)?;
            crate::event!(
                Info,
                "stale_upload_aborted",
                key = u.key,
                upload_id = u.upload_id
            );
        }
        Ok(())
    }
}
