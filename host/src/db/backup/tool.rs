//! PostgreSQL's client tools (`pg_dump`, `pg_restore`, `psql`) as child processes that die
//! with the agent, with the password kept out of their command lines.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::db::DbError;
use crate::db::conn::redact_url;

/// Splits a PostgreSQL URL into one without the password (safe for command lines) and the
/// password (passed to pg_dump/pg_restore through the environment, never argv).
pub(super) fn pg_cli_url(url: &str) -> (String, Option<String>) {
    let redacted = redact_url(url);
    if redacted == url {
        return (url.to_string(), None);
    }
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|auth| auth.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_string());
    (redacted.replacen(":***@", "@", 1), password)
}

/// Makes `cmd`'s child receive SIGKILL when the thread that started it (and so the agent)
/// dies, however it dies: a restore's `psql` must never outlive the agent that feeds it.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the agent exited"));
            }
            Ok(())
        });
    }
}

/// A PostgreSQL client tool, running, with its stderr collected on a thread.
pub(super) struct Tool {
    pub(super) name: &'static str,
    pub(super) child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Tool {
    /// Starts `name` with `args` (then `--dbname URL` when `url` is given: the password, if
    /// any, goes through `PGPASSWORD`, never the command line). The child is killed if the
    /// agent dies.
    pub(super) fn spawn(
        name: &'static str,
        args: &[&str],
        url: Option<&str>,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<Tool, DbError> {
        let mut cmd = Command::new(name);
        cmd.args(args);
        if let Some(url) = url {
            let (cli_url, password) = pg_cli_url(url);
            if let Some(p) = password {
                cmd.env("PGPASSWORD", p);
            }
            cmd.arg("--dbname").arg(cli_url);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DbError::Query {
                context: format!("starting {name}"),
                message: format!("{e} (is PostgreSQL's client installed?)"),
            })?;
        let mut pipe = child
            .stderr
            .take()
            .ok_or_else(|| DbError::query(name, "no stderr"))?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        Ok(Tool {
            name,
            child,
            stderr,
        })
    }

    /// Waits for it; `Ok(Err(stderr))` when it failed.
    pub(super) fn finish(mut self) -> Result<Result<(), String>, DbError> {
        let status = self
            .child
            .wait()
            .map_err(|e| DbError::query(format!("waiting for {}", self.name), e))?;
        let errors = self.stderr.join().unwrap_or_default();
        Ok(if status.success() {
            Ok(())
        } else {
            Err(redact_url(errors.trim()))
        })
    }

    /// Kills it (if still running) and waits.
    pub(super) fn kill(mut self) -> Result<Result<(), String>, DbError> {
        let _ = self.child.kill();
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_off_command_lines() {
        assert_eq!(
            pg_cli_url("postgres://u:p%40ss@h:5432/db"),
            (
                "postgres://u@h:5432/db".to_string(),
                Some("p%40ss".to_string())
            )
        );
        assert_eq!(pg_cli_url("postgres://u@h/db").1, None);
    }
}
