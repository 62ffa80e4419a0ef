//! `[agent.state_backup]`: where the agent's own state (the state store, the audit chain's
//! head, agent.toml) is backed up, encrypted, and how often.
//!
//! ```toml
//! [agent.state_backup]
//! key = "${file:/etc/deploy-agent/state-backup.key}"   # required: state backups are encrypted
//! offsite = "s3"                                       # a backup-store plugin (recommended)
//! schedule = "daily 04:00"
//! keep_last = 14
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::RawStateBackup;
use super::{Cadence, Job, SecretRef, SecretSource, Site, Validator};

/// Backups of the agent's own state.
#[derive(Debug, Clone)]
pub struct StateBackupConfig {
    /// The local directory (`<state_dir>/state-backups` unless configured).
    pub dir: PathBuf,
    /// The encryption key's source.
    pub key: SecretRef,
    /// The backup-store plugin that keeps a copy off this host.
    pub offsite: Option<String>,
    /// When the daemon takes one.
    pub schedule: Option<Cadence>,
    /// How many are kept, here and off-site.
    pub keep_last: usize,
}

impl StateBackupConfig {
    /// The key, read now, or why not: a state backup is never written unencrypted.
    pub fn read_key(&self) -> Result<crate::db::backup::Key, String> {
        let value = self
            .key
            .resolve()
            .map_err(|e| format!("state backup key {}: {e}", self.key))?;
        crate::db::backup::Key::parse(value.expose())
            .map_err(|e| format!("state backup key {}: {e}", self.key))
    }
}

impl Validator<'_> {
    pub(super) fn state_backup(
        &mut self,
        raw: &Spanned<RawStateBackup>,
        state_dir: &Path,
        plugins: &BTreeMap<String, super::PluginConfig>,
    ) -> Option<StateBackupConfig> {
        let r = raw.get_ref();
        let before = self.errors.len();
        let key = match SecretSource::parse(r.key.get_ref()) {
            Some(source) => Some(SecretRef {
                source,
                site: Site::at(self.file, self.text, r.key.span()),
            }),
            None => {
                self.error(
                    &r.key,
                    "the state backup key must be a reference, not a value",
                    "write `key = \"${file:/etc/deploy-agent/state-backup.key}\"` (32 bytes, hex or base64), and keep a copy of it off this host: a lost host's state cannot be rebuilt without it",
                );
                None
            }
        };
        if let Some(o) = &r.offsite
            && !plugins.contains_key(o.get_ref())
        {
            self.error(
                o,
                format!(
                    "off-site state backup store `{}` is not a configured plugin",
                    o.get_ref()
                ),
                &format!("declare it under [plugins.{}]", o.get_ref()),
            );
        }
        let schedule = r
            .schedule
            .as_ref()
            .and_then(|s| self.cadence(s, Job::StateBackup));
        if self.errors.len() > before {
            return None;
        }
        Some(StateBackupConfig {
            dir: r.dir.as_ref().map_or_else(
                || state_dir.join("state-backups"),
                |d| self.base.join(d.get_ref()),
            ),
            key: key?,
            offsite: r.offsite.as_ref().map(|o| o.get_ref().clone()),
            schedule,
            keep_last: r.keep_last.unwrap_or(14).max(1),
        })
    }
}

/// agent.toml as a state backup keeps it: references stay (they are not secrets), and the
/// value of any key that looks like a secret but is written in clear is replaced, so a
/// backup never carries one.
pub fn redact_for_backup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let redacted = line.split_once('=').and_then(|(k, v)| {
            let key = k.trim().trim_matches('"').to_ascii_lowercase();
            let value = v.trim();
            let secret_looking = super::SECRET_LOOKING.iter().any(|s| key.contains(s));
            let literal = value.starts_with('"') && !value.starts_with("\"${");
            (secret_looking && literal && !k.trim_start().starts_with('#')).then(|| {
                let end = if line.ends_with('\n') { "\n" } else { "" };
                format!("{k}= \"(redacted by the state backup)\"{end}")
            })
        });
        out.push_str(redacted.as_deref().unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn clear_secrets_are_redacted_and_references_kept() {
        let text = "[plugins.x.config]\napi_token = \"xoxb-123\"\npassword = \"${env:PW}\"\nurl = \"https://a\"\n";
        let out = super::redact_for_backup(text);
        assert!(!out.contains("xoxb-123"), "{out}");
        assert!(out.contains("password = \"${env:PW}\""), "{out}");
        assert!(out.contains("url = \"https://a\""), "{out}");
    }
}
