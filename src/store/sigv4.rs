//! AWS Signature Version 4 header signing for the requests `s3.rs` sends, built on
//! rust-s3's public helpers (`s3::signing`) and its credential chain (`s3::creds`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use s3::creds::Credentials;
use s3::signing;
use s3::Region;
use sha2::Sha256;
use time::OffsetDateTime;
use url::Url;

/// Payload hash for bodies we do not hash twice (TLS protects them in transit; chunk
/// hashes are checked end to end on restore).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Temporary credentials (with an expiry) are re-read this often.
const REFRESH_EVERY: Duration = Duration::from_secs(600);

/// Every part of `creds` is a secret no log line may show.
fn mask(creds: &Credentials) {
    for v in [
        &creds.access_key,
        &creds.secret_key,
        &creds.session_token,
        &creds.security_token,
    ]
    .into_iter()
    .flatten()
    {
        crate::logging::add_secret(v);
    }
}

pub struct Signer {
    creds: Mutex<(Credentials, Instant)>,
    region: Region,
    /// Seconds to add to our clock when signing: the service's time minus ours, learnt
    /// from a `RequestTimeTooSkewed` reply (as the AWS SDKs do).
    skew: std::sync::atomic::AtomicI64,
}

impl Signer {
    /// Loads credentials from the usual AWS chain: environment, `AWS_PROFILE` in
    /// `~/.aws/credentials`, then container/instance metadata.
    pub fn from_environment(region: &str) -> Result<Signer, String> {
        let profile = std::env::var("AWS_PROFILE").ok();
        let creds = Credentials::new(None, None, None, None, profile.as_deref()).map_err(|e| {
            format!(
                "no AWS credentials found ({e}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 or AWS_PROFILE with ~/.aws/credentials, or run with an instance role"
            )
        })?;
        Ok(Signer::new(creds, region))
    }

    pub fn new(creds: Credentials, region: &str) -> Signer {
        mask(&creds);
        Signer {
            skew: std::sync::atomic::AtomicI64::new(0),
            creds: Mutex::new((creds, Instant::now())),
            region: Region::Custom {
                region: region.to_string(),
                endpoint: String::new(),
            },
        }
    }

    /// Corrects the signing clock to the service's `server_unix` time; returns the
    /// offset in seconds. A correction beyond a day is refused (a lying reply).
    pub fn correct_skew(&self, server_unix: i64) -> Option<i64> {
        let offset = server_unix - OffsetDateTime::now_utc().unix_timestamp();
        (offset.abs() <= 86_400).then(|| {
            self.skew
                .store(offset, std::sync::atomic::Ordering::Relaxed);
            offset
        })
    }

    fn credentials(&self) -> Result<Credentials, String> {
        let mut guard = self
            .creds
            .lock()
            .map_err(|_| "credentials lock poisoned".to_string())?;
        let (creds, loaded) = &mut *guard;
        if creds.expiration.is_some() && loaded.elapsed() > REFRESH_EVERY {
            creds
                .refresh()
                .map_err(|e| format!("refreshing AWS credentials: {e}"))?;
            mask(creds);
            *loaded = Instant::now();
        }
        Ok(creds.clone())
    }

    /// Returns the headers to send, `Authorization` included. `headers` are the request's
    /// own (x-amz-*, content-type); they are all signed.
    pub fn sign(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        payload_sha256: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let creds = self.credentials()?;
        let access = creds.access_key.as_deref().unwrap_or_default();
        let secret = creds.secret_key.as_deref().unwrap_or_default();
        let now = OffsetDateTime::now_utc()
            + time::Duration::seconds(self.skew.load(std::sync::atomic::Ordering::Relaxed));
        let amz_date = crate::ts::Ts::from_unix(now.unix_timestamp()).to_string();
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut out: Vec<(String, String)> = vec![
            ("host".into(), host),
            ("x-amz-date".into(), amz_date),
            ("x-amz-content-sha256".into(), payload_sha256.to_string()),
        ];
        if let Some(token) = creds
            .session_token
            .as_ref()
            .or(creds.security_token.as_ref())
        {
            out.push(("x-amz-security-token".into(), token.clone()));
        }
        for (k, v) in headers {
            out.push((k.to_ascii_lowercase(), v.clone()));
        }
        let mut map = HeaderMap::new();
        for (k, v) in &out {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            map.insert(name, value);
        }
        let e = |e: s3::error::S3Error| e.to_string();
        let canonical = signing::canonical_request(method, url, &map, payload_sha256).map_err(e)?;
        let to_sign = signing::string_to_sign(&now, &self.region, &canonical).map_err(e)?;
        let key = signing::signing_key(&now, secret, &self.region, "s3").map_err(e)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("HMAC key: {e}"))?;
        mac.update(to_sign.as_bytes());
        let signature = crate::chunker::hex(&mac.finalize().into_bytes());
        let auth = signing::authorization_header(
            access,
            &now,
            &self.region,
            &signing::signed_header_string(&map),
            &signature,
        )
        .map_err(e)?;
        out.push(("authorization".into(), auth));
        Ok(out)
    }
}
