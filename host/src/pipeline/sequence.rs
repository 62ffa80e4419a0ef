//! What a run of an environment will do, decided once: the order of its stages, and what it
//! does with a run it finds interrupted. The run follows these; `plan` shows them.

use crate::config::{Environment, Gate, OnInterrupt, Strategy};
use crate::runtime::Artifact;
use crate::store::Deployment;

use super::{RecoveryAction, Stage};

/// One step between taking the lock and notifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wait for a person at a gate.
    Approve(Gate),
    /// Built-in and plugin validators.
    Validate,
    /// Back up the database, then migrate it.
    BackupAndMigrate,
    /// Stage the release on the target.
    Deploy,
    /// The verify checks.
    Verify,
    /// Shift traffic to the staged release in steps (canary).
    Shift,
    /// Make the release live.
    Promote,
    /// Deploy, verify and promote on each host, in batches (an environment that spans hosts).
    Rollout,
    /// The watch checks and analyses.
    Watch,
    /// Retire the release live before, after the scale-down delay (blue-green, canary).
    Retire,
}

impl Step {
    /// The stages it journals, in order.
    pub fn stages(self) -> &'static [Stage] {
        match self {
            Step::Approve(_) => &[Stage::Approve],
            Step::Validate => &[Stage::Validate],
            Step::BackupAndMigrate => &[Stage::Backup, Stage::Migrate],
            Step::Deploy => &[Stage::Deploy],
            Step::Verify => &[Stage::Verify],
            Step::Shift => &[Stage::Shift],
            Step::Promote => &[Stage::Promote],
            Step::Rollout => &[Stage::Rollout],
            Step::Watch => &[Stage::Watch],
            Step::Retire => &[Stage::Retire],
        }
    }
}

/// The steps of a run through `env`, in order: a staged strategy verifies before it
/// promotes, a direct one after; an approval gate sits at the start or before promotion.
pub fn sequence(env: &Environment) -> Vec<Step> {
    let gate = env.approval.as_ref().map(|a| a.before);
    let mut steps = Vec::new();
    if gate == Some(Gate::Start) {
        steps.push(Step::Approve(Gate::Start));
    }
    steps.extend([Step::Validate, Step::BackupAndMigrate, Step::Deploy]);
    let approve = (gate == Some(Gate::Promote)).then_some(Step::Approve(Gate::Promote));
    if env.rollout.is_some() {
        // Each host deploys, verifies and promotes in its turn: a promote gate opens the
        // rollout.
        steps.pop();
        steps.extend(approve);
        steps.extend([Step::Rollout, Step::Watch]);
        return steps;
    }
    match env.deploy.strategy {
        Strategy::Staged | Strategy::BlueGreen => {
            steps.push(Step::Verify);
            steps.extend(approve);
            steps.push(Step::Promote);
        }
        Strategy::Canary => {
            steps.push(Step::Verify);
            steps.extend(approve);
            steps.extend([Step::Shift, Step::Promote]);
        }
        Strategy::Direct => {
            steps.extend(approve);
            steps.extend([Step::Promote, Step::Verify]);
        }
    }
    steps.push(Step::Watch);
    if env.deploy.strategy.retires() {
        steps.push(Step::Retire);
    }
    steps
}

/// The gate's name, as approvals record it.
pub fn gate_name(gate: Gate) -> &'static str {
    match gate {
        Gate::Start => "start",
        Gate::Promote => "promote",
    }
}

/// What a new run does with a run of its environment that it finds interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// Roll it back (the environment says so, or it was being rolled back when it died).
    RollBack,
    /// The same release: take it over and go on from where it stopped.
    Resume,
    /// Another release: end it as superseded; the new run rolls forward from its state.
    Supersede,
}

impl Interrupted {
    /// The decision for `old`, found by a run of `artifact`; `resuming` says whether an
    /// earlier interrupted run is already being resumed (only one is).
    pub fn decide(
        env: &Environment,
        old: &Deployment,
        artifact: &Artifact,
        resuming: bool,
    ) -> Interrupted {
        let same = old.version == artifact.version && old.digest == artifact.digest;
        if env.deploy.on_interrupt == OnInterrupt::Rollback
            || old.stage.as_deref() == Some(super::recover::ROLLING_BACK)
        {
            Interrupted::RollBack
        } else if same && !resuming {
            Interrupted::Resume
        } else {
            Interrupted::Supersede
        }
    }

    /// What it comes to, once done.
    pub fn action(self) -> RecoveryAction {
        match self {
            Interrupted::RollBack => RecoveryAction::RolledBack,
            Interrupted::Resume => RecoveryAction::Resumed,
            Interrupted::Supersede => RecoveryAction::Superseded,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn env(keys: &str) -> Environment {
        let text = format!("[environments.e]\n{keys}\n");
        let config = Config::parse(Path::new("agent.toml"), &text).expect("parses");
        config.environments["e"].clone()
    }

    #[test]
    fn the_order_follows_the_strategy_and_the_gate() {
        use Step::*;
        assert_eq!(
            sequence(&env("")),
            [Validate, BackupAndMigrate, Deploy, Verify, Promote, Watch]
        );
        assert_eq!(
            sequence(&env(
                "deploy = { strategy = \"direct\" }\napproval = { before = \"promote\" }"
            )),
            [
                Validate,
                BackupAndMigrate,
                Deploy,
                Approve(Gate::Promote),
                Promote,
                Verify,
                Watch
            ]
        );
        assert_eq!(
            sequence(&env("approval = { before = \"start\" }"))[0],
            Approve(Gate::Start)
        );
        assert_eq!(
            sequence(&env("deploy = { strategy = \"blue-green\" }")),
            [
                Validate,
                BackupAndMigrate,
                Deploy,
                Verify,
                Promote,
                Watch,
                Retire
            ]
        );
        assert_eq!(
            sequence(&env(
                "deploy = { strategy = \"canary\", steps = [{ weight = 20 }, { weight = 100 }] }\napproval = { before = \"promote\" }"
            )),
            [
                Validate,
                BackupAndMigrate,
                Deploy,
                Verify,
                Approve(Gate::Promote),
                Shift,
                Promote,
                Watch,
                Retire
            ]
        );
    }

    #[test]
    fn an_interrupted_run_is_resumed_once_superseded_or_rolled_back() {
        let artifact = Artifact::version("v2");
        let mut old = Deployment {
            version: "v2".into(),
            ..Deployment::default()
        };
        let e = env("");
        assert_eq!(
            Interrupted::decide(&e, &old, &artifact, false),
            Interrupted::Resume
        );
        assert_eq!(
            Interrupted::decide(&e, &old, &artifact, true),
            Interrupted::Supersede
        );
        old.stage = Some(crate::pipeline::recover::ROLLING_BACK.into());
        assert_eq!(
            Interrupted::decide(&e, &old, &artifact, false),
            Interrupted::RollBack
        );
        old.stage = None;
        old.version = "v1".into();
        assert_eq!(
            Interrupted::decide(&e, &old, &artifact, false),
            Interrupted::Supersede
        );
        let rollback = env("deploy = { on_interrupt = \"rollback\" }");
        assert_eq!(
            Interrupted::decide(&rollback, &old, &artifact, false),
            Interrupted::RollBack
        );
    }
}
