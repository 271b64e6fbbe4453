//! `backup --dry-run`: the config check the systemd unit runs first. Reads only: the
//! config checked against the disks (subvolumes, `snapshots.base_dir`, sizes, spool room),
//! the bucket reached, the plan per subvolume (as the run would make it) and what a full
//! would make. Each line goes to the caller's `out`; the command prints them.

use std::path::Path;

use anyhow::Context;

use super::Backup;
use crate::config::{Config, Subvolume};
use crate::exit::Failure;
use crate::planner::Trigger;
use crate::state::State;
use crate::ts::Ts;

/// One line of the dry run's output to `out`, formatted as `format!` does.
macro_rules! say {
    ($out:ident, $($arg:tt)*) => {
        $out(format!($($arg)*))
    };
}

/// The nearest existing ancestor of `p` (itself when it exists).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

/// With spooling on: whether the filesystem of `global.spool_dir` (or of its nearest
/// existing ancestor: the run creates it) has room for the spool files a run holds at once,
/// `min(concurrency + 1, spool_size_bytes / part)` parts.
fn spool_room_problem(cfg: &Config, part: u64) -> Option<String> {
    let dir = &cfg.global.spool_dir;
    let at = existing_ancestor(dir)?;
    let free = rustix::fs::statvfs(at)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .ok()?;
    let files = (cfg.s3.concurrency as u64 + 1).min(cfg.global.spool_size_bytes / part);
    let need = files.saturating_mul(part);
    (free < need).then(|| {
        format!(
            "global.spool_dir = {}: its filesystem has {free} bytes free, and a run spools up to \
             {files} parts of {part} bytes ({need} bytes, s3.concurrency + 1): free space, move \
             global.spool_dir, or lower s3.concurrency or s3.part_size_bytes",
            dir.display()
        )
    })
}

/// What can be checked of the config without writing: subvolumes are btrfs subvolumes
/// we can read, `snapshots.base_dir` is (or would be) on the same filesystem as each,
/// the sizes fit together. One line per problem, each naming the key.
fn config_problems(b: &Backup<'_>, selected: &[&Subvolume]) -> Vec<String> {
    let cfg = b.cfg;
    let mut out = Vec::new();
    match super::part_size(cfg) {
        Err(e) => out.push(format!("{e:#}")),
        Ok(part) if cfg.s3.spool_enabled && cfg.global.spool_size_bytes < part => {
            out.push(format!(
                "global.spool_size_bytes = {} cannot hold one part of {part} bytes; raise it",
                cfg.global.spool_size_bytes
            ))
        }
        Ok(part) if cfg.s3.spool_enabled => {
            if let Some(p) = spool_room_problem(cfg, part) {
                out.push(p);
            }
        }
        Ok(_) => {}
    }
    let base = &cfg.snapshots.base_dir;
    let base_fs = existing_ancestor(base).and_then(|a| b.btrfs.filesystem(a).ok());
    for sv in selected {
        let p = &sv.path;
        if !p.exists() {
            out.push(format!(
                "subvolumes.paths: {} does not exist (subvolume {})",
                p.display(),
                sv.name
            ));
            continue;
        }
        if let Err(e) = b.btrfs.show(p) {
            out.push(format!(
                "subvolumes.paths: {} is not a btrfs subvolume we can read ({}); create it \
                 with btrfs subvolume create, or fix the path",
                p.display(),
                format!("{e:#}").lines().next().unwrap_or("")
            ));
            continue;
        }
        match (b.btrfs.filesystem(p), &base_fs) {
            (Ok(fs), Some(bfs)) if &fs != bfs => out.push(format!(
                "snapshots.base_dir = {} is on {} ({}), not on the btrfs filesystem of {} ({}): \
                 snapshots must be on the same filesystem",
                base.display(),
                bfs.source,
                bfs.fstype,
                p.display(),
                fs.source
            )),
            (Ok(_), Some(_)) => {}
            (Err(e), _) => out.push(format!("{e:#}")),
            (_, None) => out.push(format!(
                "snapshots.base_dir = {}: its filesystem cannot be read",
                base.display()
            )),
        }
    }
    out
}

/// How many chunk objects a full of `sv` would make now. The size is what `statvfs`
/// says is used on its filesystem (df's "Used"): instant, and at least the subvolume's
/// data unless the filesystem compresses, but it counts every other subvolume and
/// snapshot there too (shared extents once), so it usually overestimates.
fn full_estimate(cfg: &Config, sv: &Subvolume) -> String {
    let chunk = cfg.s3.chunk_size_bytes.max(1);
    match rustix::fs::statvfs(&sv.path) {
        Ok(st) => {
            let used = st
                .f_blocks
                .saturating_sub(st.f_bfree)
                .saturating_mul(st.f_frsize);
            format!(
                "{}: a full now would make about {} chunk objects (s3.chunk_size_bytes = {chunk}; \
                 estimated from the {used} bytes used on its filesystem, other subvolumes and \
                 snapshots included)",
                sv.name,
                used.div_ceil(chunk).max(1)
            )
        }
        Err(e) => format!(
            "{}: the size of a full cannot be estimated (statvfs of {}: {e})",
            sv.name,
            sv.path.display()
        ),
    }
}

/// `--dry-run`: the config check the systemd unit runs first. Config problems exit 2
/// (each named); S3 out of reach exits 1; else the plan, one line per subvolume (a
/// refused resume journal says so: that subvolume's run will fail), the chunk objects a
/// full would make, exit 0.
pub fn dry_run(
    b: &Backup<'_>,
    state: &State,
    selected: &[&Subvolume],
    trigger: Trigger,
    out: &mut dyn FnMut(String),
) -> Result<(), Failure> {
    let problems = config_problems(b, selected);
    for p in &problems {
        say!(out, "config: {p}");
    }
    if let Some(first) = problems.first() {
        return Err(crate::config::ConfigError(if problems.len() == 1 {
            first.clone()
        } else {
            format!("{first} (and {} more problems above)", problems.len() - 1)
        })
        .into());
    }
    if let Some(repo) = b.repo {
        repo.head_bucket()
            .context("S3 cannot be reached (a real run would fail): check the network, s3.endpoint_url, s3.bucket, s3.region and the credentials")?;
        if let Some(l) = &b.cfg.object_lock {
            crate::repo::object_lock::check_bucket(b.cfg, repo)?;
            say!(
                out,
                "object_lock: bucket {} has Object Lock enabled; chunks and manifests are \
                 locked ({}) for {} days, their chains as long",
                b.cfg.s3.bucket,
                l.mode,
                l.retain_days
            );
        }
    }
    let enc = &b.cfg.encryption;
    if enc.enabled() {
        say!(
            out,
            "encryption: new backups are encrypted (age) to {} recipient{}: {}",
            enc.recipients.len(),
            if enc.recipients.len() == 1 { "" } else { "s" },
            enc.fingerprints().join(", ")
        );
    }
    let now = Ts::now();
    for sv in selected {
        let entry = state.subvolumes.get(&sv.name).cloned().unwrap_or_default();
        let line = match b.load_journal(sv) {
            Ok(Some(p)) => format!(
                "{}: resume ({} backup of {} interrupted; {} bytes stored)",
                sv.name,
                p.begin.kind.as_str(),
                p.begin.run_ts,
                p.stored_bytes()
            ),
            // The run of this subvolume will fail on it (the others go on).
            Err(crate::journal::LoadError::Refused(e)) => {
                format!("{}: refused ({e:#})", sv.name)
            }
            // None, or unreadable: the run abandons an unreadable journal and plans.
            _ => {
                let d = b.decide_plan(sv, &entry, now, trigger)?;
                format!("{}: {} ({})", sv.name, d.action.as_str(), d.reason)
            }
        };
        say!(out, "{line}");
        say!(out, "{}", full_estimate(b.cfg, sv));
        let nested = b.nested(sv);
        if !nested.is_empty() {
            say!(
                out,
                "{}: not included (nested subvolumes, which btrfs send leaves out): {}",
                sv.name,
                nested.join(", ")
            );
        }
    }
    Ok(())
}
