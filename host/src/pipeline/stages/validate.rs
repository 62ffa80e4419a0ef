//! The validate stage: built-in checks and the validator plugins.

use crate::pipeline::*;

impl Run<'_> {
    pub(in crate::pipeline) async fn validate(&mut self) -> Result<(), StageError> {
        let step = self.begin(Stage::Validate).await?;
        let findings = validate::run(
            self.config,
            self.env,
            self.artifact_path.as_deref(),
            &self.artifact,
            &self.plugins.validators,
            &self.plugins.target,
            &self.ctx,
        )
        .await;
        let blocking: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.blocks(self.env.strict))
            .collect();
        let detail = if blocking.is_empty() {
            format!("{} finding(s), none blocking", findings.len())
        } else {
            let first = blocking[0];
            format!(
                "{} blocking finding(s); first: [{} {}] {}{}{}",
                blocking.len(),
                first.source,
                first.code,
                first.message,
                first
                    .hint
                    .as_deref()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default(),
                if self.env.strict && first.severity == "warning" {
                    " (a warning: this environment is strict)"
                } else {
                    ""
                }
            )
        };
        let failed = !blocking.is_empty();
        self.findings = findings;
        if failed {
            return Err(self
                .fail(Stage::Validate, step, StageError::Refused(detail))
                .await);
        }
        self.end(Stage::Validate, step, StageStatus::Done, detail)
            .await
    }
}
