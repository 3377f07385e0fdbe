//! Workflows on the wire: the definition a client posts (`POST /api/v1/workflows`), the view of
//! one as it runs, and its events. The server's `workflows` module gives them their meaning.

use super::{Priority, whole};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The most steps one workflow may have.
pub const MAX_STEPS: usize = 500;
/// The most tasks one `map` step runs (the elements of its array).
pub const MAX_MAP: usize = 1000;
/// The name of the server-sent event of a workflow's or a step's change.
pub const WORKFLOW_EVENT: &str = "workflow";

/// The body of `POST /api/v1/workflows`: steps that run as their parents end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"name": "report", "steps": [
    {"id": "split", "kind": "echo", "payload": {"chunks": ["a b", "c"]}},
    {"id": "count", "kind": "text.stats", "map": {"$from": "split", "pointer": "/chunks"}, "after": ["split"]},
    {"id": "gather", "kind": "echo", "after": ["count"]}]})))]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    /// A name to recognise it by (at most 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// The steps, 1 to 500 of them, in any order.
    #[cfg_attr(feature = "ssr", schema(min_items = 1, max_items = 500))]
    pub steps: Vec<StepRequest>,
}

/// One step of a workflow: a task of `kind` (or one per element, with `map`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// Unique within the workflow: 1 to 64 of `A-Z a-z 0-9 _ . -`.
    #[cfg_attr(feature = "ssr", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub id: String,
    pub kind: String,
    /// The task's payload. Any value in it may be `{"$from": "<parent>", "pointer": "/a/b"}`: the
    /// parent's result (or the part of it at the JSON Pointer). Without a payload, a step with one
    /// parent receives that parent's result whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<serde_json::Value>))]
    pub payload: Option<serde_json::Value>,
    /// `{"$from": "<parent>", "pointer": "/items"}`: run the kind once per element of that JSON
    /// array (at most 1000), each element its payload; the step's result is the array of theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Object>))]
    pub map: Option<serde_json::Value>,
    /// The steps that must end before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// What this step does when a parent failed.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The queue its tasks run in; the kind's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$"))]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 86_400_000_u64))]
    pub timeout_ms: Option<u64>,
    /// Wait this long after the step becomes ready (at most 30 days).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(maximum = 2_592_000_000_u64))]
    pub delay_ms: Option<u64>,
}

/// What a step does when a parent failed (or, for `skip`, was skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The workflow fails; steps not started are cancelled.
    #[default]
    Fail,
    /// The step runs, the failure (`{"error", "step", "state"}`) in place of the parent's result.
    Continue,
    /// The step is skipped, and so are the steps after it that do not `continue`.
    Skip,
}

/// Where a workflow is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Succeeded => "succeeded",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<WorkflowStatus> {
        [Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// True once it ends (a failed one runs again if its failed step's task is requeued).
    pub fn is_terminal(self) -> bool {
        self != WorkflowStatus::Running
    }
}

/// Where a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// A parent has not ended yet.
    Waiting,
    /// Its tasks are queued (or scheduled), none running.
    Queued,
    /// A task of it runs (or waits for a retry).
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// Never started: the workflow failed or was cancelled first.
    Cancelled,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Queued => "queued",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<StepState> {
        [
            Self::Waiting,
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Skipped,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// True once the step will not change (unless a dead task of it is requeued).
    pub fn has_ended(self) -> bool {
        !matches!(self, StepState::Waiting | StepState::Queued | StepState::Running)
    }
}

/// A workflow as served by `GET /api/v1/workflows/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WorkflowView {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: WorkflowStatus,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed, naming the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The step whose failure failed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    pub steps: Vec<StepView>,
}

/// One step of a workflow's view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct StepView {
    pub id: String,
    pub kind: String,
    pub queue: String,
    pub after: Vec<String>,
    pub on_failure: OnFailure,
    /// Whether it runs once per element of a parent's array.
    pub map: bool,
    pub state: StepState,
    /// Its tasks (one, or one per element of a map), once started.
    pub tasks: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The data of a `workflow` event: the workflow's new status, or (with `step`) a step's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WorkflowEvent {
    pub workflow_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A `WorkflowStatus` without `step`, a `StepState` with one.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: String,
}

/// A page of `GET /api/v1/workflows`, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

/// Where each step of a graph is drawn: its column (the longest path from a root) and its row
/// within the column, in the order the steps were given. `after` lists each step's parents by
/// index; a cycle (refused on creation) would put its steps in column 0.
pub fn layout(after: &[Vec<usize>]) -> Vec<(usize, usize)> {
    let n = after.len();
    let mut column = vec![None::<usize>; n];
    // Relaxed repeatedly: at most n rounds for an acyclic graph.
    for _ in 0..n {
        let mut changed = false;
        for step in 0..n {
            let parents: Option<Vec<usize>> =
                after[step].iter().map(|&p| column.get(p).copied().flatten()).collect();
            let value = parents.map(|p| p.into_iter().map(|c| c + 1).max().unwrap_or(0));
            if value.is_some() && value != column[step] {
                column[step] = value;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: Vec<usize> = Vec::new();
    column
        .into_iter()
        .map(|c| {
            let c = c.unwrap_or(0);
            if rows.len() <= c {
                rows.resize(c + 1, 0);
            }
            rows[c] += 1;
            (c, rows[c] - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diamond_is_laid_out_in_three_columns() {
        let after = vec![vec![], vec![0], vec![0], vec![1, 2]];
        assert_eq!(layout(&after), vec![(0, 0), (1, 0), (1, 1), (2, 0)]);
    }

    #[test]
    fn a_step_sits_right_of_its_deepest_parent() {
        // d after a (depth 0) and c (depth 2): column 3.
        let after = vec![vec![], vec![0], vec![1], vec![0, 2]];
        assert_eq!(layout(&after)[3], (3, 0));
    }

    #[test]
    fn states_and_statuses_read_back_their_names() {
        for state in [StepState::Waiting, StepState::Skipped, StepState::Cancelled] {
            assert_eq!(StepState::parse(state.as_str()), Some(state));
        }
        assert_eq!(WorkflowStatus::parse("failed"), Some(WorkflowStatus::Failed));
        assert!(!StepState::Running.has_ended());
        assert!(StepState::Skipped.has_ended());
    }
}
