//! [`Signer`]: signs requests for one service and region with credentials from a
//! [`Provider`], adding the date, payload hash and session token, and learns the clock
//! skew from the service. Under `creds` because the STS sources sign with it too; the
//! SigV4 arithmetic it uses is `sigv4`'s (which imports nothing of `creds`).

use std::sync::atomic::{AtomicI64, Ordering};

use url::Url;

use super::super::sigv4::{amz_date, authorization, host_header, Scope};
use super::{Credentials, Provider};

/// Signs requests for one service and region with credentials from a [`Provider`].
pub struct Signer {
    creds: Provider,
    region: String,
    service: &'static str,
    /// Seconds to add to our clock when signing: the service's time minus ours, learnt
    /// from a `RequestTimeTooSkewed` reply (as the AWS SDKs do).
    skew: AtomicI64,
}

impl Signer {
    pub fn new(creds: Provider, region: &str, service: &'static str) -> Signer {
        Signer {
            creds,
            region: region.to_string(),
            service,
            skew: AtomicI64::new(0),
        }
    }

    /// Where the credentials come from.
    pub fn describe(&self) -> String {
        self.creds.describe()
    }

    /// The credentials in use (renewed ahead of their expiry).
    pub fn credentials(&self) -> Result<Credentials, String> {
        self.creds.get()
    }

    /// The service said our credentials have expired (`ExpiredToken`): fetch new ones
    /// before the next request. False when they cannot be renewed (static keys).
    pub fn expired(&self) -> bool {
        self.creds.invalidate()
    }

    /// Corrects the signing clock to the service's `server_unix` time; returns the
    /// offset in seconds. A correction beyond a day is refused (a lying reply).
    pub fn correct_skew(&self, server_unix: i64) -> Option<i64> {
        let offset = server_unix - crate::ts::Ts::now().unix();
        (offset.abs() <= 86_400).then(|| {
            self.skew.store(offset, Ordering::Relaxed);
            offset
        })
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
        let now = crate::ts::Ts::now().unix() + self.skew.load(Ordering::Relaxed);
        let date = amz_date(now);
        let mut out: Vec<(String, String)> = vec![
            ("host".into(), host_header(url)),
            ("x-amz-date".into(), date.clone()),
            ("x-amz-content-sha256".into(), payload_sha256.to_string()),
        ];
        if let Some(token) = &creds.session_token {
            out.push(("x-amz-security-token".into(), token.clone()));
        }
        for (k, v) in headers {
            out.push((k.to_ascii_lowercase(), v.clone()));
        }
        let scope = Scope {
            amz_date: &date,
            region: &self.region,
            service: self.service,
        };
        let auth = authorization(
            &creds.access_key,
            &creds.secret_key,
            &scope,
            method,
            url,
            &out,
            payload_sha256,
        );
        out.push(("authorization".into(), auth));
        Ok(out)
    }
}
