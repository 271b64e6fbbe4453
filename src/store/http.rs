//! The HTTP client every request of this tool goes through (S3, STS, credential
//! endpoints), over ureq 3 and the sockets of `connect.rs`: one TLS stack (rustls with
//! ring) trusting the system store plus `AWS_CA_BUNDLE`, the proxy chosen from
//! `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` for the host the agent talks to, no redirects,
//! and bounded waits on every request, on fresh and pooled connections alike ([`Limits`],
//! whose policy for S3 is [`Deadlines`]). The small [`Agent`]/[`Request`]/[`Response`]
//! facade keeps the rest of the crate off the client's API. It also says which transport
//! failures are permanent (a certificate the trust store rejects is, and its message names
//! `AWS_CA_BUNDLE`).

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{ConnectProxyConnector, Connector};

use super::connect::{Lookup, Stopper, Tcp, TcpOpts, Tls};
use crate::config::Env;

/// How an agent is built.
pub struct AgentOpts {
    pub connect: Duration,
    /// A read or write that moves no byte for this long fails.
    pub stall: Duration,
    /// Read timeout, when it differs from `stall`.
    pub read: Option<Duration>,
    pub connections: usize,
}

impl AgentOpts {
    /// The limits of a request that sets none: the stall timeouts, the response within
    /// the read timeout, the whole request within the connect time plus two read times.
    fn limits(&self) -> Limits {
        let read = self.read.unwrap_or(self.stall);
        Limits {
            read,
            write: self.stall,
            response: read,
            total: Some(self.connect + read * 2),
            body: None,
        }
    }
}

/// How long one request may take. Each bound holds on every use of a connection, fresh or
/// pooled, and a request that exceeds one fails with a transient error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A socket read that brings no byte for this long fails.
    pub read: Duration,
    /// A socket write that moves no byte for this long fails.
    pub write: Duration,
    /// From the end of the request to the end of the response headers.
    pub response: Duration,
    /// The whole request, its response body included; None for a response body the caller
    /// reads as a stream (then `body` bounds the reading).
    pub total: Option<Duration>,
    /// For a streamed response body: a floor plus its length at a minimum rate
    /// (bytes/s), counted from its headers.
    pub body: Option<(Duration, u64)>,
}

/// The longest an outage probe waits for its reply, its connection apart.
pub const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// The test suite's knob for [`Deadlines`] (see [`Deadlines::from_env`]).
pub const DEADLINE_KNOB: &str = "BTRFS_TO_S3_TEST_DEADLINE_MS";

/// The deadlines of S3 requests (README, "Timeouts"). Every request: a connection within
/// `connect` (name lookup and TLS included); a socket read or write that moves no byte
/// for `stall` fails (keepalive and `TCP_USER_TIMEOUT` end a silent connection in about as
/// long); the response headers within `floor` of the request's end; the whole request
/// within `floor` plus its body at `min_rate` (a 16 MiB part: 17 minutes). A response body
/// the caller streams (a chunk download) gets `floor` plus its length at `min_rate`. The
/// service may stay silent while it assembles an object (CompleteMultipartUpload): that
/// request's reads and response may take up to `assembly`, the whole of it `assembly` more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub connect: Duration,
    pub stall: Duration,
    pub floor: Duration,
    /// Bytes per second.
    pub min_rate: u64,
    pub assembly: Duration,
}

impl Deadlines {
    pub const DEFAULT: Deadlines = Deadlines {
        connect: Duration::from_secs(10),
        stall: Duration::from_secs(30),
        floor: Duration::from_secs(60),
        min_rate: 16 * 1024,
        assembly: Duration::from_secs(3600),
    };

    /// The default, except that the test suite may shorten every duration to N ms with
    /// `BTRFS_TO_S3_TEST_DEADLINE_MS=N` (100 to 60000) so that it need not wait minutes;
    /// it never lengthens one, and the minimum rate never changes.
    pub fn from_env(env: &dyn Env) -> Deadlines {
        let d = Deadlines::DEFAULT;
        let Some(ms) = env
            .var(DEADLINE_KNOB)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| (100..=60_000).contains(ms))
        else {
            return d;
        };
        let n = Duration::from_millis(ms);
        Deadlines {
            connect: d.connect.min(n),
            stall: d.stall.min(n),
            floor: d.floor.min(n),
            min_rate: d.min_rate,
            assembly: d.assembly.min(n),
        }
    }

    /// `floor` plus `bytes` at `min_rate`.
    pub fn for_bytes(&self, bytes: u64) -> Duration {
        self.floor + Duration::from_secs_f64(bytes as f64 / self.min_rate.max(1) as f64)
    }

    /// A request with a body of `body` bytes whose reply is read in full.
    pub fn request(&self, body: u64) -> Limits {
        Limits {
            read: self.stall,
            write: self.stall,
            response: self.floor,
            total: Some(self.for_bytes(body)),
            body: None,
        }
    }

    /// CompleteMultipartUpload (its body is the small part list).
    pub fn assembly(&self, body: u64) -> Limits {
        Limits {
            read: self.assembly,
            write: self.stall,
            response: self.assembly,
            total: Some(self.assembly + self.for_bytes(body)),
            body: None,
        }
    }

    /// The outage probe (a HEAD of the bucket): a request without a body whose reply
    /// must come within `stall`, at most [`PROBE_LIMIT`]: a probe that hangs is a failed
    /// probe, and the next one comes soon.
    pub fn probe(&self) -> Limits {
        let d = self.stall.min(PROBE_LIMIT);
        Limits {
            read: d,
            write: d,
            response: d,
            total: Some(self.connect + d),
            body: None,
        }
    }

    /// A request whose response body the caller reads as a stream.
    pub fn streamed(&self) -> Limits {
        Limits {
            read: self.stall,
            write: self.stall,
            response: self.floor,
            total: None,
            body: Some((self.floor, self.min_rate)),
        }
    }

    /// The agent options for these deadlines.
    pub fn agent_opts(&self, connections: usize) -> AgentOpts {
        AgentOpts {
            connect: self.connect,
            stall: self.stall,
            read: None,
            connections,
        }
    }
}

/// The trust store and proxy settings, read once from the environment.
#[derive(Clone)]
pub struct Transport {
    tls: Arc<rustls::ClientConfig>,
    https_proxy: Option<String>,
    http_proxy: Option<String>,
    no_proxy: Vec<String>,
    /// Where the roots came from, for error messages and the debug log.
    pub roots: String,
    stopper: Option<Stopper>,
}

impl Transport {
    /// Reads `AWS_CA_BUNDLE`, the system store (rustls-native-certs, which honours
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`), and the proxy variables.
    pub fn from_env(env: &dyn Env) -> Result<Transport, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (system, _) = roots.add_parsable_certificates(native.certs);
        let mut described = format!("{system} certificates from the system store");
        if system == 0 {
            // A minimal container without ca-certificates: Mozilla's roots, built in.
            roots.extend(webpki_roots());
            described = "the built-in Mozilla roots (the system store is empty)".into();
        }
        if let Some(bundle) = env.var("AWS_CA_BUNDLE") {
            let n = add_bundle(&mut roots, &bundle)?;
            described.push_str(&format!(" and {n} from AWS_CA_BUNDLE={bundle}"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let var = |a: &str, b: &str| env.var(a).or_else(|| env.var(b));
        Ok(Transport {
            tls: Arc::new(tls),
            https_proxy: var("HTTPS_PROXY", "https_proxy"),
            http_proxy: var("HTTP_PROXY", "http_proxy"),
            no_proxy: var("NO_PROXY", "no_proxy")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            roots: described,
            stopper: None,
        })
    }

    /// Every agent built from now on stops when `flag` is set (SIGINT/SIGTERM): its
    /// connections are shut down (a request blocked on one fails at once), and connects
    /// and name lookups in progress are cut short.
    pub fn stop_on(mut self, flag: Arc<AtomicBool>) -> Transport {
        self.stopper = Some(Stopper::new(flag));
        self
    }

    /// The proxy for `url` (scheme and host), or None: `NO_PROXY` entries are `*`, a host
    /// name (which also matches its subdomains), `.domain`, or an IP address.
    pub fn proxy_for(&self, url: &url::Url) -> Option<String> {
        let host = url
            .host_str()?
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let bypass = self.no_proxy.iter().any(|n| {
            let n = n.trim_start_matches('.');
            let n = n.split(':').next().unwrap_or(n);
            n == "*" || host == n || host.ends_with(&format!(".{n}"))
        });
        if bypass {
            return None;
        }
        match url.scheme() {
            "https" => self.https_proxy.clone(),
            _ => self.http_proxy.clone(),
        }
    }

    /// An agent for requests to `target` (its proxy is chosen for that host).
    pub fn agent(&self, target: &url::Url, o: &AgentOpts) -> Result<Agent, String> {
        let proxy = match self.proxy_for(target) {
            None => None,
            Some(p) => {
                let bad = |why: String| {
                    format!("the proxy {p} (from HTTPS_PROXY/HTTP_PROXY) is not usable: {why}")
                };
                let proxy = ureq::Proxy::new(&p).map_err(|e| bad(e.to_string()))?;
                // Only CONNECT proxies: without the SOCKS support, ureq would go direct.
                if !matches!(
                    proxy.protocol(),
                    ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https
                ) {
                    return Err(bad("only http:// and https:// proxies are supported".into()));
                }
                Some(proxy)
            }
        };
        Ok(self.build(proxy, o))
    }

    /// An agent that never uses a proxy (instance and container metadata).
    pub fn direct_agent(&self, o: &AgentOpts) -> Result<Agent, String> {
        Ok(self.build(None, o))
    }

    fn build(&self, proxy: Option<ureq::Proxy>, o: &AgentOpts) -> Agent {
        let limits = o.limits();
        let stop = self
            .stopper
            .as_ref()
            .map(Stopper::flag)
            .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
        let pool = o.connections.max(2);
        let config = ureq::Agent::config_builder()
            // Statuses are ours to judge; a redirect is returned, never followed.
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(proxy)
            .max_idle_connections(pool)
            .max_idle_connections_per_host(pool)
            .user_agent(concat!("btrfs_to_s3/", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(o.connect))
            .timeout_connect(Some(o.connect))
            .timeout_per_read(Some(limits.read))
            .timeout_per_write(Some(limits.write))
            .timeout_recv_response(Some(limits.response))
            .timeout_global(limits.total)
            .build();
        let connector = ()
            .chain(ConnectProxyConnector::default())
            .chain(Tcp {
                opts: TcpOpts { silence: o.stall },
                stop: stop.clone(),
            })
            .chain(Tls {
                config: self.tls.clone(),
            });
        let inner = ureq::Agent::with_parts(config, connector, Lookup { stop });
        if let Some(s) = &self.stopper {
            s.watch(&inner);
        }
        Agent {
            inner,
            limits,
            connect: o.connect,
            _stopper: self.stopper.clone(),
        }
    }
}

/// A keep-alive connection pool with its default [`Limits`].
#[derive(Clone)]
pub struct Agent {
    inner: ureq::Agent,
    limits: Limits,
    connect: Duration,
    /// Keeps the stop watcher alive while the agent is.
    _stopper: Option<Stopper>,
}

impl Agent {
    pub fn request_url(&self, method: &str, url: &url::Url) -> Request {
        self.request(method, url.as_str())
    }

    pub fn request(&self, method: &str, url: &str) -> Request {
        Request {
            agent: self.inner.clone(),
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            limits: self.limits,
            connect: self.connect,
        }
    }

    pub fn get(&self, url: &str) -> Request {
        self.request("GET", url)
    }

    pub fn put(&self, url: &str) -> Request {
        self.request("PUT", url)
    }
}

/// One request being built.
pub struct Request {
    agent: ureq::Agent,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    limits: Limits,
    connect: Duration,
}

impl Request {
    pub fn set(mut self, name: &str, value: &str) -> Request {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The limits of this request (instead of the agent's).
    pub fn limits(mut self, l: Limits) -> Request {
        self.limits = l;
        self
    }

    /// Sends the request without a body (`Content-Length: 0` for a method that may carry
    /// one, as ureq 2 did: a chunked empty body is not for every S3 service).
    pub fn call(self) -> Result<Response, Error> {
        match self.method.as_str() {
            "GET" | "HEAD" | "DELETE" | "OPTIONS" => self.run(()),
            _ => self.run(&[][..]),
        }
    }

    pub fn send_bytes(self, body: &[u8]) -> Result<Response, Error> {
        self.run(body)
    }

    pub fn send_string(self, body: &str) -> Result<Response, Error> {
        self.run(body.as_bytes())
    }

    /// Sends `len` bytes from `body` (a sized body, not chunked).
    pub fn send(self, mut body: impl Read, len: u64) -> Result<Response, Error> {
        let r = self.set("content-length", &len.to_string());
        r.run(ureq::SendBody::from_reader(&mut body))
    }

    fn run(self, body: impl ureq::AsSendBody) -> Result<Response, Error> {
        let l = self.limits;
        let mut b = ureq::http::Request::builder()
            .method(self.method.as_str())
            .uri(self.url.as_str());
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(body).map_err(|e| {
            Error::Transport(TransportError {
                message: format!("building the request: {e}"),
                permanent: true,
                network: false,
            })
        })?;
        let req = self
            .agent
            .configure_request(req)
            .timeout_per_read(Some(l.read))
            .timeout_per_write(Some(l.write))
            .timeout_recv_response(Some(l.response))
            .timeout_global(l.total)
            .build();
        let resp = self
            .agent
            .run(req)
            .map_err(|e| Error::Transport(TransportError::from_ureq(e, &l, self.connect)))?;
        let (parts, body) = resp.into_parts();
        let resp = Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            body_limit: l.body,
            received: Instant::now(),
        };
        // As ureq 2 did: 4xx and 5xx are errors, anything else (a 3xx too) a reply.
        if resp.status >= 400 {
            return Err(Error::Status(resp.status, Box::new(resp)));
        }
        Ok(resp)
    }
}

pub struct Response {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: ureq::Body,
    body_limit: Option<(Duration, u64)>,
    received: Instant,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The header's value, when it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a stream. For a request with streamed limits, reading it fails once
    /// its deadline has passed (a floor plus its length at the minimum rate).
    pub fn into_reader(self) -> Box<dyn Read + Send + Sync + 'static> {
        let len = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let reader = BodyReader(self.body.into_reader());
        match self.body_limit {
            None => Box::new(reader),
            Some((floor, rate)) => {
                let allowed = floor + Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
                Box::new(DeadlineReader {
                    inner: reader,
                    deadline: self.received + allowed,
                    allowed,
                    len,
                })
            }
        }
    }
}

/// ureq's body reader, whose errors are made readable (a timeout says which).
struct BodyReader(ureq::BodyReader<'static>);

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

struct DeadlineReader {
    inner: BodyReader,
    deadline: Instant,
    allowed: Duration,
    len: u64,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() > self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the response body of {} bytes took longer than its deadline of {} s",
                    self.len,
                    self.allowed.as_secs()
                ),
            ));
        }
        self.inner.read(buf)
    }
}

/// A failed request: a 4xx/5xx reply, or no reply.
pub enum Error {
    Status(u16, Box<Response>),
    Transport(TransportError),
}

/// A request that got no reply: the connection, a timeout, the stream.
#[derive(Debug)]
pub struct TransportError {
    message: String,
    permanent: bool,
    /// No reply because the link failed (see [`TransportError::is_network`]).
    network: bool,
}

impl TransportError {
    /// Whether sending it again cannot help (a bad URL, a bad header, a proxy we cannot
    /// use). Certificate errors: [`is_certificate_error`].
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Whether the link failed under the request: the connection was refused, reset or
    /// cut (a TLS handshake too), a timeout passed, the name did not resolve. Not a
    /// certificate the trust store rejects, not a reply the client cannot parse.
    pub fn is_network(&self) -> bool {
        self.network && !self.permanent
    }

    fn from_ureq(e: ureq::Error, l: &Limits, connect: Duration) -> TransportError {
        use ureq::Timeout as T;
        let secs = |d: Duration| format!("{} s", d.as_secs_f64());
        let network = match &e {
            ureq::Error::Timeout(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
                true
            }
            // A failed name lookup comes from the system resolver as a plain I/O error.
            ureq::Error::Io(e) => {
                super::is_network_io(e.kind())
                    || e.to_string()
                        .contains("failed to lookup address information")
            }
            _ => false,
        };
        let (message, permanent) = match e {
            ureq::Error::Timeout(t) => (
                match t {
                    T::PerRead => format!("no byte came in for {} (timed out)", secs(l.read)),
                    T::PerWrite => format!("no byte went out for {} (timed out)", secs(l.write)),
                    T::Connect => format!("no connection within {} (timed out)", secs(connect)),
                    T::Resolve => format!(
                        "the host name was not resolved within {} (timed out)",
                        secs(connect)
                    ),
                    T::RecvResponse => format!(
                        "no response within {} of the request (timed out)",
                        secs(l.response)
                    ),
                    _ => format!(
                        "the request took longer than its deadline of {} (timed out)",
                        secs(l.total.unwrap_or_default())
                    ),
                },
                false,
            ),
            ureq::Error::Io(e) => (format!("{e} ({:?})", e.kind()), false),
            ureq::Error::HostNotFound => ("the host name does not resolve".into(), false),
            ureq::Error::ConnectionFailed => ("the connection failed".into(), false),
            ureq::Error::BadUri(u) => (format!("bad URL: {u}"), true),
            ureq::Error::Http(e) => (format!("bad request: {e}"), true),
            ureq::Error::InvalidProxyUrl => ("the proxy URL is not usable".into(), true),
            ureq::Error::Tls(t) => (t.to_string(), true),
            other => (other.to_string(), false),
        };
        TransportError {
            message,
            permanent,
            network,
        }
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn webpki_roots() -> Vec<rustls_pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}

/// Adds the certificates of the PEM file `path`; a file that is missing, unreadable or
/// holds no certificate is an error naming it.
fn add_bundle(roots: &mut rustls::RootCertStore, path: &str) -> Result<usize, String> {
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| {
        format!("AWS_CA_BUNDLE={path}: {why} (it must be a PEM file of CA certificates)")
    };
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let (added, rejected) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(format!(
            "none of its {rejected} certificates could be used"
        )));
    }
    Ok(added)
}

/// Whether a transport error is a TLS certificate problem (permanent: retrying cannot
/// make the certificate trusted).
pub fn is_certificate_error(t: &TransportError) -> bool {
    let t = t.message.to_ascii_lowercase();
    t.contains("invalid peer certificate") || (t.contains("certificate") && t.contains("unknown"))
}

/// The message for a certificate error.
pub fn certificate_hint(roots: &str) -> String {
    format!(
        "the server's TLS certificate is not trusted (trusted: {roots}); for a private CA, \
         set AWS_CA_BUNDLE to its PEM file"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct E(HashMap<&'static str, &'static str>);
    impl Env for E {
        fn var(&self, n: &str) -> Option<String> {
            self.0.get(n).map(|v| v.to_string())
        }
    }

    #[test]
    fn proxy_choice_follows_scheme_and_no_proxy() {
        let t = Transport::from_env(&E(HashMap::from([
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://plain:8080"),
            (
                "NO_PROXY",
                "localhost, .internal.example,10.1.2.3 ,s3.corp:9000",
            ),
        ])))
        .unwrap();
        let p = |u: &str| t.proxy_for(&url::Url::parse(u).unwrap());
        assert_eq!(
            p("https://b.s3.eu-west-1.amazonaws.com/k").as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            p("http://minio.lan:9000/b").as_deref(),
            Some("http://plain:8080")
        );
        for direct in [
            "http://localhost:9000/b",
            "https://s3.internal.example/b",
            "https://internal.example/b",
            "http://10.1.2.3/b",
            "https://s3.corp/b",
        ] {
            assert_eq!(p(direct), None, "{direct}");
        }
        assert!(p("https://notinternal.example/b").is_some());
        let all = Transport::from_env(&E(HashMap::from([
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "*"),
        ])))
        .unwrap();
        assert_eq!(
            all.proxy_for(&url::Url::parse("https://x.y/").unwrap()),
            None
        );
    }

    #[test]
    fn failures_of_the_link_are_network_failures_and_nothing_else_is() {
        use std::io::{Error as IoError, ErrorKind as K};
        let l = Deadlines::DEFAULT.request(0);
        let c = Duration::from_secs(10);
        let classify = |e: ureq::Error| {
            let t = TransportError::from_ureq(e, &l, c);
            (t.is_network(), t.is_permanent())
        };
        for (e, what) in [
            (ureq::Error::Timeout(ureq::Timeout::RecvResponse), "timeout"),
            (
                ureq::Error::Timeout(ureq::Timeout::Connect),
                "connect timeout",
            ),
            (ureq::Error::HostNotFound, "no name"),
            (ureq::Error::ConnectionFailed, "connection failed"),
            (
                ureq::Error::Io(IoError::from(K::ConnectionRefused)),
                "refused",
            ),
            (ureq::Error::Io(IoError::from(K::ConnectionReset)), "reset"),
            (
                ureq::Error::Io(IoError::from(K::UnexpectedEof)),
                "TLS handshake cut",
            ),
            (
                ureq::Error::Io(IoError::from(K::NetworkUnreachable)),
                "no route",
            ),
            (
                ureq::Error::Io(IoError::other(
                    "failed to lookup address information: Temporary failure in name resolution",
                )),
                "DNS",
            ),
        ] {
            assert_eq!(classify(e), (true, false), "{what}");
        }
        // A certificate the trust store rejects (rustls' error as an I/O error), a bad
        // URL, a reply that is not HTTP: not the link.
        for (e, what) in [
            (
                ureq::Error::Io(IoError::new(
                    K::InvalidData,
                    "invalid peer certificate: UnknownIssuer",
                )),
                "certificate",
            ),
            (ureq::Error::BadUri("x".into()), "bad URL"),
            (ureq::Error::Tls("no provider"), "TLS config"),
            (ureq::Error::InvalidProxyUrl, "proxy"),
        ] {
            assert!(!classify(e).0, "{what}");
        }
    }

    #[test]
    fn a_refused_connection_is_a_network_store_error_and_a_403_is_not() {
        use crate::store::s3::{Endpoint, S3Store};
        use crate::store::ObjectStore;
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = |url: String| Endpoint {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint_url: Some(url),
            ..Default::default()
        };
        let s = S3Store::with_keys(&ep(format!("http://127.0.0.1:{port}")), 2, "AK", "SK").unwrap();
        let e = s.head("k").unwrap_err();
        assert!(e.is_network(), "{e}");
        assert!(s.probe().unwrap_err().is_network());
        let stub = crate::testing::serve(|_| {
            crate::testing::Reply::from((
                403,
                "<Error><Code>AccessDenied</Code><Message>no</Message></Error>".to_string(),
            ))
        });
        let s = S3Store::with_keys(&ep(stub.url.clone()), 2, "AK", "SK").unwrap();
        let e = s.head_bucket().unwrap_err();
        assert!(!e.is_network() && !e.is_transient(), "{e}");
        // Any reply ends an outage: the probe says the link is back.
        assert!(s.probe().is_ok());
    }

    #[test]
    fn a_bad_ca_bundle_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for p in [&missing, &empty] {
            let p: &'static str = Box::leak(p.display().to_string().into_boxed_str());
            let e = Transport::from_env(&E(HashMap::from([("AWS_CA_BUNDLE", p)])))
                .err()
                .unwrap();
            assert!(e.contains("AWS_CA_BUNDLE=") && e.contains(p), "{e}");
        }
    }
}

/// Requests against small servers on 127.0.0.1 that misbehave on purpose.
#[cfg(test)]
mod wait_tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    /// What the server does with the second request of a connection (the first gets 200).
    #[derive(Clone, Copy)]
    enum Then {
        /// Reads the request head and never answers nor reads the body.
        Silent,
        /// Reads the request and sends its reply a byte at a time, this far apart.
        Trickle(Duration),
    }

    /// Reads one request head; returns its Content-Length.
    fn head(r: &mut BufReader<TcpStream>) -> Option<usize> {
        let mut len = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                return Some(len);
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().ok()?;
            }
        }
    }

    /// The server's URL and the count of connections it accepted.
    fn server(then: Then) -> (url::Url, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url::Url::parse(&format!("http://{}/b/k", l.local_addr().unwrap())).unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                c2.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let Some(n) = head(&mut r) else { return };
                    let mut body = vec![0; n];
                    if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if c.write_all(ok).is_err() || head(&mut r).is_none() {
                        return;
                    }
                    match then {
                        Then::Silent => std::thread::sleep(Duration::from_secs(60)),
                        Then::Trickle(every) => {
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
                                "x".repeat(100)
                            );
                            for b in reply.bytes() {
                                if c.write_all(&[b]).is_err() {
                                    return;
                                }
                                std::thread::sleep(every);
                            }
                        }
                    }
                });
            }
        });
        (url, conns)
    }

    fn agent(t: &Transport, stall_ms: u64) -> Agent {
        t.agent(
            &url::Url::parse("http://127.0.0.1/").unwrap(),
            &AgentOpts {
                connect: Duration::from_secs(2),
                stall: Duration::from_millis(stall_ms),
                read: None,
                connections: 2,
            },
        )
        .unwrap()
    }

    /// Runs `f` on a thread; its result, or a panic when it takes more than `secs`.
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("still waiting after {secs} s: the request hangs"))
    }

    /// A first request, read to its end, so that its connection goes back to the pool.
    fn warm(a: &Agent, url: &url::Url) {
        let r = a.request_url("PUT", url).send_bytes(b"hello").ok().unwrap();
        let mut body = String::new();
        r.into_reader().read_to_string(&mut body).unwrap();
        assert_eq!(body, "ok");
    }

    fn transport_error(r: Result<Response, Error>) -> String {
        match r {
            Err(Error::Transport(t)) => t.to_string(),
            Err(Error::Status(c, _)) => panic!("a reply {c} instead of a transport error"),
            Ok(_) => panic!("a reply instead of a transport error"),
        }
    }

    #[test]
    fn a_pooled_connection_keeps_its_timeouts_for_the_body_and_the_reply() {
        let t = Transport::from_env(&NoEnv).unwrap();
        // The body: more than the socket buffers hold, so the writes block.
        for big in [true, false] {
            let (url, conns) = server(Then::Silent);
            let a = agent(&t, 500);
            warm(&a, &url);
            let started = Instant::now();
            let e = within(15, move || {
                let body = vec![7u8; if big { 64 << 20 } else { 10 }];
                transport_error(a.request_url("PUT", &url).send_bytes(&body))
            });
            assert!(started.elapsed() < Duration::from_secs(3), "{e}");
            assert!(e.contains("timed out"), "{e}");
            // The second request went over the first one's connection.
            assert_eq!(conns.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn a_trickling_reply_fails_within_its_deadline() {
        let t = Transport::from_env(&NoEnv).unwrap();
        let (url, _) = server(Then::Trickle(Duration::from_millis(100)));
        // A byte every 100 ms never trips the 1 s stall timeout; the reply (140 bytes)
        // would take 14 s.
        let a = agent(&t, 1000);
        warm(&a, &url);
        let started = Instant::now();
        let e = within(30, move || {
            transport_error(a.request_url("GET", &url).call())
        });
        assert!(started.elapsed() < Duration::from_secs(4), "{e}");
        assert!(e.contains("timed out"), "{e}");
    }

    #[test]
    fn a_streamed_body_fails_past_its_deadline() {
        let t = Transport::from_env(&NoEnv).unwrap();
        let (url, _) = server(Then::Trickle(Duration::from_millis(20)));
        let a = agent(&t, 1000);
        warm(&a, &url);
        let limits = Limits {
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            response: Duration::from_secs(5),
            total: None,
            // 100 bytes at 1000 bytes/s: 0.3 s; the trickle takes 2 s.
            body: Some((Duration::from_millis(200), 1000)),
        };
        let resp = a
            .request_url("GET", &url)
            .limits(limits)
            .call()
            .ok()
            .unwrap();
        let mut s = String::new();
        let e = resp.into_reader().read_to_string(&mut s).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(s.len() < 100, "{}", s.len());
    }

    #[test]
    fn a_stop_ends_a_request_in_flight_at_once() {
        let flag = Arc::new(AtomicBool::new(false));
        let t = Transport::from_env(&NoEnv).unwrap().stop_on(flag.clone());
        let (url, _) = server(Then::Silent);
        let a = agent(&t, 30_000);
        warm(&a, &url);
        let f = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let started = Instant::now();
        let e = within(10, move || {
            transport_error(a.request_url("GET", &url).call())
        });
        assert!(started.elapsed() < Duration::from_secs(2), "{e}");
        // A new request after the stop fails at once too.
        let a = agent(&t, 30_000);
        let (url, _) = server(Then::Silent);
        let started = Instant::now();
        transport_error(a.request_url("GET", &url).call());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_post_without_a_body_is_not_chunked() {
        let stub = crate::testing::serve(|_| crate::testing::Reply::from((200, String::new())));
        let t = Transport::from_env(&NoEnv).unwrap();
        let url = url::Url::parse(&format!("{}/b/k?uploads", stub.url)).unwrap();
        agent(&t, 2000)
            .request_url("POST", &url)
            .call()
            .ok()
            .unwrap();
        let seen = stub.seen.lock().unwrap().clone();
        assert!(
            !seen[0].headers.contains_key("transfer-encoding"),
            "{seen:?}"
        );
        assert_eq!(seen[0].headers["content-length"], "0");
    }

    #[test]
    fn a_reader_body_goes_with_its_length() {
        let stub = crate::testing::serve(|_| crate::testing::Reply::from((200, String::new())));
        let t = Transport::from_env(&NoEnv).unwrap();
        let url = url::Url::parse(&format!("{}/b/k", stub.url)).unwrap();
        agent(&t, 2000)
            .request_url("PUT", &url)
            .send(&b"0123456789"[..], 10)
            .ok()
            .unwrap();
        let seen = stub.seen.lock().unwrap().clone();
        assert_eq!(seen[0].headers["content-length"], "10");
        assert!(!seen[0].headers.contains_key("transfer-encoding"));
        assert_eq!(seen[0].body, "0123456789");
    }

    #[test]
    fn the_test_knob_only_shortens_deadlines() {
        struct K(&'static str);
        impl Env for K {
            fn var(&self, n: &str) -> Option<String> {
                (n == DEADLINE_KNOB).then(|| self.0.to_string())
            }
        }
        let d = Deadlines::from_env(&K("1500"));
        assert_eq!(d.stall, Duration::from_millis(1500));
        assert_eq!(d.floor, Duration::from_millis(1500));
        assert_eq!(d.assembly, Duration::from_millis(1500));
        assert_eq!(d.min_rate, Deadlines::DEFAULT.min_rate);
        for bad in ["0", "99", "60001", "x", "-5"] {
            assert_eq!(Deadlines::from_env(&K(bad)), Deadlines::DEFAULT, "{bad}");
        }
        assert_eq!(
            Deadlines::from_env(&K("60000")).stall,
            Duration::from_secs(30)
        );
        // A 16 MiB part may take 60 s plus 16 MiB at 16 KiB/s.
        assert_eq!(
            Deadlines::DEFAULT.for_bytes(16 << 20),
            Duration::from_secs(60 + 1024)
        );
        let _ = HashMap::<u8, u8>::new();
    }
}
