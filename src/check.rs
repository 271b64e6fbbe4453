//! The `verify` engine: checks a published chain without restoring it. The cheap check
//! is the repository's (`repo::chain_check`, shared with `backup`'s parent-chain check):
//! the chain resolved as restore does and every chunk HEADed (present, the manifest's
//! size, the manifest's storage class, the configured SSE), with `locks` (verify under
//! `[object_lock]`) every object's Object Lock held against what the chain needs. The
//! deep check also downloads every chunk that is readable now through the repository's
//! verified download (`repo::download`, as restore does) into nothing, checking each
//! SHA-256, the manifest's `stream_sha256`, and the send stream's commands as restore
//! would before `btrfs receive` (`sendstream::Guard`: no path that leaves the
//! subvolume); archive-class chunks are checked only once restored (`repo::archive`).
//! Every finding names the key.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::chunker::hex;
use crate::kind::Kind;
use crate::manifest::ManifestKey;
use crate::repo::archive;
pub use crate::repo::chain_check::{Finding, LockReport};
use crate::repo::download::DownloadError;
use crate::repo::{Chain, Repo};
use crate::sendstream::{Guard, Origin};

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
    /// Encrypted chunks decrypted and their plaintext checked (`--deep --identity`).
    pub plaintext_checked: usize,
    /// Archive-class chunks that were not downloaded.
    pub not_checked: Vec<String>,
    /// Archive restores requested and not waited for.
    pub restores_pending: usize,
    pub findings: Vec<Finding>,
    /// With `[object_lock]` (`Checker::locks`): the chain's locks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<LockReport>,
}

impl Report {
    /// Whether any finding is damage (not a failed request).
    pub fn damaged(&self) -> bool {
        self.findings.iter().any(|f| f.damage)
    }
}

pub struct Checker<'a> {
    pub repo: &'a Repo,
    /// `s3.sse`: what every chunk must carry (`none`: not checked).
    pub sse: crate::config::Sse,
    /// Downloader threads and ranged-read size for `--deep`.
    pub concurrency: usize,
    pub piece_size: u64,
    /// Age identities (`verify --deep --identity`): encrypted chunks are decrypted and
    /// their plaintext checked too. Without them only the ciphertext is checked.
    pub identities: &'a [crate::age::Identity],
    /// Check Object Lock too (`verify` with `[object_lock]`): every object of the chain
    /// locked at least until the newest manifest's date. Costs a HEAD per manifest.
    pub locks: bool,
}

impl Checker<'_> {
    /// Checks the chain from `key` (cheap; `deep` also hashes). An error is a failed
    /// request (the check could not be done); damage is in the report's findings.
    pub fn run(
        &self,
        subvolume: &str,
        key: &ManifestKey,
        deep: Option<Archived>,
        tier: &str,
    ) -> Result<Report> {
        let mut rep = Report {
            subvolume: subvolume.to_string(),
            start_key: key.to_string(),
            ..Default::default()
        };
        let cheap = self
            .repo
            .check_chain(subvolume, key, self.sse, self.locks)?;
        rep.findings = cheap.findings;
        rep.object_lock = cheap.object_lock;
        let Some(chain) = cheap.chain else {
            return Ok(rep);
        };
        rep.manifests = chain.links.iter().map(|(k, _)| k.to_string()).collect();
        rep.chunks = chain.chunk_count();
        rep.bytes = chain.total_bytes();
        if let Some(mode) = deep {
            self.deep(&chain, cheap.archived, mode, tier, &mut rep)?;
        }
        Ok(rep)
    }

    fn deep(
        &self,
        chain: &Chain,
        archived: Vec<String>,
        mode: Archived,
        tier: &str,
        rep: &mut Report,
    ) -> Result<()> {
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
                    let pending = self.repo.request_all_restores(&refs, tier)?;
                    match mode {
                        Archived::Wait(timeout) => {
                            self.repo.wait_restored(pending, timeout)?;
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
        // The UUID the previous link's stream created, when it was read whole.
        let mut previous: Option<Option<String>> = None;
        for (key, m) in &chain.links {
            let mut stream = Sha256::new();
            let mut whole = true;
            let origin = match (previous.take(), m.kind) {
                (None, Kind::Full) => Origin::Full,
                (None, _) => Origin::After(None),
                (Some(p), _) => Origin::After(p),
            };
            // Encrypted: the plaintext is checked only with identities (the sealed part
            // opens first: a wrong identity is a failed check, not damage).
            let sealed = match (&m.encryption, self.identities.is_empty()) {
                (None, _) | (Some(_), true) => None,
                (Some(_), false) => Some(crate::encryption::open(key, m, self.identities)?),
            };
            let sizes: Vec<u64> = match &sealed {
                None => m.chunks.iter().map(|c| c.size).collect(),
                Some(s) => s.chunks.iter().map(|c| c.size).collect(),
            };
            // The same check restore makes before `btrfs receive` sees a command; it
            // follows the stream only while no chunk is skipped (and only a stream it
            // can read: not ciphertext).
            let mut guard = (m.encryption.is_none() || sealed.is_some()).then(|| {
                Guard::new(
                    m.chunks.iter().zip(sizes).map(|(c, n)| (c.key.as_str(), n)),
                    &m.snapshot.name,
                    origin,
                )
            });
            for (i, c) in m.chunks.iter().enumerate() {
                if unreadable.contains(&c.key) {
                    rep.not_checked.push(c.key.clone());
                    whole = false;
                    guard = None;
                    continue;
                }
                if damaged.contains(&c.key) {
                    whole = false;
                    guard = None;
                    continue;
                }
                let mut hash = HashInto(&mut stream);
                let mut guarded;
                let out: &mut dyn Write = match guard.as_mut() {
                    Some(g) => {
                        guarded = g.writer(&mut hash);
                        &mut guarded
                    }
                    None => &mut hash,
                };
                let checked = match &sealed {
                    None => self.repo.stream_chunks(
                        std::slice::from_ref(c),
                        None,
                        self.piece_size,
                        self.concurrency,
                        out,
                    ),
                    Some(s) => self
                        .repo
                        .stream_decrypted(
                            std::slice::from_ref(c),
                            &crate::manifest::SealedPart {
                                stream_bytes: s.chunks[i].size,
                                chunks: vec![s.chunks[i].clone()],
                                extra: Default::default(),
                            },
                            self.identities,
                            self.piece_size,
                            self.concurrency,
                            out,
                        )
                        .inspect(|_| rep.plaintext_checked += 1),
                };
                match checked {
                    Ok(_) => rep.chunks_hashed += 1,
                    Err(DownloadError::Request(e)) => return Err(e),
                    Err(e) if self.repo.cancelled() => return Err(e.into()),
                    Err(DownloadError::Other(e)) => {
                        whole = false;
                        guard = None;
                        rep.findings.push(Finding {
                            key: c.key.clone(),
                            problem: format!("{e:#}"),
                            damage: true,
                        });
                    }
                }
            }
            match guard.as_ref().map(|g| g.finish()) {
                Some(Err(refused)) => {
                    rep.findings.push(Finding {
                        key: key.to_string(),
                        problem: refused.to_string(),
                        damage: true,
                    });
                    previous = Some(None);
                }
                Some(Ok(r)) => previous = Some(Some(r.uuid.clone())),
                None => previous = Some(None),
            }
            if let (true, Some(want)) = (whole, &m.stream_sha256) {
                let got = hex(&stream.finalize());
                if !got.eq_ignore_ascii_case(want) {
                    rep.findings.push(Finding {
                        key: key.to_string(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::manifest::{ChunkEntry, Kind, Layout, Manifest, S3Info, SnapshotRef};
    use crate::sendstream::build::Stream;
    use crate::store::memory::MemoryStore;
    use crate::store::{ErrorKind, PutOptions};

    fn opts(class: &str, sse: &str) -> PutOptions {
        PutOptions {
            storage_class: class.into(),
            sse: crate::config::Sse::parse(sse).expect("an s3.sse spelling"),
            content_type: "application/octet-stream",
            kms_key_id: None,
            lock: None,
        }
    }

    /// A full of three chunks in `class`; returns the store and the manifest key.
    fn bucket(class: &str) -> (Arc<MemoryStore>, Repo, String) {
        bucket_with(class, &|s| s)
    }

    /// A send stream of exactly 3,000 bytes: `subvol`, what `add` adds, a `write` that
    /// fills it up, `end`.
    fn stream_of(name: &str, add: &dyn Fn(Stream) -> Stream) -> Vec<u8> {
        let build = |n: usize| {
            add(Stream::new(1).subvol(name, [9; 16]))
                .write("f", &vec![7u8; n])
                .end()
                .bytes()
        };
        build(3000 - build(0).len())
    }

    /// Like `bucket`, with commands of the caller's in the stream.
    fn bucket_with(
        class: &str,
        add: &dyn Fn(Stream) -> Stream,
    ) -> (Arc<MemoryStore>, Repo, String) {
        let cfg = crate::config::Config::parse(
            "[subvolumes]\npaths = [\"/srv/data\"]\n[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n",
            &crate::config::ProcessEnv,
        )
        .unwrap();
        let store = Arc::new(MemoryStore::new());
        let repo = Repo::new(&cfg, store.clone(), Arc::new(crate::testing::retrier()));
        let layout = Layout::new("p");
        let ts = crate::ts::Ts::parse("20250101T020000Z").unwrap();
        let mut stream = Sha256::new();
        let bytes = stream_of(&format!("data__{ts}__full"), add);
        let chunks: Vec<ChunkEntry> = (0..3)
            .map(|i| {
                let key = layout.chunk_key("data", Kind::Full, ts, i);
                let data = bytes[i as usize * 1000..(i as usize + 1) * 1000].to_vec();
                stream.update(&data);
                store.insert(&key, &data, opts(class, "AES256"));
                ChunkEntry {
                    key: key.into_string(),
                    size: 1000,
                    sha256: hex(&Sha256::digest(&data)),
                    etag: None,
                    extra: Default::default(),
                }
            })
            .collect();
        let m = Manifest {
            version: 1,
            subvolume: "data".into(),
            kind: Kind::Full,
            created_at: ts.to_string(),
            snapshot: SnapshotRef {
                name: format!("data__{ts}__full"),
                path: "/x".into(),
                uuid: None,
                parent_uuid: None,
                extra: Default::default(),
            },
            parent_manifest: None,
            chunks,
            total_bytes: 3000,
            chunk_size: 1000,
            s3: S3Info {
                storage_class: class.into(),
                extra: Default::default(),
            },
            stream_sha256: Some(hex(&stream.finalize())),
            send_protocol: None,
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        };
        let key = layout.manifest_key("data", Kind::Full, ts);
        repo.publish(&key, &m).unwrap();
        (store, repo, key.into_string())
    }

    /// `k` as a manifest key of `data` (the tests' keys are all owned).
    fn mk(repo: &Repo, k: &str) -> ManifestKey {
        repo.manifest_key_of("data", k).unwrap()
    }

    /// The checker these tests use: SSE-S3 required, two downloaders, 300-byte pieces.
    fn checker(repo: &Repo) -> Checker<'_> {
        Checker {
            repo,
            sse: crate::config::Sse::Aes256,
            concurrency: 2,
            piece_size: 300,
            identities: &[],
            locks: false,
        }
    }

    fn check(repo: &Repo, key: &str, deep: Option<Archived>) -> Report {
        checker(repo)
            .run("data", &mk(repo, key), deep, "Standard")
            .unwrap()
    }

    #[test]
    fn a_sound_chain_passes_cheap_and_deep() {
        let (_, repo, key) = bucket("STANDARD");
        let r = check(&repo, &key, Some(Archived::Skip));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!((r.chunks, r.chunks_hashed, r.bytes), (3, 3, 3000));
    }

    #[test]
    fn damage_is_a_finding_and_a_failed_request_is_an_error() {
        // The manifest does not parse: damage (ChainError::Damaged), a finding.
        let (store, repo, key) = bucket("STANDARD");
        store.insert(&key, b"{not json", opts("STANDARD", "AES256"));
        let r = checker(&repo)
            .run("data", &mk(&repo, &key), None, "Standard")
            .unwrap();
        assert!(r.findings.iter().any(|f| f.damage), "{:?}", r.findings);
        // Its GET fails: the check could not be made (ChainError::Failed), an error.
        let (store, repo, key) = bucket("STANDARD");
        store.fail(&format!("GET {key}"), ErrorKind::Permanent, 10);
        let e = checker(&repo)
            .run("data", &mk(&repo, &key), None, "Standard")
            .unwrap_err();
        assert!(format!("{e:#}").contains(&key), "{e:#}");
        // Deep: a chunk that is gone is a finding ...
        let chunk = "p/subvol/data/full/chunk-20250101T020000Z-1.bin";
        let (store, repo, key) = bucket("STANDARD");
        store.remove(chunk);
        let r = checker(&repo)
            .run("data", &mk(&repo, &key), Some(Archived::Skip), "Standard")
            .unwrap();
        assert!(
            r.findings.iter().any(|f| f.key == chunk),
            "{:?}",
            r.findings
        );
        // ... a chunk whose GET fails is an error (DownloadError::Request).
        let (store, repo, key) = bucket("STANDARD");
        store.fail(&format!("GET {chunk}"), ErrorKind::Permanent, 10);
        let e = checker(&repo)
            .run("data", &mk(&repo, &key), Some(Archived::Skip), "Standard")
            .unwrap_err();
        assert!(format!("{e:#}").contains(chunk), "{e:#}");
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let (store, repo, key) = bucket("STANDARD");
        let k = |i: u64| format!("p/subvol/data/full/chunk-20250101T020000Z-{i}.bin");
        // A flipped byte: the cheap check cannot see it, the deep one names the chunk.
        let mut bad = vec![1u8; 1000];
        bad[500] ^= 1;
        store.insert(&k(1), &bad, opts("STANDARD", "AES256"));
        assert!(check(&repo, &key, None).findings.is_empty());
        let r = check(&repo, &key, Some(Archived::Skip));
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert_eq!(r.findings[0].key, k(1));
        assert!(
            r.findings[0].problem.contains("SHA-256"),
            "{:?}",
            r.findings
        );
        // Truncated, missing, another class, no SSE.
        store.insert(&k(1), &[1u8; 999], opts("STANDARD", "AES256"));
        store.remove(&k(2));
        store.insert(&k(0), &[0u8; 1000], opts("GLACIER_IR", "none"));
        let r = check(&repo, &key, None);
        let find = |key: &str, word: &str| {
            r.findings
                .iter()
                .any(|f| f.key == key && f.problem.contains(word))
        };
        assert!(find(&k(1), "999 bytes"), "{:?}", r.findings);
        assert!(find(&k(2), "missing"), "{:?}", r.findings);
        assert!(find(&k(0), "GLACIER_IR"), "{:?}", r.findings);
        assert!(
            find(&k(0), "server-side encryption none"),
            "{:?}",
            r.findings
        );
        assert!(r.damaged());
        // A missing manifest is a finding too, not an error.
        store.remove(&key);
        let r = check(&repo, &key, None);
        assert!(
            r.findings[0].problem.contains("missing"),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn deep_finds_a_doctored_stream_that_hashes_correctly() {
        // A bucket writer's stream: correct SHA-256s, a symlink placed beside the
        // subvolume (`../x`) pointing at a host subvolume.
        let (_, repo, key) = bucket_with("STANDARD", &|s| s.symlink("../x", "/srv/victim"));
        assert!(check(&repo, &key, None).findings.is_empty());
        let r = check(&repo, &key, Some(Archived::Skip));
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        let f = &r.findings[0];
        assert_eq!(f.key, "p/subvol/data/full/chunk-20250101T020000Z-0.bin");
        assert!(
            f.problem.contains("command 2 (symlink)") && f.problem.contains("\"../x\""),
            "{f:?}"
        );
        assert!(r.damaged());
    }

    #[test]
    fn archived_chunks_are_skipped_requested_or_waited_for() {
        let (store, repo, key) = bucket("DEEP_ARCHIVE");
        let r = check(&repo, &key, Some(Archived::Skip));
        assert_eq!((r.not_checked.len(), r.chunks_hashed), (3, 0));
        assert!(r.findings.is_empty());
        assert!(!store.log().iter().any(|l| l.starts_with("RestoreObject")));
        store.set_restore_delay_heads(1);
        let r = check(&repo, &key, Some(Archived::Request));
        assert_eq!(r.restores_pending, 3);
        let r = check(&repo, &key, Some(Archived::Wait(Duration::from_secs(60))));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!((r.not_checked.len(), r.chunks_hashed), (0, 3));
    }
}
