//! The states a run, a release, a rollback and a queued request can be in: enums inside the
//! agent, text only in the store and on the wire (the same words as before, so old rows and
//! API clients read the same).

use serde::{Deserialize, Serialize};

/// An enum whose variants are stored and sent as fixed words.
macro_rules! words {
    // With a default variant (`default Running;` first).
    ($(#[$m:meta])* $name:ident { default $default:ident; $($rest:tt)+ }) => {
        words! { $(#[$m])* $name { $($rest)+ } }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }
    };
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The word stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant a stored word names.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        // By hand: utoipa's derive does not see a `serde(rename)` that a macro wrote.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// Where a deployment run stands.
    RunStatus {
        default Running;
        /// In progress (or its agent died: see [`RunStatus::Interrupted`]).
        Running = "running",
        /// The release went live.
        Succeeded = "succeeded",
        /// It stopped on an error; what was live stays live.
        Failed = "failed",
        /// Found interrupted, and replaced by a newer run of another release.
        Superseded = "superseded",
        /// Found interrupted under `on_interrupt = "rollback"`, and undone.
        RolledBack = "rolled_back",
        /// Stopped at a safe point for the daemon's shutdown; resumed by the next start.
        Suspended = "suspended",
        /// Never stored: how a view shows a `running` run whose agent is gone.
        Interrupted = "interrupted",
    }
}

words! {
    /// Where a release stands on its environment.
    ReleaseStatus {
        /// On the target, not serving.
        Staged = "staged",
        /// Serving.
        Live = "live",
        /// Was live; another release is now.
        Superseded = "superseded",
        /// Was live; a rollback made an older release live again.
        RolledBack = "rolled_back",
        /// Its run failed before it went live.
        Failed = "failed",
    }
}

words! {
    /// What a host's agent does for a run of an environment that spans hosts.
    HostAction {
        /// Stage the release on the host, verify it there, make it live there.
        Rollout = "rollout",
        /// Make the release the host had before live again.
        Rollback = "rollback",
    }
}

words! {
    /// Where a host's part of a run stands.
    HostState {
        /// Written by the coordinating agent; the host's agent has not taken it yet.
        Queued = "queued",
        /// The host's agent is on it.
        Running = "running",
        /// Done on the host.
        Done = "done",
        /// It failed on the host; the detail says why.
        Failed = "failed",
    }
}

words! {
    /// Where an emergency rollback or a restore stands.
    RollbackStatus {
        default Running;
        /// In progress (or interrupted, when its agent is gone).
        Running = "running",
        /// Done, and its checks passed.
        Succeeded = "succeeded",
        /// Stopped on an error, or its checks failed.
        Failed = "failed",
        /// Interrupted, and reverted by `recover --rollback`.
        Undone = "undone",
        /// Never stored: how a view shows a `running` one whose agent is gone.
        Interrupted = "interrupted",
    }
}

words! {
    /// Where a request in the daemon's queue stands.
    QueueState {
        /// Waiting for its environment.
        Queued = "queued",
        /// Its run has started.
        Running = "running",
        /// Its run ended (the outcome says how).
        Done = "done",
        /// Cancelled before it started.
        Cancelled = "cancelled",
    }
}

words! {
    /// Where a scheduled job's run stands.
    JobStatus {
        /// Waiting for its environment's lock (a deploy holds it).
        Waiting = "waiting",
        /// Running (or its agent died: its owner is gone).
        Running = "running",
        /// An attempt failed; the next is due at `next_attempt_at`.
        Retrying = "retrying",
        /// It did its work.
        Succeeded = "succeeded",
        /// Every attempt failed.
        Failed = "failed",
        /// Its agent died mid-way; the next occurrence runs as usual.
        Interrupted = "interrupted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_are_refused() {
        for s in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::RolledBack,
            RunStatus::Interrupted,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(
            ReleaseStatus::parse("rolled_back"),
            Some(ReleaseStatus::RolledBack)
        );
        assert_eq!(RunStatus::parse("Succeeded"), None);
        assert_eq!(QueueState::parse(""), None);
    }
}
