//! `[plugins.NAME.notify]`: which events a notifier hears, by kind and by severity, so chat is
//! not flooded and a pager hears only what pages.
//!
//! ```toml
//! [plugins.pager.notify]
//! events = ["failed", "rolled-back"]   # default: every kind
//! min_severity = "error"               # info (default), warning, error, critical
//! ```

use serde::Serialize;
use toml::Spanned;

use super::Validator;
use super::raw::RawNotify;

/// How much an event matters, as the agent judges it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Progress: a run started, a stage passed, a release went live.
    #[default]
    Info,
    /// Needs attention, nothing is down: an approval is awaited, a stage failed, an operator
    /// rolled back.
    Warning,
    /// Something failed: a run, a scheduled job, an automatic rollback outside strict
    /// environments.
    Error,
    /// Production was affected: an automatic rollback in a strict environment, or a
    /// rollback that did not bring the earlier release back.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// Its word in agent.toml.
    pub fn word(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// The severity a word names.
    pub fn parse(word: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.word() == word)
    }
}

/// The event kinds, as agent.toml names them (the WIT `event-kind` cases).
pub const EVENT_KINDS: [&str; 8] = [
    "started",
    "stage-started",
    "stage-succeeded",
    "stage-failed",
    "approval-requested",
    "succeeded",
    "failed",
    "rolled-back",
];

/// Which events a notifier hears.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyFilter {
    /// The kinds it hears (`None`: all).
    pub events: Option<Vec<String>>,
    /// The least severity it hears.
    pub min_severity: Severity,
}

impl NotifyFilter {
    /// Whether an event of `kind` (an [`EVENT_KINDS`] word) and `severity` goes to it.
    pub fn admits(&self, kind: &str, severity: Severity) -> bool {
        severity >= self.min_severity
            && self
                .events
                .as_ref()
                .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }

    /// In words, for `plan`.
    pub fn describe(&self) -> String {
        match (&self.events, self.min_severity) {
            (None, Severity::Info) => "every event".into(),
            (None, s) => format!("events of severity {} and above", s.word()),
            (Some(k), Severity::Info) => k.join(", "),
            (Some(k), s) => format!("{} of severity {} and above", k.join(", "), s.word()),
        }
    }
}

impl Validator<'_> {
    /// `[plugins.NAME.notify]`, checked: every kind and the severity must be known.
    pub(super) fn notify_filter(&mut self, raw: Option<&Spanned<RawNotify>>) -> NotifyFilter {
        let Some(raw) = raw else {
            return NotifyFilter::default();
        };
        let raw = raw.get_ref();
        let events = raw.events.as_ref().map(|kinds| {
            let mut out = Vec::new();
            for k in kinds {
                if EVENT_KINDS.contains(&k.get_ref().as_str()) {
                    out.push(k.get_ref().clone());
                } else {
                    self.error(
                        k,
                        format!("`{}` is not an event kind", k.get_ref()),
                        &format!("the kinds are {}", EVENT_KINDS.join(", ")),
                    );
                }
            }
            out
        });
        let min_severity = match &raw.min_severity {
            None => Severity::Info,
            Some(s) => Severity::parse(s.get_ref()).unwrap_or_else(|| {
                self.error(
                    s,
                    format!("`{}` is not a severity", s.get_ref()),
                    "use info, warning, error or critical",
                );
                Severity::Info
            }),
        };
        NotifyFilter {
            events,
            min_severity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_admit_by_kind_and_least_severity() {
        let all = NotifyFilter::default();
        assert!(all.admits("stage-started", Severity::Info));
        let pager = NotifyFilter {
            events: Some(vec!["failed".into(), "rolled-back".into()]),
            min_severity: Severity::Error,
        };
        assert!(pager.admits("rolled-back", Severity::Critical));
        assert!(pager.admits("failed", Severity::Error));
        assert!(!pager.admits("rolled-back", Severity::Warning), "too mild");
        assert!(
            !pager.admits("succeeded", Severity::Critical),
            "not its kind"
        );
        assert_eq!(
            pager.describe(),
            "failed, rolled-back of severity error and above"
        );
        assert!(Severity::Critical > Severity::Error && Severity::Warning > Severity::Info);
        assert_eq!(Severity::parse("warning"), Some(Severity::Warning));
        assert_eq!(Severity::parse("fatal"), None);
    }
}
