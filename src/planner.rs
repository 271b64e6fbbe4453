//! The planner: a pure function from what we know about a subvolume (state, the parent
//! snapshot on disk, the parent manifest in S3) and the schedule to `full`, `incremental`
//! or `skip`, with the reason. No I/O.

use crate::config::Schedule;
use crate::manifest::Kind;
use crate::ts::Ts;

/// Runs come from a timer; a run up to this much earlier than exactly N days still counts
/// as due, so a daily 02:00 timer does not skip a day when the last run started late.
pub const TIMER_SLACK_SECS: i64 = 3600;

const DAY: i64 = 86_400;

/// What the planner is told about one subvolume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// From state: when the last published full was made.
    pub last_full_at: Option<Ts>,
    /// From state: the time of the last published snapshot (parsed from its name).
    pub last_snapshot_at: Option<Ts>,
    /// From state: the last manifest key is recorded.
    pub has_parent_manifest: bool,
    /// The last published snapshot still exists on disk.
    pub parent_on_disk: bool,
    /// The last manifest still exists in S3 (`true` when S3 is not consulted).
    pub parent_manifest_in_s3: bool,
    /// What the cheap check found wrong with the parent's chain (`check`), if anything:
    /// an incremental on a broken chain could never be restored, nor one that would make
    /// the chain larger than a restore holds.
    pub parent_chain_problem: Option<String>,
}

/// What to do for a subvolume: back it up as a full or an incremental, or skip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Run(Kind),
    Skip,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run(k) => k.as_str(),
            Action::Skip => "skip",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

fn days(secs: i64) -> String {
    format!("{:.1}", secs as f64 / DAY as f64)
}

/// `every_days` in seconds less the timer slack; saturating, so no config or state value
/// can overflow it (the config bounds days to 36,500 anyway).
fn period(every_days: u64) -> i64 {
    i64::try_from(every_days)
        .unwrap_or(i64::MAX)
        .saturating_mul(DAY)
        .saturating_sub(TIMER_SLACK_SECS)
}

/// When something last done at `last` is due again every `every_days` (the timer's
/// slack included, as `plan` counts it).
pub fn next_due(last: Ts, every_days: u64) -> Ts {
    Ts::from_unix(last.unix().saturating_add(period(every_days)))
}

fn due(age: i64, every_days: u64) -> bool {
    age >= period(every_days)
}

/// What asks for a backup: the schedule, `--once` (ignore the schedule), or `--full`
/// (ignore the schedule and make a full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Once,
    Full,
}

pub fn plan(f: &Facts, s: &Schedule, now: Ts, trigger: Trigger) -> Decision {
    let decide = |action, reason: String| Decision { action, reason };
    if trigger == Trigger::Full {
        return decide(Action::Run(Kind::Full), "--full".into());
    }
    let (Some(last_full), Some(last_snap)) = (f.last_full_at, f.last_snapshot_at) else {
        return decide(
            Action::Run(Kind::Full),
            "no previous backup recorded in the state file".into(),
        );
    };
    let full_age = now.unix().saturating_sub(last_full.unix());
    if due(full_age, s.full_every_days) {
        return decide(
            Action::Run(Kind::Full),
            format!(
                "last full is {} days old (full_every_days = {})",
                days(full_age),
                s.full_every_days
            ),
        );
    }
    let age = now.unix().saturating_sub(last_snap.unix());
    let why = if due(age, s.incremental_every_days) {
        format!(
            "last backup is {} days old (incremental_every_days = {})",
            days(age),
            s.incremental_every_days
        )
    } else if trigger == Trigger::Once {
        "--once".to_string()
    } else {
        let next = Ts::from_unix(
            last_snap
                .unix()
                .saturating_add(period(s.incremental_every_days)),
        );
        return decide(
            Action::Skip,
            format!(
                "last backup is {} days old; next due at {}",
                days(age),
                next.iso()
            ),
        );
    };
    if !f.parent_on_disk {
        return decide(
            Action::Run(Kind::Full),
            format!("{why}, but the parent snapshot is missing on disk"),
        );
    }
    if !f.has_parent_manifest {
        return decide(
            Action::Run(Kind::Full),
            format!("{why}, but the state has no parent manifest"),
        );
    }
    if !f.parent_manifest_in_s3 {
        return decide(
            Action::Run(Kind::Full),
            format!("{why}, but the parent manifest is no longer in S3"),
        );
    }
    if let Some(p) = &f.parent_chain_problem {
        return decide(
            Action::Run(Kind::Full),
            format!("{why}, but the parent's chain in S3 cannot take an incremental ({p})"),
        );
    }
    decide(Action::Run(Kind::Incremental), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn schedule() -> Schedule {
        Schedule {
            full_every_days: 30,
            incremental_every_days: 7,
            run_at: (2, 0),
        }
    }

    /// Tiny notation: ages in seconds before NOW; flags default to a healthy chain.
    fn facts(full_age: Option<i64>, snap_age: Option<i64>) -> Facts {
        Facts {
            last_full_at: full_age.map(|a| Ts::from_unix(NOW - a)),
            last_snapshot_at: snap_age.map(|a| Ts::from_unix(NOW - a)),
            has_parent_manifest: true,
            parent_on_disk: true,
            parent_manifest_in_s3: true,
            parent_chain_problem: None,
        }
    }

    fn check(f: Facts, once: bool, want: Action, reason_has: &str) {
        let trigger = if once {
            Trigger::Once
        } else {
            Trigger::Schedule
        };
        let d = plan(&f, &schedule(), Ts::from_unix(NOW), trigger);
        assert_eq!(d.action, want, "{f:?} once={once}: {}", d.reason);
        assert!(
            d.reason.contains(reason_has),
            "{:?} lacks {reason_has:?}",
            d.reason
        );
    }

    const H: i64 = 3600;

    #[test]
    fn table() {
        let day = DAY;
        // No state at all, or half of it.
        check(
            facts(None, None),
            false,
            Action::Run(Kind::Full),
            "no previous backup",
        );
        check(
            facts(Some(day), None),
            false,
            Action::Run(Kind::Full),
            "no previous backup",
        );
        check(
            facts(None, Some(day)),
            true,
            Action::Run(Kind::Full),
            "no previous backup",
        );
        // Full cadence edges: exactly 30 days, 30 days minus the slack, one second less.
        check(
            facts(Some(30 * day), Some(day)),
            false,
            Action::Run(Kind::Full),
            "full_every_days = 30",
        );
        check(
            facts(Some(30 * day - H), Some(day)),
            false,
            Action::Run(Kind::Full),
            "last full",
        );
        check(
            facts(Some(30 * day - H - 1), Some(day)),
            false,
            Action::Skip,
            "next due",
        );
        // Incremental cadence edges.
        check(
            facts(Some(8 * day), Some(7 * day)),
            false,
            Action::Run(Kind::Incremental),
            "incremental_every_days = 7",
        );
        check(
            facts(Some(8 * day), Some(7 * day - H)),
            false,
            Action::Run(Kind::Incremental),
            "7",
        );
        check(
            facts(Some(8 * day), Some(7 * day - H - 1)),
            false,
            Action::Skip,
            "next due",
        );
        check(
            facts(Some(8 * day), Some(0)),
            false,
            Action::Skip,
            "0.0 days",
        );
        // --once turns skip into a run.
        check(
            facts(Some(8 * day), Some(60)),
            true,
            Action::Run(Kind::Incremental),
            "--once",
        );
        // Fallbacks to full when a run is due.
        let mut f = facts(Some(8 * day), Some(7 * day));
        f.parent_on_disk = false;
        check(
            f.clone(),
            false,
            Action::Run(Kind::Full),
            "parent snapshot is missing",
        );
        f.parent_on_disk = true;
        f.has_parent_manifest = false;
        check(
            f.clone(),
            true,
            Action::Run(Kind::Full),
            "no parent manifest",
        );
        f.has_parent_manifest = true;
        f.parent_manifest_in_s3 = false;
        check(f.clone(), false, Action::Run(Kind::Full), "no longer in S3");
        f.parent_manifest_in_s3 = true;
        f.parent_chain_problem = Some("chunk k is missing".into());
        check(
            f.clone(),
            false,
            Action::Run(Kind::Full),
            "parent's chain in S3 cannot take an incremental (chunk k is missing)",
        );
        // ... but a broken chain alone does not make a run due.
        let mut f = facts(Some(8 * day), Some(day));
        f.parent_on_disk = false;
        check(f, false, Action::Skip, "next due");
    }

    #[test]
    fn full_forces_a_full_whatever_the_schedule_and_chain() {
        for f in [facts(Some(DAY), Some(60)), facts(None, None)] {
            let d = plan(&f, &schedule(), Ts::from_unix(NOW), Trigger::Full);
            assert_eq!(d.action, Action::Run(Kind::Full));
            assert_eq!(d.reason, "--full");
        }
    }
}
