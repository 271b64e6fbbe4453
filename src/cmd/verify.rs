//! `btrfs_to_s3 verify`: checks the chain `current.json` (or `--manifest-key`) names for
//! each subvolume without restoring it (`crate::check`): cheap by default, `--deep` also
//! downloads and hashes what is readable. Read-only: no lock. Exit 0 all well, 1 any
//! finding (each names the key), 3 archive restores requested and not waited for. The
//! text form is made inert (`crate::term`): findings quote keys and manifest strings.

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::check::{Archived, Checker, Finding, Report};
use crate::cli::VerifyArgs;
use crate::cmd::Session;
use crate::config::Config;
use crate::exit::{self, Failure};
use crate::repo::chain::ChainError;
use crate::repo::Repo;
use crate::{event, outln};

pub fn run(config: &Config, args: &VerifyArgs) -> Result<u8, Failure> {
    let names = crate::cmd::subvolume_names(&args.subvolumes, Some(config))?;
    if args.manifest_key.is_some() && names.len() != 1 {
        return Err(crate::exit::UsageError(
            "--manifest-key needs exactly one --subvolume (the key's subvolume)".into(),
        )
        .into());
    }
    if (args.wait_restore || args.no_wait_restore) && !args.deep {
        return Err(crate::exit::UsageError(
            "--wait-restore and --no-wait-restore go with --deep (only the deep check reads chunks)"
                .into(),
        )
        .into());
    }
    if let Some(why) = args
        .version_id
        .as_deref()
        .and_then(crate::repo::versions::version_id_problem)
    {
        return Err(crate::exit::UsageError(format!("--version-id {why}")).into());
    }
    let session = Session::start(config, false)?;
    let mut repo = Repo::open(config, session.retrier.clone())?;
    // No --subvolume and none configured (a disaster-recovery config): every subvolume
    // under the prefix, as `list` shows them.
    let names = if names.is_empty() {
        crate::repo::catalog::load(&repo, &[])?
            .subvolumes
            .keys()
            .cloned()
            .collect()
    } else {
        names
    };
    if let (Some(key), Some(v), [name]) = (&args.manifest_key, &args.version_id, &names[..]) {
        let pins = crate::repo::versions::pin_chain(&repo, name, key, v)?;
        repo = crate::repo::versions::pinned_repo(config, &repo, pins);
    }
    // Identities only for --deep, and only those given here or in the config.
    let identities = if args.deep
        && (!args.identities.is_empty() || !config.encryption.identity_files.is_empty())
    {
        crate::encryption::identities_for(&args.identities, &config.encryption.identity_files)?
    } else {
        Vec::new()
    };
    let checker = Checker {
        repo: &repo,
        sse: config.s3.sse,
        concurrency: config.s3.concurrency,
        piece_size: config.s3.part_size_bytes,
        identities: &identities,
        // With [object_lock], each object's lock too (findings, so exit 1).
        locks: config.object_lock.is_some(),
    };
    let deep = args.deep.then(|| {
        if args.wait_restore {
            Archived::Wait(Duration::from_secs(
                args.restore_timeout
                    .unwrap_or(config.restore.restore_timeout_seconds),
            ))
        } else if args.no_wait_restore {
            Archived::Request
        } else {
            Archived::Skip
        }
    });
    let tier = config.restore.restore_tier.as_str();
    let mut reports = Vec::new();
    for name in &names {
        let start = match repo.start_key(name, args.manifest_key.as_deref()) {
            Ok(k) => k,
            Err(ChainError::Damaged(d)) => {
                let key = repo.layout.pointer_key(name).into_string();
                reports.push(Report {
                    subvolume: name.clone(),
                    start_key: key.clone(),
                    findings: vec![Finding {
                        key,
                        problem: d.to_string(),
                        damage: true,
                    }],
                    ..Default::default()
                });
                continue;
            }
            Err(ChainError::Failed(e)) => return Err(e.into()),
        };
        let rep = checker.run(name, &start, deep, tier)?;
        for f in &rep.findings {
            // The table on stdout shows it; the event is for --log-level debug.
            event!(
                Debug,
                "verify_finding",
                subvolume = name,
                key = f.key,
                damage = f.damage,
                problem = f.problem
            );
        }
        event!(
            Debug,
            "verify_result",
            subvolume = name,
            manifest = rep.start_key,
            manifests = rep.manifests.len(),
            chunks = rep.chunks,
            total_bytes = rep.bytes,
            chunks_hashed = rep.chunks_hashed,
            plaintext_checked = rep.plaintext_checked,
            not_checked = rep.not_checked.len(),
            findings = rep.findings.len()
        );
        reports.push(rep);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "version": 1, "reports": reports }))
                .map_err(anyhow::Error::from)?
        );
    } else {
        for r in &reports {
            print_text(r, args.deep);
        }
    }
    let findings: usize = reports.iter().map(|r| r.findings.len()).sum();
    if findings > 0 {
        let first = reports
            .iter()
            .flat_map(|r| r.findings.iter())
            .next()
            .map(|f| format!("{}: {}", f.key, f.problem))
            .unwrap_or_default();
        return Err(anyhow!("verify found {findings} problems (first: {first})").into());
    }
    let pending: usize = reports.iter().map(|r| r.restores_pending).sum();
    if pending > 0 {
        return Err(Failure::Pending(
            crate::restore::ArchivePending {
                chunks: pending,
                tier: tier.to_string(),
            }
            .into(),
        ));
    }
    Ok(exit::OK)
}

/// A note when the date the chain needs has passed: nothing of it is locked any more.
fn lock_passed(l: &crate::check::LockReport) -> &'static str {
    let passed = l
        .needed_until
        .as_deref()
        .and_then(|d| crate::ts::Ts::parse(d).ok())
        .is_some_and(|d| d < crate::ts::Ts::now());
    match passed {
        true => "; that date has passed, so none of the chain is locked now (the next backup on it locks it again)",
        false => "",
    }
}

fn print_text(r: &Report, deep: bool) {
    let verdict = if r.damaged() {
        "DAMAGED"
    } else if !r.findings.is_empty() {
        "restorable, with problems"
    } else if !r.not_checked.is_empty() || r.restores_pending > 0 {
        "ok as far as checked"
    } else {
        "ok"
    };
    outln!("subvolume {}: {verdict}", r.subvolume);
    outln!(
        "  chain from {}: {} manifests, {} chunks, {} bytes",
        r.start_key,
        r.manifests.len(),
        r.chunks,
        r.bytes
    );
    if deep {
        outln!("  chunks downloaded and hashed: {}", r.chunks_hashed);
    }
    if let Some(l) = &r.object_lock {
        let until = l
            .needed_until
            .as_deref()
            .unwrap_or("(the newest manifest is not locked)");
        if l.short == 0 {
            outln!(
                "  Object Lock: all {} objects locked until at least {until} (the newest backup's date){}",
                l.objects,
                lock_passed(l)
            );
        } else {
            outln!(
                "  Object Lock: {} of {} objects not locked as long as the chain needs (until {until}); each is a PROBLEM below{}",
                l.short,
                l.objects,
                lock_passed(l)
            );
        }
    }
    for k in &r.not_checked {
        outln!("  not checked (in archive storage; --deep --wait-restore checks it): {k}");
    }
    if r.restores_pending > 0 {
        outln!(
            "  archive restores requested: {} (rerun verify --deep later)",
            r.restores_pending
        );
    }
    for f in &r.findings {
        outln!("  PROBLEM {}: {}", f.key, f.problem);
    }
}
