//! AWS Signature Version 4 for the requests `s3.rs` (service `s3`) and the credential
//! fetchers (`sts`) send: the canonical request, the string to sign, the signing key and
//! the `Authorization` header, as pure functions checked against the AWS SigV4 test-suite
//! vectors. The stateful signer that holds the credentials (`creds::Signer`) is built on
//! these. The percent-encoding ([`uri_encode`]) is the
//! `percent-encoding` crate's with the AWS unreserved set.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use url::Url;

/// Payload hash for bodies we do not hash twice (TLS protects them in transit, the
/// `x-amz-checksum-*` header lets the service check them, and chunk hashes are checked
/// end to end on restore).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts a key of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(b: &[u8]) -> String {
    crate::chunker::hex(b)
}

/// The `x-amz-content-sha256` of a body that is hashed and signed.
pub fn payload_sha256(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// `2015-08-30T12:36:00Z` as SigV4 writes it: `20150830T123600Z`.
pub fn amz_date(unix: i64) -> String {
    crate::ts::Ts::from_unix(unix).to_string()
}

/// The canonical URI: the URL's path decoded and encoded again the AWS way (every byte
/// but the unreserved ones and `/`), so what is signed is what the service will rebuild.
/// S3 encodes once and never normalises `.`/`..` (our URLs never carry them).
fn canonical_uri(url: &Url) -> String {
    let decoded = percent_decode(url.path());
    let path = uri_encode(&decoded, false);
    if path.is_empty() {
        "/".to_string()
    } else {
        path
    }
}

/// The SigV4 URI encoding: every byte but the unreserved ones (letters, digits, `-_.~`)
/// as `%XX` in upper-case hex, `/` too when `encode_slash` (query parts; not in paths).
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    const PATH: &AsciiSet = &QUERY.remove(b'/');
    utf8_percent_encode(s, if encode_slash { QUERY } else { PATH }).to_string()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical query: each name and value decoded, encoded the AWS way (`/` too), and
/// sorted by name then value.
fn canonical_query(url: &Url) -> String {
    let Some(q) = url.query().filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Canonical headers and the signed-header list: names lower-cased and sorted, values
/// trimmed with inner runs of spaces made one, repeated names joined with `,`.
fn canonical_headers(headers: &[(String, String)]) -> (String, String) {
    let mut named: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    // A stable sort keeps repeated headers in the order they were given.
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(String, String)> = Vec::new();
    for (k, v) in named {
        match merged.last_mut() {
            Some((lk, lv)) if *lk == k => {
                lv.push(',');
                lv.push_str(&v);
            }
            _ => merged.push((k, v)),
        }
    }
    let canonical = merged
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect::<String>();
    let signed = merged
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (canonical, signed)
}

/// The canonical request and the signed-header list.
pub fn canonical_request(
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    payload_hash: &str,
) -> (String, String) {
    let (canon_headers, signed) = canonical_headers(headers);
    (
        format!(
            "{}\n{}\n{}\n{canon_headers}\n{signed}\n{payload_hash}",
            method.to_ascii_uppercase(),
            canonical_uri(url),
            canonical_query(url),
        ),
        signed,
    )
}

/// What a request's signature is computed over, and for whom.
pub struct Scope<'a> {
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Scope<'_> {
    fn credential_scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            &self.amz_date[..8.min(self.amz_date.len())],
            self.region,
            self.service
        )
    }
}

pub fn string_to_sign(scope: &Scope<'_>, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        scope.amz_date,
        scope.credential_scope(),
        hex(&Sha256::digest(canonical.as_bytes()))
    )
}

pub fn signing_key(secret: &str, scope: &Scope<'_>) -> [u8; 32] {
    let date = &scope.amz_date[..8.min(scope.amz_date.len())];
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, scope.region.as_bytes());
    let k = hmac(&k, scope.service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// The `Authorization` header for a request whose headers (all of them signed, `host`
/// and `x-amz-date` included) are `headers`.
pub fn authorization(
    access_key: &str,
    secret: &str,
    scope: &Scope<'_>,
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    payload_hash: &str,
) -> String {
    let (canonical, signed) = canonical_request(method, url, headers, payload_hash);
    let to_sign = string_to_sign(scope, &canonical);
    let signature = hex(&hmac(&signing_key(secret, scope), to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{}, SignedHeaders={signed}, Signature={signature}",
        scope.credential_scope()
    )
}

/// `host[:port]` as the request will send it.
pub fn host_header(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
