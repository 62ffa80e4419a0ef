//! Deployment runs and their journaled steps.

use serde::Serialize;

use super::{Row, RunStatus, Store, StoreError, now_ms};

/// A deployment run as recorded.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Deployment {
    /// The run id (time-sortable).
    pub id: String,
    /// The environment.
    pub environment: String,
    /// The version deployed.
    pub version: String,
    /// The artifact's path.
    pub artifact: Option<String>,
    /// The artifact's digest.
    pub digest: Option<String>,
    /// Who started it.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// The deploy host.
    pub host: String,
    /// The agent process that ran it.
    pub owner: String,
    /// Where it stands.
    pub status: RunStatus,
    /// The stage it is in, or stopped in.
    pub stage: Option<String>,
    /// Start, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// End, ms since the epoch.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// The failure.
    pub error: Option<String>,
    /// The backup taken before migrating.
    pub backup_id: Option<String>,
    /// Schema version before migrating.
    pub schema_before: Option<String>,
    /// Schema version after migrating.
    pub schema_after: Option<String>,
    /// The target's release id.
    pub release_id: Option<String>,
    /// The release live before this one.
    pub previous_release: Option<String>,
    /// For a resumed run: the owner whose run it took over.
    pub resumed_from: Option<String>,
}

/// One journaled step.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Step {
    /// Order within the run.
    pub seq: i64,
    /// The stage.
    pub stage: String,
    /// `started`, `done`, `failed`, `skipped`.
    pub status: String,
    /// Start, ms since the epoch.
    #[serde(with = "crate::time::json")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    /// End, ms since the epoch.
    #[serde(default, with = "crate::time::json_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// What it did or why it failed.
    pub detail: Option<String>,
    /// The agent process that ran it (`host:pid:start`).
    #[serde(default)]
    pub owner: Option<String>,
}

const DEPLOYMENT_COLUMNS: &str = "id, environment, version, artifact, digest, actor, reason, host, owner, status, stage, started_at, finished_at, error, backup_id, schema_before, schema_after, release_id, previous_release, resumed_from";

fn deployment(mut r: Row) -> Result<Deployment, StoreError> {
    Ok(Deployment {
        id: r.s()?,
        environment: r.s()?,
        version: r.s()?,
        artifact: r.o()?,
        digest: r.o()?,
        actor: r.s()?,
        reason: r.o()?,
        host: r.s()?,
        owner: r.s()?,
        status: r.w(RunStatus::parse)?,
        stage: r.o()?,
        started_at: r.i()?,
        finished_at: r.oi()?,
        error: r.o()?,
        backup_id: r.o()?,
        schema_before: r.o()?,
        schema_after: r.o()?,
        release_id: r.o()?,
        previous_release: r.o()?,
        resumed_from: r.o()?,
    })
}

/// A run with its journaled steps: one entry of `history`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RunJournal {
    /// The run.
    pub deployment: Deployment,
    /// Its steps.
    pub steps: Vec<Step>,
}

impl Store {
    /// Records a new run.
    pub async fn insert_deployment(&self, d: &Deployment) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO deployments (id, environment, version, artifact, digest, actor, reason, host, owner, status, stage, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                (&d.id).into(),
                (&d.environment).into(),
                (&d.version).into(),
                d.artifact.as_deref().into(),
                d.digest.as_deref().into(),
                (&d.actor).into(),
                d.reason.as_deref().into(),
                (&d.host).into(),
                (&d.owner).into(),
                d.status.as_str().into(),
                d.stage.as_deref().into(),
                d.started_at.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Sets one text column of a run.
    pub async fn set_deployment(
        &self,
        id: &str,
        column: DeploymentField,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        // The column is one of a fixed set of names; the values are bound.
        self.exec(
            &format!(
                "UPDATE deployments SET {} = $1 WHERE id = $2",
                column.column()
            ),
            &[value.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// Ends a run.
    pub async fn finish_deployment(
        &self,
        id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE deployments SET status = $1, error = $2, finished_at = $3 WHERE id = $4",
            &[
                status.as_str().into(),
                error.into(),
                now_ms().into(),
                id.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Hands a run to a new owner (a resumed run).
    pub async fn take_over(&self, id: &str, owner: &str, previous: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE deployments SET owner = $1, resumed_from = $2, status = 'running' WHERE id = $3",
            &[owner.into(), previous.into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// One run.
    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"),
                &[id.into()],
            )
            .await?;
        rows.into_iter().next().map(deployment).transpose()
    }

    /// An environment's runs, newest first.
    pub async fn deployments(
        &self,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 ORDER BY started_at DESC, id DESC LIMIT $2"),
                &[environment.into(), limit.into()],
            )
            .await?;
        rows.into_iter().map(deployment).collect()
    }

    /// Runs of an environment still marked running (after taking its lock: interrupted ones).
    pub async fn running(&self, environment: &str) -> Result<Vec<Deployment>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 AND status = 'running' ORDER BY started_at"),
                &[environment.into()],
            )
            .await?;
        rows.into_iter().map(deployment).collect()
    }

    /// Journals the start of a step; returns its sequence number.
    pub async fn step_started(&self, deployment: &str, stage: &str) -> Result<i64, StoreError> {
        // One transaction on one connection: the next number cannot be taken twice by this
        // agent, and the primary key refuses it to another.
        let owner = super::lease::this_process();
        let mut conn = self.conn().await?;
        super::transaction(&mut conn, async |conn| {
            let next = conn
                .fetch(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE deployment_id = $1",
                    &[deployment.into()],
                )
                .await?;
            let seq = match next.into_iter().next() {
                Some(row) => Row { row, at: 0 }.i().map_err(super::decode)?,
                None => 1,
            };
            conn.execute(
                "INSERT INTO steps (deployment_id, seq, stage, status, started_at, owner) VALUES ($1, $2, $3, 'started', $4, $5)",
                &[deployment.into(), seq.into(), stage.into(), now_ms().into(), owner.0.as_str().into()],
            )
            .await?;
            conn.execute(
                "UPDATE deployments SET stage = $1 WHERE id = $2",
                &[stage.into(), deployment.into()],
            )
            .await?;
            Ok(seq)
        })
        .await
    }

    /// Journals the end of a step.
    pub async fn step_finished(
        &self,
        deployment: &str,
        seq: i64,
        status: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE steps SET status = $1, detail = $2, finished_at = $3 WHERE deployment_id = $4 AND seq = $5",
            &[status.into(), detail.into(), now_ms().into(), deployment.into(), seq.into()],
        )
        .await?;
        Ok(())
    }

    /// A run's journal, in order.
    /// An environment's newest runs with their journals (`history`).
    pub async fn history(
        &self,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<RunJournal>, StoreError> {
        let mut out = Vec::new();
        for deployment in self.deployments(environment, limit).await? {
            let steps = self.steps(&deployment.id).await?;
            out.push(RunJournal { deployment, steps });
        }
        Ok(out)
    }

    /// A run's journaled steps, in order.
    pub async fn steps(&self, deployment: &str) -> Result<Vec<Step>, StoreError> {
        let rows = self
            .rows(
                "SELECT seq, stage, status, started_at, finished_at, detail, owner FROM steps WHERE deployment_id = $1 ORDER BY seq",
                &[deployment.into()],
            )
            .await?;
        rows.into_iter()
            .map(|mut r| {
                Ok(Step {
                    seq: r.i()?,
                    stage: r.s()?,
                    status: r.s()?,
                    started_at: r.i()?,
                    finished_at: r.oi()?,
                    detail: r.o()?,
                    owner: r.o()?,
                })
            })
            .collect()
    }
}

/// The run columns [`Store::set_deployment`] may set.
#[derive(Debug, Clone, Copy)]
pub enum DeploymentField {
    /// The backup taken.
    BackupId,
    /// Schema version before migrating.
    SchemaBefore,
    /// Schema version after migrating.
    SchemaAfter,
    /// The target's release id.
    ReleaseId,
    /// The release live before.
    PreviousRelease,
}

impl DeploymentField {
    fn column(self) -> &'static str {
        match self {
            DeploymentField::BackupId => "backup_id",
            DeploymentField::SchemaBefore => "schema_before",
            DeploymentField::SchemaAfter => "schema_after",
            DeploymentField::ReleaseId => "release_id",
            DeploymentField::PreviousRelease => "previous_release",
        }
    }
}
