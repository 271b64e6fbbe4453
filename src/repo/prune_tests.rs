//! Prune plans over an in-memory bucket: the rules one by one, then a property test over
//! random histories of fulls, incrementals, failed runs and prunes.

use std::sync::Arc;

use super::*;
use crate::config::{Config, ProcessEnv};
use crate::manifest::{ChunkEntry, Kind, Manifest, S3Info, SnapshotRef};
use crate::repo::catalog;
use crate::store::memory::MemoryStore;
use crate::store::{ErrorKind, ObjectStore, PutOptions};

const DAY: i64 = 86_400;
const T0: i64 = 1_735_696_800; // 2025-01-01T02:00:00Z

struct World {
    store: Arc<MemoryStore>,
    repo: Repo,
    class: &'static str,
    now: i64,
}

fn cfg() -> Config {
    Config::parse(
        r#"
[subvolumes]
paths = ["/srv/data"]
[s3]
bucket = "b"
region = "r"
prefix = "p"
"#,
        &ProcessEnv,
    )
    .unwrap()
}

impl World {
    fn new(class: &'static str) -> World {
        World::with_cfg(class, &cfg())
    }

    fn with_cfg(class: &'static str, cfg: &Config) -> World {
        let store = Arc::new(MemoryStore::new());
        store.set_clock(T0);
        let repo = Repo::new(cfg, store.clone(), Arc::new(crate::testing::retrier()));
        World {
            store,
            repo,
            class,
            now: T0,
        }
    }

    fn advance(&mut self, secs: i64) {
        self.now += secs;
        self.store.set_clock(self.now);
    }

    fn opts(&self, class: &str) -> PutOptions {
        PutOptions {
            storage_class: class.into(),
            sse: crate::config::Sse::Aes256,
            content_type: "application/octet-stream",
            kms_key_id: None,
            lock: None,
        }
    }

    fn current(&self) -> Option<String> {
        self.repo.pointer("data").unwrap().map(|p| p.manifest_key)
    }

    /// Chunks of a run at the clock's time; returns their entries.
    fn chunks(&self, kind: Kind, n: u64) -> Vec<ChunkEntry> {
        let ts = Ts::from_unix(self.now);
        (0..n)
            .map(|i| {
                let key = self.repo.layout.chunk_key("data", kind, ts, i);
                let data = format!("{key}-bytes");
                self.store
                    .insert(&key, data.as_bytes(), self.opts(self.class));
                ChunkEntry {
                    key: key.into_string(),
                    size: data.len() as u64,
                    sha256: "0".repeat(64),
                    etag: None,
                    extra: Default::default(),
                }
            })
            .collect()
    }

    /// A published backup (`publish`: also `current.json`). Incrementals chain to the
    /// current one; returns the manifest key.
    fn backup(&mut self, kind: Kind, publish: bool) -> String {
        let ts = Ts::from_unix(self.now);
        let parent = match kind {
            Kind::Full => None,
            Kind::Incremental => Some(self.current().expect("an incremental needs a parent")),
        };
        let chunks = self.chunks(kind, 2);
        let key = self.repo.layout.manifest_key("data", kind, ts);
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
            parent_manifest: parent,
            total_bytes: chunks.iter().map(|c| c.size).sum(),
            chunks,
            chunk_size: 100,
            s3: S3Info {
                storage_class: self.class.into(),
                extra: Default::default(),
            },
            stream_sha256: None,
            send_protocol: None,
            compressed_data: None,
            encryption: None,
            extra: Default::default(),
        };
        if publish {
            self.repo.publish(&key, &m).unwrap();
        } else {
            let o = self.opts("STANDARD");
            self.store.insert(&key, &m.to_json(), o);
        }
        key.into_string()
    }

    fn plan(&self, keep: usize, early: bool, journal: Option<Ts>) -> Result<Plan> {
        let cat = catalog::load(&self.repo, &["data".to_string()]).unwrap();
        plan(
            &cat.subvolumes["data"],
            &Rules {
                keep,
                now: Ts::from_unix(self.now),
                allow_early_delete: early,
                journal_ts: journal,
                locks: Default::default(),
            },
        )
    }

    fn prune(&self, keep: usize, early: bool) -> Plan {
        let p = self.plan(keep, early, None).unwrap();
        execute(&self.repo, &p).unwrap();
        p
    }

    fn sound(&self) -> Vec<String> {
        let cat = catalog::load(&self.repo, &["data".to_string()]).unwrap();
        cat.subvolumes["data"]
            .backups
            .iter()
            .filter(|b| b.is_sound())
            .map(|b| b.key.clone())
            .collect()
    }
}

fn keys(p: &Plan, a: Action) -> Vec<&str> {
    p.items
        .iter()
        .filter(|i| i.action == a)
        .map(|i| i.key.as_str())
        .collect()
}

#[test]
fn keeps_the_current_generation_and_deletes_the_old_one_manifests_first() {
    let mut w = World::new("STANDARD");
    let f1 = w.backup(Kind::Full, true);
    w.advance(7 * DAY);
    let i1 = w.backup(Kind::Incremental, true);
    w.advance(7 * DAY);
    let f2 = w.backup(Kind::Full, true);
    w.advance(7 * DAY);
    let i2 = w.backup(Kind::Incremental, true);
    w.store
        .insert("p/subvol/data/notes.txt", b"x", w.opts("STANDARD"));
    w.store.insert("p/elsewhere", b"x", w.opts("STANDARD"));

    let dry = w.plan(1, false, None).unwrap();
    let deletes = keys(&dry, Action::Delete);
    // Manifests newest first, then their chunks.
    assert_eq!(&deletes[..2], [i1.as_str(), f1.as_str()]);
    assert_eq!(deletes.len(), 2 + 4, "{deletes:?}");
    assert!(deletes[2..].iter().all(|k| k.contains("/chunk-")));
    for k in [&f2, &i2] {
        assert!(keys(&dry, Action::Keep).contains(&k.as_str()), "{k}");
    }
    // A plan deletes nothing by itself.
    assert!(w.store.object(&f1).is_some());

    let before = w.store.keys().len();
    w.prune(1, false);
    assert_eq!(w.store.keys().len(), before - 6);
    assert_eq!(w.sound(), [f2.clone(), i2.clone()]);
    assert!(w.store.object("p/subvol/data/notes.txt").is_some());
    assert!(w.store.object("p/elsewhere").is_some());
    assert!(w.store.object("p/subvol/data/current.json").is_some());
    // With two generations kept nothing goes.
    let mut w2 = World::new("STANDARD");
    w2.backup(Kind::Full, true);
    w2.advance(DAY);
    w2.backup(Kind::Full, true);
    assert!(keys(&w2.plan(2, false, None).unwrap(), Action::Delete).is_empty());
}

#[test]
fn archive_classes_are_deferred_until_their_minimum_duration() {
    let mut w = World::new("DEEP_ARCHIVE");
    let f1 = w.backup(Kind::Full, true);
    w.advance(100 * DAY);
    w.backup(Kind::Full, true);
    let p = w.plan(1, false, None).unwrap();
    // The manifest (STANDARD) goes; its chunks are 100 days old: deferred 80 more days.
    assert_eq!(keys(&p, Action::Delete), [f1.as_str()]);
    let deferred: Vec<&Item> = p
        .items
        .iter()
        .filter(|i| i.action == Action::Defer)
        .collect();
    assert_eq!(deferred.len(), 2);
    let until = Ts::from_unix(T0 + 180 * DAY).iso();
    for d in &deferred {
        assert_eq!(d.class, "DEEP_ARCHIVE");
        assert_eq!(d.age_days, Some(100));
        assert_eq!(d.until.as_deref(), Some(until.as_str()));
    }
    w.prune(1, false);
    // Later the deferred chunks are orphans, and go once their 180 days are over.
    w.advance(79 * DAY);
    assert!(keys(&w.plan(1, false, None).unwrap(), Action::Delete).is_empty());
    w.advance(2 * DAY);
    assert_eq!(
        keys(&w.plan(1, false, None).unwrap(), Action::Delete).len(),
        2
    );
    // --allow-early-delete deletes at once.
    let mut w = World::new("GLACIER");
    w.backup(Kind::Full, true);
    w.advance(DAY);
    w.backup(Kind::Full, true);
    assert_eq!(
        keys(&w.plan(1, true, None).unwrap(), Action::Delete).len(),
        3
    );
    assert_eq!(min_storage_days("STANDARD_IA"), 30);
    assert_eq!(min_storage_days("GLACIER_IR"), 90);
    assert_eq!(min_storage_days("STANDARD"), 0);
}

#[test]
fn orphans_go_only_when_old_and_not_owned_by_a_journal() {
    let mut w = World::new("STANDARD");
    w.backup(Kind::Full, true);
    w.advance(DAY);
    let failed_ts = Ts::from_unix(w.now);
    w.chunks(Kind::Incremental, 2);
    w.advance(3600);
    let p = w.plan(1, false, None).unwrap();
    assert!(keys(&p, Action::Delete).is_empty(), "young orphans stay");
    w.advance(DAY);
    let p = w.plan(1, false, None).unwrap();
    assert_eq!(keys(&p, Action::Delete).len(), 2);
    assert!(p.items.iter().any(|i| i.why.contains("orphan")));
    let p = w.plan(1, false, Some(failed_ts)).unwrap();
    assert!(keys(&p, Action::Delete).is_empty(), "a journal's run stays");
}

#[test]
fn refuses_without_a_sound_current_json_and_keeps_newer_manifests() {
    let mut w = World::new("STANDARD");
    w.backup(Kind::Full, false);
    let e = w.plan(1, false, None).unwrap_err().to_string();
    assert!(e.contains("no current.json"), "{e}");
    let mut w = World::new("STANDARD");
    let f = w.backup(Kind::Full, true);
    w.advance(DAY);
    w.backup(Kind::Incremental, true);
    // The full's chunk vanishes: the current chain is damaged.
    let chunk = w
        .store
        .keys()
        .into_iter()
        .find(|k| k.contains("full/chunk-"))
        .unwrap();
    w.store.remove(&chunk);
    let e = w.plan(1, false, None).unwrap_err().to_string();
    assert!(e.contains("damaged") && e.contains(&chunk), "{e}");
    // A new full published only as a manifest (the pointer PUT failed) is kept.
    let mut w = World::new("STANDARD");
    w.backup(Kind::Full, true);
    w.advance(DAY);
    let newer = w.backup(Kind::Full, false);
    let p = w.plan(1, false, None).unwrap();
    assert!(
        keys(&p, Action::Delete).is_empty(),
        "{:?}",
        keys(&p, Action::Delete)
    );
    assert!(keys(&p, Action::Keep).contains(&newer.as_str()));
    let _ = f;
}

#[test]
fn execute_refuses_keys_outside_the_subvolume_layout() {
    let w = World::new("STANDARD");
    for key in [
        "p/subvol/data/current.json",
        "p/elsewhere",
        "p/subvol/home/full/manifest-20250101T020000Z.json",
    ] {
        let plan = Plan {
            subvolume: "data".into(),
            items: vec![Item {
                action: Action::Delete,
                key: key.into(),
                class: "STANDARD".into(),
                age_days: None,
                size: 0,
                why: String::new(),
                until: None,
                locked_until: None,
                version_id: None,
                needs: Vec::new(),
            }],
        };
        assert!(execute(&w.repo, &plan).is_err(), "{key}");
    }
    assert!(!w.store.log().iter().any(|l| l.starts_with("DELETE")));
}

#[test]
fn a_prune_stopped_at_any_deletion_leaves_only_whole_chains() {
    // Two old generations with incrementals; the prune fails at the n-th DELETE, for
    // every n: whatever is left, each manifest still there is sound or was already gone.
    let build = || {
        let mut w = World::new("STANDARD");
        for _ in 0..3 {
            w.backup(Kind::Full, true);
            for _ in 0..2 {
                w.advance(DAY);
                w.backup(Kind::Incremental, true);
            }
            w.advance(DAY);
        }
        w
    };
    let total = build().plan(1, false, None).unwrap().deletes().count();
    assert!(total > 10, "{total}");
    for n in 0..total {
        let w = build();
        let sound_before = w.sound();
        let p = w.plan(1, false, None).unwrap();
        for (i, item) in p.deletes().enumerate() {
            if i == n {
                w.store
                    .fail(&format!("DELETE {}", item.key), ErrorKind::Permanent, 10);
            }
        }
        let e = execute(&w.repo, &p).unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("after {n} deletions")),
            "{e:#}"
        );
        let now_sound = w.sound();
        for k in &sound_before {
            if w.store.object(k).is_some() {
                assert!(
                    now_sound.contains(k),
                    "stopped after {n}: {k} lost part of its chain"
                );
            }
        }
        let cur = w.current().unwrap();
        assert!(now_sound.contains(&cur), "stopped after {n}");
    }
}

#[test]
fn a_doctored_manifest_cannot_make_prune_delete_what_it_names() {
    let mut w = World::new("STANDARD");
    w.advance(DAY);
    let f = w.backup(Kind::Full, true);
    let theirs = "p/subvol/home/full/chunk-20250101T020000Z-0.bin";
    w.store.insert(theirs, b"home's", w.opts("STANDARD"));
    // An older manifest (a bucket writer's) naming home's chunk and one of ours.
    let mut m: Manifest = serde_json::from_slice(&w.store.object(&f).unwrap().data).unwrap();
    let ours = m.chunks[0].key.clone();
    m.created_at = "20250101T020000Z".into();
    m.chunks.push(ChunkEntry {
        key: theirs.into(),
        ..m.chunks[0].clone()
    });
    let doctored = "p/subvol/data/full/manifest-20250101T020000Z.json";
    w.store.insert(doctored, &m.to_json(), w.opts("STANDARD"));
    let p = w.plan(1, false, None).unwrap();
    assert_eq!(keys(&p, Action::Delete), [doctored]);
    execute(&w.repo, &p).unwrap();
    assert!(w.store.object(theirs).is_some() && w.store.object(&ours).is_some());
    assert_eq!(w.sound(), [f]);
}

/// A small deterministic generator (xorshift), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_histories_never_leave_a_kept_chain_incomplete() {
    let (mut deleted, mut deferred) = (0, 0);
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let class = ["STANDARD", "DEEP_ARCHIVE", "GLACIER", "STANDARD_IA"][rng.below(4) as usize];
        let mut w = World::new(class);
        w.backup(Kind::Full, true);
        for step in 0..40 {
            w.advance(1 + rng.below(30) as i64 * DAY);
            match rng.below(10) {
                0..=1 => {
                    w.backup(Kind::Full, true);
                }
                2..=5 => {
                    w.backup(Kind::Incremental, true);
                }
                6 => {
                    // A failed run: chunks only.
                    let kind = if rng.below(2) == 0 {
                        Kind::Full
                    } else {
                        Kind::Incremental
                    };
                    w.chunks(kind, 1 + rng.below(3));
                }
                _ => {
                    let keep = 1 + rng.below(3) as usize;
                    let early = rng.below(4) == 0;
                    let sound_before = w.sound();
                    let cur = w.current().unwrap();
                    let cat = catalog::load(&w.repo, &["data".to_string()]).unwrap();
                    let gens: Vec<String> = cat.subvolumes["data"]
                        .generations()
                        .into_iter()
                        .map(|(g, _)| g)
                        .collect();
                    let p = w.prune(keep, early);
                    deleted += p.deletes().count();
                    deferred += p.items.iter().filter(|i| i.action == Action::Defer).count();
                    let ctx =
                        format!("seed {seed} step {step} keep {keep} early {early} class {class}");
                    // current.json still names a whole chain, every chunk there.
                    assert_eq!(w.current().as_deref(), Some(cur.as_str()), "{ctx}");
                    let chain = w.repo.chain("data", &mk(&w.repo, &cur)).unwrap();
                    for (_, m) in &chain.links {
                        for c in &m.chunks {
                            let h = w.store.head(&c.key).unwrap();
                            assert_eq!(h.map(|h| h.size), Some(c.size), "{ctx}: {}", c.key);
                        }
                    }
                    // Every manifest still in the bucket that was sound is still sound.
                    let now_sound = w.sound();
                    for k in &sound_before {
                        if w.store.object(k).is_some() {
                            assert!(now_sound.contains(k), "{ctx}: {k} lost part of its chain");
                        }
                    }
                    // The current generation and the keep-1 before it are all there.
                    let cur_gen = cat.subvolumes["data"]
                        .backup(&cur)
                        .unwrap()
                        .generation
                        .clone()
                        .unwrap();
                    let at = gens.iter().position(|g| *g == cur_gen).unwrap();
                    for g in &gens[at.saturating_sub(keep - 1)..] {
                        for b in &cat.subvolumes["data"].backups {
                            if b.generation.as_ref() == Some(g) {
                                assert!(
                                    w.store.object(&b.key).is_some(),
                                    "{ctx}: kept {} deleted",
                                    b.key
                                );
                            }
                        }
                    }
                    // Nothing deleted is still needed, and deletions never touch the pointer.
                    assert!(
                        p.deletes().all(|i| !i.key.ends_with("current.json")),
                        "{ctx}"
                    );
                }
            }
        }
    }
    // The histories exercised both paths.
    assert!(
        deleted > 500 && deferred > 50,
        "{deleted} deleted, {deferred} deferred"
    );
}

impl World {
    fn subvol(&self) -> catalog::Subvol {
        let mut cat = catalog::load(&self.repo, &["data".to_string()]).unwrap();
        cat.subvolumes.remove("data").unwrap()
    }

    /// Points `current.json` at `key` (a PUT of the pointer alone, as a bucket writer can).
    fn repoint(&self, key: &str) {
        let p = crate::manifest::Pointer {
            manifest_key: key.into(),
            kind: if key.contains("/full/") {
                Kind::Full
            } else {
                Kind::Incremental
            },
            created_at: "20250101T020000Z".into(),
            extra: Default::default(),
        };
        self.store.insert(
            "p/subvol/data/current.json",
            &p.to_json(),
            self.opts("STANDARD"),
        );
    }
}

#[test]
fn current_json_must_be_the_hosts_last_backup_or_chain_back_to_it() {
    let mut w = World::new("STANDARD");
    let f1 = w.backup(Kind::Full, true);
    w.advance(DAY);
    let i1 = w.backup(Kind::Incremental, true);
    w.advance(DAY);
    let i2 = w.backup(Kind::Incremental, true);
    // current.json names the state's manifest, or a newer one whose chain holds it.
    for last in [&i2, &i1, &f1] {
        assert_eq!(pointer_agrees(&w.subvol(), last), Ok(()), "{last}");
    }
    // A forged full (published by a bucket writer): refused, naming both keys; also
    // with an incremental on top of it, and when current.json is rolled back.
    w.advance(DAY);
    let forged = w.backup(Kind::Full, true);
    let e = pointer_agrees(&w.subvol(), &i2).unwrap_err();
    assert!(e.contains(&forged) && e.contains(&i2), "{e}");
    w.advance(DAY);
    let on_top = w.backup(Kind::Incremental, true);
    let e = pointer_agrees(&w.subvol(), &i2).unwrap_err();
    assert!(e.contains(&on_top) && e.contains(&i2), "{e}");
    w.repoint(&i1);
    assert!(pointer_agrees(&w.subvol(), &i2).is_err());
    // A current.json that names nothing usable is plan's to refuse.
    w.store
        .insert("p/subvol/data/current.json", b"{", w.opts("STANDARD"));
    assert_eq!(pointer_agrees(&w.subvol(), &i2), Ok(()));
    assert!(w.plan(1, false, None).is_err());
}

#[test]
fn prune_all_refuses_what_the_state_disagrees_with_unless_forced() {
    use crate::repo::prune_all::{prune_all, Request};
    use crate::state::{State, SubvolState};
    let dir = crate::testing::Scratch::new("prune-state");
    let state_path = dir.0.join("state.json");
    let cfg = Config::parse(
        &format!(
            r#"
[global]
state_path = "{}"
lock_path = "{}"
[subvolumes]
paths = ["/srv/data"]
[s3]
bucket = "b"
region = "r"
prefix = "p"
"#,
            state_path.display(),
            dir.0.join("lock").display()
        ),
        &ProcessEnv,
    )
    .unwrap();
    let mut w = World::with_cfg("STANDARD", &cfg);
    let f1 = w.backup(Kind::Full, true);
    w.advance(DAY);
    let i1 = w.backup(Kind::Incremental, true);
    let mut state = State::default();
    state.subvolumes.insert(
        "data".into(),
        SubvolState {
            last_manifest: Some(i1.clone()),
            ..Default::default()
        },
    );
    state.save(&state_path).unwrap();
    w.advance(DAY);
    let forged = w.backup(Kind::Full, true);
    let req = |force| Request {
        names: vec!["data".into()],
        keep: 1,
        confirm: true,
        allow_early_delete: false,
        force,
    };
    let before = w.store.keys();
    let (plans, refused) = prune_all(&cfg, &w.repo, &req(false)).unwrap();
    assert!(plans.is_empty());
    let r = refused.join("\n");
    assert!(
        refused.len() == 1
            && r.contains(&forged)
            && r.contains(&i1)
            && r.contains(&state_path.display().to_string())
            && r.contains("--force"),
        "{r}"
    );
    assert_eq!(w.store.keys(), before, "a refused prune deleted something");
    // A corrupt state refuses too (naming the file), unless forced.
    std::fs::write(&state_path, "{").unwrap();
    let e = prune_all(&cfg, &w.repo, &req(false)).unwrap_err();
    assert!(format!("{e:#}").contains("--force"), "{e:#}");
    assert_eq!(w.store.keys(), before);
    state.save(&state_path).unwrap();
    // --force goes past it: the real chain is deleted.
    let (plans, refused) = prune_all(&cfg, &w.repo, &req(true)).unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(
        keys(&plans[0], Action::Delete)[..2],
        [i1.as_str(), f1.as_str()]
    );
    assert!(w.store.object(&f1).is_none() && w.store.object(&i1).is_none());
    // A state without an entry for the subvolume, or no state at all, checks nothing.
    w.advance(DAY);
    w.backup(Kind::Full, true);
    State::default().save(&state_path).unwrap();
    let (_, refused) = prune_all(&cfg, &w.repo, &req(false)).unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    std::fs::remove_file(&state_path).unwrap();
    w.advance(DAY);
    w.backup(Kind::Full, true);
    let (_, refused) = prune_all(&cfg, &w.repo, &req(false)).unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert!(w.store.object(&forged).is_none());
}

/// Object Lock: two generations (a full and an incremental, then a full), the old one
/// due for deletion; the bucket honours locks. Returns the world and (f1, i1, f2).
fn locked_world() -> (World, String, String, String) {
    let mut w = World::new("STANDARD");
    w.store.enable_object_lock();
    let f1 = w.backup(Kind::Full, true);
    w.advance(7 * DAY);
    let i1 = w.backup(Kind::Incremental, true);
    w.advance(7 * DAY);
    let f2 = w.backup(Kind::Full, true);
    (w, f1, i1, f2)
}

fn lock_until(w: &World, key: &str, days: i64) {
    w.store.set_retention(
        key,
        Some(crate::store::Retention {
            mode: "GOVERNANCE".into(),
            until: Ts::from_unix(w.now + days * DAY),
        }),
    );
}

/// The plan as `prune` makes it with `[object_lock]`: dates read for what would go.
fn locked_plan(w: &World) -> Plan {
    let cat = catalog::load(&w.repo, &["data".to_string()]).unwrap();
    let sv = &cat.subvolumes["data"];
    let mut rules = Rules {
        keep: 1,
        now: Ts::from_unix(w.now),
        allow_early_delete: false,
        journal_ts: None,
        locks: Default::default(),
    };
    let first = plan(sv, &rules).unwrap();
    rules.locks =
        crate::repo::object_lock::read_locks(&w.repo, first.deletes().map(|i| i.key.as_str()))
            .unwrap();
    plan(sv, &rules).unwrap()
}

#[test]
fn locked_objects_are_deferred_with_their_chain_and_the_read_version_is_deleted() {
    let (w, f1, i1, _) = locked_world();
    let chunk_of = |m: &str| {
        w.store
            .keys()
            .into_iter()
            .find(|k| k.contains("/chunk-") && k.contains(&m[m.len() - 21..m.len() - 5]))
    };
    // The incremental stays locked for 3 more days: it, its chunk and its whole chain
    // stay (the full as its ancestor), and the plan says until when.
    lock_until(&w, &i1, 3);
    let p = locked_plan(&w);
    assert!(keys(&p, Action::Delete).is_empty(), "{:?}", p.items);
    let i = p.items.iter().find(|i| i.key == i1).unwrap();
    assert_eq!(i.action, Action::Defer);
    let date = Ts::from_unix(w.now + 3 * DAY).iso();
    assert_eq!(i.locked_until.as_deref(), Some(date.as_str()));
    assert_eq!(i.until.as_deref(), Some(date.as_str()));
    assert!(keys(&p, Action::Keep).contains(&f1.as_str()));
    let c = chunk_of(&i1).unwrap();
    assert!(keys(&p, Action::Keep).contains(&c.as_str()));

    // Its date passed: everything of the old generation goes, by version, for good.
    lock_until(&w, &i1, -1);
    let p = locked_plan(&w);
    assert_eq!(keys(&p, Action::Delete).len(), 2 + 4);
    assert!(p.deletes().all(|i| i.version_id.is_some()));
    let done = execute_with(&w.repo, &p, true).unwrap();
    assert_eq!((done.deleted, done.kept.len()), (6, 0));
    let log = w.store.log();
    assert!(log.iter().any(|l| l
        == &format!(
            "DELETE {f1} version {}",
            p.items[1].version_id.clone().unwrap()
        )));
    let left = w.store.list_versions("p/subvol/data/").unwrap();
    assert!(!left.iter().any(|v| v.key == f1 || v.key == i1), "{left:?}");
}

#[test]
fn a_deletion_the_service_refuses_keeps_the_object_and_what_it_needs() {
    let (w, f1, i1, _) = locked_world();
    // The full is locked, but HEAD showed no date (say, a legal hold): the plan deletes
    // the whole generation, newest manifest first.
    let mut p = locked_plan(&w);
    lock_until(&w, &f1, 5);
    assert_eq!(&keys(&p, Action::Delete)[..2], [i1.as_str(), f1.as_str()]);
    // Without [object_lock] a refusal fails the prune, as before.
    let e = execute_with(&w.repo, &p, false).unwrap_err();
    assert!(format!("{e:#}").contains("AccessDenied"), "{e:#}");
    // (the incremental's manifest went before the refusal)
    p.items.retain(|i| i.key != i1);
    let done = execute_with(&w.repo, &p, true).unwrap();
    let kept: Vec<&str> = done.kept.iter().map(|(k, _)| k.as_str()).collect();
    // The full's manifest and both its chunks stay; the incremental's two chunks go.
    assert_eq!(kept.len(), 3, "{:?}", done.kept);
    assert_eq!(kept[0], f1);
    assert!(done.kept[0]
        .1
        .contains("kept, locked: the service refused the deletion"));
    assert!(done.kept[1].1.contains(&format!("{f1} needs it")));
    assert_eq!(done.deleted, 2);
    assert!(w.store.object(&f1).is_some());
    let cat = catalog::load(&w.repo, &["data".to_string()]).unwrap();
    assert!(cat.subvolumes["data"].backup(&f1).unwrap().is_sound());
}

/// `k` as a manifest key of `data` (the tests' keys are all owned).
fn mk(repo: &Repo, k: &str) -> crate::manifest::ManifestKey {
    repo.manifest_key_of("data", k).unwrap()
}

/// The manifests one listing reads are held at once, so together they are held to a
/// budget; over it, the whole command fails (a manifest left unread would look
/// unrestorable to prune, which deletes such manifests and the chunks only they name).
#[test]
fn the_manifests_of_one_listing_are_held_to_a_budget_and_over_it_nothing_is_planned() {
    let mut w = World::new("STANDARD");
    let first = w.backup(Kind::Full, true);
    w.advance(86_400);
    let second = w.backup(Kind::Incremental, true);
    let size = |k: &str| {
        let b = crate::store::get_all(w.store.as_ref(), k).unwrap();
        (crate::manifest::json_values(&b), b.len() as u64)
    };
    let (a, b) = (size(&first), size(&second));
    let all = (a.0 + b.0, a.1 + b.1);
    let names = ["data".to_string()];
    assert_eq!(
        catalog::load_within(&w.repo, &names, all)
            .unwrap()
            .subvolumes["data"]
            .backups
            .len(),
        2
    );
    for budget in [(all.0 - 1, all.1), (all.0, all.1 - 1)] {
        let e = format!(
            "{:#}",
            catalog::load_within(&w.repo, &names, budget).err().unwrap()
        );
        assert!(
            e.contains(&format!(
                "hold {} JSON values in {} bytes, more than the {} values or {} bytes this tool holds for one listing (reached at {second})",
                all.0, all.1, budget.0, budget.1
            )),
            "{e}"
        );
    }
}
