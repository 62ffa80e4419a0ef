//! What a call hands back to the host: the size of each returned value (for the return cap),
//! the texts in it (for redaction), and how those texts are cut and logged.

use super::bindings::deploy_agent::plugin::log::Level;
use super::bindings::{
    self, Finding, ObjectInfo, ObjectPage, PluginError, Release, ReleaseStatus, Staged, Strategy,
    TrafficStatus,
};

/// The longest text of a plugin's kept for people or the state store: an error, a finding,
/// a log line. Longer ones are cut, with a note saying so.
pub(super) const MAX_TEXT: usize = 4096;

/// Cuts `text` to `max` bytes (on a character boundary), noting how much went.
pub(super) fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let dropped = text.len() - at;
    text.truncate(at);
    text.push_str(&format!(" [cut: {dropped} more bytes]"));
}

/// A plugin's log line, into tracing with the call's tags.
pub(super) fn emit_log(level: Level, plugin: &str, env: &str, call: u64, message: &str) {
    match level {
        Level::Trace => tracing::trace!(target: "plugin", plugin, env, call, "{message}"),
        Level::Debug => tracing::debug!(target: "plugin", plugin, env, call, "{message}"),
        Level::Info => tracing::info!(target: "plugin", plugin, env, call, "{message}"),
        Level::Warn => tracing::warn!(target: "plugin", plugin, env, call, "{message}"),
        Level::Error => tracing::error!(target: "plugin", plugin, env, call, "{message}"),
    }
}

/// The bytes a returned value carries, for the return-size cap, and its texts, for
/// redaction.
pub(crate) trait ReturnSize {
    fn return_size(&self) -> usize;
    /// The texts in it that people read or the state store keeps.
    fn texts_mut(&mut self) -> Vec<&mut String> {
        Vec::new()
    }
}

impl ReturnSize for PluginError {
    fn return_size(&self) -> usize {
        match self {
            PluginError::Retryable(r) => r.message.len() + 8,
            PluginError::Rejected(m)
            | PluginError::Unauthorized(m)
            | PluginError::InvalidConfig(m)
            | PluginError::Other(m) => m.len(),
        }
    }
}

impl ReturnSize for () {
    fn return_size(&self) -> usize {
        0
    }
}
impl ReturnSize for String {
    fn return_size(&self) -> usize {
        self.len()
    }
}
impl<T: ReturnSize> ReturnSize for Option<T> {
    fn return_size(&self) -> usize {
        self.as_ref().map_or(0, ReturnSize::return_size)
    }
}
impl<T: ReturnSize> ReturnSize for Vec<T> {
    fn return_size(&self) -> usize {
        self.iter().map(ReturnSize::return_size).sum::<usize>() + self.len() * 8
    }
    fn texts_mut(&mut self) -> Vec<&mut String> {
        self.iter_mut().flat_map(ReturnSize::texts_mut).collect()
    }
}
impl ReturnSize for ObjectInfo {
    fn return_size(&self) -> usize {
        self.key.len()
            + 16
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}
impl ReturnSize for ObjectPage {
    fn return_size(&self) -> usize {
        self.objects.return_size() + self.next.return_size()
    }
}
impl ReturnSize for Finding {
    fn return_size(&self) -> usize {
        self.code.len() + self.message.len() + self.hint.return_size()
    }
    fn texts_mut(&mut self) -> Vec<&mut String> {
        let mut texts = vec![&mut self.code, &mut self.message];
        texts.extend(self.hint.as_mut());
        texts
    }
}
impl ReturnSize for Staged {
    fn return_size(&self) -> usize {
        self.release_id.len() + self.url.return_size()
    }
}
impl ReturnSize for ReleaseStatus {
    fn return_size(&self) -> usize {
        let state = match &self.state {
            bindings::ReleaseState::InProgress(s) | bindings::ReleaseState::Failed(s) => s.len(),
            _ => 0,
        };
        state + self.url.return_size()
    }
    fn texts_mut(&mut self) -> Vec<&mut String> {
        match &mut self.state {
            bindings::ReleaseState::InProgress(s) | bindings::ReleaseState::Failed(s) => vec![s],
            _ => Vec::new(),
        }
    }
}
impl ReturnSize for Release {
    fn return_size(&self) -> usize {
        self.id.len() + self.version.return_size() + self.url.return_size() + 9
    }
}
impl ReturnSize for Strategy {
    fn return_size(&self) -> usize {
        1
    }
}
impl ReturnSize for TrafficStatus {
    fn return_size(&self) -> usize {
        self.detail.len() + 2
    }
    fn texts_mut(&mut self) -> Vec<&mut String> {
        vec![&mut self.detail]
    }
}
