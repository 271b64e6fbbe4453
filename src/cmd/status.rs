//! `btrfs_to_s3 status`: per subvolume, from local files only (the state, the resume
//! journal, the last run's record, `lastrun`): the last published backup and its age, when
//! the next incremental and full are due, a pending resume, and the last run's result.
//! `--remote` also reads each `current.json` and says whether it names the state's last
//! manifest. Takes no lock and needs no root: any user who can read the config and the
//! state file can run it.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cli::StatusArgs;
use crate::cmd::Session;
use crate::config::Config;
use crate::exit::{self, Failure};
use crate::lastrun::LastRun;
use crate::outln;
use crate::planner::next_due;
use crate::repo::Repo;
use crate::snapshots::SnapName;
use crate::state::{State, SubvolState};
use crate::ts::Ts;

/// What `status` knows of one subvolume.
struct Row {
    name: String,
    last_kind: Option<&'static str>,
    last_at: Option<Ts>,
    last_manifest: Option<String>,
    next_incremental: Option<Ts>,
    next_full: Option<Ts>,
    /// `Ok(Some(..))` a pending backup, `Ok(None)` none, `Err` a journal we may not use.
    pending: Result<Option<Pending>, String>,
    /// `--remote`: what `current.json` names, or why it could not be read.
    remote: Option<Result<Option<String>, String>>,
}

struct Pending {
    kind: &'static str,
    since: String,
    stored_bytes: u64,
}

pub fn run(config: &Config, args: &StatusArgs) -> Result<u8, Failure> {
    let names: Vec<String> = if args.subvolumes.is_empty() {
        config.subvolumes.iter().map(|s| s.name.clone()).collect()
    } else {
        crate::cmd::subvolume_names(&args.subvolumes, None)?
    };
    let state = State::load(&config.global.state_path).with_context(|| {
        format!(
            "status reads the state file {} (global.state_path): run it as a user who can read it",
            config.global.state_path.display()
        )
    })?;
    let last = LastRun::load(&config.global.state_path);
    let repo = if args.remote {
        let session = Session::start(config, false)?;
        Some(Repo::open(config, session.retrier.clone())?)
    } else {
        None
    };
    let rows: Vec<Row> = names
        .iter()
        .map(|n| row(config, n, state.subvolumes.get(n), repo.as_ref()))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&rows, last.as_ref()))
                .map_err(anyhow::Error::from)?
        );
    } else {
        print_text(&rows, last.as_ref(), Ts::now());
    }
    Ok(exit::OK)
}

fn row(config: &Config, name: &str, st: Option<&SubvolState>, repo: Option<&Repo>) -> Row {
    let st = st.cloned().unwrap_or_default();
    let snap = st
        .last_snapshot
        .as_deref()
        .and_then(|p| Path::new(p).file_name())
        .and_then(|f| SnapName::parse(name, &f.to_string_lossy()));
    let last_at = snap.as_ref().map(|s| s.ts);
    let last_kind = st.last_manifest.as_ref().map(|m| {
        if m.contains("/incremental/") {
            "incremental"
        } else {
            "full"
        }
    });
    let schedule = &config.schedule;
    let pending = crate::journal::load(&crate::journal::path_for(&config.global.state_path, name))
        .map(|p| {
            p.map(|p| Pending {
                kind: p.begin.kind.as_str(),
                since: p.begin.run_ts.clone(),
                stored_bytes: p.stored_bytes(),
            })
        })
        .map_err(|e| format!("{e:#}"));
    let remote = repo.map(|r| {
        r.pointer(name)
            .map(|p| p.map(|p| p.manifest_key))
            .map_err(|e| format!("{e:#}"))
    });
    Row {
        name: name.to_string(),
        last_kind,
        last_at,
        last_manifest: st.last_manifest.clone(),
        next_incremental: last_at.map(|t| next_due(t, schedule.incremental_every_days)),
        next_full: st
            .last_full()
            .map(|t| next_due(t, schedule.full_every_days)),
        pending,
        remote,
    }
}

/// "3 h ago", "2 d ago", or "in 5 h".
fn relative(t: Ts, now: Ts) -> String {
    let d = now.unix() - t.unix();
    let (n, past) = (d.unsigned_abs(), d >= 0);
    let amount = match n {
        0..=5_399 => format!("{} min", n / 60),
        5_400..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} d", n / 86_400),
    };
    if past {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

fn due_text(t: Option<Ts>, now: Ts) -> String {
    match t {
        Some(t) if t.unix() <= now.unix() => format!("due now (since {})", t.iso()),
        Some(t) => format!("{} ({})", t.iso(), relative(t, now)),
        None => "due now (no backup recorded)".into(),
    }
}

fn print_text(rows: &[Row], last: Option<&LastRun>, now: Ts) {
    for r in rows {
        outln!("{}:", r.name);
        match (r.last_kind, r.last_at, &r.last_manifest) {
            (Some(k), Some(t), Some(m)) => outln!(
                "  last backup:      {k} of {} ({}), {m}",
                t.iso(),
                relative(t, now)
            ),
            (_, _, Some(m)) => outln!("  last backup:      {m}"),
            _ => outln!("  last backup:      none recorded"),
        }
        outln!("  next incremental: {}", due_text(r.next_incremental, now));
        outln!("  next full:        {}", due_text(r.next_full, now));
        match &r.pending {
            Ok(Some(p)) => outln!(
                "  resume pending:   {} backup of {}, {} bytes stored; the next run resumes it \
                 (backup --restart starts over)",
                p.kind,
                p.since,
                p.stored_bytes
            ),
            Ok(None) => outln!("  resume pending:   no"),
            Err(e) => outln!("  resume pending:   a journal this run may not use: {e}"),
        }
        match &r.remote {
            None => {}
            Some(Ok(Some(k))) if Some(k) == r.last_manifest.as_ref() => {
                outln!("  current.json:     {k} (the state's last manifest)")
            }
            Some(Ok(Some(k))) => outln!("  current.json:     {k} (NOT the state's last manifest)"),
            Some(Ok(None)) => outln!("  current.json:     missing"),
            Some(Err(e)) => outln!("  current.json:     unreadable: {e}"),
        }
    }
    match last {
        Some(l) => outln!(
            "last run: {} at {} (exit {}): {}",
            l.result,
            l.finished_at,
            l.exit_code,
            l.line
        ),
        None => outln!("last run: no record"),
    }
}

fn to_json(rows: &[Row], last: Option<&LastRun>) -> Value {
    let subvolumes: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "last_backup": r.last_manifest.as_ref().map(|m| json!({
                    "manifest_key": m,
                    "kind": r.last_kind,
                    "at": r.last_at.map(|t| t.iso()),
                })),
                "next_incremental_due": r.next_incremental.map(|t| t.iso()),
                "next_full_due": r.next_full.map(|t| t.iso()),
                "pending": match &r.pending {
                    Ok(Some(p)) => json!({"kind": p.kind, "since": p.since, "stored_bytes": p.stored_bytes}),
                    Ok(None) => Value::Null,
                    Err(e) => json!({"refused": e}),
                },
                "current_json": match &r.remote {
                    None => Value::Null,
                    Some(Ok(k)) => json!({"manifest_key": k}),
                    Some(Err(e)) => json!({"error": e}),
                },
            })
        })
        .collect();
    json!({
        "version": 1,
        "subvolumes": subvolumes,
        "last_run": last,
    })
}
