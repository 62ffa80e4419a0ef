//! Schedules in agent.toml: `[environments.NAME.schedule]` (`backup`, `prune`,
//! `restore_drill`, `offsite_verify`) and `[agent.state_backup] schedule`, each a cron
//! expression (`"0 2 * * *"`, `"@daily"`, parsed by croner) or a phrase an operator writes
//! (`"hourly"`, `"daily 02:00"`, `"weekly sunday 03:30"`, `"monthly"`), in the agent's time
//! zone (`[agent] time_zone`, else the system's).

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use toml::Spanned;

use super::Validator;

/// A scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// A backup of the environment's database (and its off-site copy).
    Backup,
    /// Retention applied to its backups, here and off-site.
    Prune,
    /// The newest backup restored into a scratch database and checked: a timed drill.
    RestoreDrill,
    /// The newest off-site copy fetched back and its checksum checked.
    OffsiteVerify,
    /// The agent's own state, encrypted, here and off-site (`[agent.state_backup]`).
    StateBackup,
}

impl Job {
    /// Every job an environment's `[schedule]` can name.
    pub const PER_ENVIRONMENT: [Job; 4] = [
        Job::Backup,
        Job::Prune,
        Job::RestoreDrill,
        Job::OffsiteVerify,
    ];

    /// Its name in agent.toml, the store and the API.
    pub fn name(self) -> &'static str {
        match self {
            Job::Backup => "backup",
            Job::Prune => "prune",
            Job::RestoreDrill => "restore_drill",
            Job::OffsiteVerify => "offsite_verify",
            Job::StateBackup => "state_backup",
        }
    }

    /// The job a name means.
    pub fn parse(name: &str) -> Option<Job> {
        [
            Job::Backup,
            Job::Prune,
            Job::RestoreDrill,
            Job::OffsiteVerify,
            Job::StateBackup,
        ]
        .into_iter()
        .find(|j| j.name() == name)
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When a job runs: what was written, and the cron expression it means.
#[derive(Debug, Clone)]
pub struct Cadence {
    /// As written in agent.toml.
    pub text: String,
    /// The cron expression (five fields, or a croner nickname) it stands for.
    pub cron: String,
    parsed: Cron,
}

impl PartialEq for Cadence {
    fn eq(&self, other: &Self) -> bool {
        self.cron == other.cron
    }
}

impl Cadence {
    /// Reads a phrase or a cron expression.
    pub fn parse(text: &str) -> Result<Cadence, String> {
        let cron = phrase(text)?.unwrap_or_else(|| text.trim().to_string());
        let parsed = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(&cron)
            .map_err(|e| {
                format!("`{text}` is neither a schedule phrase nor a cron expression: {e}")
            })?;
        Ok(Cadence {
            text: text.to_string(),
            cron,
            parsed,
        })
    }

    /// The first run strictly after `after_ms` (ms since the epoch), in `tz`.
    pub fn next_after(&self, after_ms: i64, tz: &TimeZone) -> Option<i64> {
        let at = Timestamp::from_millisecond(after_ms)
            .ok()?
            .to_zoned(tz.clone());
        let next = self.parsed.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The next `n` runs after `after_ms`.
    pub fn upcoming(&self, after_ms: i64, tz: &TimeZone, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut at = after_ms;
        while out.len() < n {
            match self.next_after(at, tz) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// The latest run in `(after_ms, now_ms]`, if one fell there: what is due now (several
    /// missed while the agent was down run once, as the latest).
    pub fn due(&self, after_ms: i64, now_ms: i64, tz: &TimeZone) -> Option<i64> {
        let now = Timestamp::from_millisecond(now_ms)
            .ok()?
            .to_zoned(tz.clone());
        let latest = self.parsed.find_previous_occurrence(&now, true).ok()?;
        let latest = latest.timestamp().as_millisecond();
        (latest > after_ms).then_some(latest)
    }

    /// In words ("At 02:00"), as croner describes it.
    pub fn describe(&self) -> String {
        self.parsed.describe()
    }
}

/// The cron expression a phrase means, or `None` when `text` is not a phrase.
fn phrase(text: &str) -> Result<Option<String>, String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let Some(first) = words.first() else {
        return Err("an empty schedule".into());
    };
    let clock = |w: Option<&String>, default: (u32, u32)| -> Result<(u32, u32), String> {
        match w {
            None => Ok(default),
            Some(w) => time_of_day(w).ok_or_else(|| {
                format!("`{text}`: `{w}` is not a time of day (write it as HH:MM, 24-hour)")
            }),
        }
    };
    let too_many = |n: usize| {
        if words.len() > n {
            Err(format!("`{text}`: unexpected `{}`", words[n]))
        } else {
            Ok(())
        }
    };
    let cron = match first.as_str() {
        "hourly" => {
            too_many(2)?;
            let minute = match words.get(1) {
                None => 0,
                Some(w) => w
                    .trim_start_matches(':')
                    .parse::<u32>()
                    .ok()
                    .filter(|m| *m < 60)
                    .ok_or_else(|| format!("`{text}`: `{w}` is not a minute (write :MM)"))?,
            };
            format!("{minute} * * * *")
        }
        "daily" => {
            too_many(2)?;
            let (h, m) = clock(words.get(1), (0, 0))?;
            format!("{m} {h} * * *")
        }
        "weekly" => {
            too_many(3)?;
            let (day, rest) = match words.get(1).and_then(|w| weekday(w)) {
                Some(d) => (d, 2),
                None => (0, 1),
            };
            if words.len() > rest + 1 {
                return Err(format!("`{text}`: unexpected `{}`", words[rest + 1]));
            }
            let (h, m) = clock(words.get(rest), (0, 0))?;
            format!("{m} {h} * * {day}")
        }
        "monthly" => {
            too_many(3)?;
            let (day, rest) = match words.get(1).and_then(|w| w.parse::<u32>().ok()) {
                Some(d) if (1..=28).contains(&d) => (d, 2),
                Some(d) => {
                    return Err(format!(
                        "`{text}`: day {d} is not in every month (write 1 to 28, or a cron expression with L for the last day)"
                    ));
                }
                None => (1, 1),
            };
            if words.len() > rest + 1 {
                return Err(format!("`{text}`: unexpected `{}`", words[rest + 1]));
            }
            let (h, m) = clock(words.get(rest), (0, 0))?;
            format!("{m} {h} {day} * *")
        }
        _ => return Ok(None),
    };
    Ok(Some(cron))
}

fn time_of_day(w: &str) -> Option<(u32, u32)> {
    let (h, m) = w.split_once(':')?;
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

fn weekday(w: &str) -> Option<u32> {
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let w = w.get(..3)?;
    DAYS.iter().position(|d| *d == w).map(|i| i as u32)
}

/// An environment's `[schedule]`: its jobs, each at most once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// The jobs and when each runs.
    pub jobs: Vec<(Job, Cadence)>,
}

impl Schedule {
    /// When `job` runs, if it is scheduled.
    pub fn get(&self, job: Job) -> Option<&Cadence> {
        self.jobs.iter().find(|(j, _)| *j == job).map(|(_, c)| c)
    }
}

/// The agent's time zone: a name from the system's time zone database, else the system's own.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        Some(n) => TimeZone::get(n).map_err(|e| format!("unknown time zone `{n}`: {e}")),
        None => Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC)),
    }
}

/// A time in the agent's zone, for people: `2026-12-08 02:00 CET`.
pub fn local_text(ms: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string(),
        Err(_) => ms.to_string(),
    }
}

impl Validator<'_> {
    /// One job's cadence, or an error at its line.
    pub(super) fn cadence(&mut self, raw: &Spanned<String>, job: Job) -> Option<Cadence> {
        match Cadence::parse(raw.get_ref()) {
            Ok(c) => Some(c),
            Err(e) => {
                self.error(
                    raw,
                    format!("schedule `{job}`: {e}"),
                    "write a phrase (\"hourly\", \"daily 02:00\", \"weekly sunday 03:00\", \"monthly\", \"monthly 15 04:00\") or a five-field cron expression (\"30 2 * * 1-5\")",
                );
                None
            }
        }
    }

    /// `[environments.NAME.schedule]`.
    pub(super) fn schedule(
        &mut self,
        raw: Option<&std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
    ) -> Schedule {
        let mut out = Schedule::default();
        for (key, value) in raw.into_iter().flatten() {
            let job = Job::parse(key.get_ref()).filter(|j| Job::PER_ENVIRONMENT.contains(j));
            let Some(job) = job else {
                self.error(
                    key,
                    format!("`{}` is not a job that can be scheduled", key.get_ref()),
                    "the jobs are backup, prune, restore_drill and offsite_verify (the agent's own state: [agent.state_backup] schedule)",
                );
                continue;
            };
            if let Some(c) = self.cadence(value, job) {
                out.jobs.push((job, c));
            }
        }
        out.jobs.sort_by_key(|(j, _)| *j);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEC_7_2026: i64 = 1_796_601_600_000; // 2026-12-07T00:00:00Z, a Monday

    fn cron(text: &str) -> String {
        Cadence::parse(text).unwrap().cron
    }

    #[test]
    fn phrases_mean_the_cron_expressions_an_operator_expects() {
        assert_eq!(cron("hourly"), "0 * * * *");
        assert_eq!(cron("hourly :15"), "15 * * * *");
        assert_eq!(cron("daily"), "0 0 * * *");
        assert_eq!(cron("Daily 02:00"), "0 2 * * *");
        assert_eq!(cron("weekly"), "0 0 * * 0");
        assert_eq!(cron("weekly sunday 03:30"), "30 3 * * 0");
        assert_eq!(cron("weekly fri"), "0 0 * * 5");
        assert_eq!(cron("monthly"), "0 0 1 * *");
        assert_eq!(cron("monthly 15 04:00"), "0 4 15 * *");
        assert_eq!(cron("30 2 * * 1-5"), "30 2 * * 1-5");
        assert_eq!(cron("@daily"), "@daily");
        for bad in [
            "",
            "daily 25:00",
            "daily 2am",
            "monthly 31",
            "weekly someday 03:00 x",
            "every day",
            "* * * *",
            "0 0 0 * * * *",
        ] {
            assert!(Cadence::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_check_names_the_line_of_a_bad_schedule() {
        let text = "[environments.prod.database]\nurl = \"sqlite:x.db\"\n[environments.prod.schedule]\nbackup = \"daily 2am\"\nreindex = \"daily\"\noffsite_verify = \"weekly\"\n";
        let errors = crate::config::Config::parse(std::path::Path::new("agent.toml"), text)
            .unwrap_err()
            .0;
        let lines: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 4 && m.contains("`2am` is not a time of day")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 5 && m.contains("`reindex` is not a job")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 6 && m.contains("keeps no off-site copies")),
            "{lines:?}"
        );
        assert!(errors.iter().all(|e| e.hint.is_some()), "{errors:?}");
    }

    #[test]
    fn runs_follow_the_agent_time_zone_and_missed_runs_coalesce() {
        let utc = TimeZone::UTC;
        let daily = Cadence::parse("daily 02:00").unwrap();
        let hour = 3_600_000;
        assert_eq!(
            daily.upcoming(DEC_7_2026, &utc, 3),
            vec![
                DEC_7_2026 + 2 * hour,
                DEC_7_2026 + 26 * hour,
                DEC_7_2026 + 50 * hour
            ]
        );
        // Berlin is UTC+1 in December: 02:00 there is 01:00 UTC.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            daily.next_after(DEC_7_2026, &berlin),
            Some(DEC_7_2026 + hour)
        );
        // Three days missed: one run is due, the latest.
        assert_eq!(
            daily.due(DEC_7_2026, DEC_7_2026 + 75 * hour, &utc),
            Some(DEC_7_2026 + 74 * hour)
        );
        assert_eq!(daily.due(DEC_7_2026, DEC_7_2026 + hour, &utc), None);
        let monthly = Cadence::parse("monthly").unwrap();
        assert_eq!(
            local_text(monthly.next_after(DEC_7_2026, &utc).unwrap(), &utc),
            "2027-01-01 00:00 UTC"
        );
    }
}
