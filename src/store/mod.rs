//! The object store seam: an [`ObjectStore`] trait with the few S3 operations this tool
//! needs (upload, read, list, delete; Object Lock and versions), a typed [`StoreError`] that says whether a failure is worth retrying, and two
//! implementations: [`s3::S3Store`] (the only network code) and [`memory::MemoryStore`]
//! (tests). Also the one bounded read of a whole object ([`get_bounded`]): nothing reads
//! an object or a reply into memory without a size cap.

mod checksum;
mod connect;
mod creds;
pub(crate) mod http;
mod listing;
#[cfg(test)]
pub(crate) mod memory;
pub mod pinned;
pub mod s3;
pub(crate) mod sigv4;
mod xml;

use std::fmt;
use std::io::Read;

/// Whether a failed request may succeed if sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 5xx, 429, timeouts, resets, refused connections: retry with backoff (those that
    /// got no reply at all are also [`StoreError::network`]).
    Transient,
    /// 4xx (403, 400, ...): retrying cannot help.
    Permanent,
    /// 404 / NoSuchKey / NoSuchUpload.
    NotFound,
    /// The object is in an archive class and not restored (403 InvalidObjectState).
    Archived,
    /// The object or reply is larger than this tool reads for it ([`get_bounded`]): not
    /// one it wrote; asking again cannot help.
    TooLarge,
}

#[derive(Clone, Debug)]
/// A failed store request: what kind of failure, which operation and key, and why.
pub struct StoreError {
    /// Whether asking again may help.
    pub kind: ErrorKind,
    /// The operation and key, e.g. `PUT p/subvol/data/full/chunk-...-0.bin`.
    pub op: String,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's error code and message, or the transport's error.
    pub message: String,
    /// The service's clock, from a `RequestTimeTooSkewed` reply.
    pub server_time: Option<crate::ts::Ts>,
    /// The service refused the credentials as expired (`ExpiredToken`).
    pub expired_credentials: bool,
    /// No reply came: the connection was refused, reset or timed out, the name did not
    /// resolve, the TLS handshake was cut. The link may be down: the run rides such
    /// failures out (`outage`) instead of giving up after the bounded retries.
    pub network: bool,
}

impl StoreError {
    /// An error without an HTTP status.
    pub fn new(kind: ErrorKind, op: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            op: op.into(),
            status: None,
            message: message.into(),
            server_time: None,
            expired_credentials: false,
            network: false,
        }
    }

    /// A transient failure that got no reply (see [`StoreError::network`]).
    pub fn network(op: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            network: true,
            ..StoreError::new(ErrorKind::Transient, op, message)
        }
    }

    /// Whether the request got no reply at all (the link may be down).
    pub fn is_network(&self) -> bool {
        self.network && self.kind == ErrorKind::Transient
    }

    /// Whether the retry policy may send the request again.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The service refused with `AccessDenied` (403 from AWS; moto says 400): a policy
    /// forbids it, or Object Lock protects the object version.
    pub fn is_access_denied(&self) -> bool {
        matches!(self.status, Some(400 | 403)) && self.message.starts_with("AccessDenied")
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{}: HTTP {s}: {}", self.op, self.message),
            None => write!(f, "{}: {}", self.op, self.message),
        }
    }
}

impl std::error::Error for StoreError {}

/// The result of one store request.
pub type StoreResult<T> = Result<T, StoreError>;

/// Headers that go with a new object (PutObject or CreateMultipartUpload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOptions {
    /// `x-amz-storage-class` (`STANDARD`, `GLACIER_IR`, …).
    pub storage_class: String,
    /// `x-amz-server-side-encryption`; `none` sends no SSE header at all.
    pub sse: crate::config::Sse,
    /// `content-type`.
    pub content_type: &'static str,
    /// `x-amz-server-side-encryption-aws-kms-key-id` (with `aws:kms`, `aws:kms:dsse`).
    pub kms_key_id: Option<String>,
    /// Object Lock: `x-amz-object-lock-mode` and `-retain-until-date` (`None`: no headers).
    pub lock: Option<Retention>,
}

/// An Object Lock retention: the mode (`GOVERNANCE`, `COMPLIANCE`) and the instant until
/// which the object version cannot be deleted or overwritten in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    /// The retain-until date.
    pub until: crate::ts::Ts,
}

/// A request body: bytes in memory, or the first `len` bytes of a (spool) file, read
/// with positioned reads so a retry can send it again.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// The first `len` bytes of a (spool) file, read with positioned reads.
    File {
        /// The file.
        file: &'a std::fs::File,
        /// Bytes of it in the body.
        len: u64,
    },
}

impl<'a> Body<'a> {
    /// Bytes in the body.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Whether the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh reader over the whole body.
    pub fn reader(&self) -> Box<dyn Read + Send + 'a> {
        match *self {
            Body::Bytes(b) => Box::new(b),
            Body::File { file, len } => Box::new(FileRange { file, pos: 0, len }),
        }
    }

    /// The whole body in memory (the in-memory store; small bodies).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.len() as usize);
        self.reader().read_to_end(&mut v)?;
        Ok(v)
    }
}

struct FileRange<'a> {
    file: &'a std::fs::File,
    pos: u64,
    len: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (self.len - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "spool file is shorter than the part",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// What HEAD tells about an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `content-length`.
    pub size: u64,
    /// The ETag, as the service quotes it.
    pub etag: Option<String>,
    /// `None` means STANDARD (S3 omits the header for it).
    pub storage_class: Option<String>,
    /// `x-amz-server-side-encryption`, when the object has it.
    pub sse: Option<String>,
    /// The raw `x-amz-restore` header, e.g. `ongoing-request="false", expiry-date="..."`.
    pub restore: Option<String>,
    /// `x-amz-version-id` (versioned buckets).
    pub version_id: Option<String>,
    /// `x-amz-object-lock-mode` and `-retain-until-date`, when the version is locked.
    pub lock: Option<Retention>,
}

impl ObjectMeta {
    /// The storage class, `STANDARD` when the reply omits it.
    pub fn storage_class_or_standard(&self) -> &str {
        self.storage_class.as_deref().unwrap_or("STANDARD")
    }
}

/// An open multipart upload, as listed by ListMultipartUploads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenUpload {
    /// The object's key.
    pub key: String,
    /// The upload's id.
    pub upload_id: String,
}

/// An object as listed by ListObjectsV2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// The object's key.
    pub key: String,
    /// Bytes in the object.
    pub size: u64,
    /// `LastModified`; `None` when the reply lacks it or it does not parse.
    pub last_modified: Option<crate::ts::Ts>,
    /// `None` when the reply does not say (S3 always does; STANDARD is spelled out).
    pub storage_class: Option<String>,
}

impl ListedObject {
    /// The storage class, `STANDARD` when the reply omits it.
    pub fn storage_class_or_standard(&self) -> &str {
        self.storage_class.as_deref().unwrap_or("STANDARD")
    }
}

/// One version (or delete marker) of an object, as listed by ListObjectVersions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedVersion {
    /// The object's key.
    pub key: String,
    /// The version's id.
    pub version_id: String,
    /// The key's current version (or delete marker).
    pub is_latest: bool,
    /// A delete marker (no bytes; hides the older versions from a plain GET).
    pub delete_marker: bool,
    /// Bytes in the version (0 for a delete marker).
    pub size: u64,
    /// `LastModified`; `None` when the reply lacks it or it does not parse.
    pub last_modified: Option<crate::ts::Ts>,
}

/// A stored part of an open multipart upload, as listed by ListParts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedPart {
    /// The part number, from 1.
    pub number: u32,
    /// Bytes in the part.
    pub size: u64,
    /// The part's ETag.
    pub etag: String,
    /// The part's `x-amz-checksum-*` as the service computed it, when it keeps them.
    pub checksum: Option<String>,
}

/// The S3 operations btrfs_to_s3 uses. Implementations make one attempt per call; the
/// retry policy lives in `retry`, above this trait.
pub trait ObjectStore: Send + Sync {
    /// PutObject; returns the ETag.
    fn put_object(&self, key: &str, body: Body<'_>, opts: &PutOptions) -> StoreResult<String>;
    /// CreateMultipartUpload; returns the upload id.
    fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String>;
    /// UploadPart; returns the part's ETag.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body<'_>,
    ) -> StoreResult<String>;
    /// CompleteMultipartUpload with `(part number, ETag)` in order; returns the ETag.
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> StoreResult<String>;
    /// AbortMultipartUpload.
    fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;
    /// ListParts of an open multipart upload (all pages); `NotFound` when the upload is
    /// gone (completed or aborted).
    fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>>;
    /// ListMultipartUploads under a prefix (all pages).
    fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<OpenUpload>>;
    /// ListObjectsV2 under a prefix (all pages), in key order.
    fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ListedObject>>;
    /// DeleteObject; deleting a key that does not exist is Ok (as S3).
    fn delete_object(&self, key: &str) -> StoreResult<()>;
    /// HeadObject; `Ok(None)` when the object does not exist.
    fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>>;
    /// HeadBucket: `Ok` when the bucket answers; a missing bucket is an error.
    fn head_bucket(&self) -> StoreResult<()>;
    /// The outage probe: a cheap request that says whether the service answers at all.
    /// `Err` (a [`StoreError::network`] one) while no reply comes; any reply, an error
    /// status too, is `Ok`: the link is back, and the requests waiting on it say the rest.
    fn probe(&self) -> StoreResult<()> {
        match self.head_bucket() {
            Err(e) if e.is_network() => Err(e),
            _ => Ok(()),
        }
    }
    /// GetObject, whole or `range = (offset, len)`, as a stream.
    fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Box<dyn Read + Send>>;
    /// RestoreObject for `days` with a retrieval tier; an already running restore is Ok.
    fn restore_object(&self, key: &str, days: u32, tier: &str) -> StoreResult<()>;

    /// The rate caps its requests go through (none by default), for progress lines and
    /// the stall watchdog (bytes moving under a cap are movement).
    fn throttles(&self) -> crate::ratelimit::Throttles {
        crate::ratelimit::Throttles::default()
    }

    // Object Lock and versions. The defaults say the store has no such thing.

    /// GetObjectLockConfiguration: whether the bucket has Object Lock enabled.
    fn object_lock_enabled(&self) -> StoreResult<bool> {
        Err(unsupported("GetObjectLockConfiguration"))
    }
    /// PutObjectRetention of `key` (the version `version`, else the current one).
    fn put_retention(&self, key: &str, version: Option<&str>, r: &Retention) -> StoreResult<()> {
        let _ = (key, version, r);
        Err(unsupported("PutObjectRetention"))
    }
    /// ListObjectVersions under a prefix (all pages): every version and delete marker,
    /// each key's newest first.
    fn list_versions(&self, prefix: &str) -> StoreResult<Vec<ListedVersion>> {
        let _ = prefix;
        Err(unsupported("ListObjectVersions"))
    }
    /// HeadObject of one version; `Ok(None)` when it does not exist.
    fn head_version(&self, key: &str, version: &str) -> StoreResult<Option<ObjectMeta>> {
        let _ = (key, version);
        Err(unsupported("HeadObject of a version"))
    }
    /// GetObject of one version, whole or a range.
    fn get_version(
        &self,
        key: &str,
        version: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<Box<dyn Read + Send>> {
        let _ = (key, version, range);
        Err(unsupported("GetObject of a version"))
    }
    /// RestoreObject of one version.
    fn restore_version(&self, key: &str, version: &str, days: u32, tier: &str) -> StoreResult<()> {
        let _ = (key, version, days, tier);
        Err(unsupported("RestoreObject of a version"))
    }
    /// DeleteObject of one version: the bytes go (no delete marker); a locked version is
    /// refused by the service (`AccessDenied`).
    fn delete_version(&self, key: &str, version: &str) -> StoreResult<()> {
        let _ = (key, version);
        Err(unsupported("DeleteObject of a version"))
    }
}

fn unsupported(op: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Permanent,
        op,
        "this object store does not support Object Lock or versions",
    )
}

/// Reads `r` to its end when it holds at most `cap` bytes; `Ok(None)` when it holds more,
/// after reading `cap + 1` bytes and never the rest.
pub(crate) fn read_at_most(r: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= cap).then_some(buf))
}

/// Reads a whole small object (a manifest, `current.json`) of at most `cap` bytes. A
/// larger one is a [`ErrorKind::TooLarge`] error naming the key, its size (from a HEAD,
/// asked only then) and the cap, after reading no more than `cap + 1` bytes of it.
pub fn get_bounded(store: &dyn ObjectStore, key: &str, cap: u64) -> StoreResult<Vec<u8>> {
    let op = format!("GET {key}");
    let r = store.get(key, None)?;
    match read_at_most(r, cap) {
        Ok(Some(buf)) => Ok(buf),
        Ok(None) => {
            let size = match store.head(key) {
                Ok(Some(m)) if m.size > cap => Some(m.size),
                _ => None,
            };
            Err(StoreError::new(
                ErrorKind::TooLarge,
                op,
                too_large(size, cap),
            ))
        }
        Err(e) => Err(body_error(op, &e)),
    }
}

/// Whether an I/O error of a connection means the link failed (no bytes came or went:
/// refused, reset, cut, timed out, unreachable) rather than the data being wrong.
pub fn is_network_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::WouldBlock
            | K::UnexpectedEof
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
    )
}

/// A failure while reading a reply's body: transient, and a network failure when the
/// connection failed under it.
pub fn body_error(op: impl Into<String>, e: &std::io::Error) -> StoreError {
    let message = format!("reading body: {e}");
    if is_network_io(e.kind()) {
        StoreError::network(op, message)
    } else {
        StoreError::new(ErrorKind::Transient, op, message)
    }
}

/// Why an object of `size` bytes (`None`: unknown, but more than `cap`) is not read.
pub fn too_large(size: Option<u64>, cap: u64) -> String {
    let size = match size {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {cap} bytes"),
    };
    format!(
        "the object is {size}, more than the cap of {cap} bytes ({})",
        human_bytes(cap)
    )
}

/// `64 MiB`, `16 KiB`, `1000 bytes`: a cap as people write it.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Reads a whole object without a cap, for the tests (unit and integration) that read
/// what they wrote; the tool itself reads only with [`get_bounded`].
pub fn get_all(store: &dyn ObjectStore, key: &str) -> StoreResult<Vec<u8>> {
    get_bounded(store, key, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;

    fn opts() -> PutOptions {
        PutOptions {
            storage_class: "STANDARD".into(),
            sse: crate::config::Sse::None,
            content_type: "application/json",
            kms_key_id: None,
            lock: None,
        }
    }

    #[test]
    fn a_bounded_read_stops_after_the_cap() {
        // An endless body: reading it whole would never end.
        let r = std::io::repeat(b'x');
        assert_eq!(read_at_most(r, 1000).unwrap(), None);
        assert_eq!(
            read_at_most(&b"0123456789"[..], 10).unwrap().unwrap(),
            b"0123456789"
        );
        assert_eq!(read_at_most(&b"0123456789"[..], 9).unwrap(), None);
    }

    #[test]
    fn get_bounded_names_the_key_the_size_and_the_cap() {
        let s = MemoryStore::new();
        let key = "p/subvol/a/full/manifest-20240101T000000Z.json";
        s.put_object(key, Body::Bytes(&vec![b' '; 3 << 20]), &opts())
            .unwrap();
        let Err(e) = get_bounded(&s, key, 1 << 20) else {
            panic!("read over the cap")
        };
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(text.contains(key), "{text}");
        assert!(text.contains("3145728 bytes"), "{text}");
        assert!(text.contains("the cap of 1048576 bytes (1 MiB)"), "{text}");
        assert_eq!(get_bounded(&s, key, 3 << 20).unwrap().len(), 3 << 20);
        let missing = get_bounded(&s, "p/nope", 10).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::NotFound);
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
