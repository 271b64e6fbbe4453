//! `btrfs_to_s3 list`: what the bucket holds, per subvolume, from one listing
//! (`repo::catalog`): every backup oldest first with its kind, time, size, chunks,
//! storage class, parent, generation and whether `current.json` names it; then what does
//! not fit (broken chains, orphan chunks, keys outside the layout). Read-only: no lock.
//! `--json` prints one document whose shape DESIGN.md fixes ("`list --json`"); the text
//! form is made inert (`crate::term`), as every key and string in it is the bucket's.
//! `--versions` adds every version of `current.json` and of the manifests
//! (`repo::versions`), for `restore --manifest-key K --version-id V`.

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::ListArgs;
use crate::cmd::Session;
use crate::config::Config;
use crate::exit::{self, Failure};
use crate::outln;
use crate::repo::catalog::{self, Catalog, Subvol};
use crate::repo::Repo;
use crate::store::{ListedObject, ListedVersion};

pub fn run(config: &Config, args: &ListArgs) -> Result<u8, Failure> {
    let names = crate::cmd::subvolume_names(&args.subvolumes, None)?;
    let session = Session::start(config, false)?;
    let repo = Repo::open(config, session.retrier.clone())?;
    let cat = catalog::load(&repo, &names)?;
    let mut versions = std::collections::BTreeMap::new();
    if args.versions {
        for name in cat.subvolumes.keys() {
            versions.insert(name.clone(), crate::repo::versions::history(&repo, name)?);
        }
    }
    if args.json {
        let mut doc = to_json(config, &cat);
        if let Some(svs) = doc["subvolumes"].as_array_mut().filter(|_| args.versions) {
            for sv in svs {
                let name = sv["name"].as_str().unwrap_or_default().to_string();
                let v: Vec<Value> = versions
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .map(version_json)
                    .collect();
                sv["versions"] = Value::Array(v);
            }
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(anyhow::Error::from)?
        );
    } else {
        print_text(&cat);
        for (name, vs) in &versions {
            print_versions(name, vs);
        }
    }
    Ok(exit::OK)
}

fn version_json(v: &ListedVersion) -> Value {
    json!({
        "key": v.key,
        "version_id": v.version_id,
        "last_modified": v.last_modified.map(|t| t.iso()),
        "size": v.size,
        "latest": v.is_latest,
        "delete_marker": v.delete_marker,
    })
}

/// Each key's versions, newest first: the oldest version of a manifest is the one its
/// backup wrote; a newer one, or a delete marker, came later (someone else's).
fn print_versions(name: &str, vs: &[ListedVersion]) {
    outln!(
        "versions of subvolume {name} (newest first; restore --manifest-key KEY --version-id V):"
    );
    if vs.is_empty() {
        outln!("  none listed (is the bucket versioned?)");
    }
    let mut last_key: Option<&str> = None;
    for v in vs {
        if last_key != Some(v.key.as_str()) {
            outln!("  {}", v.key);
            last_key = Some(&v.key);
        }
        let what = match (v.delete_marker, v.is_latest) {
            (true, true) => "delete marker (latest)".to_string(),
            (true, false) => "delete marker".to_string(),
            (false, latest) => {
                format!("{}{}", human(v.size), if latest { " (latest)" } else { "" })
            }
        };
        outln!(
            "    {}  {}  {what}",
            v.version_id,
            v.last_modified
                .map(|t| t.iso())
                .unwrap_or_else(|| "?".into())
        );
    }
}

fn object_json(o: &ListedObject) -> Value {
    json!({
        "key": o.key,
        "size": o.size,
        "storage_class": o.storage_class_or_standard(),
        "last_modified": o.last_modified.map(|t| t.iso()),
    })
}

/// The `list --json` document (version 1; DESIGN.md).
pub fn to_json(config: &Config, cat: &Catalog) -> Value {
    let subvolumes: Vec<Value> = cat.subvolumes.values().map(subvol_json).collect();
    json!({
        "version": 1,
        "bucket": config.s3.bucket,
        "prefix": config.s3.prefix,
        "subvolumes": subvolumes,
        "outside_layout": cat.outside.iter().map(object_json).collect::<Vec<_>>(),
    })
}

fn subvol_json(sv: &Subvol) -> Value {
    let current = sv.current_key();
    let backups: Vec<Value> = sv
        .backups
        .iter()
        .map(|b| {
            let m = b.manifest.as_ref().ok();
            let stored: u64 = b
                .chunk_keys()
                .filter_map(|k| sv.chunks.get(k))
                .map(|o| o.size)
                .sum();
            let mut v = json!({
                "manifest_key": b.key,
                "kind": b.kind.as_str(),
                "created_at": b.ts.to_string(),
                "total_bytes": m.map(|m| m.total_bytes),
                "stored_bytes": stored,
                "chunks": m.map(|m| m.chunks.len()),
                "storage_class": m.map(|m| m.s3.storage_class.clone()),
                "parent_manifest": b.parent(),
                "generation": b.generation,
                "current": Some(b.key.as_str()) == current,
                "problems": b.problems,
            });
            // Only encrypted backups get the key: plain listings stay as they were.
            if let Some(e) = m.and_then(|m| m.encryption.as_ref()) {
                v["encrypted_to"] = json!(e.recipients);
            }
            v
        })
        .collect();
    json!({
        "name": sv.name,
        "current": current,
        "current_problem": match &sv.current {
            Some(Err(why)) => Some(why.clone()),
            Some(Ok(k)) if sv.backup(k).is_none() => Some(format!("names {k}, which is not in the bucket")),
            _ => None,
        },
        "backups": backups,
        "orphan_chunks": sv.orphans().into_iter().map(object_json).collect::<Vec<_>>(),
        "outside_layout": sv.stray.iter().map(object_json).collect::<Vec<_>>(),
    })
}

pub(crate) use crate::size::human;

fn print_text(cat: &Catalog) {
    if cat.subvolumes.is_empty() {
        outln!("no backups under this prefix");
    }
    for sv in cat.subvolumes.values() {
        let current = sv.current_key();
        outln!("subvolume {}", sv.name);
        match &sv.current {
            None => outln!("  current.json: none (nothing published)"),
            Some(Err(why)) => outln!("  current.json: DAMAGED: {why}"),
            Some(Ok(k)) => outln!("  current.json: {k}"),
        }
        if !sv.backups.is_empty() {
            outln!(
                "  {:<17} {:<11} {:>10} {:>6}  {:<12}  generation",
                "created_at",
                "kind",
                "size",
                "chunks",
                "class"
            );
        }
        for b in &sv.backups {
            let m = b.manifest.as_ref().ok();
            let mark = if Some(b.key.as_str()) == current {
                "  <- current"
            } else {
                ""
            };
            outln!(
                "  {:<17} {:<11} {:>10} {:>6}  {:<12}  {}{mark}",
                b.ts.to_string(),
                b.kind.as_str(),
                m.map(|m| human(m.total_bytes))
                    .unwrap_or_else(|| "?".into()),
                m.map(|m| m.chunks.len().to_string())
                    .unwrap_or_else(|| "?".into()),
                m.map(|m| m.s3.storage_class.as_str()).unwrap_or("?"),
                b.generation
                    .as_deref()
                    .and_then(|g| sv.backup(g))
                    .map(|g| g.ts.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
            // What restore and verify --manifest-key take.
            outln!("    manifest {}", b.key);
            if let Some(e) = m.and_then(|m| m.encryption.as_ref()) {
                outln!("    encrypted (age) to {}", e.recipients.join(", "));
            }
            for p in &b.problems {
                outln!("    BROKEN {}: {p}", b.key);
            }
        }
        let orphans = sv.orphans();
        if !orphans.is_empty() {
            let bytes: u64 = orphans.iter().map(|o| o.size).sum();
            outln!(
                "  orphan chunks (no manifest names them): {} ({})",
                orphans.len(),
                human(bytes)
            );
            for o in orphans {
                outln!("    {} {}", o.key, human(o.size));
            }
        }
        for o in &sv.stray {
            outln!("  NOT OF THE LAYOUT: {} ({})", o.key, human(o.size));
        }
    }
    for o in &cat.outside {
        outln!("NOT OF THE LAYOUT: {} ({})", o.key, human(o.size));
    }
}
