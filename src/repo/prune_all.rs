//! Remote retention over several subvolumes, as `prune` and prune after backup
//! (`retention.prune_after_backup`) run it: one listing (`catalog`), each subvolume's
//! plan (`prune::plan`) refused when its `current.json` disagrees with this host's state
//! (unless forced), what a resume journal owns spared, with `[object_lock]` the plan made
//! again over the locks, and with `confirm` carried out (`prune::execute_with`).

use anyhow::Result;

use super::prune::{self, Action, Plan, Rules};
use super::{catalog, object_lock, Repo};
use crate::config::Config;
use crate::event;
use crate::state::State;
use crate::ts::Ts;

/// What one prune does, resolved from flags and config.
pub struct Request {
    pub names: Vec<String>,
    pub keep: usize,
    pub confirm: bool,
    pub allow_early_delete: bool,
    /// Prune even when `current.json` disagrees with the local state (`--force`).
    pub force: bool,
}

/// The run timestamp of subvolume `name`'s resume journal, if one exists. An unreadable
/// journal spares nothing (the next backup abandons it and its orphans age normally).
fn journal_ts(config: &Config, name: &str) -> Option<Ts> {
    let path = crate::journal::path_for(&config.global.state_path, name);
    crate::journal::load(&path)
        .ok()
        .flatten()
        .and_then(|p| Ts::parse(&p.begin.run_ts).ok())
}

/// This host's state, which prune checks each `current.json` against. With `force` an
/// unreadable state is only logged: `--force` is the way past a lost or broken state.
fn local_state(config: &Config, force: bool) -> Result<Option<State>> {
    let path = &config.global.state_path;
    match State::load(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if force => {
            event!(
                Warn,
                "prune_state_unreadable",
                path = path.display(),
                error = format!("{e:#}")
            );
            Ok(None)
        }
        Err(e) => Err(e.context(
            "prune checks each current.json against this host's state \
             (prune --force goes without it)",
        )),
    }
}

/// Why subvolume `sv` must not be pruned on the bucket's word: its `current.json` is not
/// this host's last backup (the state's `last_manifest`) nor chains back to it. A state
/// without an entry (or a manifest under another prefix) says nothing about it.
fn disagreement(
    config: &Config,
    repo: &Repo,
    state: Option<&State>,
    sv: &catalog::Subvol,
) -> Option<String> {
    let last = state?
        .subvolumes
        .get(&sv.name)?
        .last_manifest
        .as_deref()
        .filter(|k| repo.layout.owns(&sv.name, k))?;
    let why = prune::pointer_agrees(sv, last).err()?;
    Some(format!(
        "subvolume {}: {why} (last_manifest in the state file {})",
        sv.name,
        config.global.state_path.display()
    ))
}

/// The plan for one subvolume, or why none is made: `plan`'s own refusals, then a
/// `current.json` the local state disagrees with (logged and passed over with `force`).
fn plan_one(
    config: &Config,
    repo: &Repo,
    state: Option<&State>,
    sv: &catalog::Subvol,
    rules: &Rules,
    force: bool,
) -> std::result::Result<Plan, String> {
    let plan = prune::plan(sv, rules).map_err(|e| format!("{e:#}"))?;
    match disagreement(config, repo, state, sv) {
        None => Ok(plan),
        Some(why) if force => {
            event!(Warn, "prune_forced", subvolume = sv.name, reason = why);
            Ok(plan)
        }
        Some(why) => Err(format!(
            "{why}; nothing is pruned: someone who can write the bucket may have repointed \
             current.json (look with list and verify). If this host's state is out of date \
             (restored from an old copy, or another host backs this subvolume up), run a \
             backup first, or prune --force"
        )),
    }
}

/// Plans (and with `confirm` carries out) the pruning of each subvolume; a subvolume that
/// cannot be pruned (no sound `current.json`, or one the local state disagrees with) is
/// reported and the others go on. Returns the plans and the refusals.
pub fn prune_all(config: &Config, repo: &Repo, req: &Request) -> Result<(Vec<Plan>, Vec<String>)> {
    let state = local_state(config, req.force)?;
    let cat = catalog::load(repo, &req.names)?;
    let now = Ts::now();
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    for name in &req.names {
        let Some(sv) = cat.subvolumes.get(name) else {
            continue;
        };
        let mut rules = Rules {
            keep: req.keep,
            now,
            allow_early_delete: req.allow_early_delete,
            journal_ts: journal_ts(config, name),
            locks: Default::default(),
        };
        let mut plan = match plan_one(config, repo, state.as_ref(), sv, &rules, req.force) {
            Ok(p) => p,
            Err(why) => {
                event!(Debug, "prune_refused", subvolume = name, reason = why);
                refused.push(why);
                continue;
            }
        };
        if config.object_lock.is_some() {
            // The dates of what would go; the plan again, deferring what is locked (it
            // only keeps more: the same checks passed).
            rules.locks = object_lock::read_locks(repo, plan.deletes().map(|i| i.key.as_str()))?;
            plan = prune::plan(sv, &rules)?;
        }
        for i in plan.items.iter().filter(|i| i.action != Action::Keep) {
            // The plan is the table on stdout; the events are for --log-level debug.
            event!(
                Debug,
                "prune_plan",
                subvolume = name,
                action = format!("{:?}", i.action).to_lowercase(),
                key = i.key,
                class = i.class,
                age_days = i
                    .age_days
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "?".into()),
                size = i.size,
                why = i.why,
                until = i.until.clone().unwrap_or_default()
            );
        }
        if req.confirm {
            let done = prune::execute_with(repo, &plan, config.object_lock.is_some())?;
            event!(
                Debug,
                "prune_done",
                subvolume = name,
                deleted = done.deleted,
                deleted_bytes = done.bytes,
                kept_locked = done.kept.len()
            );
            for (key, why) in done.kept {
                if let Some(i) = plan.items.iter_mut().find(|i| i.key == key) {
                    i.action = Action::Keep;
                    i.why = why;
                }
            }
        }
        plans.push(plan);
    }
    Ok((plans, refused))
}
