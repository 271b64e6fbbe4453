//! [`MemoryStore`]: an in-memory [`ObjectStore`] for unit tests, with a log of every call
//! and injectable failures, so retry, abort and publish order can be checked without a
//! server. Archive classes behave like S3: GET fails until a restore has completed.
//! With [`MemoryStore::enable_object_lock`] the bucket is versioned and honours Object
//! Lock as S3 does: every write is a new version, a plain DELETE adds a delete marker, a
//! locked version cannot be deleted nor its retention shortened.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::Mutex;

use super::{
    Body, ErrorKind, ListedObject, ListedPart, ListedVersion, ObjectMeta, ObjectStore, OpenUpload,
    PutOptions, Retention, StoreError, StoreResult,
};

#[derive(Clone, Debug)]
pub struct StoredObject {
    pub data: Vec<u8>,
    pub opts: PutOptions,
    pub etag: String,
    /// For archive classes: `None` not requested, `Some(n)` ready after `n` more HEADs.
    pub restore_after_heads: Option<u32>,
    /// When it was stored (the store's clock, see [`MemoryStore::set_clock`]).
    pub modified: i64,
    /// The version id (versioned buckets; empty otherwise).
    pub version_id: String,
    /// The Object Lock retention of this version (from the upload, or PutObjectRetention).
    pub lock: Option<Retention>,
}

struct Upload {
    key: String,
    opts: PutOptions,
    parts: BTreeMap<u32, Vec<u8>>,
}

struct Fault {
    op_contains: String,
    kind: ErrorKind,
    times: u32,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, StoredObject>,
    uploads: BTreeMap<String, Upload>,
    log: Vec<String>,
    next_id: u64,
    faults: Vec<Fault>,
    /// The next call whose operation contains one of these panics (once each).
    panics: Vec<String>,
    /// The link is down: every call fails with a network error (no reply).
    offline: bool,
    /// HEADs an archive restore takes to finish.
    restore_delay_heads: u32,
    /// A fixed clock for LastModified (unix seconds); the real clock when `None`.
    clock: Option<i64>,
    /// Object Lock enabled (and so versioning): `history` keeps every version.
    locking: bool,
    /// Per key, every version oldest first; `None` is a delete marker (with its id).
    history: BTreeMap<String, Vec<(String, Option<StoredObject>)>>,
}

impl Inner {
    fn now(&self) -> i64 {
        self.clock.unwrap_or_else(|| crate::ts::Ts::now().unix())
    }

    /// Stores `o` as the current version of `key` (a new version when versioned).
    fn store(&mut self, key: &str, mut o: StoredObject) {
        if self.locking {
            self.next_id += 1;
            o.version_id = format!("v{}", self.next_id);
            self.history
                .entry(key.to_string())
                .or_default()
                .push((o.version_id.clone(), Some(o.clone())));
        }
        self.objects.insert(key.to_string(), o);
    }

    fn version(&self, key: &str, version: &str) -> Option<&StoredObject> {
        self.history
            .get(key)?
            .iter()
            .find(|(v, _)| v == version)?
            .1
            .as_ref()
    }

    /// Whether `lock` still protects its version.
    fn locked(&self, lock: &Option<Retention>) -> bool {
        lock.as_ref().is_some_and(|l| l.until.unix() > self.now())
    }
}

fn access_denied(op: String, why: &str) -> StoreError {
    StoreError {
        kind: ErrorKind::Permanent,
        op,
        status: Some(403),
        message: format!("AccessDenied: {why}"),
        server_time: None,
        expired_credentials: false,
        network: false,
    }
}

fn meta(o: &StoredObject, restore: Option<String>) -> ObjectMeta {
    let class = o.opts.storage_class.clone();
    ObjectMeta {
        size: o.data.len() as u64,
        etag: Some(o.etag.clone()),
        storage_class: (class != "STANDARD").then_some(class),
        sse: Some(o.opts.sse.as_str().to_string()),
        restore,
        version_id: (!o.version_id.is_empty()).then(|| o.version_id.clone()),
        lock: o.lock.clone(),
    }
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

fn is_archive(class: &str) -> bool {
    class == "GLACIER" || class == "DEEP_ARCHIVE"
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A test thread that panicked while holding the lock leaves usable data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` calls whose operation text contains `op_contains` fail with `kind`.
    pub fn fail(&self, op_contains: &str, kind: ErrorKind, times: u32) {
        self.lock().faults.push(Fault {
            op_contains: op_contains.to_string(),
            kind,
            times,
        });
    }

    /// While `down`, every call (the outage probe too) fails as a link that is down does:
    /// a [`StoreError::network`] error, with no reply.
    pub fn set_offline(&self, down: bool) {
        self.lock().offline = down;
    }

    /// The next call whose operation text contains `op_contains` panics, as a bug in a
    /// worker thread would.
    pub fn panic_on(&self, op_contains: &str) {
        self.lock().panics.push(op_contains.to_string());
    }

    /// Objects stored from now on are `LastModified` at `unix` seconds.
    pub fn set_clock(&self, unix: i64) {
        self.lock().clock = Some(unix);
    }

    /// Object Lock on (which turns versioning on), as a bucket created with
    /// `ObjectLockEnabledForBucket`.
    pub fn enable_object_lock(&self) {
        self.lock().locking = true;
    }

    /// Sets the retention of the current version of `key` directly (test set-up).
    pub fn set_retention(&self, key: &str, lock: Option<Retention>) {
        let mut g = self.lock();
        let Some(o) = g.objects.get_mut(key) else {
            return;
        };
        o.lock = lock.clone();
        let vid = o.version_id.clone();
        if let Some(h) = g.history.get_mut(key) {
            for (v, o) in h.iter_mut() {
                if *v == vid {
                    if let Some(o) = o {
                        o.lock = lock.clone();
                    }
                }
            }
        }
    }

    pub fn set_restore_delay_heads(&self, n: u32) {
        self.lock().restore_delay_heads = n;
    }

    /// Every call so far, e.g. `PUT k`, `UploadPart k 1`, in order.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    pub fn object(&self, key: &str) -> Option<StoredObject> {
        self.lock().objects.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    pub fn insert(&self, key: &str, data: &[u8], opts: PutOptions) {
        let mut g = self.lock();
        let modified = g.now();
        let lock = opts.lock.clone();
        g.store(
            key,
            StoredObject {
                data: data.to_vec(),
                opts,
                etag: format!("\"{}\"", data.len()),
                restore_after_heads: None,
                modified,
                version_id: String::new(),
                lock,
            },
        );
    }

    /// XORs byte `at` of the stored object `key` with `mask`: damage at rest, everything
    /// else about the object (class, SSE, ETag, version, dates) unchanged.
    pub fn corrupt(&self, key: &str, at: usize, mask: u8) {
        let mut g = self.lock();
        let o = g.objects.get_mut(key).expect("corrupt: no such object");
        o.data[at] ^= mask;
    }

    pub fn remove(&self, key: &str) {
        self.lock().objects.remove(key);
    }

    pub fn open_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    /// Logs the call and returns an injected failure if one matches.
    fn enter(&self, op: String) -> StoreResult<std::sync::MutexGuard<'_, Inner>> {
        let mut g = self.lock();
        g.log.push(op.clone());
        if let Some(i) = g.panics.iter().position(|p| op.contains(p.as_str())) {
            g.panics.remove(i);
            drop(g);
            panic!("injected panic in {op}");
        }
        if g.offline {
            return Err(StoreError::network(
                op,
                "connection refused (injected outage)",
            ));
        }
        if let Some(f) = g
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && op.contains(&f.op_contains))
        {
            f.times -= 1;
            let kind = f.kind;
            return Err(StoreError {
                kind,
                op,
                status: Some(match kind {
                    ErrorKind::Transient => 503,
                    ErrorKind::Permanent => 403,
                    ErrorKind::NotFound => 404,
                    ErrorKind::Archived => 403,
                    ErrorKind::TooLarge => 200,
                }),
                message: "injected failure".into(),
                server_time: None,
                expired_credentials: false,
                network: false,
            });
        }
        Ok(g)
    }
}

fn not_found(op: String) -> StoreError {
    StoreError {
        kind: ErrorKind::NotFound,
        op,
        status: Some(404),
        message: "NoSuchKey".into(),
        server_time: None,
        expired_credentials: false,
        network: false,
    }
}

impl ObjectStore for MemoryStore {
    fn put_object(&self, key: &str, body: Body<'_>, opts: &PutOptions) -> StoreResult<String> {
        let op = format!("PUT {key}");
        let body = body
            .to_vec()
            .map_err(|e| StoreError::new(ErrorKind::Transient, op.clone(), e.to_string()))?;
        let mut g = self.enter(op)?;
        let etag = format!("\"put-{}\"", body.len());
        let modified = g.now();
        g.store(
            key,
            StoredObject {
                data: body,
                opts: opts.clone(),
                etag: etag.clone(),
                restore_after_heads: None,
                modified,
                version_id: String::new(),
                lock: opts.lock.clone(),
            },
        );
        Ok(etag)
    }

    fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let mut g = self.enter(format!("CreateMultipartUpload {key}"))?;
        g.next_id += 1;
        let id = format!("upload-{}", g.next_id);
        g.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                opts: opts.clone(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        body: Body<'_>,
    ) -> StoreResult<String> {
        let op = format!("UploadPart {key} part {n}");
        let body = body
            .to_vec()
            .map_err(|e| StoreError::new(ErrorKind::Transient, op.clone(), e.to_string()))?;
        let mut g = self.enter(op.clone())?;
        let u = g.uploads.get_mut(upload_id).ok_or_else(|| not_found(op))?;
        // A part's ETag is its MD5, as S3 makes it (without SSE-KMS).
        let etag = md5_etag(&body);
        u.parts.insert(n, body);
        Ok(etag)
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> StoreResult<String> {
        let op = format!("CompleteMultipartUpload {key}");
        let mut g = self.enter(op.clone())?;
        let u = g
            .uploads
            .remove(upload_id)
            .ok_or_else(|| not_found(op.clone()))?;
        let mut data = Vec::new();
        for (i, (n, _)) in parts.iter().enumerate() {
            if *n as usize != i + 1 {
                return Err(StoreError::new(
                    ErrorKind::Permanent,
                    op,
                    "InvalidPartOrder",
                ));
            }
            let p = u
                .parts
                .get(n)
                .ok_or_else(|| StoreError::new(ErrorKind::Permanent, op.clone(), "InvalidPart"))?;
            data.extend_from_slice(p);
        }
        let etag = format!("\"mpu-{}\"", parts.len());
        let modified = g.now();
        let lock = u.opts.lock.clone();
        g.store(
            &u.key,
            StoredObject {
                data,
                opts: u.opts,
                etag: etag.clone(),
                restore_after_heads: None,
                modified,
                version_id: String::new(),
                lock,
            },
        );
        Ok(etag)
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let mut g = self.enter(format!("AbortMultipartUpload {key}"))?;
        g.uploads.remove(upload_id);
        Ok(())
    }

    fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        let op = format!("ListParts {key}");
        let g = self.enter(op.clone())?;
        let u = g.uploads.get(upload_id).ok_or_else(|| not_found(op))?;
        Ok(u.parts
            .iter()
            .map(|(n, b)| ListedPart {
                number: *n,
                size: b.len() as u64,
                etag: md5_etag(b),
                // As S3 lists them for an upload created with the default algorithm.
                checksum: crate::config::Checksum::Crc32c.of_bytes(b),
            })
            .collect())
    }

    fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<OpenUpload>> {
        let g = self.enter(format!("ListMultipartUploads {prefix}"))?;
        Ok(g.uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| OpenUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
            })
            .collect())
    }

    fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ListedObject>> {
        let g = self.enter(format!("ListObjectsV2 {prefix}"))?;
        Ok(g.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ListedObject {
                key: k.clone(),
                size: o.data.len() as u64,
                last_modified: Some(crate::ts::Ts::from_unix(o.modified)),
                storage_class: Some(o.opts.storage_class.clone()),
            })
            .collect())
    }

    fn delete_object(&self, key: &str) -> StoreResult<()> {
        let mut g = self.enter(format!("DELETE {key}"))?;
        // Versioned: a delete marker hides the object; every version stays.
        if g.locking && g.objects.remove(key).is_some() {
            g.next_id += 1;
            let id = format!("v{}", g.next_id);
            g.history
                .entry(key.to_string())
                .or_default()
                .push((id, None));
        }
        g.objects.remove(key);
        Ok(())
    }

    fn head_bucket(&self) -> StoreResult<()> {
        self.enter("HeadBucket".to_string()).map(drop)
    }

    fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let mut g = self.enter(format!("HEAD {key}"))?;
        let Some(o) = g.objects.get_mut(key) else {
            return Ok(None);
        };
        let restore = match &mut o.restore_after_heads {
            None => None,
            Some(0) => Some(
                "ongoing-request=\"false\", expiry-date=\"Fri, 01 Jan 2100 00:00:00 GMT\""
                    .to_string(),
            ),
            Some(n) => {
                *n -= 1;
                Some("ongoing-request=\"true\"".to_string())
            }
        };
        Ok(Some(meta(o, restore)))
    }

    fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Box<dyn Read + Send>> {
        let op = match range {
            None => format!("GET {key}"),
            Some((off, len)) => format!("GET {key} bytes {off}+{len}"),
        };
        let g = self.enter(op.clone())?;
        let o = g.objects.get(key).ok_or_else(|| not_found(op.clone()))?;
        if is_archive(&o.opts.storage_class) && o.restore_after_heads != Some(0) {
            return Err(StoreError {
                kind: ErrorKind::Archived,
                op,
                status: Some(403),
                message: "InvalidObjectState".into(),
                server_time: None,
                expired_credentials: false,
                network: false,
            });
        }
        let (start, end) = match range {
            None => (0, o.data.len()),
            Some((off, len)) => {
                let start = (off as usize).min(o.data.len());
                (start, (start + len as usize).min(o.data.len()))
            }
        };
        Ok(Box::new(Cursor::new(o.data[start..end].to_vec())))
    }

    fn restore_object(&self, key: &str, _days: u32, _tier: &str) -> StoreResult<()> {
        let op = format!("RestoreObject {key}");
        let mut g = self.enter(op.clone())?;
        let delay = g.restore_delay_heads;
        let o = g
            .objects
            .get_mut(key)
            .ok_or_else(|| not_found(op.clone()))?;
        if !is_archive(&o.opts.storage_class) {
            // As S3: "Restore is not allowed for the object's current storage class".
            return Err(StoreError {
                kind: ErrorKind::Archived,
                op,
                status: Some(403),
                message: "InvalidObjectState".into(),
                server_time: None,
                expired_credentials: false,
                network: false,
            });
        }
        if o.restore_after_heads.is_none() {
            o.restore_after_heads = Some(delay);
        }
        Ok(())
    }
    fn object_lock_enabled(&self) -> StoreResult<bool> {
        Ok(self
            .enter("GetObjectLockConfiguration".to_string())?
            .locking)
    }

    fn put_retention(&self, key: &str, version: Option<&str>, r: &Retention) -> StoreResult<()> {
        let op = format!("PutObjectRetention {key}");
        let mut g = self.enter(op.clone())?;
        if !g.locking {
            return Err(StoreError::new(
                ErrorKind::Permanent,
                op,
                "InvalidRequest: Bucket is missing Object Lock Configuration",
            ));
        }
        let vid = match version {
            Some(v) => v.to_string(),
            None => match g.objects.get(key) {
                Some(o) => o.version_id.clone(),
                None => return Err(not_found(op)),
            },
        };
        let old = g.version(key, &vid).ok_or_else(|| not_found(op.clone()))?;
        // As S3: a retention that protects the version is never shortened.
        if g.locked(&old.lock) && old.lock.as_ref().is_some_and(|l| r.until < l.until) {
            return Err(access_denied(op, "the retention would be shortened"));
        }
        for (v, o) in g.history.get_mut(key).into_iter().flatten() {
            if *v == vid {
                if let Some(o) = o {
                    o.lock = Some(r.clone());
                }
            }
        }
        if let Some(o) = g.objects.get_mut(key).filter(|o| o.version_id == vid) {
            o.lock = Some(r.clone());
        }
        Ok(())
    }

    fn list_versions(&self, prefix: &str) -> StoreResult<Vec<ListedVersion>> {
        let g = self.enter(format!("ListObjectVersions {prefix}"))?;
        let mut out = Vec::new();
        for (k, versions) in g
            .history
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let n = versions.len();
            for (i, (v, o)) in versions.iter().enumerate().rev() {
                out.push(ListedVersion {
                    key: k.clone(),
                    version_id: v.clone(),
                    is_latest: i + 1 == n,
                    delete_marker: o.is_none(),
                    size: o.as_ref().map_or(0, |o| o.data.len() as u64),
                    last_modified: o.as_ref().map(|o| crate::ts::Ts::from_unix(o.modified)),
                });
            }
        }
        Ok(out)
    }

    fn head_version(&self, key: &str, version: &str) -> StoreResult<Option<ObjectMeta>> {
        let g = self.enter(format!("HEAD {key} version {version}"))?;
        Ok(g.version(key, version).map(|o| meta(o, None)))
    }

    /// (Archive classes are not modelled for versions: a version reads at once.)
    fn get_version(
        &self,
        key: &str,
        version: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<Box<dyn Read + Send>> {
        let op = format!("GET {key} version {version}");
        let g = self.enter(op.clone())?;
        let o = g.version(key, version).ok_or_else(|| not_found(op))?;
        let (start, end) = match range {
            None => (0, o.data.len()),
            Some((off, len)) => {
                let start = (off as usize).min(o.data.len());
                (start, (start + len as usize).min(o.data.len()))
            }
        };
        Ok(Box::new(Cursor::new(o.data[start..end].to_vec())))
    }

    fn delete_version(&self, key: &str, version: &str) -> StoreResult<()> {
        let op = format!("DELETE {key} version {version}");
        let mut g = self.enter(op.clone())?;
        let Some(h) = g.history.get(key) else {
            return Ok(());
        };
        let Some(at) = h.iter().position(|(v, _)| v == version) else {
            return Ok(());
        };
        if g.locked(&h[at].1.as_ref().and_then(|o| o.lock.clone())) {
            return Err(access_denied(
                op,
                "the object version is locked (Object Lock)",
            ));
        }
        let h = g.history.entry(key.to_string()).or_default();
        h.remove(at);
        let current = h.last().and_then(|(_, o)| o.clone());
        if h.is_empty() {
            g.history.remove(key);
        }
        match current {
            Some(o) => g.objects.insert(key.to_string(), o),
            None => g.objects.remove(key),
        };
        Ok(())
    }
}

/// `"<MD5 in hex>"`, the ETag S3 gives a part or a single-PUT object (without SSE-KMS).
fn md5_etag(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    let hex: String = Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect();
    format!("\"{hex}\"")
}
