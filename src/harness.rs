//! The test-harness hook of the contract: when `BTRFS_TO_S3_HARNESS_RUN_DIR=DIR` is set,
//! after the backup of the first selected subvolume is published, `DIR/manifest.json`
//! says its type and its chunks (index, key, SHA-256), for the earlier tool's integration
//! harness. Written atomically, replaced on each such run; nothing when unset.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::manifest::Kind;

pub const VAR: &str = "BTRFS_TO_S3_HARNESS_RUN_DIR";

#[derive(Serialize)]
struct Chunk<'a> {
    index: usize,
    key: &'a str,
    sha256: &'a str,
}

#[derive(Serialize)]
struct RunFile<'a> {
    backup_type: &'a str,
    chunks: Vec<Chunk<'a>>,
}

/// The directory the variable names, when it is set (it must be an absolute path).
pub fn dir() -> Result<Option<PathBuf>> {
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    let p = PathBuf::from(&v);
    if v.is_empty() || !p.is_absolute() {
        bail!("{VAR} = {p:?}: must be an absolute directory path");
    }
    Ok(Some(p))
}

/// Writes `DIR/manifest.json` for a published backup of `kind` with `chunks` (key,
/// SHA-256) in stream order.
pub fn write(dir: &std::path::Path, kind: Kind, chunks: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {VAR} directory {}", dir.display()))?;
    let file = RunFile {
        backup_type: kind.as_str(),
        chunks: chunks
            .iter()
            .enumerate()
            .map(|(index, (key, sha256))| Chunk { index, key, sha256 })
            .collect(),
    };
    let mut body = serde_json::to_vec_pretty(&file).context("encoding the harness file")?;
    body.push(b'\n');
    let path = dir.join("manifest.json");
    crate::atomic::write(&path, &body)
        .with_context(|| format!("writing the harness file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_contract_shape() {
        let d = crate::testing::Scratch::new("harness");
        let dir = d.0.join("run/dir");
        write(
            &dir,
            Kind::Incremental,
            &[
                ("p/c-0.bin".into(), "aa".into()),
                ("p/c-1.bin".into(), "bb".into()),
            ],
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"backup_type": "incremental", "chunks": [
                {"index": 0, "key": "p/c-0.bin", "sha256": "aa"},
                {"index": 1, "key": "p/c-1.bin", "sha256": "bb"}]})
        );
    }
}
