//! One subvolume's backup, on the repository layer: a pending (journaled) backup first —
//! resumed, recovered or abandoned (`pending.rs`) — then facts → plan → snapshot →
//! `btrfs send` through the pipeline → manifest → `current.json` (this file: the plan and
//! a fresh run; `publish.rs`: the send, upload and publish both share). The stale-upload
//! sweep is `Repo::sweep_stale_uploads`. The caller (`cmd::backup`) records the state and
//! then removes the journal. A failing subvolume does not stop the others.
//!
//! Invariants: `current.json` is PUT only after every chunk and the manifest it names are
//! stored; a journal exists from before the first upload until the backup is published
//! and recorded, or abandoned; a run that fails on the network or is stopped keeps its
//! snapshot, journal and open multipart uploads for the next run, one that fails for any
//! other reason abandons them (a retry would fail the same way).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::btrfs::Btrfs;
use crate::config::{Config, Subvolume};
use crate::event;
use crate::journal::{self, Begin, Journal, LoadError, Pending, Settings};
use crate::manifest::Kind;
use crate::metrics::Metrics;
use crate::pipeline::{self, UploadError};
use crate::planner::{plan, Action, Decision, Facts, Trigger};
use crate::progress::Expected;
use crate::repo::Repo;
use crate::retry::Retrier;
use crate::snapshots::{self, SnapName};
use crate::state::{State, SubvolState};
use crate::ts::Ts;

/// What a backup run works with. `repo` is `None` with `--no-s3`.
pub struct Backup<'a> {
    pub cfg: &'a Config,
    pub btrfs: &'a dyn Btrfs,
    pub repo: Option<&'a Repo>,
    pub retrier: Arc<Retrier>,
    /// Send protocol of new backups this run: 2 (`--compressed-data`) or 1
    /// ([`send_protocol`] resolves `s3.send_compressed_data` once per run).
    pub send_protocol: u32,
}

/// The send protocol for this run's new backups: `s3.send_compressed_data` against what
/// the kernel and btrfs-progs here can do (asked once per run, and logged).
pub fn send_protocol(cfg: &Config, btrfs: &dyn Btrfs) -> Result<u32> {
    use crate::config::SendCompressed;
    if cfg.s3.send_compressed_data == SendCompressed::Off {
        return Ok(1);
    }
    let support = btrfs.send_support()?;
    let proto = match (cfg.s3.send_compressed_data, support.can_send_compressed()) {
        (_, true) => 2,
        (SendCompressed::On, false) => {
            return Err(anyhow!(
                "s3.send_compressed_data = true, but this machine cannot send compressed data \
                 ({}; it needs kernel send protocol 2, Linux 6.0, and btrfs-progs 6.0): \
                 upgrade, or set s3.send_compressed_data = \"auto\"",
                support.describe()
            ))
        }
        _ => 1,
    };
    event!(
        Info,
        "send_protocol",
        protocol = proto,
        compressed_data = proto >= 2,
        support = support.describe()
    );
    Ok(proto)
}

/// The result of one subvolume in a run.
#[derive(Debug)]
pub enum Outcome {
    /// The schedule said skip (the decision says why; the unit tests read it).
    Skipped(#[cfg_attr(not(test), allow(dead_code))] Decision),
    /// `--no-s3`: a snapshot was made and retention applied; nothing uploaded.
    SnapshotOnly(PathBuf),
    /// Published by this run (fresh or resumed): record the state, then drop the journal.
    Published(Box<Published>),
}

/// What an upload that stopped before publishing had done: the context of its error, so
/// that the run's summary and last line count what it stored (`uploaded_bytes`) and its
/// `s3_retry` events (`retries`), not zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoppedAfter {
    /// Bytes this run sent that S3 stored (parts and whole chunks).
    pub uploaded_bytes: u64,
    /// The run's `s3_retry` events while this subvolume was sending.
    pub retries: u64,
    /// From its first byte sent to the stop.
    pub upload_time: Duration,
}

impl std::fmt::Display for StoppedAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nothing published; this run stored {} ({} bytes)",
            crate::size::human(self.uploaded_bytes),
            self.uploaded_bytes
        )?;
        match self.retries {
            0 => Ok(()),
            1 => write!(f, " after 1 retry"),
            n => write!(f, " after {n} retries"),
        }
    }
}

#[derive(Debug)]
pub struct Published {
    pub state: SubvolState,
    pub manifest_key: String,
    pub metrics: Metrics,
    /// The journal to remove once the state is recorded.
    pub journal: PathBuf,
    /// Published by an earlier run that stopped before recording it: nothing was sent.
    pub recovered: bool,
    pub kind: Kind,
    /// The chunks' keys and SHA-256s in stream order (empty when recovered).
    pub chunks: Vec<(String, String)>,
}

/// The settings that shape a backup's stream and keys.
fn settings(cfg: &Config, part_size: u64) -> Settings {
    Settings {
        bucket: cfg.s3.bucket.clone(),
        prefix: cfg.s3.prefix.clone(),
        chunk_size: cfg.s3.chunk_size_bytes,
        part_size,
        storage_class: cfg.s3.storage_class_chunks.as_str().into(),
        sse: cfg.s3.sse.as_str().into(),
        encryption: cfg.encryption.enabled().then(|| {
            cfg.encryption
                .recipients
                .iter()
                .map(|r| r.as_str().to_string())
                .collect()
        }),
    }
}

/// The part size for the configured chunk size, or the error naming the key.
pub fn part_size(cfg: &Config) -> Result<u64> {
    // Encrypted, a chunk object is an age file: a little larger than its plaintext.
    let chunk = match cfg.encryption.enabled() {
        false => cfg.s3.chunk_size_bytes,
        true => {
            let s = crate::age::Sealing::new(&cfg.encryption.recipients)
                .context("encrypting to encryption.recipients")?;
            crate::age::ciphertext_size(cfg.s3.chunk_size_bytes, s.header().as_bytes().len() as u64)
        }
    };
    pipeline::effective_part_size(cfg.s3.part_size_bytes, chunk).ok_or_else(|| {
        anyhow!(
            "s3.chunk_size_bytes = {} needs more than 10,000 parts of 5 GiB; lower it",
            cfg.s3.chunk_size_bytes
        )
    })
}

/// Why one subvolume's backup did not publish: the error (printed), and what its upload
/// had stored when it stopped, if it got that far (counted in the run's sums).
#[derive(Debug)]
pub struct BackupError {
    pub error: anyhow::Error,
    pub stopped: Option<StoppedAfter>,
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl From<anyhow::Error> for BackupError {
    fn from(error: anyhow::Error) -> Self {
        BackupError {
            error,
            stopped: None,
        }
    }
}

impl From<BackupError> for anyhow::Error {
    fn from(e: BackupError) -> Self {
        e.error
    }
}

/// An upload (fresh or resumed) that did not publish: why, as the pipeline or the publish
/// request said, and what it had stored.
#[derive(Debug)]
pub(crate) struct Unpublished {
    pub(crate) cause: UploadError,
    pub(crate) stopped: Option<StoppedAfter>,
}

impl Unpublished {
    /// True when the backup is worth resuming: the network or S3 failed, or the run was
    /// stopped. Anything else (a failed `btrfs send`, a broken journal) would fail the
    /// same way again.
    fn resumable(&self, retrier: &Retrier) -> bool {
        retrier.cancelled() || matches!(self.cause, UploadError::Store(_))
    }
}

impl From<anyhow::Error> for Unpublished {
    fn from(e: anyhow::Error) -> Self {
        Unpublished {
            cause: UploadError::Other(e),
            stopped: None,
        }
    }
}

impl From<Unpublished> for BackupError {
    fn from(u: Unpublished) -> Self {
        BackupError {
            error: u.cause.into(),
            stopped: u.stopped,
        }
    }
}

/// Why a chain should end with a full now: its manifests hold more than three quarters
/// of what a restore holds for one chain (`repo::chain::MAX_CHAIN_VALUES` and
/// `MAX_CHAIN_BYTES`), so that no incremental this tool publishes makes a chain a restore
/// refuses (a quarter is room for an incremental of 150,000 chunks or 64 MiB).
fn chain_near_its_bound(chain: &crate::repo::Chain) -> Option<String> {
    use crate::repo::chain::{MAX_CHAIN_BYTES, MAX_CHAIN_VALUES};
    let (values, bytes) = chain.size;
    (values > MAX_CHAIN_VALUES / 4 * 3 || bytes > MAX_CHAIN_BYTES / 4 * 3).then(|| {
        format!(
            "the chain's manifests hold {values} JSON values in {bytes} bytes, near the \
             {MAX_CHAIN_VALUES} values or {MAX_CHAIN_BYTES} bytes a restore holds for one chain: \
             a full starts a new chain"
        )
    })
}

impl Backup<'_> {
    fn repo(&self) -> Result<&Repo> {
        self.repo
            .ok_or_else(|| anyhow!("internal: an upload without a repository (--no-s3)"))
    }

    /// What the stream of a new `kind` backup may come to: the size of the previous one
    /// of the same kind in the parent's chain (a guess, said to be one).
    fn expected_size(&self, sv: &Subvolume, entry: &SubvolState, kind: Kind) -> Option<Expected> {
        let repo = self.repo?;
        let key = repo
            .manifest_key_of(&sv.name, entry.last_manifest.as_deref()?)
            .ok()?;
        let chain = repo.chain(&sv.name, &key).ok()?;
        let (_, m) = match kind {
            Kind::Full => chain.links.first()?,
            Kind::Incremental => chain.links.last().filter(|(_, m)| m.kind == kind)?,
        };
        Some(Expected {
            bytes: m.total_bytes,
            source: format!("estimate from the {} of {}", kind.as_str(), m.created_at),
        })
    }

    /// The journal path of a subvolume.
    pub fn journal_path(&self, sv: &Subvolume) -> PathBuf {
        journal::path_for(&self.cfg.global.state_path, &sv.name)
    }

    /// The subvolume's pending backup, if any, checked like the bucket: a journal that
    /// others could write, or that names anything but this subvolume's keys of its run
    /// and its snapshots in `snapshots.base_dir`, is [`LoadError::Refused`].
    pub fn load_journal(&self, sv: &Subvolume) -> Result<Option<Pending>, LoadError> {
        let Some(p) = journal::load(&self.journal_path(sv))? else {
            return Ok(None);
        };
        let layout = crate::manifest::Layout::new(&self.cfg.s3.prefix);
        p.check(&sv.name, &layout, &self.cfg.snapshots.base_dir)
            .map_err(LoadError::Refused)?;
        Ok(Some(p))
    }

    /// What the planner needs; consults S3 only for the parent manifest. A parent
    /// manifest key outside this subvolume's prefix (`s3.prefix` changed) is not looked
    /// up: it is a broken parent chain, with the finding the chain check reports for it.
    pub fn facts(&self, sv: &Subvolume, entry: &SubvolState) -> Result<Facts> {
        let mut parent_chain_problem = None;
        let parent_manifest_in_s3 = match (self.repo, &entry.last_manifest) {
            (Some(repo), Some(key)) => match repo.manifest_key_of(&sv.name, key) {
                Ok(k) => repo
                    .exists(&k)
                    .with_context(|| format!("checking the parent manifest {key}"))?,
                Err(e) => {
                    parent_chain_problem = Some(format!("{key}: {e}"));
                    true
                }
            },
            _ => true,
        };
        Ok(Facts {
            parent_manifest_in_s3,
            parent_chain_problem,
            ..self.local_facts(sv, entry)
        })
    }

    /// The facts from the state and the disk alone (the parent manifest taken as there).
    fn local_facts(&self, sv: &Subvolume, entry: &SubvolState) -> Facts {
        let last_snapshot_at = entry
            .last_snapshot
            .as_deref()
            .and_then(|p| SnapName::from_path(&sv.name, Path::new(p)))
            .map(|s| s.ts);
        let parent_on_disk = entry
            .last_snapshot
            .as_deref()
            .is_some_and(|p| Path::new(p).is_dir());
        Facts {
            last_full_at: entry.last_full(),
            last_snapshot_at,
            has_parent_manifest: entry.last_manifest.is_some(),
            parent_on_disk,
            parent_manifest_in_s3: true,
            parent_chain_problem: None,
        }
    }

    /// The plan for `sv`. A skip depends on the state, the disk and the schedule only, so
    /// it asks S3 nothing (a run with nothing due is cheap, e.g. the timer's run at boot).
    /// When it is an incremental, the parent's chain gets the cheap check first
    /// (`Repo::check_chain`: manifests resolve to a full, every chunk is there with its
    /// size); damage turns the plan into a full, saying why.
    pub fn decide_plan(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        now: Ts,
        trigger: Trigger,
    ) -> Result<Decision> {
        let local = plan(
            &self.local_facts(sv, entry),
            &self.cfg.schedule,
            now,
            trigger,
        );
        if local.action == Action::Skip {
            return Ok(local);
        }
        let mut facts = self.facts(sv, entry)?;
        let d = plan(&facts, &self.cfg.schedule, now, trigger);
        let (Action::Run(Kind::Incremental), Some(repo), Some(key)) =
            (d.action, self.repo, entry.last_manifest.as_deref())
        else {
            return Ok(d);
        };
        // `facts` made a key outside the prefix a problem already (no incremental).
        let Ok(key) = repo.manifest_key_of(&sv.name, key) else {
            return Ok(d);
        };
        let rep = repo
            .check_chain(&sv.name, &key, self.cfg.s3.sse, false)
            .with_context(|| format!("checking the parent chain of {key}"))?;
        if let Some(f) = rep.findings.iter().find(|f| f.damage) {
            facts.parent_chain_problem = Some(format!("{}: {}", f.key, f.problem));
        } else if let Some(why) = rep.chain.as_ref().and_then(chain_near_its_bound) {
            facts.parent_chain_problem = Some(format!("{key}: {why}"));
        } else {
            return Ok(d);
        }
        Ok(plan(&facts, &self.cfg.schedule, now, trigger))
    }

    /// Backs up one subvolume: a pending backup first (resume, recover or abandon), then
    /// what the schedule says.
    pub fn run(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        trigger: Trigger,
        restart: bool,
        run_ts: Ts,
    ) -> Result<Outcome, BackupError> {
        self.btrfs.show(&sv.path).with_context(|| {
            format!(
                "subvolume {}: {} is not a readable btrfs subvolume; check subvolumes.paths",
                sv.name,
                sv.path.display()
            )
        })?;
        self.say_nested(sv);
        let jpath = self.journal_path(sv);
        let pending = match self.load_journal(sv) {
            Ok(p) => p,
            // Not ours, or not only ours: the run of this subvolume fails, and nothing
            // the journal names is aborted, deleted or published.
            Err(LoadError::Refused(r)) => return Err(anyhow::Error::from(r).into()),
            Err(LoadError::Unreadable(e)) => {
                // Unreadable: nothing in it can be trusted or resumed. Its uploads are
                // aborted by the sweep below; its snapshot by retention.
                event!(
                    Warn,
                    "resume_abandoned",
                    subvolume = sv.name,
                    reason = format!("{e:#}")
                );
                journal::remove(&jpath)?;
                None
            }
        };
        let mut owned = HashSet::new();
        if let (Some(p), Some(_)) = (pending, self.repo) {
            match self.decide(sv, entry, &p, restart, trigger, run_ts)? {
                PendingAction::Done => journal::remove(&p.path)?,
                PendingAction::Recover => return Ok(self.recover(sv, entry, &p)?),
                PendingAction::Abandon(reason) => self.abandon(sv, entry, &p, &reason),
                PendingAction::Resume => {
                    owned.extend(p.open_uploads().into_iter().map(|(_, id)| id));
                    self.sweep_stale_uploads(sv, &owned)?;
                    match self.resume(sv, entry, &p) {
                        Err(Unpublished {
                            cause: UploadError::Mismatch(e),
                            ..
                        }) => {
                            self.abandon(sv, entry, &p, &format!("{e:#}"));
                            event!(Warn, "backup_restarting", subvolume = sv.name);
                        }
                        other => return Ok(other?),
                    }
                }
            }
        }
        let d = self.decide_plan(sv, entry, run_ts, trigger)?;
        event!(
            Info,
            "plan",
            subvolume = sv.name,
            action = d.action.as_str(),
            reason = d.reason
        );
        // A skip touches no S3 (stale uploads wait for the next run that backs up).
        if d.action != Action::Skip {
            self.sweep_stale_uploads(sv, &HashSet::new())?;
        }
        self.run_fresh(sv, entry, &d, run_ts)
    }

    /// The subvolumes nested in `sv`, which `btrfs send` leaves out of its backups.
    pub fn nested(&self, sv: &Subvolume) -> Vec<String> {
        self.btrfs.nested_subvolumes(&sv.path).unwrap_or_default()
    }

    /// Says, once per run, which nested subvolumes the backup of `sv` does not include.
    fn say_nested(&self, sv: &Subvolume) {
        let nested = self.nested(sv);
        if !nested.is_empty() {
            event!(
                Warn,
                "nested_subvolumes_not_included",
                subvolume = sv.name,
                count = nested.len(),
                paths = nested.join(","),
                note = "btrfs send leaves nested subvolumes out (they restore as absent); \
                        back them up as subvolumes of their own if they matter"
            );
        }
    }

    /// A fresh backup as decided: snapshot, journal, upload, publish. On a failure worth
    /// resuming (network, S3, a signal) the snapshot, journal and open uploads stay for
    /// the next run; on any other the backup is abandoned.
    pub fn run_fresh(
        &self,
        sv: &Subvolume,
        entry: &SubvolState,
        decision: &Decision,
        run_ts: Ts,
    ) -> Result<Outcome, BackupError> {
        let kind = match decision.action {
            Action::Skip => return Ok(Outcome::Skipped(decision.clone())),
            Action::Run(kind) => kind,
        };
        let snap = SnapName {
            subvolume: sv.name.clone(),
            ts: run_ts,
            kind,
        };
        let base = &self.cfg.snapshots.base_dir;
        std::fs::create_dir_all(base)
            .with_context(|| format!("creating snapshots.base_dir {}", base.display()))?;
        let snap_path = base.join(snap.file_name());
        self.btrfs
            .snapshot_readonly(&sv.path, &snap_path)
            .with_context(|| {
                format!(
                    "creating snapshot {} of {} (snapshots.base_dir must be on the same btrfs filesystem)",
                    snap_path.display(),
                    sv.path.display()
                )
            })?;
        event!(
            Info,
            "snapshot_created",
            subvolume = sv.name,
            path = snap_path.display(),
            kind = kind.as_str()
        );
        let Some(_) = self.repo else {
            let pending = self.load_journal(sv).ok().flatten();
            let mut keep: Vec<PathBuf> = entry.last_snapshot.iter().map(PathBuf::from).collect();
            if let Some(p) = &pending {
                keep.push(PathBuf::from(&p.begin.snapshot));
                keep.extend(p.begin.parent.iter().map(PathBuf::from));
            }
            self.prune(sv, &keep)?;
            return Ok(Outcome::SnapshotOnly(snap_path));
        };
        let parent = match kind {
            Kind::Full => None,
            Kind::Incremental => entry.last_snapshot.clone(),
        };
        let begin = Begin {
            version: journal::VERSION,
            subvolume: sv.name.clone(),
            run_ts: run_ts.to_string(),
            kind,
            snapshot: snap_path.display().to_string(),
            parent: parent.clone(),
            parent_manifest: match kind {
                Kind::Full => None,
                Kind::Incremental => entry.last_manifest.clone(),
            },
            last_full_at: entry.last_full_at.clone(),
            settings: settings(self.cfg, part_size(self.cfg)?),
            send_protocol: self.send_protocol,
        };
        let jpath = self.journal_path(sv);
        let mut journal = match Journal::create(&jpath, &begin) {
            Ok(j) => j,
            Err(e) => {
                self.remove_snapshot(sv, &snap_path);
                return Err(e.into());
            }
        };
        crate::failpoint::hit("after_journal_begin");
        let result = self.upload_and_publish(
            sv,
            entry,
            &begin,
            &snap_path,
            parent.as_deref().map(Path::new),
            run_ts,
            &crate::repo::resume::Stored::default(),
            &BTreeMap::new(),
            &mut journal,
        );
        match result {
            Ok(p) => Ok(Outcome::Published(Box::new(p))),
            Err(u) if u.resumable(&self.retrier) => {
                event!(
                    Warn,
                    "backup_kept_for_resume",
                    subvolume = sv.name,
                    snapshot = snap_path.display(),
                    journal = jpath.display()
                );
                Err(u.into())
            }
            Err(u) => {
                if let Ok(Some(p)) = self.load_journal(sv) {
                    self.abandon(sv, entry, &p, &format!("{:#}", u.cause));
                } else {
                    self.remove_snapshot(sv, &snap_path);
                }
                Err(u.into())
            }
        }
    }

    fn remove_snapshot(&self, sv: &Subvolume, snap_path: &Path) {
        match self.btrfs.delete_subvolume(snap_path) {
            Ok(()) => event!(
                Info,
                "snapshot_removed_after_failure",
                subvolume = sv.name,
                path = snap_path.display()
            ),
            Err(d) => event!(
                Error,
                "snapshot_remove_failed",
                subvolume = sv.name,
                path = snap_path.display(),
                error = format!("{d:#}")
            ),
        }
    }

    /// Aborts multipart uploads a killed run left under this subvolume's prefix (we hold
    /// the lock, so none of them is live), except those a resume journal owns.
    pub fn sweep_stale_uploads(&self, sv: &Subvolume, owned: &HashSet<String>) -> Result<()> {
        match self.repo {
            Some(repo) => repo.sweep_stale_uploads(&sv.name, owned),
            None => Ok(()),
        }
    }

    /// Retention for one subvolume, always keeping `keep` (the published parent, and a
    /// pending backup's snapshot and parent).
    pub fn prune(&self, sv: &Subvolume, keep: &[PathBuf]) -> Result<Vec<PathBuf>> {
        snapshots::prune(
            self.btrfs,
            &self.cfg.snapshots.base_dir,
            &sv.name,
            self.cfg.snapshots.retain,
            keep,
        )
    }
}

/// A run timestamp later than every snapshot of the selected subvolumes: two runs in
/// the same second wait for the next second instead of colliding.
pub fn run_timestamp(cfg: &Config, selected: &[&Subvolume], now: &dyn Fn() -> Ts) -> Result<Ts> {
    let mut newest: Option<Ts> = None;
    for sv in selected {
        for s in snapshots::list(&cfg.snapshots.base_dir, &sv.name)? {
            newest = newest.max(Some(s.ts));
        }
    }
    let mut ts = now();
    if let Some(n) = newest {
        if n >= ts {
            if n.unix() - ts.unix() > 5 {
                return Err(anyhow!(
                    "snapshot {} is newer than the clock ({}); fix the system clock",
                    n,
                    ts
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(
                ((n.unix() - ts.unix() + 1) * 1000) as u64,
            ));
            ts = now();
        }
        if n >= ts {
            return Err(anyhow!(
                "a snapshot for {n} already exists; run again in a second"
            ));
        }
    }
    Ok(ts)
}

/// Records a published backup: the subvolume's entry and the run's time, in one atomic
/// write. This is the only place a backup run changes the state file (the contract: the
/// state changes only after a publish), so a run that published nothing leaves it as it
/// was.
pub fn record(
    state: &mut State,
    state_path: &Path,
    name: &str,
    entry: SubvolState,
    run_ts: Ts,
) -> Result<()> {
    state.subvolumes.insert(name.to_string(), entry);
    state.last_run_at = Some(run_ts.to_string());
    state.save(state_path)
}

pub mod dry_run;
mod pending;
mod publish;
mod run;

use pending::PendingAction;
#[cfg(test)]
pub(crate) use publish::JournalProgress;
pub use run::RunReport;

#[cfg(test)]
mod tests;
