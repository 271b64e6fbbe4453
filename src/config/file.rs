//! The config file as serde reads it: one struct per section, one field per key, each
//! key typed by what it holds (config/value.rs and the enums in config.rs check type,
//! range and spelling). These structs are the schema: unknown sections and keys are
//! found against their field lists, naming them. Defaults, `~`, the environment and the
//! rules between keys are `Config::parse`'s.
//!
//! Adding a key: a field `name: Option<Type>` in its section's struct here, then its
//! default and its place in the public struct in `Config::parse` (config.rs).

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

use super::value::{
    Count, Flag, OutagePatience, PathList, Rate, Recipients, RunAt, Schedule, Size, SubvolumePaths,
    Text,
};
use super::{
    limits, Checksum, ConfigError, LockMode, LogLevel, RestoreTier, SendCompressed, Sse,
    StorageClass, VerifyMode,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct File {
    pub global: GlobalKeys,
    pub schedule: ScheduleKeys,
    pub snapshots: SnapshotsKeys,
    pub subvolumes: SubvolumesKeys,
    pub s3: S3Keys,
    pub restore: RestoreKeys,
    pub retention: RetentionKeys,
    pub object_lock: Option<ObjectLockKeys>,
    pub encryption: EncryptionKeys,
    pub notify: NotifyKeys,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct NotifyKeys {
    pub ping_url: Option<super::notify::PingUrlValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct GlobalKeys {
    pub log_level: Option<LogLevel>,
    pub state_path: Option<Text>,
    pub lock_path: Option<Text>,
    pub spool_dir: Option<Text>,
    pub spool_size_bytes: Option<Size<{ limits::MAX_SPOOL_BYTES }>>,
    pub metrics_path: Option<Text>,
    pub progress_interval_seconds: Option<Count<{ limits::MAX_DAYS * 86_400 }>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ScheduleKeys {
    pub full_every_days: Option<Count<{ limits::MAX_DAYS }>>,
    pub incremental_every_days: Option<Count<{ limits::MAX_DAYS }>>,
    pub run_at: Option<RunAt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SnapshotsKeys {
    pub base_dir: Option<Text>,
    pub retain: Option<Count<{ limits::MAX_RETAIN }>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SubvolumesKeys {
    pub paths: Option<SubvolumePaths>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct S3Keys {
    pub bucket: Option<Text>,
    pub region: Option<Text>,
    pub prefix: Option<Text>,
    pub chunk_size_bytes: Option<Size<{ limits::MAX_CHUNK_SIZE }>>,
    pub storage_class_chunks: Option<StorageClass>,
    pub storage_class_manifest: Option<StorageClass>,
    pub concurrency: Option<Count<{ limits::MAX_CONCURRENCY }>>,
    pub spool_enabled: Option<Flag>,
    pub sse: Option<Sse>,
    pub endpoint_url: Option<Text>,
    /// Range-checked in `Config::parse` (its message names S3's limits).
    pub part_size_bytes: Option<Size<{ u64::MAX }>>,
    pub send_compressed_data: Option<SendCompressed>,
    pub outage_patience_seconds: Option<OutagePatience>,
    pub sse_kms_key_id: Option<Text>,
    pub checksum: Option<Checksum>,
    pub max_upload_rate: Option<Rate>,
    pub upload_rate_schedule: Option<Schedule>,
    pub max_download_rate: Option<Rate>,
    pub download_rate_schedule: Option<Schedule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RestoreKeys {
    pub target_base_dir: Option<Text>,
    pub verify_mode: Option<VerifyMode>,
    pub sample_max_files: Option<Count<{ limits::MAX_SAMPLE_FILES }>>,
    pub wait_for_restore: Option<Flag>,
    pub restore_timeout_seconds: Option<Count<{ limits::MAX_RESTORE_TIMEOUT_SECONDS }>>,
    pub restore_tier: Option<RestoreTier>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RetentionKeys {
    pub remote_generations: Option<Count<{ limits::MAX_RETAIN }>>,
    pub prune_after_backup: Option<Flag>,
}

/// Both keys are required when the section is there (`Config::parse` says so).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ObjectLockKeys {
    pub mode: Option<LockMode>,
    pub retain_days: Option<Count<{ limits::MAX_DAYS }>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct EncryptionKeys {
    pub recipients: Option<Recipients>,
    pub recipients_file: Option<Text>,
    pub identity_files: Option<PathList>,
}

/// Every section and its keys, from the structs above; anything else in a file is an
/// error naming it. (A section is listed here and in [`File`]; a unit test checks both
/// agree.)
pub(super) fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("global", keys_of::<GlobalKeys>()),
        ("schedule", keys_of::<ScheduleKeys>()),
        ("snapshots", keys_of::<SnapshotsKeys>()),
        ("subvolumes", keys_of::<SubvolumesKeys>()),
        ("s3", keys_of::<S3Keys>()),
        ("restore", keys_of::<RestoreKeys>()),
        ("retention", keys_of::<RetentionKeys>()),
        ("object_lock", keys_of::<ObjectLockKeys>()),
        ("encryption", keys_of::<EncryptionKeys>()),
        ("notify", keys_of::<NotifyKeys>()),
    ]
}

/// The document `text` (already parsed as `doc`) as a [`File`]: unknown sections and
/// keys first (named, with the known ones), then each key's own check; the message is
/// the key's dotted name and the value type's words. Serde reads the text itself, not
/// `doc`: a `toml::Value` hands a date-time over as a string, which a string key would
/// then take.
pub(super) fn read(text: &str, doc: &toml::Table) -> Result<File, ConfigError> {
    check_known_keys(doc)?;
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let key = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(".");
        let words = e.inner().message().replace('\n', " ");
        // The value types' words start with " = …", ": …" or "[i]…"; anything else is
        // serde's own and gets a separator.
        if words.starts_with([' ', ':', '[']) {
            ConfigError(format!("{key}{words}"))
        } else {
            ConfigError(format!("{key}: {words}"))
        }
    })
}

fn check_known_keys(doc: &toml::Table) -> Result<(), ConfigError> {
    let schema = schema();
    for (section, value) in doc {
        let Some((_, keys)) = schema.iter().find(|(s, _)| s == section) else {
            let known: Vec<&str> = schema.iter().map(|(s, _)| *s).collect();
            return Err(ConfigError(format!(
                "unknown section [{section}] (known sections: {})",
                known.join(", ")
            )));
        };
        let Some(table) = value.as_table() else {
            return Err(ConfigError(format!(
                "{section} must be a table ([{section}])"
            )));
        };
        for key in table.keys() {
            if !keys.contains(&key.as_str()) {
                return Err(ConfigError(format!(
                    "unknown key {section}.{key} (known keys in [{section}]: {}); check the spelling",
                    keys.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// The field names serde's derive gives struct `T`, asked without any input: the
/// deserializer records the list `deserialize_struct` is called with and stops there.
pub(super) fn keys_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Ask(Option<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &mut Ask {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(serde::de::Error::custom("asked"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut ask = Ask(None);
    let _ = T::deserialize(&mut ask);
    ask.0.unwrap_or(&[])
}
