//! Run metrics: per subvolume and per run (bytes, elapsed seconds, throughput, chunks,
//! parts, retries, bytes uploaded and bytes a resume did not send again) as `event=backup_metrics ...` lines, and an optional Prometheus
//! textfile with the last success time of each subvolume.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::event;
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

    pub fn add(&mut self, o: &Metrics) {
        self.bytes += o.bytes;
        self.elapsed += o.elapsed;
        self.chunks += o.chunks;
        self.parts += o.parts;
        self.retries += o.retries;
        self.uploaded_bytes += o.uploaded_bytes;
        self.resumed_bytes += o.resumed_bytes;
        self.compressed_data |= o.compressed_data;
    }

    pub fn log(&self, event_name: &str, subvolume: &str) {
        event!(
            Info,
            event_name,
            subvolume = subvolume,
            total_bytes = self.bytes,
            elapsed_seconds = format!("{:.3}", self.elapsed.as_secs_f64()),
            throughput = format!("{:.1}MB/s", self.throughput() / 1e6),
            chunks = self.chunks,
            parts = self.parts,
            retries = self.retries,
            uploaded_bytes = self.uploaded_bytes,
            resumed_bytes = self.resumed_bytes,
            compressed_data = self.compressed_data,
        );
    }
}

/// One subvolume's line in the textfile.
pub struct SubvolResult<'a> {
    pub name: &'a str,
    pub ok: bool,
    pub metrics: Option<&'a Metrics>,
}

/// Writes a Prometheus textfile (node_exporter's textfile collector) atomically.
pub fn write_textfile(path: &Path, state: &State, results: &[SubvolResult<'_>]) -> Result<()> {
    let mut s = String::new();
    s.push_str(
        "# HELP btrfs_to_s3_last_success_timestamp_seconds Time of the last published backup.\n",
    );
    s.push_str("# TYPE btrfs_to_s3_last_success_timestamp_seconds gauge\n");
    for (name, e) in &state.subvolumes {
        let ts = e
            .last_snapshot
            .as_deref()
            .and_then(|p| crate::snapshots::SnapName::from_path(name, Path::new(p)));
        if let Some(t) = ts {
            let _ = writeln!(
                s,
                "btrfs_to_s3_last_success_timestamp_seconds{{subvolume=\"{name}\"}} {}",
                t.ts.unix()
            );
        }
    }
    s.push_str("# HELP btrfs_to_s3_last_run_success 1 if the subvolume's backup in the last run succeeded.\n");
    s.push_str("# TYPE btrfs_to_s3_last_run_success gauge\n");
    for r in results {
        let _ = writeln!(
            s,
            "btrfs_to_s3_last_run_success{{subvolume=\"{}\"}} {}",
            r.name,
            u8::from(r.ok)
        );
    }
    s.push_str(
        "# HELP btrfs_to_s3_last_run_bytes Bytes of send stream uploaded in the last run.\n",
    );
    s.push_str("# TYPE btrfs_to_s3_last_run_bytes gauge\n");
    for r in results {
        if let Some(m) = r.metrics {
            let _ = writeln!(
                s,
                "btrfs_to_s3_last_run_bytes{{subvolume=\"{}\"}} {}",
                r.name, m.bytes
            );
            let _ = writeln!(
                s,
                "btrfs_to_s3_last_run_seconds{{subvolume=\"{}\"}} {:.3}",
                r.name,
                m.elapsed.as_secs_f64()
            );
        }
    }
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
            ],
        )
        .unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(
            t.contains("btrfs_to_s3_last_success_timestamp_seconds{subvolume=\"data\"} 1735696800"),
            "{t}"
        );
        assert!(t.contains("btrfs_to_s3_last_run_success{subvolume=\"home\"} 0"));
        assert!(t.contains("btrfs_to_s3_last_run_bytes{subvolume=\"data\"} 5"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
