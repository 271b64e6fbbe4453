//! The TOML config of the contract (DESIGN.md, "Formats") turned into a validated [`Config`]
//! of typed values: serde reads the file into one struct per section (config/file.rs, the
//! schema; config/value.rs, the value types), then [`Config::parse`] applies the defaults,
//! `~` expansion, the environment and the rules between keys. Every error names the key.
//! CLI overrides are applied by `app`, not here; nothing here touches btrfs or S3.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// S3's part-size limits (smallest but for an upload's last part, largest): `parts`'.
pub use crate::parts::{MAX_PART_SIZE, MIN_PART_SIZE};
/// Default part size (extension key `s3.part_size_bytes`).
pub const DEFAULT_PART_SIZE: u64 = 16 * MIB;

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

/// A config problem: exit code 2, and the message names the key and the bad value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A config problem ends a command with exit code 2: nothing was done.
impl From<ConfigError> for crate::exit::Failure {
    fn from(e: ConfigError) -> Self {
        crate::exit::Failure::Usage(e.into())
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// An enum setting spelled as one of fixed strings: `NAMES` (in the order messages list
/// them), `parse`, `as_str` and `Display` (the spelling), and reading from the config.
macro_rules! spelled {
    ($(#[$m:meta])* pub enum $name:ident {
        $($(#[$vm:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
        #[serde(try_from = "toml::Value")]
        pub enum $name {
            $($(#[$vm])* $variant,)+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<toml::Value> for $name {
            type Error = String;
            fn try_from(v: toml::Value) -> Result<Self, String> {
                value::one_of(v, Self::NAMES, Self::parse)
            }
        }
    };
}

spelled! {
    /// A storage class S3 knows (the AWS list): `s3.storage_class_chunks`,
    /// `s3.storage_class_manifest`.
    pub enum StorageClass {
        Standard = "STANDARD",
        ReducedRedundancy = "REDUCED_REDUNDANCY",
        StandardIa = "STANDARD_IA",
        OnezoneIa = "ONEZONE_IA",
        IntelligentTiering = "INTELLIGENT_TIERING",
        Glacier = "GLACIER",
        DeepArchive = "DEEP_ARCHIVE",
        Outposts = "OUTPOSTS",
        GlacierIr = "GLACIER_IR",
        Snow = "SNOW",
        ExpressOnezone = "EXPRESS_ONEZONE",
    }
}

/// Storage classes S3 knows (the AWS list).
pub const STORAGE_CLASSES: &[&str] = StorageClass::NAMES;

spelled! {
    /// `s3.sse`: the server-side encryption S3 applies (`x-amz-server-side-encryption`).
    pub enum Sse {
        Aes256 = "AES256",
        AwsKms = "aws:kms",
        AwsKmsDsse = "aws:kms:dsse",
        /// Extension: no SSE header at all.
        None = "none",
    }
}

/// Server-side encryption values S3 accepts in `x-amz-server-side-encryption`.
/// `none` (extension) sends no SSE header.
pub const SSE_VALUES: &[&str] = Sse::NAMES;

impl Sse {
    /// The `x-amz-server-side-encryption` value, or None when no header is sent.
    pub fn header_value(self) -> Option<&'static str> {
        (self != Sse::None).then_some(self.as_str())
    }

    /// SSE with a KMS key (`s3.sse_kms_key_id` applies).
    pub fn uses_kms(self) -> bool {
        matches!(self, Sse::AwsKms | Sse::AwsKmsDsse)
    }
}

spelled! {
    /// `s3.checksum` (extension): the `x-amz-checksum-*` every upload carries for the
    /// service to check. Its wire forms are store/checksum.rs's.
    #[derive(Default)]
    pub enum Checksum {
        #[default]
        Crc32c = "crc32c",
        Sha256 = "sha256",
        None = "none",
    }
}

spelled! {
    /// `object_lock.mode` (`x-amz-object-lock-mode`).
    pub enum LockMode {
        Governance = "GOVERNANCE",
        Compliance = "COMPLIANCE",
    }
}

spelled! {
    /// `restore.verify_mode`.
    pub enum VerifyMode {
        Full = "full",
        Sample = "sample",
        None = "none",
    }
}

spelled! {
    /// `restore.restore_tier`: the RestoreObject tier of archive-class chunks.
    pub enum RestoreTier {
        Standard = "Standard",
        Bulk = "Bulk",
        Expedited = "Expedited",
    }
}

/// `global.log_level`; any case, and `warn` for `warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "toml::Value")]
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

impl TryFrom<toml::Value> for LogLevel {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        value::one_of(v, Self::NAMES, Self::parse)
    }
}

/// `s3.send_compressed_data` (extension): send compressed extents as they are on disk
/// (`btrfs send --proto 2 --compressed-data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum SendCompressed {
    /// When the kernel and btrfs-progs support it (detected once per run).
    Auto,
    /// Always; a run fails when it is not supported.
    On,
    /// Never: protocol 1, as the earlier tool.
    Off,
}

impl TryFrom<toml::Value> for SendCompressed {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Boolean(true) => Ok(SendCompressed::On),
            toml::Value::Boolean(false) => Ok(SendCompressed::Off),
            toml::Value::String(s) if s == "auto" => Ok(SendCompressed::Auto),
            v => Err(format!(" = {v}: must be \"auto\", true or false")),
        }
    }
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
    pub storage_class_chunks: StorageClass,
    pub storage_class_manifest: StorageClass,
    pub concurrency: usize,
    pub spool_enabled: bool,
    pub sse: Sse,
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
    pub checksum: Checksum,
    /// Extension: `s3.max_upload_rate` or `s3.upload_rate_schedule` (off by default);
    /// `backup --limit-upload` replaces it for one run.
    pub upload_cap: crate::ratelimit::Cap,
    /// Extension: `s3.max_download_rate` or `s3.download_rate_schedule` (restore);
    /// `restore --limit-download` replaces it for one run.
    pub download_cap: crate::ratelimit::Cap,
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
    pub mode: LockMode,
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
    /// Extension `[notify]`: health-check pings of backup runs.
    pub notify: Notify,
}

/// Every section and key the config may hold (config/file.rs's structs); anything else
/// is an error naming it.
pub static SCHEMA: std::sync::LazyLock<Vec<(&'static str, &'static [&'static str])>> =
    std::sync::LazyLock::new(file::schema);

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

/// The most bytes a config file may hold (ours are a few KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of the config file at `path` (see [`Config::load`]).
fn read_config_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = crate::regular::open(path, false)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(
            "larger than 1 MiB, not a config file",
        ));
    }
    Ok(text)
}

impl Config {
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

    /// Reads and validates the file at `path`: a regular file of at most 1 MiB, opened
    /// without waiting (a FIFO or a device there is refused, not read forever).
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = match read_config_text(path) {
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

    /// Validates TOML text: serde reads it into the file's sections (each key checked
    /// alone), then the defaults, `~`, the environment and the rules between keys.
    pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let doc: toml::Table = match text.parse() {
            Ok(d) => d,
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                return err(format!("not valid TOML: {}", msg.trim()));
            }
        };
        let f = file::read(text, &doc)?;
        let path = |key: &str, raw: Option<value::Text>, default: &str| {
            expand(env, key, raw.as_ref().map_or(default, |t| t.0.as_str()))
        };

        let g = f.global;
        let global = Global {
            log_level: g.log_level.unwrap_or(LogLevel::Info),
            state_path: path(
                "global.state_path",
                g.state_path,
                "~/.local/state/btrfs_to_s3/state.json",
            )?,
            lock_path: path(
                "global.lock_path",
                g.lock_path,
                "/var/lock/btrfs_to_s3.lock",
            )?,
            spool_dir: path(
                "global.spool_dir",
                g.spool_dir,
                "/mnt/ssd/btrfs_to_s3_spool",
            )?,
            spool_size_bytes: g.spool_size_bytes.map_or(200 * GIB, |n| n.0),
            metrics_path: match g.metrics_path {
                Some(t) => Some(expand(env, "global.metrics_path", &t.0)?),
                None => None,
            },
            progress_interval_seconds: g.progress_interval_seconds.map_or(60, |n| n.0),
        };
        let schedule = Schedule {
            full_every_days: f.schedule.full_every_days.map_or(180, |n| n.0),
            incremental_every_days: f.schedule.incremental_every_days.map_or(7, |n| n.0),
            run_at: f.schedule.run_at.map_or((2, 0), |t| t.0),
        };
        let snapshots = Snapshots {
            base_dir: path("snapshots.base_dir", f.snapshots.base_dir, "/srv/snapshots")?,
            retain: f.snapshots.retain.map_or(2, |n| n.0) as usize,
        };
        let subvolumes = subvolumes(env, f.subvolumes.paths)?;
        let k = f.s3;
        let sse = k.sse.unwrap_or(Sse::Aes256);
        let s3 = S3 {
            bucket: bucket(required("s3", "bucket", k.bucket)?)?,
            region: region(required("s3", "region", k.region)?)?,
            prefix: prefix(required("s3", "prefix", k.prefix)?)?,
            chunk_size_bytes: chunk_size(k.chunk_size_bytes.map_or(200 * GIB, |n| n.0))?,
            storage_class_chunks: k.storage_class_chunks.unwrap_or(StorageClass::DeepArchive),
            storage_class_manifest: k.storage_class_manifest.unwrap_or(StorageClass::Standard),
            concurrency: k.concurrency.map_or(4, |n| n.0) as usize,
            spool_enabled: k.spool_enabled.is_some_and(|b| b.0),
            sse,
            endpoint_url: endpoint(env, k.endpoint_url)?,
            part_size_bytes: part_size(k.part_size_bytes.map_or(DEFAULT_PART_SIZE, |n| n.0))?,
            send_compressed_data: k.send_compressed_data.unwrap_or(SendCompressed::Auto),
            outage_patience_seconds: k
                .outage_patience_seconds
                .map_or(limits::DEFAULT_OUTAGE_PATIENCE_SECONDS, |n| n.0),
            sse_kms_key_id: kms_key_id(k.sse_kms_key_id, sse)?,
            checksum: k.checksum.unwrap_or(Checksum::Crc32c),
            upload_cap: rate_cap(
                "max_upload_rate",
                k.max_upload_rate,
                "upload_rate_schedule",
                k.upload_rate_schedule,
            )?,
            download_cap: rate_cap(
                "max_download_rate",
                k.max_download_rate,
                "download_rate_schedule",
                k.download_rate_schedule,
            )?,
        };
        check_buffer_bound(&s3)?;
        let r = f.restore;
        let restore = Restore {
            target_base_dir: path("restore.target_base_dir", r.target_base_dir, "/srv/restore")?,
            verify_mode: r.verify_mode.unwrap_or(VerifyMode::Full),
            sample_max_files: r.sample_max_files.map_or(1000, |n| n.0),
            wait_for_restore: r.wait_for_restore.is_none_or(|b| b.0),
            restore_timeout_seconds: r.restore_timeout_seconds.map_or(259_200, |n| n.0),
            restore_tier: r.restore_tier.unwrap_or(RestoreTier::Standard),
        };
        let retention = Retention {
            remote_generations: f.retention.remote_generations.map_or(1, |n| n.0) as usize,
            prune_after_backup: f.retention.prune_after_backup.is_some_and(|b| b.0),
        };
        let object_lock = object_lock(f.object_lock, &s3)?;
        let encryption = Encryption::resolve(f.encryption, env)?;
        encryption::check_chunk_size(&s3, &encryption)?;
        let notify = notify::resolve(f.notify.ping_url)?;
        Ok(Config {
            notify,
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

/// A required string key's value, or the error naming where to add it.
fn required(section: &str, key: &str, v: Option<value::Text>) -> Result<String, ConfigError> {
    match v {
        Some(t) => Ok(t.0),
        None => err(format!(
            "{section}.{key} is required but missing: add it under [{section}]"
        )),
    }
}

/// `raw` with a leading `~` replaced by `HOME`; it must then be absolute. `key` is the
/// dotted key the messages name.
fn expand(env: &dyn Env, key: &str, raw: &str) -> Result<PathBuf, ConfigError> {
    let expanded = if raw == "~" || raw.starts_with("~/") {
        let Some(home) = env.var("HOME") else {
            return err(format!(
                "{key} = {raw:?}: cannot expand ~ because HOME is not set; use an absolute path"
            ));
        };
        format!("{}{}", home.trim_end_matches('/'), &raw[1..])
    } else {
        raw.to_string()
    };
    let p = PathBuf::from(&expanded);
    if !p.is_absolute() {
        return err(format!(
            "{key} = {raw:?}: must be an absolute path (start with / or ~/)"
        ));
    }
    Ok(p)
}

/// `s3.bucket`: the characters of a bucket name (S3's, with upper case and `_`
/// tolerated for S3-compatible servers); it names the URL's host or first path
/// segment, so nothing that could change the URL's shape gets through.
fn bucket(b: String) -> Result<String, ConfigError> {
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
fn region(r: String) -> Result<String, ConfigError> {
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
fn prefix(p: String) -> Result<String, ConfigError> {
    if let Some(why) = prefix_problem(&p) {
        return err(format!(
            "s3.prefix = {p:?}: {why}; use plain segments such as \"backups/host1\""
        ));
    }
    Ok(p)
}

fn subvolumes(
    env: &dyn Env,
    paths: Option<value::SubvolumePaths>,
) -> Result<Vec<Subvolume>, ConfigError> {
    // Absent: a disaster-recovery config (restore, list, verify); `backup` and a
    // `prune` without --subvolume refuse it (`Config::require_subvolumes`).
    let Some(paths) = paths else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Subvolume> = Vec::new();
    let mut names = BTreeSet::new();
    for raw in &paths.0 {
        let path = expand(env, "subvolumes.paths", raw)?;
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

/// `s3.endpoint_url`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`; the message
/// names where a bad value came from.
fn endpoint(env: &dyn Env, configured: Option<value::Text>) -> Result<Option<String>, ConfigError> {
    let (value, source) = match configured {
        Some(t) => (t.0, "s3.endpoint_url"),
        None => match env.var("AWS_ENDPOINT_URL_S3") {
            Some(v) => (v, "AWS_ENDPOINT_URL_S3"),
            None => match env.var("AWS_ENDPOINT_URL") {
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

/// `s3.sse_kms_key_id`: only with a KMS `s3.sse`, and only the characters of a key id,
/// alias or ARN (it goes into a header).
fn kms_key_id(k: Option<value::Text>, sse: Sse) -> Result<Option<String>, ConfigError> {
    let Some(value::Text(k)) = k else {
        return Ok(None);
    };
    if !sse.uses_kms() {
        return err(format!(
            "s3.sse_kms_key_id is set but s3.sse = {:?}: set s3.sse = \"aws:kms\" (or \"aws:kms:dsse\"), or remove the key id",
            sse.as_str()
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

/// `[object_lock]`: both keys required when the section is there; locked uploads need
/// a checksum header, so `s3.checksum = "none"` is refused with it.
fn object_lock(
    keys: Option<file::ObjectLockKeys>,
    s3: &S3,
) -> Result<Option<ObjectLock>, ConfigError> {
    let Some(keys) = keys else {
        return Ok(None);
    };
    let Some(mode) = keys.mode else {
        return err(
            "object_lock.mode is required with [object_lock]: \"GOVERNANCE\" or \"COMPLIANCE\"",
        );
    };
    let Some(retain_days) = keys.retain_days else {
        return err("object_lock.retain_days is required with [object_lock]: the days each backup stays locked (e.g. 200 for a full every 180 days)");
    };
    if s3.checksum == Checksum::None {
        return err("s3.checksum = \"none\" with [object_lock]: S3 accepts a locked upload only with a checksum header; set s3.checksum = \"crc32c\" (the default) or \"sha256\"");
    }
    Ok(Some(ObjectLock {
        mode,
        retain_days: retain_days.0,
    }))
}

/// `s3.chunk_size_bytes` has a floor besides its ceiling (checked with its type).
fn chunk_size(v: u64) -> Result<u64, ConfigError> {
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

fn part_size(v: u64) -> Result<u64, ConfigError> {
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&v) {
        return err(format!(
            "s3.part_size_bytes = {v}: must be between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} (5 GiB), the limits of S3 multipart uploads"
        ));
    }
    Ok(v)
}

/// Without a spool, `(concurrency + 1)` part buffers live in memory: refuse a config
/// whose buffers alone would exceed [`limits::MAX_BUFFER_BYTES`].
/// One direction's cap: a fixed rate or a timetable, not both.
fn rate_cap(
    max: &str,
    fixed: Option<value::Rate>,
    schedule: &str,
    table: Option<value::Schedule>,
) -> Result<crate::ratelimit::Cap, ConfigError> {
    match (fixed, table) {
        (Some(_), Some(_)) => err(format!(
            "s3.{max} and s3.{schedule} are both set: the timetable decides the rate at \
             every time of day; remove one of them"
        )),
        (Some(value::Rate(c)), None) | (None, Some(value::Schedule(c))) => Ok(c),
        (None, None) => Ok(crate::ratelimit::Cap::Off),
    }
}

fn check_buffer_bound(s3: &S3) -> Result<(), ConfigError> {
    if s3.spool_enabled {
        return Ok(());
    }
    let part = crate::parts::effective_part_size(s3.part_size_bytes, s3.chunk_size_bytes)
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

/// The name of a subvolume: its last path component.
pub fn subvolume_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod messages_tests;
#[cfg(test)]
mod tests;

mod encryption;
mod file;
mod value;
pub use encryption::Encryption;
mod notify;
pub use notify::{Notify, PingUrl};
