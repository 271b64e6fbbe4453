//! The command line as typed (clap derive): raw flags only. `app` resolves them against
//! the config; nothing here does I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "btrfs_to_s3",
    version,
    about = "Back up btrfs subvolumes to S3 with btrfs send, and restore them verified",
    long_about = "Back up btrfs subvolumes to S3 with btrfs send, and restore them verified.\n\n\
                  Exit codes: 0 success (including nothing due), 1 a backup or restore failed \
                  (or the lock is held), 2 bad config or usage, 3 archive restores requested \
                  and not waited for (rerun restore later)."
)]
pub struct Cli {
    /// Path of the TOML config file [default: /etc/btrfs_to_s3/config.toml]
    #[arg(
        short = 'c',
        long,
        global = true,
        value_name = "PATH",
        env = "BTRFS_TO_S3_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// Log level; overrides global.log_level (RUST_LOG overrides both)
    #[arg(long, global = true, value_name = "L", value_enum, ignore_case = true)]
    pub log_level: Option<LogLevelArg>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot, send and upload every subvolume that is due per the schedule
    Backup(BackupArgs),
    /// Restore a subvolume from S3 into a new writable subvolume at --target
    Restore(RestoreArgs),
    /// List the backups in the bucket, and what does not fit (broken chains, orphans)
    List(ListArgs),
    /// Check the published chain without restoring it (--deep: download and hash)
    Verify(VerifyArgs),
    /// Delete old generations from S3 (a dry run unless --confirm)
    Prune(PruneArgs),
    /// Per subvolume: the last backup, what is due next, a pending resume, the last run's
    /// result (local files only; --remote also reads current.json)
    Status(StatusArgs),
    /// Print shell completions for SHELL to stdout (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout (btrfs_to_s3 man | man -l -), or write one page
    /// per command into --dir
    Man(ManArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ManArgs {
    /// Write btrfs_to_s3.1 and a page per command (btrfs_to_s3-backup.1, ...) into this
    /// existing directory instead
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct StatusArgs {
    /// Only this subvolume (by name); repeatable. Default: the configured subvolumes
    #[arg(long = "subvolume", value_name = "NAME")]
    pub subvolumes: Vec<String>,

    /// Also read each subvolume's current.json from S3 and compare it with the state
    #[arg(long)]
    pub remote: bool,

    /// One JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Where the config is read from when neither `--config` nor `BTRFS_TO_S3_CONFIG` says.
pub const DEFAULT_CONFIG: &str = "/etc/btrfs_to_s3/config.toml";

#[derive(Debug, Args, Default, Clone)]
pub struct ListArgs {
    /// Only this subvolume (by name); repeatable. Default: every subvolume under the prefix
    #[arg(long = "subvolume", value_name = "NAME")]
    pub subvolumes: Vec<String>,

    /// One JSON document on stdout (its shape is in DESIGN.md)
    #[arg(long)]
    pub json: bool,

    /// Also every version of current.json and of each manifest (versioned buckets, as
    /// Object Lock makes them): what restore --manifest-key K --version-id V takes
    #[arg(long)]
    pub versions: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct VerifyArgs {
    /// Only this subvolume (by name); repeatable. Default: the configured subvolumes
    #[arg(long = "subvolume", value_name = "NAME")]
    pub subvolumes: Vec<String>,

    /// Check the chain of this manifest (an S3 key) instead of current.json's
    #[arg(long, value_name = "KEY")]
    pub manifest_key: Option<String>,

    /// With --manifest-key: that version of it, and the oldest fitting version of each
    /// parent and chunk (a versioned bucket; see list --versions)
    #[arg(long, value_name = "V", requires = "manifest_key")]
    pub version_id: Option<String>,

    /// Also download every readable chunk and check its SHA-256 and the stream's
    #[arg(long)]
    pub deep: bool,

    /// With --deep: decrypt encrypted chunks with the age identities in FILE (repeatable;
    /// overrides encryption.identity_files) and check the plaintext too
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<std::path::PathBuf>,

    /// With --deep: request restores of archived chunks, wait, and check them too
    #[arg(long, conflicts_with = "no_wait_restore")]
    pub wait_restore: bool,

    /// With --deep: request restores of archived chunks, then exit 3; rerun later
    #[arg(long)]
    pub no_wait_restore: bool,

    /// Give up waiting for archive restores after this many seconds
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub restore_timeout: Option<u64>,

    /// One JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct PruneArgs {
    /// Only this subvolume (by name); repeatable. Default: the configured subvolumes
    #[arg(long = "subvolume", value_name = "NAME")]
    pub subvolumes: Vec<String>,

    /// Generations to keep, counting the current one (default:
    /// retention.remote_generations, 1)
    #[arg(long, value_name = "G", value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub keep_generations: Option<u64>,

    /// Delete; without it prune only prints what it would delete
    #[arg(long)]
    pub confirm: bool,

    /// Delete objects younger than their storage class's minimum duration (S3 bills the
    /// remaining days anyway)
    #[arg(long)]
    pub allow_early_delete: bool,

    /// Prune even when current.json names neither this host's last backup (last_manifest
    /// in global.state_path) nor one chaining back to it, for a host whose state is lost or
    /// out of date; without it prune refuses, as a bucket writer may have repointed it
    #[arg(long)]
    pub force: bool,

    /// One JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct BackupArgs {
    /// Print the plan (what is due and why) and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Back up only this subvolume (by name, the last path component); repeatable
    #[arg(long = "subvolume", value_name = "NAME")]
    pub subvolumes: Vec<String>,

    /// Ignore the schedule: full if there is no usable parent, else incremental
    #[arg(long)]
    pub once: bool,

    /// Ignore the schedule and make a new full of each selected subvolume (the next
    /// incrementals build on it)
    #[arg(long, conflicts_with = "once")]
    pub full: bool,

    /// Create and prune snapshots without uploading anything (a local diagnostic)
    #[arg(long)]
    pub no_s3: bool,

    /// Discard any interrupted backup waiting to be resumed (abort its uploads, delete its
    /// snapshot and journal) and start a fresh one
    #[arg(long)]
    pub restart: bool,

    /// Cap the upload rate for this run: bytes per second, or with a unit ("20MiB"), or
    /// "off" (overrides s3.max_upload_rate and s3.upload_rate_schedule)
    #[arg(long, value_name = "RATE", value_parser = crate::ratelimit::parse_flag)]
    pub limit_upload: Option<crate::ratelimit::Cap>,
}

#[derive(Debug, Args, Clone)]
pub struct RestoreArgs {
    /// Name of the subvolume to restore (the last component of its configured path)
    #[arg(long, value_name = "NAME")]
    pub subvolume: String,

    /// Where the restored subvolume goes; must not exist yet. A relative path is taken
    /// under restore.target_base_dir
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,

    /// Restore this manifest (an S3 key) instead of the one current.json points to
    #[arg(long, value_name = "KEY")]
    pub manifest_key: Option<String>,

    /// With --manifest-key: restore that version of it, reading each parent and chunk
    /// at its oldest fitting version (a versioned bucket; see list --versions)
    #[arg(long, value_name = "V", requires = "manifest_key")]
    pub version_id: Option<String>,

    /// Give up waiting for archive restores after this many seconds
    /// (overrides restore.restore_timeout_seconds)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub restore_timeout: Option<u64>,

    /// Wait for archive-class (GLACIER, DEEP_ARCHIVE) chunks to become readable
    #[arg(long, conflicts_with = "no_wait_restore")]
    pub wait_restore: bool,

    /// Only request archive restores, then exit with code 3; rerun later
    #[arg(long)]
    pub no_wait_restore: bool,

    /// How to verify the result (overrides restore.verify_mode)
    #[arg(long, value_enum, value_name = "MODE")]
    pub verify: Option<VerifyArg>,

    /// Restore even when the target filesystem has less free space than the estimate
    /// (the stream sizes; well-compressing data may need less)
    #[arg(long)]
    pub skip_space_check: bool,

    /// Decrypt an encrypted backup with the age identities in FILE (repeatable; overrides
    /// encryption.identity_files). Refused if group or others may read it
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<std::path::PathBuf>,

    /// Cap the download rate for this run: bytes per second, or with a unit ("50MiB"), or
    /// "off" (overrides s3.max_download_rate and s3.download_rate_schedule)
    #[arg(long, value_name = "RATE", value_parser = crate::ratelimit::parse_flag)]
    pub limit_download: Option<crate::ratelimit::Cap>,

    /// Archive restore tier for GLACIER and DEEP_ARCHIVE chunks (overrides
    /// restore.restore_tier)
    #[arg(long, value_enum, value_name = "TIER", ignore_case = true)]
    pub restore_tier: Option<TierArg>,

    /// Only show what the restore would read, thaw and cost (AWS us-east-1 list prices)
    /// and the space it needs: reads manifests and HEADs chunks, requests and downloads
    /// nothing, takes no lock
    #[arg(long)]
    pub plan: bool,

    /// With --plan: one JSON document on stdout
    #[arg(long, requires = "plan")]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TierArg {
    Standard,
    Bulk,
    Expedited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevelArg {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    Full,
    Sample,
    None,
}

impl RestoreArgs {
    /// `Some(true)` for --wait-restore, `Some(false)` for --no-wait-restore.
    pub fn wait_override(&self) -> Option<bool> {
        match (self.wait_restore, self.no_wait_restore) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("btrfs_to_s3").chain(args.iter().copied()))
    }

    #[test]
    fn backup_every_flag() {
        let cli = parse(&[
            "backup",
            "--config",
            "/etc/c.toml",
            "--log-level",
            "debug",
            "--dry-run",
            "--subvolume",
            "a",
            "--subvolume",
            "b",
            "--once",
            "--no-s3",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/c.toml")));
        assert_eq!(cli.log_level, Some(LogLevelArg::Debug));
        let Command::Backup(b) = cli.command else {
            panic!("not backup")
        };
        assert!(b.dry_run && b.once && b.no_s3);
        assert_eq!(b.subvolumes, vec!["a", "b"]);
    }

    #[test]
    fn globals_before_subcommand() {
        let cli = parse(&["--config", "/c", "--log-level", "WARNING", "backup"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/c")));
        assert_eq!(cli.log_level, Some(LogLevelArg::Warning));
        let Command::Backup(b) = cli.command else {
            panic!("not backup")
        };
        assert!(!b.dry_run && !b.once && !b.no_s3 && b.subvolumes.is_empty());
    }

    #[test]
    fn restore_every_flag() {
        let cli = parse(&[
            "restore",
            "--config",
            "/c",
            "--subvolume",
            "data",
            "--target",
            "/srv/restore/data",
            "--manifest-key",
            "p/subvol/data/full/manifest-20250101T020000Z.json",
            "--restore-timeout",
            "60",
            "--no-wait-restore",
            "--verify",
            "sample",
            "--log-level",
            "error",
        ])
        .unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(r.subvolume, "data");
        assert_eq!(r.target, PathBuf::from("/srv/restore/data"));
        assert_eq!(
            r.manifest_key.as_deref(),
            Some("p/subvol/data/full/manifest-20250101T020000Z.json")
        );
        assert_eq!(r.restore_timeout, Some(60));
        assert_eq!(r.wait_override(), Some(false));
        assert_eq!(r.verify, Some(VerifyArg::Sample));
        assert_eq!(cli.log_level, Some(LogLevelArg::Error));

        let cli = parse(&[
            "restore",
            "--subvolume",
            "d",
            "--target",
            "/t",
            "--wait-restore",
        ])
        .unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(r.wait_override(), Some(true));
        assert_eq!(r.verify, None);
        let cli = parse(&["restore", "--subvolume", "d", "--target", "/t"]).unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(r.wait_override(), None);
        assert!(!r.plan && !r.json && r.restore_tier.is_none());
        let cli = parse(&[
            "restore",
            "--subvolume",
            "d",
            "--target",
            "/t",
            "--plan",
            "--json",
            "--restore-tier",
            "Bulk",
        ])
        .unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("not restore")
        };
        assert!(r.plan && r.json);
        assert_eq!(r.restore_tier, Some(TierArg::Bulk));
        // --json is for the plan only; tiers are the three S3 has.
        for bad in [
            &["restore", "--subvolume", "d", "--target", "/t", "--json"][..],
            &[
                "restore",
                "--subvolume",
                "d",
                "--target",
                "/t",
                "--restore-tier",
                "fast",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["restore", "--subvolume", "d"][..],
            &["restore", "--target", "/t"],
            &[
                "restore",
                "--subvolume",
                "d",
                "--target",
                "/t",
                "--wait-restore",
                "--no-wait-restore",
            ],
            &[
                "restore",
                "--subvolume",
                "d",
                "--target",
                "/t",
                "--restore-timeout",
                "0",
            ],
            &[
                "restore",
                "--subvolume",
                "d",
                "--target",
                "/t",
                "--verify",
                "quick",
            ],
            &["backup", "--log-level", "loud"],
            &["backup", "--bogus"],
            &["frobnicate"],
            &[],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
