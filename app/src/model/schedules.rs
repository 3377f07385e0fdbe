//! Recurring schedules on the wire: what `PUT /api/v1/schedules/{name}` takes and what the
//! listing shows of each.

use super::{Priority, Status, whole};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The pattern of a schedule's name (1 to 100 of `A-Za-z0-9._-`, starting with a letter or digit).
pub const SCHEDULE_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";

/// Whether `name` may name a schedule ([`SCHEDULE_NAME_PATTERN`]).
pub fn is_schedule_name(name: &str) -> bool {
    name.len() <= 100
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A schedule as `PUT /api/v1/schedules/{name}` takes it and `GET` gives it back: when it ticks
/// (`cron` or `every`, not both) and what each tick starts (`task`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"cron": "*/5 * * * *", "timezone": "Europe/Paris", "task": {"kind": "echo", "payload": {"report": "daily"}}, "overlap": "skip"})))]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron pattern: 5 fields (minute first), or 6 with seconds first; read in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval instead: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`), at least
    /// `1s`; ticks fall on its multiples counted from `start_at`, else from the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The IANA time zone a cron pattern is read in (`Europe/Paris`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The task each tick submits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<ScheduledTask>,
    /// Or the workflow each tick starts (as `POST /api/v1/workflows` takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<super::workflow::WorkflowRequest>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Created paused (no tick runs until it is resumed).
    #[serde(default)]
    pub paused: bool,
    /// No tick before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// No tick after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// The task a schedule submits at each tick: a submission's fields that keep their meaning
/// when repeated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduledTask {
    /// The task's kind (`GET /api/v1/kinds`).
    pub kind: String,
    /// The payload, checked against the kind's schema when the schedule is stored (any JSON).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// The queue to run it in; the kind's default queue when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$"))]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Attempts before the task becomes a dead letter (default: the kind's, else the server's).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<u32>,
    /// How long one attempt may run (at most 24 hours).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 86_400_000_u64))]
    pub timeout_ms: Option<u64>,
    /// Milliseconds from its tick after which the task expires if no attempt has started.
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 31_536_000_000_u64))]
    pub ttl_ms: Option<u64>,
}

/// What a tick does while the schedule's previous run has not ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Runs anyway.
    #[default]
    Allow,
    /// Is skipped.
    Skip,
}

/// What happens to ticks missed while no Courier process ran (or the schedule could not run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks are skipped.
    #[default]
    #[serde(rename = "none")]
    Nothing,
    /// The latest missed tick runs once.
    Latest,
}

/// A schedule as `GET /api/v1/schedules/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    pub name: String,
    /// The schedule as it was last put.
    pub schedule: ScheduleSpec,
    /// Whether it is paused now (put paused, or paused since).
    pub paused: bool,
    /// Its next five tick times (RFC 3339, UTC); none while paused or once past `end_at`.
    pub next_runs: Vec<String>,
    /// The latest run it started, if any.
    pub last_run: Option<ScheduleRun>,
}

/// A run a schedule started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ScheduleRun {
    /// The tick it ran for (RFC 3339, UTC); for a run started by hand, when it was.
    pub tick: String,
    /// The task it started (a schedule of a task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Uuid>,
    /// The task's status now; none once it is no longer retained (or for a workflow).
    pub status: Option<Status>,
    /// The workflow it started (a schedule of a workflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    /// The workflow's status now; none once it is no longer retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_status: Option<super::workflow::WorkflowStatus>,
    /// Started by hand (`POST /api/v1/schedules/{name}/run`) rather than by a tick.
    pub manual: bool,
}

/// `GET /api/v1/schedules`: every schedule, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_names_are_checked_like_their_pattern_says() {
        for good in ["nightly", "a", "Report.v2_eu-1", &"x".repeat(100)] {
            assert!(is_schedule_name(good), "{good}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(101)] {
            assert!(!is_schedule_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_spec_reads_its_defaults_and_refuses_unknown_fields() {
        let spec: ScheduleSpec =
            serde_json::from_value(serde_json::json!({"every": "30s", "task": {"kind": "echo"}})).unwrap();
        assert_eq!(
            (spec.timezone.as_str(), spec.overlap, spec.catch_up),
            ("UTC", Overlap::Allow, CatchUp::Nothing)
        );
        assert!(
            serde_json::from_value::<ScheduleSpec>(serde_json::json!({"every": "1s", "crn": "x"})).is_err()
        );
        let catch_up: CatchUp = serde_json::from_value(serde_json::json!("none")).unwrap();
        assert_eq!(catch_up, CatchUp::Nothing);
    }
}
