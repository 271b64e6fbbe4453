//! Whole config error messages, character for character: one case per kind of value
//! and per way a value can be refused (the same texts the hand-written reader gave).

use super::*;
use std::collections::HashMap;

struct Home;

impl Env for Home {
    fn var(&self, name: &str) -> Option<String> {
        HashMap::from([("HOME", "/home/u")])
            .get(name)
            .map(|v| v.to_string())
    }
}

const S3: &str = "[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n";

/// (document, the whole message it gives).
fn cases() -> Vec<(String, &'static str)> {
    let s3 = |line: &str| format!("[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n{line}\n");
    let with = |extra: &str| format!("{S3}{extra}\n");
    vec![
        (with("[global]\nlog_level = \"loud\""), "global.log_level = \"loud\": must be one of debug, info, warning, error, critical"),
        (with("[global]\nstate_path = 3"), "global.state_path = 3: must be a string, not a integer"),
        (with("[global]\nstate_path = \"rel\""), "global.state_path = \"rel\": must be an absolute path (start with / or ~/)"),
        (with("[global]\nmetrics_path = [\"/m\"]"), "global.metrics_path = [\"/m\"]: must be a string, not a array"),
        (with("[global]\nspool_size_bytes = -5"), "global.spool_size_bytes = -5: must be greater than 0"),
        (s3("concurrency = 0"), "s3.concurrency = 0: must be greater than 0"),
        (s3("concurrency = \"4MiB\""), "s3.concurrency = \"4MiB\": must be a whole number greater than 0, not a string"),
        (s3("concurrency = 65"), "s3.concurrency = 65: must be at most 64"),
        (s3("chunk_size_bytes = \"6TiB\""), "s3.chunk_size_bytes = 6597069766656: must be at most 5497558138880"),
        (s3("chunk_size_bytes = \"0GiB\""), "s3.chunk_size_bytes = \"0GiB\": must be greater than 0"),
        (s3("chunk_size_bytes = \"16 Mb\""), "s3.chunk_size_bytes = \"16 Mb\": unknown unit \"Mb\"; write a whole number of bytes, or a string with a unit such as \"16MiB\", \"200GiB\" or \"1.5TB\" (KiB, MiB, GiB, TiB, PiB are 1024-based; KB, MB, GB, TB, PB 1000-based)"),
        (s3("chunk_size_bytes = 1000"), "s3.chunk_size_bytes = 1000: must be at least 1048576 (1 MiB): every chunk is an object, and a chunk this small makes millions of them for a large backup (the default is 214748364800, 200 GiB)"),
        (s3("part_size_bytes = \"1MiB\""), "s3.part_size_bytes = 1048576: must be between 5242880 (5 MiB) and 5368709120 (5 GiB), the limits of S3 multipart uploads"),
        (s3("storage_class_chunks = \"COLD\""), "s3.storage_class_chunks = \"COLD\": must be one of STANDARD, REDUCED_REDUNDANCY, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER, DEEP_ARCHIVE, OUTPOSTS, GLACIER_IR, SNOW, EXPRESS_ONEZONE"),
        (s3("sse = 1"), "s3.sse = 1: must be a string, not a integer"),
        (s3("sse = \"rot13\""), "s3.sse = \"rot13\": must be one of AES256, aws:kms, aws:kms:dsse, none"),
        (s3("checksum = \"md5\""), "s3.checksum = \"md5\": must be one of crc32c, sha256, none"),
        (s3("outage_patience_seconds = -1"), "s3.outage_patience_seconds = -1: must be a whole number of seconds from 0 (give up after the bounded retries) to 604800 (7 days); the default is 14400 (4 hours)"),
        (s3("spool_enabled = [1]"), "s3.spool_enabled = [1]: must be true or false, not a array"),
        (s3("send_compressed_data = \"yes\""), "s3.send_compressed_data = \"yes\": must be \"auto\", true or false"),
        (s3("sse_kms_key_id = \"alias/x\""), "s3.sse_kms_key_id is set but s3.sse = \"AES256\": set s3.sse = \"aws:kms\" (or \"aws:kms:dsse\"), or remove the key id"),
        (s3("endpoint_url = \"localhost:9000\""), "s3.endpoint_url = \"localhost:9000\": must be an http:// or https:// URL with a host"),
        (s3("colour = \"blue\""), "unknown key s3.colour (known keys in [s3]: bucket, region, prefix, chunk_size_bytes, storage_class_chunks, storage_class_manifest, concurrency, spool_enabled, sse, endpoint_url, part_size_bytes, send_compressed_data, outage_patience_seconds, sse_kms_key_id, checksum, max_upload_rate, upload_rate_schedule, max_download_rate, download_rate_schedule); check the spelling"),
        (with("[global]\nlogg_level = \"info\""), "unknown key global.logg_level (known keys in [global]: log_level, state_path, lock_path, spool_dir, spool_size_bytes, metrics_path, progress_interval_seconds); check the spelling"),
        (with("[backup]\nx = 1"), "unknown section [backup] (known sections: global, schedule, snapshots, subvolumes, s3, restore, retention, object_lock, encryption, notify)"),
        (format!("restore = 3\n{S3}"), "restore must be a table ([restore])"),
        ("[s3]\nregion = \"r\"\nprefix = \"p\"".into(), "s3.bucket is required but missing: add it under [s3]"),
        ("[s3]\nbucket = \"b/c\"\nregion = \"r\"\nprefix = \"p\"".into(), "s3.bucket = \"b/c\": not a bucket name (letters, digits, '.', '-' or '_', no '..')"),
        ("[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"a//b\"".into(), "s3.prefix = \"a//b\": must not contain an empty segment (//); use plain segments such as \"backups/host1\""),
        ("s3 = { bucket = 1, region = \"r\", prefix = \"p\" }".into(), "s3.bucket = 1: must be a string, not a integer"),
        (with("[schedule]\nrun_at = 02:00:00"), "schedule.run_at = { \"$__toml_private_datetime\" = \"02:00:00\" }: must be a string, not a datetime"),
        (with("[schedule]\nrun_at = \"2:00\""), "schedule.run_at = \"2:00\": must be a 24-hour time HH:MM between 00:00 and 23:59"),
        (with("[schedule]\nfull_every_days = 1.5"), "schedule.full_every_days = 1.5: must be a whole number greater than 0, not a float"),
        (with("[schedule]\nfull_every_days = 9223372036854775807"), "schedule.full_every_days = 9223372036854775807: must be at most 36500"),
        (with("[snapshots]\nretain = true"), "snapshots.retain = true: must be a whole number greater than 0, not a boolean"),
        (with("[subvolumes]\npaths = \"/data\""), "subvolumes.paths = \"/data\": must be a list of absolute paths"),
        (with("[subvolumes]\npaths = []"), "subvolumes.paths = []: list at least one subvolume path"),
        (with("[subvolumes]\npaths = [\"/a\", 1]"), "subvolumes.paths: entry 1 must be a string path"),
        (with("[subvolumes]\npaths = [\"data\"]"), "subvolumes.paths = \"data\": must be an absolute path (start with / or ~/)"),
        (with("[subvolumes]\npaths = [\"/a/data\", \"/b/data\"]"), "subvolumes.paths: two paths share the name \"data\" (the last path component names a subvolume in S3 and must be unique)"),
        (with("[restore]\nwait_for_restore = \"yes\""), "restore.wait_for_restore = \"yes\": must be true or false, not a string"),
        (with("[restore]\nverify_mode = \"quick\""), "restore.verify_mode = \"quick\": must be one of full, sample, none"),
        (with("[restore]\nrestore_tier = \"Fast\""), "restore.restore_tier = \"Fast\": must be one of Standard, Bulk, Expedited"),
        (with("[retention]\nprune_after_backup = 1"), "retention.prune_after_backup = 1: must be true or false, not a integer"),
        (with("[object_lock]\nmode = \"x\"\nretain_days = 3"), "object_lock.mode = \"x\": must be one of GOVERNANCE, COMPLIANCE"),
        (with("[object_lock]\nretain_days = 3"), "object_lock.mode is required with [object_lock]: \"GOVERNANCE\" or \"COMPLIANCE\""),
        (with("[encryption]\nrecipients = \"age1x\""), "encryption.recipients = a string: must be a list of age recipients (\"age1…\")"),
        (with("[encryption]\nrecipients = [1]"), "encryption.recipients[0]: must be a string \"age1…\", not a integer"),
        (with("[encryption]\nidentity_files = \"/k\""), "encryption.identity_files = a string: must be a list of absolute paths"),
        (with("[encryption]\nidentity_files = [1]"), "encryption.identity_files[0]: must be a string path"),
        (with("[encryption]\nidentity_files = [\"k.txt\"]"), "encryption.identity_files[0] = \"k.txt\": must be an absolute path (start with / or ~/)"),
        (with("[encryption]\nrecipients_file = \"r.txt\""), "encryption.recipients_file = \"r.txt\": must be an absolute path (start with / or ~/)"),
    ]
}

#[test]
fn messages_are_exact() {
    let mut wrong = Vec::new();
    for (text, want) in cases() {
        match Config::parse(&text, &Home) {
            Ok(_) => wrong.push(format!("accepted:\n{text}")),
            Err(e) if e.0 != want => wrong.push(format!("{text}\n  got:  {}\n  want: {want}", e.0)),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
