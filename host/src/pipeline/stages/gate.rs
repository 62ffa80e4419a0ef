//! Approval gates: wait for a person's decision, or its expiry.

use crate::pipeline::*;

impl Run<'_> {
    /// An approval gate (`start` or `promote`).
    pub(in crate::pipeline) async fn approve(&mut self, gate: &str) -> Result<(), StageError> {
        let step = self.begin(Stage::Approve).await?;
        let expires = self.env.approval.as_ref().and_then(|a| a.expires);
        let question = format!("{} to {} ({gate})", self.d.version, self.env.name);
        match self.wait_for_decision(gate, &question, expires).await {
            Ok(detail) => {
                self.end(Stage::Approve, step, StageStatus::Done, detail)
                    .await
            }
            // Still waiting: the stage stays open in the journal and is resumed.
            Err(StageError::Suspended) => Err(StageError::Suspended),
            Err(e) => Err(self.fail(Stage::Approve, step, e).await),
        }
    }

    /// Opens a gate, tells everyone, and waits for `approve` / `reject` (or expiry).
    pub(in crate::pipeline) async fn wait_for_decision(
        &mut self,
        gate: &str,
        question: &str,
        expires: Option<Duration>,
    ) -> Result<String, StageError> {
        let expires_at = expires.map(|d| now_ms() + d.as_millis() as i64);
        let request = self
            .store
            .request_approval(&self.d.id, gate, &self.env.name, expires_at)
            .await?;
        if request.decision.is_none() {
            // From anywhere when a daemon runs it: the same command with its --server.
            let server = self
                .server
                .as_deref()
                .map(|url| format!("--server {url} "))
                .unwrap_or_default();
            let how = format!(
                "waiting for a decision on {question}: `deploy-agent {server}approve {id} --reason ...` or `deploy-agent {server}reject {id} --reason ...`",
                id = self.d.id
            );
            self.reporter.note(&how);
            self.notify(
                EventKind::ApprovalRequested,
                Some(Stage::Approve),
                format!("Approval needed: {question}"),
                Some(how),
                None,
            );
        }
        progress::set(
            "gate",
            format!(
                "waiting for a decision at the {gate} gate (run {})",
                self.d.id
            ),
        );
        if let Some(d) = expires {
            progress::countdown("expiry", "expires", Instant::now() + d);
        }
        loop {
            let a = self
                .store
                .approval(&self.d.id, gate)
                .await?
                .ok_or_else(|| StageError::Refused("the approval request vanished".into()))?;
            let who = a.decided_by.clone().unwrap_or_default();
            let why = a
                .reason
                .clone()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            match a.decision.as_deref() {
                Some("approved") => return Ok(format!("approved by {who}{why}")),
                Some(_) => return Err(StageError::Refused(format!("rejected by {who}{why}"))),
                None => {}
            }
            if a.expires_at.is_some_and(|e| e <= now_ms()) {
                return Err(StageError::Refused(format!(
                    "no decision within {} s: the approval expired",
                    expires.map_or(0, |d| d.as_secs())
                )));
            }
            if self.lease.as_ref().is_some_and(Lease::lost) {
                return Err(StageError::LockLost);
            }
            if self.should_suspend() {
                return Err(StageError::Suspended);
            }
            let pause = Duration::from_millis(200);
            tokio::time::sleep(pause).await;
            self.waited += pause;
        }
    }
}
