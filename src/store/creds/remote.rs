//! The credential sources that ask something else: STS AssumeRole (signed with the
//! source profile's credentials), STS AssumeRoleWithWebIdentity (a token file), the
//! container endpoint (ECS/EKS: `AWS_CONTAINER_CREDENTIALS_*`), instance metadata
//! (IMDSv2: a session token first), and `credential_process`. Each reply is checked
//! (`Credentials::checked`) before its values go into a header; failures name the
//! source and the service's own error code.

use std::io::Read;
use std::time::Duration;

use super::super::http::{Agent, AgentOpts, Error as HttpError, Response};
use super::super::sigv4::payload_sha256;
use super::super::xml;
use super::{Credentials, Fetch, Lookup, Provider, Signer};

/// Replies of credential services are small; a larger one is not one of them.
const MAX_REPLY: u64 = 64 * 1024;

fn parse_expiry(v: &str, from: &str) -> Result<i64, String> {
    crate::ts::Ts::parse(v.trim())
        .map(|t| t.unix())
        .map_err(|_| format!("{from}: the expiration {v:?} is not a time"))
}

fn read_reply(resp: Response, from: &str) -> Result<String, String> {
    let mut s = String::new();
    resp.into_reader()
        .take(MAX_REPLY)
        .read_to_string(&mut s)
        .map_err(|e| format!("{from}: reading the reply: {e}"))?;
    Ok(s)
}

/// A failed HTTP exchange as one line: the status and the service's error code.
fn http_error(from: &str, e: HttpError) -> String {
    match e {
        HttpError::Status(code, resp) => {
            let body = read_reply(*resp, from).unwrap_or_default();
            let detail = xml::parse(&body)
                .map(|d| {
                    let c = d.text_of("Code").unwrap_or_default();
                    let m = d.text_of("Message").unwrap_or_default();
                    format!("{c}: {m}")
                })
                .unwrap_or_else(|| body.chars().take(200).collect());
            format!("{from}: HTTP {code}: {detail}")
        }
        HttpError::Transport(t) => format!("{from}: {t}"),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::store::sigv4::uri_encode(v, true)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Reads the `<Credentials>` of an STS reply.
fn sts_credentials(body: &str, from: &str) -> Result<Credentials, String> {
    let doc = xml::parse(body).ok_or_else(|| format!("{from}: the reply is not XML"))?;
    let c = doc
        .find("Credentials")
        .ok_or_else(|| format!("{from}: the reply has no Credentials"))?;
    let get = |n: &str| c.text_of(n).filter(|v| !v.is_empty());
    let expires = match get("Expiration") {
        Some(e) => Some(parse_expiry(&e, from)?),
        None => return Err(format!("{from}: the reply has no Expiration")),
    };
    Credentials::checked(
        get("AccessKeyId").unwrap_or_default(),
        get("SecretAccessKey").unwrap_or_default(),
        get("SessionToken"),
        expires,
        from,
    )
}

/// The STS endpoint: `AWS_ENDPOINT_URL_STS` (as the SDKs), else the regional one.
fn sts_endpoint(l: &Lookup<'_>, region: &str) -> Result<url::Url, String> {
    let s = l
        .env
        .var("AWS_ENDPOINT_URL_STS")
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com/"));
    let u = url::Url::parse(&s).map_err(|e| format!("the STS endpoint {s}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("the STS endpoint {s} is not an http(s) URL"));
    }
    Ok(u)
}

fn sts_region(l: &Lookup<'_>, profile_region: Option<String>) -> String {
    profile_region
        .or_else(|| l.env.var("AWS_REGION"))
        .or_else(|| l.env.var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| l.region.to_string())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

fn sts_agent(l: &Lookup<'_>, url: &url::Url) -> Result<Agent, String> {
    l.transport.agent(
        url,
        &AgentOpts {
            connect: Duration::from_secs(10),
            stall: Duration::from_secs(30),
            read: None,
            connections: 1,
        },
    )
}

fn session_name(given: Option<String>) -> String {
    given.unwrap_or_else(|| format!("btrfs_to_s3-{}", crate::ts::Ts::now().unix()))
}

/// STS AssumeRole, signed with the source's credentials.
pub struct AssumeRole {
    signer: Signer,
    agent: Agent,
    url: url::Url,
    role_arn: String,
    session_name: String,
    external_id: Option<String>,
    duration: u32,
    what: String,
}

impl AssumeRole {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        l: &Lookup<'_>,
        source: Provider,
        role_arn: String,
        session_name_given: Option<String>,
        external_id: Option<String>,
        duration: u32,
        profile_region: Option<String>,
        what: String,
    ) -> Result<AssumeRole, String> {
        let region = sts_region(l, profile_region);
        let url = sts_endpoint(l, &region)?;
        Ok(AssumeRole {
            agent: sts_agent(l, &url)?,
            what: format!(
                "{what} (STS AssumeRole of {role_arn} at {url}, with {})",
                source.describe()
            ),
            signer: Signer::new(source, &region, "sts"),
            url,
            role_arn,
            session_name: session_name(session_name_given),
            external_id,
            duration,
        })
    }
}

impl Fetch for AssumeRole {
    fn fetch(&self) -> Result<Credentials, String> {
        let duration = self.duration.to_string();
        let mut pairs = vec![
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", self.session_name.as_str()),
            ("DurationSeconds", duration.as_str()),
        ];
        if let Some(x) = &self.external_id {
            pairs.push(("ExternalId", x.as_str()));
        }
        let body = form(&pairs);
        let hash = payload_sha256(body.as_bytes());
        let headers = [(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        let signed = self.signer.sign("POST", &self.url, &headers, &hash)?;
        let mut req = self.agent.request_url("POST", &self.url);
        for (k, v) in &signed {
            req = req.set(k, v);
        }
        let resp = req
            .send_string(&body)
            .map_err(|e| http_error(&self.what, e))?;
        sts_credentials(&read_reply(resp, &self.what)?, &self.what)
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// STS AssumeRoleWithWebIdentity: the token file is read at every fetch (it is rotated
/// by whoever writes it); the request is not signed.
pub struct WebIdentity {
    agent: Agent,
    url: url::Url,
    token_file: String,
    role_arn: String,
    session_name: String,
    what: String,
}

impl WebIdentity {
    pub fn new(
        l: &Lookup<'_>,
        token_file: String,
        role_arn: String,
        session_name_given: Option<String>,
        profile_region: Option<String>,
    ) -> Result<WebIdentity, String> {
        let region = sts_region(l, profile_region);
        let url = sts_endpoint(l, &region)?;
        Ok(WebIdentity {
            agent: sts_agent(l, &url)?,
            what: format!(
                "web identity (STS AssumeRoleWithWebIdentity of {role_arn} with {token_file})"
            ),
            url,
            token_file,
            role_arn,
            session_name: session_name(session_name_given),
        })
    }
}

impl Fetch for WebIdentity {
    fn fetch(&self) -> Result<Credentials, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("{}: reading {}: {e}", self.what, self.token_file))?;
        let token = token.trim();
        if token.is_empty() || token.len() > 16 * 1024 {
            return Err(format!(
                "{}: {} holds no usable token",
                self.what, self.token_file
            ));
        }
        crate::logging::add_secret(token);
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("WebIdentityToken", token),
        ]);
        let resp = self
            .agent
            .request_url("POST", &self.url)
            .set(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .send_string(&body)
            .map_err(|e| http_error(&self.what, e))?;
        sts_credentials(&read_reply(resp, &self.what)?, &self.what)
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// The JSON credential documents of the container endpoint, IMDS and credential_process.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCreds {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    /// Container and IMDS call the session token `Token`; credential_process
    /// `SessionToken`.
    token: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
    /// IMDS: `Success` when the document is usable.
    code: Option<String>,
}

impl JsonCreds {
    fn parse(body: &str, from: &str, temporary: bool) -> Result<Credentials, String> {
        let j: JsonCreds = serde_json::from_str(body)
            .map_err(|e| format!("{from}: the reply is not a credentials document: {e}"))?;
        if let Some(code) = j.code.as_deref().filter(|c| *c != "Success") {
            return Err(format!("{from}: the service says {code}"));
        }
        let expires = match j.expiration.as_deref() {
            Some(e) => Some(parse_expiry(e, from)?),
            None if temporary => return Err(format!("{from}: the reply has no Expiration")),
            None => None,
        };
        Credentials::checked(
            j.access_key_id.unwrap_or_default(),
            j.secret_access_key.unwrap_or_default(),
            j.token.or(j.session_token),
            expires,
            from,
        )
    }
}

/// Metadata endpoints (link-local, loopback) are never reached through a proxy, and
/// answer at once or not at all.
fn metadata_agent(l: &Lookup<'_>, timeout: Duration) -> Result<Agent, String> {
    l.transport.direct_agent(&AgentOpts {
        connect: timeout,
        stall: timeout * 2,
        read: None,
        connections: 1,
    })
}

/// ECS/EKS container credentials.
pub struct Container {
    agent: Agent,
    url: url::Url,
    token: Option<String>,
    token_file: Option<String>,
    what: String,
}

impl Container {
    /// From `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (on 169.254.170.2) or `_FULL_URI`
    /// (https anywhere; http only to loopback or the ECS/EKS link-local addresses), with
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)` as the Authorization header.
    pub fn from_env(l: &Lookup<'_>) -> Result<Option<Container>, String> {
        let url = if let Some(rel) = l.env.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            format!("http://169.254.170.2{rel}")
        } else if let Some(full) = l.env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            full
        } else {
            return Ok(None);
        };
        let u = url::Url::parse(&url)
            .map_err(|e| format!("the container credentials URL {url}: {e}"))?;
        let allowed = match (u.scheme(), u.host()) {
            ("https", Some(_)) => true,
            ("http", Some(url::Host::Ipv4(ip))) => {
                ip.is_loopback()
                    || ip.octets() == [169, 254, 170, 2]
                    || ip.octets() == [169, 254, 170, 23]
            }
            ("http", Some(url::Host::Ipv6(ip))) => {
                ip.is_loopback() || ip.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23]
            }
            ("http", Some(url::Host::Domain(d))) => d == "localhost",
            _ => false,
        };
        if !allowed {
            return Err(format!(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI={url}: over http only loopback, \
                 169.254.170.2, 169.254.170.23 or fd00:ec2::23 may hand out credentials"
            ));
        }
        Ok(Some(Container {
            agent: metadata_agent(l, Duration::from_secs(2))?,
            what: format!("the container endpoint {u}"),
            url: u,
            token: l.env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            token_file: l.env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        }))
    }
}

impl Fetch for Container {
    fn fetch(&self) -> Result<Credentials, String> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("{}: reading {f}: {e}", self.what))?
                    .trim()
                    .to_string(),
            ),
            None => self.token.clone(),
        };
        let mut req = self.agent.request_url("GET", &self.url);
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            if t.contains(['\r', '\n']) {
                return Err(format!(
                    "{}: the authorization token has a line break",
                    self.what
                ));
            }
            crate::logging::add_secret(&t);
            req = req.set("authorization", &t);
        }
        let resp = req.call().map_err(|e| http_error(&self.what, e))?;
        JsonCreds::parse(&read_reply(resp, &self.what)?, &self.what, false)
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// EC2 instance metadata, IMDSv2 only (a PUT for a session token, then GETs with it).
pub struct Imds {
    agent: Agent,
    base: String,
}

impl Imds {
    pub fn new(l: &Lookup<'_>) -> Result<Imds, String> {
        let base = l
            .env
            .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|| "http://169.254.169.254".into())
            .trim_end_matches('/')
            .to_string();
        url::Url::parse(&base)
            .map_err(|e| format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={base}: {e}"))?;
        Ok(Imds {
            agent: metadata_agent(l, Duration::from_secs(1))?,
            base,
        })
    }

    fn get(&self, path: &str, token: &str) -> Result<String, String> {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("x-aws-ec2-metadata-token", token)
            .call()
            .map_err(|e| http_error(&self.describe(), e))?;
        read_reply(resp, &self.describe())
    }
}

impl Fetch for Imds {
    fn fetch(&self) -> Result<Credentials, String> {
        let what = self.describe();
        let resp = self
            .agent
            .put(&format!("{}/latest/api/token", self.base))
            .set("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            .call()
            .map_err(|e| http_error(&what, e))?;
        let token = read_reply(resp, &what)?.trim().to_string();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(format!("{what}: no usable session token"));
        }
        let roles = self.get("/latest/meta-data/iam/security-credentials/", &token)?;
        let role = roles.lines().next().unwrap_or("").trim().to_string();
        if role.is_empty()
            || !role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        {
            return Err(format!(
                "{what}: the instance has no usable IAM role ({role:?})"
            ));
        }
        let doc = self.get(
            &format!("/latest/meta-data/iam/security-credentials/{role}"),
            &token,
        )?;
        JsonCreds::parse(&doc, &format!("{what}, role {role}"), true)
    }
    fn describe(&self) -> String {
        format!("instance metadata at {}", self.base)
    }
}

/// `credential_process`: a command (run by /bin/sh, as the AWS CLI runs it without a
/// shell but with shell-like splitting) printing a JSON document with `Version: 1`.
///
/// The command line may carry a token, so it is never shown: errors and the log name the
/// profile. The process runs in a process group of its own and must exit and close its
/// output within the timeout, counted from its start; otherwise the whole group is
/// killed (a helper that leaves a child holding its stdout cannot hang the run). Its
/// output is read by threads, at most [`MAX_REPLY`] of it.
pub struct Process {
    command: String,
    what: String,
    timeout: Duration,
}

/// A credential process that has not answered in this time is killed.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Tests shorten the timeout with this variable (milliseconds, 1 to the default).
const PROCESS_TIMEOUT_VAR: &str = "BTRFS_TO_S3_CREDENTIAL_PROCESS_TIMEOUT_MS";

impl Process {
    pub fn new(l: &Lookup<'_>, command: String, profile: String) -> Process {
        let timeout = l
            .env
            .var(PROCESS_TIMEOUT_VAR)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| (1..=PROCESS_TIMEOUT.as_millis() as u64).contains(ms))
            .map(Duration::from_millis)
            .unwrap_or(PROCESS_TIMEOUT);
        Process {
            what: format!("{profile} (credential_process)"),
            command,
            timeout,
        }
    }
}

/// One of the process's outputs, read to its end: at most `keep` bytes are kept; with
/// `stop_after`, reading stops once more than `keep` came (the output is refused anyway).
fn read_output(
    mut r: impl Read + Send + 'static,
    keep: u64,
    stop_after: bool,
    tx: std::sync::mpsc::Sender<(bool, std::io::Result<Vec<u8>>)>,
    is_stdout: bool,
) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut result = r.by_ref().take(keep + 1).read_to_end(&mut buf).map(|_| ());
        if result.is_ok() && !stop_after {
            // Drained, not kept, so that a chatty helper does not block on a full pipe.
            result = std::io::copy(&mut r, &mut std::io::sink()).map(drop);
            buf.truncate(keep as usize);
        }
        let _ = tx.send((is_stdout, result.map(|()| buf)));
    });
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

impl Process {
    /// Kills the process group (the helper and whatever it started) and reaps the helper.
    fn kill(&self, child: &mut std::process::Child, reaped: bool) {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        if !reaped {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the command: its exit status, stdout and stderr, within the timeout.
    fn run(&self) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), String> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let deadline = std::time::Instant::now() + self.timeout;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: starting it: {e}", self.what))?;
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(s) = child.stdout.take() {
            read_output(s, MAX_REPLY, true, tx.clone(), true);
        }
        if let Some(s) = child.stderr.take() {
            read_output(s, MAX_REPLY, false, tx, false);
        }
        let (mut out, mut err, mut status) = (None, None, None);
        loop {
            if status.is_none() {
                match child.try_wait() {
                    Ok(st) => status = st,
                    Err(e) => {
                        self.kill(&mut child, false);
                        return Err(format!("{}: waiting for it: {e}", self.what));
                    }
                }
            }
            // Done when it has exited and both outputs reached their end.
            if let Some(st) = status.filter(|_| out.is_some() && err.is_some()) {
                return Ok((
                    st,
                    out.take().unwrap_or_default(),
                    err.take().unwrap_or_default(),
                ));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                self.kill(&mut child, status.is_some());
                let why = match status {
                    None => "it had not exited",
                    Some(_) => {
                        "it exited, but its output was still held open (by a child it left behind?)"
                    }
                };
                return Err(format!(
                    "{}: no answer within {} ({why}); killed it and its process group: \
                     make the helper print its credentials and exit",
                    self.what,
                    show_duration(self.timeout)
                ));
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            match rx.recv_timeout(wait) {
                Ok((is_stdout, r)) => {
                    let bytes = match r {
                        Ok(b) => b,
                        Err(e) => {
                            self.kill(&mut child, status.is_some());
                            return Err(format!("{}: reading its output: {e}", self.what));
                        }
                    };
                    if is_stdout && bytes.len() as u64 > MAX_REPLY {
                        self.kill(&mut child, status.is_some());
                        return Err(format!(
                            "{}: it printed more than {} KiB, which is no credentials document",
                            self.what,
                            MAX_REPLY / 1024
                        ));
                    }
                    *(if is_stdout { &mut out } else { &mut err }) = Some(bytes);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // Both readers are done and their results taken.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
        }
    }
}

impl Fetch for Process {
    fn fetch(&self) -> Result<Credentials, String> {
        let (status, out, err) = self.run()?;
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(format!("{}: {status}: {first}", self.what));
        }
        let out = String::from_utf8(out)
            .map_err(|_| format!("{}: its output is not UTF-8", self.what))?;
        let j: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| format!("{}: its output is not JSON: {e}", self.what))?;
        if j.get("Version").and_then(|v| v.as_u64()) != Some(1) {
            return Err(format!("{}: its output lacks \"Version\": 1", self.what));
        }
        JsonCreds::parse(&out, &self.what, false)
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
pub(super) fn parse_json_for_tests(body: &str, temporary: bool) -> Result<Credentials, String> {
    JsonCreds::parse(body, "test", temporary)
}

#[cfg(test)]
pub(super) fn parse_sts_for_tests(body: &str) -> Result<Credentials, String> {
    sts_credentials(body, "test")
}
