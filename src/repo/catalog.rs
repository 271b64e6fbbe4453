//! The catalog: one listing of the prefix (ListObjectsV2) read as backups. Every key is
//! sorted into the layout's shapes (`Layout::parse`): pointers, manifests, chunks, and
//! what the layout never writes. Manifests are fetched and checked like a restore checks
//! them (`Manifest::check`), then linked: each to the full it chains to (its
//! *generation*), with what is wrong along the way — a parent missing or damaged, a chunk
//! missing or of another size than the manifest says. Nothing here writes; `list`,
//! `prune` and the property test read it. Memory: the listing and every manifest of the
//! selected subvolumes, proportional to the bucket's objects, never to their bytes.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Context, Result};

use crate::manifest::{Kind, Manifest, Shape};
use crate::repo::chain::{self, ChainError};
use crate::repo::Repo;
use crate::store::ListedObject;
use crate::ts::Ts;

/// One manifest object and what it says.
#[derive(Clone, Debug)]
pub struct Backup {
    pub key: String,
    pub object: ListedObject,
    /// From the key; the manifest must agree.
    pub kind: Kind,
    pub ts: Ts,
    /// The checked manifest, or why it cannot be read or trusted.
    pub manifest: Result<Manifest, String>,
    /// The key of the full this backup chains to, when the whole chain is sound.
    pub generation: Option<String>,
    /// What is wrong with this backup or its chain (empty: restorable as far as the
    /// listing can tell).
    pub problems: Vec<String>,
}

impl Backup {
    #[cfg(test)]
    pub fn is_sound(&self) -> bool {
        self.generation.is_some()
    }

    /// Chunk keys this manifest names (none when it cannot be read).
    pub fn chunk_keys(&self) -> impl Iterator<Item = &str> {
        self.manifest
            .iter()
            .flat_map(|m| m.chunks.iter().map(|c| c.key.as_str()))
    }

    pub fn parent(&self) -> Option<&str> {
        self.manifest
            .as_ref()
            .ok()
            .and_then(|m| m.parent_manifest.as_deref())
    }
}

/// Everything under `P subvol/<name>/`.
#[derive(Clone, Debug, Default)]
pub struct Subvol {
    pub name: String,
    pub pointer: Option<ListedObject>,
    /// The manifest `current.json` names, or why it cannot be read.
    pub current: Option<Result<String, String>>,
    /// Oldest first (by the key's timestamp, then key).
    pub backups: Vec<Backup>,
    /// Chunk objects by key.
    pub chunks: BTreeMap<String, ListedObject>,
    /// Keys under the subvolume's prefix that are not of the layout.
    pub stray: Vec<ListedObject>,
}

impl Subvol {
    pub fn backup(&self, key: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.key == key)
    }

    /// The manifest key `current.json` names, when it names one that is readable.
    pub fn current_key(&self) -> Option<&str> {
        self.current.as_ref().and_then(|c| c.as_deref().ok())
    }

    /// Chunk objects no readable manifest names: left by failed or abandoned runs (or
    /// named by a manifest that cannot be read).
    pub fn orphans(&self) -> Vec<&ListedObject> {
        let named: HashSet<&str> = self.backups.iter().flat_map(Backup::chunk_keys).collect();
        self.chunks
            .values()
            .filter(|o| !named.contains(o.key.as_str()))
            .collect()
    }

    /// Sound backups grouped by generation (the full's key), oldest generation first.
    pub fn generations(&self) -> Vec<(String, Vec<&Backup>)> {
        let mut by: BTreeMap<(Ts, String), Vec<&Backup>> = BTreeMap::new();
        let full_ts: HashMap<&str, Ts> = self
            .backups
            .iter()
            .filter(|b| b.kind == Kind::Full)
            .map(|b| (b.key.as_str(), b.ts))
            .collect();
        for b in &self.backups {
            if let Some(g) = &b.generation {
                let ts = full_ts.get(g.as_str()).copied().unwrap_or(b.ts);
                by.entry((ts, g.clone())).or_default().push(b);
            }
        }
        by.into_iter().map(|((_, g), v)| (g, v)).collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub subvolumes: BTreeMap<String, Subvol>,
    /// Keys under the prefix that belong to no subvolume's layout.
    pub outside: Vec<ListedObject>,
}

/// Lists what `repo` holds: the subvolumes in `only`, or every subvolume under the prefix
/// (plus the keys there that are not of the layout) when `only` is empty.
pub fn load(repo: &Repo, only: &[String]) -> Result<Catalog> {
    load_within(
        repo,
        only,
        (chain::MAX_CATALOG_VALUES, chain::MAX_CATALOG_BYTES),
    )
}

/// [`load`], its manifests holding at most `budget` (JSON values, bytes) together.
pub(super) fn load_within(repo: &Repo, only: &[String], budget: (u64, u64)) -> Result<Catalog> {
    let store = repo.store().as_ref();
    let retrier = repo.retrier();
    let prefixes: Vec<String> = if only.is_empty() {
        vec![repo.layout.prefix.clone()]
    } else {
        only.iter()
            .map(|n| repo.layout.subvolume_prefix(n))
            .collect()
    };
    let mut objects = Vec::new();
    for p in &prefixes {
        let listed = retrier
            .run(|| store.list_objects(p))
            .with_context(|| format!("listing the bucket under {p:?}"))?;
        objects.extend(listed);
    }
    let mut cat = Catalog::default();
    for n in only {
        cat.subvolumes.insert(
            n.clone(),
            Subvol {
                name: n.clone(),
                ..Default::default()
            },
        );
    }
    let mut manifests: Vec<(String, ListedObject, Kind, Ts)> = Vec::new();
    for o in objects {
        let Some((name, shape)) = repo.layout.parse(&o.key) else {
            cat.outside.push(o);
            continue;
        };
        let name = name.to_string();
        let sv = cat
            .subvolumes
            .entry(name.clone())
            .or_insert_with(|| Subvol {
                name: name.clone(),
                ..Default::default()
            });
        match shape {
            Shape::Pointer => sv.pointer = Some(o),
            Shape::Chunk { .. } => {
                sv.chunks.insert(o.key.clone(), o);
            }
            Shape::Manifest { kind, ts } => manifests.push((name, o, kind, ts)),
        }
    }
    // Keys outside the layout but under a subvolume's prefix are that subvolume's damage.
    let outside = std::mem::take(&mut cat.outside);
    for o in outside {
        let owner = cat
            .subvolumes
            .keys()
            .find(|n| o.key.starts_with(&repo.layout.subvolume_prefix(n)))
            .cloned();
        match owner.and_then(|n| cat.subvolumes.get_mut(&n)) {
            Some(sv) => sv.stray.push(o),
            None => cat.outside.push(o),
        }
    }
    let mut held = (0u64, 0u64);
    for (name, o, kind, ts) in manifests {
        let manifest = read_manifest(repo, &name, &o, kind, &mut held)?;
        if held.0 > budget.0 || held.1 > budget.1 {
            // Not a finding about one manifest: one left unread would look unrestorable
            // to prune, which deletes such manifests and the chunks only they name.
            bail!(
                "the manifests under {} hold {} JSON values in {} bytes, more than the {} \
                 values or {} bytes this tool holds for one listing (reached at {}): check \
                 for manifests this tool did not write, or name the subvolumes one at a time",
                prefixes.join(", "),
                held.0,
                held.1,
                budget.0,
                budget.1,
                o.key
            );
        }
        if let Some(sv) = cat.subvolumes.get_mut(&name) {
            sv.backups.push(Backup {
                key: o.key.clone(),
                object: o,
                kind,
                ts,
                manifest,
                generation: None,
                problems: Vec::new(),
            });
        }
    }
    for sv in cat.subvolumes.values_mut() {
        if sv.pointer.is_some() {
            sv.current = Some(read_pointer(repo, &sv.name)?);
        }
        sv.backups
            .sort_by(|a, b| (a.ts, &a.key).cmp(&(b.ts, &b.key)));
        link(sv);
    }
    Ok(cat)
}

/// GETs and checks one manifest as a restore would (`chain::read_manifest`). A transport
/// failure is an error of the listing; damage is a finding. One the listing shows over
/// the cap is not even asked for.
fn read_manifest(
    repo: &Repo,
    name: &str,
    o: &ListedObject,
    kind: Kind,
    held: &mut (u64, u64),
) -> Result<Result<Manifest, String>> {
    let (key, small) = (o.key.as_str(), chain::Small::Manifest);
    if o.size > small.cap() {
        let why = crate::store::too_large(Some(o.size), small.cap());
        return Ok(Err(small.too_large(key, &why).to_string()));
    }
    let store = repo.store().as_ref();
    let read = chain::read_counted(store, repo.retrier(), &repo.layout, name, key).map(
        |(m, values, bytes)| {
            held.0 = held.0.saturating_add(values);
            held.1 = held.1.saturating_add(bytes);
            m
        },
    );
    match read {
        Ok(m) if m.kind != kind => Ok(Err(format!(
            "field kind = {:?} but it is stored under {}/",
            m.kind.as_str(),
            kind.as_str()
        ))),
        Ok(m) => Ok(Ok(m)),
        Err(ChainError::Damaged(d)) => Ok(Err(d.to_string())),
        Err(ChainError::Failed(e)) => Err(e),
    }
}

/// What `current.json` names, or why it cannot be used (`Repo::pointer`'s checks).
fn read_pointer(repo: &Repo, name: &str) -> Result<Result<String, String>> {
    match repo.pointer(name) {
        Ok(Some(p)) => Ok(Ok(p.manifest_key)),
        Ok(None) => Ok(Err("it disappeared while being listed".into())),
        Err(ChainError::Damaged(d)) => Ok(Err(d.to_string())),
        Err(ChainError::Failed(e)) => Err(e),
    }
}

/// Finds each backup's generation and problems, from the listing alone.
pub fn link(sv: &mut Subvol) {
    // Own problems first: the manifest itself and its chunks.
    for b in &mut sv.backups {
        b.problems.clear();
        b.generation = None;
        match &b.manifest {
            Err(why) => b.problems.push(format!("manifest unreadable: {why}")),
            Ok(m) => {
                for c in &m.chunks {
                    match sv.chunks.get(&c.key) {
                        None => b.problems.push(format!("chunk {} is missing", c.key)),
                        Some(o) if o.size != c.size => b.problems.push(format!(
                            "chunk {} has {} bytes, the manifest says {}",
                            c.key, o.size, c.size
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    // Then the chains: follow parents to a full through sound links only.
    let index: HashMap<String, usize> = sv
        .backups
        .iter()
        .enumerate()
        .map(|(i, b)| (b.key.clone(), i))
        .collect();
    let n = sv.backups.len();
    let mut generation: Vec<Option<Result<String, String>>> = vec![None; n];
    for start in 0..n {
        let mut path = Vec::new();
        let mut seen = HashSet::new();
        let mut at = start;
        let verdict: Result<String, String> = loop {
            if let Some(v) = &generation[at] {
                break v.clone();
            }
            if !seen.insert(at) {
                break Err(format!("its chain loops at {}", sv.backups[at].key));
            }
            path.push(at);
            let b = &sv.backups[at];
            if !b.problems.is_empty() {
                break Err(format!(
                    "its chain is broken at {}: {}",
                    b.key,
                    b.problems.join("; ")
                ));
            }
            match (b.kind, b.parent()) {
                (Kind::Full, _) => break Ok(b.key.clone()),
                (Kind::Incremental, None) => {
                    break Err(format!("{} names no parent_manifest", b.key))
                }
                (Kind::Incremental, Some(p)) => match index.get(p) {
                    Some(&i) => at = i,
                    None => break Err(format!("its chain is broken: {p} is missing")),
                },
            }
        };
        for i in path {
            generation[i] = Some(verdict.clone());
        }
    }
    for (b, g) in sv.backups.iter_mut().zip(generation) {
        match g {
            Some(Ok(full)) => b.generation = Some(full),
            Some(Err(why)) if b.problems.is_empty() => b.problems.push(why),
            _ => {}
        }
    }
}
