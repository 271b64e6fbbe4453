//! Run metrics: per subvolume and per run (bytes, elapsed seconds, throughput, chunks,
//! parts, retries, bytes uploaded and their rate on the link, bytes a resume did not send
//! again and how long it took to verify them) as `event=backup_metrics ...` lines, and an
//! optional Prometheus textfile with the last success time of each subvolume and the last
//! run's figures.
//!
//! Two rates, kept apart: `throughput` is the contract's, `total_bytes / elapsed_seconds`,
//! the whole stream (resumed bytes included) over the whole run; `upload_rate` is
//! `uploaded_bytes / upload_seconds`, what this run sent over the time it was sending
//! (from its first byte sent to its last upload stored), which is the link's rate.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::state::State;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub bytes: u64,
    pub elapsed: Duration,
    pub chunks: u64,
    pub parts: u64,
    pub retries: u64,
    /// Bytes sent to S3 by this run.
    pub uploaded_bytes: u64,
    /// Bytes not sent because an interrupted run had stored them.
    pub resumed_bytes: u64,
    /// The stream carried compressed extents as they are on disk (send protocol 2): its
    /// bytes are then fewer than the data's logical bytes.
    pub compressed_data: bool,
    /// From the start of the stream to the first byte this run sent: on a resume, what
    /// verifying the stored prefix cost before the link was used again.
    pub first_new_byte: Duration,
    /// From the first byte sent to the last upload stored.
    pub upload_time: Duration,
}

impl Metrics {
    /// Bytes per second (decimal MB/s is `throughput() / 1e6`).
    pub fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.bytes as f64 / s
        } else {
            0.0
        }
    }

    /// Bytes per second this run sent while it was sending: the link's rate, resumed
    /// bytes not counted.
    pub fn upload_rate(&self) -> f64 {
        let s = self.upload_time.as_secs_f64();
        if s > 0.0 {
            self.uploaded_bytes as f64 / s
        } else {
            0.0
        }
    }

    pub fn add(&mut self, o: &Metrics) {
        self.bytes += o.bytes;
        self.elapsed += o.elapsed;
        self.chunks += o.chunks;
        self.parts += o.parts;
        self.retries += o.retries;
        self.uploaded_bytes += o.uploaded_bytes;
        self.resumed_bytes += o.resumed_bytes;
        self.compressed_data |= o.compressed_data;
        self.first_new_byte += o.first_new_byte;
        self.upload_time += o.upload_time;
    }

    /// The `key=value` fields of a metrics or summary line after `subvolume`, in order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("total_bytes", self.bytes.to_string()),
            (
                "elapsed_seconds",
                format!("{:.3}", self.elapsed.as_secs_f64()),
            ),
            ("throughput", format!("{:.1}MB/s", self.throughput() / 1e6)),
            ("chunks", self.chunks.to_string()),
            ("parts", self.parts.to_string()),
            ("retries", self.retries.to_string()),
            ("uploaded_bytes", self.uploaded_bytes.to_string()),
            (
                "upload_seconds",
                format!("{:.3}", self.upload_time.as_secs_f64()),
            ),
            (
                "upload_rate",
                format!("{:.1}MB/s", self.upload_rate() / 1e6),
            ),
            ("resumed_bytes", self.resumed_bytes.to_string()),
            (
                "first_new_byte_seconds",
                format!("{:.3}", self.first_new_byte.as_secs_f64()),
            ),
        ]
    }

    pub fn log(&self, event_name: &str, subvolume: &str) {
        let mut line = format!("event={event_name}");
        crate::logging::push_kv(&mut line, "subvolume", &subvolume);
        for (k, v) in self.fields() {
            crate::logging::push_kv(&mut line, k, &v);
        }
        crate::logging::push_kv(&mut line, "compressed_data", &self.compressed_data);
        log::info!("{line}");
    }
}

/// One subvolume's line in the textfile.
pub struct SubvolResult<'a> {
    pub name: &'a str,
    pub ok: bool,
    pub metrics: Option<&'a Metrics>,
}

/// A label value as the Prometheus text format wants it (`\\`, `\"`, `\n` escaped).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: HELP, TYPE, then a sample per `(subvolume, value)`.
fn family(out: &mut String, name: &str, help: &str, samples: &[(&str, String)]) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (sub, v) in samples {
        let _ = writeln!(out, "{name}{{subvolume=\"{}\"}} {v}", label(sub));
    }
}

/// Writes a Prometheus textfile for node_exporter's textfile collector: gauges named
/// `btrfs_to_s3_*` with a `subvolume` label, base units (seconds, bytes), written
/// atomically (a temp file whose name does not end in `.prom`, renamed over the target).
/// `now` is the run's end (`btrfs_to_s3_last_run_timestamp_seconds`).
pub fn write_textfile(
    path: &Path,
    state: &State,
    results: &[SubvolResult<'_>],
    now: crate::ts::Ts,
) -> Result<()> {
    let mut s = String::new();
    let success: Vec<(&str, String)> = state
        .subvolumes
        .iter()
        .filter_map(|(name, e)| {
            let snap = e
                .last_snapshot
                .as_deref()
                .and_then(|p| crate::snapshots::SnapName::from_path(name, Path::new(p)))?;
            Some((name.as_str(), snap.ts.unix().to_string()))
        })
        .collect();
    family(
        &mut s,
        "btrfs_to_s3_last_success_timestamp_seconds",
        "Time of the snapshot of the last published backup (alert when it is too old).",
        &success,
    );
    let per = |f: &dyn Fn(&SubvolResult<'_>) -> Option<String>| -> Vec<(&str, String)> {
        results
            .iter()
            .filter_map(|r| f(r).map(|v| (r.name, v)))
            .collect()
    };
    family(
        &mut s,
        "btrfs_to_s3_last_run_failed",
        "1 if the subvolume's backup failed in the last run, else 0.",
        &per(&|r| Some(u8::from(!r.ok).to_string())),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_success",
        "1 if the subvolume's backup in the last run succeeded (the inverse of last_run_failed).",
        &per(&|r| Some(u8::from(r.ok).to_string())),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_backup_bytes",
        "Bytes of the send stream of the backup published in the last run (absent when none was due).",
        &per(&|r| r.metrics.map(|m| m.bytes.to_string())),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_bytes",
        "Same as last_backup_bytes (kept for existing dashboards).",
        &per(&|r| r.metrics.map(|m| m.bytes.to_string())),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_seconds",
        "Seconds the subvolume's backup took in the last run.",
        &per(&|r| r.metrics.map(|m| format!("{:.3}", m.elapsed.as_secs_f64()))),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_uploaded_bytes",
        "Bytes the last run sent to S3 (a resume's stored bytes not counted).",
        &per(&|r| r.metrics.map(|m| m.uploaded_bytes.to_string())),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_resumed_bytes",
        "Bytes of the stream an interrupted run had stored, verified and not sent again.",
        &per(&|r| r.metrics.map(|m| m.resumed_bytes.to_string())),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_upload_seconds",
        "Seconds from the last run's first byte sent to its last upload stored.",
        &per(&|r| {
            r.metrics
                .map(|m| format!("{:.3}", m.upload_time.as_secs_f64()))
        }),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_upload_rate_bytes_per_second",
        "uploaded_bytes / upload_seconds: the rate the link took the last run's bytes at.",
        &per(&|r| r.metrics.map(|m| format!("{:.0}", m.upload_rate()))),
    );
    family(
        &mut s,
        "btrfs_to_s3_last_run_first_new_byte_seconds",
        "Seconds from the start of the last run's stream to its first byte sent (a resume verifies the stored prefix first).",
        &per(&|r| r.metrics.map(|m| format!("{:.3}", m.first_new_byte.as_secs_f64()))),
    );
    let _ = writeln!(
        s,
        "# HELP btrfs_to_s3_last_run_timestamp_seconds When the last run ended.\n\
         # TYPE btrfs_to_s3_last_run_timestamp_seconds gauge\n\
         btrfs_to_s3_last_run_timestamp_seconds {}",
        now.unix()
    );
    crate::atomic::write(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SubvolState;

    #[test]
    fn throughput_and_sum() {
        let mut a = Metrics {
            bytes: 10_000_000,
            elapsed: Duration::from_secs(2),
            chunks: 1,
            parts: 2,
            retries: 0,
            ..Default::default()
        };
        assert_eq!(a.throughput(), 5_000_000.0);
        a.add(&a.clone());
        assert_eq!(a.bytes, 20_000_000);
        assert_eq!(a.parts, 4);
        assert_eq!(Metrics::default().throughput(), 0.0);
        assert_eq!(Metrics::default().upload_rate(), 0.0);
    }

    #[test]
    fn a_resumed_run_reports_what_it_sent_apart_from_what_it_verified() {
        // 1 GB stream, 900 MB of it stored by an earlier run and verified in 8 s, then
        // 100 MB sent in 10 s: the link's rate is 10 MB/s, not 1 GB over the run.
        let m = Metrics {
            bytes: 1_000_000_000,
            elapsed: Duration::from_secs(20),
            uploaded_bytes: 100_000_000,
            resumed_bytes: 900_000_000,
            first_new_byte: Duration::from_secs(8),
            upload_time: Duration::from_secs(10),
            ..Default::default()
        };
        let f: std::collections::BTreeMap<&str, String> = m.fields().into_iter().collect();
        assert_eq!(f["throughput"], "50.0MB/s");
        assert_eq!(f["upload_rate"], "10.0MB/s");
        assert_eq!(f["uploaded_bytes"], "100000000");
        assert_eq!(f["resumed_bytes"], "900000000");
        assert_eq!(f["upload_seconds"], "10.000");
        assert_eq!(f["first_new_byte_seconds"], "8.000");
        // The contract's keys stay, in their order, first.
        let keys: Vec<&str> = m.fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys[..3], ["total_bytes", "elapsed_seconds", "throughput"]);
    }

    #[test]
    fn textfile() {
        let d = std::env::temp_dir().join(format!("b2s3-metrics-{}", std::process::id()));
        let p = d.join("b.prom");
        let mut st = State::default();
        st.subvolumes.insert(
            "data".into(),
            SubvolState {
                last_snapshot: Some("/s/data__20250101T020000Z__full".into()),
                ..Default::default()
            },
        );
        let m = Metrics {
            bytes: 5,
            uploaded_bytes: 3,
            resumed_bytes: 2,
            upload_time: Duration::from_millis(1500),
            first_new_byte: Duration::from_millis(250),
            ..Default::default()
        };
        write_textfile(
            &p,
            &st,
            &[
                SubvolResult {
                    name: "data",
                    ok: true,
                    metrics: Some(&m),
                },
                SubvolResult {
                    name: "home",
                    ok: false,
                    metrics: None,
                },
                SubvolResult {
                    name: "we\"ird\\",
                    ok: true,
                    metrics: None,
                },
            ],
            crate::ts::Ts::from_unix(1_735_700_000),
        )
        .unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(
            t.contains("btrfs_to_s3_last_success_timestamp_seconds{subvolume=\"data\"} 1735696800"),
            "{t}"
        );
        assert!(t.contains("btrfs_to_s3_last_run_success{subvolume=\"home\"} 0"));
        assert!(t.contains("btrfs_to_s3_last_run_bytes{subvolume=\"data\"} 5"));
        assert!(t.contains("btrfs_to_s3_last_backup_bytes{subvolume=\"data\"} 5"));
        assert!(t.contains("btrfs_to_s3_last_run_failed{subvolume=\"home\"} 1"));
        for sample in [
            "btrfs_to_s3_last_run_uploaded_bytes{subvolume=\"data\"} 3\n",
            "btrfs_to_s3_last_run_resumed_bytes{subvolume=\"data\"} 2\n",
            "btrfs_to_s3_last_run_upload_seconds{subvolume=\"data\"} 1.500\n",
            "btrfs_to_s3_last_run_upload_rate_bytes_per_second{subvolume=\"data\"} 2\n",
            "btrfs_to_s3_last_run_first_new_byte_seconds{subvolume=\"data\"} 0.250\n",
        ] {
            assert!(t.contains(sample), "{sample}: {t}");
        }
        // No figures for a subvolume that had no backup in the run.
        assert!(!t.contains("btrfs_to_s3_last_run_uploaded_bytes{subvolume=\"home\"}"));
        assert!(t.contains("btrfs_to_s3_last_run_failed{subvolume=\"data\"} 0"));
        assert!(
            t.contains("btrfs_to_s3_last_run_failed{subvolume=\"we\\\"ird\\\\\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("\nbtrfs_to_s3_last_run_timestamp_seconds 1735700000\n"),
            "{t}"
        );
        // Every family is HELP, TYPE gauge, then samples.
        for l in t.lines().filter(|l| l.starts_with("# TYPE")) {
            assert!(l.ends_with(" gauge"), "{l}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
