//! [`S3Store`]: the real object store. Requests are signed with SigV4 (`sigv4.rs`) with
//! credentials from the AWS chain (`creds/`), and carried by one keep-alive agent shared
//! by all threads (`http.rs`: trust store, proxy, and each request's deadlines, from the
//! size of its body). One attempt per call: the retry policy is ours (`retry.rs`), so the
//! transport never retries on its own; this file says which failures are worth retrying
//! (expired credentials and a skewed clock are, once corrected; a certificate the trust
//! store rejects is not).

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use url::Url;

pub use super::checksum::Checksum;
use super::checksum::PartSums;
use super::creds::{self, Provider, Signer};
use super::http::{self, Deadlines, Limits, Response, Transport};
use super::listing::{self, Pages};
use super::sigv4::{payload_sha256, EMPTY_SHA256, UNSIGNED_PAYLOAD};
use super::{
    xml, Body, ErrorKind, ListedObject, ListedPart, ListedVersion, ObjectMeta, ObjectStore,
    OpenUpload, PutOptions, Retention, StoreError, StoreResult,
};
use crate::config;
use crate::ratelimit::{Cap, Throttle, Throttled, Throttles};

/// Bodies up to this size are hashed and signed; larger ones go as UNSIGNED-PAYLOAD.
const SIGN_BODY_LIMIT: usize = 1 << 20;

/// No S3 reply this tool reads into memory is near this: a ListObjectsV2 page of 1,000
/// keys of 1,024 bytes each, every character escaped, is about 7 MiB.
const MAX_REPLY_BYTES: u64 = 16 << 20;
/// An error reply is a few hundred bytes; beyond this its details are not read.
const MAX_ERROR_REPLY_BYTES: u64 = 64 << 10;

/// The S3 [`ObjectStore`]: signed requests over one keep-alive agent.
pub struct S3Store {
    agent: http::Agent,
    /// How long each request may take (`http::Deadlines`): a stalled connection costs half
    /// a minute, not hours; CompleteMultipartUpload may wait for the service's assembly
    /// (s3s-fs re-reads the object: minutes for a 200 GiB chunk; AWS sends white space).
    deadlines: Deadlines,
    signer: Signer,
    /// `scheme://host[:port]` and, for path-style addressing, `/bucket`.
    base: String,
    /// The path part of `base` (`/bucket` or empty), which every request path starts with.
    base_path: String,
    /// Where the trusted roots came from, for certificate errors.
    roots: String,
    checksum: Checksum,
    /// The checksums of the parts this process uploaded, for CompleteMultipartUpload.
    part_sums: PartSums,
    /// The run's stop flag (SIGINT/SIGTERM), checked between the pages of a listing.
    stop: Arc<AtomicBool>,
    list_limits: listing::Limits,
    /// The run's rate caps: every request body goes through `throttles.upload`, every
    /// response body through `throttles.download`.
    throttles: Throttles,
    /// The slowest a request of each direction may be held to by its cap (its lowest
    /// rate shared by every connection of the pool), for the deadlines.
    upload_floor: Option<u64>,
    download_floor: Option<u64>,
}

/// Where and how to reach the bucket.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    /// The bucket's name.
    pub bucket: String,
    /// The region requests are signed for.
    pub region: String,
    /// A custom endpoint (path-style addressing); `None`: AWS.
    pub endpoint_url: Option<String>,
    /// The checksum every upload carries for the service to verify.
    pub checksum: Checksum,
}

impl Endpoint {
    /// The endpoint the config's `[s3]` names.
    pub fn from_config(s3: &config::S3) -> Endpoint {
        Endpoint {
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            endpoint_url: s3.endpoint_url.clone(),
            checksum: s3.checksum,
        }
    }

    /// A custom endpoint uses path-style addressing; AWS uses virtual-hosted style unless
    /// the bucket name has a dot (which breaks TLS name checks).
    fn base(&self) -> String {
        match &self.endpoint_url {
            Some(e) => format!("{}/{}", e.trim_end_matches('/'), self.bucket),
            None if self.bucket.contains('.') => {
                format!("https://s3.{}.amazonaws.com/{}", self.region, self.bucket)
            }
            None => format!("https://{}.s3.{}.amazonaws.com", self.bucket, self.region),
        }
    }
}

/// The store for the configured bucket, with the keep-alive pool sized for the uploaders;
/// once `stop` is set (SIGINT/SIGTERM), its requests in flight fail at once and its
/// listings end between pages.
pub fn open(cfg: &config::Config, stop: Arc<AtomicBool>) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let store = S3Store::stoppable(
        &Endpoint::from_config(&cfg.s3),
        cfg.s3.concurrency + 2,
        Some(stop.clone()),
    )
    .map_err(|e| anyhow::anyhow!(e))?
    .with_stop(stop.clone())
    .with_caps(
        &cfg.s3.upload_cap,
        &cfg.s3.download_cap,
        cfg.s3.concurrency + 2,
        Some(stop),
    );
    Ok(Arc::new(store))
}

impl S3Store {
    /// The store as the process environment configures it: credentials from the AWS
    /// chain (checked now, so a missing profile fails before any work), the trust store
    /// and proxy from the environment. `connections` is the keep-alive pool size
    /// (uploader threads plus a little).
    pub fn new(ep: &Endpoint, connections: usize) -> Result<S3Store, String> {
        S3Store::stoppable(ep, connections, None)
    }

    /// As [`Self::new`]; once `stop` is set, every request of the store (and of its
    /// credential sources) fails at once, those in flight included.
    pub fn stoppable(
        ep: &Endpoint,
        connections: usize,
        stop: Option<Arc<AtomicBool>>,
    ) -> Result<S3Store, String> {
        let env = crate::config::ProcessEnv;
        let mut transport = Transport::from_env(&env)?;
        if let Some(flag) = stop {
            transport = transport.stop_on(flag);
        }
        let provider = creds::from_env(&creds::Lookup {
            env: &env,
            transport: &transport,
            region: &ep.region,
        })?;
        provider.get()?;
        S3Store::with_provider(ep, connections, provider, &transport)
    }

    /// With explicit static credentials (tests, tools).
    pub fn with_keys(
        ep: &Endpoint,
        connections: usize,
        access: &str,
        secret: &str,
    ) -> Result<S3Store, String> {
        let transport = Transport::from_env(&crate::config::ProcessEnv)?;
        S3Store::with_provider(
            ep,
            connections,
            Provider::fixed(access, secret, None)?,
            &transport,
        )
    }

    fn with_provider(
        ep: &Endpoint,
        connections: usize,
        provider: Provider,
        transport: &Transport,
    ) -> Result<S3Store, String> {
        let base = ep.base();
        let target =
            Url::parse(&base).map_err(|e| format!("the S3 endpoint {base} is not a URL: {e}"))?;
        let deadlines = Deadlines::from_env(&crate::config::ProcessEnv);
        crate::event!(
            Debug,
            "s3_transport",
            credentials = provider.describe(),
            trust = transport.roots,
            proxy = transport
                .proxy_for(&target)
                .unwrap_or_else(|| "none".into())
        );
        Ok(S3Store {
            agent: transport.agent(&target, &deadlines.agent_opts(connections))?,
            deadlines,
            signer: Signer::new(provider, &ep.region, "s3"),
            base_path: target.path().trim_end_matches('/').to_string(),
            base,
            roots: transport.roots.clone(),
            checksum: ep.checksum,
            part_sums: PartSums::default(),
            stop: Arc::new(AtomicBool::new(false)),
            list_limits: listing::Limits::default(),
            throttles: Throttles::default(),
            upload_floor: None,
            download_floor: None,
        })
    }

    /// Caps the rate of request bodies (`upload`) and response bodies (`download`), each
    /// with one bucket shared by the `connections` of the pool; a wait for the cap ends
    /// once `stop` is set. Deadlines then allow each request the cap's lowest rate shared
    /// by all connections, when that is below their minimum rate.
    pub fn with_caps(
        mut self,
        upload: &Cap,
        download: &Cap,
        connections: usize,
        stop: Option<Arc<AtomicBool>>,
    ) -> S3Store {
        let share = |c: &Cap| c.lowest().map(|r| (r / connections.max(1) as u64).max(1));
        self.throttles = Throttles {
            upload: Throttle::new(upload, stop.clone()),
            download: Throttle::new(download, stop),
        };
        self.upload_floor = share(upload);
        self.download_floor = share(download);
        if !upload.is_off() || !download.is_off() {
            crate::event!(
                Info,
                "rate_cap",
                upload = upload.describe(),
                download = download.describe()
            );
        }
        self
    }

    /// The response body of a request, through the download cap.
    fn body_of(&self, resp: Response) -> Box<dyn Read + Send> {
        match &self.throttles.download {
            Some(t) => Box::new(Throttled::new(resp.into_reader(), t.clone())),
            None => Box::new(resp.into_reader()),
        }
    }

    /// Listings end between pages once `stop` is set (the run's SIGINT/SIGTERM flag).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> S3Store {
        self.stop = stop;
        self
    }

    /// RestoreObject (of an object or one version at `url`) for `days` at `tier`; one
    /// already in progress (409 RestoreAlreadyInProgress) will do.
    fn request_restore(&self, op: &str, url: &Url, days: u32, tier: &str) -> StoreResult<()> {
        let body = format!(
            "<RestoreRequest xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Days>{days}</Days>\
             <GlacierJobParameters><Tier>{tier}</Tier></GlacierJobParameters></RestoreRequest>"
        );
        let headers = [("content-type", "application/xml".to_string())];
        match self.send(
            op,
            "POST",
            url,
            &headers,
            Some(Body::Bytes(body.as_bytes())),
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The request URL for `key`, exactly as the key says: every key segment is
    /// percent-encoded, and a key with an empty, `.` or `..` segment is refused, because
    /// URL handling would collapse it and the request would name another object (or
    /// another bucket). The parsed URL's path is compared with what was built, so no
    /// normalisation can pass unnoticed.
    fn url(&self, key: &str, query: &str) -> Result<Url, StoreError> {
        let refuse = |why: &str| {
            StoreError::new(
                ErrorKind::Permanent,
                format!("URL for {key}"),
                format!("refusing the key: {why}"),
            )
        };
        if !key.is_empty()
            && key
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(refuse(
                "it has an empty, . or .. segment, which URL handling would collapse",
            ));
        }
        let path = if key.is_empty() {
            String::new()
        } else {
            format!("/{}", super::sigv4::uri_encode(key, false))
        };
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let s = format!("{}{path}{q}", self.base);
        let url = Url::parse(&s).map_err(|e| refuse(&e.to_string()))?;
        let want = format!("{}{path}", self.base_path);
        let got = url.path();
        if got != want && !(want.is_empty() && got == "/") {
            return Err(refuse(&format!(
                "the URL path would be {got} instead of {want}"
            )));
        }
        Ok(url)
    }

    /// Sends one signed request and returns the response for 2xx, a typed error otherwise.
    /// Its deadlines follow its body's size (`http::Deadlines::request`).
    fn send(
        &self,
        op: &str,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<Body<'_>>,
    ) -> StoreResult<Response> {
        let len = match &body {
            None => 0,
            Some(Body::Bytes(b)) => b.len() as u64,
            Some(Body::File { len, .. }) => *len,
        };
        let deadlines = self.deadlines.capped(self.upload_floor);
        self.send_with(deadlines.request(len), op, method, url, headers, body)
    }

    fn send_with(
        &self,
        limits: Limits,
        op: &str,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<Body<'_>>,
    ) -> StoreResult<Response> {
        let payload_hash = match body {
            None => EMPTY_SHA256.to_string(),
            Some(Body::Bytes(b)) if b.len() <= SIGN_BODY_LIMIT => payload_sha256(b),
            Some(_) => UNSIGNED_PAYLOAD.to_string(),
        };
        let signed = self
            .signer
            .sign(method, url, headers, &payload_hash)
            .map_err(|e| StoreError::new(ErrorKind::Permanent, op, e))?;
        // The names of the headers sent (never their values: some are secrets).
        let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_ref()).collect();
        crate::event!(Debug, "s3_request", op = op, headers = names.join(","));
        let mut req = self.agent.request_url(method, url).limits(limits);
        for (k, v) in &signed {
            req = req.set(k, v);
        }
        let result = match (body, &self.throttles.upload) {
            (Some(b), Some(t)) => req.send(Throttled::new(b.reader(), t.clone()), b.len()),
            (Some(Body::Bytes(b)), None) => req.send_bytes(b),
            (Some(b @ Body::File { len, .. }), None) => req.send(b.reader(), len),
            (None, _) => req.call(),
        };
        match result {
            // With redirects off ureq hands a 3xx back as a success: it is not one.
            Ok(resp) if !(200..300).contains(&resp.status()) => {
                let code = resp.status();
                Err(status_error(
                    method,
                    op,
                    code,
                    resp,
                    &self.signer.describe(),
                ))
            }
            Ok(resp) => Ok(resp),
            Err(http::Error::Status(code, resp)) => {
                let e = status_error(method, op, code, *resp, &self.signer.describe());
                Err(self.renewed(self.skewed(e)))
            }
            Err(http::Error::Transport(t)) if http::is_certificate_error(&t) => {
                Err(StoreError::new(
                    ErrorKind::Permanent,
                    op,
                    format!("{t}: {}", http::certificate_hint(&self.roots)),
                ))
            }
            Err(http::Error::Transport(t)) if t.is_permanent() => {
                Err(StoreError::new(ErrorKind::Permanent, op, t.to_string()))
            }
            Err(http::Error::Transport(t)) if t.is_network() => {
                Err(StoreError::network(op, t.to_string()))
            }
            Err(http::Error::Transport(t)) => {
                Err(StoreError::new(ErrorKind::Transient, op, t.to_string()))
            }
        }
    }
}

impl S3Store {
    /// GET of one listing page, parsed (ListParts, ListMultipartUploads, ListObjectsV2).
    fn get_xml(&self, op: &str, url: &Url) -> StoreResult<xml::Element> {
        let resp = self.send(op, "GET", url, &[], None)?;
        let body = read_body(op, resp)?;
        xml::parse_checked(&body).map_err(|why| {
            StoreError::new(
                ErrorKind::Permanent,
                op,
                format!("refusing the reply: {why}"),
            )
        })
    }

    /// An `ExpiredToken` reply: the service refused our temporary credentials although
    /// they were not due for renewal (a clock ahead, a revoked session). Renewable ones
    /// are fetched anew and the request is worth retrying.
    fn renewed(&self, mut e: StoreError) -> StoreError {
        if !e.expired_credentials {
            return e;
        }
        if self.signer.expired() {
            crate::event!(Warn, "credentials_expired", op = e.op);
            e.kind = ErrorKind::Transient;
            e.message = format!("{} (renewing the credentials, retrying)", e.message);
        }
        e
    }

    /// A `RequestTimeTooSkewed` reply: our clock is off. The signer takes the service's
    /// time from the reply, and the request becomes worth retrying (it is signed anew).
    fn skewed(&self, mut e: StoreError) -> StoreError {
        let Some(server) = e.server_time.take() else {
            return e;
        };
        match self.signer.correct_skew(server.unix()) {
            Some(offset) => {
                crate::event!(
                    Warn,
                    "clock_skew_corrected",
                    op = e.op,
                    offset_seconds = offset
                );
                e.kind = ErrorKind::Transient;
                e.message = format!(
                    "{} (the clock differs from the service's by {offset} s; corrected, retrying)",
                    e.message
                );
            }
            None => {
                e.message = format!(
                    "{} (the service's time is more than a day from ours: fix the system clock)",
                    e.message
                );
            }
        }
        e
    }
}

/// `creds_from` says where the credentials came from, for the hint of an auth error.
fn status_error(method: &str, op: &str, code: u16, resp: Response, creds_from: &str) -> StoreError {
    // HEAD replies have no body: the bucket's region comes from its header.
    let region = resp
        .header("x-amz-bucket-region")
        .filter(|r| {
            !r.is_empty()
                && r.len() <= 64
                && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .map(str::to_string);
    // HEAD replies have no body: then the code is in x-amz-error-code (some servers).
    let header_code = resp.header("x-amz-error-code").map(str::to_string);
    let body = super::read_at_most(resp.into_reader(), MAX_ERROR_REPLY_BYTES)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let doc = xml::parse(&body);
    let s3_code = doc
        .as_ref()
        .and_then(|d| d.text_of("Code"))
        .or(header_code)
        .unwrap_or_default();
    let message = doc
        .as_ref()
        .and_then(|d| d.text_of("Message"))
        .unwrap_or_default();
    let kind = match (code, s3_code.as_str()) {
        // A redirect is never followed (a signed request must not go elsewhere) and never
        // a success: the bucket is in another region, or the endpoint is not S3.
        (300..=399, _) => ErrorKind::Permanent,
        (_, "NoSuchBucket") => ErrorKind::Permanent,
        (404, _) | (_, "NoSuchKey") | (_, "NoSuchUpload") => ErrorKind::NotFound,
        (403, "InvalidObjectState") => ErrorKind::Archived,
        // 501 NotImplemented: the service lacks the operation; asking again cannot help.
        (501, _) | (_, "NotImplemented") => ErrorKind::Permanent,
        (408 | 429, _) | (500..=599, _) => ErrorKind::Transient,
        (400, "RequestTimeout") => ErrorKind::Transient,
        // The body was damaged on the way (its checksum or hash does not match): the
        // retry sends it again from the spool or buffer.
        (400, "BadDigest" | "XAmzContentChecksumMismatch" | "XAmzContentSHA256Mismatch") => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Permanent,
    };
    let hint = match (code, s3_code.as_str(), &region) {
        (_, "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException", Some(r))
        | (300..=399, _, Some(r)) => format!(" (the bucket is in region {r}: set s3.region = \"{r}\")"),
        (300..=399, _, None) => " (a redirect: the bucket is in another region, or s3.endpoint_url is not the S3 endpoint; check s3.region and s3.endpoint_url)".to_string(),
        (_, "NoSuchBucket", _) => " (check s3.bucket and s3.region)".to_string(),
        (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken", _) => {
            format!(" (check the AWS credentials, from {creds_from})")
        }
        (403, "AccessDenied" | "", _) => " (check the credentials and the bucket policy)".to_string(),
        _ => String::new(),
    };
    let text = match (s3_code.is_empty(), message.is_empty()) {
        (true, _) if (300..=399).contains(&code) => format!("redirect{hint}"),
        (true, _) => format!("no error details in the reply{hint}"),
        (false, true) => format!("{s3_code}{hint}"),
        (false, false) => format!("{s3_code}: {message}{hint}"),
    };
    let server_time = (s3_code == "RequestTimeTooSkewed")
        .then(|| doc.as_ref().and_then(|d| d.text_of("ServerTime")))
        .flatten()
        .and_then(|t| crate::ts::Ts::parse(&t).ok());
    StoreError {
        kind,
        op: op.to_string(),
        status: Some(code),
        message: text,
        server_time,
        // A HEAD reply has no body: S3 answers an expired token with a bare 400 then.
        expired_credentials: matches!(
            s3_code.as_str(),
            "ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired"
        ) || (method == "HEAD" && code == 400 && s3_code.is_empty()),
        network: false,
    }
}

/// The reply's ETag: a 2xx reply to PutObject or UploadPart without one did not store
/// what we sent, whatever its status says.
fn etag_of(op: &str, resp: &Response) -> StoreResult<String> {
    match resp.header("etag").map(str::trim) {
        Some(e) if !e.is_empty() => Ok(e.to_string()),
        _ => Err(StoreError {
            kind: ErrorKind::Permanent,
            op: op.to_string(),
            status: Some(resp.status()),
            message: "the reply has no ETag, so the object was not stored (is s3.endpoint_url an S3 service?)".into(),
 server_time: None,
 expired_credentials: false,
 network: false,
}),
    }
}

/// The body of a reply, at most [`MAX_REPLY_BYTES`]: a larger one is refused unread.
fn read_body(op: &str, resp: Response) -> StoreResult<String> {
    match super::read_at_most(resp.into_reader(), MAX_REPLY_BYTES) {
        Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(None) => Err(StoreError::new(
            ErrorKind::TooLarge,
            op,
            format!(
                "the reply is larger than {} ({MAX_REPLY_BYTES} bytes), which no S3 reply to \
                 this request is (is s3.endpoint_url an S3 service?)",
                super::human_bytes(MAX_REPLY_BYTES)
            ),
        )),
        Err(e) if super::is_network_io(e.kind()) => {
            Err(StoreError::network(op, format!("reading reply: {e}")))
        }
        Err(e) => Err(StoreError::new(
            ErrorKind::Transient,
            op,
            format!("reading reply: {e}"),
        )),
    }
}

/// The headers of a new object: content type, storage class, and SSE unless `none`
/// (servers such as Ceph RGW refuse SSE headers over plain HTTP), with the KMS key id
/// when one is configured.
fn object_headers(opts: &PutOptions) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("content-type", opts.content_type.to_string()),
        ("x-amz-storage-class", opts.storage_class.clone()),
    ];
    if let Some(sse) = opts.sse.header_value() {
        h.push(("x-amz-server-side-encryption", sse.to_string()));
        if let Some(k) = &opts.kms_key_id {
            h.push(("x-amz-server-side-encryption-aws-kms-key-id", k.clone()));
        }
    }
    if let Some(l) = &opts.lock {
        h.push(("x-amz-object-lock-mode", l.mode.clone()));
        h.push(("x-amz-object-lock-retain-until-date", l.until.iso()));
    }
    h
}

fn encode_query(v: &str) -> String {
    super::sigv4::uri_encode(v, true)
}

impl S3Store {
    /// HeadObject (of the version `query` names, if any): the object's metadata.
    fn head_query(&self, op: &str, key: &str, query: &str) -> StoreResult<Option<ObjectMeta>> {
        let url = self.url(key, query)?;
        let resp = match self.send(op, "HEAD", &url, &[], None) {
            Ok(r) => r,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let h = |n: &str| resp.header(n).map(str::to_string);
        let lock = match (
            h("x-amz-object-lock-mode"),
            h("x-amz-object-lock-retain-until-date"),
        ) {
            (Some(mode), Some(until)) => Some(Retention {
                mode,
                until: crate::ts::Ts::parse(until.trim()).map_err(|_| {
                    StoreError::new(
                        ErrorKind::Permanent,
                        op,
                        format!("x-amz-object-lock-retain-until-date {until:?} is not a date"),
                    )
                })?,
            }),
            _ => None,
        };
        Ok(Some(ObjectMeta {
            size: h("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            etag: h("etag"),
            storage_class: h("x-amz-storage-class"),
            sse: h("x-amz-server-side-encryption"),
            restore: h("x-amz-restore"),
            version_id: h("x-amz-version-id"),
            lock,
        }))
    }
}

/// `versionId=V` for a query string.
fn version_query(version: &str) -> String {
    format!("versionId={}", encode_query(version))
}

impl ObjectStore for S3Store {
    fn put_object(&self, key: &str, body: Body<'_>, opts: &PutOptions) -> StoreResult<String> {
        let op = format!("PUT {key}");
        let url = self.url(key, "")?;
        let mut headers = object_headers(opts);
        if let Some(h) = self.checksum.header_for(&op, &body)? {
            headers.push(h);
        }
        // A locked upload must say which checksum it carries (S3 and moto refuse it with
        // MissingUploadObjectWithObjectLockHeaders otherwise); config refuses `none`.
        if let (Some(_), Some(a)) = (&opts.lock, self.checksum.algorithm()) {
            headers.push(("x-amz-sdk-checksum-algorithm", a.to_string()));
        }
        let resp = self.send(&op, "PUT", &url, &headers, Some(body))?;
        etag_of(&op, &resp)
    }

    fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let op = format!("CreateMultipartUpload {key}");
        let url = self.url(key, "uploads")?;
        let mut headers = object_headers(opts);
        if let Some(a) = self.checksum.algorithm() {
            headers.push(("x-amz-checksum-algorithm", a.to_string()));
        }
        let resp = self.send(&op, "POST", &url, &headers, None)?;
        let body = read_body(&op, resp)?;
        xml::parse(&body)
            .and_then(|d| d.text_of("UploadId"))
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                StoreError::new(
                    ErrorKind::Permanent,
                    op,
                    "the reply has no UploadId (is s3.endpoint_url an S3 service?)",
                )
            })
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body<'_>,
    ) -> StoreResult<String> {
        let op = format!("UploadPart {key} part {part_number}");
        let url = self.url(
            key,
            &format!(
                "partNumber={part_number}&uploadId={}",
                encode_query(upload_id)
            ),
        )?;
        let sum = self.checksum.header_for(&op, &body)?;
        let resp = self.send(&op, "PUT", &url, sum.as_slice(), Some(body))?;
        let etag = etag_of(&op, &resp)?;
        if let Some((_, v)) = sum {
            self.part_sums.record(upload_id, part_number, v);
        }
        Ok(etag)
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> StoreResult<String> {
        let op = format!("CompleteMultipartUpload {key}");
        let url = self.url(key, &format!("uploadId={}", encode_query(upload_id)))?;
        // Each part's checksum, as the upload declared its algorithm: ours for the parts
        // this process sent, the service's (ListParts) for those of an earlier run. A
        // service that lists none ignores checksums: then none is sent.
        let sums = match self.checksum.list_element() {
            None => None,
            Some(_) => self
                .part_sums
                .for_completion(upload_id, parts, || self.list_parts(key, upload_id))?,
        };
        let element = self.checksum.list_element().unwrap_or_default();
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, (n, etag)) in parts.iter().enumerate() {
            let sum = match &sums {
                Some(s) => format!("<{element}>{}</{element}>", xml::escape(&s[i])),
                None => String::new(),
            };
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag>{sum}</Part>",
                xml::escape(etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let headers = [("content-type", "application/xml".to_string())];
        let resp = self.send_with(
            self.deadlines.assembly(body.len() as u64),
            &op,
            "POST",
            &url,
            &headers,
            Some(Body::Bytes(body.as_bytes())),
        )?;
        let reply = read_body(&op, resp)?;
        self.part_sums.forget(upload_id);
        // S3 may answer 200 and still fail: the error is then in the body.
        let doc = xml::parse(&reply);
        if let Some(err) = doc.as_ref().filter(|d| d.name == "Error") {
            let code = err.text_of("Code").unwrap_or_else(|| "unknown".into());
            return Err(StoreError {
                kind: ErrorKind::Transient,
                op,
                status: Some(200),
                message: format!("error in reply: {code}"),
                server_time: None,
                expired_credentials: false,
                network: false,
            });
        }
        let no_etag = || {
            StoreError::new(
                ErrorKind::Permanent,
                op.clone(),
                "the reply has no ETag, so the object was not assembled",
            )
        };
        let Some(doc) = doc else {
            return Err(no_etag());
        };
        if let Some(etag) = doc.text_of("ETag").filter(|e| !e.is_empty()) {
            return Ok(etag);
        }
        // Ceph RGW 16 answers a real CompleteMultipartUploadResult with an empty ETag.
        // Only that reply is believed, and only when a HEAD then shows the object with a
        // multipart ETag of as many parts as we listed.
        if doc.name != "CompleteMultipartUploadResult" {
            return Err(no_etag());
        }
        let suffix = format!("-{}", parts.len());
        match self.head(key)? {
            Some(m) => match m.etag {
                Some(e) if e.trim_matches('"').ends_with(&suffix) => {
                    crate::event!(Debug, "complete_etag_from_head", key = key, etag = e);
                    Ok(e)
                }
                _ => Err(no_etag()),
            },
            None => Err(no_etag()),
        }
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let op = format!("AbortMultipartUpload {key}");
        let url = self.url(key, &format!("uploadId={}", encode_query(upload_id)))?;
        self.part_sums.forget(upload_id);
        match self.send(&op, "DELETE", &url, &[], None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list_parts(&self, key: &str, upload_id: &str) -> StoreResult<Vec<ListedPart>> {
        let op = format!("ListParts {key}");
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        // S3 keeps at most 10,000 parts of an upload.
        let limits = listing::Limits {
            items: self.list_limits.items.min(10_000),
            ..self.list_limits
        };
        let mut pages = Pages::new(&op, limits, &self.stop);
        loop {
            pages.next_page()?;
            let mut q = format!("uploadId={}", encode_query(upload_id));
            if let Some(m) = &marker {
                q.push_str(&format!("&part-number-marker={}", encode_query(m)));
            }
            let url = self.url(key, &q)?;
            let doc = self.get_xml(&op, &url)?;
            for b in doc.all("Part") {
                let number = b.text_of("PartNumber").and_then(|v| v.parse().ok());
                let size = b.text_of("Size").and_then(|v| v.parse().ok());
                let etag = b.text_of("ETag");
                let checksum = self
                    .checksum
                    .list_element()
                    .and_then(|el| b.text_of(el))
                    .filter(|v| !v.is_empty());
                match (number, size, etag) {
                    (Some(number), Some(size), Some(etag)) => out.push(ListedPart {
                        number,
                        size,
                        etag,
                        checksum,
                    }),
                    _ => {
                        return Err(StoreError::new(
                            ErrorKind::Permanent,
                            &op,
                            "a Part in the reply lacks PartNumber, Size or ETag",
                        ))
                    }
                }
            }
            pages.check_items(out.len(), "parts")?;
            let truncated = doc.text_of("IsTruncated").as_deref() == Some("true");
            let next = doc.text_of("NextPartNumberMarker");
            match (truncated, next) {
                (true, Some(n)) => {
                    pages.follow(&[&n])?;
                    marker = Some(n)
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<OpenUpload>> {
        let op = format!("ListMultipartUploads {prefix}");
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        let mut pages = Pages::new(&op, self.list_limits, &self.stop);
        loop {
            pages.next_page()?;
            let mut q = format!("prefix={}&uploads", encode_query(prefix));
            if let Some((k, u)) = &markers {
                q.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode_query(k),
                    encode_query(u)
                ));
            }
            let url = self.url("", &q)?;
            let doc = self.get_xml(&op, &url)?;
            for b in doc.all("Upload") {
                if let (Some(key), Some(upload_id)) = (b.text_of("Key"), b.text_of("UploadId")) {
                    out.push(OpenUpload { key, upload_id });
                }
            }
            pages.check_items(out.len(), "uploads")?;
            let truncated = doc.text_of("IsTruncated").as_deref() == Some("true");
            let next = (
                doc.text_of("NextKeyMarker"),
                doc.text_of("NextUploadIdMarker"),
            );
            match (truncated, next) {
                (true, (Some(k), Some(u))) => {
                    pages.follow(&[&k, &u])?;
                    markers = Some((k, u))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ListedObject>> {
        let op = format!("ListObjectsV2 {prefix}");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::new(&op, self.list_limits, &self.stop);
        loop {
            pages.next_page()?;
            let mut q = String::new();
            if let Some(t) = &token {
                q.push_str(&format!("continuation-token={}&", encode_query(t)));
            }
            q.push_str(&format!("list-type=2&prefix={}", encode_query(prefix)));
            let url = self.url("", &q)?;
            let doc = self.get_xml(&op, &url)?;
            for c in doc.all("Contents") {
                let (Some(key), Some(size)) = (
                    c.text_of("Key"),
                    c.text_of("Size").and_then(|v| v.parse().ok()),
                ) else {
                    return Err(StoreError::new(
                        ErrorKind::Permanent,
                        &op,
                        "an object in the listing lacks Key or Size",
                    ));
                };
                // A server that ignores the prefix must not hand us other keys.
                if !key.starts_with(prefix) {
                    return Err(StoreError::new(
                        ErrorKind::Permanent,
                        &op,
                        format!(
                            "the listing names {key:?}, which is not under the prefix asked for"
                        ),
                    ));
                }
                out.push(ListedObject {
                    key,
                    size,
                    last_modified: c
                        .text_of("LastModified")
                        .and_then(|t| crate::ts::Ts::parse(t.trim()).ok()),
                    storage_class: c.text_of("StorageClass"),
                });
            }
            pages.check_items(out.len(), "objects")?;
            let truncated = doc.text_of("IsTruncated").map(|t| t.trim() == "true");
            let next = doc.text_of("NextContinuationToken");
            match (truncated, next) {
                (Some(true), Some(n)) => {
                    pages.follow(&[&n])?;
                    token = Some(n)
                }
                (Some(true), None) => {
                    return Err(StoreError::new(
                        ErrorKind::Permanent,
                        &op,
                        "the listing is truncated but gives no new NextContinuationToken",
                    ))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn delete_object(&self, key: &str) -> StoreResult<()> {
        let op = format!("DELETE {key}");
        let url = self.url(key, "")?;
        match self.send(&op, "DELETE", &url, &[], None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.head_query(&format!("HEAD {key}"), key, "")
    }

    fn head_bucket(&self) -> StoreResult<()> {
        let op = "HeadBucket".to_string();
        let url = self.url("", "")?;
        match self.send(&op, "HEAD", &url, &[], None) {
            Ok(_) => Ok(()),
            Err(mut e) if e.kind == ErrorKind::NotFound => {
                e.kind = ErrorKind::Permanent;
                e.message = "the bucket does not exist, or s3.endpoint_url is not an S3 service (check s3.bucket and s3.endpoint_url)".into();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// A HEAD of the bucket with the short deadlines of a probe (`Deadlines::probe`).
    fn probe(&self) -> StoreResult<()> {
        let url = self.url("", "")?;
        match self.send_with(
            self.deadlines.probe(),
            "HeadBucket (outage probe)",
            "HEAD",
            &url,
            &[],
            None,
        ) {
            Err(e) if e.is_network() => Err(e),
            _ => Ok(()),
        }
    }

    fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<Box<dyn Read + Send>> {
        let op = match range {
            None => format!("GET {key}"),
            Some((off, len)) => format!("GET {key} bytes {off}+{len}"),
        };
        let url = self.url(key, "")?;
        let headers: Vec<(&str, String)> = match range {
            Some((off, len)) if len > 0 => {
                vec![("range", format!("bytes={off}-{}", off + len - 1))]
            }
            _ => vec![],
        };
        // The body is read by the caller: its own deadline follows its length.
        let deadlines = self.deadlines.capped(self.download_floor);
        let resp = self.send_with(deadlines.streamed(), &op, "GET", &url, &headers, None)?;
        Ok(self.body_of(resp))
    }

    fn throttles(&self) -> Throttles {
        self.throttles.clone()
    }

    fn restore_object(&self, key: &str, days: u32, tier: &str) -> StoreResult<()> {
        let url = self.url(key, "restore")?;
        self.request_restore(&format!("RestoreObject {key}"), &url, days, tier)
    }

    fn object_lock_enabled(&self) -> StoreResult<bool> {
        let op = "GetObjectLockConfiguration".to_string();
        let url = self.url("", "object-lock")?;
        match self.get_xml(&op, &url) {
            Ok(doc) => Ok(doc.text_of("ObjectLockEnabled").as_deref() == Some("Enabled")),
            Err(e)
                if e.kind == ErrorKind::NotFound
                    || e.message
                        .starts_with("ObjectLockConfigurationNotFoundError") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn put_retention(&self, key: &str, version: Option<&str>, r: &Retention) -> StoreResult<()> {
        let op = format!("PutObjectRetention {key}");
        let mut q = "retention".to_string();
        if let Some(v) = version {
            q.push_str(&format!("&{}", version_query(v)));
        }
        let url = self.url(key, &q)?;
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            xml::escape(&r.mode),
            r.until.iso()
        );
        let body = Body::Bytes(body.as_bytes());
        // S3 wants a checksum of this body (Content-MD5 or a flexible checksum).
        let mut headers = vec![("content-type", "application/xml".to_string())];
        if let Some(h) = self.checksum.header_for(&op, &body)? {
            headers.push(h);
        }
        if let Some(a) = self.checksum.algorithm() {
            headers.push(("x-amz-sdk-checksum-algorithm", a.to_string()));
        }
        self.send(&op, "PUT", &url, &headers, Some(body)).map(drop)
    }

    fn list_versions(&self, prefix: &str) -> StoreResult<Vec<ListedVersion>> {
        let op = format!("ListObjectVersions {prefix}");
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        let mut pages = Pages::new(&op, self.list_limits, &self.stop);
        loop {
            pages.next_page()?;
            let mut q = String::new();
            if let Some((k, v)) = &markers {
                q.push_str(&format!(
                    "key-marker={}&version-id-marker={}&",
                    encode_query(k),
                    encode_query(v)
                ));
            }
            q.push_str(&format!("prefix={}&versions", encode_query(prefix)));
            let url = self.url("", &q)?;
            let doc = self.get_xml(&op, &url)?;
            for c in doc
                .children
                .iter()
                .filter(|c| c.name == "Version" || c.name == "DeleteMarker")
            {
                let delete_marker = c.name == "DeleteMarker";
                let (Some(key), Some(version_id)) = (c.text_of("Key"), c.text_of("VersionId"))
                else {
                    return Err(StoreError::new(
                        ErrorKind::Permanent,
                        op,
                        "a version in the listing lacks Key or VersionId",
                    ));
                };
                if !key.starts_with(prefix) {
                    return Err(StoreError::new(
                        ErrorKind::Permanent,
                        op,
                        format!(
                            "the listing names {key:?}, which is not under the prefix asked for"
                        ),
                    ));
                }
                let size = c.text_of("Size").and_then(|v| v.parse().ok());
                if size.is_none() && !delete_marker {
                    return Err(StoreError::new(
                        ErrorKind::Permanent,
                        op,
                        format!("version {version_id:?} of {key:?} in the listing lacks Size"),
                    ));
                }
                out.push(ListedVersion {
                    key,
                    version_id,
                    is_latest: c.text_of("IsLatest").as_deref() == Some("true"),
                    delete_marker,
                    size: size.unwrap_or(0),
                    last_modified: c
                        .text_of("LastModified")
                        .and_then(|t| crate::ts::Ts::parse(t.trim()).ok()),
                });
            }
            pages.check_items(out.len(), "versions")?;
            let truncated = doc.text_of("IsTruncated").as_deref() == Some("true");
            let next = (
                doc.text_of("NextKeyMarker"),
                doc.text_of("NextVersionIdMarker"),
            );
            match (truncated, next) {
                (false, _) => break,
                (true, (Some(k), Some(v))) => {
                    pages.follow(&[&k, &v])?;
                    markers = Some((k, v))
                }
                (true, _) => return Err(StoreError::new(
                    ErrorKind::Permanent,
                    op,
                    "the listing is truncated but gives no new NextKeyMarker/NextVersionIdMarker",
                )),
            }
        }
        Ok(out)
    }

    fn head_version(&self, key: &str, version: &str) -> StoreResult<Option<ObjectMeta>> {
        self.head_query(
            &format!("HEAD {key} version {version}"),
            key,
            &version_query(version),
        )
    }

    fn get_version(
        &self,
        key: &str,
        version: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<Box<dyn Read + Send>> {
        let op = match range {
            None => format!("GET {key} version {version}"),
            Some((off, len)) => format!("GET {key} version {version} bytes {off}+{len}"),
        };
        let url = self.url(key, &version_query(version))?;
        let headers: Vec<(&str, String)> = match range {
            Some((off, len)) if len > 0 => {
                vec![("range", format!("bytes={off}-{}", off + len - 1))]
            }
            _ => vec![],
        };
        // A chunk's version is read as a stream too: its deadline follows its length.
        let deadlines = self.deadlines.capped(self.download_floor);
        let resp = self.send_with(deadlines.streamed(), &op, "GET", &url, &headers, None)?;
        Ok(self.body_of(resp))
    }

    fn restore_version(&self, key: &str, version: &str, days: u32, tier: &str) -> StoreResult<()> {
        let url = self.url(key, &format!("restore&{}", version_query(version)))?;
        self.request_restore(
            &format!("RestoreObject {key} version {version}"),
            &url,
            days,
            tier,
        )
    }

    fn delete_version(&self, key: &str, version: &str) -> StoreResult<()> {
        let op = format!("DELETE {key} version {version}");
        let url = self.url(key, &version_query(version))?;
        match self.send(&op, "DELETE", &url, &[], None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[path = "s3_limits_tests.rs"]
mod limits_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing() {
        let mut ep = Endpoint {
            bucket: "b".into(),
            region: "eu-west-1".into(),
            ..Default::default()
        };
        assert_eq!(ep.base(), "https://b.s3.eu-west-1.amazonaws.com");
        ep.bucket = "b.with.dots".into();
        assert_eq!(ep.base(), "https://s3.eu-west-1.amazonaws.com/b.with.dots");
        ep.endpoint_url = Some("http://127.0.0.1:9000/".into());
        assert_eq!(ep.base(), "http://127.0.0.1:9000/b.with.dots");
    }

    fn store(endpoint: Option<&str>) -> S3Store {
        let ep = Endpoint {
            bucket: "bkt".into(),
            region: "eu-west-1".into(),
            endpoint_url: endpoint.map(str::to_string),
            ..Default::default()
        };
        S3Store::with_keys(&ep, 2, "AKIDEXAMPLE", "secret").unwrap()
    }

    #[test]
    fn sse_headers() {
        let mut o = PutOptions {
            storage_class: "STANDARD".into(),
            sse: config::Sse::Aes256,
            content_type: "x",
            kms_key_id: None,
            lock: None,
        };
        let names = |o: &PutOptions| -> Vec<&'static str> {
            object_headers(o).iter().map(|(k, _)| *k).collect()
        };
        assert!(names(&o).contains(&"x-amz-server-side-encryption"));
        o.sse = config::Sse::None;
        assert!(!names(&o).iter().any(|k| k.starts_with("x-amz-server-side")));
        o.sse = config::Sse::AwsKms;
        o.kms_key_id = Some("arn:aws:kms:eu-west-1:111122223333:key/abcd".into());
        let h = object_headers(&o);
        assert!(h.contains(&("x-amz-server-side-encryption", "aws:kms".into())));
        assert!(h.contains(&(
            "x-amz-server-side-encryption-aws-kms-key-id",
            "arn:aws:kms:eu-west-1:111122223333:key/abcd".into()
        )));
    }

    #[test]
    fn urls_are_never_normalised() {
        for s in [store(Some("http://127.0.0.1:9000")), store(None)] {
            let u = s.url("p/subvol/data/full/chunk-1.bin", "").unwrap();
            assert!(u.path().ends_with("p/subvol/data/full/chunk-1.bin"), "{u}");
            // Characters that mean something in a URL stay in the key.
            let u = s.url("p/a b%2e?#x", "").unwrap();
            assert!(u.path().ends_with("/p/a%20b%252e%3F%23x"), "{u}");
            for bad in [
                "../other/p/subvol/x/current.json",
                "p/../../other",
                "p/./x",
                "p//x",
                "/p/x",
                "p/..",
            ] {
                let e = s.url(bad, "").unwrap_err();
                assert_eq!(e.kind, ErrorKind::Permanent, "{bad}");
                assert!(e.to_string().contains("refusing the key"), "{bad}: {e}");
            }
            // The bucket-level URL (listings) is fine.
            assert!(s.url("", "uploads").is_ok());
        }
    }

    #[test]
    fn an_empty_complete_etag_is_believed_only_with_a_multipart_head() {
        use crate::testing::{serve, Reply};
        let complete = |etag: &str| {
            format!(
                "<?xml version=\"1.0\"?><CompleteMultipartUploadResult><Key>k</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>"
            )
        };
        // (the Complete reply, the HEAD's ETag, what complete_multipart returns)
        let cases: Vec<(String, Option<&str>, Result<&str, &str>)> = vec![
            (complete("\"abc-2\""), None, Ok("\"abc-2\"")),
            // Ceph RGW 16: an empty ETag, and the object is there with 2 parts.
            (complete(""), Some("\"d41d-2\""), Ok("\"d41d-2\"")),
            (complete(""), Some("\"d41d\""), Err("no ETag")),
            (complete(""), None, Err("no ETag")),
            // Not an S3 reply (a captive portal): no HEAD is even asked.
            (
                "<html>ok</html>".to_string(),
                Some("\"d41d-2\""),
                Err("no ETag"),
            ),
        ];
        for (reply, head, want) in cases {
            let reply_is_html = reply.contains("<html>");
            let head = head.map(str::to_string);
            let stub = serve(move |r| match r.method.as_str() {
                "POST" => Reply::from((200, reply.clone())),
                _ => match &head {
                    Some(e) => Reply {
                        status: 200,
                        headers: vec![
                            ("ETag".into(), e.clone()),
                            ("Content-Length".into(), "10485760".into()),
                        ],
                        body: String::new(),
                    },
                    None => Reply::from((404, String::new())),
                },
            });
            let ep = Endpoint {
                bucket: "bkt".into(),
                region: "eu-west-1".into(),
                endpoint_url: Some(stub.url.clone()),
                checksum: Checksum::None,
            };
            let s = S3Store::with_keys(&ep, 2, "AKIDEXAMPLE", "secret").unwrap();
            let parts = vec![(1, "\"p1\"".to_string()), (2, "\"p2\"".to_string())];
            let got = s.complete_multipart("p/k", "up1", &parts);
            let html = reply_is_html;
            match want {
                Ok(e) => assert_eq!(got.unwrap(), e),
                Err(w) => assert!(got.unwrap_err().to_string().contains(w)),
            }
            let seen = stub.seen.lock().unwrap().clone();
            if html {
                assert!(seen.iter().all(|r| r.method != "HEAD"), "{seen:?}");
            }
        }
    }

    #[test]
    fn http_proxy_tunnels_plain_http_requests_and_no_proxy_skips_it() {
        use std::io::{BufReader, Write};
        struct E(Vec<(&'static str, String)>);
        impl crate::config::Env for E {
            fn var(&self, n: &str) -> Option<String> {
                self.0.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
            }
        }
        // A CONNECT proxy that plays the endpoint itself inside the tunnel: it records the
        // CONNECT line and the tunneled request.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_url = format!("http://{}", l.local_addr().unwrap());
        let record = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = record.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut r = BufReader::new(c.try_clone().unwrap());
                let Some((connect, ..)) = crate::testing::read_request(&mut r) else {
                    continue;
                };
                let _ = c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let Some((line, headers, ..)) = crate::testing::read_request(&mut r) else {
                    continue;
                };
                s2.lock().unwrap().push((connect, line, headers));
                let _ =
                    c.write_all(b"HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let ep = Endpoint {
            bucket: "bkt".into(),
            region: "eu-west-1".into(),
            // Nothing listens there: only the proxy can answer.
            endpoint_url: Some("http://127.0.0.1:9".into()),
            checksum: Checksum::Crc32c,
        };
        let opts = PutOptions {
            storage_class: "STANDARD".into(),
            sse: config::Sse::None,
            content_type: "x",
            kms_key_id: None,
            lock: None,
        };
        let via = |env: E| {
            let t = Transport::from_env(&env).unwrap();
            let s = S3Store::with_provider(
                &ep,
                2,
                Provider::fixed("AKIDEXAMPLE", "secret", None).unwrap(),
                &t,
            )
            .unwrap();
            s.put_object("p/k", Body::Bytes(b"hello"), &opts)
        };
        assert_eq!(
            via(E(vec![("HTTP_PROXY", proxy_url.clone())])).unwrap(),
            "\"e1\""
        );
        let seen = record.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        // The proxy is asked for a tunnel to the endpoint; the signed Host stays the
        // endpoint's.
        assert_eq!(seen[0].0, "CONNECT 127.0.0.1:9 HTTP/1.1");
        assert_eq!(seen[0].1, "PUT /bkt/p/k HTTP/1.1");
        assert_eq!(seen[0].2["host"], "127.0.0.1:9");
        // CRC-32C of "hello" is 0x9A71BB4C.
        assert_eq!(seen[0].2["x-amz-checksum-crc32c"], "mnG7TA==");
        // NO_PROXY names the host: it goes direct, and fails (nothing listens).
        let e = via(E(vec![
            ("HTTP_PROXY", proxy_url.clone()),
            ("NO_PROXY", "127.0.0.1".into()),
        ]))
        .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert_eq!(record.lock().unwrap().len(), 1);
    }

    #[test]
    fn object_lock_requests() {
        use crate::testing::{serve, Reply};
        let stub = serve(|r| {
            match (r.method.as_str(), r.path.as_str()) {
            ("GET", p) if p.ends_with("?object-lock") => Reply::from((
                200,
                "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>".to_string(),
            )),
            ("HEAD", _) => Reply {
                status: 200,
                headers: vec![
                    ("Content-Length".into(), "5".into()),
                    ("x-amz-version-id".into(), "v1".into()),
                    ("x-amz-object-lock-mode".into(), "COMPLIANCE".into()),
                    (
                        "x-amz-object-lock-retain-until-date".into(),
                        "2030-01-01T00:00:00.000Z".into(),
                    ),
                ],
                body: String::new(),
            },
            _ => Reply {
                status: 200,
                headers: vec![("ETag".into(), "\"e1\"".into())],
                body: String::new(),
            },
        }
        });
        let s = store(Some(&stub.url));
        assert!(s.object_lock_enabled().unwrap());
        let until = crate::ts::Ts::parse("2030-01-01T00:00:00Z").unwrap();
        let lock = Retention {
            mode: "GOVERNANCE".into(),
            until,
        };
        let opts = PutOptions {
            storage_class: "STANDARD".into(),
            sse: config::Sse::None,
            content_type: "x",
            kms_key_id: None,
            lock: Some(lock.clone()),
        };
        s.put_object("p/k", Body::Bytes(b"hello"), &opts).unwrap();
        let h = s.head("p/k").unwrap().unwrap();
        assert_eq!(h.version_id.as_deref(), Some("v1"));
        assert_eq!(
            h.lock,
            Some(Retention {
                mode: "COMPLIANCE".into(),
                until
            })
        );
        s.put_retention("p/k", Some("v 1"), &lock).unwrap();
        s.delete_version("p/k", "v1").unwrap();
        let seen = stub.seen.lock().unwrap().clone();
        let put = &seen[1];
        assert_eq!(put.headers["x-amz-object-lock-mode"], "GOVERNANCE");
        assert_eq!(
            put.headers["x-amz-object-lock-retain-until-date"],
            "2030-01-01T00:00:00Z"
        );
        // A locked upload says which checksum it carries.
        assert_eq!(put.headers["x-amz-sdk-checksum-algorithm"], "CRC32C");
        assert!(put.headers.contains_key("x-amz-checksum-crc32c"));
        let ret = &seen[3];
        assert_eq!(
            (ret.method.as_str(), ret.path.as_str()),
            ("PUT", "/bkt/p/k?retention&versionId=v%201")
        );
        assert!(
            ret.body.contains(
                "<Mode>GOVERNANCE</Mode><RetainUntilDate>2030-01-01T00:00:00Z</RetainUntilDate>"
            ),
            "{}",
            ret.body
        );
        assert!(ret.headers.contains_key("x-amz-checksum-crc32c"));
        assert_eq!(
            (seen[4].method.as_str(), seen[4].path.as_str()),
            ("DELETE", "/bkt/p/k?versionId=v1")
        );
        // Without a lock nothing of it is sent.
        let plain = PutOptions { lock: None, ..opts };
        s.put_object("p/k", Body::Bytes(b"hello"), &plain).unwrap();
        let seen = stub.seen.lock().unwrap().clone();
        let last = seen.last().unwrap();
        assert!(!last
            .headers
            .keys()
            .any(|k| k.starts_with("x-amz-object-lock") || k == "x-amz-sdk-checksum-algorithm"));
    }

    #[test]
    fn listing_versions_keeps_delete_markers_and_pages() {
        use crate::testing::{serve, Reply};
        let stub = serve(|r| {
            let page = if r.path.contains("key-marker=") {
                "<ListVersionsResult><IsTruncated>false</IsTruncated>\
                 <Version><Key>p/a</Key><VersionId>v0</VersionId><IsLatest>false</IsLatest><Size>3</Size>\
                 <LastModified>2026-01-01T00:00:00.000Z</LastModified></Version></ListVersionsResult>"
            } else {
                "<ListVersionsResult><IsTruncated>true</IsTruncated><NextKeyMarker>p/a</NextKeyMarker>\
                 <NextVersionIdMarker>v1</NextVersionIdMarker>\
                 <DeleteMarker><Key>p/a</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest></DeleteMarker>\
                 <Version><Key>p/a</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><Size>4</Size></Version>\
                 </ListVersionsResult>"
            };
            Reply::from((200, page.to_string()))
        });
        let s = store(Some(&stub.url));
        let v = s.list_versions("p/").unwrap();
        let got: Vec<(&str, bool, bool, u64)> = v
            .iter()
            .map(|v| (v.version_id.as_str(), v.delete_marker, v.is_latest, v.size))
            .collect();
        assert_eq!(
            got,
            vec![
                ("v2", true, true, 0),
                ("v1", false, false, 4),
                ("v0", false, false, 3)
            ]
        );
        assert!(v[2].last_modified.is_some());
        let seen = stub.seen.lock().unwrap().clone();
        assert!(
            seen[1]
                .path
                .contains("key-marker=p%2Fa&version-id-marker=v1&"),
            "{}",
            seen[1].path
        );
    }
}
