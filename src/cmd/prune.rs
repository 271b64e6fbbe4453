//! `btrfs_to_s3 prune`: remote retention per subvolume over one listing
//! (`repo::catalog`, `repo::prune`). A dry run that prints the plan unless `--confirm`;
//! takes the run lock (no backup uploads meanwhile), spares what a resume journal owns.
//! Refuses a subvolume whose `current.json` disagrees with this host's state (the
//! bucket's word alone never decides what is deleted) unless `--force`. Also run after a
//! successful backup when `retention.prune_after_backup` is set. With `[object_lock]` the
//! lock of every planned deletion is read (HEAD) and the plan made again: nothing locked
//! is deleted, and a deletion the service refuses is reported as kept, locked. Text
//! output is made inert (`crate::term`): keys and reasons come from the bucket.

use anyhow::{anyhow, Result};

use crate::cli::PruneArgs;
use crate::cmd::list::human;
use crate::cmd::Session;
use crate::config::Config;
use crate::exit::{self, Failure};
use crate::outln;
use crate::repo::prune::{Action, Plan};
use crate::repo::prune_all::{prune_all, Request};
use crate::repo::Repo;

pub fn run(config: &Config, args: &PruneArgs) -> Result<u8, Failure> {
    let names = crate::cmd::subvolume_names(&args.subvolumes, Some(config))?;
    let req = Request {
        names,
        keep: args
            .keep_generations
            .map(|g| g as usize)
            .unwrap_or(config.retention.remote_generations),
        confirm: args.confirm,
        allow_early_delete: args.allow_early_delete,
        force: args.force,
    };
    let session = Session::start(config, true)?;
    let repo = Repo::open(config, session.retrier.clone())?;
    let (plans, refused) = prune_all(config, &repo, &req)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "version": 1,
                "confirmed": req.confirm,
                "keep_generations": req.keep,
                "plans": plans,
                "refused": refused,
            }))
            .map_err(anyhow::Error::from)?
        );
    } else {
        print_text(&plans, &refused, &req);
    }
    if refused.is_empty() {
        Ok(exit::OK)
    } else {
        Err(anyhow!(
            "prune refused for {}: {}",
            refused.len(),
            refused.join("; ")
        )
        .into())
    }
}

fn print_text(plans: &[Plan], refused: &[String], req: &Request) {
    for p in plans {
        let (mut del, mut del_bytes, mut deferred) = (0, 0u64, 0);
        outln!(
            "subvolume {} (keeping {} generations)",
            p.subvolume,
            req.keep
        );
        for i in &p.items {
            let age = i
                .age_days
                .map(|d| format!("{d}d"))
                .unwrap_or_else(|| "?".into());
            let what = match i.action {
                Action::Delete => {
                    del += 1;
                    del_bytes += i.size;
                    if req.confirm {
                        "deleted"
                    } else {
                        "delete"
                    }
                }
                Action::Defer => {
                    deferred += 1;
                    "defer"
                }
                Action::Keep => "keep",
            };
            let until = match (&i.locked_until, &i.until) {
                (Some(l), _) => format!(" (locked until {l}: Object Lock)"),
                (None, Some(u)) => format!(
                    " (deferred until {u}; --allow-early-delete deletes it now, billed as if kept)"
                ),
                (None, None) => String::new(),
            };
            outln!(
                "  {what:<7} {} class={} age={age} size={} why: {}{until}",
                i.key,
                i.class,
                human(i.size),
                i.why
            );
        }
        outln!(
            "  {} {del} objects ({}), {deferred} deferred{}",
            if req.confirm {
                "deleted"
            } else {
                "would delete"
            },
            human(del_bytes),
            if req.confirm {
                ""
            } else {
                "; nothing was deleted: add --confirm"
            }
        );
    }
    for r in refused {
        outln!("refused: {r}");
    }
}
