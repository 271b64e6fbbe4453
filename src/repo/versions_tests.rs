//! Versions over an in-memory versioned bucket: a bucket writer overwrites
//! `current.json`, manifests and a chunk; the pinned chain still reads what the backups
//! wrote.

use std::sync::Arc;

use super::*;
use crate::config::{Config, ProcessEnv};
use crate::manifest::{ChunkEntry, Manifest, S3Info, SnapshotRef};
use crate::store::memory::MemoryStore;
use crate::store::{get_all, Body, ObjectStore, PutOptions};
use crate::ts::Ts;

fn cfg() -> Config {
    Config::parse(
        "[subvolumes]\npaths = [\"/srv/data\"]\n[s3]\nbucket = \"b\"\nregion = \"r\"\nprefix = \"p\"\n\
         storage_class_chunks = \"STANDARD\"\n\
         [object_lock]\nmode = \"COMPLIANCE\"\nretain_days = 30\n",
        &ProcessEnv,
    )
    .unwrap()
}

fn garbage() -> PutOptions {
    crate::testing::put_opts("STANDARD")
}

/// A full and an incremental on it, published; returns the repo and their keys.
fn two_backups(store: &Arc<MemoryStore>) -> (Repo, String, String) {
    let repo = Repo::new(&cfg(), store.clone(), Arc::new(crate::testing::retrier()));
    let mut keys = Vec::new();
    for (i, kind) in [Kind::Full, Kind::Incremental].into_iter().enumerate() {
        store.set_clock(1_735_696_800 + i as i64 * 86_400);
        let ts = Ts::from_unix(1_735_696_800 + i as i64 * 86_400);
        let ck = repo.layout.chunk_key("data", kind, ts, 0);
        let data = format!("stream of {ck}");
        store
            .put_object(&ck, Body::Bytes(data.as_bytes()), repo.chunk_opts())
            .unwrap();
        let key = repo.layout.manifest_key("data", kind, ts);
        let m = Manifest {
            version: 1,
            subvolume: "data".into(),
            kind,
            created_at: ts.to_string(),
            snapshot: SnapshotRef {
                name: format!("data__{ts}__{}", kind.snap_suffix()),
                path: format!("/srv/snapshots/data__{ts}__{}", kind.snap_suffix()),
                uuid: None,
                parent_uuid: None,
                extra: Default::default(),
            },
            parent_manifest: keys.last().cloned(),
            total_bytes: data.len() as u64,
            chunks: vec![ChunkEntry {
                key: ck.into_string(),
                size: data.len() as u64,
                sha256: "0".repeat(64),
                etag: None,
                extra: Default::default(),
            }],
            chunk_size: 100,
            s3: S3Info {
                storage_class: "STANDARD".into(),
                extra: Default::default(),
            },
            stream_sha256: None,
            send_protocol: None,
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        };
        repo.publish(&key, &m).unwrap();
        keys.push(key.into_string());
    }
    (repo, keys[0].clone(), keys[1].clone())
}

fn version_of(store: &MemoryStore, key: &str) -> String {
    store.object(key).unwrap().version_id
}

#[test]
fn a_pinned_chain_reads_what_the_backups_wrote_over_a_writers_versions() {
    let store = Arc::new(MemoryStore::new());
    store.enable_object_lock();
    let (repo, full, inc) = two_backups(&store);
    let inc_v = version_of(&store, &inc);
    let full_chunk = repo.chain("data", &mk(&repo, &inc)).unwrap().links[0]
        .1
        .chunks[0]
        .clone();
    let original = get_all(store.as_ref(), &full_chunk.key).unwrap();
    // A bucket writer: garbage over both manifests and current.json, a chunk of the same
    // size with other bytes, and a delete marker on top of the full's manifest.
    for k in [&inc, &full, &repo.layout.pointer_key("data").into_string()] {
        store
            .put_object(k, Body::Bytes(b"{garbage"), &garbage())
            .unwrap();
    }
    store
        .put_object(
            &full_chunk.key,
            Body::Bytes(&vec![b'x'; original.len()]),
            &garbage(),
        )
        .unwrap();
    store.delete_object(&full).unwrap();
    assert!(repo.chain("data", &mk(&repo, &inc)).is_err());

    let pins = pin_chain(&repo, "data", &inc, &inc_v).unwrap();
    assert_eq!(pins.len(), 4, "{pins:?}");
    let pinned = pinned_repo(&cfg(), &repo, pins);
    let chain = pinned.chain("data", &mk(&pinned, &inc)).unwrap();
    assert_eq!(chain.links.len(), 2);
    assert_eq!(chain.links[0].0, full);
    let read = get_all(pinned.store().as_ref(), &full_chunk.key).unwrap();
    assert_eq!(read, original);
    // The view writes nothing.
    assert!(pinned
        .store()
        .put_object(&inc, Body::Bytes(b"x"), &garbage())
        .is_err());

    // The history shows every version of the pointer and the manifests, newest first.
    let h = history(&repo, "data").unwrap();
    let of = |k: &str| h.iter().filter(|v| v.key == k).count();
    assert_eq!(
        (of(&full), of(&inc), of(&repo.layout.pointer_key("data"))),
        (3, 2, 3)
    );
    assert!(!h.iter().any(|v| v.key.contains("/chunk-")));
    let inc_versions: Vec<&ListedVersion> = h.iter().filter(|v| v.key == inc).collect();
    assert!(inc_versions[0].is_latest && inc_versions[1].version_id == inc_v);
}

#[test]
fn a_version_that_does_not_fit_is_named() {
    let store = Arc::new(MemoryStore::new());
    store.enable_object_lock();
    let (repo, full, inc) = two_backups(&store);
    let inc_v = version_of(&store, &inc);
    // The full's chunk only exists in another size: nothing fits.
    let chunk = repo.chain("data", &mk(&repo, &inc)).unwrap().links[0]
        .1
        .chunks[0]
        .key
        .clone();
    let v = version_of(&store, &chunk);
    store.set_retention(&chunk, None);
    store.delete_version(&chunk, &v).unwrap();
    store
        .put_object(&chunk, Body::Bytes(b"short"), &garbage())
        .unwrap();
    let e = pin_chain(&repo, "data", &inc, &inc_v).unwrap_err();
    assert!(matches!(e, ChainError::Damaged(_)));
    assert!(
        format!("{e:#}").contains(&format!("no version of chunk {chunk} has the")),
        "{e:#}"
    );
    // A version that is not a manifest, and a key of another subvolume.
    store
        .put_object(&full, Body::Bytes(b"{garbage"), &garbage())
        .unwrap();
    let bad = version_of(&store, &full);
    let e = pin_chain(&repo, "data", &full, &bad).unwrap_err();
    assert!(
        format!("{e:#}").contains(&format!("manifest {full} version {bad}")),
        "{e:#}"
    );
    let e = pin_chain(
        &repo,
        "data",
        "p/subvol/other/full/manifest-20250101T020000Z.json",
        &bad,
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("is not a key under p/subvol/data/"),
        "{e:#}"
    );
    assert_eq!(
        version_id_problem("a b"),
        Some("must not contain spaces or control characters")
    );
    assert_eq!(version_id_problem(""), Some("must be 1 to 1024 characters"));
    assert_eq!(
        version_id_problem("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
        None
    );
}

/// `k` as a manifest key of `data` (the tests' keys are all owned).
fn mk(repo: &Repo, k: &str) -> crate::manifest::ManifestKey {
    repo.manifest_key_of("data", k).unwrap()
}
