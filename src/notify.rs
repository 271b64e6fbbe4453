//! Health-check pings of backup runs (`[notify] ping_url`, the healthchecks.io / Uptime
//! Kuma convention): `URL/start` as a run starts, `URL` when it succeeds, `URL/fail` with
//! the run's last line as the body when it fails. Sent through the tool's HTTP stack
//! (`store::http`: proxy, CA bundle), each within 10 s; a ping that fails is a warning
//! (`event=ping_failed`), never the run's failure. Logs show the URL's scheme and host
//! only: its path is the check's secret.

use std::time::Duration;

use crate::config::{Env, PingUrl};
use crate::event;
use crate::store::http::{Agent, AgentOpts, Error, Limits, Transport, DEADLINE_KNOB};

/// How long one ping may take, all of it (connect, request, reply).
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure report's body is cut to this many bytes (healthchecks.io keeps 100 kB).
const MAX_BODY: usize = 10_000;

/// What a ping reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ping<'a> {
    Start,
    Success,
    /// With the run's last line.
    Fail(&'a str),
}

impl Ping<'_> {
    fn name(&self) -> &'static str {
        match self {
            Ping::Start => "start",
            Ping::Success => "success",
            Ping::Fail(_) => "fail",
        }
    }
}

/// Sends the pings of one run.
pub struct Pinger {
    url: PingUrl,
    agent: Agent,
    limits: Limits,
}

impl Pinger {
    /// A pinger for `url`, with the proxy and trust store of `env`. The timeout is
    /// [`PING_TIMEOUT`], or shorter under the test suite's deadline knob.
    pub fn new(url: &PingUrl, env: &dyn Env) -> Result<Pinger, String> {
        // The path is the check's secret: masked in any line that would print it.
        crate::logging::add_secret(url.url().path().trim_matches('/'));
        let t = env
            .var(DEADLINE_KNOB)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| (100..=60_000).contains(ms))
            .map(|ms| PING_TIMEOUT.min(Duration::from_millis(ms)))
            .unwrap_or(PING_TIMEOUT);
        let transport = Transport::from_env(env)?;
        let agent = transport.agent(
            url.url(),
            &AgentOpts {
                connect: t,
                stall: t,
                read: None,
                connections: 1,
            },
        )?;
        Ok(Pinger {
            url: url.clone(),
            agent,
            limits: Limits {
                read: t,
                write: t,
                response: t,
                total: Some(t),
                body: None,
            },
        })
    }

    /// The URL a ping goes to: `URL/start`, `URL`, `URL/fail` (the query kept).
    pub fn url_for(url: &url::Url, ping: Ping<'_>) -> url::Url {
        let mut u = url.clone();
        u.set_fragment(None);
        let suffix = match ping {
            Ping::Start => "start",
            Ping::Success => return u,
            Ping::Fail(_) => "fail",
        };
        let path = format!("{}/{suffix}", u.path().trim_end_matches('/'));
        u.set_path(&path);
        u
    }

    /// Sends one ping; the error says why it failed (without the URL's path).
    pub fn send(&self, ping: Ping<'_>) -> Result<(), String> {
        let target = Pinger::url_for(self.url.url(), ping);
        let req = self.agent.request_url(
            if matches!(ping, Ping::Fail(_)) {
                "POST"
            } else {
                "GET"
            },
            &target,
        );
        let req = req.limits(self.limits);
        let r = match ping {
            Ping::Fail(line) => req
                .set("content-type", "text/plain; charset=utf-8")
                .send_bytes(cut(line, MAX_BODY).as_bytes()),
            _ => req.call(),
        };
        let hide = |m: String| crate::logging::redact(&m.replace(target.as_str(), "…"));
        match r {
            Ok(resp) if (200..300).contains(&resp.status()) => Ok(()),
            Ok(resp) => Err(format!("the server answered HTTP {}", resp.status())),
            Err(Error::Status(code, _)) => Err(format!("the server answered HTTP {code}")),
            Err(Error::Transport(t)) => Err(hide(t.to_string())),
        }
    }

    /// Sends one ping and logs the outcome: a failure is a warning, nothing more.
    pub fn ping(&self, ping: Ping<'_>) {
        match self.send(ping) {
            Ok(()) => event!(
                Debug,
                "ping_sent",
                kind = ping.name(),
                url = self.url.shown()
            ),
            Err(e) => event!(
                Warn,
                "ping_failed",
                kind = ping.name(),
                url = self.url.shown(),
                error = e,
                note = "the backup run itself is not affected"
            ),
        }
    }
}

/// A pinger for the configured `ping_url`, if any; one that cannot be built (a bad proxy
/// or CA bundle) is a warning and no pings.
pub fn pinger(url: Option<&PingUrl>, env: &dyn Env) -> Option<Pinger> {
    let url = url?;
    match Pinger::new(url, env) {
        Ok(p) => Some(p),
        Err(e) => {
            event!(
                Warn,
                "ping_failed",
                kind = "setup",
                url = url.shown(),
                error = e,
                note = "no pings this run; the backup run itself is not affected"
            );
            None
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;
