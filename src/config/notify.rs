//! The `[notify]` table: `ping_url`, a health-check URL in the healthchecks.io / Uptime
//! Kuma convention that each backup run pings (`crate::notify` sends the pings). Checked
//! here: http or https, a host, no user name or password. Absent: no pings.

use super::ConfigError;

/// A checked ping URL. Its path and query are the check's secret (whoever knows them can
/// report on its behalf): [`PingUrl::shown`] and `Debug` show the scheme and host only.
#[derive(Clone, PartialEq, Eq)]
pub struct PingUrl(url::Url);

impl PingUrl {
    /// Parses and checks `text`; the error never quotes it.
    pub fn parse(text: &str) -> Result<PingUrl, String> {
        let u = url::Url::parse(text.trim()).map_err(|e| {
            format!("not a URL ({e}); give the check's full URL, e.g. https://hc-ping.com/UUID")
        })?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!(
                "must start with http:// or https://, not {}:",
                u.scheme()
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err("has no host; give the check's full URL".into());
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(
                "must not hold a user name or password (user:pass@): pings carry no \
                 credentials; use the check's own URL"
                    .into(),
            );
        }
        Ok(PingUrl(u))
    }

    /// The URL as configured.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// `scheme://host[:port]/…`: for logs and errors, without the secret path.
    pub fn shown(&self) -> String {
        let u = &self.0;
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or(""))
    }
}

impl std::fmt::Debug for PingUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PingUrl({})", self.shown())
    }
}

/// Health-check pings.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    pub ping_url: Option<PingUrl>,
}

/// The `ping_url` value as read; the key's name goes in front of its message tail.
#[derive(Debug, serde::Deserialize)]
#[serde(try_from = "toml::Value")]
pub(super) struct PingUrlValue(PingUrl);

impl TryFrom<toml::Value> for PingUrlValue {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        let toml::Value::String(text) = v else {
            return Err(format!(
                ": must be a string (\"https://hc-ping.com/UUID\"), not a {}",
                v.type_str()
            ));
        };
        if text.trim().is_empty() {
            return Err(" = \"\": give the check's URL, or remove the key".into());
        }
        PingUrl::parse(&text)
            .map(PingUrlValue)
            .map_err(|e| format!(": {e}"))
    }
}

/// The `[notify]` section as the config holds it.
pub(super) fn resolve(ping_url: Option<PingUrlValue>) -> Result<Notify, ConfigError> {
    Ok(Notify {
        ping_url: ping_url.map(|v| v.0),
    })
}
