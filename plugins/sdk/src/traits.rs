//! One trait per plugin kind. Methods are associated functions: every call runs in a fresh
//! instance, so a plugin keeps no state between calls.

use crate::{
    Artifact, Context, Event, Finding, InputStream, ObjectInfo, ObjectPage, OutputStream,
    PluginError, Release, ReleaseStatus, Staged, Strategy, TrafficStatus, rejected,
};

/// Tells people what a deployment is doing.
pub trait Notifier {
    /// Deliver one event. Return a retryable error for transient failures; the host retries.
    fn notify(ctx: &Context, event: Event) -> Result<(), PluginError>;
}

/// Checks a release and its environment before anything changes.
pub trait Validator {
    /// Return what was found; an empty list means all is well.
    fn validate(ctx: &Context, release: Artifact) -> Result<Vec<Finding>, PluginError>;
}

/// Puts releases on a platform in two phases: `deploy` stages, `promote` makes live.
///
/// Never sleep or poll inside these calls: return as soon as the platform accepted the
/// request; the host polls [`DeployTarget::status`].
pub trait DeployTarget {
    /// Stage a release and return its id (and preview URL, if the platform has one).
    fn deploy(ctx: &Context, release: Artifact) -> Result<Staged, PluginError>;

    /// Where a release stands. Called repeatedly; keep it to one cheap request.
    fn status(ctx: &Context, release_id: &str) -> Result<ReleaseStatus, PluginError>;

    /// Make a staged release live. The default suits single-phase platforms, where a release
    /// is live as soon as it is ready: nothing to do.
    fn promote(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let _ = (ctx, release_id);
        Ok(())
    }

    /// Make an earlier release live again; return the id now live.
    fn rollback(ctx: &Context, to: Option<&str>) -> Result<String, PluginError> {
        let _ = (ctx, to);
        Err(rejected("this deploy target does not support rollback"))
    }

    /// The releases the platform knows, newest first.
    fn list_releases(ctx: &Context) -> Result<Vec<Release>, PluginError> {
        let _ = ctx;
        Err(rejected("this deploy target does not list releases"))
    }
}

/// The release a rollback without a target returns to: the newest one created before the
/// live one (`releases` in any order). `None` when nothing is live or nothing is older.
pub fn previous_release(releases: &[Release]) -> Option<&Release> {
    let live_at = releases.iter().find(|r| r.live)?.created_at_ms;
    releases
        .iter()
        .filter(|r| !r.live && r.created_at_ms < live_at)
        .max_by_key(|r| r.created_at_ms)
}

/// Keeps backup objects off the deploy host.
pub trait BackupStore {
    /// Store everything read from `body` under `key`; on failure leave nothing behind.
    fn put(
        ctx: &Context,
        key: &str,
        metadata: Vec<(String, String)>,
        size_hint: Option<u64>,
        body: &InputStream,
    ) -> Result<ObjectInfo, PluginError>;

    /// Write the object's bytes to `sink`.
    fn get(ctx: &Context, key: &str, sink: &OutputStream) -> Result<ObjectInfo, PluginError>;

    /// One page of the objects under `prefix`.
    fn list(ctx: &Context, prefix: &str, page: Option<&str>) -> Result<ObjectPage, PluginError>;

    /// Delete an object; a missing object is not an error.
    fn delete(ctx: &Context, key: &str) -> Result<(), PluginError>;
}

/// Shifts traffic between a staged release and the stable one (exported beside
/// [`DeployTarget`] by targets that can route a share of requests to each).
///
/// As with `deploy`, never sleep or poll: set what was asked and return; the host polls
/// [`Traffic::weight`] until the change has taken effect.
pub trait Traffic {
    /// The strategies the target can carry out with its settings.
    fn strategies(ctx: &Context) -> Result<Vec<Strategy>, PluginError>;

    /// Send `weight` percent (0 to 100) of requests to `release_id`, the rest to the stable
    /// release. Setting the weight it already has is a no-op.
    fn set_weight(ctx: &Context, release_id: &str, weight: u8) -> Result<(), PluginError>;

    /// The weight the release has now, and whether the platform applies it yet.
    fn weight(ctx: &Context, release_id: &str) -> Result<TrafficStatus, PluginError>;

    /// All traffic back to the stable release; a no-op when the release has none.
    fn abort(ctx: &Context, release_id: &str) -> Result<(), PluginError>;

    /// Scale an old release that takes no traffic down; refuse the live one.
    fn retire(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let _ = (ctx, release_id);
        Ok(())
    }
}
