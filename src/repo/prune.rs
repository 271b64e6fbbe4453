//! Remote retention: which objects of one subvolume's layout `prune` deletes, and in what
//! order. A *generation* is a full and every incremental chaining to it. Kept: the
//! generation `current.json` is in plus the `keep - 1` newest before it, every
//! generation newer than it, any manifest newer than the one `current.json` names (a
//! backup being published), anything of the run a resume journal owns, and every object
//! a kept manifest needs (its ancestors and their chunks). Deleted: the rest of the
//! layout — older generations, manifests whose chain is broken, chunks no kept manifest
//! names (orphans of failed runs only when older than a day). Never deleted:
//! `current.json`, keys outside the layout. An object younger than its storage class's
//! minimum duration is *deferred* (S3 bills the remainder anyway) unless early deletion is
//! allowed; a deferred manifest keeps its ancestors and chunks, so no manifest left in
//! the bucket ever names something prune deleted. Execution deletes manifests newest
//! first, then chunks: a stop at any point leaves only whole chains and orphans.
//! With `[object_lock]` the caller reads the lock of every planned deletion
//! (`Rules::locks`): an object whose retain-until date has not passed is deferred until
//! then, like one under its minimum storage duration, and the version read is the one
//! deleted. A deletion the service refuses (`AccessDenied`: a lock or a legal hold the
//! dates did not show) is *kept, locked*, and so is everything that object needs.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::repo::catalog::{Backup, Subvol};
use crate::repo::object_lock::LockState;
use crate::repo::Repo;
use crate::store::ListedObject;
use crate::ts::Ts;

/// Orphan chunks younger than this may belong to a run still uploading.
pub const ORPHAN_MIN_AGE_SECS: i64 = 86_400;

/// Days S3 bills an object at least (AWS: STANDARD_IA and ONEZONE_IA 30, GLACIER_IR and
/// GLACIER 90, DEEP_ARCHIVE 180).
pub fn min_storage_days(class: &str) -> i64 {
    match class {
        "STANDARD_IA" | "ONEZONE_IA" => 30,
        "GLACIER_IR" | "GLACIER" => 90,
        "DEEP_ARCHIVE" => 180,
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Delete,
    Defer,
    Keep,
}

/// One object and what prune does with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub action: Action,
    pub key: String,
    pub class: String,
    /// Whole days since LastModified (`None`: unknown).
    pub age_days: Option<i64>,
    pub size: u64,
    pub why: String,
    /// For `Defer`: when the minimum storage duration ends (`YYYY-MM-DDTHH:MM:SSZ`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Object Lock: the retain-until date read (set when it has not passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// Object Lock: the version a deletion deletes (`DELETE ?versionId=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// For a manifest: the keys it needs (its parent manifest, its chunks), kept when
    /// its own deletion is refused.
    #[serde(skip)]
    pub needs: Vec<String>,
}

/// What the plan may do.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Generations kept, counting the current one (>= 1).
    pub keep: usize,
    pub now: Ts,
    pub allow_early_delete: bool,
    /// The run timestamp of a resume journal: its keys are never touched.
    pub journal_ts: Option<Ts>,
    /// Object Lock: what HEAD said of the keys planned for deletion (empty without it).
    pub locks: HashMap<String, LockState>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub subvolume: String,
    /// Deletions in execution order (manifests newest first, then chunks), then
    /// deferrals, then what is kept.
    pub items: Vec<Item>,
}

impl Plan {
    pub fn deletes(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.action == Action::Delete)
    }
}

fn age_days(o: &ListedObject, now: Ts) -> Option<i64> {
    o.last_modified
        .map(|t| (now.unix() - t.unix()).max(0) / 86_400)
}

/// The deletion date of `o`, or `None` when it may go now: the later of the end of its
/// minimum storage duration and of its Object Lock.
fn deferred_until(o: &ListedObject, rules: &Rules) -> Option<Ts> {
    let min = min_storage_days(o.storage_class_or_standard());
    let storage = if rules.allow_early_delete || min == 0 {
        None
    } else {
        match o.last_modified {
            Some(t) => {
                let end = t.add_secs(min * 86_400);
                (end > rules.now).then_some(end)
            }
            // Age unknown: assume young.
            None => Some(rules.now.add_secs(min * 86_400)),
        }
    };
    storage.max(locked_until(o, rules))
}

/// The retain-until date of `o` when it has not passed.
fn locked_until(o: &ListedObject, rules: &Rules) -> Option<Ts> {
    let l = rules.locks.get(&o.key)?.lock.as_ref()?;
    (l.until > rules.now).then_some(l.until)
}

fn item(o: &ListedObject, action: Action, why: String, rules: &Rules, until: Option<Ts>) -> Item {
    let lock = rules.locks.get(&o.key);
    Item {
        action,
        key: o.key.clone(),
        class: o.storage_class_or_standard().to_string(),
        age_days: age_days(o, rules.now),
        size: o.size,
        why,
        until: until.map(Ts::iso),
        locked_until: locked_until(o, rules).map(Ts::iso),
        version_id: lock.and_then(|l| l.version_id.clone()),
        needs: Vec::new(),
    }
}

/// Plans the pruning of one subvolume. Refuses (nothing is pruned) when `current.json`
/// is missing or names a backup whose chain is not sound.
pub fn plan(sv: &Subvol, rules: &Rules) -> Result<Plan> {
    let name = &sv.name;
    let cur_key = match &sv.current {
        None => bail!(
            "subvolume {name}: there is no current.json, so nothing is known to be needed; \
             nothing is pruned (back it up first)"
        ),
        Some(Err(why)) => bail!(
            "subvolume {name}: current.json cannot be used ({why}); nothing is pruned: run \
             verify, and back up again to publish a sound backup"
        ),
        Some(Ok(k)) => k.as_str(),
    };
    let Some(cur) = sv.backup(cur_key) else {
        bail!(
            "subvolume {name}: current.json names {cur_key}, which is not in the bucket; \
             nothing is pruned (run verify)"
        );
    };
    let Some(cur_gen) = cur.generation.clone() else {
        bail!(
            "subvolume {name}: the backup current.json names ({cur_key}) is damaged: {}; \
             nothing is pruned (run verify; the next backup starts a new full)",
            cur.problems.join("; ")
        );
    };
    let gens = sv.generations();
    let at = gens
        .iter()
        .position(|(g, _)| *g == cur_gen)
        .context("internal: the current generation is not among the generations")?;
    let first_kept = at.saturating_sub(rules.keep.max(1) - 1);
    let kept_gens: HashSet<&str> = gens[first_kept..].iter().map(|(g, _)| g.as_str()).collect();

    // Why each manifest is kept; those absent are candidates for deletion.
    let mut keep_why: HashMap<&str, String> = HashMap::new();
    for b in &sv.backups {
        let why = if b
            .generation
            .as_deref()
            .is_some_and(|g| kept_gens.contains(g))
        {
            let g = b.generation.as_deref().unwrap_or_default();
            if g == cur_gen {
                Some("in the current generation".to_string())
            } else if gens[..at].iter().any(|(x, _)| x == g) {
                Some(format!("in a kept generation ({g})"))
            } else {
                Some(format!("in a generation newer than current.json ({g})"))
            }
        } else if b.ts > cur.ts {
            Some("newer than the backup current.json names (being published?)".to_string())
        } else if Some(b.ts) == rules.journal_ts {
            Some("the run a resume journal owns".to_string())
        } else {
            None
        };
        if let Some(w) = why {
            keep_why.insert(&b.key, w);
        }
    }
    // Deferred manifests stay, with their ancestors (so no chain left behind is broken).
    let mut defer_until: HashMap<&str, Ts> = HashMap::new();
    for b in &sv.backups {
        if !keep_why.contains_key(b.key.as_str()) {
            if let Some(t) = deferred_until(&b.object, rules) {
                defer_until.insert(&b.key, t);
            }
        }
    }
    let index: HashMap<&str, &Backup> = sv.backups.iter().map(|b| (b.key.as_str(), b)).collect();
    let mut retained: BTreeSet<&str> = keep_why.keys().copied().collect();
    retained.extend(defer_until.keys().copied());
    let mut stack: Vec<&str> = retained.iter().copied().collect();
    while let Some(k) = stack.pop() {
        if let Some(p) = index.get(k).and_then(|b| b.parent()) {
            if index.contains_key(p) && retained.insert(p) {
                keep_why
                    .entry(p)
                    .or_insert_with(|| format!("an ancestor of the retained {k}"));
                stack.push(p);
            }
        }
    }
    // Chunks: needed by a retained manifest, else deleted (orphans only when old).
    let needed: HashMap<&str, &str> = sv
        .backups
        .iter()
        .filter(|b| retained.contains(b.key.as_str()))
        .flat_map(|b| b.chunk_keys().map(move |c| (c, b.key.as_str())))
        .collect();
    let named_by: HashMap<&str, &str> = sv
        .backups
        .iter()
        .flat_map(|b| b.chunk_keys().map(move |c| (c, b.key.as_str())))
        .collect();

    let mut del_manifests = Vec::new();
    let mut del_chunks = Vec::new();
    let mut rest = Vec::new();
    // Manifests, newest first.
    for b in sv.backups.iter().rev() {
        if let Some(why) = keep_why.get(b.key.as_str()) {
            rest.push(item(&b.object, Action::Keep, why.clone(), rules, None));
            continue;
        }
        let why = match &b.generation {
            Some(g) => format!("generation {g} is older than the {} kept", rules.keep),
            None => format!(
                "older than current.json's backup and not restorable: {}",
                b.problems.join("; ")
            ),
        };
        match defer_until.get(b.key.as_str()) {
            Some(t) => rest.push(item(&b.object, Action::Defer, why, rules, Some(*t))),
            None => {
                let mut i = item(&b.object, Action::Delete, why, rules, None);
                i.needs = b
                    .parent()
                    .into_iter()
                    .chain(b.chunk_keys())
                    .map(str::to_string)
                    .collect();
                del_manifests.push(i);
            }
        }
    }
    for o in sv.chunks.values() {
        if let Some(m) = needed.get(o.key.as_str()) {
            let why = format!("named by the retained {m}");
            rest.push(item(o, Action::Keep, why, rules, None));
            continue;
        }
        let owned = rules
            .journal_ts
            .is_some_and(|t| chunk_ts(&o.key) == Some(t));
        let why = match named_by.get(o.key.as_str()) {
            Some(m) => format!("named only by the deleted {m}"),
            None if owned => {
                rest.push(item(
                    o,
                    Action::Keep,
                    "the run a resume journal owns".into(),
                    rules,
                    None,
                ));
                continue;
            }
            None => {
                let young = o
                    .last_modified
                    .is_none_or(|t| rules.now.unix() - t.unix() < ORPHAN_MIN_AGE_SECS);
                if young {
                    rest.push(item(
                        o,
                        Action::Keep,
                        "an orphan younger than a day (a run may still be uploading)".into(),
                        rules,
                        None,
                    ));
                    continue;
                }
                "an orphan: no manifest names it (left by a failed run)".to_string()
            }
        };
        match deferred_until(o, rules) {
            Some(t) => rest.push(item(o, Action::Defer, why, rules, Some(t))),
            None => del_chunks.push(item(o, Action::Delete, why, rules, None)),
        }
    }
    if let Some(p) = &sv.pointer {
        rest.push(item(
            p,
            Action::Keep,
            "current.json is never pruned".into(),
            rules,
            None,
        ));
    }
    for o in &sv.stray {
        rest.push(item(
            o,
            Action::Keep,
            "not a key this tool writes: never deleted (remove it yourself if it is junk)".into(),
            rules,
            None,
        ));
    }
    rest.sort_by_key(|i| i.action == Action::Keep);
    let mut items = del_manifests;
    items.extend(del_chunks);
    items.extend(rest);
    Ok(Plan {
        subvolume: name.clone(),
        items,
    })
}

/// Whether `current.json` agrees with this host's own record of its last backup
/// (`last_manifest` of the local state): the manifest it names is that one, or chains
/// back to it through `parent_manifest` links of the listing. Someone who can only write
/// the bucket can repoint `current.json` at a forged full; trusting it would make prune
/// delete the real chain. The error names both keys. Passes when `current.json` names
/// nothing usable: `plan` refuses that itself.
pub fn pointer_agrees(sv: &Subvol, last_manifest: &str) -> Result<(), String> {
    let Some(cur) = sv.current_key() else {
        return Ok(());
    };
    let index: HashMap<&str, &Backup> = sv.backups.iter().map(|b| (b.key.as_str(), b)).collect();
    let mut seen = HashSet::new();
    let mut at = Some(cur);
    while let Some(k) = at {
        if k == last_manifest {
            return Ok(());
        }
        if !seen.insert(k) {
            break;
        }
        at = index.get(k).and_then(|b| b.parent());
    }
    Err(format!(
        "current.json names {cur}, but this host's last backup is {last_manifest}, and \
         {cur} is neither it nor a backup whose chain contains it"
    ))
}

/// The run timestamp in a chunk key (`.../chunk-TS-i.bin`).
fn chunk_ts(key: &str) -> Option<Ts> {
    let file = key.rsplit('/').next()?;
    let t = file.strip_prefix("chunk-")?.split('-').next()?;
    Ts::parse(t).ok()
}

/// Carries out the plan's deletions in order; stops at the first failure (what is left
/// is whole chains and orphans). Returns the objects and bytes deleted.
#[cfg(test)]
pub fn execute(repo: &Repo, plan: &Plan) -> Result<(usize, u64)> {
    execute_with(repo, plan, false).map(|d| (d.deleted, d.bytes))
}

/// What [`execute_with`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Done {
    pub deleted: usize,
    pub bytes: u64,
    /// Deletions not made, with why: refused by the service (`AccessDenied`), or needed
    /// by an object whose deletion was refused.
    pub kept: Vec<(String, String)>,
}

/// [`execute`]; with `locking` (`[object_lock]`) a deletion the service refuses with
/// `AccessDenied` keeps that object and everything it needs, and the run goes on.
/// Deletions name the version read with the lock, when there is one.
pub fn execute_with(repo: &Repo, plan: &Plan, locking: bool) -> Result<Done> {
    let mut n = 0;
    let mut bytes = 0u64;
    let mut kept = Vec::new();
    // Keys a refused deletion still needs, and which refused object needs them.
    let mut held: HashMap<String, String> = HashMap::new();
    for i in plan.deletes() {
        // Never a key outside this subvolume's layout, never the pointer.
        match repo.layout.parse(&i.key) {
            Some((name, shape))
                if name == plan.subvolume && shape != crate::manifest::Shape::Pointer => {}
            _ => bail!(
                "internal: refusing to delete {}, not a backup object of {}",
                i.key,
                plan.subvolume
            ),
        }
        if repo.retrier().cancelled() {
            bail!("interrupted by a signal after deleting {n} objects");
        }
        if let Some(by) = held.get(&i.key).cloned() {
            for k in &i.needs {
                held.insert(k.clone(), by.clone());
            }
            let why = format!("kept, locked: {by} needs it, and its deletion was refused");
            crate::event!(
                Info,
                "prune_kept_locked",
                subvolume = plan.subvolume,
                key = i.key,
                why = why
            );
            kept.push((i.key.clone(), why));
            continue;
        }
        let store = repo.store();
        let deleted = repo.retrier().run(|| match &i.version_id {
            Some(v) => store.delete_version(&i.key, v),
            None => store.delete_object(&i.key),
        });
        match deleted {
            Err(e) if locking && e.is_access_denied() => {
                for k in &i.needs {
                    held.insert(k.clone(), i.key.clone());
                }
                let why = format!("kept, locked: the service refused the deletion ({e})");
                crate::event!(
                    Info,
                    "prune_kept_locked",
                    subvolume = plan.subvolume,
                    key = i.key,
                    why = why
                );
                kept.push((i.key.clone(), why));
                continue;
            }
            r => r.with_context(|| format!("deleting {} (after {n} deletions)", i.key))?,
        }
        crate::event!(
            Info,
            "prune_deleted",
            subvolume = plan.subvolume,
            key = i.key,
            class = i.class,
            size = i.size
        );
        n += 1;
        bytes += i.size;
    }
    Ok(Done {
        deleted: n,
        bytes,
        kept,
    })
}

#[cfg(test)]
#[path = "prune_tests.rs"]
mod tests;
