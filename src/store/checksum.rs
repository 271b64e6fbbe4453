//! Checksums on the wire (`s3.checksum`): every PutObject and UploadPart carries an
//! `x-amz-checksum-crc32c` (or `-sha256`) of its body, which the service verifies before
//! it stores anything, so a body damaged in transit is refused at once (`BadDigest`,
//! retried) instead of being found at restore time, and Object Lock buckets accept the
//! upload. A multipart upload declares the algorithm at creation and lists each part's
//! checksum at completion; [`PartSums`] keeps those of the parts this process sent.
//! Servers that ignore the headers are unaffected.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::{Body, ErrorKind, ListedPart, StoreError, StoreResult};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
/// The `x-amz-checksum-*` every upload carries for the service to check.
pub enum Checksum {
    #[default]
    /// CRC32C (hardware; the default).
    Crc32c,
    /// SHA-256.
    Sha256,
    /// No checksum header (servers that reject them).
    None,
}

impl Checksum {
    /// The config value (`crc32c`, `sha256`, `none`).
    pub fn parse(v: &str) -> Option<Checksum> {
        match v {
            "crc32c" => Some(Checksum::Crc32c),
            "sha256" => Some(Checksum::Sha256),
            "none" => Some(Checksum::None),
            _ => None,
        }
    }

    /// `x-amz-checksum-algorithm` of CreateMultipartUpload.
    pub fn algorithm(self) -> Option<&'static str> {
        match self {
            Checksum::Crc32c => Some("CRC32C"),
            Checksum::Sha256 => Some("SHA256"),
            Checksum::None => None,
        }
    }

    fn header(self) -> Option<&'static str> {
        match self {
            Checksum::Crc32c => Some("x-amz-checksum-crc32c"),
            Checksum::Sha256 => Some("x-amz-checksum-sha256"),
            Checksum::None => None,
        }
    }

    /// The element naming a part's checksum in ListParts and CompleteMultipartUpload.
    pub fn list_element(self) -> Option<&'static str> {
        match self {
            Checksum::Crc32c => Some("ChecksumCRC32C"),
            Checksum::Sha256 => Some("ChecksumSHA256"),
            Checksum::None => None,
        }
    }

    /// The base64 checksum of `b`.
    pub fn of_bytes(self, b: &[u8]) -> Option<String> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Checksum::None => None,
            Checksum::Crc32c => Some(b64(&crc32c::crc32c(b).to_be_bytes())),
            Checksum::Sha256 => Some(b64(&Sha256::digest(b))),
        }
    }

    /// The base64 checksum of everything `r` yields.
    pub fn of_reader(self, r: &mut dyn Read) -> std::io::Result<Option<String>> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut buf = vec![0u8; 256 << 10];
        match self {
            Checksum::None => Ok(None),
            Checksum::Crc32c => {
                let mut crc = 0u32;
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                }
                Ok(Some(b64(&crc.to_be_bytes())))
            }
            Checksum::Sha256 => {
                let mut h = Sha256::new();
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Ok(Some(b64(&h.finalize())))
            }
        }
    }

    /// The checksum header of `body` for request `op`, or None when checksums are off.
    pub fn header_for(
        self,
        op: &str,
        body: &Body<'_>,
    ) -> StoreResult<Option<(&'static str, String)>> {
        let Some(name) = self.header() else {
            return Ok(None);
        };
        // A body in memory is summed where it lies; a spooled one is read once more
        // (from the page cache, positioned reads).
        let summed = match body {
            Body::Bytes(b) => Ok(self.of_bytes(b)),
            Body::File { .. } => self.of_reader(&mut body.reader()),
        };
        let value = summed
            .map_err(|e| {
                StoreError::new(
                    ErrorKind::Permanent,
                    op,
                    format!("reading the body for its checksum: {e}"),
                )
            })?
            .unwrap_or_default();
        Ok(Some((name, value)))
    }
}

/// Checksums of the parts this process uploaded, by upload id and part number. An
/// upload's entries go when it is completed or aborted; the map holds at most the parts
/// of the uploads open at once.
#[derive(Default)]
pub struct PartSums(Mutex<HashMap<String, HashMap<u32, String>>>);

impl PartSums {
    pub fn record(&self, upload_id: &str, part: u32, sum: String) {
        if let Ok(mut g) = self.0.lock() {
            g.entry(upload_id.to_string())
                .or_default()
                .insert(part, sum);
        }
    }

    pub fn forget(&self, upload_id: &str) {
        if let Ok(mut g) = self.0.lock() {
            g.remove(upload_id);
        }
    }

    /// The checksum of each of `parts`, in order: ours where we sent the part, else the
    /// service's from `list` (parts stored by an earlier run that this one resumes).
    /// None when the service keeps no checksum for a part we did not send (it ignores
    /// checksums, so it expects none at completion).
    pub fn for_completion(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        list: impl FnOnce() -> StoreResult<Vec<ListedPart>>,
    ) -> StoreResult<Option<Vec<String>>> {
        let ours: HashMap<u32, String> = self
            .0
            .lock()
            .map(|g| g.get(upload_id).cloned().unwrap_or_default())
            .unwrap_or_default();
        let listed: Vec<ListedPart> = if parts.iter().all(|(n, _)| ours.contains_key(n)) {
            Vec::new()
        } else {
            list()?
        };
        let mut out = Vec::with_capacity(parts.len());
        for (n, _) in parts {
            let sum = ours.get(n).cloned().or_else(|| {
                listed
                    .iter()
                    .find(|l| l.number == *n)
                    .and_then(|l| l.checksum.clone())
            });
            match sum {
                Some(s) => out.push(s),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // CRC-32C of "123456789" is 0xE3069283 (the check value of the Castagnoli CRC).
        let c = |a: Checksum, b: &[u8]| a.of_reader(&mut &b[..]).unwrap().unwrap();
        assert_eq!(c(Checksum::Crc32c, b"123456789"), "4waSgw==");
        assert_eq!(c(Checksum::Crc32c, b""), "AAAAAA==");
        assert_eq!(
            c(Checksum::Sha256, b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        // Across buffer boundaries the same as in one piece.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = crc32c::crc32c(&big);
        assert_eq!(
            c(Checksum::Crc32c, &big),
            base64::engine::general_purpose::STANDARD.encode(whole.to_be_bytes())
        );
        assert_eq!(Checksum::None.of_reader(&mut &b"x"[..]).unwrap(), None);
        for a in [Checksum::Crc32c, Checksum::Sha256, Checksum::None] {
            assert_eq!(a.of_bytes(&big), a.of_reader(&mut &big[..]).unwrap());
        }
    }

    #[test]
    fn completion_uses_ours_then_the_listing_then_none() {
        let s = PartSums::default();
        s.record("u", 1, "A".into());
        s.record("u", 2, "B".into());
        let parts = vec![(1, "e1".to_string()), (2, "e2".to_string())];
        let no_list = || -> StoreResult<Vec<ListedPart>> { panic!("listed although all known") };
        assert_eq!(
            s.for_completion("u", &parts, no_list).unwrap(),
            Some(vec!["A".into(), "B".into()])
        );
        // Part 3 was stored by an earlier run: the listing has it.
        let mut parts3 = parts.clone();
        parts3.push((3, "e3".into()));
        let listed = |c: Option<&str>| {
            vec![ListedPart {
                number: 3,
                size: 5,
                etag: "e3".into(),
                checksum: c.map(str::to_string),
            }]
        };
        assert_eq!(
            s.for_completion("u", &parts3, || Ok(listed(Some("C"))))
                .unwrap(),
            Some(vec!["A".into(), "B".into(), "C".into()])
        );
        // A service that keeps no checksums: none are sent.
        assert_eq!(
            s.for_completion("u", &parts3, || Ok(listed(None))).unwrap(),
            None
        );
        s.forget("u");
        assert_eq!(s.for_completion("u", &parts, || Ok(vec![])).unwrap(), None);
    }
}
