//! The cheap check of a published chain: resolved as restore resolves it (`chain`), every
//! chunk HEADed (present, the manifest's size, the manifest's storage class, the
//! configured SSE; archive-class chunks not readable now are listed), and with `locks`
//! every manifest's and chunk's Object Lock read against what the chain needs (the newest
//! manifest's date). Used by the verify engine (`check.rs`, which adds the deep check) and
//! by `backup` on the parent chain before it plans an incremental. Every finding names
//! the key.

use anyhow::Result;

use super::archive::{is_archive, parse_restore_header, RestoreHeader};
use super::chain::ChainError;
use super::{Chain, Repo};
use crate::manifest::ManifestKey;

/// One thing wrong, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub key: String,
    pub problem: String,
    /// The bytes are missing or wrong (a restore would fail), as opposed to stored
    /// differently than configured (storage class, SSE).
    pub damage: bool,
}

/// The Object Lock of a chain as `verify` read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LockReport {
    /// Objects whose lock was read (manifests and the chunks present).
    pub objects: usize,
    /// What every object must be locked until: the newest manifest's retain-until date
    /// (ISO 8601), `None` when that manifest is not locked itself.
    pub needed_until: Option<String>,
    /// Objects unlocked or locked for less than that (each is also a finding).
    pub short: usize,
}

/// What the cheap check found.
#[derive(Debug, Default)]
pub struct ChainCheck {
    /// The resolved chain (`None`: the manifest is missing or the chain is damaged; the
    /// findings say which).
    pub chain: Option<Chain>,
    pub findings: Vec<Finding>,
    /// With `locks`: the chain's locks.
    pub object_lock: Option<LockReport>,
    /// Archive-class chunks not readable now (not restored).
    pub archived: Vec<String>,
}

/// What is wrong with an object's lock `lock` in a chain that needs `needed` (the newest
/// manifest's date; `None`: that manifest is unlocked, so any lock will do).
pub fn lock_problem(
    lock: Option<&crate::store::Retention>,
    needed: Option<crate::ts::Ts>,
) -> Option<String> {
    match (lock, needed) {
        (None, _) => Some(
            "not locked ([object_lock] is set, but the object has no Object Lock retention): \
             whoever may delete in the bucket can remove it; the next incremental on this \
             chain locks the whole chain"
                .into(),
        ),
        (Some(l), Some(n)) if l.until < n => Some(format!(
            "locked ({}) only until {}, shorter than the chain needs (until {}, the newest \
             backup's date): the next incremental on this chain extends it",
            l.mode,
            l.until.iso(),
            n.iso()
        )),
        _ => None,
    }
}

impl Repo {
    /// The cheap check of the chain from `key`: `sse` is what every chunk must carry
    /// (`none`: not checked); `locks` also reads every object's Object Lock. An error is a
    /// failed request (the check could not be done); damage is in the findings.
    pub fn check_chain(
        &self,
        subvolume: &str,
        key: &ManifestKey,
        sse: crate::config::Sse,
        locks: bool,
    ) -> Result<ChainCheck> {
        let mut rep = ChainCheck::default();
        if !self.exists(key)? {
            rep.findings.push(Finding {
                key: key.to_string(),
                problem: "the manifest is missing from the bucket".into(),
                damage: true,
            });
            return Ok(rep);
        }
        let chain = match self.chain(subvolume, key) {
            Ok(c) => c,
            Err(ChainError::Damaged(d)) => {
                rep.findings.push(Finding {
                    key: key.to_string(),
                    problem: d.to_string(),
                    damage: true,
                });
                return Ok(rep);
            }
            Err(ChainError::Failed(e)) => return Err(e),
        };
        let needed = match locks {
            true => Some(self.manifest_locks(&chain, &mut rep)?),
            false => None,
        };
        rep.archived = self.heads(&chain, sse, needed.flatten(), &mut rep)?;
        rep.chain = Some(chain);
        Ok(rep)
    }

    /// HEADs every manifest of the chain for its lock; returns the date the chain needs
    /// (the newest manifest's), with each manifest short of it a finding.
    fn manifest_locks(&self, chain: &Chain, rep: &mut ChainCheck) -> Result<Option<crate::ts::Ts>> {
        let mut locks = Vec::with_capacity(chain.links.len());
        for (key, _) in &chain.links {
            let head = self.head(key).map_err(|e| {
                anyhow::Error::from(e).context(format!("reading the Object Lock of manifest {key}"))
            })?;
            match head {
                Some(h) => locks.push((key, h.lock)),
                None => rep.findings.push(Finding {
                    key: key.to_string(),
                    problem: "the manifest is missing from the bucket".into(),
                    damage: true,
                }),
            }
        }
        let needed = chain
            .links
            .last()
            .and_then(|(newest, _)| locks.iter().find(|(k, _)| *k == newest))
            .and_then(|(_, l)| l.as_ref().map(|l| l.until));
        let mut lr = LockReport {
            needed_until: needed.map(|n| n.iso()),
            ..Default::default()
        };
        for (key, lock) in locks {
            lr.objects += 1;
            if let Some(problem) = lock_problem(lock.as_ref(), needed) {
                lr.short += 1;
                rep.findings.push(Finding {
                    key: key.to_string(),
                    problem,
                    damage: false,
                });
            }
        }
        rep.object_lock = Some(lr);
        Ok(needed)
    }

    /// HEADs every chunk; returns the archive-class chunks not readable now. With
    /// `locks`, each chunk's lock is held against `needed` too.
    fn heads(
        &self,
        chain: &Chain,
        sse: crate::config::Sse,
        needed: Option<crate::ts::Ts>,
        rep: &mut ChainCheck,
    ) -> Result<Vec<String>> {
        let mut archived = Vec::new();
        for (k, m) in &chain.links {
            for c in m.chunk_keys(&self.layout) {
                // The chain's manifests are checked: every chunk key is owned.
                let (c, key) =
                    c.map_err(|why| anyhow::anyhow!("internal: checked manifest {k}: {why}"))?;
                let head = self.head(&key).map_err(|e| {
                    anyhow::Error::from(e).context(format!("checking chunk {}", c.key))
                })?;
                let Some(h) = head else {
                    rep.findings.push(Finding {
                        key: c.key.clone(),
                        problem: "the chunk is missing from the bucket".into(),
                        damage: true,
                    });
                    continue;
                };
                if let Some(lr) = rep.object_lock.as_mut() {
                    lr.objects += 1;
                    if let Some(problem) = lock_problem(h.lock.as_ref(), needed) {
                        lr.short += 1;
                        rep.findings.push(Finding {
                            key: c.key.clone(),
                            problem,
                            damage: false,
                        });
                    }
                }
                let mut find = |problem: String, damage: bool| {
                    rep.findings.push(Finding {
                        key: c.key.clone(),
                        problem,
                        damage,
                    })
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
                let want = sse.header_value();
                if want.is_some() && h.sse.as_deref() != want {
                    find(
                        match &h.sse {
                            Some(s) => format!(
                                "the chunk is stored with server-side encryption {s}, s3.sse is {}",
                                sse
                            ),
                            None => format!(
                                "the service reports no server-side encryption for the chunk \
                                 (no x-amz-server-side-encryption), s3.sse is {}",
                                sse
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
}
