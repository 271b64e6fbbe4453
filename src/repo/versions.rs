//! Object versions of one subvolume in a versioned (Object Lock) bucket: the history
//! `list --versions` shows (every version and delete marker of `current.json` and of the
//! manifests), and the versions a restore or verify from one manifest version reads
//! ([`pin_chain`]). Every key of the layout is written once, by the backup that names
//! it, so for each parent manifest and chunk the *oldest* version that fits (a manifest
//! that reads and checks as this subvolume's; a chunk of the size its manifest says) is
//! the one the backup wrote: a newer version is someone else's overwrite, and a delete
//! marker hides nothing from this.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use crate::manifest::{Kind, Shape};
use crate::repo::chain::{self, ChainError, Damaged, MAX_CHAIN};
use crate::repo::Repo;
use crate::store::pinned::Pinned;
use crate::store::ListedVersion;

/// Every version and delete marker under the subvolume's prefix (ListObjectVersions).
fn listing(repo: &Repo, subvolume: &str) -> Result<Vec<ListedVersion>> {
    let prefix = repo.layout.subvolume_prefix(subvolume);
    repo.retrier()
        .run(|| repo.store().list_versions(&prefix))
        .with_context(|| {
            format!(
                "listing the object versions under {prefix:?} (ListObjectVersions; the \
                 credentials need s3:ListBucketVersions)"
            )
        })
}

/// The versions of `current.json` and of the manifests of `subvolume`, by key, each
/// key's newest first (delete markers included).
pub fn history(repo: &Repo, subvolume: &str) -> Result<Vec<ListedVersion>> {
    let mut v: Vec<ListedVersion> = listing(repo, subvolume)?
        .into_iter()
        .filter(|v| {
            matches!(
                repo.layout.parse(&v.key),
                Some((n, Shape::Pointer | Shape::Manifest { .. })) if n == subvolume
            )
        })
        .collect();
    // The latest first, then newest first; stable: what lists in the same second keeps
    // the listing's order (S3 lists each key's versions newest first).
    v.sort_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(b.is_latest.cmp(&a.is_latest))
            .then(b.last_modified.cmp(&a.last_modified))
    });
    Ok(v)
}

/// A version id from the command line: it becomes a query parameter (encoded), so it
/// only has to be plausible: printable, bounded.
pub fn version_id_problem(v: &str) -> Option<&'static str> {
    if v.is_empty() || v.len() > 1024 {
        Some("must be 1 to 1024 characters")
    } else if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain spaces or control characters")
    } else {
        None
    }
}

/// For each key, its versions oldest first, without delete markers.
fn by_key(listed: Vec<ListedVersion>) -> HashMap<String, Vec<ListedVersion>> {
    let mut out: HashMap<String, Vec<ListedVersion>> = HashMap::new();
    // S3 lists each key's versions newest first.
    for v in listed.into_iter().rev().filter(|v| !v.delete_marker) {
        out.entry(v.key.clone()).or_default().push(v);
    }
    for vs in out.values_mut() {
        // Stable: versions of one second keep the listing's order.
        vs.sort_by_key(|v| v.last_modified);
    }
    out
}

/// The versions to read for a restore (or verify) of `key` at `version`: that manifest
/// version, and for its parents and every chunk of the chain the oldest version that
/// fits. Fails naming the key when none does ([`ChainError::Damaged`]: the bucket
/// holds no usable version).
pub fn pin_chain(
    repo: &Repo,
    subvolume: &str,
    key: &str,
    version: &str,
) -> Result<HashMap<String, String>, ChainError> {
    if !repo.layout.owns(subvolume, key) {
        return Err(ChainError::Failed(anyhow!(
            "--manifest-key {key:?} is not a key under {} (this subvolume's backups under \
             s3.prefix); pick one from list --versions",
            repo.layout.subvolume_prefix(subvolume)
        )));
    }
    let versions = by_key(listing(repo, subvolume)?);
    let store = repo.store();
    let read = |k: &str, v: &str| {
        let one = Pinned::new(
            store.clone(),
            HashMap::from([(k.to_string(), v.to_string())]),
        );
        chain::read_manifest(&one, repo.retrier(), &repo.layout, subvolume, k)
    };
    let mut pins = HashMap::new();
    let mut seen = HashSet::new();
    let mut next = Some((key.to_string(), Some(version.to_string())));
    while let Some((k, asked)) = next.take() {
        if !seen.insert(k.clone()) || seen.len() > MAX_CHAIN {
            return Err(Damaged(format!("manifest chain from {key} loops at {k}")).into());
        }
        let (v, m) = match asked {
            Some(v) => {
                let m = read(&k, &v).map_err(|e| e.context(format!("manifest {k} version {v}")))?;
                (v, m)
            }
            None => {
                let mut found = None;
                for cand in versions.get(&k).into_iter().flatten() {
                    match read(&k, &cand.version_id) {
                        Ok(m) => {
                            found = Some((cand.version_id.clone(), m));
                            break;
                        }
                        Err(ChainError::Damaged(d)) => {
                            crate::event!(
                                Warn,
                                "version_skipped",
                                key = k,
                                version = cand.version_id,
                                reason = d.to_string()
                            );
                        }
                        Err(e) => return Err(e),
                    }
                }
                found.ok_or_else(|| {
                    Damaged(format!(
                        "no version of manifest {k} (parent in the chain of {key}) reads as \
                         a manifest of subvolume {subvolume}"
                    ))
                })?
            }
        };
        for c in &m.chunks {
            let cand = versions
                .get(&c.key)
                .and_then(|vs| vs.iter().find(|x| x.size == c.size))
                .ok_or_else(|| {
                    Damaged(format!(
                        "no version of chunk {} has the {} bytes manifest {k} says",
                        c.key, c.size
                    ))
                })?;
            pins.insert(c.key.clone(), cand.version_id.clone());
        }
        crate::event!(Info, "version_pinned", key = k, version = v);
        pins.insert(k.clone(), v);
        next = match (m.kind, m.parent_manifest) {
            (Kind::Incremental, Some(p)) => Some((p, None)),
            _ => None,
        };
    }
    Ok(pins)
}

#[cfg(test)]
#[path = "versions_tests.rs"]
mod tests;

/// The repository seen through `pins` (read-only): the engines read those versions.
pub fn pinned_repo(
    cfg: &crate::config::Config,
    repo: &Repo,
    pins: HashMap<String, String>,
) -> Repo {
    Repo::new(
        cfg,
        Arc::new(Pinned::new(repo.store().clone(), pins)),
        repo.retrier().clone(),
    )
}
