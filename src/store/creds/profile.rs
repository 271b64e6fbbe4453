//! Profiles of `~/.aws/credentials` and `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE`
//! and `AWS_CONFIG_FILE`), as the AWS CLI reads them: the profile is `AWS_PROFILE` (else
//! `AWS_DEFAULT_PROFILE`, else `default`); config names it `[profile NAME]` (`[default]`
//! for the default), the credentials file `[NAME]`, and a key in the credentials file
//! wins. A profile gives, in this order: `role_arn` (with `source_profile`,
//! `credential_source` or `web_identity_token_file`), static keys, `credential_process`.

use std::collections::{BTreeMap, HashMap};

use super::remote::{AssumeRole, Container, Imds, Process, WebIdentity};
use super::{aws_file, Credentials, Fixed, Lookup, Provider};

pub enum Found {
    Provider(Provider),
    /// Why the profile gave nothing, for the "tried" list.
    Nothing(String),
}

type Section = BTreeMap<String, String>;

/// Parses the INI dialect of the AWS files: `[section]`, `key = value`, comments with
/// `#` or `;` at the start of a line; indented lines continue a nested key (ignored).
fn parse(text: &str) -> Vec<(String, Section)> {
    let mut out: Vec<(String, Section)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            continue; // a nested value (`s3 =` followed by indented keys)
        }
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            out.push((name.trim().to_string(), Section::new()));
            continue;
        }
        if let (Some((k, v)), Some((_, sec))) = (l.split_once('='), out.last_mut()) {
            sec.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// The two files, read once.
struct Files {
    profiles: HashMap<String, Section>,
    names: String,
}

impl Files {
    fn read(l: &Lookup<'_>) -> Result<Files, String> {
        let mut profiles: HashMap<String, Section> = HashMap::new();
        let mut names = Vec::new();
        let config = aws_file(l.env, "AWS_CONFIG_FILE", "config");
        let creds = aws_file(l.env, "AWS_SHARED_CREDENTIALS_FILE", "credentials");
        for (path, is_config) in [(config, true), (creds, false)] {
            let Some(path) = path else { continue };
            names.push(path.display().to_string());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
            };
            for (section, keys) in parse(&text) {
                let name = if is_config {
                    match section.strip_prefix("profile ") {
                        Some(n) => n.trim().to_string(),
                        None if section == "default" => section,
                        None => continue, // [sso-session x], [services x]
                    }
                } else {
                    section
                };
                // The credentials file is read second: its keys win.
                profiles.entry(name).or_default().extend(keys);
            }
        }
        Ok(Files {
            profiles,
            names: names.join(" and "),
        })
    }
}

/// The provider of the selected profile, or why it gives none. A profile that exists
/// but cannot work (a role without a source, a loop, MFA) is an error, not a fallthrough.
pub fn resolve(l: &Lookup<'_>) -> Result<Found, String> {
    let explicit = l
        .env
        .var("AWS_PROFILE")
        .or_else(|| l.env.var("AWS_DEFAULT_PROFILE"));
    let name = explicit.clone().unwrap_or_else(|| "default".into());
    let files = Files::read(l)?;
    if !files.profiles.contains_key(&name) {
        if explicit.is_some() {
            return Err(format!(
                "AWS_PROFILE={name}: no such profile in {} (config names it [profile {name}])",
                files.names
            ));
        }
        return Ok(Found::Nothing(format!(
            "profile default (not in {})",
            files.names
        )));
    }
    match provider(l, &files, &name, &mut Vec::new())? {
        Some(p) => Ok(Found::Provider(p)),
        None if explicit.is_some() => Err(format!(
            "AWS_PROFILE={name}: the profile has no credentials (aws_access_key_id, role_arn, \
             credential_process or web_identity_token_file) in {}",
            files.names
        )),
        None => Ok(Found::Nothing(format!(
            "profile default (no credentials in it, in {})",
            files.names
        ))),
    }
}

fn provider(
    l: &Lookup<'_>,
    files: &Files,
    name: &str,
    chain: &mut Vec<String>,
) -> Result<Option<Provider>, String> {
    let Some(p) = files.profiles.get(name) else {
        return Err(format!(
            "profile {name} (named by source_profile of {}) is not in {}",
            chain.last().map(String::as_str).unwrap_or("?"),
            files.names
        ));
    };
    if chain.iter().any(|n| n == name) {
        return Err(format!(
            "the profiles {} name each other as source_profile: a loop",
            chain.join(" -> ")
        ));
    }
    chain.push(name.to_string());
    let what = format!("profile {name}");
    let keys = || -> Result<Option<Credentials>, String> {
        match (p.get("aws_access_key_id"), p.get("aws_secret_access_key")) {
            (Some(a), Some(s)) => Credentials::checked(
                a.clone(),
                s.clone(),
                p.get("aws_session_token").cloned(),
                None,
                &what,
            )
            .map(Some),
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "{what} has only one of aws_access_key_id and aws_secret_access_key"
            )),
            (None, None) => Ok(None),
        }
    };
    if let Some(role) = p.get("role_arn") {
        if p.contains_key("mfa_serial") {
            return Err(format!(
                "{what} needs an MFA code (mfa_serial), which a backup timer cannot type: \
                 use a role without MFA for it"
            ));
        }
        let source: Provider = if let Some(token_file) = p.get("web_identity_token_file") {
            let w = WebIdentity::new(
                l,
                token_file.clone(),
                role.clone(),
                p.get("role_session_name").cloned(),
                p.get("region").cloned(),
            )?;
            return Ok(Some(Provider::new(Box::new(w))));
        } else if let Some(src) = p.get("source_profile") {
            if src == name {
                // A profile may name itself: its own keys assume its role.
                match keys()? {
                    Some(c) => Provider::new(Box::new(Fixed {
                        creds: c,
                        from: format!("{what} (its keys)"),
                    })),
                    None => {
                        return Err(format!(
                            "{what} names itself as source_profile but has no keys"
                        ))
                    }
                }
            } else {
                match provider(l, files, src, chain)? {
                    Some(p) => p,
                    None => {
                        return Err(format!(
                            "{what}: its source_profile {src} has no credentials"
                        ))
                    }
                }
            }
        } else if let Some(cs) = p.get("credential_source") {
            match cs.as_str() {
                "Environment" => match (l.env.var("AWS_ACCESS_KEY_ID"), l.env.var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(a), Some(s)) => Provider::new(Box::new(Fixed {
                        creds: Credentials::checked(a, s, l.env.var("AWS_SESSION_TOKEN"), None, "the environment")?,
                        from: "the environment".into(),
                    })),
                    _ => return Err(format!("{what}: credential_source = Environment, but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set")),
                },
                "Ec2InstanceMetadata" => Provider::new(Box::new(Imds::new(l)?)),
                "EcsContainer" => match Container::from_env(l)? {
                    Some(c) => Provider::new(Box::new(c)),
                    None => return Err(format!("{what}: credential_source = EcsContainer, but AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/_FULL_URI are not set")),
                },
                other => return Err(format!("{what}: credential_source = {other} is not one of Environment, Ec2InstanceMetadata, EcsContainer")),
            }
        } else {
            return Err(format!(
                "{what} has role_arn but no source_profile, credential_source or web_identity_token_file"
            ));
        };
        let duration = match p.get("duration_seconds") {
            None => 3600,
            Some(d) => d
                .parse::<u32>()
                .ok()
                .filter(|d| (900..=43_200).contains(d))
                .ok_or_else(|| format!("{what}: duration_seconds = {d} is not 900..43200"))?,
        };
        let a = AssumeRole::new(
            l,
            source,
            role.clone(),
            p.get("role_session_name").cloned(),
            p.get("external_id").cloned(),
            duration,
            p.get("region").cloned(),
            what,
        )?;
        return Ok(Some(Provider::new(Box::new(a))));
    }
    if let Some(c) = keys()? {
        return Ok(Some(Provider::new(Box::new(Fixed {
            creds: c,
            from: format!("{what} (aws_access_key_id)"),
        }))));
    }
    if let Some(cmd) = p.get("credential_process") {
        return Ok(Some(Provider::new(Box::new(Process::new(
            l,
            cmd.clone(),
            what,
        )))));
    }
    if p.contains_key("sso_session") || p.contains_key("sso_start_url") {
        return Err(format!(
            "{what} uses IAM Identity Center (SSO), whose login needs a browser: give the backup \
             a profile with role_arn, credential_process or keys"
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ini_dialect() {
        let s = parse(
            "# comment\n[default]\naws_access_key_id = AK\n; other\nAWS_Secret_Access_Key=SK \n\
             s3 =\n  max_concurrent_requests = 20\n[profile x]\nregion = eu-west-1\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "default");
        assert_eq!(s[0].1.get("aws_secret_access_key").unwrap(), "SK");
        assert_eq!(s[0].1.get("s3").unwrap(), "");
        assert!(!s[0].1.contains_key("max_concurrent_requests"));
        assert_eq!(s[1].0, "profile x");
    }
}
