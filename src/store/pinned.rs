//! [`Pinned`]: a read-only view of a versioned bucket in which chosen keys are read at
//! chosen versions (HEAD, GET, RestoreObject with `versionId`), and every other key as
//! usual. `restore --version-id` and `verify --version-id` run the unchanged restore and
//! check engines over it, so a backup is read as it was written even when a bucket
//! writer has put newer versions (or delete markers) over its manifests and chunks.
//! Writes are refused: nothing that reads a backup writes to the bucket.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use super::{
    Body, ErrorKind, ListedObject, ListedPart, ListedVersion, ObjectMeta, ObjectStore, OpenUpload,
    PutOptions, Retention, StoreError, StoreResult,
};

/// A read-only view of a store that reads chosen keys at chosen versions.
pub struct Pinned {
    inner: Arc<dyn ObjectStore>,
    /// Key → the version to read.
    versions: HashMap<String, String>,
}

impl Pinned {
    /// Reads `versions`' keys at those versions, other keys as `inner` does.
    pub fn new(inner: Arc<dyn ObjectStore>, versions: HashMap<String, String>) -> Pinned {
        Pinned { inner, versions }
    }

    fn version(&self, key: &str) -> Option<&str> {
        self.versions.get(key).map(String::as_str)
    }
}

fn read_only(op: String) -> StoreError {
    StoreError::new(
        ErrorKind::Permanent,
        op,
        "internal: a write through the read-only view of pinned versions",
    )
}

impl ObjectStore for Pinned {
    fn put_object(&self, key: &str, _: Body<'_>, _: &PutOptions) -> StoreResult<String> {
        Err(read_only(format!("PUT {key}")))
    }
    fn create_multipart(&self, key: &str, _: &PutOptions) -> StoreResult<String> {
        Err(read_only(format!("CreateMultipartUpload {key}")))
    }
    fn upload_part(&self, key: &str, _: &str, _: u32, _: Body<'_>) -> StoreResult<String> {
        Err(read_only(format!("UploadPart {key}")))
    }
    fn complete_multipart(&self, key: &str, _: &str, _: &[(u32, String)]) -> StoreResult<String> {
        Err(read_only(format!("CompleteMultipartUpload {key}")))
    }
    fn abort_multipart(&self, key: &str, _: &str) -> StoreResult<()> {
        Err(read_only(format!("AbortMultipartUpload {key}")))
    }
    fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        self.inner.list_parts(key, upload_id)
    }
    fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<OpenUpload>> {
        self.inner.list_multipart_uploads(prefix)
    }
    fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ListedObject>> {
        self.inner.list_objects(prefix)
    }
    fn delete_object(&self, key: &str) -> StoreResult<()> {
        Err(read_only(format!("DELETE {key}")))
    }
    fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        match self.version(key) {
            Some(v) => self.inner.head_version(key, v),
            None => self.inner.head(key),
        }
    }
    fn head_bucket(&self) -> StoreResult<()> {
        self.inner.head_bucket()
    }
    fn throttles(&self) -> crate::ratelimit::Throttles {
        self.inner.throttles()
    }
    fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Box<dyn Read + Send>> {
        match self.version(key) {
            Some(v) => self.inner.get_version(key, v, range),
            None => self.inner.get(key, range),
        }
    }
    fn restore_object(&self, key: &str, days: u32, tier: &str) -> StoreResult<()> {
        match self.version(key) {
            Some(v) => self.inner.restore_version(key, v, days, tier),
            None => self.inner.restore_object(key, days, tier),
        }
    }
    fn object_lock_enabled(&self) -> StoreResult<bool> {
        self.inner.object_lock_enabled()
    }
    fn put_retention(&self, key: &str, _: Option<&str>, _: &Retention) -> StoreResult<()> {
        Err(read_only(format!("PutObjectRetention {key}")))
    }
    fn list_versions(&self, prefix: &str) -> StoreResult<Vec<ListedVersion>> {
        self.inner.list_versions(prefix)
    }
    fn head_version(&self, key: &str, version: &str) -> StoreResult<Option<ObjectMeta>> {
        self.inner.head_version(key, version)
    }
    fn get_version(
        &self,
        key: &str,
        version: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<Box<dyn Read + Send>> {
        self.inner.get_version(key, version, range)
    }
    fn restore_version(&self, key: &str, version: &str, days: u32, tier: &str) -> StoreResult<()> {
        self.inner.restore_version(key, version, days, tier)
    }
    fn delete_version(&self, key: &str, _: &str) -> StoreResult<()> {
        Err(read_only(format!("DELETE {key} version")))
    }
}
