//! The TOML config of the contract (DESIGN.md, "Formats") turned into a validated [`Config`]: every key, every
//! default, `~` expansion, range checks, and an error naming the key for anything wrong.
//! CLI overrides are applied by `app`, not here; nothing here touches btrfs or S3.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// Smallest part S3 accepts (except for the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * GIB;
/// Default part size (extension key `s3.part_size_bytes`).
pub const DEFAULT_PART_SIZE: u64 = 16 * MIB;

/// Storage classes S3 knows (the AWS list).
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
];

/// Upper bounds checked at validation, so that arithmetic on config values cannot
/// overflow and the memory bound stays reasonable (DESIGN.md, "Config schema").
pub mod limits {
    use super::GIB;
    /// Day counts: 100 years; `days × 86400` fits an `i64` many times over.
    pub const MAX_DAYS: u64 = 36_500;
    /// Snapshots kept per subvolume.
    pub const MAX_RETAIN: u64 = 10_000;
    /// S3's largest object: 5 TiB.
    pub const MAX_CHUNK_SIZE: u64 = 5 * 1024 * GIB;
    /// The smallest chunk: 1 MiB (what the reference harness uses). A lost digit must
    /// not turn a 5 TiB backup into billions of objects.
    pub const MIN_CHUNK_SIZE: u64 = super::MIB;
    /// Uploader (and downloader) threads.
    pub const MAX_CONCURRENCY: u64 = 64;
    /// Part buffers held in memory, `(concurrency + 1) × part size`, without a spool.
    pub const MAX_BUFFER_BYTES: u64 = 8 * GIB;
    /// Spool: 1 PiB.
    pub const MAX_SPOOL_BYTES: u64 = 1024 * 1024 * GIB;
    /// Files hashed in sample verification.
    pub const MAX_SAMPLE_FILES: u64 = 1_000_000_000;
    /// Waiting for archive restores: 30 days (Bulk from DEEP_ARCHIVE takes up to 48 h).
    pub const MAX_RESTORE_TIMEOUT_SECONDS: u64 = 30 * 86_400;
    /// Waiting out a network outage: 7 days.
    pub const MAX_OUTAGE_PATIENCE_SECONDS: u64 = 7 * 86_400;
    /// The default outage patience: 4 hours.
    pub const DEFAULT_OUTAGE_PATIENCE_SECONDS: u64 = 4 * 3600;
}

/// Server-side encryption values S3 accepts in `x-amz-server-side-encryption`.
/// `none` (extension) sends no SSE header.
pub const SSE_VALUES: &[&str] = &["AES256", "aws:kms", "aws:kms:dsse", "none"];

/// A config problem: exit code 2, and the message names the key and the bad value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    pub const NAMES: &'static [&'static str] = &["debug", "info", "warning", "error", "critical"];

    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            _ => return None,
        })
    }

    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Error | LogLevel::Critical => log::LevelFilter::Error,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    Full,
    Sample,
    None,
}

impl VerifyMode {
    pub const NAMES: &'static [&'static str] = &["full", "sample", "none"];

    pub fn parse(s: &str) -> Option<VerifyMode> {
        Some(match s {
            "full" => VerifyMode::Full,
            "sample" => VerifyMode::Sample,
            "none" => VerifyMode::None,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTier {
    Standard,
    Bulk,
    Expedited,
}

impl RestoreTier {
    pub const NAMES: &'static [&'static str] = &["Standard", "Bulk", "Expedited"];

    pub fn parse(s: &str) -> Option<RestoreTier> {
        Some(match s {
            "Standard" => RestoreTier::Standard,
            "Bulk" => RestoreTier::Bulk,
            "Expedited" => RestoreTier::Expedited,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RestoreTier::Standard => "Standard",
            RestoreTier::Bulk => "Bulk",
            RestoreTier::Expedited => "Expedited",
        }
    }
}

/// `s3.send_compressed_data` (extension): send compressed extents as they are on disk
/// (`btrfs send --proto 2 --compressed-data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendCompressed {
    /// When the kernel and btrfs-progs support it (detected once per run).
    Auto,
    /// Always; a run fails when it is not supported.
    On,
    /// Never: protocol 1, as the earlier tool.
    Off,
}

#[derive(Clone, Debug)]
pub struct Global {
    pub log_level: LogLevel,
    pub state_path: PathBuf,
    pub lock_path: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_size_bytes: u64,
    /// Extension: Prometheus textfile written after each backup run.
    pub metrics_path: Option<PathBuf>,
    /// Extension: seconds between `backup_progress` / `restore_progress` log lines.
    pub progress_interval_seconds: u64,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub full_every_days: u64,
    pub incremental_every_days: u64,
    /// `(hour, minute)`; informational for the timer, validated here.
    pub run_at: (u8, u8),
}

#[derive(Clone, Debug)]
pub struct Snapshots {
    pub base_dir: PathBuf,
    pub retain: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subvolume {
    /// Last path component; names the subvolume in S3 keys, snapshots and state.
    pub name: String,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct S3 {
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub chunk_size_bytes: u64,
    pub storage_class_chunks: String,
    pub storage_class_manifest: String,
    pub concurrency: usize,
    pub spool_enabled: bool,
    pub sse: String,
    /// Extension: custom endpoint (config, else `AWS_ENDPOINT_URL_S3`, else
    /// `AWS_ENDPOINT_URL`); a custom endpoint uses path-style addressing.
    pub endpoint_url: Option<String>,
    /// Extension: multipart part size before the automatic raise for 10,000 parts.
    pub part_size_bytes: u64,
    /// Extension: `auto` (default), `true` or `false`.
    pub send_compressed_data: SendCompressed,
    /// Extension: how long a backup or restore waits for a network that stopped answering
    /// (probing it) before it gives up; 0: the bounded retries only.
    pub outage_patience_seconds: u64,
    /// Extension: the KMS key for `sse = "aws:kms"` / `"aws:kms:dsse"`.
    pub sse_kms_key_id: Option<String>,
    /// Extension: the `x-amz-checksum-*` every upload carries for the service to check:
    /// `crc32c` (default), `sha256` or `none`.
    pub checksum: String,
}

/// Extension section `[retention]`: what `prune` keeps in S3.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Generations (a full and its incrementals) kept, counting the current one.
    pub remote_generations: usize,
    /// Run `prune` after each successful backup.
    pub prune_after_backup: bool,
}

/// Extension section `[object_lock]`: S3 Object Lock on every chunk and manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE` (`x-amz-object-lock-mode`).
    pub mode: String,
    /// Days each backup's objects stay locked at least (the chain's parents as long).
    pub retain_days: u64,
}

#[derive(Clone, Debug)]
pub struct Restore {
    pub target_base_dir: PathBuf,
    pub verify_mode: VerifyMode,
    pub sample_max_files: u64,
    pub wait_for_restore: bool,
    pub restore_timeout_seconds: u64,
    pub restore_tier: RestoreTier,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub global: Global,
    pub schedule: Schedule,
    pub snapshots: Snapshots,
    pub subvolumes: Vec<Subvolume>,
    pub s3: S3,
    pub restore: Restore,
    pub retention: Retention,
    /// Extension: absent means no Object Lock headers at all (as before).
    pub object_lock: Option<ObjectLock>,
    pub encryption: Encryption,
}

/// Every section and key the config may hold; anything else is an error naming it.
pub const SCHEMA: &[(&str, &[&str])] = &[
    (
        "global",
        &[
            "log_level",
            "state_path",
            "lock_path",
            "spool_dir",
            "spool_size_bytes",
            "metrics_path",
            "progress_interval_seconds",
        ],
    ),
    (
        "schedule",
        &["full_every_days", "incremental_every_days", "run_at"],
    ),
    ("snapshots", &["base_dir", "retain"]),
    ("subvolumes", &["paths"]),
    (
        "s3",
        &[
            "bucket",
            "region",
            "prefix",
            "chunk_size_bytes",
            "storage_class_chunks",
            "storage_class_manifest",
            "concurrency",
            "spool_enabled",
            "sse",
            "endpoint_url",
            "part_size_bytes",
            "send_compressed_data",
            "outage_patience_seconds",
            "sse_kms_key_id",
            "checksum",
        ],
    ),
    (
        "restore",
        &[
            "target_base_dir",
            "verify_mode",
            "sample_max_files",
            "wait_for_restore",
            "restore_timeout_seconds",
            "restore_tier",
        ],
    ),
    ("retention", &["remote_generations", "prune_after_backup"]),
    ("object_lock", &["mode", "retain_days"]),
    (
        "encryption",
        &["recipients", "recipients_file", "identity_files"],
    ),
];

/// The environment a config is resolved in: `HOME` for `~` and the endpoint variables.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    /// For the commands that act on the configured subvolumes: `subvolumes.paths` must be
    /// there (a config with only `[s3]` serves restore, list and verify).
    pub fn require_subvolumes(&self, command: &str) -> Result<(), ConfigError> {
        if self.subvolumes.is_empty() {
            return err(format!(
                "subvolumes.paths is required for {command} but missing: add [subvolumes] \
                 paths = [\"/data\"] (restore, list and verify run without it)"
            ));
        }
        Ok(())
    }

    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                return err(format!(
                    "cannot read config file {}: {e} (pass an existing file with --config)",
                    path.display()
                ))
            }
        };
        Config::parse(&text, env)
            .map_err(|e| ConfigError(format!("config {}: {}", path.display(), e.0)))
    }

    /// Validates TOML text.
    pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let doc: toml::Table = match text.parse() {
            Ok(d) => d,
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                return err(format!("not valid TOML: {}", msg.trim()));
            }
        };
        check_known_keys(&doc)?;
        let r = Reader { doc: &doc, env };

        let global = Global {
            log_level: r.log_level("global", "log_level", "info")?,
            state_path: r.path(
                "global",
                "state_path",
                Some("~/.local/state/btrfs_to_s3/state.json"),
            )?,
            lock_path: r.path("global", "lock_path", Some("/var/lock/btrfs_to_s3.lock"))?,
            spool_dir: r.path("global", "spool_dir", Some("/mnt/ssd/btrfs_to_s3_spool"))?,
            spool_size_bytes: r.bounded(
                "global",
                "spool_size_bytes",
                200 * GIB,
                limits::MAX_SPOOL_BYTES,
            )?,
            metrics_path: r.opt_path("global", "metrics_path")?,
            progress_interval_seconds: r.bounded(
                "global",
                "progress_interval_seconds",
                60,
                limits::MAX_DAYS * 86_400,
            )?,
        };
        let schedule = Schedule {
            full_every_days: r.bounded("schedule", "full_every_days", 180, limits::MAX_DAYS)?,
            incremental_every_days: r.bounded(
                "schedule",
                "incremental_every_days",
                7,
                limits::MAX_DAYS,
            )?,
            run_at: r.run_at("schedule", "run_at", "02:00")?,
        };
        let snapshots = Snapshots {
            base_dir: r.path("snapshots", "base_dir", Some("/srv/snapshots"))?,
            retain: r.bounded("snapshots", "retain", 2, limits::MAX_RETAIN)? as usize,
        };
        let subvolumes = r.subvolumes()?;
        let s3 = S3 {
            bucket: r.bucket()?,
            region: r.region()?,
            prefix: r.prefix()?,
            chunk_size_bytes: r.chunk_size()?,
            storage_class_chunks: r.one_of(
                "s3",
                "storage_class_chunks",
                "DEEP_ARCHIVE",
                STORAGE_CLASSES,
            )?,
            storage_class_manifest: r.one_of(
                "s3",
                "storage_class_manifest",
                "STANDARD",
                STORAGE_CLASSES,
            )?,
            concurrency: r.bounded("s3", "concurrency", 4, limits::MAX_CONCURRENCY)? as usize,
            spool_enabled: r.boolean("s3", "spool_enabled", false)?,
            sse: r.one_of("s3", "sse", "AES256", SSE_VALUES)?,
            endpoint_url: r.endpoint()?,
            part_size_bytes: r.part_size()?,
            send_compressed_data: r.send_compressed()?,
            outage_patience_seconds: r.outage_patience()?,
            sse_kms_key_id: r.kms_key_id()?,
            checksum: r.one_of("s3", "checksum", "crc32c", &["crc32c", "sha256", "none"])?,
        };
        check_buffer_bound(&s3)?;
        let restore = Restore {
            target_base_dir: r.path("restore", "target_base_dir", Some("/srv/restore"))?,
            verify_mode: {
                let v = r.one_of("restore", "verify_mode", "full", VerifyMode::NAMES)?;
                VerifyMode::parse(&v).unwrap_or(VerifyMode::Full)
            },
            sample_max_files: r.bounded(
                "restore",
                "sample_max_files",
                1000,
                limits::MAX_SAMPLE_FILES,
            )?,
            wait_for_restore: r.boolean("restore", "wait_for_restore", true)?,
            restore_timeout_seconds: r.bounded(
                "restore",
                "restore_timeout_seconds",
                259_200,
                limits::MAX_RESTORE_TIMEOUT_SECONDS,
            )?,
            restore_tier: {
                let v = r.one_of("restore", "restore_tier", "Standard", RestoreTier::NAMES)?;
                RestoreTier::parse(&v).unwrap_or(RestoreTier::Standard)
            },
        };
        let retention = Retention {
            remote_generations: r.bounded(
                "retention",
                "remote_generations",
                1,
                limits::MAX_RETAIN,
            )? as usize,
            prune_after_backup: r.boolean("retention", "prune_after_backup", false)?,
        };
        let object_lock = r.object_lock(&s3)?;
        let encryption = r.encryption()?;
        encryption::check_chunk_size(&s3, &encryption)?;
        Ok(Config {
            object_lock,
            encryption,
            retention,
            global,
            schedule,
            snapshots,
            subvolumes,
            s3,
            restore,
        })
    }
}

/// Without a spool, `(concurrency + 1)` part buffers live in memory: refuse a config
/// whose buffers alone would exceed [`limits::MAX_BUFFER_BYTES`].
fn check_buffer_bound(s3: &S3) -> Result<(), ConfigError> {
    if s3.spool_enabled {
        return Ok(());
    }
    let part = crate::pipeline::effective_part_size(s3.part_size_bytes, s3.chunk_size_bytes)
        .unwrap_or(MAX_PART_SIZE);
    let buffers = (s3.concurrency as u64 + 1).saturating_mul(part);
    if buffers > limits::MAX_BUFFER_BYTES {
        return err(format!(
            "s3.concurrency = {}: with parts of {part} bytes the upload buffers would need {buffers} bytes of memory \
             (more than {} GiB); lower s3.concurrency or s3.part_size_bytes, or set s3.spool_enabled = true",
            s3.concurrency,
            limits::MAX_BUFFER_BYTES / GIB
        ));
    }
    Ok(())
}

/// Why a key prefix is refused, if it is: a leading `/`, or an empty, `.` or `..`
/// segment (URL handling would collapse those and the keys would land elsewhere).
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return None;
    }
    if p.starts_with('/') {
        return Some("must not start with /");
    }
    for seg in p.split('/') {
        match seg {
            "" => return Some("must not contain an empty segment (//)"),
            "." | ".." => return Some("must not contain . or .. segments"),
            _ => {}
        }
    }
    if p.chars().any(|c| c.is_control()) {
        return Some("must not contain control characters");
    }
    None
}

fn check_known_keys(doc: &toml::Table) -> Result<(), ConfigError> {
    for (section, value) in doc {
        let Some((_, keys)) = SCHEMA.iter().find(|(s, _)| s == section) else {
            let known: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
            return err(format!(
                "unknown section [{section}] (known sections: {})",
                known.join(", ")
            ));
        };
        let Some(table) = value.as_table() else {
            return err(format!("{section} must be a table ([{section}])"));
        };
        for key in table.keys() {
            if !keys.contains(&key.as_str()) {
                return err(format!(
                    "unknown key {section}.{key} (known keys in [{section}]: {}); check the spelling",
                    keys.join(", ")
                ));
            }
        }
    }
    Ok(())
}

struct Reader<'a> {
    doc: &'a toml::Table,
    env: &'a dyn Env,
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

impl Reader<'_> {
    fn get(&self, section: &str, key: &str) -> Option<&toml::Value> {
        self.doc.get(section)?.as_table()?.get(key)
    }

    fn string(
        &self,
        section: &str,
        key: &str,
        default: Option<&str>,
    ) -> Result<String, ConfigError> {
        match self.get(section, key) {
            Some(toml::Value::String(s)) => Ok(s.clone()),
            Some(v) => err(format!(
                "{section}.{key} = {v}: must be a string, not a {}",
                type_name(v)
            )),
            None => match default {
                Some(d) => Ok(d.to_string()),
                None => err(format!(
                    "{section}.{key} is required but missing: add it under [{section}]"
                )),
            },
        }
    }

    fn required_str(&self, section: &str, key: &str) -> Result<String, ConfigError> {
        self.string(section, key, None)
    }

    fn one_of(
        &self,
        section: &str,
        key: &str,
        default: &str,
        allowed: &[&str],
    ) -> Result<String, ConfigError> {
        let v = self.string(section, key, Some(default))?;
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            err(format!(
                "{section}.{key} = {v:?}: must be one of {}",
                allowed.join(", ")
            ))
        }
    }

    fn log_level(&self, section: &str, key: &str, default: &str) -> Result<LogLevel, ConfigError> {
        let v = self.string(section, key, Some(default))?;
        LogLevel::parse(&v).map_or_else(
            || {
                err(format!(
                    "{section}.{key} = {v:?}: must be one of {}",
                    LogLevel::NAMES.join(", ")
                ))
            },
            Ok,
        )
    }

    fn boolean(&self, section: &str, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(section, key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(v) => err(format!(
                "{section}.{key} = {v}: must be true or false, not a {}",
                type_name(v)
            )),
        }
    }

    /// A whole number in `1..=max`.
    fn bounded(
        &self,
        section: &str,
        key: &str,
        default: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let v = self.positive(section, key, default)?;
        if v > max {
            return err(format!("{section}.{key} = {v}: must be at most {max}"));
        }
        Ok(v)
    }

    /// `s3.bucket`: the characters of a bucket name (S3's, with upper case and `_`
    /// tolerated for S3-compatible servers); it names the URL's host or first path
    /// segment, so nothing that could change the URL's shape gets through.
    fn bucket(&self) -> Result<String, ConfigError> {
        let b = self.required_str("s3", "bucket")?;
        if b.is_empty() {
            return err("s3.bucket = \"\": must name a bucket");
        }
        let ok_chars = b
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if b.len() > 255 || !ok_chars || b.contains("..") || b.starts_with('.') {
            return err(format!(
                "s3.bucket = {b:?}: not a bucket name (letters, digits, '.', '-' or '_', no '..')"
            ));
        }
        Ok(b)
    }

    /// `s3.region`: part of the AWS host name and of every signature.
    fn region(&self) -> Result<String, ConfigError> {
        let r = self.required_str("s3", "region")?;
        if r.is_empty() {
            return err("s3.region = \"\": must name a region (e.g. \"us-east-1\")");
        }
        let ok = r.len() <= 64
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return err(format!(
                "s3.region = {r:?}: not a region name (letters, digits and '-', e.g. \"eu-west-1\")"
            ));
        }
        Ok(r)
    }

    /// `s3.prefix`: the root of every key; see [`prefix_problem`].
    fn prefix(&self) -> Result<String, ConfigError> {
        let p = self.string("s3", "prefix", None)?;
        if let Some(why) = prefix_problem(&p) {
            return err(format!(
                "s3.prefix = {p:?}: {why}; use plain segments such as \"backups/host1\""
            ));
        }
        Ok(p)
    }

    /// `s3.outage_patience_seconds`: a whole number of seconds, 0 (no waiting) up to
    /// [`limits::MAX_OUTAGE_PATIENCE_SECONDS`].
    fn outage_patience(&self) -> Result<u64, ConfigError> {
        let max = limits::MAX_OUTAGE_PATIENCE_SECONDS;
        match self.get("s3", "outage_patience_seconds") {
            None => Ok(limits::DEFAULT_OUTAGE_PATIENCE_SECONDS),
            Some(toml::Value::Integer(i)) if (0..=max as i64).contains(i) => Ok(*i as u64),
            Some(v) => err(format!(
                "s3.outage_patience_seconds = {v}: must be a whole number of seconds from 0 \
                 (give up after the bounded retries) to {max} (7 days); the default is {} (4 hours)",
                limits::DEFAULT_OUTAGE_PATIENCE_SECONDS
            )),
        }
    }

    fn positive(&self, section: &str, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(section, key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) if *i > 0 => Ok(*i as u64),
            Some(toml::Value::Integer(i)) => {
                err(format!("{section}.{key} = {i}: must be greater than 0"))
            }
            // Sizes (`*_bytes`) may carry a unit.
            Some(toml::Value::String(t)) if key.ends_with("_bytes") => {
                match crate::size::parse(t) {
                    Ok(0) => err(format!("{section}.{key} = {t:?}: must be greater than 0")),
                    Ok(n) => Ok(n),
                    Err(why) => err(format!(
                        "{section}.{key} = {t:?}: {why}; write {}",
                        crate::size::FORMS
                    )),
                }
            }
            Some(v) => err(format!(
                "{section}.{key} = {v}: must be a whole number greater than 0, not a {}",
                type_name(v)
            )),
        }
    }

    fn expand(&self, section: &str, key: &str, raw: &str) -> Result<PathBuf, ConfigError> {
        let expanded = if raw == "~" || raw.starts_with("~/") {
            let Some(home) = self.env.var("HOME") else {
                return err(format!(
                    "{section}.{key} = {raw:?}: cannot expand ~ because HOME is not set; use an absolute path"
                ));
            };
            format!("{}{}", home.trim_end_matches('/'), &raw[1..])
        } else {
            raw.to_string()
        };
        let p = PathBuf::from(&expanded);
        if !p.is_absolute() {
            return err(format!(
                "{section}.{key} = {raw:?}: must be an absolute path (start with / or ~/)"
            ));
        }
        Ok(p)
    }

    fn path(
        &self,
        section: &str,
        key: &str,
        default: Option<&str>,
    ) -> Result<PathBuf, ConfigError> {
        let raw = self.string(section, key, default)?;
        self.expand(section, key, &raw)
    }

    fn opt_path(&self, section: &str, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        match self.get(section, key) {
            None => Ok(None),
            Some(_) => self.path(section, key, None).map(Some),
        }
    }

    fn run_at(&self, section: &str, key: &str, default: &str) -> Result<(u8, u8), ConfigError> {
        let v = self.string(section, key, Some(default))?;
        parse_hhmm(&v).map_or_else(
            || {
                err(format!(
                    "{section}.{key} = {v:?}: must be a 24-hour time HH:MM between 00:00 and 23:59"
                ))
            },
            Ok,
        )
    }

    fn subvolumes(&self) -> Result<Vec<Subvolume>, ConfigError> {
        // Absent: a disaster-recovery config (restore, list, verify); `backup` and a
        // `prune` without --subvolume refuse it (`Config::require_subvolumes`).
        let Some(v) = self.get("subvolumes", "paths") else {
            return Ok(Vec::new());
        };
        let Some(arr) = v.as_array() else {
            return err(format!(
                "subvolumes.paths = {v}: must be a list of absolute paths"
            ));
        };
        if arr.is_empty() {
            return err("subvolumes.paths = []: list at least one subvolume path");
        }
        let mut out: Vec<Subvolume> = Vec::new();
        let mut names = BTreeSet::new();
        for item in arr {
            let Some(raw) = item.as_str() else {
                return err(format!(
                    "subvolumes.paths: entry {item} must be a string path"
                ));
            };
            let path = self.expand("subvolumes", "paths", raw)?;
            let name = subvolume_name(&path).ok_or_else(|| {
                ConfigError(format!(
                    "subvolumes.paths: {raw:?} has no usable last path component to name it"
                ))
            })?;
            if !names.insert(name.clone()) {
                return err(format!(
                    "subvolumes.paths: two paths share the name {name:?} (the last path component names a subvolume in S3 and must be unique)"
                ));
            }
            out.push(Subvolume { name, path });
        }
        Ok(out)
    }

    fn endpoint(&self) -> Result<Option<String>, ConfigError> {
        let (value, source) = match self.get("s3", "endpoint_url") {
            Some(_) => (self.string("s3", "endpoint_url", None)?, "s3.endpoint_url"),
            None => match self.env.var("AWS_ENDPOINT_URL_S3") {
                Some(v) => (v, "AWS_ENDPOINT_URL_S3"),
                None => match self.env.var("AWS_ENDPOINT_URL") {
                    Some(v) => (v, "AWS_ENDPOINT_URL"),
                    None => return Ok(None),
                },
            },
        };
        let rest = value
            .strip_prefix("http://")
            .or_else(|| value.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => {
                Ok(Some(value.trim_end_matches('/').to_string()))
            }
            _ => err(format!(
                "{source} = {value:?}: must be an http:// or https:// URL with a host"
            )),
        }
    }

    fn kms_key_id(&self) -> Result<Option<String>, ConfigError> {
        if self.get("s3", "sse_kms_key_id").is_none() {
            return Ok(None);
        }
        let k = self.string("s3", "sse_kms_key_id", None)?;
        let sse = self.string("s3", "sse", Some("AES256"))?;
        if !sse.starts_with("aws:kms") {
            return err(format!(
                "s3.sse_kms_key_id is set but s3.sse = {sse:?}: set s3.sse = \"aws:kms\" (or \"aws:kms:dsse\"), or remove the key id"
            ));
        }
        let ok = !k.is_empty()
            && k.len() <= 2048
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '-' | '_'));
        if !ok {
            return err(format!(
                "s3.sse_kms_key_id = {k:?}: not a KMS key id, alias or ARN (letters, digits, ':', '/', '-', '_')"
            ));
        }
        Ok(Some(k))
    }

    fn send_compressed(&self) -> Result<SendCompressed, ConfigError> {
        match self.get("s3", "send_compressed_data") {
            None => Ok(SendCompressed::Auto),
            Some(toml::Value::Boolean(true)) => Ok(SendCompressed::On),
            Some(toml::Value::Boolean(false)) => Ok(SendCompressed::Off),
            Some(toml::Value::String(v)) if v == "auto" => Ok(SendCompressed::Auto),
            Some(v) => err(format!(
                "s3.send_compressed_data = {v}: must be \"auto\", true or false"
            )),
        }
    }

    /// `[object_lock]`: both keys required when the section is there; locked uploads need
    /// a checksum header, so `s3.checksum = "none"` is refused with it.
    fn object_lock(&self, s3: &S3) -> Result<Option<ObjectLock>, ConfigError> {
        if self.doc.get("object_lock").is_none() {
            return Ok(None);
        }
        if self.get("object_lock", "mode").is_none() {
            return err(
                "object_lock.mode is required with [object_lock]: \"GOVERNANCE\" or \"COMPLIANCE\"",
            );
        }
        let mode = self.one_of("object_lock", "mode", "", &["GOVERNANCE", "COMPLIANCE"])?;
        if self.get("object_lock", "retain_days").is_none() {
            return err("object_lock.retain_days is required with [object_lock]: the days each backup stays locked (e.g. 200 for a full every 180 days)");
        }
        let retain_days = self.bounded("object_lock", "retain_days", 1, limits::MAX_DAYS)?;
        if s3.checksum == "none" {
            return err("s3.checksum = \"none\" with [object_lock]: S3 accepts a locked upload only with a checksum header; set s3.checksum = \"crc32c\" (the default) or \"sha256\"");
        }
        Ok(Some(ObjectLock { mode, retain_days }))
    }

    fn chunk_size(&self) -> Result<u64, ConfigError> {
        let v = self.bounded("s3", "chunk_size_bytes", 200 * GIB, limits::MAX_CHUNK_SIZE)?;
        if v < limits::MIN_CHUNK_SIZE {
            return err(format!(
                "s3.chunk_size_bytes = {v}: must be at least {} (1 MiB): every chunk is an \
                 object, and a chunk this small makes millions of them for a large backup \
                 (the default is 214748364800, 200 GiB)",
                limits::MIN_CHUNK_SIZE
            ));
        }
        Ok(v)
    }

    fn part_size(&self) -> Result<u64, ConfigError> {
        let v = self.positive("s3", "part_size_bytes", DEFAULT_PART_SIZE)?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&v) {
            return err(format!(
                "s3.part_size_bytes = {v}: must be between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} (5 GiB), the limits of S3 multipart uploads"
            ));
        }
        Ok(v)
    }
}

fn parse_hhmm(v: &str) -> Option<(u8, u8)> {
    let (h, m) = v.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

/// The name of a subvolume: its last path component.
pub fn subvolume_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests;

mod encryption;
pub use encryption::Encryption;
