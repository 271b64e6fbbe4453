//! The resume journal of one subvolume's unpublished backup: an append-only file of JSON
//! lines beside the state file (`<state file>.resume-<name>.jsonl`), one fsync per record,
//! written before the first byte goes up and removed once the backup is published and
//! recorded (or abandoned). It says which snapshot is being sent against which parent
//! with which settings, and how far each chunk's upload got, so a later run can send
//! the same snapshot again and upload only what is not stored yet.
//!
//! Records, in order of appearance: one `begin`; then any number of `upload` (a
//! multipart upload was opened for a chunk), `part` (a part is stored), `chunk` (a chunk
//! object is stored whole), `sealed` (encryption only: the file key, age header and
//! payload nonce of a chunk's age file, written before any of its bytes go up, so a
//! resume re-encrypts the chunk to the bytes already stored); finally `publishing` (the
//! manifest key about to be PUT). The file is created 0600 because of `sealed` records.
//! A `part` record's `sha256_through` is the SHA-256 of the chunk's bytes from its first
//! byte through the end of that part: it covers the part's bytes (and the ones before
//! them) and costs no extra pass over the data. A torn last line (a crash mid-write) is
//! ignored; anything unreadable before it ends the reading there.
//!
//! The journal is input like the bucket: a resume aborts, HEADs and publishes the keys
//! it names and sends against the snapshots it names. [`load`] refuses ([`Refused`]) a
//! file that is a symlink, not a regular single-link file, not ours, or writable by group
//! or others; [`Pending::check`] refuses one whose keys are not exactly this
//! subvolume's keys of its run, or whose snapshots are not this subvolume's snapshot
//! names in `snapshots.base_dir`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::manifest::{Kind, Layout};
use crate::snapshots::SnapName;
use crate::ts::Ts;

/// The journal format's version (in `begin`).
pub const VERSION: u32 = 1;

/// What the backup is, and the settings that shape its stream and its keys: a resume
/// happens only when all of them still hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// The journal format's version ([`VERSION`]).
    pub version: u32,
    /// The subvolume's name.
    pub subvolume: String,
    /// The run's timestamp: chunk and manifest keys and `created_at` use it.
    pub run_ts: String,
    /// Full or incremental.
    pub kind: Kind,
    /// The new read-only snapshot being sent.
    pub snapshot: String,
    /// The parent snapshot (incremental), and its manifest.
    pub parent: Option<String>,
    /// The parent's manifest key (incremental).
    pub parent_manifest: Option<String>,
    /// The state's `last_full_at` when the backup began (for the state after publishing).
    pub last_full_at: Option<String>,
    /// The settings the stream and keys were made with.
    pub settings: Settings,
    /// The send protocol the backup began with (2: `--compressed-data`); a resume sends
    /// the same way, whatever `s3.send_compressed_data` detects now.
    #[serde(default = "proto1")]
    pub send_protocol: u32,
}

fn proto1() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The settings a resume needs unchanged: bucket, prefix, sizes, class, SSE, encryption.
pub struct Settings {
    /// `s3.bucket`.
    pub bucket: String,
    /// `s3.prefix`.
    pub prefix: String,
    /// `s3.chunk_size_bytes`.
    pub chunk_size: u64,
    /// The effective part size.
    pub part_size: u64,
    /// `s3.storage_class`.
    pub storage_class: String,
    /// `s3.sse`.
    pub sse: String,
    /// The age recipients (`age1…`) chunks are encrypted to; absent: not encrypted. A
    /// change of recipients abandons the pending backup like any other setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Vec<String>>,
}

/// A chunk's age sealing as the journal keeps it: file key and nonce in hex, the header
/// in base64. `Debug` never shows the file key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealingRecord {
    /// The file key, 32 hex digits (the journal is 0600).
    pub file_key: String,
    /// The age header, base64.
    pub header: String,
    /// The payload nonce, 32 hex digits.
    pub nonce: String,
}

impl std::fmt::Debug for SealingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingRecord")
            .field("file_key", &"[redacted]")
            .field("header", &self.header)
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl SealingRecord {
    /// The record of a sealing.
    pub fn of(s: &crate::age::Sealing) -> SealingRecord {
        use base64::Engine;
        SealingRecord {
            file_key: crate::chunker::hex(s.file_key().expose_secret()),
            header: base64::engine::general_purpose::STANDARD.encode(s.header().as_bytes()),
            nonce: crate::chunker::hex(&s.nonce().0),
        }
    }

    /// The sealing, or what is wrong with the record (never quoting the key).
    pub fn sealing(&self) -> Result<crate::age::Sealing, String> {
        use base64::Engine;
        fn unhex<const N: usize>(v: &str) -> Option<[u8; N]> {
            if v.len() != 2 * N || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            let mut out = [0u8; N];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        }
        let key = unhex::<16>(&self.file_key).ok_or("its file key is not 32 hex digits")?;
        let key = crate::age::FileKey::from_bytes(key);
        let nonce = unhex::<16>(&self.nonce).ok_or("its nonce is not 32 hex digits")?;
        let header = base64::engine::general_purpose::STANDARD
            .decode(&self.header)
            .map_err(|_| "its header is not base64")?;
        crate::age::Sealing::from_parts(key, &header, crate::age::PayloadNonce(nonce))
            .map_err(|e| format!("its age header does not hold: {e}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
// One record per line, written and read once: the size of `Begin` does not matter.
#[allow(clippy::large_enum_variant)]
/// One line of the journal.
pub enum Record {
    /// The first line: what the backup is.
    Begin(Begin),
    /// A multipart upload was opened for a chunk.
    Upload {
        /// The chunk's index, from 0.
        chunk: u64,
        /// The chunk object's key.
        key: String,
        /// The multipart upload's id.
        upload_id: String,
    },
    /// A part of an open upload is stored.
    Part {
        /// The chunk's index, from 0.
        chunk: u64,
        /// The part number, from 1.
        part: u32,
        /// Bytes stored.
        size: u64,
        /// The chunk's SHA-256 state through this part, to resume hashing.
        sha256_through: String,
        /// The ETag the service returned.
        etag: String,
    },
    /// A chunk object is stored whole.
    Chunk {
        /// The chunk's index, from 0.
        chunk: u64,
        /// The chunk object's key.
        key: String,
        /// Bytes stored.
        size: u64,
        /// The chunk's SHA-256.
        sha256: String,
        /// The ETag the service returned.
        etag: String,
    },
    /// A chunk's age sealing, before any of its bytes go up (encryption only).
    Sealed {
        /// The chunk's index, from 0.
        chunk: u64,
        /// The sealing.
        #[serde(flatten)]
        sealing: SealingRecord,
    },
    /// The manifest is being published: what a crash leaves to recover.
    Publishing {
        /// The manifest's key.
        manifest_key: String,
    },
}

/// A stored part of an open multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartDone {
    /// Bytes in the part.
    pub size: u64,
    /// The chunk's SHA-256 state through this part, to resume hashing.
    pub sha256_through: String,
    /// The part's ETag.
    pub etag: String,
}

/// How far one chunk got, as the journal tells it (a chunk it does not name was not
/// started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkProgress {
    /// A multipart upload is open; these parts are stored.
    Open {
        /// The chunk object's key.
        key: String,
        /// The multipart upload's id.
        upload_id: String,
        /// The stored parts, by number.
        parts: BTreeMap<u32, PartDone>,
    },
    /// The chunk object is stored whole.
    Stored {
        /// The chunk object's key.
        key: String,
        /// Bytes stored.
        size: u64,
        /// The chunk's SHA-256.
        sha256: String,
        /// The ETag the service returned.
        etag: String,
    },
}

/// A journal as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Where the journal is.
    pub path: PathBuf,
    /// Its begin record.
    pub begin: Begin,
    /// How far each started chunk got.
    pub chunks: BTreeMap<u64, ChunkProgress>,
    /// The manifest key being published, if it got that far.
    pub publishing: Option<String>,
    /// Each chunk's age sealing (encryption only), the last record for a chunk winning.
    pub sealings: BTreeMap<u64, SealingRecord>,
    /// Bytes of whole, readable records: a torn tail after them is cut on reopening.
    pub valid_len: u64,
}

impl Pending {
    /// Every multipart upload the journal says is open: `(key, upload id)`.
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        self.chunks
            .values()
            .filter_map(|c| match c {
                ChunkProgress::Open { key, upload_id, .. } => {
                    Some((key.clone(), upload_id.clone()))
                }
                ChunkProgress::Stored { .. } => None,
            })
            .collect()
    }

    /// Bytes the journal says are stored (whole chunks and parts).
    pub fn stored_bytes(&self) -> u64 {
        stored_bytes(&self.chunks)
    }
}

/// Bytes stored according to `chunks` (whole chunks and the parts of open uploads).
pub fn stored_bytes(chunks: &BTreeMap<u64, ChunkProgress>) -> u64 {
    chunks
        .values()
        .map(|c| match c {
            ChunkProgress::Stored { size, .. } => *size,
            ChunkProgress::Open { parts, .. } => parts.values().map(|p| p.size).sum(),
        })
        .fold(0u64, u64::saturating_add)
}

/// A journal this tool does not act on (inside `anyhow::Error`): it is not the one this
/// tool wrote for the subvolume, or others could have changed it. Nothing it names is
/// touched; the subvolume's run fails with the message, which names the file and the fix.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Why [`load`] gives no journal: the caller decides by the variant (a refused journal
/// fails the subvolume's run and nothing it names is touched; an unreadable one is
/// abandoned), not by looking into an error chain.
#[derive(Debug)]
pub enum LoadError {
    /// A file others could have written, or naming what is not this subvolume's.
    Refused(Refused),
    /// It cannot be read or does not parse: nothing in it can be trusted or resumed.
    Unreadable(anyhow::Error),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Refused(r) => r.fmt(f),
            // The whole chain, as the error was printed before it was typed.
            LoadError::Unreadable(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The refusal of the journal at `path` for `problem`, with the way out (`fix`, when
/// the file may be ours after all, else: remove it).
fn refused(path: &Path, problem: &str, fix: Option<&str>) -> Refused {
    let p = path.display();
    let fix = match fix {
        Some(f) => format!("{f}, or look at it and remove it"),
        None => "look at it, then remove it".to_string(),
    };
    Refused(format!(
        "resume journal {p}: {problem}; nothing it names was touched: {fix} \
         (rm {p}; the next backup of the subvolume starts afresh)"
    ))
}

/// The refusal of a journal whose content is not what this tool writes.
fn foreign(path: &Path, problem: String) -> Refused {
    refused(
        path,
        &format!("{problem}, which this tool never writes"),
        None,
    )
}

fn printable(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn is_sha256(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Pending {
    /// Refuses a journal that is not exactly what a backup of subvolume `name` writes:
    /// its subvolume, run timestamp, snapshot (`base_dir/<name>__<run>__<kind>`), parent
    /// (one of the subvolume's snapshot names in `base_dir`, for an incremental only),
    /// parent manifest (a manifest key of the subvolume), and every key it names (chunk
    /// `i` of this run is `layout.chunk_key(name, kind, run, i)`, the published manifest
    /// `layout.manifest_key(name, kind, run)`), upload ids, ETags and hashes.
    pub fn check(&self, name: &str, layout: &Layout, base_dir: &Path) -> Result<(), Refused> {
        let b = &self.begin;
        let bad = |problem: String| Err(foreign(&self.path, problem));
        if b.subvolume != name {
            return bad(format!(
                "it is the journal of subvolume {:?}, not of {name}",
                b.subvolume
            ));
        }
        let ts = match Ts::parse(&b.run_ts) {
            Ok(ts) if ts.to_string() == b.run_ts => ts,
            _ => return bad(format!("its run timestamp {:?} is not one", b.run_ts)),
        };
        let snap = base_dir.join(
            SnapName {
                subvolume: name.to_string(),
                ts,
                kind: b.kind,
            }
            .file_name(),
        );
        if Path::new(&b.snapshot) != snap {
            return bad(format!(
                "its snapshot {:?} is not {} (snapshots.base_dir and the run's name)",
                b.snapshot,
                snap.display()
            ));
        }
        match (b.kind, &b.parent, &b.parent_manifest) {
            (Kind::Full, None, None) => {}
            (Kind::Full, _, _) => {
                return bad("it is a full backup with a parent".to_string());
            }
            (Kind::Incremental, Some(parent), Some(manifest)) => {
                let p = Path::new(parent);
                let ours = p.parent() == Some(base_dir)
                    && SnapName::from_path(name, p).is_some()
                    && p != snap;
                if !ours {
                    return bad(format!(
                        "its parent snapshot {parent:?} is not a snapshot of {name} in {}",
                        base_dir.display()
                    ));
                }
                if !matches!(
                    layout.parse(manifest),
                    Some((n, crate::manifest::Shape::Manifest { .. })) if n == name
                ) || !layout.owns(name, manifest)
                {
                    return bad(format!(
                        "its parent manifest {manifest:?} is not a manifest key of {name} under {}",
                        layout.subvolume_prefix(name)
                    ));
                }
            }
            (Kind::Incremental, _, _) => {
                return bad("it is an incremental backup without a parent".to_string());
            }
        }
        if let Some(t) = &b.last_full_at {
            if Ts::parse(t).is_err() {
                return bad(format!("its last_full_at {t:?} is not a time"));
            }
        }
        if !matches!(b.send_protocol, 1 | 2) {
            return bad(format!(
                "its send protocol {} is not 1 or 2",
                b.send_protocol
            ));
        }
        let key_problem = |i: u64, key: &str| -> Option<String> {
            let want = layout.chunk_key(name, b.kind, ts, i);
            if want == *key {
                None
            } else if !layout.owns(name, key) {
                Some(format!(
                    "it names the key {key:?} for chunk {i}, which is not under {name}'s prefix {}",
                    layout.subvolume_prefix(name)
                ))
            } else {
                Some(format!(
                    "it names the key {key:?} for chunk {i}, which is {want} in this backup"
                ))
            }
        };
        for (i, c) in &self.chunks {
            match c {
                ChunkProgress::Stored {
                    key, sha256, etag, ..
                } => {
                    if let Some(p) = key_problem(*i, key) {
                        return bad(p);
                    }
                    if !is_sha256(sha256) || !printable(etag, 1024) {
                        return bad(format!(
                            "its record of chunk {key} has a malformed SHA-256 or ETag"
                        ));
                    }
                }
                ChunkProgress::Open {
                    key,
                    upload_id,
                    parts,
                } => {
                    if let Some(p) = key_problem(*i, key) {
                        return bad(p);
                    }
                    if !printable(upload_id, 1024) {
                        return bad(format!("its upload id for chunk {key} is malformed"));
                    }
                    for (n, d) in parts {
                        if !(1..=10_000).contains(n)
                            || !is_sha256(&d.sha256_through)
                            || !printable(&d.etag, 1024)
                        {
                            return bad(format!(
                                "its record of part {n} of chunk {key} is malformed"
                            ));
                        }
                    }
                }
            }
        }
        let encrypted = match &b.settings.encryption {
            None => false,
            Some(r) => {
                if r.is_empty() || crate::age::parse_recipient_list(r).is_err() {
                    return bad("its encryption recipients are not age recipients".to_string());
                }
                true
            }
        };
        if !encrypted && !self.sealings.is_empty() {
            return bad("it keeps age sealings for a backup without encryption".to_string());
        }
        for (i, rec) in &self.sealings {
            if let Err(p) = rec.sealing() {
                return bad(format!("its age sealing of chunk {i} is malformed: {p}"));
            }
        }
        if encrypted {
            if let Some(i) = self.chunks.keys().find(|i| !self.sealings.contains_key(i)) {
                return bad(format!(
                    "it names chunk {i} of an encrypted backup without its age sealing"
                ));
            }
        }
        if let Some(k) = &self.publishing {
            let want = layout.manifest_key(name, b.kind, ts);
            if want != *k {
                return bad(format!(
                    "it names the manifest {k:?}, which is {want} in this backup"
                ));
            }
        }
        Ok(())
    }
}

/// The journal path of subvolume `name`: beside the state file.
pub fn path_for(state_path: &Path, name: &str) -> PathBuf {
    let file = state_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.json".into());
    state_path.with_file_name(format!("{file}.resume-{name}.jsonl"))
}

/// An open journal being appended to.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Creates the journal (it must not exist) with its `begin` record, durably.
    pub fn create(path: &Path, begin: &Begin) -> Result<Journal> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(path)
            .with_context(|| format!("creating the resume journal {}", path.display()))?;
        let mut j = Journal {
            file,
            path: path.to_path_buf(),
        };
        j.append(&Record::Begin(begin.clone()))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing the state directory {}", dir.display()))?;
        }
        Ok(j)
    }

    /// Reopens a journal read with [`load`] to go on appending (a resumed backup); a
    /// torn tail from a crash is cut first, so the next record starts a line of its own.
    pub fn reopen(p: &Pending) -> Result<Journal> {
        let path = &p.path;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(path)
            .and_then(|f| {
                f.set_len(p.valid_len)?;
                f.sync_data()?;
                Ok(f)
            })
            .with_context(|| format!("opening the resume journal {}", path.display()))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
            .with_context(|| format!("opening the resume journal {}", path.display()))?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(r).context("encoding a journal record")?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing the resume journal {}", self.path.display()))
    }
}

/// Removes a journal (published and recorded, or abandoned).
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the resume journal {}", path.display())),
    }
}

/// Opens the journal at `path` for reading without following a symlink (nor blocking
/// on a FIFO), and refuses it unless it is a regular file with one link, owned by the
/// user we run as and writable by nobody else; `None` when there is none.
fn open_checked(path: &Path) -> Result<Option<File>, LoadError> {
    use rustix::fs::OFlags;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(LoadError::Refused(refused(
                path,
                "it is a symbolic link",
                None,
            )))
        }
        Err(e) => {
            return Err(LoadError::Unreadable(
                anyhow::Error::new(e)
                    .context(format!("opening the resume journal {}", path.display())),
            ))
        }
    };
    let m = file
        .metadata()
        .with_context(|| {
            format!(
                "reading the metadata of the resume journal {}",
                path.display()
            )
        })
        .map_err(LoadError::Unreadable)?;
    let me = rustix::process::geteuid().as_raw();
    if !m.file_type().is_file() {
        return Err(LoadError::Refused(refused(
            path,
            "it is not a regular file",
            None,
        )));
    }
    if m.uid() != me {
        return Err(LoadError::Refused(refused(
            path,
            &format!("it is owned by uid {}, not by us (uid {me})", m.uid()),
            Some(&format!("if it is ours, chown {me} {}", path.display())),
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(LoadError::Refused(refused(
            path,
            &format!(
                "its mode {:o} lets group or others write it",
                m.mode() & 0o7777
            ),
            Some(&format!("if it is ours, chmod go-w {}", path.display())),
        )));
    }
    if m.nlink() != 1 {
        return Err(LoadError::Refused(refused(
            path,
            &format!(
                "it has {} hard links (it may be another file's name)",
                m.nlink()
            ),
            None,
        )));
    }
    Ok(Some(file))
}

/// Reads the journal at `path`; `None` when there is none. A file others could have
/// written is refused ([`Refused`]); its content is checked by [`Pending::check`].
pub fn load(path: &Path) -> Result<Option<Pending>, LoadError> {
    let Some(mut file) = open_checked(path)? else {
        return Ok(None);
    };
    let p = read(path, &mut file).map_err(LoadError::Unreadable)?;
    sealings_private(path, &file, &p)?;
    Ok(Some(p))
}

/// Age file keys others could have read are not reused: what a resume would add to
/// those chunks could be read by whoever copied the keys.
fn sealings_private(path: &Path, file: &File, p: &Pending) -> Result<(), LoadError> {
    if p.sealings.is_empty() {
        return Ok(());
    }
    let mode = file
        .metadata()
        .with_context(|| {
            format!(
                "reading the metadata of the resume journal {}",
                path.display()
            )
        })
        .map_err(LoadError::Unreadable)?
        .mode();
    if mode & 0o044 != 0 {
        return Err(LoadError::Refused(refused(
            path,
            &format!(
                "it keeps age file keys and its mode {:o} lets group or others read \
                 them (it is written 0600), so a resume must not reuse them",
                mode & 0o7777
            ),
            None,
        )));
    }
    Ok(())
}

/// The records of an opened journal, checked for shape and version.
fn read(path: &Path, file: &mut File) -> Result<Pending> {
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .with_context(|| format!("reading the resume journal {}", path.display()))?;
    // Whole lines only, with the offset just past each.
    let mut lines = Vec::new();
    let mut start = 0usize;
    for (i, b) in text.iter().enumerate() {
        if *b == b'\n' {
            lines.push((&text[start..i], (i + 1) as u64));
            start = i + 1;
        }
    }
    let mut lines = lines.into_iter();
    let (begin, mut valid_len) = match lines.next() {
        Some((l, end)) => match serde_json::from_slice::<Record>(l) {
            Ok(Record::Begin(b)) => (b, end),
            _ => bail!(
                "the resume journal {} does not start with a begin record",
                path.display()
            ),
        },
        None => bail!(
            "the resume journal {} does not start with a begin record",
            path.display()
        ),
    };
    if begin.version != VERSION {
        bail!(
            "the resume journal {} has version {}, this tool writes {VERSION}",
            path.display(),
            begin.version
        );
    }
    let mut p = Pending {
        path: path.to_path_buf(),
        begin,
        chunks: BTreeMap::new(),
        publishing: None,
        sealings: BTreeMap::new(),
        valid_len,
    };
    for (line, end) in lines {
        // A line that does not parse is a torn write from a crash: nothing after it counts.
        let Ok(r) = serde_json::from_slice::<Record>(line) else {
            break;
        };
        valid_len = end;
        p.valid_len = valid_len;
        match r {
            Record::Begin(_) => break,
            Record::Upload {
                chunk,
                key,
                upload_id,
            } => {
                p.chunks.insert(
                    chunk,
                    ChunkProgress::Open {
                        key,
                        upload_id,
                        parts: BTreeMap::new(),
                    },
                );
            }
            Record::Part {
                chunk,
                part,
                size,
                sha256_through,
                etag,
            } => {
                if let Some(ChunkProgress::Open { parts, .. }) = p.chunks.get_mut(&chunk) {
                    parts.insert(
                        part,
                        PartDone {
                            size,
                            sha256_through,
                            etag,
                        },
                    );
                }
            }
            Record::Chunk {
                chunk,
                key,
                size,
                sha256,
                etag,
            } => {
                p.chunks.insert(
                    chunk,
                    ChunkProgress::Stored {
                        key,
                        size,
                        sha256,
                        etag,
                    },
                );
            }
            Record::Sealed { chunk, sealing } => {
                p.sealings.insert(chunk, sealing);
            }
            Record::Publishing { manifest_key } => p.publishing = Some(manifest_key),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin() -> Begin {
        Begin {
            version: VERSION,
            subvolume: "data".into(),
            run_ts: "20250101T020000Z".into(),
            kind: Kind::Full,
            snapshot: "/s/data__20250101T020000Z__full".into(),
            parent: None,
            parent_manifest: None,
            last_full_at: None,
            send_protocol: 2,
            settings: Settings {
                bucket: "b".into(),
                prefix: "p".into(),
                chunk_size: 100,
                part_size: 10,
                storage_class: "STANDARD".into(),
                sse: "AES256".into(),
                encryption: None,
            },
        }
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let d = crate::testing::Scratch::new("journal");
        let path = path_for(&d.0.join("state.json"), "data");
        assert_eq!(path, d.0.join("state.json.resume-data.jsonl"));
        assert_eq!(load(&path).unwrap(), None);
        let mut j = Journal::create(&path, &begin()).unwrap();
        assert!(Journal::create(&path, &begin()).is_err(), "never clobbered");
        for r in [
            Record::Chunk {
                chunk: 0,
                key: "k0".into(),
                size: 100,
                sha256: "a".into(),
                etag: "e0".into(),
            },
            Record::Upload {
                chunk: 1,
                key: "k1".into(),
                upload_id: "u1".into(),
            },
            Record::Part {
                chunk: 1,
                part: 1,
                size: 10,
                sha256_through: "b".into(),
                etag: "p1".into(),
            },
        ] {
            j.append(&r).unwrap();
        }
        drop(j);
        let mut j = Journal::reopen(&load(&path).unwrap().unwrap()).unwrap();
        j.append(&Record::Part {
            chunk: 1,
            part: 2,
            size: 10,
            sha256_through: "c".into(),
            etag: "p2".into(),
        })
        .unwrap();
        // A crash mid-write leaves half a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(br#"{"record":"part","chunk":1,"pa"#)
            .unwrap();
        let p = load(&path).unwrap().unwrap();
        // Appending after the torn tail cuts it first: the new record is read back.
        let mut j = Journal::reopen(&p).unwrap();
        j.append(&Record::Publishing {
            manifest_key: "m".into(),
        })
        .unwrap();
        let p = load(&path).unwrap().unwrap();
        assert_eq!(p.publishing.as_deref(), Some("m"));
        assert_eq!(p.begin, begin());
        assert_eq!(p.chunks.len(), 2);
        assert_eq!(p.open_uploads(), vec![("k1".to_string(), "u1".to_string())]);
        assert_eq!(p.stored_bytes(), 120);
        match &p.chunks[&1] {
            ChunkProgress::Open { parts, .. } => {
                assert_eq!(parts.keys().copied().collect::<Vec<_>>(), [1, 2])
            }
            other => panic!("{other:?}"),
        }
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn a_journal_without_begin_or_of_another_version_is_an_error() {
        let d = crate::testing::Scratch::new("journal-bad");
        let path = d.0.join("j");
        std::fs::write(
            &path,
            b"{\"record\":\"publishing\",\"manifest_key\":\"k\"}\n",
        )
        .unwrap();
        assert!(format!("{:#}", load(&path).unwrap_err()).contains("begin record"));
        let mut b = begin();
        b.version = 9;
        let line = serde_json::to_string(&Record::Begin(b)).unwrap();
        std::fs::write(&path, line + "\n").unwrap();
        assert!(format!("{:#}", load(&path).unwrap_err()).contains("version 9"));
    }

    fn refusal(r: Result<Option<Pending>, LoadError>) -> String {
        let e = r.expect_err("the journal is refused");
        assert!(matches!(e, LoadError::Refused(_)), "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn a_journal_others_could_write_is_refused_naming_the_file_and_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let d = crate::testing::Scratch::new("journal-file");
        let path = path_for(&d.0.join("state.json"), "data");
        Journal::create(&path, &begin()).unwrap();
        assert!(
            load(&path).unwrap().is_some(),
            "our own journal (0600) reads"
        );
        let good = std::fs::read(&path).unwrap();

        // A symlink to a journal elsewhere is not followed.
        let elsewhere = d.0.join("elsewhere.jsonl");
        std::fs::write(&elsewhere, &good).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let e = refusal(load(&path));
        assert!(
            e.contains(&path.display().to_string()) && e.contains("symbolic link"),
            "{e}"
        );
        assert!(e.contains(&format!("rm {}", path.display())), "{e}");
        std::fs::remove_file(&path).unwrap();

        // Writable by group, or by others.
        for mode in [0o620, 0o602, 0o666] {
            std::fs::write(&path, &good).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = refusal(load(&path));
            assert!(
                e.contains(&path.display().to_string())
                    && e.contains("group or others")
                    && e.contains("chmod go-w"),
                "{mode:o}: {e}"
            );
            std::fs::remove_file(&path).unwrap();
        }

        // Another name of the same file (a hard link).
        std::fs::write(&path, &good).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&path, d.0.join("other-name")).unwrap();
        let e = refusal(load(&path));
        assert!(e.contains("2 hard links"), "{e}");
        std::fs::remove_file(d.0.join("other-name")).unwrap();
        assert!(load(&path).unwrap().is_some());
        std::fs::remove_file(&path).unwrap();

        // Not a regular file: a FIFO is refused, not waited on.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = refusal(load(&path));
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&path).unwrap();

        // Owned by someone else: as root, a file given away; otherwise, root's file.
        let theirs = if rustix::process::geteuid().is_root() {
            std::fs::write(&path, &good).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            path.clone()
        } else {
            PathBuf::from("/etc/passwd")
        };
        let e = refusal(load(&theirs));
        assert!(
            e.contains(&theirs.display().to_string()) && e.contains("not by us"),
            "{e}"
        );
    }

    /// A journal that keeps age file keys is refused once group or others may read it
    /// (the keys may have been copied: a resume must start afresh with new ones); one
    /// without sealings may be readable. A sealing whose header was changed is refused by
    /// `check` (its MAC no longer holds under the kept key); one whose nonce was changed
    /// passes both, and the resume's check of the stored parts against their journaled
    /// hashes refuses it (`pipeline::tests`, a kept sealing that was changed).
    #[test]
    fn a_journal_whose_sealings_others_could_read_or_that_were_changed_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = crate::testing::Scratch::new("journal-sealed");
        let path = path_for(&d.0.join("state.json"), "data");
        let id = crate::age::Identity::generate().unwrap();
        let sealing = crate::age::Sealing::new(std::slice::from_ref(id.recipient())).unwrap();
        let mut b = begin();
        b.settings.encryption = Some(vec![id.recipient().as_str().to_string()]);
        let mut j = Journal::create(&path, &b).unwrap();
        j.append(&Record::Sealed {
            chunk: 0,
            sealing: SealingRecord::of(&sealing),
        })
        .unwrap();
        drop(j);
        let p = load(&path).unwrap().unwrap();
        assert_eq!(p.sealings.len(), 1);
        let key = p.sealings[&0].file_key.clone();
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = refusal(load(&path));
            assert!(
                e.contains(&path.display().to_string())
                    && e.contains(&format!("its mode {mode:o} lets group or others read"))
                    && e.contains("must not reuse them")
                    && e.contains(&format!("rm {}", path.display())),
                "{mode:o}: {e}"
            );
            assert!(!e.contains(&key), "never quotes a key: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&path).unwrap().is_some());
        std::fs::remove_file(&path).unwrap();

        // Without sealings a readable journal is still read (it holds no secret).
        Journal::create(&path, &begin()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).unwrap().is_some());
        std::fs::remove_file(&path).unwrap();

        // A changed header (one byte of a stanza's body) no longer matches its MAC.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut rec = SealingRecord::of(&sealing);
        let mut header = b64.decode(&rec.header).unwrap();
        let at = header.len() / 2;
        header[at] = if header[at] == b'A' { b'B' } else { b'A' };
        rec.header = b64.encode(&header);
        let e = rec.sealing().unwrap_err();
        assert!(!e.contains(&key), "{e}");
        let mut p = good(Kind::Full);
        p.begin.settings.encryption = Some(vec![id.recipient().as_str().to_string()]);
        for i in p.chunks.keys().copied().collect::<Vec<_>>() {
            p.sealings.insert(i, SealingRecord::of(&sealing));
        }
        p.check("data", &Layout::new("p"), Path::new("/s")).unwrap();
        p.sealings.insert(0, rec);
        let e = p
            .check("data", &Layout::new("p"), Path::new("/s"))
            .unwrap_err()
            .0;
        assert!(e.contains("age sealing of chunk 0 is malformed"), "{e}");
        // Not base64, or a nonce of the wrong length.
        let zz = "zz".repeat(16);
        for (header, nonce) in [("%%%", None), ("", Some("00")), ("", Some(zz.as_str()))] {
            let mut rec = SealingRecord::of(&sealing);
            if !header.is_empty() {
                rec.header = header.into();
            }
            if let Some(n) = nonce {
                rec.nonce = n.to_string();
            }
            assert!(rec.sealing().is_err(), "{header} {nonce:?}");
        }
    }

    /// A journal as a backup of `data` at 20250101T020000Z writes it, with one stored
    /// chunk, one open upload with a part, and the manifest being published.
    fn good(kind: Kind) -> Pending {
        let layout = Layout::new("p");
        let ts = Ts::parse("20250101T020000Z").unwrap();
        let mut b = begin();
        b.kind = kind;
        b.snapshot = format!(
            "/s/data__20250101T020000Z__{}",
            if kind == Kind::Full { "full" } else { "inc" }
        );
        if kind == Kind::Incremental {
            b.parent = Some("/s/data__20241231T020000Z__full".into());
            b.parent_manifest = Some("p/subvol/data/full/manifest-20241231T020000Z.json".into());
            b.last_full_at = Some("20241231T020000Z".into());
        }
        let mut parts = BTreeMap::new();
        parts.insert(
            1,
            PartDone {
                size: 10,
                sha256_through: "b".repeat(64),
                etag: "\"e1\"".into(),
            },
        );
        let mut chunks = BTreeMap::new();
        chunks.insert(
            0,
            ChunkProgress::Stored {
                key: layout.chunk_key("data", kind, ts, 0).into_string(),
                size: 100,
                sha256: "a".repeat(64),
                etag: "\"e0\"".into(),
            },
        );
        chunks.insert(
            1,
            ChunkProgress::Open {
                key: layout.chunk_key("data", kind, ts, 1).into_string(),
                upload_id: "upload-1".into(),
                parts,
            },
        );
        Pending {
            path: PathBuf::from("/state/state.json.resume-data.jsonl"),
            begin: b,
            chunks,
            publishing: Some(layout.manifest_key("data", kind, ts).into_string()),
            sealings: BTreeMap::new(),
            valid_len: 0,
        }
    }

    #[test]
    fn a_journal_naming_anything_but_this_subvolumes_run_is_refused() {
        let layout = Layout::new("p");
        let base = Path::new("/s");
        let check = |p: &Pending| p.check("data", &layout, base);
        for kind in [Kind::Full, Kind::Incremental] {
            check(&good(kind)).unwrap();
        }
        let set_key = |p: &mut Pending, i: u64, k: &str| match p.chunks.get_mut(&i) {
            Some(ChunkProgress::Stored { key, .. } | ChunkProgress::Open { key, .. }) => {
                *key = k.to_string()
            }
            None => unreachable!(),
        };
        type Doctor = Box<dyn Fn(&mut Pending)>;
        let cases: Vec<(Kind, Doctor, &str)> = vec![
            (Kind::Full, Box::new(|p| p.begin.subvolume = "other".into()), "subvolume \"other\""),
            (Kind::Full, Box::new(|p| p.begin.run_ts = "2025-01-01T02:00:00Z".into()), "run timestamp"),
            (
                Kind::Full,
                Box::new(|p| p.begin.snapshot = "/etc".into()),
                "its snapshot \"/etc\" is not /s/data__20250101T020000Z__full",
            ),
            (
                Kind::Full,
                Box::new(|p| p.begin.snapshot = "/elsewhere/data__20250101T020000Z__full".into()),
                "its snapshot",
            ),
            (Kind::Full, Box::new(|p| p.begin.parent = Some("/s/data__20241231T020000Z__full".into())), "full backup with a parent"),
            (Kind::Incremental, Box::new(|p| p.begin.parent = None), "without a parent"),
            (
                Kind::Incremental,
                Box::new(|p| p.begin.parent = Some("/srv/important".into())),
                "parent snapshot \"/srv/important\" is not a snapshot of data in /s",
            ),
            (
                Kind::Incremental,
                Box::new(|p| p.begin.parent = Some("/s/../srv/data__20241231T020000Z__full".into())),
                "parent snapshot",
            ),
            (
                Kind::Incremental,
                Box::new(|p| p.begin.parent = Some("/s/other__20241231T020000Z__full".into())),
                "parent snapshot",
            ),
            (
                Kind::Incremental,
                Box::new(|p| p.begin.parent_manifest = Some("p/subvol/other/full/manifest-20241231T020000Z.json".into())),
                "parent manifest",
            ),
            (
                Kind::Incremental,
                Box::new(|p| p.begin.parent_manifest = Some("p/subvol/data/full/chunk-20241231T020000Z-0.bin".into())),
                "parent manifest",
            ),
            (Kind::Full, Box::new(|p| p.begin.last_full_at = Some("yesterday".into())), "last_full_at"),
            (Kind::Full, Box::new(|p| p.begin.send_protocol = 7), "send protocol 7"),
            (
                Kind::Full,
                Box::new(move |p| set_key(p, 0, "p/subvol/other/full/chunk-20250101T020000Z-0.bin")),
                "\"p/subvol/other/full/chunk-20250101T020000Z-0.bin\" for chunk 0, which is not under data's prefix p/subvol/data/",
            ),
            (
                Kind::Full,
                Box::new(move |p| set_key(p, 1, "elsewhere/x")),
                "\"elsewhere/x\" for chunk 1, which is not under",
            ),
            (
                Kind::Full,
                Box::new(move |p| set_key(p, 1, "p/subvol/data/full/chunk-20250101T020000Z-7.bin")),
                "for chunk 1, which is p/subvol/data/full/chunk-20250101T020000Z-1.bin",
            ),
            (
                Kind::Full,
                Box::new(move |p| set_key(p, 0, "p/subvol/data/full/chunk-20240101T020000Z-0.bin")),
                "for chunk 0, which is",
            ),
            (
                Kind::Full,
                Box::new(|p| p.publishing = Some("p/subvol/data/current.json".into())),
                "manifest \"p/subvol/data/current.json\"",
            ),
            (
                Kind::Full,
                Box::new(|p| p.publishing = Some("p/subvol/other/full/manifest-20250101T020000Z.json".into())),
                "manifest",
            ),
            (
                Kind::Full,
                Box::new(|p| {
                    if let Some(ChunkProgress::Open { upload_id, .. }) = p.chunks.get_mut(&1) {
                        *upload_id = "a&b c".into();
                    }
                }),
                "upload id",
            ),
            (
                Kind::Full,
                Box::new(|p| {
                    if let Some(ChunkProgress::Stored { sha256, .. }) = p.chunks.get_mut(&0) {
                        *sha256 = "nothex".into();
                    }
                }),
                "malformed SHA-256",
            ),
            (
                Kind::Full,
                Box::new(|p| {
                    if let Some(ChunkProgress::Open { parts, .. }) = p.chunks.get_mut(&1) {
                        let d = parts[&1].clone();
                        parts.insert(10_001, d);
                    }
                }),
                "part 10001",
            ),
        ];
        for (kind, doctor, words) in cases {
            let mut p = good(kind);
            doctor(&mut p);
            let e = check(&p).expect_err(words).to_string();
            assert!(
                e.contains(words)
                    && e.contains("/state/state.json.resume-data.jsonl")
                    && e.contains("nothing it names was touched")
                    && e.contains("rm /state/state.json.resume-data.jsonl"),
                "{words}: {e}"
            );
        }
    }

    #[test]
    fn sealing_records_round_trip_and_are_checked() {
        let layout = Layout::new("p");
        let base = Path::new("/s");
        let id = crate::age::Identity::generate().unwrap();
        let sealing = crate::age::Sealing::new(std::slice::from_ref(id.recipient())).unwrap();
        let rec = SealingRecord::of(&sealing);
        assert!(
            !format!("{rec:?}").contains(&rec.file_key),
            "Debug shows no key"
        );
        let back = rec.sealing().unwrap();
        assert_eq!(back.header().digest(), sealing.header().digest());
        let line = serde_json::to_string(&Record::Sealed {
            chunk: 0,
            sealing: rec.clone(),
        })
        .unwrap();
        assert!(
            line.starts_with(r#"{"record":"sealed","chunk":0,"file_key":"#),
            "{line}"
        );

        let mut p = good(Kind::Full);
        p.begin.settings.encryption = Some(vec![id.recipient().as_str().to_string()]);
        let e = p.check("data", &layout, base).unwrap_err().0;
        assert!(e.contains("without its age sealing"), "{e}");
        for i in p.chunks.keys().copied().collect::<Vec<_>>() {
            p.sealings.insert(i, rec.clone());
        }
        p.check("data", &layout, base).unwrap();
        // A key that does not match the header (two files mixed) is refused.
        let mut other = rec.clone();
        other.file_key = "00".repeat(16);
        p.sealings.insert(0, other);
        let e = p.check("data", &layout, base).unwrap_err().0;
        assert!(e.contains("age sealing of chunk 0 is malformed"), "{e}");
        assert!(!e.contains(&"00".repeat(16)), "{e}");
        // Sealings in a journal of an unencrypted backup are refused.
        let mut p = good(Kind::Full);
        p.sealings.insert(0, rec);
        let e = p.check("data", &layout, base).unwrap_err().0;
        assert!(e.contains("without encryption"), "{e}");
    }
}
