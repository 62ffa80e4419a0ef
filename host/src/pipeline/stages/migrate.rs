//! The backup and migrate stages: a backup before anything changes, then the migrations.

use crate::pipeline::*;

impl Run<'_> {
    pub(in crate::pipeline) async fn backup_and_migrate(&mut self) -> Result<(), StageError> {
        let Some(db) = self.env.database.clone() else {
            let step = self.begin(Stage::Backup).await?;
            self.end(
                Stage::Backup,
                step,
                StageStatus::Skipped,
                "no database".into(),
            )
            .await?;
            let step = self.begin(Stage::Migrate).await?;
            return self
                .end(
                    Stage::Migrate,
                    step,
                    StageStatus::Skipped,
                    "no database".into(),
                )
                .await;
        };
        let mut settings = db.settings(self.env.strict).map_err(StageError::Refused)?;
        settings.actor = self.d.actor.clone();

        let step = self.begin(Stage::Backup).await?;
        let status = match migrate::status(&settings).await {
            Ok(s) => s,
            Err(e) => return Err(self.fail(Stage::Backup, step, e.into()).await),
        };
        let pending = status.pending();
        if self.d.schema_before.is_none() {
            let before = status.current.map(|v| v.to_string());
            self.record(DeploymentField::SchemaBefore, before.as_deref())
                .await?;
            self.d.schema_before = before;
        }
        use crate::config::BackupWhen;
        let wanted = match self.env.deploy.backup {
            BackupWhen::Always => true,
            BackupWhen::Pending => pending > 0,
            BackupWhen::Never => false,
        };
        if let Some(id) = self.d.backup_id.clone() {
            self.end(
                Stage::Backup,
                step,
                StageStatus::Skipped,
                format!("taken before the interruption: {id}"),
            )
            .await?;
        } else if !wanted {
            let why = if self.env.deploy.backup == BackupWhen::Never {
                "backup = \"never\"".to_string()
            } else {
                "no pending migrations".to_string()
            };
            self.end(Stage::Backup, step, StageStatus::Skipped, why)
                .await?;
        } else {
            let backup_settings = match self
                .env
                .backup
                .settings(&self.env.name, crate::config::KeyUse::Write)
            {
                Ok(s) => s,
                Err(e) => {
                    return Err(self.fail(Stage::Backup, step, StageError::Refused(e)).await);
                }
            };
            let why = format!(
                "before deployment {} ({} pending migration(s))",
                self.d.id, pending
            );
            let written = Arc::new(AtomicU64::new(0));
            progress::bytes("backup", "written", written.clone());
            let manifest = match backup::create(
                &settings.url,
                &backup_settings,
                &self.d.actor,
                &why,
                written,
            )
            .await
            {
                Ok(m) => m,
                Err(e) => return Err(self.fail(Stage::Backup, step, e.into()).await),
            };
            self.store
                .insert_backup(
                    &manifest.id,
                    &self.env.name,
                    &self.d.id,
                    manifest.schema_version.map(|v| v.to_string()).as_deref(),
                )
                .await?;
            self.record(DeploymentField::BackupId, Some(&manifest.id))
                .await?;
            self.d.backup_id = Some(manifest.id.clone());
            self.audit(
                "backup.created",
                Some(manifest.id.clone()),
                Some(format!("{} bytes stored", manifest.stored_bytes)),
            )
            .await;
            let mut detail = format!(
                "{} ({})",
                manifest.id,
                crate::units::human_size(manifest.stored_bytes)
            );
            if let Some(store) = &self.plugins.offsite {
                self.reporter
                    .note(&format!("copying {} to `{}`", manifest.id, store.name()));
                progress::set(
                    "backup",
                    format!("copying {} off-site to `{}`", manifest.id, store.name()),
                );
                match offsite::upload(store, &self.ctx, &self.env.backup.dir, &manifest).await {
                    Ok(key) => {
                        self.audit(
                            "backup.offsite",
                            Some(manifest.id.clone()),
                            Some(key.clone()),
                        )
                        .await;
                        detail.push_str(&format!(", off-site as {key}"));
                    }
                    // The local backup exists, but the promise is an off-site copy too.
                    Err(e) => return Err(self.fail(Stage::Backup, step, e.into()).await),
                }
            }
            self.end(Stage::Backup, step, StageStatus::Done, detail)
                .await?;
        }

        let step = self.begin(Stage::Migrate).await?;
        if pending == 0 {
            let current = status.current.map(|v| v.to_string());
            self.record(DeploymentField::SchemaAfter, current.as_deref())
                .await?;
            self.d.schema_after = current.clone();
            return self
                .end(
                    Stage::Migrate,
                    step,
                    StageStatus::Skipped,
                    format!(
                        "schema up to date at {}",
                        current.as_deref().unwrap_or("no version")
                    ),
                )
                .await;
        }
        let shown = |i: usize, n: usize, m: &migrate::Migration| {
            progress::set(
                "migrate",
                format!(
                    "migration {} of {n}: {} {}",
                    i + 1,
                    m.version,
                    m.description
                ),
            );
        };
        let report = match migrate::run(&settings, None, &shown).await {
            Ok(r) => r,
            Err(e) => return Err(self.fail(Stage::Migrate, step, e.into()).await),
        };
        let after = report
            .applied
            .last()
            .map(|(v, _)| v.to_string())
            .or(self.d.schema_before.clone());
        self.record(DeploymentField::SchemaAfter, after.as_deref())
            .await?;
        self.d.schema_after = after.clone();
        self.audit(
            "migrate.applied",
            None,
            Some(format!(
                "{} migration(s), schema now {}",
                report.applied.len(),
                after.as_deref().unwrap_or("?")
            )),
        )
        .await;
        self.end(
            Stage::Migrate,
            step,
            StageStatus::Done,
            format!(
                "{} applied, schema {} -> {}",
                report.applied.len(),
                self.d.schema_before.as_deref().unwrap_or("none"),
                after.as_deref().unwrap_or("none")
            ),
        )
        .await
    }
}
