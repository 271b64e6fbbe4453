//! Part-size arithmetic for multipart uploads: S3's limits on parts (count and size) and
//! the part size a chunk size needs. A leaf under both the config's checks and the
//! pipeline (which had it, and names it still).

const MIB: u64 = 1 << 20;

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// S3's limit on parts per multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// Part size for a chunk size: the configured one, raised (to whole MiB) so a chunk needs
/// at most 10,000 parts, and never above 5 GiB. `None` when even 5 GiB parts are too few.
pub fn effective_part_size(configured: u64, chunk_size: u64) -> Option<u64> {
    let needed = chunk_size.div_ceil(MAX_PARTS);
    let mut p = configured.max(MIN_PART_SIZE);
    if needed > p {
        p = needed.div_ceil(MIB) * MIB;
    }
    (p <= MAX_PART_SIZE).then_some(p)
}
