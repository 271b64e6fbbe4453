//! The upload pipeline's handle on the bucket: the writes of chunk objects and their
//! multipart uploads, and nothing else (no reads, listings or deletes). `Repo::chunk_writer`
//! makes one; the pipeline runs each call under its own retries and stop flag. It writes
//! only at chunk keys ([`ChunkKey`], which only the layout makes).

use std::sync::Arc;

use crate::manifest::ChunkKey;
use crate::store::{Body, ObjectStore, PutOptions, StoreResult};

/// Writes chunk objects: PutObject, and CreateMultipartUpload / UploadPart /
/// CompleteMultipartUpload / AbortMultipartUpload. Each call is one request (no retry).
#[derive(Clone)]
pub struct ChunkWriter {
    store: Arc<dyn ObjectStore>,
}

impl ChunkWriter {
    /// Made by [`super::Repo::chunk_writer`] (and the pipeline's unit tests).
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> ChunkWriter {
        ChunkWriter { store }
    }

    /// PutObject of a whole chunk; its ETag.
    pub fn put_object(
        &self,
        key: &ChunkKey,
        body: Body<'_>,
        opts: &PutOptions,
    ) -> StoreResult<String> {
        self.store.put_object(key.as_str(), body, opts)
    }

    /// CreateMultipartUpload; the upload id.
    pub fn create_multipart(&self, key: &ChunkKey, opts: &PutOptions) -> StoreResult<String> {
        self.store.create_multipart(key.as_str(), opts)
    }

    /// UploadPart; the part's ETag.
    pub fn upload_part(
        &self,
        key: &ChunkKey,
        upload_id: &str,
        part: u32,
        body: Body<'_>,
    ) -> StoreResult<String> {
        self.store.upload_part(key.as_str(), upload_id, part, body)
    }

    /// CompleteMultipartUpload; the object's ETag.
    pub fn complete_multipart(
        &self,
        key: &ChunkKey,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> StoreResult<String> {
        self.store
            .complete_multipart(key.as_str(), upload_id, parts)
    }

    /// AbortMultipartUpload.
    pub fn abort_multipart(&self, key: &ChunkKey, upload_id: &str) -> StoreResult<()> {
        self.store.abort_multipart(key.as_str(), upload_id)
    }
}
