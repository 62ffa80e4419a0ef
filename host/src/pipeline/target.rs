//! Calls to the deploy target that need care: retries with back-off, waiting for a release
//! to go live, switching back, the checks between them, and the host's look at what the
//! target left on disk.

use super::*;
use crate::store::ReleaseStatus;

/// Refuses a release whose target left a symbolic link pointing outside a directory it may
/// write: the deploy host (a web server serving `current`) would follow it out.
pub(crate) async fn no_escaping_links(target: &Plugin) -> Result<(), StageError> {
    let writable: Vec<std::path::PathBuf> = target
        .policy()
        .dirs
        .iter()
        .filter(|d| d.writable)
        .map(|d| d.host.clone())
        .collect();
    let found = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        for dir in &writable {
            found.extend(crate::runtime::links::escaping_links(dir)?);
        }
        Ok::<_, std::io::Error>(found)
    })
    .await?
    .map_err(|e| StageError::Host(format!("checking the target's directories for links: {e}")))?;
    if found.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = found.iter().take(5).map(ToString::to_string).collect();
    Err(StageError::Refused(format!(
        "refused: the target left {} link(s) pointing outside its directory, which the deploy host would follow: {}{}",
        found.len(),
        shown.join(", "),
        if found.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    )))
}

/// Makes `to` live again on the target and in the store, and gives the release it replaces
/// (`left`) its new state. Returns the id the target says is live.
pub(crate) async fn switch_back(
    store: &Store,
    target: &Plugin,
    ctx: &CallContext,
    env: &Environment,
    to: &str,
    left: Option<(&str, ReleaseStatus)>,
) -> Result<String, StageError> {
    let environment = env.name.as_str();
    let live = retrying("rollback", || target.rollback(ctx, Some(to))).await?;
    wait_live(target, ctx, &live, &env.deploy, |what| {
        tracing::info!(release = live, "rolling back: {what}")
    })
    .await?;
    store.mark_live(environment, &live).await?;
    if let Some((id, state)) = left {
        store.set_release_state(environment, id, state).await?;
    }
    Ok(live)
}

/// Attempts at a target operation that fails with a retryable plugin error.
pub(crate) const TARGET_ATTEMPTS: u32 = 4;
/// The longest wait between them, whatever the platform asks.
pub(crate) const TARGET_MAX_WAIT: Duration = Duration::from_secs(30);

/// Calls a target operation again while the plugin says the failure is transient (a 429 with
/// Retry-After, a 409 conflict, a 503), waiting what the platform asked (capped) or backing off.
/// A deadline is not retried here: the timed-out call may have taken effect.
pub(crate) async fn retrying<T, F, Fut>(op: &str, mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e)
                if attempt < TARGET_ATTEMPTS
                    && matches!(
                        &e,
                        CallError::Plugin {
                            error: PluginError::Retryable(_),
                            ..
                        }
                    ) =>
            {
                let wait = e
                    .retry_after()
                    .flatten()
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_millis(500 << attempt))
                    .min(TARGET_MAX_WAIT);
                tracing::info!(
                    op,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "{e}; trying again"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Polls the target until the staged release `id` is ready (or live), on the environment's
/// poll interval and timeout; `note` hears each new state. Returns the URL the target last
/// reported, if any, and the time spent waiting.
pub(crate) async fn wait_ready(
    target: &Plugin,
    ctx: &CallContext,
    id: &str,
    settings: &crate::config::DeploySettings,
    note: impl Fn(&str),
) -> Result<(Option<String>, Duration), StageError> {
    let deadline = Instant::now() + settings.timeout;
    let mut waited = Duration::ZERO;
    let mut url = None;
    let mut last = String::new();
    loop {
        match target.status(ctx, id).await {
            Ok(s) => {
                if s.url.is_some() {
                    url = s.url;
                }
                match s.state {
                    ReleaseState::Ready | ReleaseState::Live => return Ok((url, waited)),
                    ReleaseState::Failed(why) => {
                        return Err(StageError::Release(format!("release {id} failed: {why}")));
                    }
                    ReleaseState::Canceled => {
                        return Err(StageError::Release(format!("release {id} was cancelled")));
                    }
                    ReleaseState::InProgress(what) => {
                        if what != last {
                            note(&what);
                            last = what;
                        }
                    }
                    ReleaseState::Pending => {}
                }
            }
            Err(e) if e.retry_after().is_some() => {
                tracing::info!("status of {id}: {e}; polling again");
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(StageError::Release(format!(
                "release {id} was not ready after {} s (timeout_ms)",
                settings.timeout.as_secs()
            )));
        }
        waited += settings.poll_interval;
        tokio::time::sleep(settings.poll_interval).await;
    }
}

/// Polls the target until it reports `id` live, on the environment's poll interval and
/// timeout: a platform may accept a promotion or rollback and finish it later (Vercel answers
/// 202 behind a rolling release; Kubernetes rolls the pods). `note` hears each new state.
/// Returns the time spent waiting.
pub(crate) async fn wait_live(
    target: &Plugin,
    ctx: &CallContext,
    id: &str,
    settings: &crate::config::DeploySettings,
    note: impl Fn(&str),
) -> Result<Duration, StageError> {
    let deadline = Instant::now() + settings.timeout;
    let mut waited = Duration::ZERO;
    let mut last = String::new();
    loop {
        let what = match target.status(ctx, id).await {
            Ok(s) => match s.state {
                ReleaseState::Live => return Ok(waited),
                ReleaseState::Failed(why) => {
                    return Err(StageError::Release(format!(
                        "release {id} failed on its way to live: {why}"
                    )));
                }
                ReleaseState::Canceled => {
                    return Err(StageError::Release(format!(
                        "release {id} was cancelled on its way to live"
                    )));
                }
                ReleaseState::InProgress(what) => what,
                ReleaseState::Ready | ReleaseState::Pending => "waiting for the switch".into(),
            },
            Err(e) if e.retry_after().is_some() => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        if what != last {
            note(&what);
            progress::set("target", format!("release {id}: {what}"));
            last = what;
        }
        if Instant::now() >= deadline {
            let t = settings.timeout.as_secs();
            return Err(StageError::Release(format!(
                "release {id} was not live after {t} s (timeout_ms); last: {last}"
            )));
        }
        waited += settings.poll_interval;
        tokio::time::sleep(settings.poll_interval).await;
    }
}

/// Polls the target's `traffic.weight` until `id` has `weight` percent of traffic and the
/// platform reports it taken effect, on the environment's poll interval and timeout. `note`
/// hears each new state. Returns the time spent waiting.
pub(crate) async fn wait_weight(
    target: &Plugin,
    ctx: &CallContext,
    id: &str,
    weight: u8,
    settings: &crate::config::DeploySettings,
    note: impl Fn(&str),
) -> Result<Duration, StageError> {
    let deadline = Instant::now() + settings.timeout;
    let mut waited = Duration::ZERO;
    let mut last = String::new();
    loop {
        let what = match target.weight(ctx, id).await {
            Ok(t) if t.weight == weight && t.taken_effect => return Ok(waited),
            Ok(t) if t.weight == weight => {
                format!("{weight} % set, not yet in effect: {}", t.detail)
            }
            Ok(t) => format!(
                "{} % of traffic, waiting for {weight} %: {}",
                t.weight, t.detail
            ),
            Err(e) if e.retry_after().is_some() => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        if what != last {
            note(&what);
            progress::set("target", format!("release {id}: {what}"));
            last = what;
        }
        if Instant::now() >= deadline {
            let t = settings.timeout.as_secs();
            return Err(StageError::Release(format!(
                "release {id}'s traffic did not reach {weight} % within {t} s (timeout_ms); last: {last}"
            )));
        }
        waited += settings.poll_interval;
        tokio::time::sleep(settings.poll_interval).await;
    }
}

/// Checks a release that serves again (after a rollback) with every check of the environment.
pub(crate) async fn verify_release(
    config: &Config,
    env: &Environment,
    release: &str,
    url: Option<String>,
) -> Rounds {
    let subst = Subst {
        url,
        release: release.to_string(),
        environment: env.name.clone(),
    };
    check_rounds(&env.checks, &subst, &config.base_dir(), Duration::ZERO).await
}

/// What rounds of checks found.
#[derive(Debug, Default)]
pub(crate) struct Rounds {
    pub(crate) results: Vec<CheckResult>,
    pub(crate) failed: Option<String>,
    pub(crate) rounds: u32,
    pub(crate) waited: Duration,
}

/// Runs `list` once, or in rounds until `window` has passed; stops at the first failure.
pub(crate) async fn check_rounds(
    list: &[crate::config::CheckConfig],
    subst: &Subst,
    base: &std::path::Path,
    window: Duration,
) -> Rounds {
    let mut out = Rounds::default();
    let end = Instant::now() + window;
    if !window.is_zero() {
        progress::countdown("window", "watch window", end);
    }
    loop {
        out.rounds += 1;
        if !window.is_zero() {
            progress::set("round", format!("round {}", out.rounds));
        }
        let results = checks::run_all(list.iter(), subst, base).await;
        for r in &results {
            if r.attempts > 1 {
                out.waited += list
                    .iter()
                    .find(|c| c.name == r.name)
                    .map_or(Duration::ZERO, |c| c.interval * (r.attempts - 1));
            }
        }
        out.failed = results.iter().find(|r| !r.passed).map(|f| {
            format!(
                "check `{}` failed after {} attempt(s): {}",
                f.name, f.attempts, f.detail
            )
        });
        out.results.extend(results);
        if out.failed.is_some() || Instant::now() >= end {
            return out;
        }
        let pause = list
            .iter()
            .map(|c| c.interval)
            .min()
            .unwrap_or(Duration::from_secs(1));
        out.waited += pause;
        tokio::time::sleep(pause).await;
    }
}
