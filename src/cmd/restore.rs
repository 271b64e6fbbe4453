//! `btrfs_to_s3 restore`: resolve flags over config into a [`Request`], start the session
//! (signals, retry policy, the lock), run the restore engine (`crate::restore`) over the
//! repository, report `restore_metrics`. With `--version-id` the repository is read
//! through the versions `repo::versions::pin_chain` chooses.

use std::time::Duration;

use anyhow::Result;

use crate::btrfs::BtrfsCli;
use crate::cli::{RestoreArgs, TierArg, VerifyArg};
use crate::cmd::Session;
use crate::config::{Config, RestoreTier, VerifyMode};
use crate::event;
use crate::exit::{self, Failure, UsageError};
use crate::repo::Repo;
use crate::restore::{check_target, Request, RestoreError, Restorer};

/// `btrfs_to_s3 restore`: flags over config, session (lock), run, metrics.
pub fn run(config: &Config, args: &RestoreArgs) -> Result<u8, Failure> {
    // --limit-download replaces the configured cap for this run.
    let mut capped;
    let config = match &args.limit_download {
        Some(cap) => {
            capped = config.clone();
            capped.s3.download_cap = cap.clone();
            &capped
        }
        None => config,
    };
    // A plan reads S3 and the target's free space only: no root, no lock.
    if !args.plan {
        crate::cmd::require_root("restore")?;
    }
    let mut tiered;
    let config = match args.restore_tier {
        None => config,
        Some(t) => {
            tiered = config.clone();
            tiered.restore.restore_tier = match t {
                TierArg::Standard => RestoreTier::Standard,
                TierArg::Bulk => RestoreTier::Bulk,
                TierArg::Expedited => RestoreTier::Expedited,
            };
            &tiered
        }
    };
    if let Some(why) = crate::manifest::subvolume_name_problem(&args.subvolume) {
        return Err(UsageError(format!(
            "--subvolume {:?} {why}: give the subvolume's name (the last component of its path)",
            args.subvolume
        ))
        .into());
    }
    if args.target.is_relative() {
        // Said first, at every log level: a relative --target is not under the current
        // directory but under restore.target_base_dir (the contract).
        eprintln!(
            "btrfs_to_s3: restoring into {} (--target {} is relative: taken under \
             restore.target_base_dir {})",
            crate::term::inert(
                &config
                    .restore
                    .target_base_dir
                    .join(&args.target)
                    .display()
                    .to_string()
            ),
            crate::term::inert(&args.target.display().to_string()),
            crate::term::inert(&config.restore.target_base_dir.display().to_string())
        );
    }
    let req = Request {
        subvolume: args.subvolume.clone(),
        manifest_key: args.manifest_key.clone(),
        target: check_target(&args.target, &config.restore.target_base_dir)?,
        wait: args
            .wait_override()
            .unwrap_or(config.restore.wait_for_restore),
        timeout: Duration::from_secs(
            args.restore_timeout
                .unwrap_or(config.restore.restore_timeout_seconds),
        ),
        verify: match args.verify {
            Some(VerifyArg::Full) => VerifyMode::Full,
            Some(VerifyArg::Sample) => VerifyMode::Sample,
            Some(VerifyArg::None) => VerifyMode::None,
            None => config.restore.verify_mode,
        },
        skip_space_check: args.skip_space_check,
        identity_files: if args.identities.is_empty() {
            config.encryption.identity_files.clone()
        } else {
            args.identities.clone()
        },
    };
    if let Some(why) = args
        .version_id
        .as_deref()
        .and_then(crate::repo::versions::version_id_problem)
    {
        return Err(UsageError(format!("--version-id {why}")).into());
    }
    let session = Session::start(config, !args.plan)?;
    let btrfs = BtrfsCli::default();
    let mut repo = Repo::open(config, session.retrier.clone())?;
    repo.ride_outages(config);
    if let (Some(key), Some(v)) = (&args.manifest_key, &args.version_id) {
        // The backup as it was written, whatever a bucket writer put over it since.
        let pins = crate::repo::versions::pin_chain(&repo, &req.subvolume, key, v)?;
        repo = crate::repo::versions::pinned_repo(config, &repo, pins);
    }
    let r = Restorer {
        cfg: config,
        btrfs: &btrfs,
        repo: &repo,
        retrier: session.retrier.clone(),
    };
    if args.plan {
        let plan = r.plan(&req)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan.json()).map_err(anyhow::Error::from)?
            );
        } else {
            for line in plan.text().lines() {
                crate::outln!("{line}");
            }
        }
        return Ok(exit::OK);
    }
    let report = match r.run(&req) {
        Ok(rep) => rep,
        Err(pending @ RestoreError::Pending(_)) => return Err(pending.into()),
        Err(RestoreError::Failed(e)) => {
            return Err(e
                .context(format!(
                    "restore of {} into {} failed; nothing was left at the target",
                    req.subvolume,
                    req.target.display()
                ))
                .into())
        }
    };
    let secs = report.elapsed.as_secs_f64();
    event!(
        Info,
        "restore_metrics",
        subvolume = req.subvolume,
        target = req.target.display(),
        manifests = report.manifests,
        chunks = report.chunks,
        total_bytes = report.bytes,
        elapsed_seconds = format!("{secs:.3}"),
        throughput = format!(
            "{:.1}MB/s",
            if secs > 0.0 {
                report.bytes as f64 / secs / 1e6
            } else {
                0.0
            }
        ),
        archive_wait_seconds = report.archive_wait.as_secs(),
        verified_files = report.verified_files,
    );
    Ok(exit::OK)
}
