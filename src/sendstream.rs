//! The btrfs send stream, read as it passes to `btrfs receive` (restore) or to the hasher
//! (`verify --deep`): a `Guard` frames the stream into its header and commands, checks every
//! path a command names before any byte of that command goes on, and records the one
//! subvolume the stream creates (its name and UUID), so that the restore acts only on what
//! it received. It checks framing and paths, not contents: `btrfs receive` checks each
//! command's CRC32C and applies it.
//!
//! What a stream must be to pass: the `btrfs-stream` header (protocol 1 to 3); first a
//! command creating the subvolume, whose path is exactly the manifest's snapshot name, and
//! no second one: a full backup's is `subvol`; an incremental's is a `snapshot` of the
//! subvolume the chain's previous stream created (its UUID), since `btrfs receive` finds a
//! snapshot's source by UUID anywhere on the target filesystem; every `clone` names as its
//! source the stream's own subvolume or that parent, nothing else on the filesystem; only
//! known commands and attributes, each inside its command; every path
//! (`path`, `path_to`, `clone_path`, and a `link`'s target) relative, without an empty,
//! `.` or `..` component or a NUL byte, and not empty except where a command acts on the
//! subvolume's own root (`chown`, `chmod`, `utimes`, xattrs, `fileattr`); then an `end`
//! command and nothing after it. A symlink's target is its contents, not a path we act on,
//! and is not checked.

use std::io::{self, Write};

const MAGIC: &[u8; 13] = b"btrfs-stream\0";
const HEADER_LEN: usize = 17;
/// `struct btrfs_cmd_header`: le32 length of the attributes, le16 command, le32 CRC32C.
const CMD_HEADER_LEN: usize = 10;
/// Larger than any command the kernel sends (64 KiB in protocol 1; 16 KiB plus 128 KiB
/// of encoded data in protocol 2), so a lying length cannot make us buffer much.
const MAX_CMD_LEN: usize = 1 << 20;

/// Command numbers (linux `fs/btrfs/send.h`).
mod cmd {
    pub const SUBVOL: u16 = 1;
    pub const SNAPSHOT: u16 = 2;
    pub const LINK: u16 = 10;
    pub const SET_XATTR: u16 = 13;
    pub const REMOVE_XATTR: u16 = 14;
    pub const WRITE: u16 = 15;
    pub const CLONE: u16 = 16;
    pub const CHMOD: u16 = 18;
    pub const CHOWN: u16 = 19;
    pub const UTIMES: u16 = 20;
    pub const END: u16 = 21;
    pub const FILEATTR: u16 = 24;
    pub const NAMES: [&str; 27] = [
        "unspec",
        "subvol",
        "snapshot",
        "mkfile",
        "mkdir",
        "mknod",
        "mkfifo",
        "mksock",
        "symlink",
        "rename",
        "link",
        "unlink",
        "rmdir",
        "set_xattr",
        "remove_xattr",
        "write",
        "clone",
        "truncate",
        "chmod",
        "chown",
        "utimes",
        "end",
        "update_extent",
        "fallocate",
        "fileattr",
        "encoded_write",
        "enable_verity",
    ];
}

/// Attribute numbers (linux `fs/btrfs/send.h`).
mod attr {
    pub const UUID: u16 = 1;
    pub const PATH: u16 = 15;
    pub const PATH_TO: u16 = 16;
    pub const PATH_LINK: u16 = 17;
    pub const DATA: u16 = 19;
    pub const CLONE_UUID: u16 = 20;
    pub const CLONE_PATH: u16 = 22;
    /// The last attribute of protocol 3.
    pub const MAX: u16 = 35;
}

/// The subvolume a stream creates: its name in the staging directory and the UUID
/// `btrfs receive` sets as its received UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The subvolume's name in the staging directory.
    pub name: String,
    /// As `btrfs subvolume show` prints it: lowercase, 8-4-4-4-12.
    pub uuid: String,
}

/// Why a stream was refused, naming the chunk and the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The `Refused` inside an I/O error from [`Checked`], if that is what it is. A downcast,
/// and the right tool: `Write` can only return an `io::Error`, whose one slot for a
/// cause of our own is a boxed `dyn Error`.
pub fn refusal(e: &io::Error) -> Option<&Refused> {
    e.get_ref().and_then(|i| i.downcast_ref::<Refused>())
}

/// What a stream's first command must build on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A full backup: `subvol`, a new empty subvolume.
    Full,
    /// An incremental: a `snapshot` of the subvolume with this UUID (as
    /// `btrfs subvolume show` prints it: the previous stream's [`Received::uuid`]), or, with
    /// `None` where the previous stream was not read (`verify` of one link), of the one
    /// subvolume the snapshot names.
    After(Option<String>),
}

/// Checks one manifest's stream as it passes (see the module comment).
pub struct Guard {
    /// Each chunk's key and the stream offset where it ends, to name the chunk at fault.
    chunks: Vec<(String, u64)>,
    expect_name: String,
    origin: Origin,
    /// The UUID a `snapshot` first command named as its source; with the subvolume's own
    /// (in `received`), the only sources a `clone` may name.
    parent: Option<String>,
    /// Stream offset of the first byte not yet passed on (the start of `carry`).
    offset: u64,
    /// A header or command split across writes, at most `CMD_HEADER_LEN + MAX_CMD_LEN`.
    carry: Vec<u8>,
    version: Option<u32>,
    commands: u64,
    received: Option<Received>,
    ended: bool,
    refused: Option<Refused>,
}

/// A unit's length, or how many bytes are needed to tell it.
enum Len {
    Known(usize),
    Need(usize),
}

impl Guard {
    /// A guard for the stream of `chunks` (key, size) that must create `expect_name` from
    /// `origin`.
    pub fn new<'a>(
        chunks: impl IntoIterator<Item = (&'a str, u64)>,
        expect_name: &str,
        origin: Origin,
    ) -> Guard {
        let mut end = 0u64;
        let chunks = chunks
            .into_iter()
            .map(|(k, size)| {
                end = end.saturating_add(size);
                (k.to_string(), end)
            })
            .collect();
        Guard {
            chunks,
            expect_name: expect_name.to_string(),
            origin,
            parent: None,
            offset: 0,
            carry: Vec::new(),
            version: None,
            commands: 0,
            received: None,
            ended: false,
            refused: None,
        }
    }

    /// A writer that passes on to `out` only what this guard has checked.
    pub fn writer<'a>(&'a mut self, out: &'a mut dyn Write) -> Checked<'a> {
        Checked { guard: self, out }
    }

    /// The subvolume the stream has created so far (known from its first command on).
    pub fn received(&self) -> Option<&Received> {
        self.received.as_ref()
    }

    /// At the end of the stream: it must have ended with its `end` command, on a command
    /// boundary. Returns what it created.
    pub fn finish(&self) -> Result<&Received, Refused> {
        if let Some(r) = &self.refused {
            return Err(r.clone());
        }
        if !self.carry.is_empty() {
            return Err(self.refuse_at(
                self.offset,
                None,
                &format!(
                    "the stream ends inside a command ({} bytes)",
                    self.carry.len()
                ),
            ));
        }
        match (&self.received, self.ended) {
            (Some(r), true) => Ok(r),
            _ => Err(self.refuse_at(
                self.offset,
                None,
                "the stream ends without its end command (truncated)",
            )),
        }
    }

    fn chunk_at(&self, offset: u64) -> &str {
        self.chunks
            .iter()
            .find(|(_, end)| *end > offset)
            .or(self.chunks.last())
            .map_or("(none)", |(k, _)| k.as_str())
    }

    fn refuse_at(&self, offset: u64, command: Option<(u64, u16)>, why: &str) -> Refused {
        let what = match command {
            Some((n, c)) => format!(
                "send stream command {n} ({}) at byte {offset}",
                cmd::NAMES.get(c as usize).copied().unwrap_or("unknown")
            ),
            None => format!("the send stream at byte {offset}"),
        };
        Refused(format!(
            "chunk {}: {what}: {why}; refusing it before btrfs receive sees it (the backup \
             was altered or damaged: restore an older backup, and check who can write the bucket)",
            self.chunk_at(offset)
        ))
    }

    fn unit_len(&self, buf: &[u8]) -> Result<Len, Refused> {
        if self.ended {
            return Err(self.refuse_at(self.offset, None, "data after the end command"));
        }
        if self.version.is_none() {
            return Ok(Len::Known(HEADER_LEN));
        }
        let Some(len) = buf.get(..4) else {
            return Ok(Len::Need(CMD_HEADER_LEN));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_CMD_LEN {
            return Err(self.refuse_at(
                self.offset,
                None,
                &format!("a command claims {len} bytes (more than btrfs send ever writes)"),
            ));
        }
        if buf.len() < CMD_HEADER_LEN {
            return Ok(Len::Need(CMD_HEADER_LEN));
        }
        Ok(Len::Known(CMD_HEADER_LEN + len))
    }

    /// Checks one whole unit (the header or a command) starting at `self.offset`.
    fn check_unit(&mut self, unit: &[u8]) -> Result<(), Refused> {
        let Some(version) = self.version else {
            if unit.get(..MAGIC.len()) != Some(&MAGIC[..]) {
                return Err(self.refuse_at(self.offset, None, "not a btrfs send stream"));
            }
            let v = u32::from_le_bytes([unit[13], unit[14], unit[15], unit[16]]);
            if !(1..=3).contains(&v) {
                return Err(self.refuse_at(
                    self.offset,
                    None,
                    &format!("send protocol {v} is not one this tool knows (1 to 3)"),
                ));
            }
            self.version = Some(v);
            return Ok(());
        };
        let c = u16::from_le_bytes([unit[4], unit[5]]);
        self.commands += 1;
        let at = Some((self.commands, c));
        let bad = |g: &Guard, why: &str| Err(g.refuse_at(g.offset, at, why));
        if c == 0 || c as usize >= cmd::NAMES.len() {
            return bad(self, &format!("unknown command {c}"));
        }
        let creates = c == cmd::SUBVOL || c == cmd::SNAPSHOT;
        if self.commands == 1 && !creates {
            return bad(self, "the stream must start by creating its subvolume");
        }
        if self.commands > 1 && creates {
            return bad(self, "a second subvolume in one backup's stream");
        }
        match (&self.origin, c) {
            (Origin::Full, cmd::SNAPSHOT) => {
                return bad(
                    self,
                    "a full backup's stream must create a new subvolume, not snapshot one",
                )
            }
            (Origin::After(_), cmd::SUBVOL) => {
                return bad(
                    self,
                    "an incremental backup's stream must snapshot its parent, not create a new subvolume",
                )
            }
            _ => {}
        }
        let root_ok = matches!(
            c,
            cmd::CHOWN
                | cmd::CHMOD
                | cmd::UTIMES
                | cmd::SET_XATTR
                | cmd::REMOVE_XATTR
                | cmd::FILEATTR
        );
        let payload = &unit[CMD_HEADER_LEN..];
        let (mut p, mut name, mut uuid, mut source) = (0usize, None, None, None);
        while p < payload.len() {
            let Some(t) = payload.get(p..p + 2) else {
                return bad(self, "an attribute header is cut off");
            };
            let t = u16::from_le_bytes([t[0], t[1]]);
            if t == attr::DATA && version >= 2 {
                // Since protocol 2 the data attribute has no length: it is the rest.
                break;
            }
            let Some(l) = payload.get(p + 2..p + 4) else {
                return bad(self, "an attribute header is cut off");
            };
            let l = u16::from_le_bytes([l[0], l[1]]) as usize;
            let Some(value) = payload.get(p + 4..p + 4 + l) else {
                return bad(self, &format!("attribute {t} runs past its command"));
            };
            p += 4 + l;
            if t == 0 || t > attr::MAX {
                return bad(self, &format!("unknown attribute {t}"));
            }
            let path_like = match t {
                attr::PATH => Some(("path", creates || root_ok)),
                attr::PATH_TO => Some(("path_to", false)),
                attr::CLONE_PATH => Some(("clone_path", false)),
                attr::PATH_LINK if c == cmd::LINK => Some(("link target", false)),
                _ => None,
            };
            if let Some((field, empty_ok)) = path_like {
                if let Err(why) = check_path(value, empty_ok) {
                    return bad(
                        self,
                        &format!("{field} {:?} {why}", String::from_utf8_lossy(value)),
                    );
                }
            }
            if creates && t == attr::PATH {
                name = Some(value);
            }
            if creates && t == attr::UUID {
                uuid = Some(value);
            }
            if t == attr::CLONE_UUID && (c == cmd::SNAPSHOT || c == cmd::CLONE) {
                source = Some(value);
            }
        }
        // `btrfs receive` looks a snapshot's or a clone's source up by UUID across the
        // whole target filesystem: only the parent and the subvolume itself may be named.
        let source = match (c, source) {
            (cmd::SNAPSHOT | cmd::CLONE, Some(u)) if u.len() == 16 => Some(format_uuid(u)),
            (cmd::SNAPSHOT | cmd::CLONE, _) => {
                return bad(self, "it names no 16-byte source UUID (clone_uuid)")
            }
            _ => None,
        };
        if c == cmd::SNAPSHOT {
            let source = source.unwrap_or_default();
            if let Origin::After(Some(want)) = &self.origin {
                if &source != want {
                    return bad(
                        self,
                        &format!(
                            "it snapshots subvolume {source}, not the previous backup's {want}"
                        ),
                    );
                }
            }
            self.parent = Some(source);
        } else if let Some(source) = source {
            let own = self.received.as_ref().map(|r| r.uuid.as_str());
            if Some(source.as_str()) != own && Some(&source) != self.parent.as_ref() {
                return bad(
                    self,
                    &format!(
                        "it clones from subvolume {source}, which is neither this backup's \
                         subvolume nor its parent"
                    ),
                );
            }
        }
        if creates {
            let name = name.unwrap_or_default();
            if name != self.expect_name.as_bytes() {
                return bad(
                    self,
                    &format!(
                        "it creates subvolume {:?}, but the manifest's snapshot is {:?}",
                        String::from_utf8_lossy(name),
                        self.expect_name
                    ),
                );
            }
            let Some(uuid) = uuid.filter(|u| u.len() == 16) else {
                return bad(self, "the subvolume has no 16-byte UUID");
            };
            self.received = Some(Received {
                name: self.expect_name.clone(),
                uuid: format_uuid(uuid),
            });
        }
        if c == cmd::END {
            self.ended = true;
        }
        Ok(())
    }

    fn feed(&mut self, data: &[u8], out: &mut dyn Write) -> io::Result<()> {
        if let Some(r) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::InvalidData, r.clone()));
        }
        self.feed_checked(data, out).map_err(|e| match e {
            Fed::Refused(r) => {
                self.refused = Some(r.clone());
                io::Error::new(io::ErrorKind::InvalidData, r)
            }
            Fed::Io(e) => e,
        })
    }

    fn feed_checked(&mut self, data: &[u8], out: &mut dyn Write) -> Result<(), Fed> {
        let mut pos = 0;
        // First complete a unit split across writes (copied: it is at most one command).
        while !self.carry.is_empty() && pos < data.len() {
            let want = match self.unit_len(&self.carry)? {
                Len::Known(n) | Len::Need(n) => n,
            };
            let take = (want - self.carry.len()).min(data.len() - pos);
            self.carry.extend_from_slice(&data[pos..pos + take]);
            pos += take;
            if let Len::Known(n) = self.unit_len(&self.carry)? {
                if self.carry.len() == n {
                    let unit = std::mem::take(&mut self.carry);
                    self.check_unit(&unit)?;
                    out.write_all(&unit)?;
                    self.offset += n as u64;
                }
            }
        }
        // Then the whole units that lie in `data`, checked in place and passed on in one write.
        let start = pos;
        while pos < data.len() {
            match self.unit_len(&data[pos..])? {
                Len::Known(n) if n <= data.len() - pos => {
                    self.check_unit(&data[pos..pos + n])?;
                    pos += n;
                    self.offset += n as u64;
                }
                _ => break,
            }
        }
        if pos > start {
            out.write_all(&data[start..pos])?;
        }
        self.carry.extend_from_slice(&data[pos..]);
        Ok(())
    }
}

enum Fed {
    Refused(Refused),
    Io(io::Error),
}

impl From<Refused> for Fed {
    fn from(r: Refused) -> Fed {
        Fed::Refused(r)
    }
}

impl From<io::Error> for Fed {
    fn from(e: io::Error) -> Fed {
        Fed::Io(e)
    }
}

/// A path a command names, relative to the received subvolume.
fn check_path(p: &[u8], empty_ok: bool) -> Result<(), &'static str> {
    if p.is_empty() {
        return if empty_ok { Ok(()) } else { Err("is empty") };
    }
    if p[0] == b'/' {
        return Err("is absolute");
    }
    if p.contains(&0) {
        return Err("holds a NUL byte");
    }
    for part in p.split(|b| *b == b'/') {
        match part {
            b"" => return Err("has an empty component"),
            b"." => return Err("has a `.` component"),
            b".." => return Err("has a `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// A 16-byte UUID as `btrfs subvolume show` prints it.
pub(crate) fn format_uuid(u: &[u8]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A writer that passes on only what its [`Guard`] has checked; a refusal is an
/// `InvalidData` error carrying [`Refused`] (see [`refusal`]).
pub struct Checked<'a> {
    guard: &'a mut Guard,
    out: &'a mut dyn Write,
}

impl Write for Checked<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.guard.feed(buf, self.out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Builds send streams for tests (ours and the integration rig's): well-formed ones and
/// doctored ones, with correct CRCs so that `btrfs receive` itself would take them.
pub mod build {
    use super::{attr, cmd, CMD_HEADER_LEN, MAGIC};

    /// A stream being built: the header, then commands.
    pub struct Stream(Vec<u8>);

    impl Stream {
        /// A stream of protocol `version`: the magic and the version.
        pub fn new(version: u32) -> Stream {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&version.to_le_bytes());
            Stream(v)
        }

        /// Appends a command with the attributes `(type, value)` and its CRC32C.
        pub fn command(mut self, c: u16, attrs: &[(u16, &[u8])]) -> Stream {
            let mut payload = Vec::new();
            for (t, v) in attrs {
                payload.extend_from_slice(&t.to_le_bytes());
                payload.extend_from_slice(&(v.len() as u16).to_le_bytes());
                payload.extend_from_slice(v);
            }
            let start = self.0.len();
            self.0
                .extend_from_slice(&(payload.len() as u32).to_le_bytes());
            self.0.extend_from_slice(&c.to_le_bytes());
            self.0.extend_from_slice(&[0; 4]);
            self.0.extend_from_slice(&payload);
            // btrfs's crc32c: seed 0, no final inversion, over header (CRC zeroed) and body.
            let crc = !crc32c::crc32c_append(!0, &self.0[start..]);
            self.0[start + 6..start + CMD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
            self
        }

        /// A `subvol` command (a full stream's first).
        pub fn subvol(self, name: &str, uuid: [u8; 16]) -> Stream {
            self.command(
                cmd::SUBVOL,
                &[
                    (attr::PATH, name.as_bytes()),
                    (attr::UUID, &uuid),
                    (2, &1u64.to_le_bytes()),
                ],
            )
        }

        /// A `snapshot` command (an incremental stream's first).
        pub fn snapshot(self, name: &str, uuid: [u8; 16], parent: [u8; 16]) -> Stream {
            self.command(
                cmd::SNAPSHOT,
                &[
                    (attr::PATH, name.as_bytes()),
                    (attr::UUID, &uuid),
                    (2, &2u64.to_le_bytes()),
                    (20, &parent),
                    (21, &1u64.to_le_bytes()),
                ],
            )
        }

        /// A `mkfile` of `path`.
        pub fn mkfile(self, path: &str) -> Stream {
            self.command(
                3,
                &[(attr::PATH, path.as_bytes()), (3, &257u64.to_le_bytes())],
            )
        }

        /// A `write` of `data` at offset 0 (protocol 1 framing).
        pub fn write(self, path: &str, data: &[u8]) -> Stream {
            self.command(
                cmd::WRITE,
                &[
                    (attr::PATH, path.as_bytes()),
                    (18, &0u64.to_le_bytes()),
                    (attr::DATA, data),
                ],
            )
        }

        /// A `symlink` at `path` to `target`.
        pub fn symlink(self, path: &str, target: &str) -> Stream {
            self.command(
                8,
                &[
                    (attr::PATH, path.as_bytes()),
                    (3, &258u64.to_le_bytes()),
                    (attr::PATH_LINK, target.as_bytes()),
                ],
            )
        }

        /// The `end` command.
        pub fn end(self) -> Stream {
            self.command(cmd::END, &[])
        }

        /// The stream's bytes.
        pub fn bytes(self) -> Vec<u8> {
            self.0
        }
    }
}

#[cfg(test)]
mod tests;
