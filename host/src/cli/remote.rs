//! The CLI's remote mode: `--server URL` (or `DEPLOY_AGENT_SERVER`) makes the commands that
//! read or act on environments go through the daemon's API, with the token from
//! `DEPLOY_AGENT_TOKEN` or `--token-file`, and print exactly what they print on the host.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use super::Usage;
use crate::pipeline::events::{EventRecord, EventType};
use crate::pipeline::progress::{Progress, TICK};
use crate::pipeline::{Reporter, Stage, StageReport, StageStatus};
use crate::remote::{Client, RemoteError};

/// Where the daemon is, and the token to show it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Act through the daemon at this URL (`https://deploy.example:8470`) instead of on this
    /// host: deploy, status, history, releases, approve, reject, rollback, audit and `runs
    /// follow`, with the same output. The token comes from DEPLOY_AGENT_TOKEN or --token-file.
    #[arg(long, global = true, env = "DEPLOY_AGENT_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// A file holding the daemon's API token (default: $DEPLOY_AGENT_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for a daemon whose certificate is its own.
    #[arg(long, global = true, env = "DEPLOY_AGENT_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The client `--server` asks for, if it does.
pub(super) fn client(args: &ServerArgs) -> anyhow::Result<Option<Client>> {
    let Some(url) = args.server.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Usage(format!("--token-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("DEPLOY_AGENT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let ca = match &args.ca_file {
        Some(f) => {
            Some(std::fs::read(f).map_err(|e| Usage(format!("--ca-file {}: {e}", f.display())))?)
        }
        None => None,
    };
    Ok(Some(
        Client::new(url, token, ca.as_deref()).map_err(|e| Usage(e.to_string()))?,
    ))
}

/// A path segment, percent-encoded.
pub(super) fn seg(text: &str) -> String {
    crate::pipeline::analysis::encode(text)
}

/// A call about an environment: the daemon's 404 is an unknown environment, a usage error
/// (exit 2) like on the host; a 401 says how to give a token.
pub(super) fn about_env<T>(
    client: &Client,
    env: &str,
    r: Result<T, RemoteError>,
) -> anyhow::Result<T> {
    match r {
        Err(RemoteError::Refused { status: 404, .. }) => Err(Usage(format!(
            "no environment `{env}` on the daemon at {} (or none this token may see)",
            client.url()
        ))
        .into()),
        other => refused(other),
    }
}

/// A 401 says how to give a token; other errors as they are.
pub(super) fn refused<T>(r: Result<T, RemoteError>) -> anyhow::Result<T> {
    match r {
        Err(e @ RemoteError::Refused { status: 401, .. }) => Err(anyhow::anyhow!(
            "{e}: set DEPLOY_AGENT_TOKEN or pass --token-file with a token from `deploy-agent token create`"
        )),
        other => Ok(other?),
    }
}

/// The status word of a stage event's summary (`backup skipped`).
fn stage_status(e: &EventRecord) -> StageStatus {
    match e.kind {
        EventType::StageFailed => StageStatus::Failed,
        _ if e.summary.ends_with(" skipped") => StageStatus::Skipped,
        _ => StageStatus::Done,
    }
}

/// Turns a stream of events into live-view calls; between events the running stage's clock
/// goes on.
#[derive(Default)]
struct Renderer {
    /// The running stage, as last heard.
    running: Option<(Progress, Instant)>,
}

impl Renderer {
    /// The view's clock, between events.
    fn tick(&self, view: &dyn Reporter) {
        if let Some((p, at)) = &self.running {
            view.progress(&Progress {
                elapsed_ms: p.elapsed_ms + at.elapsed().as_millis() as u64,
                ..p.clone()
            });
        }
    }

    /// One event.
    fn show(&mut self, e: &EventRecord, view: &dyn Reporter) {
        let stage = e.stage.as_deref().and_then(Stage::parse);
        match (e.kind, stage) {
            (EventType::StageStarted, Some(stage)) => {
                view.stage(&StageReport {
                    stage,
                    status: StageStatus::Started,
                    duration_ms: 0.0,
                    detail: String::new(),
                });
                self.running = Some((
                    Progress {
                        stage,
                        elapsed_ms: 0,
                        activity: String::new(),
                    },
                    Instant::now(),
                ));
            }
            (EventType::StageSucceeded | EventType::StageFailed, Some(stage)) => {
                self.running = None;
                view.stage(&StageReport {
                    stage,
                    status: stage_status(e),
                    duration_ms: e.duration_ms.unwrap_or(0) as f64,
                    detail: e.detail.clone().unwrap_or_default(),
                });
            }
            (EventType::Progress, Some(stage)) => {
                let p = Progress {
                    stage,
                    elapsed_ms: e.duration_ms.unwrap_or(0),
                    activity: e.summary.clone(),
                };
                view.progress(&p);
                self.running = Some((p, Instant::now()));
            }
            (EventType::ApprovalRequested, _) => {
                view.note(e.detail.as_deref().unwrap_or(&e.summary));
            }
            (EventType::RolledBack, _) if !e.is_final() => view.note(&e.summary),
            _ => {}
        }
    }
}

/// A clock for [`Renderer::tick`].
fn ticker() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Streams a run's events into the live view until its last event (or the stream's end);
/// the last event, if the run ended.
pub(super) async fn follow(
    client: &Client,
    run: &str,
    view: &dyn Reporter,
) -> anyhow::Result<Option<EventRecord>> {
    let mut events = refused(
        client
            .events(&format!("/v1/runs/{}/events", seg(run)))
            .await,
    )?;
    let mut tick = ticker();
    let mut renderer = Renderer::default();
    loop {
        let e = tokio::select! {
            e = events.next() => e?,
            _ = tick.tick() => {
                renderer.tick(view);
                continue;
            }
        };
        let Some(e) = e else { return Ok(None) };
        renderer.show(&e, view);
        if e.is_final() {
            return Ok(Some(e));
        }
    }
}

/// Runs `work` (a request the daemon answers when an operation ends: a rollback) while
/// showing, live, the environment's events of the one operation that starts a `stage` in
/// the meantime; `work`'s answer.
pub(super) async fn show_while<T>(
    client: &Client,
    env: &str,
    stage: Stage,
    view: &dyn Reporter,
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    // Subscribed first: nothing the operation says is missed.
    let mut events = refused(
        client
            .events(&format!("/v1/environments/{}/events", seg(env)))
            .await,
    )?;
    let mut work = std::pin::pin!(work);
    let mut tick = ticker();
    let mut renderer = Renderer::default();
    // The operation followed: the first that starts `stage` (the environment is locked
    // for it, so no other starts one meanwhile).
    let mut followed: Option<String> = None;
    let mut open = true;
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            e = events.next(), if open => match e {
                Ok(Some(e)) => {
                    if followed.is_none()
                        && e.kind == EventType::StageStarted
                        && e.stage.as_deref() == Some(stage.name())
                    {
                        followed = Some(e.deployment_id.clone());
                    }
                    if followed.as_deref() == Some(e.deployment_id.as_str()) {
                        renderer.show(&e, view);
                    }
                }
                // The stream ended or broke: the answer still comes.
                _ => open = false,
            },
            _ = tick.tick() => renderer.tick(view),
        }
    }
}

/// Waits until the daemon's record of a run says it ended (its events end a moment before
/// the journal's last write).
pub(super) async fn ended_run(
    client: &Client,
    run: &str,
) -> anyhow::Result<crate::server::api::RunView> {
    let started = Instant::now();
    loop {
        let v: crate::server::api::RunView =
            refused(client.get(&format!("/v1/runs/{}", seg(run))).await)?;
        let done = !matches!(v.status.as_str(), "queued" | "running");
        if done || started.elapsed() > Duration::from_secs(30) {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `runs follow RUN`.
pub(super) async fn follow_command(
    client: Option<Client>,
    run: &str,
    output: super::Output,
) -> anyhow::Result<std::process::ExitCode> {
    let client = client.ok_or_else(|| {
        Usage(
            "`runs follow` follows a run of a daemon: give --server URL (or set DEPLOY_AGENT_SERVER); a deploy on this host shows its own progress".into(),
        )
    })?;
    let json = output == super::Output::Json;
    let view = super::live::reporter(json);
    follow(&client, run, view.as_ref()).await?;
    let v = ended_run(&client, run).await?;
    super::deploy::show_remote_end(&v, json)
}
