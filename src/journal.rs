//! The resume journal of one subvolume's unpublished backup: an append-only file of JSON
//! lines beside the state file (`<state file>.resume-<name>.jsonl`), one fsync per record,
//! written before the first byte goes up and removed once the backup is published and
//! recorded (or abandoned). It says which snapshot is being sent against which parent
//! with which settings, and how far each chunk's upload got, so a later run can send
//! the same snapshot again and upload only what is not stored yet.
//!
//! Records, in order of appearance: one `begin`; then any number of `upload` (a
//! multipart upload was opened for a chunk), `part` (a part is stored), `chunk` (a chunk
//! object is stored whole); finally `publishing` (the manifest key about to be PUT).
//! A `part` record's `sha256_through` is the SHA-256 of the chunk's bytes from its first
//! byte through the end of that part: it covers the part's bytes (and the ones before
//! them) and costs no extra pass over the data. A torn last line (a crash mid-write) is
//! ignored; anything unreadable before it ends the reading there.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::manifest::Kind;

/// The journal format's version (in `begin`).
pub const VERSION: u32 = 1;

/// What the backup is, and the settings that shape its stream and its keys: a resume
/// happens only when all of them still hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    pub version: u32,
    pub subvolume: String,
    /// The run's timestamp: chunk and manifest keys and `created_at` use it.
    pub run_ts: String,
    pub kind: Kind,
    /// The new read-only snapshot being sent.
    pub snapshot: String,
    /// The parent snapshot (incremental), and its manifest.
    pub parent: Option<String>,
    pub parent_manifest: Option<String>,
    /// The state's `last_full_at` when the backup began (for the state after publishing).
    pub last_full_at: Option<String>,
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
pub struct Settings {
    pub bucket: String,
    pub prefix: String,
    pub chunk_size: u64,
    pub part_size: u64,
    pub storage_class: String,
    pub sse: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Begin(Begin),
    Upload {
        chunk: u64,
        key: String,
        upload_id: String,
    },
    Part {
        chunk: u64,
        part: u32,
        size: u64,
        sha256_through: String,
        etag: String,
    },
    Chunk {
        chunk: u64,
        key: String,
        size: u64,
        sha256: String,
        etag: String,
    },
    Publishing {
        manifest_key: String,
    },
}

/// A stored part of an open multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartDone {
    pub size: u64,
    pub sha256_through: String,
    pub etag: String,
}

/// How far one chunk got, as the journal tells it (a chunk it does not name was not
/// started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkProgress {
    /// A multipart upload is open; these parts are stored.
    Open {
        key: String,
        upload_id: String,
        parts: BTreeMap<u32, PartDone>,
    },
    /// The chunk object is stored whole.
    Stored {
        key: String,
        size: u64,
        sha256: String,
        etag: String,
    },
}

/// A journal as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub path: PathBuf,
    pub begin: Begin,
    pub chunks: BTreeMap<u64, ChunkProgress>,
    pub publishing: Option<String>,
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

/// Reads the journal at `path`; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Pending>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the resume journal {}", path.display()))
        }
    };
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
            Record::Publishing { manifest_key } => p.publishing = Some(manifest_key),
        }
    }
    Ok(Some(p))
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
}
