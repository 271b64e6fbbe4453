//! The HTTP agents every request of this tool goes through (S3, STS, credential
//! endpoints): one TLS stack (rustls with ring) trusting the system store plus
//! `AWS_CA_BUNDLE`, the proxy chosen from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` for the
//! host the agent talks to, no redirects, and timeouts that turn a stalled socket into
//! a transient error. It also says which transport failures are permanent (a
//! certificate the trust store rejects is, and its message names `AWS_CA_BUNDLE`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Env;

/// How an agent is built.
pub struct AgentOpts {
    pub connect: Duration,
    /// A read or write that moves no byte for this long fails.
    pub stall: Duration,
    /// Read timeout, when it differs from `stall` (CompleteMultipartUpload).
    pub read: Option<Duration>,
    pub connections: usize,
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
        })
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
    pub fn agent(&self, target: &url::Url, o: &AgentOpts) -> Result<ureq::Agent, String> {
        let mut b = self.builder(o);
        if let Some(p) = self.proxy_for(target) {
            let proxy = ureq::Proxy::new(&p).map_err(|e| {
                format!("the proxy {p} (from HTTPS_PROXY/HTTP_PROXY) is not usable: {e}")
            })?;
            b = b.proxy(proxy);
        }
        Ok(b.build())
    }

    /// An agent that never uses a proxy (instance and container metadata).
    pub fn direct_agent(&self, o: &AgentOpts) -> Result<ureq::Agent, String> {
        Ok(self.builder(o).build())
    }

    fn builder(&self, o: &AgentOpts) -> ureq::AgentBuilder {
        ureq::AgentBuilder::new()
            .tls_config(self.tls.clone())
            .timeout_connect(o.connect)
            .timeout_read(o.read.unwrap_or(o.stall))
            .timeout_write(o.stall)
            .redirects(0)
            .max_idle_connections_per_host(o.connections.max(2))
            .user_agent(concat!("btrfs_to_s3/", env!("CARGO_PKG_VERSION")))
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
pub fn is_certificate_error(t: &ureq::Transport) -> bool {
    let mut text = t.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(t);
    while let Some(e) = src {
        text.push_str(&e.to_string());
        src = e.source();
    }
    let t = text.to_ascii_lowercase();
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
