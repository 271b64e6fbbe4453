//! S3 Object Lock over the repository (`[object_lock]`): the retention every chunk and
//! manifest gets when written, the bucket check before a backup uploads anything, and
//! whole chains: once a backup is published, every object of its chain (its own, its
//! parents' back to the full) stays locked at least as long as the new backup. Only the
//! objects whose date is short are extended (PutObjectRetention), and then a *slack*
//! beyond what is needed, so a weekly chain extends each object about once a month
//! instead of every week. Dates are read with HEAD (`x-amz-object-lock-*`), and read
//! again after each extension, so a service that accepts the requests but keeps no dates
//! fails the run instead of leaving unlocked objects; `prune` reads them too and deletes
//! nothing whose date has not passed.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{Config, ConfigError, ObjectLock};
use crate::repo::Repo;
use crate::store::{ErrorKind, Retention};
use crate::ts::Ts;

const DAY: i64 = 86_400;
/// The slack is a sixth of `retain_days`, at most this many days.
pub const MAX_SLACK_DAYS: i64 = 30;

/// The retention of objects written at `now`: `retain_days` from then.
pub fn retention(cfg: &Config, now: Ts) -> Option<Retention> {
    cfg.object_lock.as_ref().map(|l| Retention {
        mode: l.mode.as_str().into(),
        until: now.add_secs(l.retain_days as i64 * DAY),
    })
}

/// How far beyond the needed date an extension goes: `retain_days / 6`, at most
/// [`MAX_SLACK_DAYS`] days (so at most a sixth longer than asked for).
pub fn slack_secs(l: &ObjectLock) -> i64 {
    (l.retain_days as i64 * DAY / 6).min(MAX_SLACK_DAYS * DAY)
}

/// Fails unless the bucket has Object Lock enabled (GetObjectLockConfiguration): a
/// bucket without it is a config error (exit 2) naming the fix, found before any upload,
/// never a run that silently stores unlocked objects.
pub fn check_bucket(cfg: &Config, repo: &Repo) -> Result<(), crate::exit::Failure> {
    let Some(l) = &cfg.object_lock else {
        return Ok(());
    };
    let bucket = &cfg.s3.bucket;
    let fix = "create the bucket with Object Lock (aws s3api create-bucket \
               --object-lock-enabled-for-bucket ...), or enable it on this one (aws s3api \
               put-object-lock-configuration --object-lock-configuration \
               ObjectLockEnabled=Enabled; versioning must be on), or remove [object_lock]";
    match repo.retrier().run(|| repo.store().object_lock_enabled()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConfigError(format!(
            "[object_lock] mode = {:?} is set, but bucket {bucket} does not have Object Lock \
             enabled: {fix}; nothing was uploaded",
            l.mode
        ))
        .into()),
        Err(e) if e.status == Some(501) || e.message.starts_with("NotImplemented") => {
            Err(ConfigError(format!(
                "[object_lock] is set, but the service of bucket {bucket} does not support \
                 Object Lock ({e}): use a service that does, or remove [object_lock]; nothing \
                 was uploaded"
            ))
            .into())
        }
        Err(e) if e.is_access_denied() => Err(anyhow!(e)
            .context(format!(
                "checking that bucket {bucket} has Object Lock enabled: the credentials need \
                 s3:GetBucketObjectLockConfiguration"
            ))
            .into()),
        Err(e) => Err(anyhow!(e)
            .context(format!(
                "checking that bucket {bucket} has Object Lock enabled"
            ))
            .into()),
    }
}

/// What [`protect_chain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protected {
    /// Objects of the chain whose dates were read (manifests and chunks).
    pub objects: usize,
    /// PutObjectRetention calls made (objects whose date was short).
    pub extended: usize,
    /// The date every object of the chain now has at least.
    pub until: Option<Ts>,
}

/// The mode an extension sets: COMPLIANCE stays COMPLIANCE (S3 refuses to weaken it).
fn mode_for(configured: &str, current: Option<&Retention>) -> String {
    match current {
        Some(r) if r.mode == "COMPLIANCE" => r.mode.clone(),
        _ => configured.to_string(),
    }
}

/// Makes every object of the chain ending at `manifest_key` stay locked at least until
/// the repository's retention date (this run's), extending the short ones to that date
/// plus the slack. A missing object or a refused extension is an error naming the key.
pub fn protect_chain(
    cfg: &Config,
    repo: &Repo,
    subvolume: &str,
    manifest_key: &crate::manifest::ManifestKey,
) -> Result<Protected> {
    let (Some(l), Some(needed)) = (&cfg.object_lock, repo.lock()) else {
        return Ok(Protected::default());
    };
    let chain = repo.chain(subvolume, manifest_key)?;
    let target = needed.until.add_secs(slack_secs(l));
    let store = repo.store().as_ref();
    let mut done = Protected {
        until: Some(needed.until),
        ..Default::default()
    };
    for (mkey, m) in &chain.links {
        for key in std::iter::once(mkey.as_str()).chain(m.chunks.iter().map(|c| c.key.as_str())) {
            let head = repo
                .retrier()
                .run(|| store.head(key))
                .with_context(|| format!("reading the Object Lock date of {key}"))?
                .ok_or_else(|| {
                    anyhow!("{key} of the chain of {manifest_key} is missing from the bucket")
                })?;
            done.objects += 1;
            if head.lock.as_ref().is_some_and(|r| r.until >= needed.until) {
                continue;
            }
            let r = Retention {
                mode: mode_for(l.mode.as_str(), head.lock.as_ref()),
                until: target,
            };
            repo.retrier()
                .run(|| store.put_retention(key, None, &r))
                .with_context(|| {
                    format!(
                        "extending the Object Lock of {key} to {} (PutObjectRetention; the \
                         credentials need s3:PutObjectRetention)",
                        target.iso()
                    )
                })?;
            // A service that takes the request and keeps no date must not pass for one
            // that locks: look again.
            let after = repo
                .retrier()
                .run(|| store.head(key))
                .with_context(|| format!("reading the Object Lock date of {key}"))?
                .and_then(|h| h.lock);
            if after.as_ref().is_none_or(|a| a.until < needed.until) {
                bail!(
                    "the service accepted PutObjectRetention of {key} until {}, but HEAD then \
                     shows {}: it does not keep Object Lock dates, so backups there are not \
                     protected (use a service that implements Object Lock, or remove \
                     [object_lock])",
                    target.iso(),
                    after.map_or("no lock".to_string(), |a| format!(
                        "{} until {}",
                        a.mode,
                        a.until.iso()
                    ))
                );
            }
            done.extended += 1;
        }
    }
    crate::event!(
        Info,
        "object_lock_chain",
        subvolume = subvolume,
        manifest = manifest_key,
        objects = done.objects,
        extended = done.extended,
        locked_until = needed.until.iso(),
        extended_until = target.iso()
    );
    Ok(done)
}

/// What HEAD says of an object's lock: its retention and the version it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    pub lock: Option<Retention>,
    pub version_id: Option<String>,
}

/// Reads the lock of each key (HEAD); a key that is gone is left out.
pub fn read_locks<'a>(
    repo: &Repo,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, LockState>> {
    let store = repo.store().as_ref();
    let mut out = HashMap::new();
    for key in keys {
        match repo.retrier().run(|| store.head(key)) {
            Ok(Some(h)) => {
                out.insert(
                    key.to_string(),
                    LockState {
                        lock: h.lock,
                        version_id: h.version_id,
                    },
                );
            }
            Ok(None) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow!(e).context(format!("reading the Object Lock date of {key}")))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "object_lock_tests.rs"]
mod tests;
