//! Working out a rollback before anything changes: the release to return to, the backup
//! that holds its schema and what restoring it loses, how the database goes back (beside the
//! live one and swapped, or in place, and why), and the reasons to refuse.

use super::{BackupChoice, DbStrategy, Mode, RollbackPlan, RollbackRequest, app, db};
use crate::config::Environment;
use crate::db::{backup, migrate};
use crate::pipeline::PipelineError;
use crate::pipeline::swap::{self, Method};
use crate::store::{ReleaseRecord, ReleaseStatus, Store, now_ms};

pub(super) async fn plan_with(
    env: &Environment,
    store: &Store,
    req: &RollbackRequest,
) -> Result<RollbackPlan, PipelineError> {
    let setup = PipelineError::Setup;
    if env.rollout.is_some() && req.mode != Mode::Db {
        // The app lives on each host, behind each host's own agent: one agent's rollback
        // would switch its own host and leave the others.
        return Err(setup(format!(
            "{} spans hosts: an app rollback goes host by host, as a run: deploy the earlier version again (`deploy-agent deploy --env {} --version ...`), or `--db-only` for the database",
            env.name, env.name
        )));
    }
    let releases = store.releases(&env.name).await?;
    let from = releases
        .iter()
        .find(|r| r.state == ReleaseStatus::Live)
        .cloned();
    let to = match &req.to {
        Some(id) => releases
            .iter()
            .find(|r| &r.id == id)
            .cloned()
            .ok_or_else(|| {
                setup(format!(
                    "no release `{id}` in {} (see `deploy-agent releases --env {}`)",
                    env.name, env.name
                ))
            })?,
        None => {
            let live_at = from.as_ref().map_or(i64::MAX, |l| l.created_at);
            releases
                .iter()
                .filter(|r| {
                    r.created_at < live_at
                        // The newest release that was live before and left normally: a
                        // rolled-back or failed release is never a default target.
                        && r.state == ReleaseStatus::Superseded
                })
                .max_by_key(|r| r.created_at)
                .cloned()
                .ok_or_else(|| {
                    setup(format!(
                        "no earlier release of {} to roll back to",
                        env.name
                    ))
                })?
        }
    };
    let mut steps = Vec::new();
    let mut refusals = Vec::new();
    if app(req.mode) {
        match &from {
            Some(l) if l.id == to.id && req.mode == Mode::App => {
                refusals.push(format!("{} is already live", to.id));
            }
            Some(l) => steps.push(format!(
                "switch the app from {} ({}) to {} ({})",
                l.id, l.version, to.id, to.version
            )),
            None => steps.push(format!("make {} ({}) live", to.id, to.version)),
        }
    }
    let mut schema_now = None;
    let mut choice = None;
    let mut database_switch = None;
    let mut data_loss = None;
    if req.mode == Mode::App
        && let Some(database) = &env.database
        && let Ok(settings) = database.settings(env.strict)
    {
        let now = migrate::status(&settings)
            .await
            .ok()
            .and_then(|s| s.current);
        let built_for = to
            .schema_version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok());
        if now.is_some() && now > built_for {
            let changes = migrate::contract::between(&settings.dir, built_for, now)
                .map_err(|e| setup(e.to_string()))?;
            if !changes.is_empty() {
                let msg = format!(
                    "{} was built for schema {}, and the database is at {} after migrations that contract it: {}; the release cannot run on it",
                    to.id,
                    built_for.map_or("none".into(), |v| v.to_string()),
                    now.map_or("none".into(), |v| v.to_string()),
                    migrate::contract::describe(&changes)
                );
                if req.force {
                    steps.push(format!("{msg} (forced)"));
                } else {
                    refusals.push(format!(
                        "{msg}; roll back with `--full` (the app and the database together), or pass --force to switch only the app anyway"
                    ));
                }
            }
        }
    }
    if db(req.mode) {
        let Some(database) = &env.database else {
            return Err(setup(format!(
                "environment `{}` has no database to roll back",
                env.name
            )));
        };
        let settings = database.settings(env.strict).map_err(setup)?;
        schema_now = migrate::status(&settings)
            .await
            .map_err(|e| setup(e.to_string()))?
            .current
            .map(|v| v.to_string());
        let want = to.schema_version.clone();
        match req.db_strategy {
            DbStrategy::Down => {
                if schema_now == want {
                    steps.push(format!(
                        "the database is already at schema {}: nothing to revert",
                        want.as_deref().unwrap_or("none")
                    ));
                } else {
                    steps.push(format!(
                        "take a safety snapshot, then run down migrations from schema {} to {}",
                        schema_now.as_deref().unwrap_or("none"),
                        want.as_deref().unwrap_or("none")
                    ));
                }
            }
            DbStrategy::Restore => {
                // The backup that holds `to`'s schema: named, else the first one taken after
                // `to` (before the next release migrated), else any with that schema.
                let id = match &req.backup {
                    Some(b) => Some(b.clone()),
                    None => {
                        // Backups taken before later releases migrated. The newest that holds
                        // the release's schema loses the least; failing that, the oldest (the
                        // refusal below then explains the mismatch).
                        let mut later: Vec<&ReleaseRecord> = releases
                            .iter()
                            .filter(|r| r.created_at > to.created_at && r.backup_id.is_some())
                            .collect();
                        later.sort_by_key(|r| std::cmp::Reverse(r.created_at));
                        let holds = |r: &&ReleaseRecord| {
                            r.backup_id
                                .as_deref()
                                .and_then(|b| backup::find(&env.backup.dir, b).ok())
                                .is_some_and(|m| m.schema_version.map(|v| v.to_string()) == want)
                        };
                        later
                            .iter()
                            .copied()
                            .find(holds)
                            .or(later.last().copied())
                            .and_then(|r| r.backup_id.clone())
                    }
                };
                match id {
                    None if schema_now == want => steps.push(format!(
                        "the database is already at schema {}: nothing to restore (name a backup with --backup to restore data anyway)",
                        want.as_deref().unwrap_or("none")
                    )),
                    None => refusals.push(format!(
                        "no recorded backup holds schema {} (the database is at {}): name one with --backup ID, or use --db-strategy down",
                        want.as_deref().unwrap_or("none"),
                        schema_now.as_deref().unwrap_or("none")
                    )),
                    Some(id) => {
                        let m = backup::find(&env.backup.dir, &id).map_err(|e| setup(e.to_string()))?;
                        let taken = crate::time::parse_rfc3339(&m.finished_at).unwrap_or(0);
                        let age_s = (now_ms() / 1000 - taken).max(0);
                        let held = m.schema_version.map(|v| v.to_string());
                        if held != want {
                            let msg = format!(
                                "backup {id} holds schema {}, but release {} runs on schema {}: restoring it would leave the release on a schema it was not built for",
                                held.as_deref().unwrap_or("none"),
                                to.id,
                                want.as_deref().unwrap_or("none")
                            );
                            if req.force {
                                steps.push(format!("{msg} (forced)"));
                            } else {
                                refusals.push(format!("{msg}; pass --force to restore it anyway"));
                            }
                        }
                        let how = swap::method(env, &settings.url).await;
                        let what = format!(
                            "backup {id} (schema {}, taken {}, {} ago)",
                            held.as_deref().unwrap_or("none"),
                            m.finished_at,
                            age(age_s)
                        );
                        let keeps = match how.method {
                            Method::Swap => {
                                let n = crate::db::swap::names(&settings.url, "<rollback id>")
                                    .map_err(|e| setup(e.to_string()))?;
                                let (live, staged, aside) = (n.live, n.staged, n.aside);
                                steps.push(format!(
                                    "restore {what} into a new database `{staged}` beside the live one (in parallel; the live database keeps serving), and check its schema fingerprint against the backup's"
                                ));
                                steps.push(if app(req.mode) {
                                    format!(
                                        "switch in one step: `{live}` is renamed `{aside}` (kept: the safety snapshot, no dump needed) and the restored database `{live}`, then {} is made live",
                                        to.id
                                    )
                                } else {
                                    format!(
                                        "switch in one step: `{live}` is renamed `{aside}` (kept: the safety snapshot, no dump needed) and the restored database `{live}`"
                                    )
                                });
                                format!("the database kept as `{aside}` has it")
                            }
                            Method::InPlace => {
                                steps.push(format!(
                                    "restore in place ({}): take a safety snapshot of the database as it is now",
                                    how.why.as_deref().unwrap_or("configured")
                                ));
                                steps.push(format!("restore {what} over it in one transaction"));
                                "the safety snapshot keeps it".into()
                            }
                        };
                        database_switch = Some(how);
                        data_loss = Some(format!(
                            "everything written to the database since {} ({} ago) is replaced by the backup; {keeps}",
                            m.finished_at,
                            age(age_s)
                        ));
                        choice = Some(BackupChoice {
                            id,
                            schema_version: m.schema_version,
                            taken_at: m.finished_at,
                            age_s,
                        });
                    }
                }
            }
        }
    }
    if app(req.mode)
        && database_switch
            .as_ref()
            .is_some_and(|d| d.method == Method::Swap)
        && steps
            .first()
            .is_some_and(|s| s.starts_with("switch the app") || s.starts_with("make "))
    {
        // The app switches with the database, in the switch step.
        steps.remove(0);
    }
    let checks = env.checks.len();
    steps.push(format!(
        "verify {} with the environment's {checks} check(s)",
        to.id
    ));
    steps.push("record the rollback, write the audit log, notify".into());
    Ok(RollbackPlan {
        environment: env.name.clone(),
        mode: req.mode,
        db_strategy: req.db_strategy,
        from,
        to,
        schema_now,
        backup: choice,
        database_switch,
        steps,
        data_loss,
        refusals,
    })
}

fn age(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
