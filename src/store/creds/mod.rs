//! AWS credentials the way the AWS CLI finds them, and kept fresh. [`from_env`] walks
//! the chain in the CLI's order: the environment (`AWS_ACCESS_KEY_ID`...), the profile
//! (`AWS_PROFILE`, else `default`) of `~/.aws/credentials` and `~/.aws/config`
//! (`profile.rs`: static keys, `role_arn` with `source_profile`/`credential_source` through
//! STS AssumeRole, `web_identity_token_file`, `credential_process`), web identity from
//! the environment, the container endpoint, then instance metadata (IMDSv2). The fetchers
//! that talk to a service live in `remote.rs`.
//!
//! A [`Provider`] caches what its source gave and fetches again ahead of expiry: half the
//! credentials' lifetime before it, at most five minutes before (the SDKs renew minutes
//! ahead, never after). A service that answers `ExpiredToken` anyway makes the store call
//! [`Provider::invalidate`] and retry. Every secret is masked in the log.

mod profile;
mod remote;
mod signer;

pub use signer::Signer;

use std::sync::Mutex;

use crate::config::Env;

use super::http::Transport;

/// At most this long before their expiry, temporary credentials are fetched again.
const RENEW_AHEAD_MAX_SECS: i64 = 300;

#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// Unix time after which the service refuses them; `None` for long-term keys.
    pub expires: Option<i64>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ expires: {:?}, .. }}", self.expires)
    }
}

impl Credentials {
    /// Checks what a file, an endpoint or a process handed us before it goes into a
    /// header: present, printable ASCII without spaces, of sane length.
    pub fn checked(
        access_key: String,
        secret_key: String,
        session_token: Option<String>,
        expires: Option<i64>,
        from: &str,
    ) -> Result<Credentials, String> {
        let ok = |v: &str, max: usize| {
            !v.is_empty() && v.len() <= max && v.bytes().all(|b| (0x21..0x7f).contains(&b))
        };
        if !ok(&access_key, 128) {
            return Err(format!("{from}: the access key id is missing or malformed"));
        }
        if !ok(&secret_key, 256) {
            return Err(format!(
                "{from}: the secret access key is missing or malformed"
            ));
        }
        if let Some(t) = &session_token {
            if !ok(t, 16 * 1024) {
                return Err(format!("{from}: the session token is malformed"));
            }
        }
        let c = Credentials {
            access_key,
            secret_key,
            session_token,
            expires,
        };
        mask(&c);
        Ok(c)
    }
}

/// Every part of `creds` is a secret no log line may show.
fn mask(c: &Credentials) {
    crate::logging::add_secret(&c.access_key);
    crate::logging::add_secret(&c.secret_key);
    if let Some(t) = &c.session_token {
        crate::logging::add_secret(t);
    }
}

/// A source of credentials that can be asked again.
pub trait Fetch: Send + Sync {
    fn fetch(&self) -> Result<Credentials, String>;
    /// Where they come from, for the log and errors: `profile backup (AssumeRole ...)`.
    fn describe(&self) -> String;
    /// False for fixed keys, which asking again cannot change.
    fn renewable(&self) -> bool {
        true
    }
}

/// Fixed keys (the environment, a profile's `aws_access_key_id`, tests).
pub struct Fixed {
    creds: Credentials,
    from: String,
}

impl Fetch for Fixed {
    fn fetch(&self) -> Result<Credentials, String> {
        Ok(self.creds.clone())
    }
    fn describe(&self) -> String {
        self.from.clone()
    }
    fn renewable(&self) -> bool {
        false
    }
}

struct Cached {
    creds: Credentials,
    fetched: i64,
    /// The service refused them (`ExpiredToken`): fetch before the next use.
    stale: bool,
    /// After a failed renewal, no new attempt before this time (every request would
    /// otherwise wait out the source's timeout while the credentials still work).
    next_try: i64,
}

/// The pause after a failed renewal: a tenth of the time the credentials have left,
/// between 1 and 60 seconds.
fn renewal_pause(valid_for: i64) -> i64 {
    (valid_for / 10).clamp(1, 60)
}

/// Credentials from one source, cached and renewed ahead of expiry.
pub struct Provider {
    source: Box<dyn Fetch>,
    cache: Mutex<Option<Cached>>,
    now: fn() -> i64,
}

fn unix_now() -> i64 {
    crate::ts::Ts::now().unix()
}

impl Provider {
    pub fn new(source: Box<dyn Fetch>) -> Provider {
        Provider {
            source,
            cache: Mutex::new(None),
            now: unix_now,
        }
    }

    /// Long-term keys given directly (tests, tools).
    pub fn fixed(access: &str, secret: &str, token: Option<&str>) -> Result<Provider, String> {
        let creds = Credentials::checked(
            access.into(),
            secret.into(),
            token.map(str::to_string),
            None,
            "the given keys",
        )?;
        Ok(Provider::new(Box::new(Fixed {
            creds,
            from: "the given keys".into(),
        })))
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Starts the cache with credentials already fetched at `now`.
    fn prime(&self, creds: Credentials, now: i64) {
        if let Ok(mut g) = self.cache.lock() {
            *g = Some(Cached {
                creds,
                fetched: now,
                stale: false,
                next_try: now,
            });
        }
    }

    /// When credentials fetched at `fetched` and expiring at `expires` are renewed.
    fn renew_at(fetched: i64, expires: i64) -> i64 {
        let life = (expires - fetched).max(0);
        expires - (life / 2).min(RENEW_AHEAD_MAX_SECS)
    }

    /// The credentials to sign with now. A failed renewal while the cached credentials
    /// are still valid keeps them (and says so); after their expiry it is an error.
    pub fn get(&self) -> Result<Credentials, String> {
        let mut g = self
            .cache
            .lock()
            .map_err(|_| "the credentials cache is poisoned".to_string())?;
        let now = (self.now)();
        if let Some(c) = g.as_ref() {
            let due = match c.creds.expires {
                None => false,
                Some(exp) => now >= Provider::renew_at(c.fetched, exp) && now >= c.next_try,
            };
            if !due && !c.stale {
                return Ok(c.creds.clone());
            }
        }
        match self.source.fetch() {
            Ok(creds) => {
                crate::event!(
                    Info,
                    "credentials_loaded",
                    source = self.source.describe(),
                    expires_in_seconds = creds
                        .expires
                        .map(|e| (e - now).to_string())
                        .unwrap_or_else(|| "never".into())
                );
                if let Some(exp) = creds.expires.filter(|&e| e <= now) {
                    return Err(format!(
                        "{}: the credentials it gave expired at {} (check the system clock)",
                        self.source.describe(),
                        crate::ts::Ts::from_unix(exp).iso()
                    ));
                }
                *g = Some(Cached {
                    creds: creds.clone(),
                    fetched: now,
                    stale: false,
                    next_try: now,
                });
                Ok(creds)
            }
            Err(e) => match g.as_mut() {
                Some(c) if !c.stale && c.creds.expires.is_some_and(|exp| exp > now) => {
                    let valid_for = c.creds.expires.unwrap_or(now) - now;
                    c.next_try = now + renewal_pause(valid_for);
                    crate::event!(
                        Warn,
                        "credentials_renewal_failed",
                        source = self.source.describe(),
                        error = e,
                        valid_for_seconds = valid_for,
                        next_try_in_seconds = c.next_try - now
                    );
                    Ok(c.creds.clone())
                }
                _ => Err(format!(
                    "AWS credentials from {}: {e}",
                    self.source.describe()
                )),
            },
        }
    }

    /// The service refused the credentials as expired: the next [`get`](Self::get)
    /// fetches anew. False when the source cannot give others (fixed keys).
    pub fn invalidate(&self) -> bool {
        if !self.source.renewable() {
            return false;
        }
        if let Ok(mut g) = self.cache.lock() {
            if let Some(c) = g.as_mut() {
                c.stale = true;
            }
        }
        true
    }
}

/// What to look up, and where (the process environment in production).
pub struct Lookup<'a> {
    pub env: &'a dyn Env,
    pub transport: &'a Transport,
    /// The bucket's region: STS is asked in it unless the profile names another.
    pub region: &'a str,
}

/// Finds credentials the way the AWS CLI does (see the module comment). Nothing is
/// fetched yet except instance metadata, which is only known to exist by asking. The
/// error, when nothing is found, lists every place tried.
pub fn from_env(l: &Lookup<'_>) -> Result<Provider, String> {
    let mut tried: Vec<String> = Vec::new();
    let env = l.env;
    // 1. The environment.
    match (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(a), Some(s)) => {
            let creds =
                Credentials::checked(a, s, env.var("AWS_SESSION_TOKEN"), None, "the environment")?;
            return Ok(Provider::new(Box::new(Fixed {
                creds,
                from: "the environment (AWS_ACCESS_KEY_ID)".into(),
            })));
        }
        (Some(_), None) => {
            return Err(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither"
                    .into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both, or neither"
                    .into(),
            )
        }
        (None, None) => tried.push("the environment (AWS_ACCESS_KEY_ID is not set)".into()),
    }
    // 2. The profile.
    match profile::resolve(l)? {
        profile::Found::Provider(p) => return Ok(p),
        profile::Found::Nothing(why) => tried.push(why),
    }
    // 3. Web identity from the environment.
    match (
        env.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
        env.var("AWS_ROLE_ARN"),
    ) {
        (Some(file), Some(role)) => {
            return Ok(Provider::new(Box::new(remote::WebIdentity::new(
                l,
                file,
                role,
                env.var("AWS_ROLE_SESSION_NAME"),
                None,
            )?)))
        }
        (Some(_), None) => {
            return Err("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not".into())
        }
        _ => tried.push("web identity (AWS_WEB_IDENTITY_TOKEN_FILE is not set)".into()),
    }
    // 4. The container endpoint.
    match remote::Container::from_env(l)? {
        Some(c) => return Ok(Provider::new(Box::new(c))),
        None => tried.push(
            "the container endpoint (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and _FULL_URI are not set)"
                .into(),
        ),
    }
    // 5. Instance metadata.
    if env
        .var("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        tried.push("instance metadata (AWS_EC2_METADATA_DISABLED=true)".into());
    } else {
        let imds = remote::Imds::new(l)?;
        match imds.fetch() {
            Ok(first) => {
                // Asking was the only way to know it is there: keep what it gave.
                let p = Provider::new(Box::new(imds));
                p.prime(first, (p.now)());
                return Ok(p);
            }
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "no AWS credentials found; tried {}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         or a profile in ~/.aws/credentials or ~/.aws/config (AWS_PROFILE), or run with a role",
        tried.join("; ")
    ))
}

/// `~/...` of the AWS files, or the variable that overrides it.
fn aws_file(env: &dyn Env, var: &str, name: &str) -> Option<std::path::PathBuf> {
    env.var(var).map(std::path::PathBuf::from).or_else(|| {
        env.var("HOME")
            .map(|h| std::path::Path::new(&h).join(".aws").join(name))
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
